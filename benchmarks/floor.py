"""The architecture's floor: a minimal trio relay of slirptrio's path, measured like it.

``python -m benchmarks.floor [--seconds S] [--runs N] [--syscalls]`` (no root needed; loopback
and a unix socket in a temporary directory only) measures a relay that does the least any trio
design of this path can do: it accepts a unix stream connection (where slirptrio has QEMU's
``-netdev stream``), connects a TCP socket to the echo server on 127.0.0.1 (TCP_NODELAY, as
slirptrio's host sockets), and copies bytes both ways, one task per direction in a nursery per
connection (as slirptrio's flow task group). No frames, no TCP state, no journal. The C client
(``pingpong rr|crr unix:PATH``, benchmarks/pingpong.c) drives it exactly as the guest's
``pingpong`` drives slirptrio, and ``pingpong serve`` echoes.

Printed: round trips/s and connections/s (median of the runs; times: noisy on a shared machine)
and the relay's CPU per operation, and counts that do not depend on the machine's load: trio
task steps and scheduler passes (I/O waits) per round trip and per connection (a trio
instrument in the relay), and with ``--syscalls`` the relay's syscalls per round trip
(``strace -f -c``). ``benchmarks.bench`` prints the same figures beside slirptrio's and
libslirp's. ``python -m benchmarks.floor relay --listen PATH --to HOST:PORT`` runs the relay
alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------- the relay


class _Counter(trio.abc.Instrument):
    """Counts trio task steps and scheduler passes (I/O waits)."""

    def __init__(self) -> None:
        self.steps = 0
        self.waits = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

    def after_io_wait(self, timeout: float) -> None:
        self.waits += 1


async def _pump(src: socket.socket, dst: socket.socket, moved: list[int]) -> None:
    """Copy ``src`` to ``dst`` until EOF, then shut ``dst``'s writing side. Plain non-blocking
    calls and a wait only when one would block: one task step per message, the least trio
    allows (its socket wrappers add a schedule point to every call)."""
    wait_readable, wait_writable = trio.lowlevel.wait_readable, trio.lowlevel.wait_writable
    while True:
        await wait_readable(src)
        try:
            data = src.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not data:
            break
        moved[0] += len(data)
        view = memoryview(data)
        while view:
            try:
                view = view[dst.send(view) :]
            except BlockingIOError:
                await wait_writable(dst)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


async def _connection(conn: socket.socket, target: tuple[str, int], counter: _Counter) -> None:
    steps0, waits0 = counter.steps, counter.waits
    moved = [0]
    with conn:
        out = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with out:
            out.setblocking(False)
            out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if out.connect_ex(target):
                await trio.lowlevel.wait_writable(out)
                err = out.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    print(f"connect: {os.strerror(err)}", file=sys.stderr)
                    return
            async with trio.open_nursery() as flow:
                flow.start_soon(_pump, conn, out, moved)
                flow.start_soon(_pump, out, conn, [0])
    # one line per connection: the client's bytes (= its round trips) and what they cost
    print(f"conn {moved[0]} {counter.steps - steps0} {counter.waits - waits0}", flush=True)


async def relay(listen: str, target: tuple[str, int], counter: _Counter,
                exit_after: int = 0) -> None:
    """Serve ``listen`` (a unix stream socket path), relaying each connection to ``target``
    over TCP; forever, or until ``exit_after`` connections have ended."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.setblocking(False)
    listener.bind(listen)
    listener.listen(4096)
    print("listening", flush=True)
    done = [0]

    async def serve(conn: socket.socket) -> None:
        await _connection(conn, target, counter)
        done[0] += 1
        if done[0] == exit_after:
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            nursery.start_soon(serve, conn)


# ---------------------------------------------------------------------------- measurement


@dataclass
class Floor:
    """The relay's figures (rates: medians of the runs; counts: per operation)."""

    rr_per_s: float | None = None
    crr_per_s: float | None = None
    rr_cpu_us: float | None = None
    crr_cpu_us: float | None = None
    rr_steps: float | None = None
    rr_waits: float | None = None
    crr_steps: float | None = None
    crr_waits: float | None = None
    rr_syscalls: dict[str, float] = field(default_factory=dict)
    error: str = ""


def _ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Child:
    """A child process whose output lines are read as they come (a thread), so a child that
    prints a line per connection never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def line(self, timeout: float = 60.0) -> str | None:
        """The next line (None at the end of the output or after ``timeout`` seconds)."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None


@contextlib.contextmanager
def _spawned(argv: list[str], ready: str) -> Iterator[_Child]:
    """A child process that prints ``ready`` once it serves; killed on exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
    try:
        child = _Child(proc)
        line = child.line()
        if line is None or line.strip() != ready:
            raise RuntimeError(f"{argv[0]} did not start: {line!r}")
        yield child
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _client(pingpong: Path, mode: str, path: str, seconds: float) -> int:
    out = subprocess.run([str(pingpong), mode, f"unix:{path}", "0", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 60, check=False)
    words = out.stdout.split()
    if out.returncode != 0 or len(words) != 3 or words[0] != mode:
        raise RuntimeError(f"pingpong {mode} failed: {out.stdout}{out.stderr}")
    return int(words[1])


def _conn_lines(child: _Child, want: int) -> list[tuple[int, int, int]]:
    """The relay's per-connection lines, until ``want`` of them (bounded by the relay's end
    and a minute without a line)."""
    out: list[tuple[int, int, int]] = []
    while len(out) < want:
        line = child.line()
        if line is None:
            break
        words = line.split()
        if words and words[0] == "conn":
            out.append((int(words[1]), int(words[2]), int(words[3])))
    return out


def measure(pingpong: Path, seconds: float = 3.0, runs: int = 3, syscalls: bool = False) -> Floor:
    """Run the floor relay against ``pingpong serve`` on 127.0.0.1 and measure it."""
    result = Floor()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="slirptrio-floor-") as tmp, _spawned(
        [str(pingpong), "serve", "127.0.0.1", str(port)], "listening"
    ):
        sock = os.path.join(tmp, "in.sock")
        relay_argv = [sys.executable, "-m", "benchmarks.floor", "relay", "--listen", sock,
                      "--to", f"127.0.0.1:{port}"]
        hz = os.sysconf("SC_CLK_TCK")
        with _spawned(relay_argv, "listening") as proc:
            pid = proc.proc.pid
            rates, ops, t0 = [], 0, _ticks(pid)
            steps = waits = 0
            for _ in range(runs):
                n = _client(pingpong, "rr", sock, seconds)
                ((_moved, s, w),) = _conn_lines(proc, 1)
                rates.append(n / seconds)
                ops += n + 1  # and the warm-up round trip
                steps, waits = steps + s, waits + w
            result.rr_per_s = statistics.median(rates)
            result.rr_cpu_us = 1e6 * (_ticks(pid) - t0) / hz / ops
            result.rr_steps, result.rr_waits = steps / ops, waits / ops
            rates, ops, t0 = [], 0, _ticks(pid)
            steps = waits = 0
            for _ in range(runs):
                n = _client(pingpong, "crr", sock, seconds)
                lines = _conn_lines(proc, n)
                rates.append(n / seconds)
                ops += n
                steps += sum(s for _m, s, _w in lines)
                waits += sum(w for _m, _s, w in lines)
            result.crr_per_s = statistics.median(rates)
            result.crr_cpu_us = 1e6 * (_ticks(pid) - t0) / hz / max(ops, 1)
            # per-connection counts: the connection's own task steps (the accept loop's and
            # the scheduler's passes between connections are not in them)
            result.crr_steps, result.crr_waits = steps / max(ops, 1), waits / max(ops, 1)
        if syscalls:
            result.rr_syscalls = _syscalls(pingpong, relay_argv, sock, min(seconds, 2.0))
    return result


def _syscalls(pingpong: Path, relay_argv: list[str], sock: str, seconds: float
              ) -> dict[str, float]:
    """The relay's syscalls per round trip under ``strace -f -c`` (start-up included, spread
    over thousands of round trips)."""
    strace = shutil.which("strace")
    if strace is None:
        return {}
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        if os.path.exists(sock):
            os.unlink(sock)
        argv = [strace, "-f", "-c", "-o", out.name, *relay_argv, "--exit-after", "1"]
        with _spawned(argv, "listening") as proc:
            n = _client(pingpong, "rr", sock, seconds) + 1
            _conn_lines(proc, 1)
            proc.proc.wait(30)  # the relay ends after its one connection; strace writes its table
        calls: dict[str, float] = {}
        for line in out.read().splitlines():
            words = line.split()
            if len(words) >= 5 and words[0][0].isdigit() and words[-1] != "total":
                calls[words[-1]] = int(words[3]) / n
    return calls


def render(f: Floor) -> list[str]:
    """The floor's lines, as the benchmarks print them."""
    if f.error:
        return [f"trio floor relay: failed: {f.error}"]

    def num(v: float | None, digits: int = 0) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    lines = [
        f"trio floor relay (unix stream in, TCP loopback out; times noisy): "
        f"{num(f.rr_per_s)} round trips/s ({num(f.rr_cpu_us, 1)} µs CPU each), "
        f"{num(f.crr_per_s)} connections/s ({num(f.crr_cpu_us, 1)} µs CPU each)",
        f"  per round trip: {num(f.rr_steps, 2)} trio task steps, "
        f"{num(f.rr_waits, 2)} scheduler passes; per connection: {num(f.crr_steps, 2)} "
        f"task steps, {num(f.crr_waits, 2)} passes",
    ]
    if f.rr_syscalls:
        top = sorted(f.rr_syscalls.items(), key=lambda kv: -kv[1])
        lines.append(
            f"  syscalls per round trip: {sum(f.rr_syscalls.values()):.2f} ("
            + ", ".join(f"{k} {v:.2f}" for k, v in top if v >= 0.05) + ")"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("relay", help="run the relay alone")
    r.add_argument("--listen", required=True, help="unix socket path to serve")
    r.add_argument("--to", required=True, help="HOST:PORT (loopback) to connect to")
    r.add_argument("--exit-after", type=int, default=0, help="end after N connections")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--syscalls", action="store_true", help="count the relay's syscalls (strace)")
    args = p.parse_args(argv)
    if args.cmd == "relay":
        host, _, port = args.to.rpartition(":")
        if not host.startswith("127.") and host != "::1":
            p.error("--to must be a loopback address")
        with contextlib.suppress(KeyboardInterrupt):
            counter = _Counter()
            trio.run(relay, args.listen, (host, int(port)), counter, args.exit_after,
                     instruments=[counter])
        return 0
    with tempfile.TemporaryDirectory(prefix="slirptrio-floor-") as tmp:
        binary = Path(tmp) / "pingpong"
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "pingpong.c")],
                       check=True, timeout=120)
        for line in render(measure(binary, args.seconds, args.runs, args.syscalls)):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU per round trip or per connection through the whole live path, in one process: no QEMU,
no guest kernel.

``python -m benchmarks.rr_local [--crr] [--ipv6] [--round-trips N] [--no-journal] [--profile]
[--syscalls]`` runs the
real runtime (transport, door, journal and pcap into a temporary directory, host flows) with a
fake guest on a socketpair speaking QEMU's stream framing, and a 1-byte echo server on loopback.
The fake guest opens one TCP connection and does N request/response round trips of one byte,
as ``pingpong rr`` does (its ACK of each reply rides on the next request; ``--ipv6``: over
IPv6, to [fec0::2], the host's ::1); with ``--crr`` it
opens a connection for each round trip and closes it after the answer, as ``pingpong crr``. It
prints the process CPU time per round trip (or connection). The fake guest's and the echo
server's own work is in the figure (the guest builds frames with the fast path's ``tcp_run``
and parses them with ``scan_frames``); it is the same before and after a change, so differences
are slirptrio's. ``--profile`` prints cProfile's top functions.

Times on a shared machine are noise; counts are not. Every run also prints, per round trip (or
connection): door steps (by event type), journal records, pcap frames, ``Stack.poll_at`` calls
Python function calls (cProfile's count, a separate pass) and trio task steps (wakeups, by task)
and tasks started (same pass); ``--syscalls`` adds the
syscalls of the whole process (``strace -f -c``, the difference between a run of N and one of
2N operations, so setup cancels out), with ``setsockopt`` and ``epoll_ctl`` named. A regression
shows as a number here before it shows as a time.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from slirptrio import __version__
from slirptrio.config import parse_user_options
from slirptrio.core import constants
from slirptrio.core.stack import Stack
from slirptrio.heap import keep_buffers_on_heap
from slirptrio.journal import Header
from slirptrio.journal.writer import Recorder
from slirptrio.shell.flows import TcpFlows
from slirptrio.shell.runtime import Runtime
from slirptrio.shell.transport import GuestPort, serve_stream
from slirptrio.wire import fast
from slirptrio.wire.framing import split_run
from slirptrio.wire.tcp import ACK, FIN, PSH, SYN, build_tcp

GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("52550a000202")
GUEST = bytes([10, 0, 2, 15])
GATEWAY = bytes([10, 0, 2, 2])
HEAD = GW_MAC + GUEST_MAC + bytes((8, 0, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0))
HEAD += GUEST + GATEWAY
GUEST6 = socket.inet_pton(socket.AF_INET6, "fec0::5054:ff:fe12:3456")
GATEWAY6 = socket.inet_pton(socket.AF_INET6, "fec0::2")
HEAD6 = GW_MAC + GUEST_MAC + bytes((0x86, 0xDD, 0x60, 0, 0, 0, 0, 0, 6, 64)) + GUEST6 + GATEWAY6


class FakeGuest:
    """A guest's TCP connections, one at a time, on the stream transport's framing."""

    def __init__(self, sock: trio.socket.SocketType, port: int, ipv6: bool = False) -> None:
        self.sock = sock
        self.port = port
        self.ipv6 = ipv6
        self.buf = bytearray()
        self.sport = 40000
        self.seq = 1000
        self.ack = 0
        self.fin = False  # the stack's FIN arrived

    def new_connection(self) -> None:
        self.sport = 1024 + (self.sport - 1023) % 60000
        self.seq = (self.seq + 100_000) & 0xFFFFFFFF
        self.ack = 0
        self.fin = False

    async def send_segment(self, flags: int, payload: bytes = b"", **opts: object) -> None:
        if opts or self.ipv6:
            # (IPv6 by the codecs, so the fake guest's work is the same on a build whose fast
            # path is IPv4 only)
            from slirptrio.wire.ethernet import build_ethernet
            from slirptrio.wire.ipv4 import build_ipv4
            from slirptrio.wire.ipv6 import build_ipv6

            src, dst = (GUEST6, GATEWAY6) if self.ipv6 else (GUEST, GATEWAY)
            seg = build_tcp(src, dst, self.sport, self.port, self.seq, self.ack, flags,
                            0xFFFF, payload, **opts)  # type: ignore[arg-type]
            if self.ipv6:
                frame = build_ethernet(GW_MAC, GUEST_MAC, 0x86DD, build_ipv6(src, dst, 6, seg))
            else:
                frame = build_ethernet(GW_MAC, GUEST_MAC, 0x0800, build_ipv4(src, dst, 6, seg))
            run = bytearray(len(frame).to_bytes(4, "big") + frame)
        else:
            run = bytearray()
            fast.tcp_run(run, HEAD, 1, self.sport, self.port, self.seq, self.ack, 0xFFFF, payload,
                         0, len(payload), 1460, flags, flags)
        self.seq = (self.seq + len(payload) + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
        await self.sock.send(run)

    async def receive_data(self) -> int:
        """Wait for segments from the stack; return the payload bytes they carried."""
        while True:
            data = await self.sock.recv(1 << 16)
            if not data:
                raise EOFError
            self.buf += data
            end, _count, _over = fast.frames_end(self.buf, len(self.buf), 1 << 17)
            if not end:
                continue
            got = 0
            for seq, flags, data_len in self._segments(bytes(self.buf[:end])):
                plen = data_len + (1 if flags & (SYN | FIN) else 0)
                self.fin = self.fin or bool(flags & FIN)
                if plen:
                    self.ack = (seq + plen) & 0xFFFFFFFF
                    got += plen
            del self.buf[:end]
            if got:
                return got

    def _segments(self, run: bytes) -> list[tuple[int, int, int]]:
        """(seq, flags, payload length) of the TCP segments of a run."""
        if not self.ipv6:
            return [(r[8], r[10], r[14] - r[13]) for r in fast.scan_frames(run)
                    if r[0] == fast.KIND_TCP]
        out = []
        for view in split_run(run):  # IPv6 without extension headers: all the stack sends
            frame = bytes(view)
            if frame[12:14] == b"\x86\xdd" and frame[20] == 6:
                thl = (frame[66] >> 4) * 4
                plen = int.from_bytes(frame[18:20], "big") - thl
                out.append((int.from_bytes(frame[58:62], "big"), frame[67], plen))
        return out


Counts = dict[str, float]


class _TaskSteps(trio.abc.Instrument):
    """Counts trio task steps (wakeups) by task and the tasks spawned."""

    def __init__(self) -> None:
        self.steps: collections.Counter[str] = collections.Counter()
        self.spawned = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name.rsplit(".", 1)[-1]] += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


def _recorded(recorder: Recorder) -> tuple[int, int]:
    """Journal records and pcap frames handed to the writer so far (0 where not kept)."""
    journal, pcap = getattr(recorder, "journal", None), getattr(recorder, "pcap", None)
    return int(getattr(journal, "records", 0)), int(getattr(pcap, "frames", 0))


async def main_async(
    round_trips: int, journal: bool, profile: bool, crr: bool, count_calls: bool = False,
    ipv6: bool = False, count_tasks: bool = False,
) -> tuple[float, Counts]:
    """Run the workload; return the CPU seconds it took and its counts per operation."""
    tmp = tempfile.mkdtemp(prefix="slirptrio-rr-")
    config = parse_user_options("ipv6=on" if ipv6 else "")
    stack = Stack(config, 1)
    header = Header(seed=1, config=config.to_dict(), origin_ns=0, version=__version__,
                    constants=constants.gather())
    recorder = Recorder.open(
        header,
        journal_dir=os.path.join(tmp, "j") if journal else None,
        pcap_path=os.path.join(tmp, "p") if journal else None,
    )
    port = GuestPort()
    runtime = Runtime(stack, port, recorder)
    flows = TcpFlows(runtime.inbox, batched=True)
    flows.sent_can_wait = stack.tcp.sent_can_wait  # as slirptrio.api wires it
    runtime.handlers.update(flows.handlers())
    runtime.after_burst.append(flows.kick)
    steps: collections.Counter[str] = collections.Counter()
    counting = False

    def count_step(_t: int, event: Any, _effects: Any) -> None:
        if counting:
            steps[type(event).__name__] += 1

    runtime.taps.append(count_step)
    polls = [0]
    poll_at = stack.poll_at

    def counted_poll_at() -> int | None:
        polls[0] += 1
        return poll_at()

    stack.poll_at = counted_poll_at  # type: ignore[method-assign]
    listener = trio.socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET)
    await listener.bind(("::1" if ipv6 else "127.0.0.1", 0))
    listener.listen(8)
    host_port = listener.getsockname()[1]
    ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    async def echo_one(conn: trio.socket.SocketType) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := await conn.recv(100):
                await conn.send(data)

    async def echo() -> None:
        async with trio.open_nursery() as servers:
            while True:
                conn, _ = await listener.accept()
                servers.start_soon(echo_one, conn)

    elapsed = 0.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run)
        await nursery.start(flows.run)
        nursery.start_soon(echo)
        nursery.start_soon(serve_stream, trio.SocketStream(ours), runtime.inbox, port, "fake")
        guest = FakeGuest(theirs, host_port, ipv6)

        async def connect() -> None:
            guest.new_connection()
            await guest.send_segment(SYN, mss=1460)
            await guest.receive_data()  # the SYN-ACK

        async def close() -> None:
            await guest.send_segment(ACK | FIN)
            while not guest.fin:
                await guest.receive_data()
            await guest.send_segment(ACK)

        if not crr:
            await connect()
        prof = cProfile.Profile() if profile or count_calls else None
        tasks = _TaskSteps()
        if count_tasks:  # a pass of its own: an instrument costs calls of its own
            trio.lowlevel.add_instrument(tasks)
        counting = True
        polls[0] = 0
        records0, frames0 = _recorded(recorder)
        t0 = time.process_time()
        if prof is not None:
            prof.enable()
        for _ in range(round_trips):
            if crr:
                await connect()
            await guest.send_segment(ACK | PSH, b"x")
            await guest.receive_data()
            if crr:
                await close()
        calls = in_pkg = in_rec = 0
        if count_tasks:
            trio.lowlevel.remove_instrument(tasks)
        if prof is not None:
            prof.disable()
            out = io.StringIO()
            stats = pstats.Stats(prof, stream=out)
            calls = stats.total_calls  # type: ignore[attr-defined]
            in_pkg = sum(
                v[1] for k, v in stats.stats.items()  # type: ignore[attr-defined]
                if "/slirptrio/" in k[0]
            )
            in_rec = sum(  # the recorder's share (journal and pcap packing, hand-over)
                v[1] for k, v in stats.stats.items()  # type: ignore[attr-defined]
                if "/slirptrio/journal/" in k[0]
            )
            if profile:
                stats.sort_stats("tottime").print_stats(35)
                print(out.getvalue())
        elapsed = time.process_time() - t0
        counting = False
        recorder.flush()
        records1, frames1 = _recorded(recorder)
        n = round_trips
        counts: Counts = {f"steps {k}": v / n for k, v in sorted(steps.items())}
        counts["door steps"] = sum(steps.values()) / n
        counts["poll_at calls"] = polls[0] / n
        if journal:
            counts["journal records"] = (records1 - records0) / n
            counts["pcap frames"] = (frames1 - frames0) / n
        if count_calls:
            counts["Python function calls"] = calls / n
            counts["  of them in slirptrio/"] = in_pkg / n
            if journal:
                counts["  of them in journal/"] = in_rec / n
        if count_tasks:
            counts["trio task steps"] = sum(tasks.steps.values()) / n
            for name, k in tasks.steps.most_common():
                if k / n >= 0.05:
                    counts[f"  {name}"] = k / n
            counts["trio tasks started"] = tasks.spawned / n
        nursery.cancel_scope.cancel()
    recorder.close()
    return elapsed, counts


_STRACE_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$")


def syscalls_per_op(argv: list[str], n: int) -> dict[str, float] | None:
    """Syscalls per operation of this benchmark (``strace -f -c``): runs of ``n`` and ``2n``
    operations, the difference divided by ``n``; None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    totals = []
    for k in (n, 2 * n):
        with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
            subprocess.run(
                [strace, "-f", "-c", "-o", out.name, sys.executable, "-m", "benchmarks.rr_local",
                 *argv, "--repeat", "1", "--round-trips", str(k), "--no-counts"],
                check=True, stdout=subprocess.DEVNULL,
            )
            calls: dict[str, int] = {}
            for line in out.read().splitlines():
                m = _STRACE_LINE.match(line)
                if m:
                    calls[m.group(2)] = int(m.group(1))
            totals.append(calls)
    return {
        name: (totals[1].get(name, 0) - totals[0].get(name, 0)) / n
        for name in sorted(set(totals[0]) | set(totals[1]))
        if name != "total" and totals[1].get(name, 0) - totals[0].get(name, 0) > 0
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rr_local", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--round-trips", type=int, default=5000)
    p.add_argument("--crr", action="store_true", help="a new connection for each round trip")
    p.add_argument("--ipv6", action="store_true", help="over IPv6 ([fec0::2] to the host's ::1)")
    p.add_argument("--no-journal", action="store_true", help="journal and pcap off")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--repeat", type=int, default=3, help="report the best of N runs")
    p.add_argument("--syscalls", action="store_true",
                   help="also count syscalls per operation (strace -f -c, two extra runs)")
    p.add_argument("--no-counts", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    keep_buffers_on_heap()  # as the command line does for a live stack
    journal = not args.no_journal
    results = [
        trio.run(main_async, args.round_trips, journal, args.profile, args.crr, False, args.ipv6)
        for _ in range(args.repeat)
    ]
    best = min(r[0] for r in results)
    what = "connection" if args.crr else "round trip"
    print(
        f"{'crr' if args.crr else 'rr'}{'6' if args.ipv6 else ''} "
        f"journal={'off' if args.no_journal else 'on'} "
        f"fast={fast.IMPL}: {best / args.round_trips * 1e6:.1f} us CPU per {what} "
        "(fake guest and echo server included; a time: noise on a shared machine)"
    )
    if args.no_counts:
        return 0
    counts = results[-1][1]
    n_calls = min(args.round_trips, 500)
    _t, with_calls = trio.run(main_async, n_calls, journal, False, args.crr, True, args.ipv6)
    _t, with_tasks = trio.run(main_async, n_calls, journal, False, args.crr, False, args.ipv6,
                              True)
    with_calls.update(with_tasks)
    counts.update((k, v) for k, v in with_calls.items()
                  if k.startswith(("Python", "  ", "trio")) and not k.startswith("steps"))
    print(f"counts per {what}:")
    for name, value in counts.items():
        print(f"  {name:28} {value:10.2f}")
    if args.syscalls:
        mode = (["--crr"] if args.crr else []) + (["--no-journal"] if args.no_journal else [])
        mode += ["--ipv6"] if args.ipv6 else []
        calls = syscalls_per_op(mode, min(args.round_trips, 2000))
        if calls is None:
            print("  syscalls: strace not found")
        else:
            print(f"  {'syscalls (whole process)':28} {sum(calls.values()):10.2f}")
            for name, value in sorted(calls.items(), key=lambda kv: -kv[1]):
                if value >= 0.05:
                    print(f"    {name:26} {value:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

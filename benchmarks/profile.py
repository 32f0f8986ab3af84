"""Profile slirptrio under one benchmark workload with py-spy (``pip install py-spy``).

``python -m benchmarks.profile [--mtu N] [--dgram] [--no-journal] [--workload up|down|rr|crr]
[--seconds S] [--top N] [--raw PATH] [--gil]`` (root) attaches slirptrio to a fresh guest exactly as
``benchmarks.bench`` does, samples it with ``py-spy record`` while the workload runs, and prints
the functions with the most samples: "self" (the function itself was running) and "total" (it
was on the stack). Percentages are of the main thread's samples, idle ones included, so the
event loop's epoll wait ("idle") is the share of time slirptrio had nothing to do. With
``--gil`` only the thread holding the GIL is sampled (no idle share): that is where the CPU
goes; the default view charges a thread's waits for the GIL and short syscalls to the Python
frame that made them, which once made the core look like 1.5% of the work when it was ~20%.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

from benchmarks.bench import (
    IPERF_PORT,
    PINGPONG_PORT,
    compile_pingpong,
    start_servers,
    tune_namespaces,
)
from benchmarks.stacks import GATEWAY, start_slirptrio
from tests.e2e.harness import Topology, skip_reason, sweep_stale

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)`` (line numbers merged)."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m.group("file")
    for marker in ("/slirptrio/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


_IDLE_LEAVES = ("WorkerThread._work", "EpollIOManager.get_events")
"""Leaf frames that mean waiting: trio's idle worker thread, the event loop's epoll wait."""


def category(frame: str) -> str:
    """Where a frame's code lives: trio, slirptrio's core/wire/shell, recording, other."""
    path = frame.rsplit("(", 1)[-1]
    if path.startswith(("slirptrio/journal/", "slirptrio/wire/pcap.py")):
        return "recording (journal, pcap)"
    for prefix in ("slirptrio/core/", "slirptrio/wire/", "slirptrio/shell/"):
        if path.startswith(prefix):
            return prefix.rstrip("/")
    if path.startswith("slirptrio/"):
        return "slirptrio (door, api)"
    if path.startswith("trio/"):
        return "trio"
    return "stdlib, other"


def summarize(raw: str, top: int) -> str:
    """Self and total sample shares per function from py-spy's ``--format raw`` output.

    Shares are of the main thread's samples (trio's idle worker thread is left out); the wait
    in epoll is listed as "(idle)".
    """
    self_n: collections.Counter[str] = collections.Counter()
    total_n: collections.Counter[str] = collections.Counter()
    cat_n: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            _short(f)
            for f in stack.split(";")
            if f and not f.startswith("process ") and not f.startswith("thread ")
        ]
        if not frames or frames[-1].startswith(_IDLE_LEAVES[0]):
            continue
        samples += n
        leaf = frames[-1]
        idle = leaf.startswith(_IDLE_LEAVES[1])
        self_n["(idle) " + leaf if idle else leaf] += n
        cat_n["(idle: epoll wait)" if idle else category(leaf)] += n
        for f in set(frames):
            total_n[f] += n
    if samples == 0:
        return "no samples\n"
    pct = 100 / samples
    out = [f"{samples} samples of the main thread", "", "self%   where (by file of the leaf)"]
    out += [f"{n * pct:5.1f}   {c}" for c, n in cat_n.most_common()]
    out += ["", "self%   function"]
    out += [f"{n * pct:5.1f}   {f}" for f, n in self_n.most_common(top)]
    out += ["", "total%  function"]
    out += [f"{n * pct:5.1f}   {f}" for f, n in total_n.most_common(top)]
    return "\n".join(out) + "\n"


Workload = Literal["up", "down", "rr", "crr"]


def workload_argv(workload: Workload, seconds: float, pingpong: Path) -> list[str]:
    if workload in ("up", "down"):
        argv = ["iperf3", "-c", GATEWAY, "-p", str(IPERF_PORT), "-t", str(seconds)]
        return argv + (["-R"] if workload == "down" else [])
    return [str(pingpong), workload, GATEWAY, str(PINGPONG_PORT), str(seconds)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mtu", type=int, default=1500)
    p.add_argument("--dgram", action="store_true", help="-netdev dgram (default: stream)")
    p.add_argument("--no-journal", action="store_true", help="journal and pcap off")
    p.add_argument("--workload", choices=["up", "down", "rr", "crr"], default="up")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument(
        "--gil",
        action="store_true",
        help="only samples of the thread holding the GIL (where the CPU goes: without it, a "
        "thread waiting for the GIL or in a short syscall is charged to its Python frame)",
    )
    p.add_argument(
        "--raw", type=Path, help="keep py-spy's collapsed stacks here (flamegraph.pl, speedscope)"
    )
    args = p.parse_args(argv)
    reason = skip_reason()
    pyspy = shutil.which("py-spy")
    if reason is not None or pyspy is None:
        print(f"profile: cannot run: {reason or 'py-spy is not installed'}", file=sys.stderr)
        return 1
    sweep_stale()
    build = Path(tempfile.mkdtemp(prefix="slirptrio-prof-", dir="/tmp"))
    try:
        pingpong = compile_pingpong(build)
        with Topology("prof") as topo:
            tune_namespaces(topo)
            start_servers(topo, pingpong)
            stack = start_slirptrio(
                topo, args.mtu, "dgram" if args.dgram else "listen", not args.no_journal
            )
            print(
                f"profiling {stack.label}, MTU {stack.mtu}, {args.workload}, pid {stack.pid}",
                file=sys.stderr,
            )
            raw_path = build / "profile.txt"
            spy = subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(stack.pid),
                    "--rate",
                    str(args.rate),
                    *([] if args.gil else ["--idle"]),
                    *(["--gil"] if args.gil else []),
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(raw_path),
                    "--duration",
                    str(int(args.seconds)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                time.sleep(0.5)
                out = topo.guest_run(
                    workload_argv(args.workload, args.seconds, pingpong),
                    args.seconds + 60,
                    check=False,
                )
                print(out.stdout[-1500:], file=sys.stderr)
                _, err = spy.communicate(timeout=args.seconds + 60)
            finally:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
            if not raw_path.exists():
                print(f"profile: py-spy wrote nothing: {err}", file=sys.stderr)
                return 1
            raw = raw_path.read_text()
            print(summarize(raw, args.top))
            if args.raw is not None:
                args.raw.write_text(raw)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the journal costs a live session: slirptrio bulk TCP with journal + pcap, journal only,
and neither, at guest MTU 1500 (``-netdev stream``) and 65520 (``-netdev dgram``).

``python -m benchmarks.journal [--quick] [--output FILE]`` (root). Uses the cases and
measurements of :mod:`benchmarks.bench` (iperf3 both ways, a fresh guest and stack per case);
the journal and pcap are written by the writer thread, off the event loop. The table goes to
stdout and to ``benchmarks/journal-results.md``. Throughput figures need a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench import (
    Case,
    CaseResult,
    Direction,
    Settings,
    _cell_bulk,
    _gbps,
    compile_pingpong,
    run_case,
)
from tests.e2e.harness import skip_reason, sweep_stale

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "journal-results.md"
MODES = (("journal + pcap", True, True), ("journal only", True, False), ("off", False, False))
TARGET = 0.20


def _cost(on: float | None, off: float | None) -> str:
    if on is None or not off:
        return "—"
    return f"{max(0.0, 1 - on / off):.0%}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.journal", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 s iperf3 runs")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    reason = skip_reason()
    if reason is not None or shutil.which("iperf3") is None or shutil.which("gcc") is None:
        print(f"journal bench: cannot run: {reason or 'iperf3 and gcc are needed'}",
              file=sys.stderr)
        return 1
    sweep_stale()
    settings = Settings(bulk_seconds=3 if args.quick else 10, rr_seconds=2, rr_runs=1,
                        sweep_seconds=2, only=("slirptrio",), sweep=False)
    started = time.time()
    build = Path(tempfile.mkdtemp(prefix="slirptrio-bench-", dir="/tmp"))
    results: dict[tuple[int, str], CaseResult] = {}
    try:
        pingpong = compile_pingpong(build)
        for mtu, transport in ((1500, "listen"), (65520, "dgram")):
            for name, journal, pcap in MODES:
                case = Case("slirptrio", mtu, transport, journal, pcap)  # type: ignore[arg-type]
                results[(mtu, name)] = run_case(case, settings, pingpong)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    lines = [
        "# slirptrio: the journal's cost, with the writer thread",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
        f"{time.time() - started:.0f} s; {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; iperf3 -t {settings.bulk_seconds:g}. Cells: receiver's "
        "Gbit/s (stack CPU + relay CPU). Cost: throughput lost against journal off "
        f"(target ≤ {TARGET:.0%}).",
        "",
        "| direction, MTU | journal + pcap | journal only | off | cost: journal + pcap "
        "| cost: journal only |",
        "|---|---|---|---|---|---|",
    ]
    for mtu in (1500, 65520):
        for d, label in (("up", "guest→host"), ("down", "host→guest")):
            direction: Direction = d  # type: ignore[assignment]
            cells = [_cell_bulk(results.get((mtu, m[0])), direction) for m in MODES]
            on, only, off = (_gbps(results.get((mtu, m[0])), direction) for m in MODES)
            lines.append(f"| TCP {label}, MTU {mtu} | {' | '.join(cells)} | {_cost(on, off)} | "
                         f"{_cost(only, off)} |")
    errors = [e for r in results.values() for e in r.errors]
    if errors:
        lines += ["", "Errors:", *(f"* {e}" for e in errors)]
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark slirptrio against libslirp (QEMU ``-netdev user``) and slirp4netns, in one run.

``python -m benchmarks.bench [--quick] [--only slirptrio,libslirp,slirp4netns] [--no-sweep]``
(root). Each case gets a fresh guest (a network namespace with tap0, the kernel's TCP/IP stack)
and a fresh stack; servers run on the host namespace's loopback, which every stack offers the
guest as 10.0.2.2. Measured, one case after another:

* bulk TCP both ways with iperf3 (``-t 10``; ``--quick``: 3 s) at guest MTU 1500 and 65520;
* round trips/s: 1-byte ping-pong over one connection (``pingpong rr``, C, TCP_NODELAY);
* connections/s: connect, one 1-byte round trip, close, in a loop (``pingpong crr``);
* the stack process's VmRSS before and while the guest holds 5,000 idle established flows;
* slirptrio with its journal and pcap on (the default) and off;
* over IPv6, on slirptrio and libslirp at MTU 1500, in the same session as IPv4, each right
  after its IPv4 twin: bulk both ways, round trips/s and connections/s from the guest's SLAAC
  address to [fec0::2] (servers of their own on the host namespace's ::1), with the ratio;
* (unless ``--no-sweep``) slirptrio guest->host and host->guest over a range of MTUs;
* every slirptrio session's journal replayed (``slirptrio replay``): it must be identical, and
  the replay's wall time is compared with the session's;
* the architecture's floor (:mod:`benchmarks.floor`): a minimal trio relay of the same path
  (unix stream in, TCP loopback out, the same C client and echo server), its round trips/s and
  connections/s beside slirptrio's, with its trio task steps and scheduler passes per operation.

The table goes to stdout and to ``benchmarks/results.md``. Every namespace and process is
removed on exit, on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Literal

from benchmarks import floor
from benchmarks.stacks import (
    GATEWAY,
    GATEWAY6,
    STACKS,
    Stack,
    StackName,
    slaac,
    start_libslirp,
    start_slirp4netns,
    start_slirptrio,
)
from tests.e2e.harness import HarnessError, Topology, replay, run, skip_reason, sweep_stale

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"

IPERF_PORT = 5201
PINGPONG_PORT = 7000
IPERF_PORT6 = 5206
PINGPONG_PORT6 = 7006
"""The IPv6 servers' ports (on ::1 only): their own, so a server reached means the IPv6 path."""
IDLE_FLOWS = 5000
SWEEP_MTUS = (1500, 4000, 9000, 16000, 32000, 65520)

Direction = Literal["up", "down"]
"""up: guest -> host (iperf3 client sends); down: host -> guest (``-R``)."""


@dataclass(frozen=True)
class Case:
    """One stack configuration and what to measure on it."""

    stack: StackName
    mtu: int = 1500
    transport: Literal["listen", "dgram"] = "listen"
    journal: bool = True
    pcap: bool = True  # with the journal: also the live pcap
    bulk: bool = True
    rr: bool = False
    idle: bool = False
    ipv6: bool = False
    """Also measure bulk, rr and crr over IPv6 (the guest's SLAAC address to [fec0::2]), each
    right after its IPv4 twin, in the same session."""

    @property
    def key(self) -> str:
        if self.stack != "slirptrio":
            return f"{self.stack}/{self.mtu}"
        mode = ("j" if self.pcap else "jo") if self.journal else "nj"
        return f"slirptrio/{self.mtu}/{self.transport}/{mode}"


@dataclass
class Bulk:
    gbps: float
    stack_cpu: float
    """CPU seconds the stack process used per wall second, in percent of one core."""
    relay_cpu: float | None
    """The same for slirptrio's QEMU relay (None: no separate relay)."""
    retrans: int


@dataclass
class ReplayCheck:
    """A session's journal replayed after the session ended."""

    identical: bool
    summary: str
    """The replay's verdict line (or the start of its divergence report)."""
    session_s: float
    """Wall time of the session: the stack's start to its stop."""
    replay_s: float
    """Wall time of ``slirptrio replay`` (process start included)."""
    span_s: float | None = None
    """The session time the replayed records cover (``t=A..B`` in the verdict): less than the
    session when the journal's ring of segments no longer holds its start."""

    @property
    def speed(self) -> float:
        """Session time replayed per second of replay."""
        covered = self.session_s if self.span_s is None else min(self.span_s, self.session_s)
        return covered / max(self.replay_s, 1e-9)


@dataclass
class CaseResult:
    case: Case
    label: str = ""
    bulk: dict[Direction, Bulk] = field(default_factory=dict)
    rr: float | None = None
    crr: float | None = None
    rr_cpu_us: float | None = None
    """Stack CPU per round trip (µs), over all ``rr`` runs."""
    crr_cpu_us: float | None = None
    bulk6: dict[Direction, Bulk] = field(default_factory=dict)
    """The same measurements over IPv6 (``Case.ipv6``)."""
    rr6: float | None = None
    crr6: float | None = None
    rr6_cpu_us: float | None = None
    crr6_cpu_us: float | None = None
    replay: ReplayCheck | None = None
    rss_before: int | None = None
    rss_after: int | None = None
    held: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def kib_per_flow(self) -> float | None:
        if self.rss_before is None or self.rss_after is None or self.held == 0:
            return None
        return (self.rss_after - self.rss_before) / self.held


@dataclass
class Settings:
    bulk_seconds: float
    rr_seconds: float
    rr_runs: int
    sweep_seconds: float
    only: tuple[StackName, ...]
    sweep: bool
    keep_journals: Path | None = None
    """Copy each session's journal here (as CASE-KEY.journal) before its topology goes."""


# -- helpers ---------------------------------------------------------------------------------


def compile_pingpong(into: Path) -> Path:
    """Build benchmarks/pingpong.c into ``into``; return the binary's path."""
    out = into / "pingpong"
    run(["gcc", "-O2", "-Wall", "-o", str(out), str(HERE / "pingpong.c")], 120)
    return out


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def tune_namespaces(topo: Topology) -> None:
    """Wider ephemeral port ranges, so a connections/s loop never runs out of ports."""
    for ns in (topo.guest_ns, topo.host_ns):
        run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_local_port_range=1024 65000",
            ],
            10,
        )


def start_servers(topo: Topology, pingpong: Path, ipv6: bool = False) -> None:
    """iperf3 and the ping-pong server on the host namespace's 127.0.0.1; with ``ipv6`` two
    more on its ::1 only (ports of their own)."""
    servers = [("", "127.0.0.1", IPERF_PORT, PINGPONG_PORT)]
    if ipv6:
        servers.append(("6", "::1", IPERF_PORT6, PINGPONG_PORT6))
    for tag, lo, iperf_port, pingpong_port in servers:
        topo.host_spawn(f"iperf3-server{tag}", ["iperf3", "-s", "-B", lo, "-p", str(iperf_port)])
        topo.host_spawn(
            f"pingpong-server{tag}", [str(pingpong), "serve", lo, str(pingpong_port)]
        )
        topo.wait_listening(iperf_port)
        topo.wait_listening(pingpong_port)


def measure_bulk(
    topo: Topology, stack: Stack, direction: Direction, seconds: float, ipv6: bool = False
) -> Bulk:
    """iperf3 from the guest to 10.0.2.2 (or [fec0::2]); the receiver's rate, and the stack's
    CPU share."""
    server, port = (GATEWAY6, IPERF_PORT6) if ipv6 else (GATEWAY, IPERF_PORT)
    argv = ["iperf3", "-c", server, "-p", str(port), "-t", str(seconds), "-J"]
    if ipv6:
        argv.append("-6")
    if direction == "down":
        argv.append("-R")
    relay = stack.relay.pid if stack.relay is not None else None
    t0 = time.monotonic()
    s0, r0 = cpu_ticks(stack.pid), cpu_ticks(relay) if relay else 0
    proc = topo.guest_run(argv, seconds + 60, check=False)
    s1, r1 = cpu_ticks(stack.pid), cpu_ticks(relay) if relay else 0
    wall = max(time.monotonic() - t0, 1e-9)
    stack.check_alive()
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise HarnessError(
            f"iperf3 gave no JSON (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        ) from None
    if "error" in report:
        raise HarnessError(f"iperf3: {report['error']}")
    end = report["end"]
    gbps = end["sum_received"]["bits_per_second"] / 1e9
    retrans = int(end.get("sum_sent", {}).get("retransmits", 0))
    hz = os.sysconf("SC_CLK_TCK")
    return Bulk(
        gbps,
        100.0 * (s1 - s0) / hz / wall,
        100.0 * (r1 - r0) / hz / wall if relay else None,
        retrans,
    )


def measure_pingpong(
    topo: Topology,
    stack: Stack,
    pingpong: Path,
    mode: Literal["rr", "crr"],
    seconds: float,
    runs: int,
    ipv6: bool = False,
) -> tuple[float, float]:
    """Round trips (``rr``) or connections (``crr``) per second from the guest: the median of
    ``runs`` runs of ``seconds`` each (single runs are noisy on a shared 2-core machine), and
    the stack's CPU time per operation over all runs (µs)."""
    server, port = (GATEWAY6, PINGPONG_PORT6) if ipv6 else (GATEWAY, PINGPONG_PORT)
    rates = []
    ops = 0
    t0 = cpu_ticks(stack.pid)
    for _ in range(runs):
        argv = [str(pingpong), mode, server, str(port), str(seconds)]
        out = topo.guest_run(argv, seconds + 60, check=False)
        stack.check_alive()
        words = out.stdout.split()
        if out.returncode != 0 or len(words) != 3 or words[0] != mode:
            raise HarnessError(
                f"pingpong {mode} failed (exit {out.returncode}):\n{out.stdout}{out.stderr}"
            )
        rates.append(int(words[1]) / float(words[2]))
        ops += int(words[1])
    cpu_s = (cpu_ticks(stack.pid) - t0) / os.sysconf("SC_CLK_TCK")
    return statistics.median(rates), 1e6 * cpu_s / max(ops, 1)


def measure_idle(topo: Topology, stack: Stack, pingpong: Path, flows: int) -> tuple[int, int, int]:
    """VmRSS of the stack (KiB) before and while the guest holds up to ``flows`` idle flows.

    Returns (before, after, held): a stack with a smaller flow table refuses the rest.
    """
    time.sleep(1.0)
    before = stack.rss_kib()
    holder = topo.guest_spawn(
        "hold", [str(pingpong), "hold", GATEWAY, str(PINGPONG_PORT), str(flows)]
    )
    try:
        words = holder.wait_line("held ", 300).split()
        held = int(words[1])
        time.sleep(2.0)
        stack.check_alive()
        after = stack.rss_kib()
    finally:
        holder.stop()
    return before, after, held


def attach(topo: Topology, case: Case) -> Stack:
    if case.stack == "slirptrio":
        return start_slirptrio(topo, case.mtu, case.transport, case.journal, case.pcap)
    if case.stack == "libslirp":
        return start_libslirp(topo)
    return start_slirp4netns(topo, case.mtu)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _attempt(result: CaseResult, stack: Stack, name: str, fn: Callable[[], None]) -> bool:
    """Run one measurement; record a failure. False when the stack itself is gone."""
    try:
        fn()
    except HarnessError as exc:
        msg = f"{name}: {str(exc).strip()[:1500]}"
        result.errors.append(msg)
        log(f"   FAILED {msg}")
    return all(p.alive() for p in (stack.proc, stack.relay) if p is not None)


def run_case(case: Case, settings: Settings, pingpong: Path) -> CaseResult:
    """Build a fresh topology, attach the stack, run the case's measurements, tear down."""
    result = CaseResult(case)
    with Topology("bench") as topo:
        try:
            tune_namespaces(topo)
            start_servers(topo, pingpong, case.ipv6)
            stack = attach(topo, case)
        except HarnessError as exc:
            msg = f"setup: {str(exc).strip()[:1500]}"
            result.errors.append(msg)
            log(f"== {case.key} FAILED {msg}")
            return result
        result.label = stack.label
        log(
            f"== {case.key}: {stack.label}, guest {stack.guest_ip} mtu {stack.mtu}, pid {stack.pid}"
        )

        slaac_error: list[str] = []

        def ipv6_ready() -> None:
            """Wait (once) for the guest's SLAAC address: it was configuring itself since the
            tap's carrier came up, so by the first IPv6 step it is usually there."""
            if slaac_error:
                raise HarnessError(slaac_error[0])
            if stack.guest_ip6:
                return
            t0 = time.monotonic()
            try:
                slaac(topo, stack)
            except HarnessError as exc:
                slaac_error.append(f"no SLAAC address: {str(exc).strip()[:300]}")
                raise HarnessError(slaac_error[0]) from None
            log(f"   IPv6: {stack.guest_ip6}, waited {time.monotonic() - t0:.1f} s for it")

        def bulk(d: Direction, ipv6: bool = False) -> None:
            if ipv6:
                ipv6_ready()
            b = measure_bulk(topo, stack, d, settings.bulk_seconds, ipv6)
            (result.bulk6 if ipv6 else result.bulk)[d] = b
            relay = "" if b.relay_cpu is None else f", relay CPU {b.relay_cpu:.0f}%"
            log(
                f"   bulk {d}{' IPv6' if ipv6 else ''}: {b.gbps:.3f} Gbit/s, "
                f"stack CPU {b.stack_cpu:.0f}%{relay}, retransmits {b.retrans}"
            )

        def pingpong_step(mode: Literal["rr", "crr"], ipv6: bool = False) -> None:
            if ipv6:
                ipv6_ready()
            rate, cpu = measure_pingpong(
                topo, stack, pingpong, mode, settings.rr_seconds, settings.rr_runs, ipv6
            )
            if mode == "rr" and ipv6:
                result.rr6, result.rr6_cpu_us = rate, cpu
            elif mode == "rr":
                result.rr, result.rr_cpu_us = rate, cpu
            elif ipv6:
                result.crr6, result.crr6_cpu_us = rate, cpu
            else:
                result.crr, result.crr_cpu_us = rate, cpu
            what = "round trips/s" if mode == "rr" else "connections/s"
            log(f"   {what}{' IPv6' if ipv6 else ''}: {rate:.0f} ({cpu:.0f} µs CPU each)")

        def idle() -> None:
            result.rss_before, result.rss_after, result.held = measure_idle(
                topo, stack, pingpong, IDLE_FLOWS
            )
            log(
                f"   RSS {result.rss_before} -> {result.rss_after} KiB with {result.held} of "
                f"{IDLE_FLOWS} idle flows: {result.kib_per_flow or 0:.1f} KiB/flow"
            )

        # Each IPv6 measurement right after its IPv4 twin: the ratio compares neighbours.
        steps: list[tuple[str, Callable[[], None]]] = []
        directions: tuple[Direction, ...] = ("up", "down") if case.bulk else ()
        for d in directions:
            steps.append((f"bulk {d}", functools.partial(bulk, d)))
            if case.ipv6:
                steps.append((f"IPv6 bulk {d}", functools.partial(bulk, d, ipv6=True)))
        modes: tuple[Literal["rr", "crr"], ...] = ("rr", "crr") if case.rr else ()
        for mode in modes:
            name = "round trips" if mode == "rr" else "connections"
            steps.append((name, functools.partial(pingpong_step, mode)))
            if case.ipv6:
                steps.append((f"IPv6 {name}", functools.partial(pingpong_step, mode, ipv6=True)))
        if case.idle:
            steps.append(("idle flows", idle))
        for name, fn in steps:
            if not _attempt(result, stack, name, fn):
                break
        if stack.journal is not None:
            result.replay = check_replay(stack)
            r = result.replay
            log(
                f"   replay: {r.summary} ({r.replay_s:.1f} s for a {r.session_s:.1f} s session, "
                f"{r.speed:.1f}x the session time replayed)"
            )
            if not r.identical:
                result.errors.append(f"replay: {r.summary}")
            if settings.keep_journals is not None:
                keep = settings.keep_journals / f"{case.key}.journal"
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(stack.journal, keep)
                log(f"   journal kept in {keep}")
    return result


def check_replay(stack: Stack) -> ReplayCheck:
    """Stop slirptrio (its journal complete), replay the journal, time both."""
    assert stack.journal is not None
    stack.proc.stop()
    session_s = time.monotonic() - stack.started
    t0 = time.monotonic()
    out = replay(stack.journal, timeout=1800)
    replay_s = time.monotonic() - t0
    text = (out.stdout + out.stderr).strip()
    first = text.splitlines()[0] if text else f"exit {out.returncode}"
    ok = out.returncode == 0 and first.startswith("identical")
    m = re.search(r"t=([\d.]+)s\.\.([\d.]+)s", first)
    span_s = float(m.group(2)) - float(m.group(1)) if m else None
    return ReplayCheck(ok, first[:300], session_s, replay_s, span_s)


def cases(settings: Settings) -> list[Case]:
    out: list[Case] = []
    if "slirptrio" in settings.only:
        out += [
            Case("slirptrio", 1500, "listen", True, rr=True, idle=True, ipv6=True),
            Case("slirptrio", 1500, "listen", False, rr=True, idle=True),
            Case("slirptrio", 65520, "dgram", True),
            Case("slirptrio", 65520, "dgram", False),
            Case("slirptrio", 1500, "listen", True, pcap=False),
            Case("slirptrio", 65520, "dgram", True, pcap=False),
        ]
    if "libslirp" in settings.only:
        out.append(Case("libslirp", 1500, rr=True, idle=True, ipv6=True))
    if "slirp4netns" in settings.only:
        out += [
            Case("slirp4netns", 1500, rr=True, idle=True),
            Case("slirp4netns", 65520),
        ]
    return out


def sweep_cases() -> list[Case]:
    return [Case("slirptrio", mtu, "dgram", True) for mtu in SWEEP_MTUS]


# -- the report ------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _gbps(r: CaseResult | None, d: Direction) -> float | None:
    if r is None or d not in r.bulk:
        return None
    return r.bulk[d].gbps


def _cell_bulk(r: CaseResult | None, d: Direction) -> str:
    if r is None:
        return "n/a"
    if d not in r.bulk:
        return "failed" if r.errors else "—"
    return _bulk_text(r.bulk[d])


def _bulk_text(b: Bulk) -> str:
    relay = "" if b.relay_cpu is None else f" + relay {b.relay_cpu:.0f}%"
    return f"{b.gbps:.2f} ({b.stack_cpu:.0f}%{relay})"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


IPV6_WITHIN = 0.20
"""Issue #20: IPv6 TCP bulk and round trips within 20% of IPv4's (IPv6 faster passes)."""


def _within(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    return "within 20%" if ratio >= 1 - IPV6_WITHIN else "**not within 20%**"


def _why_not(r: CaseResult, step: str) -> str:
    """The cell of a measurement with no figure: n/a with its failure, or not run."""
    for e in r.errors:
        if e.startswith(("setup:", f"{step}:")):
            first = e.splitlines()[0] if e else ""
            return f"n/a ({first[:160]})"
    return "—"


def _cpu_per_gbit(b: Bulk | None) -> float | None:
    """The stack's CPU (its relay's included) per Gbit/s moved: CPU per byte, in effect."""
    if b is None or b.gbps <= 0:
        return None
    return (b.stack_cpu + (b.relay_cpu or 0.0)) / b.gbps


def ipv6_cell(r: CaseResult | None, attr: str) -> tuple[str, float | None]:
    """The cell of one IPv6 measurement (``up``/``down`` bulk, ``rr``, ``crr``): the figure,
    the stack's CPU, IPv6/IPv4 against the same session's IPv4 twin and the same for the
    stack's CPU per byte or per operation (steadier than rates on a shared machine); and the
    rate's IPv6/IPv4."""
    if r is None or not r.case.ipv6:
        return "—", None
    if attr in ("up", "down"):
        d: Direction = "up" if attr == "up" else "down"
        b6, b4 = r.bulk6.get(d), r.bulk.get(d)
        v6, v4 = (b6.gbps if b6 else None), (b4.gbps if b4 else None)
        step = f"IPv6 bulk {attr}"
        cell = _bulk_text(b6) if b6 else ""
        cpu_ratio, per = _ratio(_cpu_per_gbit(b6), _cpu_per_gbit(b4)), "byte"
    else:
        v6, v4 = getattr(r, attr + "6"), getattr(r, attr)
        step = "IPv6 round trips" if attr == "rr" else "IPv6 connections"
        cpu6, cpu4 = getattr(r, attr + "6_cpu_us"), getattr(r, attr + "_cpu_us")
        cell = _fmt(v6, 0) + ("" if cpu6 is None else f" ({cpu6:,.0f} µs CPU)")
        cpu_ratio, per = _ratio(cpu6, cpu4), "op"
    if v6 is None:
        return _why_not(r, step), None
    ratio = _ratio(v6, v4)
    if ratio is not None:
        cell += f"; {ratio:.2f}x IPv4"
        cell += "" if cpu_ratio is None else f", CPU/{per} {cpu_ratio:.2f}x"
    return cell, ratio


def render(
    results: dict[str, CaseResult], sweep: list[CaseResult], settings: Settings, started: float
) -> str:
    st = results.get("slirptrio/1500/listen/j")
    st_nj = results.get("slirptrio/1500/listen/nj")
    st_big = results.get("slirptrio/65520/dgram/j")
    st_big_nj = results.get("slirptrio/65520/dgram/nj")
    st_jo = results.get("slirptrio/1500/listen/jo")
    st_big_jo = results.get("slirptrio/65520/dgram/jo")
    lib = results.get("libslirp/1500")
    s4n = results.get("slirp4netns/1500")
    s4n_big = results.get("slirp4netns/65520")

    lines = [
        "# slirptrio benchmark results",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
        f"{time.monotonic() - _mono_start:.0f} s; {platform.node()}: {_cpu_model()}, "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}."
        f" iperf3 -t {settings.bulk_seconds:g}, {IDLE_FLOWS} idle flows.",
        "",
        "Bulk cells: receiver's Gbit/s (CPU of the stack process, + its separate QEMU relay for "
        "slirptrio, in % of one core). Round trips/s and connections/s: median of "
        f"{settings.rr_runs} runs of {settings.rr_seconds:g} s (the stack process's CPU time per "
        "operation).",
        "slirptrio column: journal + pcap on (its default); MTU 1500 over `-netdev stream`, "
        "MTU 65520 over `-netdev dgram`.",
        "IPv6 rows: the same session's guest from its SLAAC address (fec0::/64) to [fec0::2], "
        "the host namespace's ::1 (servers of their own on ::1 only), MTU 1500, each "
        "measurement right after its IPv4 twin; IPv6/IPv4: against that twin, for the rate "
        "and for the stack's CPU per byte or per operation (its relay's included).",
        "",
        "| measurement | slirptrio | libslirp (QEMU -netdev user) | slirp4netns | target "
        "(slirptrio) | ratio | verdict |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(
        name: str,
        cells: list[str],
        target: str,
        ratio: float | None,
        ok: bool | None,
        ratio_fmt: str = "{:.2f}x",
    ) -> None:
        rs = "—" if ratio is None else ratio_fmt.format(ratio)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {target} | {rs} | {_verdict(ok)} |")

    for d, name in (("up", "guest→host"), ("down", "host→guest")):
        dd: Direction = "up" if d == "up" else "down"
        r = _ratio(_gbps(st, dd), _gbps(lib, dd))
        row(
            f"TCP {name}, MTU 1500, Gbit/s",
            [_cell_bulk(st, dd), _cell_bulk(lib, dd), _cell_bulk(s4n, dd)],
            "≥ 0.5x libslirp",
            r,
            None if r is None else r >= 0.5,
        )
    for d, name in (("up", "guest→host"), ("down", "host→guest")):
        dd = "up" if d == "up" else "down"
        g = _gbps(st_big, dd)
        r = _ratio(g, _gbps(lib, dd))
        s4 = _ratio(g, _gbps(s4n_big, dd))
        row(
            f"TCP {name}, MTU 65520, Gbit/s",
            [
                _cell_bulk(st_big, dd),
                "n/a (no mtu= in 7.2)",
                _cell_bulk(s4n_big, dd) + ("" if s4 is None else f"; slirptrio {s4:.2f}x"),
            ],
            "≥ 4x libslirp@1500",
            r,
            None if r is None else r >= 4.0,
            "{:.2f}x libslirp@1500",
        )
    for attr, name in (
        ("rr", "round trips/s (1 byte, 1 connection)"),
        ("crr", "connections/s (connect, 1 request, close)"),
    ):
        vals = [getattr(r, attr) if r is not None else None for r in (st, lib, s4n)]
        cpus = [getattr(r, attr + "_cpu_us") if r is not None else None for r in (st, lib, s4n)]
        cells = [
            _fmt(v, 0) + ("" if c is None else f" ({c:,.0f} µs CPU)")
            for v, c in zip(vals, cpus, strict=True)
        ]
        r = _ratio(vals[0], vals[1])
        row(name, cells, "≥ 0.5x libslirp", r, None if r is None else r >= 0.5)
    for attr, name in (
        ("up", "TCP guest→host, MTU 1500, **IPv6**, Gbit/s"),
        ("down", "TCP host→guest, MTU 1500, **IPv6**, Gbit/s"),
        ("rr", "round trips/s, **IPv6**"),
        ("crr", "connections/s, **IPv6**"),
    ):
        st_cell, st_r = ipv6_cell(st, attr)
        lib_cell, _lib_r = ipv6_cell(lib, attr)
        rs = "—" if st_r is None else f"slirptrio {st_r:.2f}x IPv4"
        lines.append(
            f"| {name} | {st_cell} | {lib_cell} | — | IPv6 within 20% of IPv4 | {rs} "
            f"| {_within(st_r)} |"
        )
    fl = _floor
    if fl is not None and not fl.error:
        for rate, cpu, name, want in (
            (fl.rr_per_s, fl.rr_cpu_us, "round trips/s", 0.6),
            (fl.crr_per_s, fl.crr_cpu_us, "connections/s", None),
        ):
            attr = "rr" if name.startswith("round") else "crr"
            r = _ratio(getattr(st, attr) if st is not None else None, rate)
            row(
                f"{name}: trio floor relay of the same path (no stack)",
                [_fmt(rate, 0) + ("" if cpu is None else f" ({cpu:,.0f} µs CPU)"), "", ""],
                "—" if want is None else f"slirptrio ≥ {want}x floor",
                r,
                None if r is None or want is None else r >= want,
                "slirptrio {:.2f}x floor",
            )
    per = [r.kib_per_flow if r is not None else None for r in (st, lib, s4n)]
    row(
        f"RSS per idle flow, KiB (up to {IDLE_FLOWS:,} flows)",
        [_fmt(v, 1) for v in per],
        "≤ 20 KiB",
        _ratio(per[0], per[1]),
        None if per[0] is None else per[0] <= 20.0,
    )
    rss = [
        f"{r.rss_before:,} → {r.rss_after:,} ({r.held:,} flows)"
        if r is not None and r.kib_per_flow is not None
        else "—"
        for r in (st, lib, s4n)
    ]
    row("RSS before → with the idle flows, KiB", rss, "", None, None)
    if _floor is not None:
        lines += ["", *(f"{line}  " for line in floor.render(_floor)), ""]

    # Journaling: the same stack with journal + pcap off.
    lines += [
        "",
        "## slirptrio: journal + pcap on vs off",
        "",
        "| measurement | journal + pcap on | journal only | off | cost: journal + pcap |"
        " cost: journal only | target | verdict (journal only) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for on, jo, off, mtu in ((st, st_jo, st_nj, 1500), (st_big, st_big_jo, st_big_nj, 65520)):
        for dd, name in (("up", "guest→host"), ("down", "host→guest")):
            d2: Direction = "up" if dd == "up" else "down"
            a, j, b = _gbps(on, d2), _gbps(jo, d2), _gbps(off, d2)
            cost = None if a is None or b is None or b == 0 else 1 - a / b
            jcost = None if j is None or b is None or b == 0 else 1 - j / b
            lines.append(
                f"| TCP {name}, MTU {mtu}, Gbit/s | {_cell_bulk(on, d2)} | {_cell_bulk(jo, d2)}"
                f" | {_cell_bulk(off, d2)} | {'—' if cost is None else f'{cost:.0%}'}"
                f" | {'—' if jcost is None else f'{jcost:.0%}'} | ≤ 20% | "
                f"{_verdict(None if jcost is None else jcost <= 0.20)} |"
            )
    for attr, name in (("rr", "round trips/s"), ("crr", "connections/s")):
        a2 = getattr(st, attr) if st is not None else None
        b2 = getattr(st_nj, attr) if st_nj is not None else None
        cost = None if a2 is None or b2 is None or b2 == 0 else 1 - a2 / b2
        lines.append(
            f"| {name} | {_fmt(a2, 0)} | | {_fmt(b2, 0)} | "
            f"{'—' if cost is None else f'{cost:.0%}'} | | | |"
        )
    per_on = st.kib_per_flow if st is not None else None
    per_off = st_nj.kib_per_flow if st_nj is not None else None
    lines.append(
        f"| RSS per idle flow, KiB | {_fmt(per_on, 1)} | | {_fmt(per_off, 1)} | | | | |"
    )

    replays = [
        (k, cr)
        for k, cr in [*results.items(), *((f"sweep/{sr.case.mtu}", sr) for sr in sweep)]
        if cr.replay is not None
    ]
    if replays:
        lines += [
            "",
            "## Replay of every session's journal",
            "",
            "Session: the stack's start to its stop (setup and pauses between measurements "
            "included). Replayed: the session time the journal still holds (its ring of "
            "segments drops the oldest past `--journal-max`; replay starts at the first "
            "segment's snapshot). Replay: `slirptrio replay JOURNAL`, process start included. "
            "Speed: replayed session time per second of replay. Target: ≥ 3x for bulk-only "
            "sessions.",
            "",
            "| session | measurements | session s | replayed s | replay s | replay speed "
            "| result |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, cr in replays:
            rc = cr.replay
            assert rc is not None
            what = "bulk" + (", rr, crr" if cr.case.rr else "")
            what += " (IPv4 and IPv6)" if cr.case.ipv6 else ""
            what += ", idle flows" if cr.case.idle else ""
            verdict = "identical" if rc.identical else f"**{rc.summary}**"
            span = "?" if rc.span_s is None else f"{min(rc.span_s, rc.session_s):.1f}"
            lines.append(
                f"| `{k}` | {what} | {rc.session_s:.1f} | {span} | {rc.replay_s:.1f} | "
                f"{rc.speed:.1f}x | {verdict} |"
            )

    if sweep:
        lines += [
            "",
            f"## slirptrio MTU sweep (`-netdev dgram`, journal on, iperf3 -t "
            f"{settings.sweep_seconds:g})",
            "",
            "| guest MTU | guest→host Gbit/s | host→guest Gbit/s |",
            "|---|---|---|",
        ]
        for sr in sweep:
            lines.append(f"| {sr.case.mtu} | {_cell_bulk(sr, 'up')} | {_cell_bulk(sr, 'down')} |")

    errors = [
        (k, e)
        for k, r in [*results.items(), *((f"sweep/{r.case.mtu}", r) for r in sweep)]
        for e in r.errors
    ]
    if errors:
        lines += ["", "## Failures", ""]
        for k, e in errors:
            first = e.splitlines()[0] if e else ""
            lines.append(f"* `{k}`: {first}")
    return "\n".join(lines) + "\n"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


_mono_start = time.monotonic()


# -- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every ``with Topology`` cleans up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def parse_args(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="3 s bulk runs, 2 s ping-pong runs")
    p.add_argument(
        "--only", default=",".join(STACKS), help="comma-separated stacks to run (default: all)"
    )
    p.add_argument("--no-sweep", action="store_true", help="skip slirptrio's MTU sweep")
    p.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    p.add_argument(
        "--keep-journals", metavar="DIR", type=Path,
        help="copy each slirptrio session's journal into DIR (to profile its replay later)",
    )
    args = p.parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in STACKS]
    if unknown:
        p.error(f"--only: unknown stack(s) {', '.join(unknown)} (known: {', '.join(STACKS)})")
    settings = Settings(
        bulk_seconds=3 if args.quick else 10,
        rr_seconds=2 if args.quick else 3,
        rr_runs=1 if args.quick else 3,
        sweep_seconds=2 if args.quick else 3,
        only=tuple(s for s in STACKS if s in only),
        sweep=not args.no_sweep and "slirptrio" in only,
        keep_journals=args.keep_journals,
    )
    global _output
    _output = args.output
    return settings


_output: Path = RESULTS
_floor: floor.Floor | None = None


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    reason = skip_reason()
    if reason is not None:
        print(f"bench: cannot run: {reason}", file=sys.stderr)
        return 1
    for tool in ("iperf3", "gcc", "slirp4netns"):
        if shutil.which(tool) is None:
            print(f"bench: cannot run: {tool} is not installed", file=sys.stderr)
            return 1
    sweep_stale()
    started = time.time()
    results: dict[str, CaseResult] = {}
    sweep: list[CaseResult] = []
    build = Path(tempfile.mkdtemp(prefix="slirptrio-bench-", dir="/tmp"))
    try:
        with _terminate_as_interrupt():
            pingpong = compile_pingpong(build)
            global _floor
            log("-- trio floor relay")
            try:
                _floor = floor.measure(pingpong, settings.rr_seconds, settings.rr_runs)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _floor = floor.Floor(error=str(exc))
            for case in cases(settings):
                results[case.key] = run_case(case, settings, pingpong)
            if settings.sweep:
                sweep_settings = dataclasses.replace(settings, bulk_seconds=settings.sweep_seconds)
                for case in sweep_cases():
                    log(f"-- sweep MTU {case.mtu}")
                    sweep.append(run_case(case, sweep_settings, pingpong))
    except KeyboardInterrupt:
        log("bench: interrupted; cleaned up")
        return 130
    finally:
        shutil.rmtree(build, ignore_errors=True)
    table = render(results, sweep, settings, started)
    print(table)
    _output.write_text(table)
    log(f"bench: wrote {_output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

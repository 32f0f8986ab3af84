"""Soak: a Linux-netns guest runs a mixed workload through slirptrio for a chosen time, with a
journal small enough that its segments rotate every few seconds; the journal must replay
identical from every segment's snapshot, all along.

    sudo python3 -m benchmarks.soak --minutes 60 --log benchmarks/soak-60.log

The guest is the e2e harness's (tests/e2e/harness.py): the Linux kernel in a namespace behind a
tap, QEMU as the frame relay, slirptrio and the test servers in a host namespace whose only way
out is a dead end. Nothing leaves the namespaces the soak creates.

The workload cycles, one step after another, through: TCP bulk downloads over IPv4 and IPv6
(checked by sha256), TCP request/response over both families, many short TCP connections
opened and closed, a download dropped in the middle, UDP echo and ping over both families, DNS
over UDP and TCP, a TFTP fetch, a hostfwd (host to guest) and a guestfwd (guest to a host
service). Every step's result is checked; a wrong one counts as a failure.

The journal is written with the lossless policy (see ``POLICY``). Every ``--sample`` seconds:
slirptrio's RSS, its descriptors, its flows (``ctl stats``), the journal's disk use and its
newest segment number. Every ``--check`` seconds the journal's directory is copied and replayed
from every segment's snapshot (each segment's records, and the next segment's snapshot compared
with the replayed core's); at the end the final journal is replayed the same way. Figures go
to ``--log`` (one JSON object per line, then a summary).
Exit 0 when every step worked, the journal rotated with no gap and no recorder failure, and
every replay was identical.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from replay.engine import Target, replay_journal
from slirptrio.journal import JournalError, open_journal
from tests.e2e.harness import (
    HOST_ADDR,
    HOST_ADDR6,
    REPO_ROOT,
    Slirptrio,
    Topology,
    skip_reason,
)
from tests.e2e.servers import pattern

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
HTTP_PORT = 8080
HTTP6_PORT = 8086
LOCAL_HTTP = 8081  # the guestfwd's target, on the host's loopback
ECHO_PORT = 7
UDP_PORT = 9999
GUEST_ECHO = 7777
HOSTFWD_PORT = 18022
TFTP_FILE = "boot.bin"
TFTP_SIZE = 300_000
BULK = 3 << 20
JOURNAL_MAX = 2 << 20  # 128 KiB segments: a new one every few seconds, many a second in bulk
POLICY = "lossless"
"""On a loaded machine the lossy policy drops records when the writer thread falls behind (a gap
named "the disk could not keep up", as designed); lossless makes the guest wait instead, so the
soak can require a journal without gaps."""


def py(*args: str) -> list[str]:
    return [sys.executable, SERVERS, *args]


@dataclasses.dataclass
class Figures:
    """What the soak measured."""

    minutes: float
    cycles: int = 0
    steps: int = 0
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    failure_notes: list[str] = dataclasses.field(default_factory=list)
    samples: int = 0
    rss_kib_start: int = 0
    rss_kib_end: int = 0
    rss_kib_max: int = 0
    fds_start: int = 0
    fds_end: int = 0
    fds_max: int = 0
    flows_max: int = 0
    disk_max: int = 0
    segments_rotated: int = 0
    checks: int = 0
    replays: int = 0
    replays_identical: int = 0
    replay_problems: list[str] = dataclasses.field(default_factory=list)
    recorder_failures: int = 0
    journal_gaps: int = 0
    exit_code: int | None = None

    @property
    def ok(self) -> bool:
        return (not self.failures and not self.replay_problems and self.replays > 0
                and self.replays == self.replays_identical and self.exit_code == 0
                and self.recorder_failures == 0 and self.journal_gaps == 0
                and self.segments_rotated > 0)


class Soak:
    """One soak run over a :class:`Topology`."""

    def __init__(self, topo: Topology, minutes: float, log: IO[str], sample_s: float,
                 check_s: float) -> None:
        self.topo = topo
        self.figures = Figures(minutes)
        self.log = log
        self.sample_s = sample_s
        self.check_s = check_s
        self.control = str(topo.dir / "ctl.sock")
        self.st: Slirptrio | None = None

    # ------------------------------------------------------------------------------ setup

    def start(self) -> None:
        topo = self.topo
        root = topo.dir / "tftproot"
        root.mkdir()
        (root / TFTP_FILE).write_bytes(pattern(TFTP_SIZE))
        for name, argv in (
            ("http", py("http", HOST_ADDR, str(HTTP_PORT))),
            ("http6", py("http", HOST_ADDR6, str(HTTP6_PORT))),
            ("http-local", py("http", "127.0.0.1", str(LOCAL_HTTP))),
            ("echo", py("tcp-echo", HOST_ADDR, str(ECHO_PORT))),
            ("echo6", py("tcp-echo", HOST_ADDR6, str(ECHO_PORT))),
            ("udp", py("udp-echo", HOST_ADDR, str(UDP_PORT))),
            ("udp6", py("udp-echo", HOST_ADDR6, str(UDP_PORT))),
            ("dns", py("dns", "5353")),
        ):
            topo.host_spawn(name, argv).wait_line("listening", 20)
        options = (f"tftp={root},hostfwd=tcp:127.0.0.1:{HOSTFWD_PORT}-:{GUEST_ECHO},"
                   f"guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:{LOCAL_HTTP}")
        self.st, _relay = topo.attach(
            "listen", options,
            extra_args=["--dns-upstream", "127.0.0.1:5353", "--control", self.control,
                        "--journal-max", str(JOURNAL_MAX), "--journal-policy", POLICY],
        )
        lease = topo.udhcpc()
        if lease.ip != "10.0.2.15":
            raise RuntimeError(f"unexpected lease {lease}")
        topo.slaac()
        topo.guest_spawn("guest-echo", py("tcp-echo", "0.0.0.0", str(GUEST_ECHO))).wait_line(
            "listening", 20)

    # ----------------------------------------------------------------------------- steps

    def _guest(self, argv: list[str], timeout: float = 120) -> str:
        out = self.topo.guest_run(argv, timeout, check=False)
        return out.stdout.strip() + (f" [exit {out.returncode}: {out.stderr.strip()[-200:]}]"
                                     if out.returncode else "")

    def _host(self, argv: list[str], timeout: float = 120) -> str:
        out = self.topo.host_run(argv, timeout, check=False)
        return out.stdout.strip() + (f" [exit {out.returncode}: {out.stderr.strip()[-200:]}]"
                                     if out.returncode else "")

    def _download(self, url: str, size: int) -> tuple[bool, str]:
        want = hashlib.sha256(pattern(size)).hexdigest()
        got = self._guest(["sh", "-c", f"curl -sS -g --max-time 100 {url} | sha256sum"])
        return got.split()[:1] == [want], got

    def steps(self) -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
        """The workload, one cycle: (name, step returning (ok, what it saw))."""
        h4, h6 = HOST_ADDR, f"[{HOST_ADDR6}]"

        def contains(text: str, argv: list[str], host: bool = False) -> tuple[bool, str]:
            got = self._host(argv) if host else self._guest(argv)
            return text in got and "[exit" not in got, got

        def dropped() -> tuple[bool, str]:
            # a download cut in the middle: curl gives up after 0.3 s, the stack must not care
            got = self._guest(["curl", "-sS", "-o", "/dev/null", "--max-time", "0.3",
                               f"http://{h4}:{HTTP_PORT}/{64 << 20}"], 30)
            return "exit 28" in got, got  # curl's "operation timed out"

        def tftp() -> tuple[bool, str]:
            local = self.topo.dir / "tftp.out"
            local.unlink(missing_ok=True)
            got = self._guest(["busybox", "tftp", "-g", "-r", TFTP_FILE, "-l", str(local),
                               "10.0.2.2"], 60)
            ok = local.exists() and local.read_bytes() == pattern(TFTP_SIZE)
            return ok, got

        return [
            ("tcp4-bulk", lambda: self._download(f"http://{h4}:{HTTP_PORT}/{BULK}", BULK)),
            ("tcp6-bulk", lambda: self._download(f"http://{h6}:{HTTP6_PORT}/{BULK}", BULK)),
            ("tcp4-rr", lambda: contains("ok", py("tcp-client", HOST_ADDR, str(ECHO_PORT),
                                                  "2000"))),
            ("tcp6-rr", lambda: contains("ok", py("tcp-client", HOST_ADDR6, str(ECHO_PORT),
                                                  "2000"))),
            ("tcp-many", lambda: contains("20/20 ok", py("tcp-many", HOST_ADDR, str(ECHO_PORT),
                                                         "20", "20000"))),
            ("tcp-dropped", dropped),
            ("udp4", lambda: contains("ok", py("udp-client", HOST_ADDR, str(UDP_PORT), "900"))),
            ("udp6", lambda: contains("ok", py("udp-client", HOST_ADDR6, str(UDP_PORT),
                                               "900"))),
            ("icmp4", lambda: contains("2 packets received",
                                       ["busybox", "ping", "-c", "2", "-W", "3", HOST_ADDR])),
            ("icmp6", lambda: contains("2 packets received",
                                       ["busybox", "ping6", "-c", "2", "-W", "3", HOST_ADDR6])),
            ("dns-udp", lambda: contains("rcode=0 answers=1", py("dns-query", "10.0.2.3",
                                                                 "a.example.test"))),
            ("dns-tcp", lambda: contains("rcode=0 answers=1", py("dns-query", "10.0.2.3",
                                                                 "a.example.test", "tcp"))),
            ("tftp", tftp),
            ("hostfwd", lambda: contains("ok", py("tcp-client", "127.0.0.1", str(HOSTFWD_PORT),
                                                  "5000"), host=True)),
            ("guestfwd", lambda: self._download(f"http://10.0.2.100/{1 << 20}", 1 << 20)),
        ]

    # --------------------------------------------------------------------------- samples

    def _emit(self, kind: str, **data: Any) -> None:
        self.log.write(json.dumps({"t": round(time.time(), 3), "kind": kind, **data}) + "\n")
        self.log.flush()

    def _stats(self) -> dict[str, Any]:
        out = self.topo.host_run([sys.executable, "-m", "slirptrio", "ctl", self.control,
                                  "--json", "stats"], 30, check=False)
        try:
            answer = json.loads(out.stdout)
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}

    def sample(self) -> None:
        assert self.st is not None
        pid = self.st.proc.pid
        rss = 0
        with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = 0
        stats = self._stats()
        flows = sum(stats.get("flows_by_state", {}).values())
        disk, newest = journal_disk(self.st.journal)
        fig = self.figures
        if fig.samples == 0:
            fig.rss_kib_start, fig.fds_start = rss, fds
        fig.samples += 1
        fig.rss_kib_end, fig.fds_end = rss, fds
        fig.rss_kib_max = max(fig.rss_kib_max, rss)
        fig.fds_max = max(fig.fds_max, fds)
        fig.flows_max = max(fig.flows_max, flows)
        fig.disk_max = max(fig.disk_max, disk)
        fig.segments_rotated = max(fig.segments_rotated, newest - 1)
        fig.recorder_failures = int(stats.get("recorder_failures", fig.recorder_failures))
        fig.journal_gaps = int(stats.get("journal_gaps", fig.journal_gaps))
        self._emit("sample", rss_kib=rss, fds=fds, flows=flows, journal_disk=disk,
                   segment=newest, recorder_failures=fig.recorder_failures,
                   journal_gaps=fig.journal_gaps, cycles=fig.cycles, steps=fig.steps)

    # ---------------------------------------------------------------------------- checks

    def check(self, final: bool = False) -> None:
        """Copy the journal and replay it from every segment's snapshot."""
        assert self.st is not None
        fig = self.figures
        with tempfile.TemporaryDirectory(dir=self.topo.dir) as tmp:
            copy = Path(tmp) / "journal"
            if final:
                copy = self.st.journal
            else:
                copy_journal(self.st.journal, copy)
            n, identical, problems = replay_every_segment(copy)
        fig.checks += 1
        fig.replays += n
        fig.replays_identical += identical
        fig.replay_problems += problems
        self._emit("check", final=final, replays=n, identical=identical, problems=problems)

    # ------------------------------------------------------------------------------- run

    def run(self) -> Figures:
        fig = self.figures
        end = time.monotonic() + fig.minutes * 60
        next_sample = next_check = time.monotonic()
        next_check += self.check_s
        steps = self.steps()
        self.sample()
        while time.monotonic() < end:
            for name, step in steps:
                try:
                    ok, seen = step()
                except Exception as exc:  # a harness timeout is a failed step too
                    ok, seen = False, f"{type(exc).__name__}: {exc}"[:300]
                fig.steps += 1
                if not ok:
                    fig.failures[name] = fig.failures.get(name, 0) + 1
                    if len(fig.failure_notes) < 20:
                        fig.failure_notes.append(f"{name}: {seen[:300]}")
                    self._emit("failure", step=name, seen=seen[:300])
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + self.sample_s
                    self.sample()
                if now >= next_check:
                    self.check()
                    next_check = time.monotonic() + self.check_s
                if time.monotonic() >= end:
                    break
            fig.cycles += 1
        self.sample()
        assert self.st is not None
        fig.exit_code = self.st.stop(timeout=60)
        self.check(final=True)
        return fig


def journal_disk(journal: Path) -> tuple[int, int]:
    """(bytes the journal's segments take on disk, the newest segment's number)."""
    total = newest = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(journal):
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_blocks * 512
                stem = entry.name.split(".")[0]
                if stem.isdigit():
                    newest = max(newest, int(stem))
    return total, newest


def copy_journal(src: Path, dst: Path) -> None:
    """Copy a live journal's segments. All are opened first (an open file outlives the ring's
    unlink), oldest first, so every segment but the last is whole (the writer starts a segment
    only after the one before it is written)."""
    dst.mkdir()
    with contextlib.ExitStack() as stack:
        opened = []
        for name in sorted(os.listdir(src)):
            with contextlib.suppress(FileNotFoundError):  # the ring deleted it just now
                opened.append((name, stack.enter_context(open(src / name, "rb"))))
        for name, f in opened:
            with open(dst / name, "wb") as out:
                shutil.copyfileobj(f, out)


def replay_every_segment(journal: Path) -> tuple[int, int, list[str]]:
    """Replay from each segment's snapshot through the start of the next segment (whose
    snapshot is compared with the replayed core); return (replays, identical, problems)."""
    try:
        segments = open_journal(journal).segments
    except JournalError as exc:
        return 1, 0, [f"{journal}: {exc}"]
    replays = identical = 0
    problems: list[str] = []
    for i, seg in enumerate(segments):
        first = seg.first_seq
        if first is None:
            continue
        until = None
        if i + 2 < len(segments) and segments[i + 2].first_seq is not None:
            until = Target(seq=segments[i + 2].first_seq)
        replays += 1
        try:
            result = replay_journal(journal, start=Target(seq=first), until=until)
        except (JournalError, OSError) as exc:
            problems.append(f"segment {seg.number}: {exc}")
            continue
        if result.divergence is not None:
            d = result.divergence
            problems.append(f"segment {seg.number}: DIVERGED ({d.kind}) at record "
                            f"{d.record.seq} {d.detail}")
        elif result.first is not None and result.first.seq != first:
            problems.append(f"segment {seg.number}: replay began at record {result.first.seq},"
                            f" not at its snapshot's {first}")
        else:
            identical += 1
    return replays, identical, problems


def summary(fig: Figures) -> list[str]:
    lines = [
        f"soak: {fig.minutes:g} min, {fig.cycles} cycles, {fig.steps} steps, "
        f"failures {sum(fig.failures.values())} {fig.failures or ''}".rstrip(),
        f"  RSS start {fig.rss_kib_start / 1024:.1f} MiB, end {fig.rss_kib_end / 1024:.1f} MiB, "
        f"max {fig.rss_kib_max / 1024:.1f} MiB; descriptors start {fig.fds_start}, end "
        f"{fig.fds_end}, max {fig.fds_max}; flows max {fig.flows_max}",
        f"  journal: --journal-max {JOURNAL_MAX >> 20} MiB ({POLICY}), disk max "
        f"{fig.disk_max / 2**20:.2f} MiB, {fig.segments_rotated} segments rotated, gaps "
        f"{fig.journal_gaps}, recorder failures {fig.recorder_failures}",
        f"  replays: {fig.replays_identical}/{fig.replays} identical from every segment's "
        f"snapshot in {fig.checks} checks; stack exit {fig.exit_code}",
        f"  {'OK' if fig.ok else 'FAILED'}",
    ]
    lines += [f"  step failure: {n}" for n in fig.failure_notes]
    lines += [f"  replay problem: {p}" for p in fig.replay_problems[:20]]
    return lines


def soak(minutes: float, log: IO[str], *, sample_s: float = 5.0,
         check_s: float = 120.0) -> Figures:
    """Run the soak for ``minutes``; figures to ``log`` as it goes, a summary at the end."""
    with Topology("soak") as topo:
        s = Soak(topo, minutes, log, sample_s, check_s)
        try:
            s.start()
            fig = s.run()
        except BaseException:
            log.write(topo.logs()[-20000:] + "\n")
            raise
        if not fig.ok:
            log.write(topo.logs()[-20000:] + "\n")
    for line in summary(fig):
        log.write(line + "\n")
    log.write(json.dumps({"kind": "figures", **dataclasses.asdict(fig), "ok": fig.ok}) + "\n")
    log.flush()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument("--log", help="figures go here (default: stdout)")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--check", type=float, default=120.0,
                        help="seconds between replays of the journal so far")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes: must be positive")
    # Started in the background (nohup, &), SIGINT comes ignored: take it back, and turn
    # SIGTERM into an exit, so that either stop tears the namespaces down on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    reason = skip_reason()
    if reason is not None:
        print(f"soak: cannot run here: {reason}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        log: IO[str] = (stack.enter_context(open(args.log, "a")) if args.log
                        else sys.stdout)
        fig = soak(args.minutes, log, sample_s=args.sample, check_s=args.check)
        if args.log:
            print("\n".join(summary(fig)))
    return 0 if fig.ok else 1


if __name__ == "__main__":
    sys.exit(main())

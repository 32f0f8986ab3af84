"""The flight recorder with the Linux kernel as the guest: a bounded journal over a long
transfer, a journal on a tiny filesystem, the lossless policy on a slow writer, private files
under umask 000, and snapshots of a real session restoring to identical effects."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import signal
import stat
import sys
import threading
import time
from typing import Any

import pytest

from benchmarks.soak import replay_every_segment
from slirptrio.core.events import GuestFrames
from slirptrio.journal import open_journal
from slirptrio.journal import writer as jw
from slirptrio.wire.framing import split_run
from tests.e2e.harness import (
    HOST_ADDR,
    HOST_ADDR6,
    REPO_ROOT,
    Relay,
    Slirptrio,
    Topology,
    replay,
    run,
)
from tests.e2e.servers import pattern
from tests.journals import read_objects, write_objects
from tests.snapshots import check_journal_restores

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
HTTP_PORT = 8080
MiB = 1 << 20


def py(*args: str) -> list[str]:
    return [sys.executable, SERVERS, *args]


def start(topo: Topology, *extra: str, options: str = "") -> tuple[Slirptrio, Relay]:
    if not any(p.name == "http" for p in topo.procs):
        topo.host_spawn("http", py("http", HOST_ADDR, str(HTTP_PORT))).wait_line("listening", 10)
        topo.host_spawn("dns", py("dns", "5353")).wait_line("listening", 10)
    st, relay = topo.attach(
        "listen", options, extra_args=["--dns-upstream", "127.0.0.1:5353", *extra]
    )
    assert topo.udhcpc().ip == "10.0.2.15"
    return st, relay


def download(topo: Topology, size: int, timeout: float = 120) -> float:
    """Fetch ``size`` patterned bytes in the guest, check their sha256; return the seconds."""
    want = hashlib.sha256(pattern(size)).hexdigest()
    t0 = time.monotonic()
    out = topo.guest_run(
        ["sh", "-c", f"curl -sS --max-time {int(timeout)} http://{HOST_ADDR}:{HTTP_PORT}/{size}"
                     " | sha256sum"],
        timeout + 10,
    )
    assert out.stdout.split()[0] == want, out.stdout + out.stderr
    return time.monotonic() - t0


def upload(topo: Topology, size: int, timeout: float = 120) -> None:
    blob = topo.dir / f"up-{size}.bin"
    blob.write_bytes(pattern(size))
    out = topo.guest_run(["curl", "-sS", "--max-time", str(int(timeout)), "-T", str(blob),
                          f"http://{HOST_ADDR}:{HTTP_PORT}/up"], timeout + 10)
    assert out.stdout.strip() == hashlib.sha256(pattern(size)).hexdigest()
    blob.unlink()


def stop(st: Slirptrio, relay: Relay) -> None:
    relay.stop()
    assert st.stop() == 0, st.proc.output()


def disk_use(path: pathlib.Path) -> int:
    """Bytes allocated to the files in ``path`` (what ``du`` counts)."""
    total = 0
    for entry in os.scandir(path):
        with contextlib.suppress(FileNotFoundError):  # the ring deleted it as we looked
            total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


class Sampler:
    """Measures a directory's disk use every few milliseconds while a test runs."""

    def __init__(self, path: pathlib.Path, every: float = 0.005) -> None:
        self.path = path
        self.every = every
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.path.exists():
                self.peak = max(self.peak, disk_use(self.path))
                self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_bounded_journal_over_256_mb(topo: Topology) -> None:
    bound = 64 * MiB
    st, relay = start(topo, "--journal-max", "64M", "--pcap-max", "64M")
    with Sampler(st.journal) as journal_use:
        for _ in range(2):
            download(topo, 64 * MiB)
            upload(topo, 64 * MiB)
    stop(st, relay)
    pcap_use = sum(p.stat().st_blocks * 512 for p in topo.dir.glob(st.pcap.name + "*"))
    assert journal_use.samples > 100
    assert journal_use.peak <= bound, journal_use.peak
    assert disk_use(st.journal) <= bound
    assert pcap_use <= bound, pcap_use
    t0 = time.monotonic()
    result = replay(st.journal, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout
    print(f"journal peak {journal_use.peak} bytes in {journal_use.samples} samples, pcap "
          f"{pcap_use}; replay {time.monotonic() - t0:.1f}s: {summary}")
    m = re.search(r"identical: (\d+) records replayed .*\(records (\d+)\.\.(\d+), (.+) to (.+), "
                  r"t=", summary)
    assert m is not None, summary
    assert int(m.group(2)) > 0, "the oldest segments went"
    assert "gap" not in summary


def ctl_stats(ctl: pathlib.Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = run([sys.executable, "-m", "slirptrio", "ctl", str(ctl), "--json", "stats"], 30,
              env=env)
    stats = json.loads(out.stdout)
    assert isinstance(stats, dict)
    return stats


def test_kill_9_loses_at_most_the_batch_in_flight(topo: Topology) -> None:
    ctl = topo.dir / "ctl.sock"
    st, relay = start(topo, "--control", str(ctl))
    download(topo, 4 * MiB)
    frames_in = ctl_stats(ctl)["counters"]["frames_in"]
    # Every record of those frames was handed to the writer before the stack answered (a
    # burst's records go at its end); wait until the writer has written all it was handed.
    deadline = time.monotonic() + 30
    while (stats := ctl_stats(ctl))["journal_queued_bytes"] != 0:
        assert time.monotonic() < deadline, stats
    os.kill(st.proc.pid, signal.SIGKILL)
    st.proc.wait(10)
    relay.stop()
    result = replay(st.journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr
    journal = open_journal(st.journal)
    guest_frames = sum(
        len(split_run(r.event[1])) if r.event[0] == GuestFrames.TAG else r.event[0] == 0
        for r in journal.records
    )  # frames one by one, or a burst's in a run
    assert guest_frames >= frames_in, (guest_frames, frames_in)


def test_journal_on_a_tiny_filesystem(topo: Topology) -> None:
    tiny = topo.dir / "tiny"
    tiny.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(tiny)], 10)
    try:
        _tiny_fs_session(topo, tiny)
    finally:
        run(["umount", "-l", str(tiny)], 10, check=False)


def _tiny_fs_session(topo: Topology, tiny: pathlib.Path) -> None:
    journal = tiny / "j"
    st, relay = start(topo, "--journal", str(journal), "--no-pcap")
    download(topo, 64 * MiB)
    st.proc.wait_line("journal: stopped (No space left on device)", 10, tag="err")
    assert st.proc.alive()
    assert topo.ping("10.0.2.2").returncode == 0, "the stack stays up"
    # Space comes back: journaling resumes with a new segment.
    run(["mount", "-o", "remount,size=64m", str(tiny)], 10)
    deadline = time.monotonic() + 20
    while "journal: writing again" not in st.proc.output():
        assert time.monotonic() < deadline, st.proc.output()
        topo.ping("10.0.2.2", count=1, check=False)
    download(topo, 4 * MiB)
    stop(st, relay)
    assert "Traceback" not in st.proc.output()
    result = replay(journal, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(r"gap: \d+ records lost after record \d+ \(No space left on device\)",
                     result.stdout), result.stdout
    segs = open_journal(journal).segments
    assert len(segs) >= 2 and segs[-1].header.segment is not None
    assert segs[-1].header.segment.gap == {"reason": "No space left on device"}


def test_lossless_slows_the_guest_instead_of_losing_records(
    topo: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 8 * MiB
    rate = 2 * MiB  # bytes per second the writer may write
    monkeypatch.setenv(jw.THROTTLE_ENV, str(rate))
    st, relay = start(topo, "--journal-policy", "lossless", "--journal-buffer", "1M", "--no-pcap")
    seconds = download(topo, size)
    stop(st, relay)
    result = replay(st.journal, timeout=300)
    assert result.returncode == 0 and "gap" not in result.stdout, result.stdout + result.stderr
    journal_bytes = sum(s.size for s in open_journal(st.journal).segments)
    assert journal_bytes > size
    # The guest got its bytes no faster than the writer could journal them.
    assert seconds >= 0.8 * (size / rate), seconds
    # The same throttle under the lossy policy: the guest is not slowed, the journal has gaps.
    st2, relay2 = start(topo, "--journal-buffer", "1M", "--no-pcap")
    fast = download(topo, size)
    stop(st2, relay2)
    lossy = replay(st2.journal, timeout=300)
    assert lossy.returncode == 0 and "gap:" in lossy.stdout, lossy.stdout + lossy.stderr
    assert fast < seconds / 2, (fast, seconds)


def test_private_files_under_umask_000_and_snapshots_of_the_session(topo: Topology) -> None:
    old = os.umask(0)
    try:
        st, relay = start(topo)
    finally:
        os.umask(old)
    topo.guest_run(py("dns-query", "10.0.2.3", "vm.example.test"), 30)
    pinged = topo.ping(HOST_ADDR, check=False)
    assert pinged.returncode == 0 and "3 packets received" in pinged.stdout, pinged.stdout
    download(topo, 2 * MiB)
    upload(topo, 1 * MiB)
    stop(st, relay)
    assert stat.S_IMODE(st.journal.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in st.journal.iterdir())
    segs = sorted(st.journal.glob("*.seg"))
    assert segs
    assert stat.S_IMODE(st.pcap.stat().st_mode) == 0o600
    result = replay(st.journal)
    assert result.returncode == 0, result.stdout + result.stderr
    # The real session: a snapshot after every record restores to the same effects.
    checked = check_journal_restores(st.journal, window=32, to_end_every=200)
    assert checked > 50  # a record is a burst: a few hundred for these transfers
    # The same journal with one constant changed by hand: a mismatch, said before anything.
    for seg in segs:
        _set_constant(seg, "core.tcp.RTO_MIN_NS", 1)
        _set_constant(seg, "core.dhcp.DHCP_LEASE_TIME", 60)
    out = replay(st.journal)
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stdout.startswith("MISMATCH: the journal's core constants differ"), out.stdout
    assert "core.dhcp.DHCP_LEASE_TIME: journal 60, this build 86400" in out.stdout


def _set_constant(seg: pathlib.Path, name: str, value: int) -> None:
    """Change a constant in a segment's header (its CRCs written anew: a deliberate edit, not
    damage)."""
    items = read_objects(seg)
    items[0]["constants"][name] = value
    write_objects(seg, items)


def test_ipv6_flows_then_8_mib_through_a_4m_journal(topo: Topology) -> None:
    """Issue #18's proof: IPv6 ping and UDP to an outside address leave IPv6 flows in the core;
    then 8 MiB rotate the 4M journal's segments (a snapshot each). The download completes
    intact, the stack lives, and the journal replays identical from every segment's snapshot.
    Should a snapshot raise (the recorder's bug), the segment ends with a gap naming it and
    the network never notices."""
    ctl = topo.dir / "ctl.sock"
    topo.host_spawn("udp6", py("udp-echo", HOST_ADDR6, "9999")).wait_line("listening", 10)
    st, relay = start(topo, "--journal-max", "4M", "--control", str(ctl))
    topo.slaac()
    pinged = topo.ping6(HOST_ADDR6, count=2)
    assert "2 packets received" in pinged.stdout, pinged.stdout
    sent = topo.guest_run(py("udp-client", HOST_ADDR6, "9999", "100"), 30).stdout.strip()
    assert sent == f"ok {HOST_ADDR6}", sent
    # the IPv6 UDP and ping flows are in the core now (no IPv4 UDP or ping was sent)
    kinds = {k.split(":")[0] for k in ctl_stats(ctl)["flows_by_state"]}
    assert {"udp", "icmp"} <= kinds, kinds
    download(topo, 8 * MiB)
    assert st.proc.alive()
    pinged = topo.ping6(HOST_ADDR6, count=1)  # the stack lives, IPv6 too
    assert "1 packets received" in pinged.stdout, pinged.stdout
    stats = ctl_stats(ctl)
    failures = stats["recorder_failures"]
    print(f"recorder failures {failures} ({stats['recorder_last_failure']}), journal gaps "
          f"{stats['journal_gaps']}")
    stop(st, relay)
    assert "Traceback" not in "".join(st.proc.lines("out"))
    journal = open_journal(st.journal)
    if failures:
        # Containment: each failure named, in the log and in the journal; nothing else broke.
        reason = stats["recorder_last_failure"]
        assert reason.startswith("snapshot failed: "), reason
        assert f"journal: {reason}" in st.proc.output()
        list(journal.records)
        named = [e.reason for e in journal.ended] + [g.reason for g in journal.gaps]
        assert any(r.startswith("snapshot failed: ") for r in named), named
    else:
        # 8 MiB of inputs through segments of 256 KiB or more (a segment ends after the
        # burst that filled it): the ring rotated often, and holds the last 4M in a few.
        numbers = [s.number for s in journal.segments]
        assert len(numbers) >= 3 and numbers[0] > 1 and numbers[-1] >= 8, numbers
        assert stats["journal_gaps"] == 0
    replays, identical, problems = replay_every_segment(st.journal)
    assert replays == len([s for s in journal.segments if s.first_seq is not None])
    assert replays == identical and not problems, problems
    result = replay(st.journal, timeout=300)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr

"""The journal writer: segments and their ring, gaps on failures and on a slow disk, lossless
backpressure, a removed file, the rotating pcap, and private files whatever the umask."""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from replay.engine import replay_journal
from slirptrio.config import parse_user_options
from slirptrio.core.events import GuestFrame, Tick
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import files, open_journal
from slirptrio.journal import writer as jw
from slirptrio.journal.files import UnsafePathError
from slirptrio.wire.pcap import read_pcap
from tests import guestframes as gf
from tests.journals import header_for, segments

CONFIG = parse_user_options("hostname=vm1")
SEED = 5


def pings(n: int) -> Iterator[GuestFrame]:
    for i in range(n):
        yield GuestFrame(gf.icmp_echo("10.0.2.2", seq=i, payload=bytes(range(200))))


class FlakyDisk(jw.DiskFiles):
    """Files whose writes fail with ENOSPC while ``full`` is set, or block while ``stall``
    is clear."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.full = False
        self.stall = threading.Event()
        self.stall.set()

    def append(self, parts: Sequence[jw.Buffer], nbytes: int) -> None:
        self.stall.wait(10)
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().append(parts, nbytes)

    def new_segment(self, number: int, data: bytes) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().new_segment(number, data)


def open_recorder(
    path: pathlib.Path,
    *,
    journal_max: int | None = None,
    pcap: pathlib.Path | None = None,
    pcap_max: int | None = None,
    policy: str = "lossy",
    budget: int = jw.DEFAULT_BUDGET,
    threaded: bool = False,
    disk_cls: type[jw.DiskFiles] = jw.DiskFiles,
    clock: Any = time.monotonic,
    overwrite: bool = False,
) -> tuple[jw.Recorder, Door]:
    disk = disk_cls(str(path), journal_max, str(pcap) if pcap else None, pcap_max,
                    overwrite=overwrite)
    writer = jw.Writer(disk, budget=budget, policy=policy, threaded=threaded)
    seg = jw.segment_bytes_for(journal_max) if journal_max else 1 << 62
    journal = jw.JournalRecorder(writer, header_for(CONFIG, SEED), segment_bytes=seg,
                                 clock=clock)
    pcap_rec = jw.PcapRecorder(writer) if pcap else None
    rec = jw.Recorder(writer, journal, pcap_rec, 0)
    door = Door(Stack(CONFIG, SEED), rec)
    rec.attach(door.snapshot)
    return rec, door


def allocated_on_disk(path: pathlib.Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.iterdir())


def test_ring_keeps_the_last_part_within_the_bound(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    bound = 8 * jw.MIN_SEGMENT_BYTES
    rec, door = open_recorder(path, journal_max=bound)
    worst = 0
    for i, ev in enumerate(pings(6000)):
        door.step(ev, i * 1_000_000)
        if i % 16 == 15:
            rec.flush()
            worst = max(worst, allocated_on_disk(path), rec.writer.disk.ring_bytes())
    rec.close()
    assert worst <= bound
    segs = segments(path)
    assert len(segs) >= 7  # at least 7/8 of the bound is kept
    assert segs[0].name != "00000001.seg"  # the oldest went
    result = replay_journal(path)
    assert result.identical and result.first is not None and result.last is not None
    assert result.first.seq > 0 and result.last.seq == 5999
    assert result.gaps == [] and result.segments == len(segs)


def test_replay_from_a_record_starts_at_the_nearest_snapshot(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    rec, door = open_recorder(path, journal_max=8 * jw.MIN_SEGMENT_BYTES)
    for i, ev in enumerate(pings(3000)):
        door.step(ev, i * 1_000_000)
        rec.flush()
    rec.close()
    journal = open_journal(path)
    starts = [s.first_seq for s in journal.segments]
    target = 2500
    index = journal.segment_for(seq=target)
    first_seq = journal.segments[index].first_seq
    assert first_seq is not None and first_seq <= target
    assert index == len(starts) - 1 or (starts[index + 1] or 0) > target
    from replay.engine import Target

    result = replay_journal(path, start=Target(seq=target), until=Target(t_ns=2_700_000_000))
    assert result.identical and result.first is not None and result.first.seq == first_seq
    assert result.window[0] is not None and result.window[0].seq == target
    assert result.window[1] is not None and result.window[1].seq == 2699


def test_disk_full_makes_a_gap_and_one_log_line_then_resumes(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]
    path = tmp_path / "j"
    rec, door = open_recorder(path, disk_cls=FlakyDisk, clock=lambda: now[0])
    disk = rec.writer.disk
    assert isinstance(disk, FlakyDisk)
    caplog.set_level(logging.WARNING, "slirptrio.journal")
    frames = list(pings(300))
    for i, ev in enumerate(frames):
        if i == 100:
            disk.full = True
        if i == 200:
            disk.full = False
        if i in (150, 250):
            now[0] += jw.RETRY_S + 0.1  # time passes: the recorder tries again
        effects = door.step(ev, i * 1_000_000)
        assert effects, "the network goes on"
        rec.flush()
    rec.close()
    stopped = [r for r in caplog.records if "journal: stopped" in r.getMessage()]
    assert len(stopped) == 1 and "No space left on device" in stopped[0].getMessage()
    assert any("journal: writing again" in r.getMessage() for r in caplog.records)
    result = replay_journal(path)
    assert result.identical
    (gap,) = result.gaps
    assert gap.after_seq == 99 and gap.next_seq > 200 and "No space" in gap.reason
    assert result.last is not None and result.last.seq == 299


def test_slow_disk_lossy_drops_records_never_blocks(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j"
    rec, door = open_recorder(path, disk_cls=FlakyDisk, threaded=True, budget=64 << 10)
    disk = rec.writer.disk
    assert isinstance(disk, FlakyDisk)
    caplog.set_level(logging.WARNING, "slirptrio.journal")
    disk.stall.clear()  # the disk stops taking writes
    t0 = time.monotonic()
    for i, ev in enumerate(pings(2000)):
        door.step(ev, i * 1_000_000)
        if i % 10 == 9:
            rec.flush()
            assert not rec.backlogged
            if i > 1500:
                # A disk that keeps up from now on: let the writer thread (which the GIL may
                # starve on a loaded machine) drain every batch.
                assert rec.writer.wait_below(0, timeout=10)
        if i == 1500:
            disk.stall.set()  # and catches up
            assert rec.writer.wait_below(0, timeout=10)
    # A hang detector, not a speed target: the disk took no write until record 1500, so a
    # loop that waited for it would never have got there.
    assert time.monotonic() - t0 < 60, "the loop never waited for the disk"
    rec.close()
    assert any("cannot keep up" in r.getMessage() for r in caplog.records)
    result = replay_journal(path)
    assert result.identical and len(result.gaps) == 1
    assert "could not keep up" in result.gaps[0].reason
    assert result.last is not None and result.last.seq == 1999


def test_a_gap_at_the_end_is_named_too(tmp_path: pathlib.Path) -> None:
    """Records dropped by a slow disk just before the session ends, with no burst after the
    writer caught up: closing waits for it, so the journal ends with a segment naming the gap
    rather than silently short (bursts make few records, so the case is not rare)."""
    path = tmp_path / "j"
    rec, door = open_recorder(path, disk_cls=FlakyDisk, threaded=True, budget=64 << 10)
    disk = rec.writer.disk
    assert isinstance(disk, FlakyDisk)
    disk.stall.clear()
    for i, ev in enumerate(pings(1000)):
        door.step(ev, i * 1_000_000)
        if i % 10 == 9:
            rec.flush()
    assert rec.journal is not None and rec.journal.behind
    threading.Timer(0.2, disk.stall.set).start()  # the disk catches up while we close
    rec.close()
    result = replay_journal(path)
    assert result.identical and len(result.gaps) == 1
    assert "could not keep up" in result.gaps[0].reason


def test_slow_disk_lossless_backpressure_and_no_gap(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    rec, door = open_recorder(path, disk_cls=FlakyDisk, threaded=True, budget=64 << 10,
                              policy="lossless")
    disk = rec.writer.disk
    assert isinstance(disk, FlakyDisk)
    disk.stall.clear()
    backlogged_at = None
    for i, ev in enumerate(pings(1000)):
        door.step(ev, i * 1_000_000)
        if i % 10 == 9:
            rec.flush()
            if rec.backlogged:
                backlogged_at = i
                break
    assert backlogged_at is not None, "the budget filled up"
    waiter = threading.Thread(target=rec.wait_writable)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "the loop waits while the disk is stalled"
    disk.stall.set()
    waiter.join(10)
    assert not waiter.is_alive()
    rec.close()
    result = replay_journal(path)
    assert result.identical and result.gaps == []
    assert result.last is not None and result.last.seq == backlogged_at


def test_lossless_waits_out_a_full_disk(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    rec, door = open_recorder(path, disk_cls=FlakyDisk, threaded=True, budget=16 << 10,
                              policy="lossless")
    disk = rec.writer.disk
    assert isinstance(disk, FlakyDisk)
    disk.full = True
    timer = threading.Timer(2 * jw.RETRY_S, lambda: setattr(disk, "full", False))
    timer.start()
    for i, ev in enumerate(pings(400)):
        door.step(ev, i * 1_000_000)
        rec.flush()
        if rec.backlogged:
            rec.wait_writable()
    timer.join()
    rec.close()
    result = replay_journal(path)
    assert result.identical and result.gaps == [] and result.records == 400


def test_removed_segment_is_noticed_and_a_new_one_started(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(jw, "REMOVED_CHECK_S", 0.0)
    now = [0.0]
    path = tmp_path / "j"
    rec, door = open_recorder(path, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "slirptrio.journal")
    for i, ev in enumerate(pings(100)):
        if i == 50:
            (only,) = segments(path)
            only.unlink()
        if i == 70:
            now[0] += jw.RETRY_S + 0.1
        door.step(ev, i * 1_000_000)
        rec.flush()
    rec.close()
    assert any("journal file was removed" in r.getMessage() for r in caplog.records)
    result = replay_journal(path)
    assert result.identical and result.first is not None and result.first.seq > 50
    assert result.last is not None and result.last.seq == 99


def test_pcap_rotates_within_its_bound(tmp_path: pathlib.Path) -> None:
    pcap = tmp_path / "p.pcap"
    rec, door = open_recorder(tmp_path / "j", pcap=pcap, pcap_max=256 << 10)
    for i, ev in enumerate(pings(3000)):
        door.step(ev, i * 1_000_000)
        rec.flush()
        if i % 100 == 0:
            used = sum(p.stat().st_size for p in tmp_path.glob("p.pcap*"))
            assert used <= 256 << 10
    rec.close()
    older = tmp_path / "p.pcap.1"
    assert older.exists()
    with older.open("rb") as f1, pcap.open("rb") as f2:
        frames = list(read_pcap(f1)) + list(read_pcap(f2))
    assert len(frames) > 500
    times = [t for t, _ in frames]
    assert times == sorted(times) and times[-1] == 2999 * 1_000_000


def test_files_are_private_whatever_the_umask(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slirptrio.cli.session import default_journal_path

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    old = os.umask(0)
    try:
        # the command line's default place is the only directory made for a journal
        path = pathlib.Path(default_journal_path())
        pcap = path.with_suffix(".pcap")
        rec, door = open_recorder(path, pcap=pcap)
        door.step(next(pings(1)), 0)
        rec.close()
    finally:
        os.umask(old)
    assert path.parent == tmp_path / "state" / "slirptrio"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    for seg in segments(path):
        assert stat.S_IMODE(seg.stat().st_mode) == 0o600
    assert stat.S_IMODE(pcap.stat().st_mode) == 0o600


def test_never_through_a_symlink(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "j").symlink_to(target)
    with pytest.raises(UnsafePathError, match="symlink"):
        open_recorder(tmp_path / "j")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "p.pcap").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symlink"):
        open_recorder(tmp_path / "j2", pcap=tmp_path / "p.pcap")
    assert victim.read_bytes() == b"precious"


def test_an_existing_directory_of_other_files_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(UnsafePathError, match="other files"):
        open_recorder(path)
    assert (path / "notes.txt").exists()


def test_a_journal_is_replaced_only_when_asked(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    pcap = tmp_path / "p.pcap"
    for n, overwrite in ((300, False), (10, True)):
        rec, door = open_recorder(path, journal_max=8 * jw.MIN_SEGMENT_BYTES, pcap=pcap,
                                  overwrite=overwrite)
        for i, ev in enumerate(pings(n)):
            door.step(ev, i * 1_000_000)
            rec.flush()
        rec.close()
        if n == 300:
            before = {p.name: p.read_bytes() for p in segments(path)}
            kept_pcap = pcap.read_bytes()
            with pytest.raises(files.ExistsError, match="--overwrite"):
                open_recorder(path)
            with pytest.raises(files.ExistsError, match="--overwrite"):
                open_recorder(tmp_path / "other", pcap=pcap)
            assert {p.name: p.read_bytes() for p in segments(path)} == before
            assert pcap.read_bytes() == kept_pcap
            assert replay_journal(path).records == 300
    assert replay_journal(path).records == 10
    with pcap.open("rb") as f:
        assert len(list(read_pcap(f))) == 20  # 10 pings and their replies


def test_a_live_journal_and_pcap_are_locked(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    pcap = tmp_path / "p.pcap"
    rec, door = open_recorder(path, pcap=pcap)
    for i, ev in enumerate(pings(20)):
        door.step(ev, i * 1_000_000)
    rec.flush()
    # a second session is refused even with overwrite, and changes nothing
    with pytest.raises(files.InUseError, match="in use by another running slirptrio"):
        open_recorder(path, overwrite=True)
    with pytest.raises(files.InUseError, match="in use"):
        open_recorder(tmp_path / "j2", pcap=pcap, overwrite=True)
    for i, ev in enumerate(pings(20)):
        door.step(ev, (20 + i) * 1_000_000)
    rec.flush()
    rec.close()
    assert replay_journal(path).records == 40
    with pcap.open("rb") as f:
        assert len(list(read_pcap(f))) == 80
    # once it ended, the lock is free: overwriting is a choice again
    rec, door = open_recorder(path, pcap=pcap, overwrite=True)
    rec.close()


def test_a_path_in_a_missing_directory_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_recorder(tmp_path / "missing" / "a" / "j")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_recorder(tmp_path / "j", pcap=tmp_path / "missing" / "p.pcap")
    assert not (tmp_path / "missing").exists()


def test_kill_during_a_segment_start_leaves_a_readable_journal(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    rec, door = open_recorder(path, journal_max=8 * jw.MIN_SEGMENT_BYTES)
    for i, ev in enumerate(pings(2000)):
        door.step(ev, i * 1_000_000)
        rec.flush()
    door.step(Tick(), 3_000_000_000)
    rec.close()
    last = segments(path)[-1]
    os.truncate(last, 100)  # cut inside the header or the snapshot
    result = replay_journal(path)
    assert result.identical and result.records > 0


def test_a_big_snapshot_makes_its_segment_longer(tmp_path: pathlib.Path) -> None:
    """Segments hold at least SNAPSHOT_SHARE times their snapshot, so snapshots of a core with
    many busy flows never crowd the records out of the ring."""
    disk = jw.DiskFiles(str(tmp_path / "j"), None, None, None)
    writer = jw.Writer(disk, threaded=False)
    rec = jw.JournalRecorder(writer, header_for(CONFIG, SEED), segment_bytes=64 << 10)
    seq = [0]
    rec.attach(lambda: {"seq": seq[0], "now_ns": 0, "stack": {"big": bytes(100_000)}})
    for i in range(2000):
        rec.record(i, i, GuestFrame(bytes(1000)), [])
        seq[0] = i + 1
        rec.flush()
    writer.close()
    sizes = [p.stat().st_size for p in segments(tmp_path / "j")]
    assert len(sizes) >= 2
    assert all(size >= jw.SNAPSHOT_SHARE * 100_000 for size in sizes[:-1]), sizes


def test_a_full_disk_at_the_start_does_not_stop_the_stack(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = files.open_private_dir
    calls = [0]

    def full_at_first(path: str, **kw: Any) -> int:
        calls[0] += 1
        if calls[0] <= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, **kw)

    monkeypatch.setattr(files, "open_private_dir", full_at_first)
    caplog.set_level(logging.WARNING, "slirptrio.journal")
    now = [0.0]
    path = tmp_path / "j"
    rec, door = open_recorder(path, clock=lambda: now[0])
    for i, ev in enumerate(pings(50)):
        if i == 20:
            now[0] += jw.RETRY_S + 0.1
        assert door.step(ev, i * 1_000_000)
        rec.flush()
    rec.close()
    assert "cannot create" in caplog.text and "journal: writing again" in caplog.text
    result = replay_journal(path)
    assert result.identical and result.first is not None and 0 < result.first.seq <= 21
    assert result.last is not None and result.last.seq == 49


def test_a_burst_bigger_than_the_bound_is_flushed_between_steps(tmp_path: pathlib.Path) -> None:
    """A burst (thousands of steps before the runtime flushes) can hold more than the whole
    bound; the recorder asks for a flush between two steps once it holds a segment's worth,
    so the ring still keeps within the bound and no segment is refused as too big."""
    path = tmp_path / "j"
    bound = 4 * jw.MIN_SEGMENT_BYTES
    rec, door = open_recorder(path, journal_max=bound)
    flushes = 0
    worst = 0
    for i, ev in enumerate(pings(5000)):  # ~1.6 MB of records: six times the bound
        door.step(ev, i * 1_000_000)
        if rec.flush_due:  # what the runtime does after each step
            rec.flush()
            flushes += 1
            worst = max(worst, allocated_on_disk(path))
    rec.flush()
    rec.close()
    assert flushes >= 20
    assert worst <= bound
    assert rec.writer.failures == 0 and rec.journal is not None and rec.journal.gaps == 0
    result = replay_journal(path)
    assert result.identical and result.gaps == [] and result.last is not None
    assert result.last.seq == 4999

"""Record checksums (journal format 4): bytes damaged on disk are reported as damage, with the
record, segment and offset, and their own exit status, never as a divergence; older formats
(no checksums) still replay."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import msgpack
import pytest

from replay import engine
from replay.engine import replay_journal
from slirptrio.config import parse_user_options
from slirptrio.core.events import GuestFrame
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import FORMAT_VERSION, JournalDamaged, open_journal
from slirptrio.journal import writer as jw
from tests import guestframes as gf
from tests.journals import header_for, segments

REPO = pathlib.Path(__file__).resolve().parents[1]
CAPTURES = REPO / "captures"


def pings(n: int) -> Iterator[GuestFrame]:
    for i in range(n):
        yield GuestFrame(gf.icmp_echo("10.0.2.2", seq=i, payload=bytes(range(200))))


def record(path: pathlib.Path, n: int = 1200, per_batch: int = 5) -> None:
    """A journal of ``n`` pings in batches of ``per_batch`` records, over several segments."""
    config = parse_user_options("")
    rec = jw.Recorder.open(header_for(config, 3), journal_dir=str(path), pcap_path=None,
                           journal_max=None, threaded=False)
    rec.journal._segment_bytes = rec.journal._seg_limit = jw.MIN_SEGMENT_BYTES // 4  # type: ignore[union-attr]
    door = Door(Stack(config, 3), rec)
    rec.attach(door.snapshot)
    for i, ev in enumerate(pings(n)):
        door.step(ev, i * 1_000_000)
        if i % per_batch == per_batch - 1:
            rec.flush()
    rec.close()


def batches(seg: pathlib.Path) -> list[tuple[int, int, int]]:
    """(offset, first record's seq, size) of every batch in a format-4 segment."""
    data = seg.read_bytes()
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(data)
    unpacker.unpack()  # header
    unpacker.unpack()  # checked snapshot
    out: list[tuple[int, int, int]] = []
    while True:
        at = unpacker.tell()
        try:
            item = unpacker.unpack()
        except msgpack.OutOfData:
            return out
        inner = msgpack.Unpacker(raw=False, strict_map_key=False)
        inner.feed(item[2])
        first = next(iter(inner))[0]
        out.append((at, first, unpacker.tell() - at))


def flip(path: pathlib.Path, offset: int, count: int = 4) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(count))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


@pytest.fixture
def journal(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "j"
    record(path)
    assert open_journal(path).format == FORMAT_VERSION == 4
    assert len(segments(path)) >= 4
    assert replay_journal(path).identical
    return path


def test_flipped_bytes_in_a_batch(journal: pathlib.Path, capsys: pytest.CaptureFixture[str]
                                  ) -> None:
    seg = segments(journal)[2]
    number = open_journal(seg).header.segment.number  # type: ignore[union-attr]
    at, first, size = batches(seg)[3]
    flip(seg, at + size - 20)  # inside the records, past the batch's own framing
    with pytest.raises(JournalDamaged) as caught:
        replay_journal(journal)
    assert caught.value.seq == first and caught.value.segment == number
    assert caught.value.offset == at
    assert str(caught.value).startswith(
        f"journal damaged at record {first} (segment {number}, offset {at}): the CRC of a "
        "batch of 5 records does not match")
    # the command line: its own exit status and line, not DIVERGED
    assert engine.main(str(journal), progress=False) == engine.EXIT_DAMAGED == 4
    out = capsys.readouterr().out
    assert out.startswith(f"DAMAGED: journal damaged at record {first} (segment {number}, "
                          f"offset {at})")
    assert "DIVERGED" not in out
    # a later segment still replays on its own
    later = open_journal(journal).segments[3].first_seq
    assert replay_journal(journal, start=engine.Target(seq=later)).identical


def test_flipped_bytes_in_a_snapshot_or_a_header(journal: pathlib.Path) -> None:
    segs = segments(journal)
    opened = open_journal(journal)
    seg, info = segs[1], opened.segments[1]
    flip(seg, seg.stat().st_size // 2 if not batches(seg) else batches(seg)[0][0] - 40)
    with pytest.raises(JournalDamaged, match=rf"journal damaged at record {info.first_seq} "
                       rf"\(segment {info.number}, offset \d+\): the CRC of the header and "
                       "snapshot does not match"):
        replay_journal(journal)
    # a value in a header changed (the seed), the map still readable: the CRC sees it too
    items = list(msgpack.Unpacker(segs[2].open("rb"), raw=False, strict_map_key=False))
    head = msgpack.packb(items[0], use_bin_type=True)
    items[0]["seed"] ^= 1
    assert len(msgpack.packb(items[0], use_bin_type=True)) == len(head)
    with segs[2].open("r+b") as f:
        f.write(msgpack.packb(items[0], use_bin_type=True))
    with pytest.raises(JournalDamaged, match="header and snapshot"):
        replay_journal(journal, start=engine.Target(seq=opened.segments[2].first_seq))


def test_damage_that_breaks_the_framing(journal: pathlib.Path) -> None:
    seg = segments(journal)[1]
    at, first, _size = batches(seg)[2]
    with seg.open("r+b") as f:  # the batch's array marker becomes a string
        f.seek(at)
        f.write(b"\xa3")
    with pytest.raises(JournalDamaged, match=rf"journal damaged at record {first} "):
        replay_journal(journal)
    # a non-last segment cut short is damage too (a kill -9 only cuts the last one)
    record(journal.parent / "k")
    k = segments(journal.parent / "k")
    at, first, _size = batches(k[1])[-1]
    os.truncate(k[1], at + 10)
    with pytest.raises(JournalDamaged, match=rf"record {first} .*ends inside a batch"):
        replay_journal(journal.parent / "k")


def test_a_cut_off_last_segment_is_truncation_not_damage(tmp_path: pathlib.Path) -> None:
    # a count that leaves records in the last segment whatever a snapshot's size
    journal = tmp_path / "j"
    for n in range(1201, 1260, 7):
        record(journal, n)
        if batches(segments(journal)[-1]):
            break
        for seg in journal.iterdir():
            seg.unlink()
        journal.rmdir()
    last = segments(journal)[-1]
    at, first, _size = batches(last)[-1]
    os.truncate(last, at + 10)
    result = replay_journal(journal)
    assert result.identical and 0 < result.truncated_bytes <= 10
    assert result.last is not None and result.last.seq == first - 1


def test_the_command_line_exit_status(journal: pathlib.Path) -> None:
    seg = segments(journal)[1]
    at, first, size = batches(seg)[1]
    flip(seg, at + size - 8)
    out = subprocess.run([sys.executable, "-m", "slirptrio", "replay", str(journal)],
                         env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 4, out.stdout + out.stderr
    assert f"journal damaged at record {first} (segment 2, offset {at})" in out.stdout


@pytest.mark.parametrize("path", [*sorted((CAPTURES / "format3").glob("*.journal")),
                                  *sorted((CAPTURES / "format2").glob("*.journal"))],
                         ids=lambda p: p.name)
def test_older_formats_still_replay(path: pathlib.Path) -> None:
    assert open_journal(path).format in (2, 3)
    result = replay_journal(path)
    assert result.identical and result.records > 5

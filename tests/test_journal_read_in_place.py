"""The reader's in-place path (a segment mapped, each format-4 batch CRC-checked and unpacked
where it lies) against the general one (the file's msgpack unpacker, :func:`_batch`): for an
intact journal and for any damage (bytes changed, a file cut short, an end note) both give
the same records, gaps, truncations and end notes, or raise the same error."""

from __future__ import annotations

import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slirptrio.journal import JournalDamaged, JournalError, open_journal
from slirptrio.journal import reader as jr
from tests.journals import segments
from tests.test_journal_damage import batches, record


def outcome(path: pathlib.Path) -> tuple[Any, ...]:
    """Everything a reading of ``path`` gives, an error included."""
    items: list[Any] = []
    try:
        journal = open_journal(path)
        for item in journal.entries():
            if isinstance(item, jr.SegmentStart):
                items.append(("segment", item.segment.number, item.snapshot, item.gap))
            else:
                items.append((item.seq, item.t_ns, item.event, item.effects))
    except JournalError as exc:
        return (items, type(exc).__name__, str(exc))
    return (items, journal.gaps, journal.truncated, journal.ended, journal.bytes_read)


def both(path: pathlib.Path) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(in place, general) readings of ``path``."""
    mapped = 0
    real = jr._Mapped.of

    def counting(f: Any) -> jr._Mapped | None:
        nonlocal mapped
        mapped += 1
        return real(f)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jr._Mapped, "of", staticmethod(counting))
        fast = outcome(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jr._Mapped, "of", staticmethod(lambda f: None))
        general = outcome(path)
    assert mapped > 0 or len(fast) == 3  # tried, unless no segment opened
    return fast, general


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    path = tmp_path_factory.mktemp("inplace") / "j"
    record(path, n=400, per_batch=7)
    yield path


def test_intact_journal_reads_the_same(recorded: pathlib.Path) -> None:
    fast, general = both(recorded)
    assert fast == general
    assert len(fast) == 5 and len(fast[0]) > 400  # records and segment starts, no error


def test_the_in_place_path_reads_the_batches(recorded: pathlib.Path) -> None:
    """Every batch of an intact segment is read in place, none left to the general reader."""
    seg = segments(recorded)[1]
    at, _first, _size = batches(seg)[0]
    with seg.open("rb") as f:
        mapped = jr._Mapped.of(f)
        assert mapped is not None
        try:
            ends = [end for end, _records in mapped.batches(at)]
        finally:
            mapped.close()
    assert ends == [a + s for a, _f, s in batches(seg)] and ends[-1] == seg.stat().st_size


def test_an_end_note_and_what_follows_read_the_same(recorded: pathlib.Path,
                                                    tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    shutil.copytree(recorded, path)
    seg = segments(path)[1]
    at, _first, size = batches(seg)[2]
    data = seg.read_bytes()
    note = msgpack.packb({"end": "a snapshot raised"}, use_bin_type=True)
    seg.write_bytes(data[:at + size] + note + data[at + size:])
    fast, general = both(path)
    assert fast == general and fast[3]  # the note is in journal.ended


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 3), where=st.floats(0.0, 1.0),
       change=st.one_of(
           st.tuples(st.just("flip"), st.integers(1, 6)),
           st.tuples(st.just("set"), st.sampled_from(
               [0x00, 0x7F, 0x80, 0x90, 0x93, 0x94, 0xC4, 0xC5, 0xC6, 0xCC, 0xCE, 0xCF,
                0xD0, 0xDC, 0xDD, 0xFF])),
           st.tuples(st.just("cut"), st.just(0)),
       ))
def test_damage_reads_the_same(recorded: pathlib.Path, which: int, where: float,
                               change: tuple[str, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "j"
        shutil.copytree(recorded, path)
        segs = segments(path)
        seg = segs[which % len(segs)]
        data = bytearray(seg.read_bytes())
        # mostly inside the batches, where the in-place path reads
        first_batch = batches(seg)[0][0] if batches(seg) else 0
        at = first_batch + int(where * (len(data) - first_batch - 1))
        kind, arg = change
        if kind == "flip":
            for i in range(at, min(at + arg, len(data))):
                data[i] ^= 0xFF
        elif kind == "set":
            data[at] = arg
        else:
            del data[at:]
        seg.write_bytes(bytes(data))
        fast, general = both(path)
        assert fast == general


def test_damage_msgpack_reads_as_a_map_with_a_list_key_is_damage(recorded: pathlib.Path,
                                                                 tmp_path: pathlib.Path) -> None:
    """A batch's first byte turned into an array16 header makes msgpack build a map keyed by a
    list (TypeError): reported as damage at that batch (exit 4), not as a crash."""
    path = tmp_path / "j"
    shutil.copytree(recorded, path)
    seg = segments(path)[2]
    at, first, _size = batches(seg)[0]
    data = bytearray(seg.read_bytes())
    data[at] = 0xDC
    seg.write_bytes(bytes(data))
    with pytest.raises(JournalDamaged, match=rf"at record {first} .*offset {at}\): unreadable"):
        for _item in open_journal(path).entries():
            pass

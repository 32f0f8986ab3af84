"""Reading a journal: every retained segment in order, with its snapshot, gaps and windows.

``open_journal(PATH)`` takes a journal directory (formats 3 and 4) or a single journal file
(formats 1 and 2, or one segment file on its own). :attr:`Journal.records` iterates the records
of every segment in order; :meth:`Journal.entries` also yields a :class:`SegmentStart` before each
segment's records, with its snapshot and, when records are missing before it, the
:class:`Gap`. A truncated last record (a ``kill -9`` in the middle of a write) ends its segment
and is noted in :attr:`Journal.truncated`. In format 4 every batch's and every segment start's
CRC is checked as it is read: damage raises :class:`JournalDamaged` (record, segment, offset);
a segment the recorder closed early names why in :attr:`Journal.ended`.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgpack

from slirptrio.crc import crc32
from slirptrio.journal.format import (
    SEGMENT_SUFFIX,
    Header,
    JournalDamaged,
    JournalError,
    Record,
    read_header,
    segment_number,
)

_READ_SIZE = 1 << 20
_UNREADABLE = (msgpack.UnpackException, ValueError, TypeError)
"""What msgpack raises on bytes that are not what was written (TypeError: a damaged map whose
key came out a list)."""
_MAX_BUFFER = 1 << 30


@dataclass
class Segment:
    """One segment file (or a whole old-format journal file)."""

    path: str
    header: Header
    size: int

    @property
    def number(self) -> int:
        return self.header.segment.number if self.header.segment is not None else 0

    @property
    def first_seq(self) -> int | None:
        """The sequence number of the first record after the snapshot (None: no snapshot)."""
        return self.header.segment.first_seq if self.header.segment is not None else None

    @property
    def t_ns(self) -> int:
        """The session time of the snapshot (0 for a journal without segments)."""
        return self.header.segment.t_ns if self.header.segment is not None else 0


@dataclass
class Gap:
    """Records missing between two segments."""

    after_seq: int | None  # the last record before the gap
    next_seq: int  # the first record after it
    reason: str
    t_ns: int  # session time where the journal resumed

    @property
    def lost(self) -> int:
        return self.next_seq - (self.after_seq + 1 if self.after_seq is not None else 0)


@dataclass
class SegmentStart:
    """A segment begins: its snapshot (None in formats 1 and 2) and any gap before it."""

    segment: Segment
    snapshot: dict[str, Any] | None
    gap: Gap | None


@dataclass
class Journal:
    """An opened journal. ``header`` is its first retained segment's."""

    path: str
    header: Header
    segments: list[Segment]
    gaps: list[Gap] = field(default_factory=list)
    """Filled while iterating."""
    truncated: list[int] = field(default_factory=list)
    """Sizes of cut-off last records, filled while iterating."""
    ended: list[Ended] = field(default_factory=list)
    """Segments closed early by a recorder failure, filled while iterating."""
    bytes_read: int = 0
    """Progress of the current iteration, in bytes of journal."""
    _fileobj: IO[bytes] | None = None

    @property
    def format(self) -> int:
        return self.header.format

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def records(self) -> Iterator[Record]:
        """Every record of every segment, in order (gaps and truncation noted on the way)."""
        for item in self.entries():
            if isinstance(item, Record):
                yield item

    def segment_for(self, *, seq: int | None = None, t_ns: int | None = None) -> int:
        """The index of the segment to start from to reach record ``seq`` (or session time
        ``t_ns``): the last one whose snapshot comes at or before it (0 if none does)."""
        best = 0
        for i, seg in enumerate(self.segments):
            first = seg.first_seq
            if first is None:
                break
            if (seq is not None and first <= seq) or (t_ns is not None and seg.t_ns <= t_ns):
                best = i
        return best

    def entries(self, start: int = 0) -> Generator[SegmentStart | Record, None, None]:
        """Segment starts and records from segment index ``start`` on.

        Raises :class:`JournalDamaged` where a format-4 CRC or the framing does not hold.
        """
        self.gaps.clear()
        self.truncated.clear()
        self.ended.clear()
        self.bytes_read = sum(s.size for s in self.segments[:start])
        last_seq: int | None = None
        prev_number: int | None = None
        for seg in self.segments[start:]:
            f = self._open(seg)
            last = seg is self.segments[-1]
            checked = seg.header.format >= 4
            try:
                head = _head_bytes(f) if checked else b""
                unpacker = msgpack.Unpacker(
                    f, raw=False, max_buffer_size=_MAX_BUFFER, read_size=_READ_SIZE,
                    strict_map_key=False,
                )
                unpacker.unpack()  # the header, read already
                snapshot = None
                if seg.header.segment is not None:
                    try:
                        snapshot = _unpack(unpacker, seg.path, "snapshot")
                    except _CutOff:
                        if not last:
                            if checked:
                                raise JournalDamaged(seg.first_seq, seg.number, len(head),
                                                     seg.path, "the snapshot is cut off"
                                                     ) from None
                            raise
                        # The session was killed while starting its last segment.
                        self.truncated.append(seg.size - unpacker.tell())
                        return
                    except JournalError as exc:
                        if checked:
                            raise JournalDamaged(seg.first_seq, seg.number, len(head),
                                                 seg.path, str(exc)) from None
                        raise
                    if checked:
                        snapshot = _checked_snapshot(snapshot, head, seg)
                    if not isinstance(snapshot, dict):
                        raise JournalError(f"{seg.path}: bad snapshot")
                gap = self._gap(seg, last_seq, prev_number)
                if gap is not None:
                    self.gaps.append(gap)
                if seg.first_seq is not None:
                    last_seq = seg.first_seq - 1
                prev_number = seg.number
                yield SegmentStart(seg, snapshot, gap)
                base = self.bytes_read
                n = 0
                skew = 0  # the file offset the unpacker started at
                if checked and not last:
                    # The common case read in place; the unpacker below takes over from the
                    # first thing it cannot read (an end note, damage, a cut-off tail). Not
                    # the last segment: a live session may still write it, and cut back a
                    # failed write (ftruncate), which would fault a mapping past the new end;
                    # earlier segments are never written again (and a ring deletes, never cuts).
                    at = unpacker.tell()
                    mapped = _Mapped.of(f)
                    if mapped is not None:
                        try:
                            for end, records in mapped.batches(at):
                                at = end
                                for rec in records:
                                    last_seq = rec[0]
                                    yield Record(rec[0], rec[1], rec[2], rec[3])
                                n += 1
                                if n & 255 == 0:
                                    self.bytes_read = base + at
                        finally:
                            mapped.close()
                        f.seek(at)
                        unpacker = msgpack.Unpacker(
                            f, raw=False, max_buffer_size=_MAX_BUFFER, read_size=_READ_SIZE,
                            strict_map_key=False,
                        )
                        skew = at
                while True:
                    at = skew + unpacker.tell()
                    try:
                        raw = unpacker.unpack()
                    except msgpack.OutOfData:
                        tail = seg.size - skew - unpacker.tell()
                        if tail > 0:
                            if checked and not last:
                                raise JournalDamaged(_next(last_seq), seg.number, at, seg.path,
                                                     f"the segment ends inside a batch ({tail} "
                                                     "bytes)") from None
                            self.truncated.append(tail)
                        break
                    except _UNREADABLE as exc:
                        if checked:
                            raise JournalDamaged(_next(last_seq), seg.number, at, seg.path,
                                                 f"unreadable: {exc}") from exc
                        raise JournalError(f"{seg.path}: unreadable record: {exc}") from exc
                    if checked:
                        if isinstance(raw, dict) and "end" in raw:
                            self.ended.append(Ended(seg.number, last_seq, str(raw["end"])))
                            continue
                        records = _batch(raw, _next(last_seq), seg, at)
                    elif isinstance(raw, list) and len(raw) == 4:
                        records = [raw]
                    else:
                        raise JournalError(f"{seg.path}: bad record {raw!r:.80}")
                    for rec in records:
                        last_seq = rec[0]
                        yield Record(rec[0], rec[1], rec[2], rec[3])
                    n += 1
                    if n & 255 == 0:
                        self.bytes_read = base + skew + unpacker.tell()
                self.bytes_read = base + seg.size
            finally:
                if f is not self._fileobj:
                    f.close()

    def _gap(self, seg: Segment, last_seq: int | None, prev_number: int | None) -> Gap | None:
        first = seg.first_seq
        if first is None or last_seq is None:
            return None
        if first == last_seq + 1:
            return None
        if first <= last_seq:
            raise JournalError(f"{seg.path}: starts at record {first}, but record {last_seq} "
                               "came before it")
        reason = (seg.header.segment.gap or {}).get("reason") if seg.header.segment else None
        if not reason:
            if prev_number is not None and seg.number != prev_number + 1:
                reason = f"segment files {prev_number + 1}..{seg.number - 1} are missing"
            else:
                reason = "records are missing"
        return Gap(last_seq, first, str(reason), seg.t_ns)

    def _open(self, seg: Segment) -> IO[bytes]:
        if self._fileobj is not None:
            self._fileobj.seek(0)
            return self._fileobj
        return open(seg.path, "rb")


@dataclass
class Ended:
    """A segment the recorder closed early (a snapshot or an encoding raised), as its ``end``
    note says: records after ``after_seq`` are missing until a later segment, if any."""

    segment: int
    after_seq: int | None
    reason: str


def _next(last_seq: int | None) -> int | None:
    return None if last_seq is None else last_seq + 1


def _head_bytes(f: IO[bytes]) -> bytes:
    """The bytes of the header at the start of ``f`` (its CRC covers them); ``f`` is left at 0."""
    f.seek(0)
    unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=_MAX_BUFFER, read_size=65536,
                                strict_map_key=False)
    unpacker.unpack()
    size = unpacker.tell()
    f.seek(0)
    head = f.read(size)
    f.seek(0)
    return head


def _checked_snapshot(item: Any, head: bytes, seg: Segment) -> Any:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes)):
        raise JournalDamaged(seg.first_seq, seg.number, len(head), seg.path,
                             "the segment's start is not a checked snapshot")
    crc, data = item
    if crc32(data, crc32(head)) != crc:
        raise JournalDamaged(seg.first_seq, seg.number, len(head), seg.path,
                             "the CRC of the header and snapshot does not match")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except _UNREADABLE as exc:
        raise JournalDamaged(seg.first_seq, seg.number, len(head), seg.path,
                             f"unreadable snapshot: {exc}") from exc


def _batch(raw: Any, first: int | None, seg: Segment, at: int) -> list[list[Any]]:
    """The records of a format-4 batch, checked against its CRC and count."""
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[2], bytes)
            and isinstance(raw[0], int) and isinstance(raw[1], int)):
        raise JournalDamaged(first, seg.number, at, seg.path, f"not a batch: {raw!r:.60}")
    count, crc, data = raw
    if crc32(data) != crc:
        raise JournalDamaged(first, seg.number, at, seg.path,
                             f"the CRC of a batch of {count} records does not match")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_MAX_BUFFER, strict_map_key=False)
    unpacker.feed(data)
    try:
        records = list(unpacker)
    except _UNREADABLE as exc:
        raise JournalDamaged(first, seg.number, at, seg.path,
                             f"unreadable records: {exc}") from exc
    if len(records) != count or not all(isinstance(r, list) and len(r) == 4 for r in records):
        raise JournalDamaged(first, seg.number, at, seg.path,
                             f"a batch of {count} records holds {len(records)} items")
    return records


_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_FIXARRAY_3 = 0x93
_ARRAY32 = 0xDD


class _Mapped:
    """A segment file mapped copy-on-write, its format-4 batches read in place: the CRC over
    the mapped bytes, the records unpacked from them (the batch's own header, already read,
    overwritten in the private copy by an array header), so that no batch is copied whole.
    Anything else is left to the general reader (:func:`_batch` and the file's unpacker)."""

    def __init__(self, mm: mmap.mmap) -> None:
        self._mm = mm
        self._view = memoryview(mm)
        self.size = len(mm)

    @classmethod
    def of(cls, f: IO[bytes]) -> _Mapped | None:
        """The file mapped, or None where it cannot be (not a file, empty)."""
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return None
        return cls(mm)

    def close(self) -> None:
        self._view.release()
        with contextlib.suppress(BufferError):  # a view still held: the mapping goes with it
            self._mm.close()

    def batches(self, at: int) -> Iterator[tuple[int, list[list[Any]]]]:
        """``(offset after, records)`` of each whole, intact batch from offset ``at`` on. It
        stops before anything else (an end note, damage, a cut-off tail), which the general
        reader reads from there, and reports as it always has."""
        mm, view = self._mm, self._view
        while True:
            head = _batch_head(mm, at, self.size)
            if head is None:
                return
            count, crc, start, end = head
            with view[start:end] as data:
                if crc32(data) != crc or count > end - start:
                    return
            # Every batch header is at least 5 bytes: room for an array32 header, so that
            # msgpack reads the records as one array where they lie.
            mm[start - 5:start] = bytes((_ARRAY32,)) + count.to_bytes(4, "big")
            with view[start - 5:end] as whole:
                try:
                    records = msgpack.unpackb(whole, raw=False, strict_map_key=False)
                except _UNREADABLE:
                    return
            if not (type(records) is list and len(records) == count
                    and all(type(r) is list and len(r) == 4 for r in records)):
                return
            at = end
            yield at, records


def _batch_head(buf: mmap.mmap, pos: int, size: int) -> tuple[int, int, int, int] | None:
    """``(count, crc, data start, data end)`` of the batch ``[count, crc, bin]`` at ``pos``
    when one lies whole in ``buf[:size]`` with unsigned ints, else None."""
    if pos >= size or buf[pos] != _FIXARRAY_3:
        return None
    p = pos + 1
    ints = []
    for _ in range(2):
        if p >= size:
            return None
        b = buf[p]
        if b < 0x80:
            ints.append(b)
            p += 1
            continue
        w = _UINT.get(b)
        if w is None or p + 1 + w > size:
            return None
        ints.append(int.from_bytes(buf[p + 1:p + 1 + w], "big"))
        p += 1 + w
    if p >= size:
        return None
    w = _BIN.get(buf[p])
    if w is None or p + 1 + w > size:
        return None
    start = p + 1 + w
    end = start + int.from_bytes(buf[p + 1:start], "big")
    if end > size:
        return None
    return ints[0], ints[1], start, end


class _CutOff(JournalError):
    """The file ends inside its header or snapshot."""


def _unpack(unpacker: msgpack.Unpacker, path: str, what: str) -> Any:
    try:
        return unpacker.unpack()
    except msgpack.OutOfData as exc:
        raise _CutOff(f"{path}: empty or truncated {what}") from exc
    except _UNREADABLE as exc:
        raise JournalError(f"{path}: not a slirptrio journal: {exc}") from exc


def _read_header_of(f: IO[bytes], path: str) -> Header:
    unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=_MAX_BUFFER, read_size=65536,
                                strict_map_key=False)
    return read_header(_unpack(unpacker, path, "header"))


def open_journal(source: str | os.PathLike[str] | IO[bytes]) -> Journal:
    """Open a journal: a directory of segments, a single journal file, or a binary file object
    (one old-format journal or one segment)."""
    if not isinstance(source, str | os.PathLike):
        f = source
        name = getattr(f, "name", "<journal>")
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(0)
        header = _read_header_of(f, str(name))
        f.seek(0)
        return Journal(str(name), header, [Segment(str(name), header, size)], _fileobj=f)
    path = os.fspath(source)
    if not os.path.isdir(path):
        with open(path, "rb") as f:
            header = _read_header_of(f, path)
            size = os.fstat(f.fileno()).st_size
        return Journal(path, header, [Segment(path, header, size)])
    segments: list[Segment] = []
    names = sorted(n for n in os.listdir(path) if segment_number(n) is not None)
    for name in names:
        seg_path = os.path.join(path, name)
        try:
            with open(seg_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    continue  # created, never written (the disk was full)
                header = _read_header_of(f, seg_path)
        except FileNotFoundError:
            continue  # the ring deleted it just now
        except _CutOff:
            if name == names[-1]:
                continue  # the last segment was cut off before its header was whole
            raise
        if header.segment is None:
            raise JournalError(f"{seg_path}: a segment without segment header")
        segments.append(Segment(seg_path, header, size))
    if not segments:
        raise JournalError(f"{path}: no journal segments ({SEGMENT_SUFFIX} files) in it")
    return Journal(path, segments[0].header, segments)

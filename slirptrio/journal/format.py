"""The journal's on-disk format: header, segment header, records, and their encoding.

Format 4 (this one) is a directory of segment files, each a msgpack stream::

    header    = {"magic": "slirptrio-journal", "format": 4, "version": str, "seed": int,
                 "config": Config.to_dict(), "origin_ns": int, "meta": {...},
                 "constants": {"core.tcp.RTO_MAX_NS": ..., ...},
                 "segment": {"number": int, "first_seq": int, "t_ns": int,
                             "gap": None | {"reason": str}}}
    start     = [crc32(header bytes + snapshot bytes), snapshot bytes]
                where snapshot = {"seq": int, "now_ns": int, "stack": Stack.snapshot()}
    batch     = [count: int, crc32(records), records: bytes]      # ... one per write batch
                where records = count packed records, each
                [seq: int, t_ns: int, event: [TAG, ...], effects: [[TAG, ...], ...]]
    end       = {"end": reason: str, "next_seq": int}             # optional, last item

Every batch carries the CRC-32 of its records, and the segment's start the CRC of its header
and snapshot, so bytes damaged on disk are told apart from a behaviour change: the reader
raises :class:`JournalDamaged` (record, segment, offset) where a CRC or the framing fails. A
batch cut off at the end of the last segment is a ``kill -9`` in the middle of a write, not
damage. ``end`` closes a segment that stopped early because the recorder itself failed (a
snapshot or an encoding that raised): it names the gap even when no later segment follows.

Format 3 was the same without the CRCs: the snapshot a plain map, records one after another.

Every segment repeats the session's header (seed, config, constants) and starts with a
snapshot of the core as it was before the segment's first record (``first_seq``), so any
segment replays on its own. ``gap`` says why records before this segment are missing (the
disk was full, or too slow) when they are; a ring deleting old segments leaves no gap note:
the journal then simply starts later.

Events are kept whole: they are what replay feeds back. In effects, a bytes field longer than
``DIGEST_OVER`` bytes is kept as ``["#", length, crc32, first HEAD_BYTES bytes]``
(:func:`compact`). ``t_ns`` is the monotonic time the core was given, in integer nanoseconds
since the session started; ``origin_ns + t_ns`` is its wall-clock time.

Formats 1 and 2 were one file: the header (without constants or segment) and the records,
with no snapshot (replay starts from a fresh core). Format 1 kept effects whole. Both still
replay.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack

from slirptrio.core.events import (
    Effect,
    Event,
    GuestFrame,
    GuestFrames,
    PortFrames,
    PortSendFrames,
    SendFrame,
    SendFrames,
    encode,
)
from slirptrio.crc import crc32
from slirptrio.wire.framing import split_run

MAGIC = "slirptrio-journal"
FORMAT_VERSION = 4
DIGEST_OVER = 256
HEAD_BYTES = 128  # Ethernet + IPv4 + TCP headers with options fit
DIGEST_MARK = "#"
SEGMENT_SUFFIX = ".seg"


class JournalError(Exception):
    """The journal cannot be read (not a journal, or a newer format)."""


class JournalDamaged(JournalError):
    """Bytes of the journal were damaged on disk: a CRC or the framing does not hold."""

    def __init__(self, seq: int | None, segment: int, offset: int, path: str, detail: str
                 ) -> None:
        where = f"record {seq}" if seq is not None else "the start"
        super().__init__(f"journal damaged at {where} (segment {segment}, offset {offset}): "
                         f"{detail} [{path}]")
        self.seq = seq
        self.segment = segment
        self.offset = offset
        self.path = path


def _bin_header(n: int) -> bytes:
    return b"\xc6" + n.to_bytes(4, "big")  # msgpack bin32: one form whatever the size


def segment_start(header: Header | dict[str, Any], snapshot: dict[str, Any]) -> bytes:
    """A format-4 segment's first bytes: its header, then the snapshot with their CRC."""
    raw = header.to_raw() if isinstance(header, Header) else header
    head = msgpack.packb(raw, use_bin_type=True)
    snap = msgpack.packb(snapshot, use_bin_type=True)
    crc = crc32(snap, crc32(head))
    return b"".join((head, b"\x92", msgpack.packb(crc), _bin_header(len(snap)), snap))


def batch(count: int, records: bytes) -> bytes:
    """``count`` packed records as one format-4 batch carrying their CRC."""
    return batch_head(count, crc32(records), len(records)) + records


def batch_head(count: int, crc: int, nbytes: int) -> bytes:
    """What precedes ``nbytes`` of ``count`` packed records (CRC-32 ``crc``) in their batch."""
    return b"".join((b"\x93", msgpack.packb(count), msgpack.packb(crc), _bin_header(nbytes)))


def bin_header(n: int) -> bytes:
    """The header msgpack (``use_bin_type``) puts before a bytes value of length ``n``."""
    if n < 0x100:
        return bytes((0xC4, n))
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def end_note(next_seq: int, reason: str) -> dict[str, Any]:
    """The last item of a segment the recorder closed early (``reason``)."""
    return {"end": reason, "next_seq": next_seq}


def segment_name(number: int) -> str:
    """The file name of segment ``number`` inside the journal directory."""
    return f"{number:08d}{SEGMENT_SUFFIX}"


def segment_number(name: str) -> int | None:
    """The number in a segment file's name, or None if ``name`` is not one."""
    stem, dot, ext = name.partition(".")
    if "." + ext != SEGMENT_SUFFIX or not dot or len(stem) != 8 or not stem.isdigit():
        return None
    return int(stem)


@dataclass
class SegmentHeader:
    """What a segment's header says about the segment itself."""

    number: int
    first_seq: int
    t_ns: int
    gap: dict[str, Any] | None = None

    def to_raw(self) -> dict[str, Any]:
        return {"number": self.number, "first_seq": self.first_seq, "t_ns": self.t_ns,
                "gap": self.gap}


@dataclass
class Header:
    """The session's header: what replay needs to build the same core."""

    seed: int
    config: dict[str, Any]
    origin_ns: int
    version: str = ""
    format: int = FORMAT_VERSION
    meta: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, Any] | None = None
    """Every core constant (:mod:`slirptrio.core.constants`); None in formats 1 and 2."""
    segment: SegmentHeader | None = None

    def to_raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "magic": MAGIC,
            "format": self.format,
            "version": self.version,
            "seed": self.seed,
            "config": self.config,
            "origin_ns": self.origin_ns,
            "meta": self.meta,
        }
        if self.constants is not None:
            raw["constants"] = self.constants
        if self.segment is not None:
            raw["segment"] = self.segment.to_raw()
        return raw


def read_header(raw: Any) -> Header:
    """Validate a header read from a journal file."""
    if not isinstance(raw, dict) or raw.get("magic") != MAGIC:
        raise JournalError("not a slirptrio journal (bad magic)")
    fmt = raw.get("format")
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise JournalError(
            f"journal format {fmt!r} is newer than this slirptrio understands "
            f"(up to {FORMAT_VERSION}); upgrade slirptrio to replay it"
        )
    try:
        seg = raw.get("segment")
        segment = None
        if seg is not None:
            gap = seg.get("gap")
            segment = SegmentHeader(int(seg["number"]), int(seg["first_seq"]), int(seg["t_ns"]),
                                    dict(gap) if gap is not None else None)
        constants = raw.get("constants")
        return Header(
            seed=int(raw["seed"]),
            config=dict(raw["config"]),
            origin_ns=int(raw["origin_ns"]),
            version=str(raw.get("version", "")),
            format=fmt,
            meta=dict(raw.get("meta", {})),
            constants=dict(constants) if constants is not None else None,
            segment=segment,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise JournalError(f"bad journal header: {exc}") from exc


def compact(raw: list[Any]) -> list[Any]:
    """An encoded effect as the journal keeps it: every bytes field longer than
    ``DIGEST_OVER`` becomes ``["#", length, crc32, first HEAD_BYTES bytes]``.

    Effects are outputs: replay recomputes them from the inputs, so the journal needs only
    enough to compare them (length and CRC) and to describe them (the headers). This keeps
    bulk data from being journaled twice (once as input, once as output). Idempotent.
    """
    out: list[Any] | None = None
    for i, v in enumerate(raw):
        if type(v) in _BYTES and len(v) > DIGEST_OVER:
            if out is None:
                out = list(raw)
            out[i] = [DIGEST_MARK, len(v), crc32(v, 0), bytes(v[:HEAD_BYTES])]
    return raw if out is None else out


_BYTES = (bytes, bytearray, memoryview)


def is_digest(value: Any) -> bool:
    """Whether a journaled effect field is a :func:`compact` digest."""
    return isinstance(value, list) and len(value) == 4 and value[0] == DIGEST_MARK


def _effect(e: Effect) -> list[Any]:
    if type(e) is SendFrame and type(e.data) is bytes:  # most effects: compact() inlined
        d = e.data
        if len(d) > DIGEST_OVER:
            return [_SEND_TAG, [DIGEST_MARK, len(d), crc32(d, 0), d[:HEAD_BYTES]]]
        return [_SEND_TAG, d]
    return compact(encode(e))


_SEND_TAG = SendFrame.TAG


def encode_record(seq: int, t_ns: int, event: Event, effects: list[Effect]) -> list[Any]:
    """One door step as a journal record (the only place records are encoded)."""
    return [seq, t_ns, encode(event), [_effect(e) for e in effects]]


REFERENCE_OVER = 4096
"""A bytes field of an event at least this long is referenced by :class:`RecordPacker`,
not copied into its buffer."""


class RecordPacker:
    """Packs records exactly as ``msgpack.packb(encode_record(...), use_bin_type=True)`` one
    after the other would, into a list of parts (:meth:`take`): the big bytes fields of events
    (``REFERENCE_OVER``) are kept as the objects themselves, not copied, so a 2 MB run of
    guest frames costs no copy on the event loop. Only ``bytes`` are referenced (immutable);
    a ``bytearray`` or ``memoryview`` is packed (copied) as before.

    A record that raises half-packed leaves the parts unusable: :meth:`reset` then.
    """

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        self._parts: list[bytes] = []
        self._parts_bytes = 0
        self.referenced = 0  # bytes referenced, not copied, in all (a count for benchmarks)

    def pack(self, seq: int, t_ns: int, event: Event, effects: list[Effect]) -> None:
        """Pack one door step (the record :func:`encode_record` makes).

        It runs for every step: no Python call of its own for the usual event and effects
        (their fields in one ``attrgetter`` each, as tuples, which msgpack packs as the lists
        :func:`encode` makes); anything else takes :func:`encode` and :func:`compact`."""
        plan = _EVENT_PLAN.get(type(event))
        if plan is None:
            plan = _event_plan(type(event))
        get, i = plan
        raw: tuple[Any, ...] | list[Any] = get(event) if get is not None else encode(event)
        effs: list[Any] = []
        for e in effects:
            eplan = _EFFECT_PLAN.get(type(e))
            if eplan is None:
                eplan = _effect_plan(type(e))
            eget, k = eplan
            if eget is None:
                effs.append(compact(encode(e)))
                continue
            r = eget(e)
            if k:
                v = r[k]
                # Only a small ``bytes`` is kept as it is: the rest takes compact().
                if type(v) is not bytes or len(v) > DIGEST_OVER:
                    effs.append(compact(list(r)))
                    continue
            effs.append(r)
        # Most records are small: one look at the event's (first) bytes field decides.
        if i:
            v = raw[i]
            if type(v) is bytes and len(v) >= REFERENCE_OVER:
                self._pack_big(seq, t_ns, list(raw), effs)
                return
        self._packer.pack((seq, t_ns, raw, effs))

    def _pack_big(self, seq: int, t_ns: int, raw: list[Any], effs: list[Any]) -> None:
        p = self._packer
        p.pack_array_header(4)
        p.pack(seq)
        p.pack(t_ns)
        p.pack_array_header(len(raw))
        parts = self._parts
        for v in raw:
            if type(v) is bytes and len(v) >= REFERENCE_OVER:
                head = p.bytes() + bin_header(len(v))
                p.reset()
                parts.append(head)
                parts.append(v)
                self._parts_bytes += len(head) + len(v)
                self.referenced += len(v)
            else:
                p.pack(v)
        p.pack(effs)

    @property
    def nbytes(self) -> int:
        """Bytes packed since the last :meth:`take` (or :meth:`reset`)."""
        return self._parts_bytes + len(self._packer.getbuffer())

    def take(self) -> tuple[list[bytes], int]:
        """The parts packed so far (their concatenation is the records) and their length;
        the packer starts over."""
        parts = self._parts
        p = self._packer
        tail = p.bytes()
        if tail:
            parts.append(tail)
        n = self._parts_bytes + len(tail)
        p.reset()  # reset(), inline: once per burst
        self._parts = []
        self._parts_bytes = 0
        return parts, n

    def reset(self) -> None:
        """Forget what was packed since the last :meth:`take`."""
        self._packer.reset()
        self._parts = []
        self._parts_bytes = 0


_Plan = tuple[Callable[[Any], tuple[Any, ...]] | None, int]
_EVENT_PLAN: dict[type[Any], _Plan] = {}
_EFFECT_PLAN: dict[type[Any], _Plan] = {}
# Field types that never hold a bytes-like value: no compact() to do for them.
_PLAIN = frozenset({"int", "bool", "str", "float", int, bool, str, float})


def _getter(cls: type[Any]) -> Callable[[Any], tuple[Any, ...]] | None:
    """``(TAG, field, ...)`` of an item of ``cls`` in one C call (None: no fields, or not a
    dataclass: :func:`encode` then)."""
    if not dataclasses.is_dataclass(cls):
        return None
    names = [f.name for f in dataclasses.fields(cls)]
    return operator.attrgetter("TAG", *names) if names else None


def _bytes_fields(cls: type[Any]) -> list[int]:
    return [i + 1 for i, f in enumerate(dataclasses.fields(cls)) if f.type in ("bytes", bytes)]


def _event_plan(cls: type[Any]) -> _Plan:
    """How :meth:`RecordPacker.pack` encodes an event of ``cls``: its getter, and where its
    first bytes field is in :func:`encode`'s list (0: none). (A big bytes field after a small
    one is packed, copied: the same bytes, a rare case.)"""
    get = _getter(cls)
    at = _bytes_fields(cls) if get is not None else []
    plan: _Plan = (get, at[0] if at else 0)
    _EVENT_PLAN[cls] = plan
    return plan


def _effect_plan(cls: type[Any]) -> _Plan:
    """How :meth:`RecordPacker.pack` encodes an effect of ``cls``: its getter and where its
    bytes field is (0: none), or no getter when :func:`compact` must look at every field
    (more than one bytes field, or a field of a type that could hold bytes)."""
    get = _getter(cls)
    plan: _Plan = (None, 0)
    if get is not None:
        fields = dataclasses.fields(cls)
        at = _bytes_fields(cls)
        if len(at) <= 1 and all(f.type in _PLAIN or i + 1 in at
                                for i, f in enumerate(fields)):
            plan = (get, at[0] if at else 0)
    _EFFECT_PLAN[cls] = plan
    return plan


@dataclass
class Record:
    """One door step read back: the input (whole) and the effects (compacted)."""

    seq: int
    t_ns: int
    event: list[Any]
    effects: list[list[Any]]


def frames_of(
    event: Event | list[Any], effects: list[Effect] | list[list[Any]]
) -> Iterator[tuple[str, bytes | memoryview]]:
    """The Ethernet frames of one record, ("in"|"out", frame), for the pcap view; runs
    (:class:`GuestFrames`, :class:`SendFrames`) are taken apart."""
    if isinstance(event, GuestFrames | PortFrames):  # PortFrames: another switch port's
        yield from (("in", f) for f in split_run(event.data))
    elif isinstance(event, GuestFrame):
        yield "in", event.data
    elif isinstance(event, list) and event:
        if event[0] == GuestFrames.TAG:
            yield from (("in", f) for f in split_run(event[1]))
        elif event[0] == GuestFrame.TAG:
            yield "in", event[1]
        elif event[0] == PortFrames.TAG and len(event) == 3:
            yield from (("in", f) for f in split_run(event[2]))
    for eff in effects:
        if isinstance(eff, SendFrames | PortSendFrames):
            yield from (("out", f) for f in split_run(eff.data))
        elif isinstance(eff, SendFrame):
            yield "out", eff.data
        elif isinstance(eff, list) and eff:
            if eff[0] == SendFrames.TAG and type(eff[1]) is bytes:  # not a digest
                yield from (("out", f) for f in split_run(eff[1]))
            elif eff[0] == SendFrame.TAG:
                yield "out", eff[1]
            elif eff[0] == PortSendFrames.TAG and len(eff) == 3 and type(eff[2]) is bytes:
                yield from (("out", f) for f in split_run(eff[2]))

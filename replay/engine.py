"""Deterministic replay: feed a journal's inputs through the door into a fresh core.

No sockets, no real clock: the core gets each recorded event at its recorded time, and every
effect it produces is compared with the recorded one. The first difference stops the replay and
is reported with its record number, time, flow, the expected and actual effects decoded, and the
records before it.

A journal of segments (formats 3 and 4) is replayed segment after segment: the first one replayed
starts from its snapshot (the nearest before ``--from``); at each later segment the replayed
core's own snapshot must equal the recorded one (a "state" divergence otherwise), and after a
gap, where records are missing, the core is restored from the segment's snapshot.

Before anything is replayed the header is checked: the journal's format, the slirptrio version
that wrote it and the core constants it recorded. Constants that differ from this build are
listed at once; replay then runs with the journal's values where this build has the same
constant (:func:`slirptrio.core.constants.applied`). A divergence of a journal whose constants
differ is reported as that mismatch (exit 3), not as a bug at some record.

Bytes damaged on disk (format 4 checks a CRC over every write batch and every segment's header
and snapshot) stop the replay with ``DAMAGED: journal damaged at record N (segment S, offset
O)`` and exit 4: damage, not a divergence.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgpack

from replay.progress import Progress
from slirptrio import __version__
from slirptrio.config import Config, ConfigError
from slirptrio.core import constants
from slirptrio.core.events import CoreError, Effect, Event, decode_event, encode
from slirptrio.core.stack import Stack
from slirptrio.crc import crc32
from slirptrio.door import Door
from slirptrio.journal import (
    Ended,
    Gap,
    Header,
    JournalDamaged,
    JournalError,
    Record,
    SegmentStart,
    compact,
    frames_of,
    is_digest,
    open_journal,
)
from slirptrio.journal.format import DIGEST_MARK, DIGEST_OVER, HEAD_BYTES
from slirptrio.wire.pcap import PcapWriter

EXIT_IDENTICAL = 0
EXIT_DIVERGED = 1
EXIT_UNREADABLE = 2
EXIT_MISMATCH = 3
EXIT_DAMAGED = 4
"""Bytes of the journal were damaged on disk (a CRC does not hold): not a divergence."""


@dataclass
class Divergence:
    index: int  # records replayed before this one
    record: Record
    expected: list[list[Any]]
    actual: list[list[Any]]
    context: list[Record]
    kind: str = "effects"  # or "state": a segment's snapshot differs from the replayed core
    detail: str = ""


@dataclass(frozen=True)
class Target:
    """Where a replay window starts or ends: a record number or a session time (ns)."""

    seq: int | None = None
    t_ns: int | None = None

    def before(self, rec: Record) -> bool:
        """Whether ``rec`` comes before this point."""
        if self.seq is not None:
            return rec.seq < self.seq
        assert self.t_ns is not None
        return rec.t_ns < self.t_ns


_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ms|us|ns|h|m|s)")
_DURATIONS = re.compile(r"(?:\d+(?:\.\d*)?(?:ms|us|ns|h|m|s))+")
_NS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def parse_target(text: str, origin_ns: int) -> Target:
    """``--from``/``--until``: ``1234`` or ``#1234`` (a record), ``90s``/``5m``/``1h2m3.5s``/
    ``250ms`` (session time), ``14:03:07`` (wall clock, on or after the session's first day)
    or ``2026-01-31T14:03:07`` (local time)."""
    t = text.strip().lstrip("+")
    if t.startswith("#"):
        t = t[1:]
    if t.isdigit():
        return Target(seq=int(t))
    if _DURATIONS.fullmatch(t):
        total = sum(int(float(m.group(1)) * _NS[m.group(2)]) for m in _DURATION.finditer(t))
        return Target(t_ns=total)
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"):
        whole, _, frac = t.partition(".")
        try:
            when = datetime.datetime.strptime(whole, fmt)
        except ValueError:
            continue
        ns = int(when.timestamp()) * 10**9 + _fraction_ns(frac)
        return Target(t_ns=max(0, ns - origin_ns))
    for fmt in ("%H:%M:%S", "%H:%M"):
        whole, _, frac = t.partition(".")
        try:
            clock = datetime.datetime.strptime(whole, fmt).time()
        except ValueError:
            continue
        start = datetime.datetime.fromtimestamp(origin_ns / 1e9)
        when = datetime.datetime.combine(start.date(), clock)
        if when < start.replace(microsecond=0):
            when += datetime.timedelta(days=1)
        ns = int(when.timestamp()) * 10**9 + _fraction_ns(frac)
        return Target(t_ns=max(0, ns - origin_ns))
    raise ValueError(f"{text!r}: expected " + "a record number (#1234), a duration (90s, 5m) "
                     "or a time (14:03:07)")


def _fraction_ns(frac: str) -> int:
    if not frac:
        return 0
    if not frac.isdigit():
        raise ValueError(f"bad fraction of a second {frac!r}")
    return int((frac + "000000000")[:9])


@dataclass
class ReplayResult:
    header: Header
    records: int = 0
    """Records replayed (and compared)."""
    frames: int = 0
    """Frames in the window (0 when not counted: ``count_frames=False`` and no pcap)."""
    truncated_bytes: int = 0
    divergence: Divergence | None = None
    flows: set[str] = field(default_factory=set)
    first: Record | None = None
    last: Record | None = None
    gaps: list[Gap] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    """Segments the recorder closed early (a snapshot or an encoding raised live)."""
    segments: int = 0
    exceptions: list[tuple[int, str, str]] = field(default_factory=list)
    """(seq, type, message) of every core exception met (identical in the journal)."""
    constants: constants.Comparison | None = None
    """None when the journal records no constants (formats 1 and 2)."""
    applied: list[str] = field(default_factory=list)
    version_differs: bool = False
    window: tuple[Record | None, Record | None] = (None, None)
    """First and last record inside --from/--until."""

    @property
    def identical(self) -> bool:
        return self.divergence is None

    @property
    def mismatch(self) -> bool:
        """The journal's constants differ from this build's (or it has some this one lacks)."""
        return self.constants is not None and self.constants.conflict


def _normalize(items: list[Any]) -> list[Any]:
    # msgpack gives lists where encode() gives lists too; tuples would only come from old tools.
    return [list(x) if isinstance(x, tuple) else x for x in items]


_BYTES = (bytes, bytearray, memoryview)


def same_effects(actual: list[Effect], recorded: list[list[Any]]) -> bool:
    """Whether a step's effects are the recorded ones: each compared as the journal keeps it
    (:func:`compact`), a field the journal digested by its length, CRC and head, every other
    one exactly. A CRC is computed only for a field the journal digested, once.

    Exactly ``[compact(encode(e)) for e in actual] == [compact(_normalize(r)) for r in
    recorded]``, which it falls back to for anything it does not recognize."""
    if len(actual) != len(recorded):
        return False
    for e, r in zip(actual, recorded, strict=True):
        got = encode(e)
        if type(r) is not list or len(got) != len(r):
            return _compacted(actual, recorded)
        for a, b in zip(got, r, strict=True):
            if type(a) in _BYTES and len(a) > DIGEST_OVER:
                if type(b) is list:
                    # The journal's digest; a is not empty, so its CRC is needed only when the
                    # length and head already agree.
                    if not (len(b) == 4 and b[0] == DIGEST_MARK and b[1] == len(a)
                            and b[3] == a[:HEAD_BYTES] and b[2] == crc32(a)):
                        return False
                elif not (type(b) in _BYTES and a == b):
                    return _compacted(actual, recorded)
            elif (type(b) in _BYTES and len(b) > DIGEST_OVER) or a != b:
                return _compacted(actual, recorded)
    return True


def _compacted(actual: list[Effect], recorded: list[list[Any]]) -> bool:
    """The reference comparison :func:`same_effects` stands for."""
    got = [compact(encode(e)) for e in actual]
    expected = [compact(_normalize(e)) for e in recorded]
    return got == expected


def _plain(data: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False,
                           strict_map_key=False)


def _restore(config: Config, snap: dict[str, Any], item: SegmentStart) -> Door:
    try:
        return Door.from_snapshot(config, snap)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise JournalError(
            f"the snapshot of segment {item.segment.number} does not fit this build "
            f"({type(exc).__name__}: {exc}); it was taken by slirptrio "
            f"{item.segment.header.version or '?'}: replay from the session's start, or with "
            "the build that recorded it"
        ) from exc


def same_state(recorded: Any, replayed: Any) -> bool:
    """Whether the replayed core's state is the recorded snapshot's. Dicts are compared on the
    keys both have: a build may keep state another did not have (a new protocol, a new field),
    which this comparison cannot judge; everything both have must be equal."""
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        return all(same_state(recorded[k], replayed[k]) for k in recorded.keys() & replayed.keys())
    if isinstance(recorded, list) and isinstance(replayed, list):
        return len(recorded) == len(replayed) and all(
            same_state(a, b) for a, b in zip(recorded, replayed, strict=True)
        )
    return bool(recorded == replayed) and type(recorded) is type(replayed)


def first_difference(a: Any, b: Any, path: str = "") -> str:
    """Where two plain structures first differ, as a path with both values."""
    if type(a) is not type(b):
        return f"{path or '.'}: journal {a!r:.80}, replay {b!r:.80}"
    if isinstance(a, dict):
        for k in a.keys() & b.keys():
            if not same_state(a[k], b[k]):
                return first_difference(a[k], b[k], f"{path}.{k}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items in the journal, {len(b)} in the replay"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if not same_state(x, y):
                return first_difference(x, y, f"{path}[{i}]")
    return f"{path or '.'}: journal {a!r:.80}, replay {b!r:.80}"


def replay_journal(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    pcap_out: IO[bytes] | None = None,
    context: int = 5,
    start: Target | None = None,
    until: Target | None = None,
    on_header: Callable[[ReplayResult], None] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    count_frames: bool = True,
) -> ReplayResult:
    """Replay a journal; stop at the first divergence.

    ``start``/``until`` limit the window (replay starts at the nearest snapshot before
    ``start``; the pcap covers the window only). ``on_header`` is called once the header has
    been checked, before any record is replayed; ``progress(bytes_done, bytes_total,
    records)`` now and then. ``count_frames=False``: leave :attr:`ReplayResult.frames` at 0
    unless a pcap is written (taking every run apart costs more than the comparison).
    """
    journal = open_journal(source)
    header = journal.header
    try:
        config = Config.from_dict(header.config)
    except ConfigError as exc:
        raise JournalError(f"journal config does not load: {exc}") from exc
    result = ReplayResult(header)
    result.version_differs = bool(header.version) and header.version != __version__
    recorded = header.constants
    if recorded is not None:
        result.constants = constants.compare(recorded)
    if on_header is not None:
        on_header(result)
    index = 0
    if start is not None:
        index = journal.segment_for(seq=start.seq, t_ns=start.t_ns)
    entries = journal.entries(index)
    try:
        with constants.applied(recorded or {}) as applied:
            result.applied = applied
            _run(entries, config, header, result, pcap_out, context, start, until, progress,
                 lambda: (journal.bytes_read, journal.total_bytes), count_frames)
    finally:
        entries.close()  # the segment file open when --until stopped us
    result.gaps = list(journal.gaps)
    result.ended = list(journal.ended)
    if result.divergence is None and journal.truncated:
        result.truncated_bytes = journal.truncated[0]
    return result


def _run(
    entries: Iterator[SegmentStart | Record],
    config: Config,
    header: Header,
    result: ReplayResult,
    pcap_out: IO[bytes] | None,
    context: int,
    start: Target | None,
    until: Target | None,
    progress: Callable[[int, int, int], None] | None,
    position: Callable[[], tuple[int, int]],
    count_frames: bool,
) -> None:
    pcap = PcapWriter(pcap_out) if pcap_out is not None else None
    count_frames = count_frames or pcap is not None
    recent: collections.deque[Record] = collections.deque(maxlen=context)
    actual: list[Effect] = []

    def sink(seq: int, t_ns: int, event: Event, effects: list[Effect]) -> None:
        actual[:] = effects

    door: Door | None = None
    next_report = 0.0
    for item in entries:
        if isinstance(item, SegmentStart):
            result.segments += 1
            snap = item.snapshot
            if snap is None:  # formats 1 and 2: a fresh core
                door = Door(Stack(config, header.seed), sink)
                continue
            if door is None and snap["seq"] == 0 and snap["now_ns"] == 0:
                # The session's very start: a fresh core, checked against the snapshot below
                # (a journal of another build replays so, whatever its snapshots' layout).
                door = Door(Stack(config, header.seed), sink)
            elif door is None or item.gap is not None:
                door = _restore(config, snap, item)
                door.sink = sink
                continue
            mine = _plain(door.snapshot())
            if not same_state(snap, mine):
                rec = Record(snap["seq"], snap["now_ns"], [], [])
                where = first_difference(snap, mine)
                result.divergence = Divergence(result.records, rec, [], [], list(recent), "state",
                                               f"segment {item.segment.number}: {where}")
                break
            continue
        rec = item
        if until is not None and not until.before(rec):
            break
        assert door is not None
        event = decode_event(rec.event)
        door.seq = rec.seq
        door.step(event, rec.t_ns)
        if start is None or not start.before(rec):
            if result.window[0] is None:
                result.window = (rec, rec)
            else:
                result.window = (result.window[0], rec)
            # The capture comes from what the replayed core sent: identical up to a divergence,
            # and whole even where the journal kept only digests.
            if count_frames:
                for _d, frame in frames_of(event, actual):
                    result.frames += 1
                    if pcap is not None:
                        pcap.write(header.origin_ns + rec.t_ns, bytes(frame))
        if result.first is None:
            result.first = rec
        if not same_effects(actual, rec.effects):
            got = [compact(encode(e)) for e in actual]
            expected = [compact(_normalize(e)) for e in rec.effects]
            result.divergence = Divergence(result.records, rec, expected, got, list(recent))
            break
        for e in actual:
            if type(e) is CoreError:
                result.exceptions.append((rec.seq, e.type, e.message))
        recent.append(rec)
        result.last = rec
        result.records += 1
        if progress is not None and result.records & 1023 == 0:
            now = time.monotonic()
            if now >= next_report:
                next_report = now + 0.25
                done, total = position()
                progress(done, total, result.records)
    if pcap is not None:
        pcap.flush()


def format_divergence(result: ReplayResult) -> str:
    from replay import describe  # dpkt and the decoders: only a divergence needs them

    d = result.divergence
    assert d is not None
    rec = d.record
    if d.kind == "state":
        lines = [
            f"DIVERGED before record {rec.seq} (t={rec.t_ns / 1e9:.6f}s): the replayed core's "
            "state differs from the snapshot the journal recorded there",
            f"  {d.detail}",
        ]
        return "\n".join(lines)
    lines = [
        f"DIVERGED at record {rec.seq} (t={rec.t_ns / 1e9:.6f}s, "
        f"{describe.flow_of(rec.event, rec.effects)})",
        f"  input: {describe.event(rec.event)}",
    ]
    n = max(len(d.expected), len(d.actual))
    for i in range(n):
        exp = d.expected[i] if i < len(d.expected) else None
        act = d.actual[i] if i < len(d.actual) else None
        if exp == act:
            continue
        lines.append(f"  effect {i}:")
        lines.append("    expected: " + (describe.effect(exp) if exp is not None else "(nothing)"))
        lines.append("    actual:   " + (describe.effect(act) if act is not None else "(nothing)"))
        if exp is not None and act is not None and exp[0] == act[0] == 0:
            a, b = exp[1], act[1]
            if is_digest(a) or is_digest(b):
                a, b = (x[3] if is_digest(x) else x[:128] for x in (a, b))
                note = " in the journaled headers"
            else:
                note = ""
            n = min(len(a), len(b))
            pos = next((j for j in range(n) if a[j] != b[j]), None)
            if pos is not None:
                lines.append(f"    first differing byte{note}: offset {pos}")
            lengths = [x[1] if is_digest(x) else len(x) for x in (exp[1], act[1])]
            lines.append(f"    lengths {lengths[0]} vs {lengths[1]}")
        break
    if d.context:
        lines.append("  context (records before):")
        for c in d.context:
            effs = "; ".join(describe.effect(e) for e in c.effects[:3]) or "no effects"
            lines.append(f"    #{c.seq} t={c.t_ns / 1e9:.6f}s {describe.event(c.event)} -> {effs}")
    return "\n".join(lines)


def format_header_notes(result: ReplayResult) -> list[str]:
    """What the header check found: version and constants, before any record is replayed."""
    h = result.header
    lines = []
    if result.version_differs:
        lines.append(f"note: recorded by slirptrio {h.version}; this is {__version__}")
    if result.constants is None:
        lines.append(f"note: this journal (format {h.format}) does not record the core's "
                     "constants; they cannot be checked")
    else:
        if result.constants.conflict:
            lines.append("MISMATCH: the journal's core constants differ from this build's:")
            lines += [f"  {line}" for line in result.constants.describe()]
            if result.constants.differ:
                lines.append("  replaying with the journal's values of the constants both know")
        new = result.constants.new
        if new:
            shown = ", ".join(new[:4]) + (f" and {len(new) - 4} more" if len(new) > 4 else "")
            lines.append(f"note: {len(new)} core constants are new in this build and not in the "
                         f"journal ({shown})")
    return lines


def _local_wall(header: Header, t_ns: int) -> str:
    """The wall-clock time of session time ``t_ns`` in the local time zone, to the ms."""
    secs = (header.origin_ns + t_ns) / 1e9
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs)) + f".{int(secs % 1 * 1000):03d}"


def format_replay_report(result: ReplayResult, path: str) -> list[str]:
    """The span covered, gaps and core exceptions of a replay that did not diverge."""
    h = result.header
    lines = []
    first, last = result.first, result.last
    if first is None or last is None:
        lines.append(f"identical: no records replayed from {path}")
    else:
        lines.append(
            f"identical: {result.records} records replayed from {path} "
            f"(records {first.seq}..{last.seq}, {_local_wall(h, first.t_ns)} to "
            f"{_local_wall(h, last.t_ns)}, "
            f"t={first.t_ns / 1e9:.3f}s..{last.t_ns / 1e9:.3f}s, {result.segments} segment"
            f"{'s' if result.segments != 1 else ''})"
        )
        if first.seq > 0:
            lines.append(f"  records before {first.seq} are not in this window or no longer "
                         "in the journal (its oldest segments go first)")
    w0, w1 = result.window
    if w0 is None and first is not None:
        lines.append("  window: no records in it")
    elif w0 is not None and w1 is not None and (w0 is not first or w1 is not last):
        lines.append(f"  window: records {w0.seq}..{w1.seq} "
                     f"(t={w0.t_ns / 1e9:.3f}s..{w1.t_ns / 1e9:.3f}s), {result.frames} frames")
    for gap in result.gaps:
        lines.append(f"  gap: {gap.lost} records lost after record {gap.after_seq} "
                     f"({gap.reason}); resumed at record {gap.next_seq} "
                     f"(t={gap.t_ns / 1e9:.3f}s) from the segment's snapshot")
    resumed = {g.after_seq for g in result.gaps}
    for end in result.ended:
        later = ("; a later segment resumed" if end.after_seq in resumed
                 else "; no later segment followed")
        lines.append(f"  segment {end.segment} ended after record {end.after_seq}: "
                     f"{end.reason}{later}")
    for seq, kind, message in result.exceptions:
        lines.append(f"  core exception at record {seq}: {kind}: {message} "
                     "(raised again in replay, as recorded)")
    if result.truncated_bytes:
        lines.append(f"  ignored a truncated last record of {result.truncated_bytes} bytes")
    return lines


class _Progress:
    """The replay's progress line: the shared :class:`replay.progress.Progress`."""

    def __init__(self, stream: IO[str]) -> None:
        self._line = Progress("replaying", stream=stream, enabled=True)

    def __call__(self, done: int, total: int, records: int) -> None:
        self._line.total = total
        self._line.update(done, f"{records} records")

    def clear(self) -> None:
        self._line.close()


def main(
    path: str,
    *,
    pcap_out: str | None = None,
    context: int = 5,
    start: Target | None = None,
    until: Target | None = None,
    progress: bool | None = None,
) -> int:
    """CLI entry: 0 identical, 1 divergence, 2 unreadable, 3 divergence of a journal whose
    core constants differ from this build's, 4 damaged on disk (a CRC does not hold)."""
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(sys.stderr) if show else None

    def header_checked(result: ReplayResult) -> None:
        for line in format_header_notes(result):
            print(line, flush=True)

    try:
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(pcap_out, "wb")) if pcap_out is not None else None
            # The frames are counted for the window's line only.
            window = start is not None or until is not None
            result = replay_journal(path, pcap_out=out, context=context, start=start,
                                    until=until, on_header=header_checked, progress=bar,
                                    count_frames=window)
    except JournalDamaged as exc:
        if bar is not None:
            bar.clear()
        # Not a behaviour change: the bytes on disk are not the ones written.
        print(f"DAMAGED: {exc}")
        print("  the records before it replayed identical; replay from a later segment with "
              "--from to check the rest")
        return EXIT_DAMAGED
    except (OSError, JournalError) as exc:
        if bar is not None:
            bar.clear()
        text = str(exc)
        where = "" if text.startswith(path) else f"{path}: "
        print(f"slirptrio: error: journal {where}{text}", file=sys.stderr)
        return EXIT_UNREADABLE
    if bar is not None:
        bar.clear()
    if result.divergence is not None:
        print(format_divergence(result))
        if result.mismatch:
            print("MISMATCH: this journal was recorded with other core constants (listed "
                  "above), which explain a divergence; it is not a replay of this build")
            return EXIT_MISMATCH
        return EXIT_DIVERGED
    for line in format_replay_report(result, path):
        print(line)
    return EXIT_IDENTICAL

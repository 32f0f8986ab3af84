"""Behavioural diff: what the current code does differently with a journal's inputs.

Plain replay stops at the first divergence. ``replay --diff`` feeds *every* recorded input to
a fresh core built by this code, with this build's constants (a journal recorded with other
constants is run with today's; the mismatch is listed first), compares each record's effects
with the recorded ones, and reports every difference: the record, its time, the flow, and
for frames the decoded header fields that differ (journal value -> this build's value).
Differences are grouped by flow and kind with counts, so "every TCP frame to the guest has
another TTL" reads as one line with a count, not as a thousand hex dumps.

Effects are lined up per record with a longest-matching-subsequence diff (difflib), runs of
frames are taken apart into their frames, and a changed pair is decoded by
:func:`frame_fields` (dpkt, the independent decoder :mod:`replay.describe` uses). Where the
journal kept only a digest of an effect (length, CRC and the first bytes), the headers kept
are compared and the payload by length and CRC.

The core keeps running after a difference: later inputs may then name flows the new core
never made (it counts and ignores them, as it would any stale event); such knock-on changes
are reported like any other. Memory is bounded: at most ``budget`` changes are kept for the
report (all are counted).

``replay --diff DIR`` runs over every journal beneath a folder and prints one line each.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import os
import pathlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import IO, Any

import dpkt
import msgpack

from replay import describe
from replay.engine import (
    EXIT_DIVERGED,
    EXIT_IDENTICAL,
    EXIT_UNREADABLE,
    _normalize,
    _restore,
)
from slirptrio import __version__
from slirptrio.config import Config, ConfigError
from slirptrio.core import constants
from slirptrio.core.events import (
    Effect,
    Event,
    SendFrame,
    SendFrames,
    decode_effect,
    decode_event,
    encode,
)
from slirptrio.core.stack import Stack
from slirptrio.crc import crc32
from slirptrio.door import Door
from slirptrio.journal import Header, JournalError, SegmentStart, compact, is_digest, open_journal
from slirptrio.wire.framing import split_run

BUDGET = 10_000
"""Changes kept for the report (every change is counted)."""
EXAMPLES = 3
"""Examples printed per group."""


@dataclass
class Change:
    """One effect that differs: in the journal only, in this build only, or in both but not
    the same (``fields`` then lists (name, journal's, this build's))."""

    seq: int
    t_ns: int
    flow: str
    kind: str  # "changed", "missing" (journal only) or "extra" (this build only)
    what: str  # "frame to guest", or the effect's class name
    fields: list[tuple[str, Any, Any]] = field(default_factory=list)
    detail: str = ""

    @property
    def group(self) -> tuple[str, str]:
        """(flow, kind) under which the report counts this change."""
        names = ", ".join(name for name, _a, _b in self.fields)
        kind = f"{self.what} {self.kind}" + (f" [{names}]" if names else "")
        return self.flow, kind


@dataclass
class DiffResult:
    """What :func:`diff_journal` found."""

    header: Header
    records: int = 0
    differing_records: int = 0
    total: int = 0
    """Changes counted (all of them)."""
    changes: list[Change] = field(default_factory=list)
    """The first :data:`BUDGET` changes."""
    groups: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    constants: constants.Comparison | None = None
    restarts: list[str] = field(default_factory=list)
    """Where the core was restored from a segment's snapshot (after a gap, or at a journal's
    first retained segment)."""

    @property
    def identical(self) -> bool:
        return self.total == 0


# ------------------------------------------------------------------------------- decoding


def _addr(raw: bytes) -> str:
    return str(ip_address(raw))


def frame_fields(data: bytes) -> dict[str, Any]:
    """The header fields of an Ethernet frame by name (``eth.dst``, ``ip.ttl``, ``tcp.seq``,
    ...), plus ``payload.len`` and ``payload.crc`` of the innermost payload. A frame cut short
    (a digest's kept head) gives the fields it has."""
    out: dict[str, Any] = {"len": len(data)}
    try:
        eth = dpkt.ethernet.Ethernet(data)
    except (dpkt.UnpackError, ValueError):
        return out
    out["eth.src"] = eth.src.hex(":")
    out["eth.dst"] = eth.dst.hex(":")
    out["eth.type"] = f"0x{eth.type:04x}"
    ip = eth.data
    if isinstance(ip, dpkt.arp.ARP):
        out.update({"arp.op": ip.op, "arp.sha": ip.sha.hex(":"), "arp.spa": _addr(ip.spa),
                    "arp.tha": ip.tha.hex(":"), "arp.tpa": _addr(ip.tpa)})
        return out
    if isinstance(ip, dpkt.ip.IP):
        out.update({"ip.src": _addr(ip.src), "ip.dst": _addr(ip.dst), "ip.ttl": ip.ttl,
                    "ip.id": ip.id, "ip.len": ip.len, "ip.df": ip.df, "ip.mf": ip.mf,
                    "ip.offset": ip.offset, "ip.tos": ip.tos,
                    "ip.p": ip.p, "ip.sum": f"0x{ip.sum:04x}"})
    elif isinstance(ip, dpkt.ip6.IP6):
        out.update({"ip6.src": _addr(ip.src), "ip6.dst": _addr(ip.dst), "ip6.hlim": ip.hlim,
                    "ip6.plen": ip.plen, "ip6.nxt": ip.nxt, "ip6.fc": ip.fc, "ip6.flow": ip.flow})
    else:
        return out
    l4 = ip.data
    payload: bytes = b""
    if isinstance(l4, dpkt.tcp.TCP):
        flags = "".join(c for c, bit in zip("FSRPAUEC", (1, 2, 4, 8, 16, 32, 64, 128),
                                            strict=True) if l4.flags & bit)
        out.update({"tcp.sport": l4.sport, "tcp.dport": l4.dport, "tcp.seq": l4.seq,
                    "tcp.ack": l4.ack, "tcp.flags": flags, "tcp.win": l4.win,
                    "tcp.sum": f"0x{l4.sum:04x}", "tcp.opts": l4.opts.hex()})
        payload = bytes(l4.data)
    elif isinstance(l4, dpkt.udp.UDP):
        out.update({"udp.sport": l4.sport, "udp.dport": l4.dport, "udp.ulen": l4.ulen,
                    "udp.sum": f"0x{l4.sum:04x}"})
        payload = bytes(l4.data)
    elif isinstance(l4, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
        name = "icmp" if isinstance(l4, dpkt.icmp.ICMP) else "icmp6"
        out.update({f"{name}.type": l4.type, f"{name}.code": l4.code,
                    f"{name}.sum": f"0x{l4.sum:04x}"})
        payload = bytes(l4.data)
    elif isinstance(l4, bytes | bytearray):
        payload = bytes(l4)
    out["payload.len"] = len(payload)
    out["payload.crc"] = f"{crc32(payload):08x}"
    return out


def frame_flow(f: dict[str, Any]) -> str:
    """A frame's flow, guest side first whichever way it goes (both directions of one
    connection are one flow): ``tcp 10.0.2.15:41000 <> 10.0.2.2:80``."""
    src, dst = f.get("ip.src") or f.get("ip6.src"), f.get("ip.dst") or f.get("ip6.dst")
    if src is None:
        return "arp" if "arp.op" in f else f"ethertype {f.get('eth.type', '?')}"
    for proto in ("tcp", "udp"):
        if f"{proto}.sport" in f:
            # Frames compared here go to the guest: the destination is the guest's side.
            return (f"{proto} {describe._ep(dst)}:{f[proto + '.dport']} <> "
                    f"{describe._ep(src)}:{f[proto + '.sport']}")
    proto = "icmp6" if "icmp6.type" in f else "icmp" if "icmp.type" in f else "ip"
    return f"{proto} {dst} <> {src}"


# ------------------------------------------------------------------------------ comparing


@dataclass(frozen=True)
class _Item:
    """One effect of a record, or one frame of a run, in the journal's compact form."""

    key: bytes  # msgpack of the compact form: equal keys, equal effects
    raw: list[Any]  # compact effect; for a frame: [SendFrame.TAG, bytes or digest]
    run_digest: bool = False  # a whole run the journal kept as a digest


def _items(effects: list[list[Any]]) -> list[_Item]:
    out = []
    for raw in effects:
        if raw and raw[0] == SendFrames.TAG and not is_digest(raw[1]):
            for f in split_run(raw[1]):
                one = compact([SendFrame.TAG, bytes(f)])
                out.append(_Item(msgpack.packb(one, use_bin_type=True), one))
            continue
        out.append(_Item(msgpack.packb(raw, use_bin_type=True), raw,
                         raw[0] == SendFrames.TAG and is_digest(raw[1])))
    return out


def _frame_view(item: _Item) -> tuple[dict[str, Any], bool] | None:
    """The decoded fields of a frame item and whether they are whole (not a digest's head)."""
    if item.raw[0] not in (SendFrame.TAG, SendFrames.TAG):
        return None
    value = item.raw[1]
    if is_digest(value):
        head = bytes(value[3])
        if item.raw[0] == SendFrames.TAG:
            head = head[4:]  # the run's first frame, after its length
        f = frame_fields(head)
        for k in ("payload.crc", "payload.len"):
            f.pop(k, None)
        f["len"] = value[1]
        f["crc"] = f"{value[2]:08x}"
        return f, False
    if item.raw[0] == SendFrames.TAG:  # a whole run not taken apart (compact kept it)
        return frame_fields(bytes(split_run(value)[0])), True
    f = frame_fields(bytes(value))
    return f, True


def _as_digest_view(item: _Item) -> dict[str, Any] | None:
    """A whole frame seen as the journal's digest of it would be (to compare with one)."""
    value = item.raw[1]
    if item.raw[0] != SendFrame.TAG or is_digest(value):
        return None
    data = bytes(value)
    f = frame_fields(data[:128])
    for k in ("payload.crc", "payload.len"):
        f.pop(k, None)
    f["len"] = len(data)
    f["crc"] = f"{crc32(data):08x}"
    return f


def _field_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    names = list(a) + [k for k in b if k not in a]
    return [(n, a.get(n), b.get(n)) for n in names if a.get(n) != b.get(n)]


def _effect_fields(raw: list[Any]) -> dict[str, Any]:
    try:
        eff = decode_effect(raw)  # a digest stays a list here, shown as one below
    except (ValueError, TypeError):
        return {"raw": repr(raw)[:120]}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(eff):
        v = getattr(eff, f.name)
        if isinstance(v, bytes | bytearray):
            v = f"<{len(v)} bytes, crc32 {crc32(v):08x}>"
        elif is_digest(v):
            v = f"<{v[1]} bytes, crc32 {v[2]:08x}>"
        out[f.name] = v
    return out


def _flow_of_item(item: _Item, fields: dict[str, Any] | None, rec_flow: str) -> str:
    if fields is not None and ("ip.src" in fields or "ip6.src" in fields or "arp.op" in fields):
        return frame_flow(fields)
    if len(item.raw) > 1 and isinstance(item.raw[1], int):
        return f"flow {item.raw[1]}"
    return rec_flow


def _what(item: _Item) -> str:
    if item.raw[0] == SendFrame.TAG:
        return "frame to guest"
    if item.raw[0] == SendFrames.TAG:
        return "run of frames to guest"
    try:
        return type(decode_effect(item.raw)).__name__
    except (ValueError, TypeError):
        return f"effect {item.raw[0]}"


def compare_effects(seq: int, t_ns: int, rec_flow: str, expected: list[list[Any]],
                    actual: list[list[Any]]) -> list[Change]:
    """Every difference between a record's journaled effects and this build's, both in the
    journal's compact form."""
    a, b = _items(expected), _items(actual)
    matcher = difflib.SequenceMatcher(None, [x.key for x in a], [x.key for x in b],
                                      autojunk=False)
    changes: list[Change] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        left, right = a[i1:i2], b[j1:j2]
        for k in range(max(len(left), len(right))):
            x = left[k] if k < len(left) else None
            y = right[k] if k < len(right) else None
            changes.append(_change(seq, t_ns, rec_flow, x, y))
    return changes


def _change(seq: int, t_ns: int, rec_flow: str, x: _Item | None, y: _Item | None) -> Change:
    if x is None or y is None:
        item = x if x is not None else y
        assert item is not None
        view = _frame_view(item)
        fields = view[0] if view else None
        detail = describe.effect(item.raw)
        return Change(seq, t_ns, _flow_of_item(item, fields, rec_flow),
                      "missing" if y is None else "extra", _what(item), detail=detail)
    vx, vy = _frame_view(x), _frame_view(y)
    if vx is not None and vy is not None:
        fx, whole_x = vx
        fy, whole_y = vy
        if whole_x != whole_y:  # one side a digest: compare as digests
            if whole_x:
                fx = _as_digest_view(x) or fx
            else:
                fy = _as_digest_view(y) or fy
        diff = _field_diff(fx, fy)
        if not diff:  # a difference past what the digest's head shows
            diff = [("bytes", "journal", "other")]
        return Change(seq, t_ns, _flow_of_item(x, fx, rec_flow), "changed", _what(x), diff)
    if x.raw[0] == y.raw[0]:
        diff = _field_diff(_effect_fields(x.raw), _effect_fields(y.raw))
        return Change(seq, t_ns, _flow_of_item(x, None, rec_flow), "changed", _what(x), diff)
    return Change(seq, t_ns, _flow_of_item(x, None, rec_flow), "replaced", _what(x),
                  detail=f"{describe.effect(x.raw)} -> {describe.effect(y.raw)}")


# ------------------------------------------------------------------------------- running


def diff_journal(source: str | os.PathLike[str] | IO[bytes], *, budget: int = BUDGET
                 ) -> DiffResult:
    """Replay every input of a journal through this build (its own constants) and collect
    every effect that differs from the recorded one."""
    journal = open_journal(source)
    header = journal.header
    try:
        config = Config.from_dict(header.config)
    except ConfigError as exc:
        raise JournalError(f"journal config does not load: {exc}") from exc
    result = DiffResult(header)
    if header.constants is not None:
        result.constants = constants.compare(header.constants)
    actual: list[Effect] = []

    def sink(seq: int, t_ns: int, event: Event, effects: list[Effect]) -> None:
        actual[:] = effects

    door: Door | None = None
    entries: Iterator[SegmentStart | Any] = journal.entries(0)
    try:
        for item in entries:
            if isinstance(item, SegmentStart):
                snap = item.snapshot
                if snap is None or (door is None and snap["seq"] == 0 and snap["now_ns"] == 0):
                    door = Door(Stack(config, header.seed), sink)  # the session's start
                elif door is None or item.gap is not None:
                    door = _restore(config, snap, item)
                    door.sink = sink
                    why = "after a gap" if item.gap is not None else "at its first segment"
                    result.restarts.append(f"restored from the snapshot of segment "
                                           f"{item.segment.number} {why} (record {snap['seq']})")
                continue
            rec = item
            assert door is not None
            door.seq = rec.seq
            door.step(decode_event(rec.event), rec.t_ns)
            got = [compact(encode(e)) for e in actual]
            expected = [compact(_normalize(e)) for e in rec.effects]
            result.records += 1
            if got == expected:
                continue
            found = compare_effects(rec.seq, rec.t_ns, describe.flow_of(rec.event, rec.effects),
                                    expected, got)
            if not found:
                continue
            result.differing_records += 1
            result.total += len(found)
            for ch in found:
                result.groups[ch.group] += 1
                if len(result.changes) < budget:
                    result.changes.append(ch)
    finally:
        close = getattr(entries, "close", None)
        if close is not None:
            close()
    return result


def _value(v: Any) -> str:
    return str(v) if v is not None else "-"


def format_change(ch: Change) -> str:
    """One change on one line: record, time and what differs."""
    where = f"#{ch.seq} t={ch.t_ns / 1e9:.6f}s"
    if ch.fields:
        return f"{where} " + ", ".join(f"{n} {_value(a)} -> {_value(b)}" for n, a, b in ch.fields)
    return f"{where} {ch.detail}"


def format_report(result: DiffResult, path: str, examples: int = EXAMPLES) -> list[str]:
    """The whole report: constants first, then each group of changes with its count."""
    lines: list[str] = []
    version = result.header.version
    if version and version != __version__:
        lines.append(f"note: recorded by slirptrio {version}; this is {__version__}")
    comp = result.constants
    if comp is not None and comp.conflict:
        lines.append("MISMATCH: the journal's core constants differ from this build's "
                     "(diff runs with this build's):")
        lines += [f"  {line}" for line in comp.describe()]
    for note in result.restarts:
        lines.append(f"note: {note}")
    if result.identical:
        lines.append(f"identical: {result.records} records of {path}, no effect differs")
        return lines
    lines.append(f"DIFFERENT: {result.total} effects differ in {result.differing_records} of "
                 f"{result.records} records of {path}, in {len(result.groups)} groups")
    shown: dict[tuple[str, str], list[Change]] = collections.defaultdict(list)
    for ch in result.changes:
        if len(shown[ch.group]) < examples:
            shown[ch.group].append(ch)
    by_flow: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for (flow, kind), n in result.groups.items():
        by_flow[flow].append((kind, n))
    for flow in sorted(by_flow):
        lines.append(f"  {flow}:")
        for kind, n in sorted(by_flow[flow], key=lambda kn: (-kn[1], kn[0])):
            lines.append(f"    {n} x {kind}")
            for ch in shown.get((flow, kind), []):
                lines.append(f"      {format_change(ch)}")
            more = n - len(shown.get((flow, kind), []))
            if more > 0:
                lines.append(f"      ... and {more} more")
    if result.total > len(result.changes):
        lines.append(f"  (the first {len(result.changes)} changes kept for the examples)")
    return lines


def journals_in(folder: pathlib.Path) -> list[pathlib.Path]:
    """Every journal beneath ``folder``: ``*.journal`` files and directories (a journal
    directory's own segments are not looked into)."""
    found: list[pathlib.Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = pathlib.Path(dirpath)
        for name in sorted(filenames):
            if name.endswith(".journal"):
                found.append(here / name)
        for name in list(dirnames):
            if name.endswith(".journal"):
                found.append(here / name)
                dirnames.remove(name)
        dirnames.sort()
    return sorted(found)


def is_journal_dir(path: pathlib.Path) -> bool:
    """Whether ``path`` is one journal (a directory of segments), not a folder of them."""
    return any(p.suffix == ".seg" for p in path.iterdir())


def one_line(result: DiffResult, path: str) -> str:
    """The CI line for one journal."""
    note = " (other constants)" if result.constants is not None and result.constants.conflict \
        else ""
    if result.identical:
        return f"{path}: identical, {result.records} records{note}"
    first = result.changes[0] if result.changes else None
    where = f", first #{first.seq} t={first.t_ns / 1e9:.3f}s ({first.group[1]})" if first else ""
    return (f"{path}: DIFFERENT, {result.total} effects in {result.differing_records} of "
            f"{result.records} records, {len(result.groups)} groups{where}{note}")


def main(path: str, *, examples: int = EXAMPLES) -> int:
    """CLI entry for ``replay --diff``: 0 identical, 1 different, 2 unreadable (for a folder:
    the worst over its journals)."""
    p = pathlib.Path(path)
    if p.is_dir() and not is_journal_dir(p):
        paths = journals_in(p)
        if not paths:
            print(f"slirptrio: error: no journals beneath {path}", file=sys.stderr)
            return EXIT_UNREADABLE
        worst = EXIT_IDENTICAL
        for j in paths:
            try:
                result = diff_journal(j)
            except (OSError, JournalError) as exc:
                print(f"{j}: UNREADABLE, {exc}", flush=True)
                worst = max(worst, EXIT_UNREADABLE)
                continue
            print(one_line(result, str(j)), flush=True)
            if not result.identical:
                worst = max(worst, EXIT_DIVERGED)
        return worst
    try:
        result = diff_journal(path)
    except (OSError, JournalError) as exc:
        print(f"slirptrio: error: journal {path}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    for line in format_report(result, path, examples):
        print(line)
    return EXIT_IDENTICAL if result.identical else EXIT_DIVERGED

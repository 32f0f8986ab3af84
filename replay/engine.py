"""Deterministic replay: feed a journal's inputs through the door into a fresh core.

No sockets, no real clock: the core gets each recorded event at its recorded time, and every
effect it produces is compared with the recorded one. The first difference stops the replay and
is reported with its record number, time, flow, the expected and actual effects decoded, and the
records before it.
"""

from __future__ import annotations

import collections
import os
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from replay import describe
from replay.progress import Progress
from slirptrio.config import Config, ConfigError
from slirptrio.core.events import Effect, Event, decode_event, encode
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import (
    Header,
    JournalError,
    Record,
    compact,
    frames_of,
    is_digest,
    open_journal,
)
from slirptrio.wire.pcap import PcapWriter


@dataclass
class Divergence:
    index: int
    record: Record
    expected: list[list[Any]]
    actual: list[list[Any]]
    context: list[Record]


@dataclass
class ReplayResult:
    header: Header
    records: int = 0
    frames: int = 0
    truncated_bytes: int = 0
    divergence: Divergence | None = None
    flows: set[str] = field(default_factory=set)

    @property
    def identical(self) -> bool:
        return self.divergence is None


def _normalize(items: list[Any]) -> list[Any]:
    # msgpack gives lists where encode() gives lists too; tuples would only come from old tools.
    return [list(x) if isinstance(x, tuple) else x for x in items]


def replay_journal(
    f: IO[bytes],
    *,
    pcap_out: IO[bytes] | None = None,
    context: int = 5,
    progress: Progress | None = None,
) -> ReplayResult:
    """Replay a journal read from ``f``; stop at the first divergence. ``progress`` is
    updated with the file offset as records are read."""
    journal = open_journal(f)
    header = journal.header
    try:
        config = Config.from_dict(header.config)
    except ConfigError as exc:
        raise JournalError(f"journal config does not load: {exc}") from exc
    stack = Stack(config, header.seed)
    result = ReplayResult(header)
    pcap = PcapWriter(pcap_out) if pcap_out is not None else None
    recent: collections.deque[Record] = collections.deque(maxlen=context)
    expected_effects: list[list[Any]] = []
    actual: list[Effect] = []

    def sink(seq: int, t_ns: int, event: Event, effects: list[Effect]) -> None:
        actual[:] = effects

    door = Door(stack, sink)
    for index, rec in enumerate(journal.records):
        event = decode_event(rec.event)
        door.seq = rec.seq
        door.step(event, rec.t_ns)
        got = [compact(encode(e)) for e in actual]
        expected_effects = [compact(_normalize(e)) for e in rec.effects]
        # The capture comes from what the replayed core sent: identical up to a divergence,
        # and whole even where the journal kept only digests.
        for _d, frame in frames_of(event, actual):
            result.frames += 1
            if pcap is not None:
                pcap.write(header.origin_ns + rec.t_ns, frame)
        if got != expected_effects:
            result.divergence = Divergence(index, rec, expected_effects, got, list(recent))
            result.records = index
            break
        recent.append(rec)
        result.records = index + 1
        if progress is not None and not index & 1023:
            progress.update(f.tell())
    if pcap is not None:
        pcap.flush()
    if result.divergence is None and journal.truncated:
        result.truncated_bytes = journal.truncated[0]
    return result


def format_divergence(result: ReplayResult) -> str:
    d = result.divergence
    assert d is not None
    rec = d.record
    lines = [
        f"DIVERGED at record {d.index} (seq {rec.seq}, t={rec.t_ns / 1e9:.6f}s, "
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


def main(path: str, *, pcap_out: str | None = None, context: int = 5) -> int:
    """CLI entry: 0 when identical, 1 on divergence, 2 when the journal cannot be read."""
    try:
        with (
            open(path, "rb") as f,
            Progress("replaying", total=os.fstat(f.fileno()).st_size) as progress,
        ):
            if pcap_out is not None:
                with open(pcap_out, "wb") as out:
                    result = replay_journal(f, pcap_out=out, context=context, progress=progress)
            else:
                result = replay_journal(f, context=context, progress=progress)
    except (OSError, JournalError) as exc:
        print(f"slirptrio: error: journal {path}: {exc}", file=sys.stderr)
        return 2
    if result.divergence is not None:
        print(format_divergence(result))
        return 1
    tail = (
        f" (ignored a truncated last record of {result.truncated_bytes} bytes)"
        if result.truncated_bytes
        else ""
    )
    print(f"identical: {result.records} records replayed from {path}{tail}")
    return 0

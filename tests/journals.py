"""Helpers for tests that write journals: a door recording to a real journal, and rewriting."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from slirptrio import __version__
from slirptrio.config import Config
from slirptrio.core import constants
from slirptrio.core.events import Effect, Event
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import Header
from slirptrio.journal.format import batch, segment_start
from slirptrio.journal.writer import Recorder

ORIGIN_NS = 1_700_000_000_000_000_000


class _FlushingDoor(Door):
    """A door that hands each step to the writer once it is done, as the runtime does after
    a burst (never inside the step: a new segment's snapshot must fall between steps)."""

    recorder: Recorder

    def step(self, event: Event, now_ns: int) -> list[Effect]:
        effects = super().step(event, now_ns)
        self.recorder.flush()
        return effects


def header_for(config: Config, seed: int, origin_ns: int = ORIGIN_NS) -> Header:
    return Header(seed=seed, config=config.to_dict(), origin_ns=origin_ns, version=__version__,
                  constants=constants.gather())


@contextlib.contextmanager
def recording(
    path: str | os.PathLike[str],
    config: Config,
    seed: int,
    *,
    journal_max: int | None = None,
    pcap: str | None = None,
    stack: Stack | None = None,
) -> Iterator[Door]:
    """A door whose every step goes to the journal directory ``path`` (written in this thread,
    flushed after every step); the journal is closed on exit."""
    rec = Recorder.open(header_for(config, seed), journal_dir=os.fspath(path), pcap_path=pcap,
                        journal_max=journal_max, pcap_max=None, threaded=False)
    door = _FlushingDoor(stack if stack is not None else Stack(config, seed), rec)
    door.recorder = rec
    rec.attach(door.snapshot)
    try:
        yield door
    finally:
        rec.close()


def read_objects(path: pathlib.Path) -> list[Any]:
    """A segment's items as ``[header, snapshot, record..., end note...]`` (format 4's checked
    snapshot and batches unwrapped, so tests edit records whatever the format)."""
    with path.open("rb") as f:
        items = list(msgpack.Unpacker(f, raw=False, strict_map_key=False))
    if not items or items[0].get("format", 0) < 4:
        return items
    out = [items[0], msgpack.unpackb(items[1][1], raw=False, strict_map_key=False)]
    for item in items[2:]:
        if isinstance(item, list):
            out += list(msgpack.Unpacker(io.BytesIO(item[2]), raw=False, strict_map_key=False))
        else:
            out.append(item)
    return out


def write_objects(path: pathlib.Path, items: list[Any]) -> None:
    """Write :func:`read_objects`' items back (format 4: framed again, with fresh CRCs)."""
    with path.open("wb") as f:
        if not items or items[0].get("format", 0) < 4:
            for item in items:
                f.write(msgpack.packb(item, use_bin_type=True))
            return
        f.write(segment_start(items[0], items[1]))
        for item in items[2:]:
            if isinstance(item, list):
                f.write(batch(1, msgpack.packb(item, use_bin_type=True)))
            else:
                f.write(msgpack.packb(item, use_bin_type=True))


def segments(journal: pathlib.Path) -> list[pathlib.Path]:
    return sorted(journal.glob("*.seg"))


def rewrite(journal: pathlib.Path, change: Callable[[pathlib.Path, list[Any]], None]) -> None:
    """Rewrite every segment in place: ``change(path, [header, snapshot, record...])``."""
    for seg in segments(journal):
        items = read_objects(seg)
        change(seg, items)
        write_objects(seg, items)

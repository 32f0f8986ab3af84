"""The session journal: a msgpack stream of one header and one record per door step.

Format (version 2)::

    header  = {"magic": "slirptrio-journal", "format": 2, "version": str, "seed": int,
               "config": Config.to_dict(), "origin_ns": int (wall clock at t=0), "meta": {...}}
    record  = [seq: int, t_ns: int, event: [TAG, ...], effects: [[TAG, ...], ...]]

Events are kept whole: they are what replay feeds back. In effects, a bytes field longer than
256 bytes is kept as ``["#", length, crc32, first 128 bytes]`` (:func:`compact`); version 1
kept effects whole, and still replays.

``t_ns`` is the monotonic time the core was given, in integer nanoseconds since the session
started; ``origin_ns + t_ns`` is the wall-clock time of the record. Bytes are msgpack ``bin``.
Records are written to the file descriptor (not a user-space buffer) at the end of every door
batch, so a ``kill -9`` loses at most the batch in flight and the file stays readable up to the
last whole record; a reader reports a truncated tail instead of failing.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgpack

from slirptrio.core.events import Effect, Event, GuestFrame, SendFrame, encode

MAGIC = "slirptrio-journal"
FORMAT_VERSION = 2
DIGEST_OVER = 256
HEAD_BYTES = 128  # Ethernet + IPv4 + TCP headers with options fit
DIGEST_MARK = "#"
_FLUSH_EVERY = 256  # records; the runtime also flushes after every batch of inputs


class JournalError(Exception):
    """The journal cannot be read (not a journal, or a newer format)."""


@dataclass
class Header:
    seed: int
    config: dict[str, Any]
    origin_ns: int
    version: str = ""
    format: int = FORMAT_VERSION
    meta: dict[str, Any] = field(default_factory=dict)

    def to_raw(self) -> dict[str, Any]:
        return {
            "magic": MAGIC,
            "format": self.format,
            "version": self.version,
            "seed": self.seed,
            "config": self.config,
            "origin_ns": self.origin_ns,
            "meta": self.meta,
        }


def compact(raw: list[Any]) -> list[Any]:
    """An encoded effect as the journal keeps it: every bytes field longer than
    ``DIGEST_OVER`` becomes ``["#", length, crc32, first HEAD_BYTES bytes]``.

    Effects are outputs: replay recomputes them from the inputs, so the journal needs only
    enough to compare them (length and CRC) and to describe them (the headers). This keeps
    bulk data from being journaled twice (once as input, once as output). Idempotent.
    """
    out: list[Any] | None = None
    for i, v in enumerate(raw):
        if type(v) is bytes and len(v) > DIGEST_OVER:
            if out is None:
                out = list(raw)
            out[i] = [DIGEST_MARK, len(v), zlib.crc32(v), v[:HEAD_BYTES]]
    return raw if out is None else out


def is_digest(value: Any) -> bool:
    """Whether a journaled effect field is a :func:`compact` digest."""
    return isinstance(value, list) and len(value) == 4 and value[0] == DIGEST_MARK


class JournalWriter:
    """Appends records to a journal file; ``flush()`` hands them to the kernel.

    ``fd`` is an open, writable file descriptor; the writer owns it and closes it.
    """

    def __init__(self, fd: int, header: Header) -> None:
        self._fd = fd
        # Packing straight into the packer's own buffer saves a copy of every record.
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=False)
        self._packer.pack(header.to_raw())
        self._pending = 0  # records packed since the last flush
        self.bytes_written = 0
        self.records = 0
        self.flush()

    @classmethod
    def create(cls, path: str, header: Header) -> JournalWriter:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        return cls(fd, header)

    def record(self, seq: int, t_ns: int, event: Event, effects: list[Effect]) -> None:
        self._packer.pack([seq, t_ns, encode(event), [compact(encode(e)) for e in effects]])
        self.records += 1
        self._pending += 1
        if self._pending >= _FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Hand every packed record to the kernel (a kill -9 after this loses none)."""
        packer = self._packer
        with packer.getbuffer() as whole:
            size = len(whole)
            view = whole
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            view.release()
        self.bytes_written += size
        self._pending = 0
        packer.reset()

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


@dataclass
class Record:
    seq: int
    t_ns: int
    event: list[Any]
    effects: list[list[Any]]


@dataclass
class Journal:
    header: Header
    records: Iterator[Record]
    truncated: list[int]  # filled after iteration: [n] bytes of a partial last record


def read_header(raw: Any) -> Header:
    if not isinstance(raw, dict) or raw.get("magic") != MAGIC:
        raise JournalError("not a slirptrio journal (bad magic)")
    fmt = raw.get("format")
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise JournalError(
            f"journal format {fmt!r} is newer than this slirptrio understands "
            f"(up to {FORMAT_VERSION}); upgrade slirptrio to replay it"
        )
    try:
        return Header(
            seed=int(raw["seed"]),
            config=dict(raw["config"]),
            origin_ns=int(raw["origin_ns"]),
            version=str(raw.get("version", "")),
            format=fmt,
            meta=dict(raw.get("meta", {})),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise JournalError(f"bad journal header: {exc}") from exc


def open_journal(f: IO[bytes]) -> Journal:
    """Read a journal from a binary file; records are produced lazily."""
    unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=1 << 30, read_size=1 << 20)
    try:
        header = read_header(unpacker.unpack())
    except msgpack.OutOfData as exc:
        raise JournalError("empty or truncated journal header") from exc
    except (msgpack.UnpackException, ValueError) as exc:
        raise JournalError(f"not a slirptrio journal: {exc}") from exc
    truncated: list[int] = []

    def records() -> Iterator[Record]:
        while True:
            try:
                raw = unpacker.unpack()
            except msgpack.OutOfData:
                rest = unpacker.tell()
                f.seek(0, os.SEEK_END)
                tail = f.tell() - rest
                if tail:
                    truncated.append(tail)
                return
            if not (isinstance(raw, list) and len(raw) == 4):
                raise JournalError(f"bad record after record {raw!r:.80}")
            yield Record(raw[0], raw[1], raw[2], raw[3])

    return Journal(header, records(), truncated)


def frames_of(event: Event | list[Any], effects: list[Effect] | list[list[Any]]) -> Iterator[
    tuple[str, bytes]
]:
    """The Ethernet frames of one record, ("in"|"out", frame), for the pcap view."""
    if isinstance(event, GuestFrame):
        yield "in", event.data
    elif isinstance(event, list) and event and event[0] == GuestFrame.TAG:
        yield "in", event[1]
    for eff in effects:
        if isinstance(eff, SendFrame):
            yield "out", eff.data
        elif isinstance(eff, list) and eff and eff[0] == SendFrame.TAG:
            yield "out", eff[1]

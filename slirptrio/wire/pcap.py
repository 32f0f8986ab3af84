"""Nanosecond-resolution pcap files (linktype Ethernet)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import IO

from slirptrio.wire import MalformedFrame, _accel
from slirptrio.wire.fast import pcap_run
from slirptrio.wire.framing import frame_spans

MAGIC_NS = 0xA1B23C4D
MAGIC_US = 0xA1B2C3D4
SNAPLEN = 262144  # above the largest frame QEMU carries (69632)
LINKTYPE_ETHERNET = 1
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


def global_header(snaplen: int = SNAPLEN) -> bytes:
    """The file header of a nanosecond pcap with Ethernet frames."""
    return _GLOBAL.pack(MAGIC_NS, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def record_parts(ts_ns: int, frame: bytes, snaplen: int = SNAPLEN) -> tuple[bytes, bytes]:
    """One frame's record: its header and the (possibly cut) frame, to write one after the
    other. ``ts_ns`` is Unix time in nanoseconds."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    n = len(frame)
    if n > snaplen:
        frame = frame[:snaplen]
    return _RECORD.pack(sec, ns, len(frame), n), frame


REFERENCE_OVER = 4096
"""A frame at least this long is written from the run itself (a view), not copied."""


def pure_pcap_parts(
    parts: list[bytes | memoryview],
    run: bytes | bytearray | memoryview,
    ts_ns: int,
    snaplen: int,
    ref_over: int = REFERENCE_OVER,
) -> tuple[int, int]:
    """Append the records of every frame of ``run`` (length-prefixed frames), all captured at
    ``ts_ns``, to ``parts``, and return (frames, bytes): the concatenation of what is appended
    is what :func:`~slirptrio.wire.fast.pcap_run` makes. A frame of ``ref_over`` bytes or more
    (as captured) is appended as a view of ``run`` when ``run`` is ``bytes`` (immutable); the
    rest, with the record headers, in ``bytes`` blocks of one allocation each."""
    if not 0 <= ts_ns < (1 << 32) * 1_000_000_000:
        raise ValueError("ts_ns out of range")
    if not 0 <= snaplen <= 0xFFFFFFFF:
        raise ValueError("snaplen out of range")
    sec, ns = divmod(ts_ns, 1_000_000_000)
    ref = type(run) is bytes
    mv = memoryview(run)
    block = bytearray()
    count = total = 0
    for start, end in frame_spans(mv):
        length = end - start
        if not length:
            continue
        cap = min(length, snaplen)
        count += 1
        total += 16 + cap
        block += _RECORD.pack(sec, ns, cap, length)
        if ref and cap >= ref_over:
            parts.append(bytes(block))
            block.clear()
            parts.append(mv[start : start + cap])
        else:
            block += mv[start : start + cap]
    if block:
        parts.append(bytes(block))
    return count, total


pcap_parts: Callable[[list[bytes | memoryview], bytes | bytearray | memoryview, int, int, int],
                     tuple[int, int]]
pcap_parts = _accel.native.pcap_parts if _accel.native is not None else pure_pcap_parts


class PcapWriter:
    """Writes frames with integer nanosecond timestamps to a binary file object."""

    def __init__(
        self,
        fileobj: IO[bytes],
        snaplen: int = SNAPLEN,
        *,
        write_parts: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        """``write_parts``, if given, writes a list of buffers to the file's descriptor
        (the shell passes ``os.writev``, saving a copy); else they are joined and written."""
        self._f = fileobj
        self._snaplen = snaplen
        self._parts: list[bytes] = []
        fileobj.write(global_header(snaplen))
        self._write_parts = write_parts

    def write(self, ts_ns: int, frame: bytes) -> None:
        """Append one frame captured at ``ts_ns`` (Unix time in nanoseconds); it reaches the
        file object at the next :meth:`flush` (or after 256 frames)."""
        parts = self._parts
        head, frame = record_parts(ts_ns, frame, self._snaplen)
        parts.append(head)
        parts.append(frame)
        if len(parts) >= 512:
            self._drain()

    def write_run(self, ts_ns: int, run: bytes) -> None:
        """Append every frame of ``run`` (length-prefixed frames), all captured at ``ts_ns``;
        the records are built in one go (:func:`slirptrio.wire.fast.pcap_run`)."""
        records = bytearray()
        pcap_run(records, run, ts_ns, self._snaplen)
        parts = self._parts
        parts.append(records)  # type: ignore[arg-type]  # any buffer does for writev or join
        if len(parts) >= 512:
            self._drain()

    def _drain(self) -> None:
        parts = self._parts
        if not parts:
            return
        if self._write_parts is not None:
            self._f.flush()
            self._write_parts(parts)
        else:
            self._f.write(b"".join(parts))
        parts.clear()

    def flush(self) -> None:
        """Write out what is pending and flush the file object."""
        self._drain()
        self._f.flush()


def read_pcap(fileobj: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield (timestamp ns, frame) from a little-endian pcap (µs or ns resolution)."""
    head = fileobj.read(_GLOBAL.size)
    if len(head) < _GLOBAL.size:
        raise MalformedFrame("pcap_short")
    magic = _GLOBAL.unpack(head)[0]
    if magic not in (MAGIC_NS, MAGIC_US):
        raise MalformedFrame("pcap_bad_magic", hex(magic))
    scale = 1 if magic == MAGIC_NS else 1000
    while True:
        rec = fileobj.read(_RECORD.size)
        if len(rec) < _RECORD.size:
            return
        sec, frac, caplen, _origlen = _RECORD.unpack(rec)
        data = fileobj.read(caplen)
        if len(data) < caplen:
            return
        yield sec * 1_000_000_000 + frac * scale, data

"""A session's frames as pcapng with one interface per switch port (several guests, issue 22).

The live pcap stays a classic pcap: it opens in every tool, and with one guest there is
nothing to tell apart. With several guests the journal knows which port each frame crossed;
``slirptrio replay JOURNAL --pcapng OUT`` writes them with one pcapng interface per port
("port 0", "port 1", ...) and each frame's direction (inbound: from that port's guest;
outbound: toward it), which Wireshark shows as ``frame.interface_name`` and
``frame.packet_flags_direction`` and filters on. The frames toward the guests are the core's
own, replayed (the journal keeps long ones as digests), so the export needs the journal from
the session's start.
"""

from __future__ import annotations

import os
import struct
from typing import IO, Any

from slirptrio.config import Config
from slirptrio.core import constants
from slirptrio.core.events import (
    GuestFrame,
    GuestFrames,
    PortFrames,
    PortSendFrames,
    SendFrame,
    SendFrames,
    decode_event,
)
from slirptrio.core.stack import Stack
from slirptrio.journal import open_journal
from slirptrio.wire.framing import split_run

_SHB, _IDB, _EPB = 0x0A0D0D0A, 1, 6
_LINKTYPE_ETHERNET = 1
_INBOUND, _OUTBOUND = 1, 2  # epb_flags bits 0-1


def _block(kind: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", kind, n) + body + struct.pack("<I", n)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


class PcapngWriter:
    """Enhanced packet blocks on one interface per port, nanosecond timestamps."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._ifaces: dict[int, int] = {}  # port -> interface id
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(4, b"slirptrio") + \
            _option(0, b"")
        out.write(_block(_SHB, shb))
        self.frames = 0

    def _iface(self, port: int) -> int:
        iface = self._ifaces.get(port)
        if iface is None:
            iface = self._ifaces[port] = len(self._ifaces)
            opts = _option(2, f"port {port}".encode()) + _option(9, bytes([9])) + _option(0, b"")
            self._out.write(_block(_IDB, struct.pack("<HHI", _LINKTYPE_ETHERNET, 0, 0) + opts))
        return iface

    def add(self, t_ns: int, port: int, inbound: bool, frame: bytes | memoryview) -> None:
        iface = self._iface(port)
        data = bytes(frame)
        flags = _option(2, struct.pack("<I", _INBOUND if inbound else _OUTBOUND)) + \
            _option(0, b"")
        body = struct.pack("<IIIII", iface, t_ns >> 32, t_ns & 0xFFFFFFFF, len(data),
                           len(data)) + data + b"\0" * (-len(data) % 4) + flags
        self._out.write(_block(_EPB, body))
        self.frames += 1


def export(journal: str | os.PathLike[str], out: IO[bytes]) -> int:
    """Write the journal's frames to ``out`` as pcapng, one interface per port; returns the
    number of frames. Raises ValueError for a journal that lacks the session's start."""
    j = open_journal(journal)
    header = j.header
    config = Config.from_dict(header.config)
    writer = PcapngWriter(out)
    with constants.applied(header.constants or {}):
        stack = Stack(config, header.seed)
        first = True
        for rec in j.records:
            if first and rec.seq != 0:
                raise ValueError(f"the journal starts at record {rec.seq}, not at the "
                                 "session's start: its frames cannot be replayed")
            first = False
            event = decode_event(rec.event)
            ts = header.origin_ns + rec.t_ns
            _frames_in(writer, ts, event)
            for eff in stack.handle(event, rec.t_ns):
                t = type(eff)
                if t is SendFrames:
                    for f in split_run(eff.data):  # type: ignore[attr-defined]
                        writer.add(ts, 0, False, f)
                elif t is SendFrame:
                    writer.add(ts, 0, False, eff.data)  # type: ignore[attr-defined]
                elif t is PortSendFrames:
                    assert isinstance(eff, PortSendFrames)
                    for f in split_run(eff.data):
                        writer.add(ts, eff.port, False, f)
    return writer.frames


def _frames_in(writer: PcapngWriter, ts: int, event: Any) -> None:
    if isinstance(event, GuestFrames):
        for f in split_run(event.data):
            writer.add(ts, 0, True, f)
    elif isinstance(event, GuestFrame):
        writer.add(ts, 0, True, event.data)
    elif isinstance(event, PortFrames):
        for f in split_run(event.data):
            writer.add(ts, event.port, True, f)

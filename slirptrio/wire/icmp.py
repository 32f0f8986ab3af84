"""ICMPv4 messages (RFC 792): checksum-verified parse, build."""

from __future__ import annotations

from slirptrio.wire import MalformedFrame
from slirptrio.wire.checksum import internet_checksum

ECHO_REPLY = 0
DEST_UNREACHABLE = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
# Destination-unreachable codes.
NET_UNREACHABLE = 0
HOST_UNREACHABLE = 1
PROTOCOL_UNREACHABLE = 2
PORT_UNREACHABLE = 3
FRAG_NEEDED = 4
ADMIN_PROHIBITED = 13


def parse_icmp(data: bytes | memoryview) -> tuple[int, int, bytes, memoryview]:
    """Return (type, code, the 4 bytes after the checksum, payload view)."""
    mv = memoryview(data)
    if len(mv) < 8:
        raise MalformedFrame("icmp_short", f"{len(mv)} bytes")
    if internet_checksum(mv) != 0:
        raise MalformedFrame("icmp_bad_checksum")
    return mv[0], mv[1], bytes(mv[4:8]), mv[8:]


def build_icmp(type_: int, code: int, rest: bytes, payload: bytes | memoryview) -> bytes:
    """One ICMP message; ``rest`` is the 4 bytes after the checksum (id/seq, MTU, unused)."""
    if len(rest) != 4:
        raise ValueError("ICMP rest-of-header must be 4 bytes")
    body = bytearray(bytes((type_, code, 0, 0)) + rest + bytes(payload))
    csum = internet_checksum(body)
    body[2] = csum >> 8
    body[3] = csum & 0xFF
    return bytes(body)

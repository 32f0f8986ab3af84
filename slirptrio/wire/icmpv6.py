"""ICMPv6 messages (RFC 4443): parse with the pseudo-header checksum verified, build."""

from __future__ import annotations

from slirptrio.wire import MalformedFrame
from slirptrio.wire.checksum import internet_checksum, pseudo_header_sum

IPPROTO_ICMPV6 = 58

DEST_UNREACH = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAM_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
MLD_QUERY = 130
MLD_REPORT = 131
MLD_DONE = 132
ROUTER_SOLICIT = 133
ROUTER_ADVERT = 134
NEIGHBOR_SOLICIT = 135
NEIGHBOR_ADVERT = 136
REDIRECT = 137
MLD2_REPORT = 143

# Destination-unreachable codes.
UNREACH_NOROUTE = 0
UNREACH_ADMIN = 1
UNREACH_BEYOND_SCOPE = 2
UNREACH_ADDR = 3
UNREACH_PORT = 4

MAX_ERROR_LEN = 1280 - 40
"""An error message (with its quote) must fit the IPv6 minimum MTU (RFC 4443 2.4)."""


def parse_icmpv6(
    data: bytes | memoryview, src: bytes, dst: bytes
) -> tuple[int, int, memoryview]:
    """Return (type, code, the message after the checksum field)."""
    mv = memoryview(data)
    if len(mv) < 4:
        raise MalformedFrame("icmpv6_short", f"{len(mv)} bytes")
    if internet_checksum(mv, pseudo_header_sum(src, dst, IPPROTO_ICMPV6, len(mv))) != 0:
        raise MalformedFrame("icmpv6_bad_checksum")
    return mv[0], mv[1], mv[4:]


def build_icmpv6(src: bytes, dst: bytes, type_: int, code: int, body: bytes | memoryview) -> bytes:
    """One ICMPv6 message from ``src`` to ``dst``; ``body`` is everything after the checksum."""
    msg = bytearray(bytes((type_, code, 0, 0)) + bytes(body))
    csum = internet_checksum(msg, pseudo_header_sum(src, dst, IPPROTO_ICMPV6, len(msg)))
    msg[2] = csum >> 8
    msg[3] = csum & 0xFF
    return bytes(msg)

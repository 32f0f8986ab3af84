"""UDP datagrams (RFC 768) over IPv4 and IPv6: checksum-verified parse, build.

Addresses are packed, 4 or 16 bytes; the pseudo-header sum is the same formula for both.
"""

from __future__ import annotations

from slirptrio.wire import MalformedFrame
from slirptrio.wire.checksum import internet_checksum, pseudo_header_sum

IPPROTO_UDP = 17
HEADER_LEN = 8


def parse_udp(data: bytes | memoryview, src: bytes, dst: bytes) -> tuple[int, int, memoryview]:
    """Return (source port, destination port, payload view); a zero checksum means none
    over IPv4 and is invalid over IPv6 (RFC 8200 8.1)."""
    mv = memoryview(data)
    if len(mv) < HEADER_LEN:
        raise MalformedFrame("udp_short", f"{len(mv)} bytes")
    length = (mv[4] << 8) | mv[5]
    if length < HEADER_LEN or length > len(mv):
        raise MalformedFrame("udp_bad_length", f"length {length}, have {len(mv)}")
    mv = mv[:length]
    if not (mv[6] | mv[7]) and len(src) == 16:
        raise MalformedFrame("udp_zero_checksum_ipv6")
    if (mv[6] | mv[7]) and internet_checksum(mv, pseudo_header_sum(src, dst, IPPROTO_UDP, length)):
        raise MalformedFrame("udp_bad_checksum")
    return (mv[0] << 8) | mv[1], (mv[2] << 8) | mv[3], mv[HEADER_LEN:]


def build_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes | memoryview) -> bytes:
    """One UDP datagram with its checksum (0 is sent as 0xffff, as RFC 768 asks)."""
    length = HEADER_LEN + len(payload)
    head = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + length.to_bytes(2, "big")
    csum = internet_checksum(
        head + b"\x00\x00" + bytes(payload), pseudo_header_sum(src, dst, IPPROTO_UDP, length)
    )
    return head + (csum or 0xFFFF).to_bytes(2, "big") + bytes(payload)

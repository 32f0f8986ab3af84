"""IPv4 headers (RFC 791): validate and view, build with a correct checksum."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from slirptrio.wire import MalformedFrame
from slirptrio.wire.checksum import internet_checksum

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_HDR = struct.Struct("!BBHHHBBH4s4s")
MIN_HEADER = 20
DEFAULT_TTL = 64


@dataclass(frozen=True, slots=True)
class Ipv4Header:
    """The fields of a validated IPv4 header (``options`` raw, usually empty)."""

    header_len: int
    tos: int
    total_len: int
    ident: int
    df: bool
    mf: bool
    frag_offset: int  # in bytes
    ttl: int
    proto: int
    src: bytes
    dst: bytes
    options: bytes


def parse_ipv4(data: bytes | memoryview) -> tuple[Ipv4Header, memoryview]:
    """Validate an IPv4 datagram and return its header and payload view.

    Link-layer padding past the IP total length is cut off here.
    """
    mv = memoryview(data)
    if len(mv) < MIN_HEADER:
        raise MalformedFrame("ipv4_short", f"{len(mv)} bytes")
    vihl, tos, total_len, ident, frag, ttl, proto, _csum, src, dst = _HDR.unpack_from(mv)
    if vihl >> 4 != 4:
        raise MalformedFrame("ipv4_bad_version", str(vihl >> 4))
    hlen = (vihl & 0x0F) * 4
    if hlen < MIN_HEADER:
        raise MalformedFrame("ipv4_bad_header_length", str(hlen))
    if total_len < hlen or total_len > len(mv):
        raise MalformedFrame("ipv4_bad_length", f"total {total_len}, have {len(mv)}")
    if internet_checksum(mv[:hlen]) != 0:
        raise MalformedFrame("ipv4_bad_checksum")
    if frag & 0x8000:
        raise MalformedFrame("ipv4_reserved_flag")
    hdr = Ipv4Header(
        header_len=hlen,
        tos=tos,
        total_len=total_len,
        ident=ident,
        df=bool(frag & 0x4000),
        mf=bool(frag & 0x2000),
        frag_offset=(frag & 0x1FFF) * 8,
        ttl=ttl,
        proto=proto,
        src=src,
        dst=dst,
        options=bytes(mv[MIN_HEADER:hlen]),
    )
    return hdr, mv[hlen:total_len]


def build_ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes | memoryview,
    *,
    ident: int = 0,
    ttl: int | None = None,
    tos: int = 0,
    df: bool = False,
    mf: bool = False,
    frag_offset: int = 0,
) -> bytes:
    """One IPv4 datagram without options; ``frag_offset`` in bytes (a multiple of 8); ``ttl``
    defaults to :data:`DEFAULT_TTL`, read at the call (a replay or a diff may change it)."""
    if ttl is None:
        ttl = DEFAULT_TTL
    total = MIN_HEADER + len(payload)
    if total > 0xFFFF:
        raise ValueError(f"IPv4 datagram too long: {total}")
    frag = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset >> 3)
    header = bytearray(_HDR.pack(0x45, tos, total, ident, frag, ttl, proto, 0, src, dst))
    csum = internet_checksum(header)
    header[10] = csum >> 8
    header[11] = csum & 0xFF
    return bytes(header) + bytes(payload)

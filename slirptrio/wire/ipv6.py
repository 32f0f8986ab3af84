"""IPv6 headers (RFC 8200): validate and view with a bounded extension-header walk; build.

:func:`parse_ipv6` checks the fixed header, trusts the payload length over the frame length
(link padding is cut), and walks the extension headers (hop-by-hop, routing, destination
options) up to the upper-layer header, at most :data:`MAX_EXT_HEADERS` of them. A Fragment
header stops the walk: the header then carries its offset, M flag and identification, and the
body is the fragment's data, to be reassembled and walked again with :func:`walk_extensions`.
ESP, AH and unknown next headers end the walk too; the layer above decides what to do with
them. Jumbograms (payload length 0) are refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from slirptrio.wire import MalformedFrame

IPPROTO_HOPOPTS = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
HEADER_LEN = 40
FRAG_HEADER_LEN = 8
DEFAULT_HOP_LIMIT = 64
MIN_MTU = 1280
MAX_EXT_HEADERS = 8
"""Extension headers walked before giving up (Linux accepts more; no honest guest sends more
than a handful)."""

_EXTENSIONS = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS})
_HDR = struct.Struct("!IHBB16s16s")
_FRAG = struct.Struct("!BBHI")
_SOLICITED_PREFIX = bytes.fromhex("ff02" + "00" * 9 + "01ff")


@dataclass(frozen=True, slots=True)
class Ipv6Header:
    """A validated IPv6 header, its extension headers walked.

    ``proto`` is the upper-layer protocol (or the header after a Fragment header); ``ttl`` the
    hop limit and ``tos`` the traffic class (named as IPv4's, so an ICMP error can quote either
    family the same way). ``header_len`` counts the fixed header and the extension headers
    walked (for a fragment: the unfragmentable part and the Fragment header). ``ident`` is the
    fragment identification, ``frag_offset`` in bytes, ``mf`` the M flag; ``fragment`` tells
    whether a Fragment header was present at all (an "atomic" fragment has offset 0 and M 0).
    """

    tos: int
    flow_label: int
    payload_len: int
    ttl: int
    proto: int
    src: bytes
    dst: bytes
    header_len: int
    fragment: bool = False
    ident: int = 0
    frag_offset: int = 0
    mf: bool = False

    @property
    def df(self) -> bool:
        """IPv6 routers never fragment: every datagram is "don't fragment"."""
        return True


def walk_extensions(
    next_header: int, data: bytes | memoryview, limit: int = MAX_EXT_HEADERS
) -> tuple[int, int]:
    """Skip the hop-by-hop, routing and destination-options headers at the start of
    ``data``; return (the next header that is none of those, its offset in ``data``)."""
    mv = memoryview(data)
    off = 0
    n = len(mv)
    count = 0
    while next_header in _EXTENSIONS:
        count += 1
        if count > limit:
            raise MalformedFrame("ipv6_too_many_extensions", f"more than {limit}")
        if off + 8 > n:
            raise MalformedFrame("ipv6_bad_extension", "truncated extension header")
        size = (mv[off + 1] + 1) * 8
        if off + size > n:
            raise MalformedFrame("ipv6_bad_extension", f"extension of {size} bytes overruns")
        next_header = mv[off]
        off += size
    return next_header, off


def parse_ipv6(data: bytes | memoryview) -> tuple[Ipv6Header, memoryview]:
    """Validate an IPv6 packet; return its header and the upper-layer (or fragment) payload."""
    mv = memoryview(data)
    if len(mv) < HEADER_LEN:
        raise MalformedFrame("ipv6_short", f"{len(mv)} bytes")
    vtf, plen, nh, hop, src, dst = _HDR.unpack_from(mv)
    if vtf >> 28 != 6:
        raise MalformedFrame("ipv6_bad_version", str(vtf >> 28))
    if plen == 0:
        raise MalformedFrame("ipv6_jumbogram", "payload length 0")
    if HEADER_LEN + plen > len(mv):
        raise MalformedFrame("ipv6_bad_length", f"payload {plen}, have {len(mv) - HEADER_LEN}")
    payload = mv[HEADER_LEN : HEADER_LEN + plen]
    proto, off = walk_extensions(nh, payload)
    tc = (vtf >> 20) & 0xFF
    flow = vtf & 0xFFFFF
    if proto != IPPROTO_FRAGMENT:
        hdr = Ipv6Header(tc, flow, plen, hop, proto, src, dst, HEADER_LEN + off)
        return hdr, payload[off:]
    if off + FRAG_HEADER_LEN > plen:
        raise MalformedFrame("ipv6_bad_fragment", "truncated fragment header")
    inner, _res, offlg, ident = _FRAG.unpack_from(payload, off)
    hdr = Ipv6Header(
        tc, flow, plen, hop, inner, src, dst, HEADER_LEN + off + FRAG_HEADER_LEN,
        fragment=True, ident=ident, frag_offset=offlg & 0xFFF8, mf=bool(offlg & 1),
    )  # fmt: skip
    return hdr, payload[off + FRAG_HEADER_LEN :]


def build_ipv6(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload: bytes | memoryview,
    *,
    hop_limit: int = DEFAULT_HOP_LIMIT,
    tc: int = 0,
    flow_label: int = 0,
) -> bytes:
    """One IPv6 packet; ``payload`` starts with the header ``next_header`` names."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"IPv6 payload too long: {len(payload)}")
    vtf = (6 << 28) | ((tc & 0xFF) << 20) | (flow_label & 0xFFFFF)
    return _HDR.pack(vtf, len(payload), next_header, hop_limit, src, dst) + bytes(payload)


def fragment_header(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    """A Fragment header; ``offset`` in bytes (a multiple of 8)."""
    return _FRAG.pack(next_header, 0, (offset & 0xFFF8) | (1 if more else 0), ident & 0xFFFFFFFF)


def is_multicast(addr: bytes) -> bool:
    return addr[0] == 0xFF


def is_link_local(addr: bytes) -> bool:
    return addr[0] == 0xFE and addr[1] & 0xC0 == 0x80


def solicited_node(addr: bytes) -> bytes:
    """The solicited-node multicast group of ``addr`` (ff02::1:ffXX:XXXX)."""
    return _SOLICITED_PREFIX + addr[13:]


def multicast_mac(group: bytes) -> bytes:
    """The Ethernet address of an IPv6 multicast group (33:33 + its last 4 bytes)."""
    return b"\x33\x33" + group[12:]

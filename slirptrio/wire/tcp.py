"""TCP segments (RFC 9293): parsing with checksum verification, building with options.

Only the options the NAT uses are decoded: MSS, window scale (RFC 7323), SACK-permitted and
timestamps. Unknown options are skipped; a malformed option list ends option parsing (the
segment is still accepted, as Linux does) rather than rejecting the segment.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from slirptrio.wire import MalformedFrame
from slirptrio.wire.checksum import ones_sum

IPPROTO_TCP = 6
HEADER_LEN = 20

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_TIMESTAMPS = 8
MAX_WSCALE = 14

_HDR = struct.Struct("!HHIIBBHHH")
_MSS_OPT = struct.Struct("!BBH")
_TS = struct.Struct("!II")


@dataclass(frozen=True, slots=True)
class TcpSegment:
    """A parsed TCP segment. ``window`` is the raw 16-bit field (unscaled); ``wscale`` is
    clamped to 14 as RFC 7323 requires."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    urgent: int = 0
    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    timestamps: tuple[int, int] | None = None
    payload: bytes = b""

    @property
    def seg_len(self) -> int:
        """Sequence space the segment occupies: payload plus one each for SYN and FIN."""
        return len(self.payload) + (self.flags & SYN and 1) + (self.flags & FIN and 1)


def _pseudo_sum(src4: bytes, dst4: bytes, length: int) -> int:
    """The pseudo-header's contribution, unfolded (congruent mod 0xffff, which is all the
    checksum needs); inline because it runs twice per segment on the data path."""
    s = int.from_bytes(src4, "big") + int.from_bytes(dst4, "big")
    return (s >> 16) + (s & 0xFFFF) + IPPROTO_TCP + length


def parse_tcp(
    data: bytes | bytearray | memoryview,
    src4: bytes,
    dst4: bytes,
    verify_checksum: bool = True,
) -> TcpSegment:
    """Parse one TCP segment carried from ``src4`` to ``dst4`` (packed IPv4 addresses)."""
    n = len(data)
    if n < HEADER_LEN:
        raise MalformedFrame("tcp_short", f"{n} bytes")
    sport, dport, seq, ack, off_byte, flags, window, _csum, urgent = _HDR.unpack_from(data, 0)
    hlen = (off_byte >> 4) * 4
    if hlen < HEADER_LEN or hlen > n:
        raise MalformedFrame("tcp_bad_offset", f"header {hlen} of {n} bytes")
    if verify_checksum and ones_sum(data, _pseudo_sum(src4, dst4, n)) != 0xFFFF:
        raise MalformedFrame("tcp_bad_checksum")
    payload = bytes(data[hlen:])
    if hlen == HEADER_LEN:
        return TcpSegment(sport, dport, seq, ack, flags, window, urgent, payload=payload)
    mss: int | None = None
    wscale: int | None = None
    sack = False
    ts: tuple[int, int] | None = None
    opts = bytes(data[HEADER_LEN:hlen])
    i = 0
    end = len(opts)
    while i < end:
        kind = opts[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            break
        olen = opts[i + 1]
        if olen < 2 or i + olen > end:
            break
        if kind == OPT_MSS and olen == 4:
            mss = (opts[i + 2] << 8) | opts[i + 3]
        elif kind == OPT_WSCALE and olen == 3:
            wscale = min(opts[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERMITTED and olen == 2:
            sack = True
        elif kind == OPT_TIMESTAMPS and olen == 10:
            ts = _TS.unpack_from(opts, i + 2)
        i += olen
    return TcpSegment(sport, dport, seq, ack, flags, window, urgent, mss, wscale, sack, ts, payload)


def build_tcp(
    src4: bytes,
    dst4: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes | bytearray | memoryview = b"",
    *,
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
) -> bytes:
    """One TCP segment with a correct checksum; ``payload`` is copied exactly once."""
    opts = b""
    if mss is not None:
        opts += _MSS_OPT.pack(OPT_MSS, 4, mss)
    if wscale is not None:
        opts += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    if sack_permitted:
        opts += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2))
    hlen = HEADER_LEN + len(opts)
    hdr = bytearray(_HDR.pack(sport, dport, seq, ack, (hlen >> 2) << 4, flags, window, 0, 0))
    hdr += opts
    # The header has even length, so its sum can be folded in after the payload's.
    total = _pseudo_sum(src4, dst4, hlen + len(payload))
    if payload:
        total = ones_sum(payload, total)
    csum = ~ones_sum(hdr, total) & 0xFFFF
    hdr[16] = csum >> 8
    hdr[17] = csum & 0xFF
    return b"".join((hdr, payload))

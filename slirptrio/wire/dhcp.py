"""DHCP/BOOTP messages (RFC 2131, RFC 2132): parse a client message, build a server reply."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from slirptrio.wire import MalformedFrame

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC_COOKIE = b"\x63\x82\x53\x63"
_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes
FIXED_LEN = _FIXED.size
MIN_REPLY = 300  # BOOTP's minimum message; some clients drop shorter ones
FLAG_BROADCAST = 0x8000

# Message types (option 53).
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_NAMES = {DISCOVER: "DISCOVER", OFFER: "OFFER", REQUEST: "REQUEST", DECLINE: "DECLINE",
                 ACK: "ACK", NAK: "NAK", RELEASE: "RELEASE", INFORM: "INFORM"}
"""Each message type's name, as the replay tools print it."""
# Option codes.
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_DOMAIN = 15
OPT_MTU = 26
OPT_BROADCAST = 28
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_MSG_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_REQ = 55
OPT_MESSAGE = 56
OPT_VENDOR_CLASS = 60
OPT_CLIENT_ID = 61
OPT_TFTP_SERVER = 66
OPT_BOOTFILE = 67
OPT_SEARCH = 119
OPT_END = 255


@dataclass(frozen=True, slots=True)
class DhcpMessage:
    """The fields of a BOOTP/DHCP message; ``options`` maps code to (concatenated) value."""

    op: int
    xid: int
    secs: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    giaddr: bytes
    chaddr: bytes  # the 6-byte hardware address
    options: dict[int, bytes]

    @property
    def msg_type(self) -> int | None:
        """Option 53, or None for plain BOOTP."""
        v = self.options.get(OPT_MSG_TYPE)
        return v[0] if v and len(v) == 1 else None

    def address_option(self, code: int) -> bytes | None:
        """A 4-byte address option, or None when absent or malformed."""
        v = self.options.get(code)
        return v if v is not None and len(v) == 4 else None


def parse_dhcp(data: bytes | memoryview) -> DhcpMessage:
    """Parse a message; options split across repeats are concatenated (RFC 3396)."""
    mv = memoryview(data)
    if len(mv) < FIXED_LEN + 4:
        raise MalformedFrame("dhcp_short", f"{len(mv)} bytes")
    op, htype, hlen, _hops, xid, secs, flags, ci, yi, si, gi, ch, _sname, _file = (
        _FIXED.unpack_from(mv)
    )
    if htype != 1 or hlen != 6:
        raise MalformedFrame("dhcp_not_ethernet", f"htype {htype} hlen {hlen}")
    if bytes(mv[FIXED_LEN : FIXED_LEN + 4]) != MAGIC_COOKIE:
        raise MalformedFrame("dhcp_bad_cookie")
    options: dict[int, bytes] = {}
    i, n = FIXED_LEN + 4, len(mv)
    while i < n:
        code = mv[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            break
        if i + 1 >= n or i + 2 + mv[i + 1] > n:
            raise MalformedFrame("dhcp_bad_option", f"option {code} overruns the message")
        length = mv[i + 1]
        options[code] = options.get(code, b"") + bytes(mv[i + 2 : i + 2 + length])
        i += 2 + length
    return DhcpMessage(op, xid, secs, flags, ci, yi, si, gi, ch[:6], options)


def encode_options(options: list[tuple[int, bytes]]) -> bytes:
    """Encode options in order, splitting values longer than 255 bytes (RFC 3396)."""
    out = bytearray()
    for code, value in options:
        for i in range(0, max(len(value), 1), 255):
            chunk = value[i : i + 255]
            out += bytes((code, len(chunk))) + chunk
    out.append(OPT_END)
    return bytes(out)


def build_reply(
    request: DhcpMessage,
    *,
    yiaddr: bytes,
    siaddr: bytes,
    options: list[tuple[int, bytes]],
    ciaddr: bytes = b"\x00\x00\x00\x00",
    file: bytes = b"",
) -> bytes:
    """A BOOTREPLY answering ``request``, padded to BOOTP's 300-byte minimum; ``file`` (the
    boot file name, at most 127 bytes) goes in the BOOTP ``file`` field."""
    if len(file) > 127:
        raise ValueError("the BOOTP file field holds at most 127 bytes")
    fixed = _FIXED.pack(
        BOOTREPLY, 1, 6, 0, request.xid, 0, request.flags, ciaddr, yiaddr, siaddr,
        request.giaddr, request.chaddr.ljust(16, b"\x00"), b"", file,
    )
    msg = fixed + MAGIC_COOKIE + encode_options(options)
    if len(msg) < MIN_REPLY:
        msg += bytes(MIN_REPLY - len(msg))
    return msg


def encode_search_list(domains: tuple[str, ...] | list[str]) -> bytes:
    """Option 119's value: the domains as uncompressed DNS names (RFC 3397)."""
    out = bytearray()
    for domain in domains:
        for label in domain.strip(".").split("."):
            raw = label.encode()
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad DNS label in search domain {domain!r}")
            out += bytes((len(raw),)) + raw
        out.append(0)
    return bytes(out)

"""DHCPv6 messages (RFC 8415): a client message parsed, a server message built.

Only the client/server message format (not relay messages) is read. Options are kept as a list
of (code, value) in order; an option overrunning the message, or more than
:data:`MAX_OPTIONS` of them, makes the message malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from slirptrio.wire import MalformedFrame

CLIENT_PORT = 546
SERVER_PORT = 547
ALL_SERVERS = bytes.fromhex("ff020000000000000000000000010002")  # ff02::1:2

SOLICIT = 1
ADVERTISE = 2
REQUEST = 3
CONFIRM = 4
RENEW = 5
REBIND = 6
REPLY = 7
RELEASE = 8
DECLINE = 9
RECONFIGURE = 10
INFORMATION_REQUEST = 11
RELAY_FORW = 12
RELAY_REPL = 13

OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_IA_NA = 3
OPT_IA_TA = 4
OPT_ORO = 6
OPT_ELAPSED_TIME = 8
OPT_STATUS_CODE = 13
OPT_RAPID_COMMIT = 14
OPT_DNS_SERVERS = 23
OPT_DOMAIN_LIST = 24
OPT_INFORMATION_REFRESH_TIME = 32
OPT_BOOTFILE_URL = 59  # RFC 5970

STATUS_SUCCESS = 0
STATUS_NO_ADDRS_AVAIL = 2
STATUS_NO_BINDING = 3

DUID_LL = 3
MAX_OPTIONS = 64
_OPT = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Dhcpv6Message:
    """A client message: type, 24-bit transaction id, options in order."""

    msg_type: int
    xid: int
    options: list[tuple[int, bytes]]

    def option(self, code: int) -> bytes | None:
        """The first option ``code``, or None."""
        for c, v in self.options:
            if c == code:
                return v
        return None

    def all(self, code: int) -> list[bytes]:
        """Every option ``code``, in order."""
        return [v for c, v in self.options if c == code]


def parse_options(data: bytes | memoryview) -> list[tuple[int, bytes]]:
    """A run of options (also the inside of IA_NA and the like)."""
    mv = memoryview(data)
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(mv)
    while i < n:
        if i + 4 > n:
            raise MalformedFrame("dhcpv6_bad_option", "truncated option header")
        code, length = _OPT.unpack_from(mv, i)
        if i + 4 + length > n:
            raise MalformedFrame("dhcpv6_bad_option", f"option {code} overruns the message")
        if len(out) >= MAX_OPTIONS:
            raise MalformedFrame("dhcpv6_bad_option", f"more than {MAX_OPTIONS} options")
        out.append((code, bytes(mv[i + 4 : i + 4 + length])))
        i += 4 + length
    return out


def parse_dhcpv6(data: bytes | memoryview) -> Dhcpv6Message:
    """Parse a client/server message (relay messages are refused)."""
    mv = memoryview(data)
    if len(mv) < 4:
        raise MalformedFrame("dhcpv6_short", f"{len(mv)} bytes")
    msg_type = mv[0]
    if msg_type in (RELAY_FORW, RELAY_REPL):
        raise MalformedFrame("dhcpv6_relay", "relay messages are not served")
    xid = int.from_bytes(mv[1:4], "big")
    return Dhcpv6Message(msg_type, xid, parse_options(mv[4:]))


def encode_option(code: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"DHCPv6 option {code} too long")
    return _OPT.pack(code, len(value)) + value


def build_message(msg_type: int, xid: int, options: list[tuple[int, bytes]]) -> bytes:
    """A server message with ``options`` in order."""
    return bytes((msg_type,)) + (xid & 0xFFFFFF).to_bytes(3, "big") + b"".join(
        encode_option(c, v) for c, v in options
    )


def status(code: int, message: str) -> bytes:
    """A Status Code option's value."""
    return code.to_bytes(2, "big") + message.encode()


def duid_ll(mac: bytes) -> bytes:
    """A DUID-LL (type 3) for an Ethernet address."""
    return DUID_LL.to_bytes(2, "big") + (1).to_bytes(2, "big") + mac

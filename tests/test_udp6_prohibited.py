"""UDP over IPv6 that nothing may carry (the host's address under ``hostloopback=off``): the
guest gets ICMPv6 "administratively prohibited" quoting its packet, as IPv4 guests get ICMP's.

Found by the fuzzer's IPv6 sessions: the IPv4 quote was used for IPv6 datagrams, which raised
for a reassembled datagram (its 32-bit fragment identification does not fit IPv4's 16 bits)
and otherwise sent an IPv4 ICMP message, cut addresses and all, inside an IPv6 packet."""

from __future__ import annotations

import dpkt
import pytest

from slirptrio.config import parse_user_options
from slirptrio.core.events import GuestFrame, SendFrame, UdpOpen
from slirptrio.core.stack import Stack
from tests import guestframes6 as gf6


def _sum16(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _icmp6_errors(effects: list[object]) -> list[dpkt.ip6.IP6]:
    out = []
    for e in effects:
        if isinstance(e, SendFrame):
            ip = gf6.parse(e.data).data
            if isinstance(ip, dpkt.ip6.IP6) and ip.nxt == 58 and ip.data.type == 1:
                out.append(ip)
    return out


@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragments"])
def test_prohibited_udp6_gets_icmpv6_admin_prohibited(fragmented: bool) -> None:
    stack = Stack(parse_user_options("hostloopback=off"), 3)
    payload = bytes(range(200)) * 15  # 3000 bytes: three fragments when fragmented
    frames = (gf6.udp6_fragments("fec0::2", 9999, payload, ident=0x89ABCDEF) if fragmented
              else [gf6.udp6("fec0::2", 9999, payload[:100])])
    effects: list[object] = []
    for t, frame in enumerate(frames):
        effects += stack.handle(GuestFrame(frame), t)
    assert not [e for e in effects if isinstance(e, UdpOpen)]
    (err,) = _icmp6_errors(effects)
    assert err.src == gf6.ip6("fec0::2") and err.dst == gf6.ip6(gf6.GUEST_IP)
    assert (err.data.type, err.data.code) == (1, 1)  # destination unreachable, prohibited
    quoted = dpkt.ip6.IP6(bytes(err.data.data)[4:])  # after the unused word
    assert quoted.src == gf6.ip6(gf6.GUEST_IP) and quoted.dst == gf6.ip6("fec0::2")
    assert quoted.nxt == 17 and quoted.plen == 8 + (len(payload) if fragmented else 100)
    assert _sum16(err.src + err.dst + len(bytes(err.data)).to_bytes(4, "big") + b"\0\0\0\x3a"
                  + bytes(err.data)) == 0xFFFF  # the ICMPv6 checksum holds
    assert stack.counters["udp_prohibited_icmp"] == 1

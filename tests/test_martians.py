"""Martian destinations and hostloopback=off, on the real Stack and its real translate.

Every frame here goes through ``Stack.handle`` as a guest would send it; nothing is stubbed.
"""

from __future__ import annotations

from collections.abc import Sequence

import dpkt
import pytest

from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    GuestFrame,
    IcmpEchoOpen,
    SendFrame,
    TcpConnect,
    UdpOpen,
    UdpSend,
)
from slirptrio.core.martian import (
    BROADCAST,
    LOOPBACK,
    MULTICAST,
    RESERVED,
    THIS_NETWORK,
    classify_ipv4,
    is_loopback_host,
)
from slirptrio.core.stack import Stack
from slirptrio.wire import ethernet as weth
from slirptrio.wire import ipv4 as wip
from slirptrio.wire.tcp import ACK, RST, SYN, build_tcp
from tests import guestframes as gf

GW_MAC = bytes.fromhex("52550a000202")
GUEST = "10.0.2.15"


def make(options: str = "") -> Stack:
    stack = Stack(parse_user_options(options), 1)
    stack.handle(DnsUpstreams("203.0.113.53:53"), 0)
    return stack


def tcp_frame(dst: str, dport: int = 80, flags: int = SYN, src: str = GUEST,
              sport: int = 40000) -> bytes:
    seg = build_tcp(gf.ip4(src), gf.ip4(dst), sport, dport, 1000, 0, flags, 64240, mss=1460)
    packet = wip.build_ipv4(gf.ip4(src), gf.ip4(dst), wip.IPPROTO_TCP, seg, ident=7)
    return weth.build_ethernet(GW_MAC, gf.GUEST_MAC, weth.ETH_P_IP, packet)


def udp_frame(dst: str, dport: int = 9, data: bytes = b"hello", src: str = GUEST) -> bytes:
    u = dpkt.udp.UDP(sport=5000, dport=dport, data=data)
    u.ulen = 8 + len(data)  # checksum 0: none (dpkt fills it only inside an IP object)
    return gf.ipv4(src, dst, u, dpkt.ip.IP_PROTO_UDP, GW_MAC)


def frames(effects: Sequence[Effect]) -> list[dpkt.ethernet.Ethernet]:
    return [gf.parse(e.data) for e in effects if isinstance(e, SendFrame)]


def host_effects(effects: Sequence[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, SendFrame)]


def assert_prohibited(effects: Sequence[Effect], dst: str, proto: int, src: str = "10.0.2.2"
                      ) -> None:
    """Exactly one frame: ICMP "administratively prohibited" quoting the guest's datagram."""
    assert host_effects(effects) == []
    (eth,) = frames(effects)
    ip = eth.data
    assert ip.p == dpkt.ip.IP_PROTO_ICMP
    assert ip.src == gf.ip4(src) and ip.dst == gf.ip4(GUEST)
    icmp = ip.data
    assert (icmp.type, icmp.code) == (3, 13)
    quoted = dpkt.ip.IP(bytes(icmp.data)[4:])
    assert quoted.dst == gf.ip4(dst) and quoted.p == proto


# ---------------------------------------------------------------------- the classifier


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("0.0.0.0", THIS_NETWORK), ("0.255.1.2", THIS_NETWORK),
        ("127.0.0.1", LOOPBACK), ("127.0.0.2", LOOPBACK), ("127.255.255.255", LOOPBACK),
        ("224.0.0.1", MULTICAST), ("239.255.255.250", MULTICAST),
        ("240.0.0.1", RESERVED), ("255.255.255.254", RESERVED),
        ("255.255.255.255", BROADCAST),
        ("1.0.0.0", ""), ("10.0.2.2", ""), ("126.255.255.255", ""), ("128.0.0.0", ""),
        ("203.0.113.1", ""), ("223.255.255.255", ""),
    ],
)
def test_classify_ipv4(addr: str, reason: str) -> None:
    assert classify_ipv4(gf.ip4(addr)) == reason


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.53", True), ("127.1.2.3", True), ("0.0.0.0", True), ("::1", True),
        ("::", True), ("[::1]", True), ("::ffff:127.0.0.1", True), ("0:0::1", True),
        ("10.0.2.2", False), ("203.0.113.1", False), ("2001:db8::1", False),
        ("::ffff:203.0.113.1", False), ("localhost", False), ("guestfwd:3", False),
    ],
)
def test_is_loopback_host(host: str, loop: bool) -> None:
    assert is_loopback_host(host) is loop


# ----------------------------------------------------------------------- the translate


@pytest.mark.parametrize("options", ["", "hostloopback=off", "hostloopback=192.0.2.7"])
def test_translate_never_leads_to_a_martian(options: str) -> None:
    stack = make(options)
    for addr in ("127.0.0.1", "127.0.0.2", "0.0.0.0", "0.0.0.1", "224.0.0.1", "240.1.2.3",
                 "255.255.255.255"):
        assert stack.translate(gf.ip4(addr), 80) is None, addr
    assert stack.translate(gf.ip4("203.0.113.1"), 80) == ("203.0.113.1", 80)
    alias = {"": ("127.0.0.1", 80), "hostloopback=off": None,
             "hostloopback=192.0.2.7": ("192.0.2.7", 80)}[options]
    assert stack.translate(gf.ip4("10.0.2.2"), 80) == alias
    assert stack.translate(gf.ip4("10.0.2.99"), 80) == alias
    assert stack.translate(gf.ip4("10.0.2.255"), 80) is None


# ------------------------------------------------------------- unicast-looking martians

UNICAST_MARTIANS = ["127.0.0.1", "127.0.0.2", "127.200.0.9", "0.0.0.0", "0.1.2.3", "240.0.0.1"]


@pytest.mark.parametrize("options", ["", "hostloopback=off"])
@pytest.mark.parametrize("dst", UNICAST_MARTIANS)
def test_tcp_to_a_martian_never_connects(options: str, dst: str) -> None:
    stack = make(options)
    effects = stack.handle(GuestFrame(tcp_frame(dst)), 0)
    assert_prohibited(effects, dst, dpkt.ip.IP_PROTO_TCP)
    assert stack.counters["drop_martian_" + classify_ipv4(gf.ip4(dst))] == 1
    assert len(stack.tcp) == 0
    # A guest that ignores the ICMP and retransmits gets the same answer, and no flow.
    assert_prohibited(stack.handle(GuestFrame(tcp_frame(dst)), 1_000_000_000), dst, 6)


@pytest.mark.parametrize("options", ["", "hostloopback=off"])
@pytest.mark.parametrize("dst", UNICAST_MARTIANS)
def test_udp_to_a_martian_never_opens_a_socket(options: str, dst: str) -> None:
    stack = make(options)
    assert_prohibited(stack.handle(GuestFrame(udp_frame(dst, 53)), 0), dst, 17)
    assert len(stack.udp) == 0


@pytest.mark.parametrize("options", ["", "hostloopback=off"])
@pytest.mark.parametrize("dst", UNICAST_MARTIANS)
def test_ping_to_a_martian_is_not_forwarded(options: str, dst: str) -> None:
    stack = make(options)
    assert_prohibited(stack.handle(GuestFrame(gf.icmp_echo(dst)), 0), dst, 1)
    assert len(stack.echo) == 0


def test_no_icmp_error_about_an_rst_or_an_icmp_error() -> None:
    stack = make()
    assert stack.handle(GuestFrame(tcp_frame("127.0.0.1", flags=RST | ACK)), 0) == []
    unreach = dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=b"\x45" + b"\0" * 27))
    frame = gf.ipv4(GUEST, "127.0.0.1", unreach, dpkt.ip.IP_PROTO_ICMP, GW_MAC)
    assert stack.handle(GuestFrame(frame), 0) == []
    assert stack.counters["drop_martian_loopback"] == 2


# ------------------------------------------------------------------ multicast, broadcast


@pytest.mark.parametrize(
    "dst", ["224.0.0.251", "239.255.255.250", "224.0.0.1", "255.255.255.255"]
)
def test_multicast_and_broadcast_stay_inside_without_answer(dst: str) -> None:
    stack = make()
    assert stack.handle(GuestFrame(udp_frame(dst, 5353)), 0) == []
    assert stack.handle(GuestFrame(tcp_frame(dst)), 0) == []
    assert stack.handle(GuestFrame(gf.icmp_echo(dst)), 0) == []
    assert len(stack.udp) == len(stack.tcp) == len(stack.echo) == 0
    assert stack.counters["drop_martian_" + classify_ipv4(gf.ip4(dst))] == 3


def test_dhcp_to_the_limited_broadcast_is_still_served() -> None:
    stack = make()
    (offer,) = frames(stack.handle(GuestFrame(gf.dhcp(1)), 0))
    assert offer.data.data.dport == 68


def test_martian_sources_are_dropped() -> None:
    stack = make()
    for src in ("127.0.0.1", "224.0.0.5", "255.255.255.255", "0.0.0.0"):
        assert stack.handle(GuestFrame(tcp_frame("203.0.113.1", src=src)), 0) == []
    assert stack.handle(GuestFrame(udp_frame("203.0.113.1", src="127.0.0.1")), 0) == []
    assert stack.counters["drop_martian_src"] == 5
    assert len(stack.tcp) == len(stack.udp) == 0


# -------------------------------------------------------------------- hostloopback=off


def test_hostloopback_off_refuses_every_alias() -> None:
    stack = make("hostloopback=off")
    for dst in ("10.0.2.2", "10.0.2.99"):
        effects = stack.handle(GuestFrame(tcp_frame(dst, 22)), 0)
        assert host_effects(effects) == []
        (eth,) = frames(effects)
        assert eth.data.data.flags & dpkt.tcp.TH_RST  # refused, as by a host without listener
        assert_prohibited(stack.handle(GuestFrame(udp_frame(dst, 9)), 0), dst, 17, src=dst)
        # The gateway answers its own pings; other aliases lead nowhere.
        effects = stack.handle(GuestFrame(gf.icmp_echo(dst)), 0)
        assert host_effects(effects) == [] and len(frames(effects)) == (dst == "10.0.2.2")
    assert len(stack.tcp) == len(stack.udp) == len(stack.echo) == 0
    # The network's broadcast maps to the host address, so it goes nowhere either: silently.
    assert stack.handle(GuestFrame(udp_frame("10.0.2.255", 9)), 0) == []


def test_tcp_to_the_network_broadcast_is_dropped_unanswered() -> None:
    stack = make()
    assert stack.handle(GuestFrame(tcp_frame("10.0.2.255")), 0) == []
    assert stack.counters["drop_tcp_broadcast"] == 1 and len(stack.tcp) == 0


def test_default_hostloopback_is_the_one_way_to_the_host_loopback() -> None:
    stack = make()
    effects = stack.handle(GuestFrame(tcp_frame("10.0.2.2", 22)), 0)
    assert [(e.host, e.port) for e in effects if isinstance(e, TcpConnect)] == [("127.0.0.1", 22)]
    effects = stack.handle(GuestFrame(udp_frame("10.0.2.2", 9)), 0)
    assert [(e.host, e.port) for e in effects if isinstance(e, UdpOpen)] == [("127.0.0.1", 9)]
    effects = stack.handle(GuestFrame(gf.icmp_echo("10.0.2.2")), 0)
    assert frames(effects)  # the gateway answers its own pings
    effects = stack.handle(GuestFrame(gf.icmp_echo("203.0.113.9")), 0)
    assert [e.host for e in effects if isinstance(e, IcmpEchoOpen)] == ["203.0.113.9"]


def dns_query(name: bytes = b"\x07example\x03com\x00") -> bytes:
    return b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"


@pytest.mark.parametrize("loopback", ["127.0.0.53:53", "[::1]:53", "0.0.0.0:53"])
def test_hostloopback_off_keeps_the_dns_relay_off_the_loopback(loopback: str) -> None:
    stack = make("hostloopback=off")
    stack.handle(DnsUpstreams(loopback), 0)
    effects = stack.handle(GuestFrame(udp_frame("10.0.2.3", 53, dns_query())), 0)
    assert host_effects(effects) == []
    (eth,) = frames(effects)
    reply = dpkt.dns.DNS(eth.data.data.data)
    assert reply.id == 0xBEEF and reply.rcode == dpkt.dns.DNS_RCODE_SERVFAIL
    assert stack.counters["dns_upstream_loopback_skipped"] == 1
    # TCP to dns:53 has no upstream either: refused.
    effects = stack.handle(GuestFrame(tcp_frame("10.0.2.3", 53)), 0)
    assert host_effects(effects) == []
    assert frames(effects)[0].data.data.flags & dpkt.tcp.TH_RST
    # A reachable upstream beside it is used, for UDP and TCP.
    stack.handle(DnsUpstreams(f"{loopback} 203.0.113.53:53"), 0)
    effects = stack.handle(GuestFrame(udp_frame("10.0.2.3", 53, dns_query())), 0)
    assert [(e.host, e.port) for e in effects if isinstance(e, UdpOpen)] == [("203.0.113.53", 53)]
    assert any(isinstance(e, UdpSend) for e in effects)
    effects = stack.handle(GuestFrame(tcp_frame("10.0.2.3", 53)), 0)
    assert [(e.host, e.port) for e in effects if isinstance(e, TcpConnect)] == [
        ("203.0.113.53", 53)
    ]


def test_loopback_dns_upstream_is_used_by_default() -> None:
    stack = make()
    stack.handle(DnsUpstreams("127.0.0.53:53"), 0)
    effects = stack.handle(GuestFrame(udp_frame("10.0.2.3", 53, dns_query())), 0)
    assert [(e.host, e.port) for e in effects if isinstance(e, UdpOpen)] == [("127.0.0.53", 53)]

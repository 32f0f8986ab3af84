"""Several stations on one link (issue #24) and sources no node sends from (issue #21 item 6).

The stack acts only on frames addressed to it (:meth:`Stack.frame_for_us`); an address a guest
holds is never an alias of the host; a packet from a martian source is dropped and counted
(``drop_martian_src``), never NATed or answered; router advertisements wait for the guest's
link-local address unless it solicits one. Both the general path (one frame per event) and the
fast path (a burst, coalesced by ``gro_scan``) are checked where TCP is involved.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import dpkt
import pytest

from replay.summary import format_summary, summarize_journal
from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    GuestFrame,
    GuestFrames,
    GuestFwdAdd,
    IcmpEchoOpen,
    SendFrame,
    SendFrames,
    TcpConnect,
    TcpSend,
    Tick,
    UdpOpen,
)
from slirptrio.core.stack import Stack, virtual_mac
from slirptrio.wire.ethernet import build_ethernet
from slirptrio.wire.framing import split_run
from slirptrio.wire.ipv4 import build_ipv4
from slirptrio.wire.tcp import ACK, PSH, SYN, build_tcp
from tests import guestframes as gf
from tests import guestframes6 as g6
from tests.sessionbuilder import Session
from tests.test_gro import Guest
from tests.test_stack import dhcp_exchange

GW_MAC = bytes.fromhex("52550a000202")
DNS_MAC = bytes.fromhex("52550a000203")
MAC_B = bytes.fromhex("525400bbbbbb")  # a second guest on the same hub
MAC_C = bytes.fromhex("525400cccccc")  # a third station, never the stack
ROUTER_MAC6 = g6.ROUTER_MAC


def make(options: str = "") -> Stack:
    stack = Stack(parse_user_options(options), 1)
    stack.handle(DnsUpstreams("203.0.113.53:53"), 0)
    return stack


def ip4(text: str) -> bytes:
    return socket.inet_aton(text)


def frames(effects: Sequence[Effect]) -> list[dpkt.ethernet.Ethernet]:
    out = []
    for e in effects:
        if isinstance(e, SendFrame):
            out.append(gf.parse(e.data))
        elif isinstance(e, SendFrames):
            out += [gf.parse(bytes(f)) for f in split_run(e.data)]
    return out


def host_effects(effects: Sequence[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, SendFrame | SendFrames)]


def syn(dst: str, dport: int = 8080, *, src: str = "10.0.2.15", dst_mac: bytes = GW_MAC,
        src_mac: bytes = gf.GUEST_MAC, flags: int = SYN, seq: int = 1000,
        payload: bytes = b"") -> bytes:
    seg = build_tcp(ip4(src), ip4(dst), 40000, dport, seq, 0, flags, 64240, payload)
    packet = build_ipv4(ip4(src), ip4(dst), 6, seg, ident=3)
    return build_ethernet(dst_mac, src_mac, 0x0800, packet)


def udp(dst: str, dport: int = 9, *, src: str = "10.0.2.15", dst_mac: bytes = GW_MAC) -> bytes:
    u = dpkt.udp.UDP(sport=5000, dport=dport, data=b"hello")
    u.ulen = 13
    return gf.ipv4(src, dst, u, dpkt.ip.IP_PROTO_UDP, dst_mac)


def run_of(items: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in items)


def arp_reply(sender_ip: str, sender_mac: bytes, target_ip: str, target_mac: bytes) -> bytes:
    a = dpkt.arp.ARP(op=dpkt.arp.ARP_OP_REPLY, sha=sender_mac, spa=ip4(sender_ip),
                     tha=target_mac, tpa=ip4(target_ip))
    return gf.eth(target_mac, a, dpkt.ethernet.ETH_TYPE_ARP, sender_mac)


# ----------------------------------------------------------------- which frames are ours


def test_the_macs_the_stack_takes() -> None:
    stack = make()
    ours = [
        GW_MAC, DNS_MAC, b"\xff" * 6, ROUTER_MAC6, bytes.fromhex("525600000003"),  # fec0::3
        g6.mcast_mac("ff02::1"), g6.mcast_mac("ff02::2"), g6.mcast_mac("ff02::16"),
        g6.mcast_mac("ff02::1:2"), g6.mcast_mac("ff02::1:ff00:2"),  # solicited-node of ::2
        g6.mcast_mac("ff02::1:ff00:3"),
    ]
    assert all(stack.frame_for_us(m) for m in ours)
    theirs = [
        gf.GUEST_MAC, MAC_B, bytes.fromhex("52550a000204"),  # smbserver's, but no SMB here
        bytes.fromhex("01005e000001"),  # IPv4 all-hosts: no IPv4 group is served
        g6.mcast_mac("ff02::1:ff12:3456"),  # the guest's own solicited-node group
        g6.mcast_mac("ff02::fb"),  # mDNS
    ]
    assert not any(stack.frame_for_us(m) for m in theirs)
    # A guest forward's address is ours while the forward exists (and survives a snapshot).
    stack.handle(GuestFwdAdd(1, "10.0.2.100", 80), 0)
    stack.handle(GuestFwdAdd(2, "fec0::100", 80), 0)
    fwd4, fwd6 = virtual_mac(ip4("10.0.2.100")), bytes.fromhex("525600000100")
    assert stack.frame_for_us(fwd4) and stack.frame_for_us(fwd6)
    assert stack.frame_for_us(g6.mcast_mac("ff02::1:ff00:100"))
    restored = Stack.from_snapshot(stack.config, stack.snapshot())
    assert restored.frame_for_us(fwd4) and restored.frame_for_us(fwd6)
    # SMB's address is a guest forward the shell adds: ours from then on
    smb = make("smb=/tmp")
    smb_mac = bytes.fromhex("52550a000204")
    assert not smb.frame_for_us(smb_mac)
    smb.handle(GuestFwdAdd(3, "10.0.2.4", 445), 0)
    assert smb.frame_for_us(smb_mac)


@pytest.mark.parametrize("kind", ["syn", "udp", "ping", "arp", "ping6", "syn6"])
def test_frames_to_another_mac_are_left_alone(kind: str) -> None:
    stack = make()
    dhcp_exchange(stack)
    dhcp_exchange(stack, MAC_B, 10)
    frame = {
        "syn": syn("10.0.2.16", dst_mac=MAC_B),
        "udp": udp("10.0.2.16", dst_mac=MAC_B),
        "ping": gf.icmp_echo("10.0.2.16", dst_mac=MAC_B),
        "arp": arp_reply("10.0.2.15", gf.GUEST_MAC, "10.0.2.16", MAC_B),
        "ping6": g6.packet(g6.GUEST_IP, "fec0::b", 58, g6.icmp6(128, 0, bytes(8), g6.GUEST_IP,
                                                                 "fec0::b"), dst_mac=MAC_B),
        "syn6": g6.tcp_syn("2001:db8::1", 80),
    }[kind]
    if kind == "syn6":  # to a global address, but through another station (a second router)
        frame = MAC_C + frame[6:]
    before = dict(stack.counters)
    guest_mac = stack.guest_mac
    assert stack.handle(GuestFrame(frame), 100) == []
    assert stack.counters["drop_not_for_us"] == 1
    assert stack.counters["frames_in"] == before["frames_in"] + 1
    # nothing else moved: no learning, no flows, no drop under another reason
    moved = {k for k, v in stack.counters.items() if before.get(k) != v}
    assert moved == {"drop_not_for_us", "frames_in"}
    assert len(stack.tcp) == len(stack.udp) == len(stack.echo) == 0
    assert stack.guest_mac == guest_mac


def test_the_same_frame_to_the_gateway_is_taken() -> None:
    stack = make()
    effects = stack.handle(GuestFrame(syn("203.0.113.1", 80)), 0)
    assert [type(e) for e in host_effects(effects)] == [TcpConnect]
    assert stack.counters["drop_not_for_us"] == 0


def test_the_fast_path_leaves_other_stations_frames_alone() -> None:
    """A burst of data segments of an open flow, but sent to another MAC: gro_scan coalesces
    them and the stack still leaves them alone; to the gateway they are delivered."""
    g = Guest(bursts=True, runs=True)
    isn = g.isn[40000]
    data = [
        syn("10.0.2.2", 80, flags=ACK | PSH, seq=1001 + 100 * i, payload=bytes([65 + i]) * 100,
            dst_mac=MAC_B)
        for i in range(4)
    ]
    for i, frame in enumerate(data):  # acknowledge the server's ISN + 1
        data[i] = frame[:42] + (isn & 0xFFFFFFFF).to_bytes(4, "big") + frame[46:]
    data = [_fix_tcp_sum(f) for f in data]
    effects = g.guest(data)
    assert host_effects(effects) == [] and frames(effects) == []
    assert g.stack.counters["drop_not_for_us"] == 4
    effects = g.guest([GW_MAC + f[6:] for f in data])
    (send,) = [e for e in effects if isinstance(e, TcpSend)]
    assert send.data == b"".join(bytes([65 + i]) * 100 for i in range(4))


def _fix_tcp_sum(frame: bytes) -> bytes:
    """The frame with its TCP checksum recomputed (after the ack was patched in)."""
    eth = gf.parse(frame)
    ip = eth.data
    seg = ip.data
    seg.sum = 0
    ip.sum = 0
    return bytes(eth)


# -------------------------------------------------- a guest's address is never the host


def two_guests() -> Stack:
    stack = make()
    assert dhcp_exchange(stack) == "10.0.2.15"
    assert dhcp_exchange(stack, MAC_B, 10) == "10.0.2.16"
    return stack


def test_arp_for_a_leased_address_goes_unanswered() -> None:
    stack = two_guests()
    assert frames(stack.handle(GuestFrame(gf.arp_request("10.0.2.16")), 20)) == []
    assert stack.counters["arp_guest_address"] == 1
    # even when a guest forward names it: the guest holding it answers, not the stack
    stack.handle(GuestFwdAdd(1, "10.0.2.16", 80), 21)
    stack.handle(GuestFwdAdd(2, "10.0.2.100", 80), 21)
    assert frames(stack.handle(GuestFrame(gf.arp_request("10.0.2.16")), 22)) == []
    assert stack.counters["arp_guest_address"] == 2
    (reply,) = frames(stack.handle(GuestFrame(gf.arp_request("10.0.2.100")), 23))
    assert reply.data.spa == ip4("10.0.2.100")


def test_arp_for_an_address_a_guest_was_seen_using_goes_unanswered() -> None:
    stack = make()
    stack.handle(GuestFwdAdd(1, "10.0.2.77", 80), 0)
    (reply,) = frames(stack.handle(GuestFrame(gf.arp_request("10.0.2.77")), 1))
    assert reply.data.op == dpkt.arp.ARP_OP_REPLY  # a guest forward's: answered
    # a guest announces it holds 10.0.2.77 (a static address): from now on it is that guest's
    stack.handle(GuestFrame(gf.arp_request("10.0.2.2", sender="10.0.2.77", mac=MAC_B)), 2)
    assert frames(stack.handle(GuestFrame(gf.arp_request("10.0.2.77")), 3)) == []
    assert stack.counters["arp_guest_address"] == 1


@pytest.mark.parametrize("bursts", [False, True])
@pytest.mark.parametrize("dst", ["10.0.2.16", "10.0.2.20"])
def test_a_syn_to_a_guest_address_is_not_natted(dst: str, bursts: bool) -> None:
    """Sent to the gateway's MAC (a stale or forged neighbor entry), a SYN to a leased address
    (.16) or to one a guest was seen sending from (.20) reaches nothing: no connection to the
    host's loopback, no RST in the other guest's name."""
    stack = two_guests()
    stack.handle(GuestFrame(udp("10.0.2.2", 9, src="10.0.2.20")), 15)  # seen using .20
    frame = syn(dst)
    event = GuestFrames(run_of([frame])) if bursts else GuestFrame(frame)
    assert stack.handle(event, 20) == []
    assert stack.counters["drop_guest_address"] == 1
    assert len(stack.tcp) == 0
    assert stack.translate(ip4(dst), 8080) is None
    # an address of the network no guest holds is still an alias of the host (libslirp)
    assert stack.translate(ip4("10.0.2.99"), 8080) == ("127.0.0.1", 8080)
    effects = stack.handle(GuestFrame(syn("10.0.2.2")), 30)
    assert [type(e) for e in host_effects(effects)] == [TcpConnect]


def test_a_ping_and_a_datagram_to_a_leased_address_are_not_natted() -> None:
    stack = two_guests()
    assert stack.handle(GuestFrame(gf.icmp_echo("10.0.2.16")), 20) == []
    assert stack.handle(GuestFrame(udp("10.0.2.16", 5353)), 21) == []
    assert stack.counters["drop_guest_address"] == 2
    assert len(stack.echo) == len(stack.udp) == 0
    # to the gateway, the same ping is answered
    (reply,) = frames(stack.handle(GuestFrame(gf.icmp_echo("10.0.2.2")), 22))
    assert reply.data.data.type == 0


GUEST_B6 = "fec0::5054:ff:febb:bbbb"
GUEST_B_LL = "fe80::5054:ff:febb:bbbb"


def two_guests6() -> Stack:
    """Guest A (g6) and guest B, each seen sending from its link-local and SLAAC address."""
    stack = make()
    for src, mac in ((g6.GUEST_LL, gf.GUEST_MAC), (g6.GUEST_IP, gf.GUEST_MAC),
                     (GUEST_B_LL, MAC_B), (GUEST_B6, MAC_B)):
        frame = g6.router_solicit(src) if src.startswith("fe80") else g6.echo6("fec0::2", src=src)
        frame = frame[:6] + mac + frame[12:]
        stack.handle(GuestFrame(frame), 0)
    return stack


def test_ndp_for_a_guest_address_goes_unanswered() -> None:
    stack = two_guests6()
    stack.handle(GuestFwdAdd(1, GUEST_B6, 80), 1)
    for target in (GUEST_B6, GUEST_B_LL):
        ns = g6.neighbor_solicit(target)
        # sent to B's solicited-node group: not ours; to ours instead (forged), still unanswered
        assert stack.handle(GuestFrame(ns), 2) == []
        forged = g6.mcast_mac("ff02::1:ff00:2") + ns[6:]
        assert frames(stack.handle(GuestFrame(forged), 3)) == []
    # B's solicited-node group is also the guest forward's, so the stack reads the
    # solicitations, and ignores them: the addresses are B's
    assert stack.counters["ndp_ns_ignored"] == 4 and stack.counters["ndp_na_sent"] == 0


@pytest.mark.parametrize("kind", ["syn6", "ping6", "udp6"])
def test_traffic_to_a_guest_ipv6_address_is_not_natted(kind: str) -> None:
    stack = two_guests6()
    stack.counters["drop_guest_address"] = 0
    for dst in (GUEST_B6, GUEST_B_LL):
        frame = {
            "syn6": g6.tcp_syn(dst, 8080),
            "ping6": g6.echo6(dst),
            "udp6": g6.udp6(dst, 5353, b"x"),
        }[kind]
        assert stack.handle(GuestFrame(frame), 5) == []
    assert stack.counters["drop_guest_address"] == 2
    assert len(stack.tcp) == len(stack.udp) == len(stack.echo) == 0


# ------------------------------------------------------------------------ martian sources


IPV4_MARTIAN_SOURCES = [
    "127.0.0.1", "127.8.9.10", "0.0.0.0", "0.1.2.3", "224.0.0.5", "239.255.255.250",
    "240.0.0.1", "255.255.255.255",
]


@pytest.mark.parametrize("src", IPV4_MARTIAN_SOURCES)
def test_ipv4_martian_sources_reach_nothing(src: str) -> None:
    stack = make()
    tried = [
        syn("203.0.113.1", 80, src=src), syn("10.0.2.2", 22, src=src),
        udp("203.0.113.1", src=src), udp("10.0.2.3", 53, src=src),
        gf.icmp_echo("10.0.2.2", src=src), gf.icmp_echo("203.0.113.1", src=src),
    ]
    for frame in tried:
        assert stack.handle(GuestFrame(frame), 0) == []  # neither NATed nor answered
    # the fast path too: a burst of TCP from the martian source
    assert stack.handle(GuestFrames(run_of([syn("203.0.113.1", 80, src=src)] * 2)), 1) == []
    assert stack.counters["drop_martian_src"] == len(tried) + 2
    assert len(stack.tcp) == len(stack.udp) == len(stack.echo) == 0
    assert not stack._arp_table  # nor learned


def test_dhcp_from_zero_is_served_and_nothing_else_from_zero() -> None:
    stack = make()
    (offer,) = frames(stack.handle(GuestFrame(gf.dhcp(1)), 0))
    assert offer.data.data.dport == 68
    # UDP from 0.0.0.0 to any other port is martian
    assert stack.handle(GuestFrame(udp("10.0.2.2", 68, src="0.0.0.0")), 1) == []
    assert stack.counters["drop_martian_src"] == 1


IPV6_MARTIAN_SOURCES = ["::1", "ff02::1", "ff05::2", "::ffff:127.0.0.1", "::ffff:10.0.2.15",
                        "::10.0.2.15"]


@pytest.mark.parametrize("src", IPV6_MARTIAN_SOURCES)
def test_ipv6_martian_sources_reach_nothing(src: str) -> None:
    stack = make()
    tried = [
        g6.tcp_syn("2001:db8::1", 8080, src=src), g6.tcp_syn("fec0::2", 8080, src=src),
        g6.udp6("2001:db8::1", 9, b"x", src=src), g6.udp6("fec0::3", 53, b"x", src=src),
        g6.echo6("fec0::2", src=src), g6.echo6("2001:db8::1", src=src),
        g6.router_solicit(src),
    ]
    for frame in tried:
        assert stack.handle(GuestFrame(frame), 0) == []
    assert stack.counters["drop_martian_src"] == len(tried)
    assert len(stack.tcp) == len(stack.udp) == len(stack.echo) == 0
    assert not stack._ndp.neighbors and stack.poll_at() is None


def test_unspecified_source_only_for_dad_rs_and_mld() -> None:
    stack = make()
    for frame in (g6.echo6("fec0::2", src="::"), g6.tcp_syn("fec0::2", 80, src="::"),
                  g6.udp6("fec0::3", 53, b"x", src="::")):
        assert stack.handle(GuestFrame(frame), 0) == []  # an echo from :: is not answered
    assert stack.counters["drop_martian_src"] == 3
    # what RFC 4861/4862/3810 allow from ::
    (na,) = frames(stack.handle(GuestFrame(g6.neighbor_solicit("fec0::2", src="::")), 1))
    assert na.data.dst == g6.ip6("ff02::1")  # DAD of our address: defended
    (ra,) = frames(stack.handle(GuestFrame(g6.router_solicit("::")), 2))
    assert ra.data.dst == g6.ip6("ff02::1")
    assert stack.handle(GuestFrame(g6.mld_report("::")), 3) == []
    assert stack.counters["icmpv6_mld"] == 1 and stack.counters["drop_martian_src"] == 3


# ------------------------------------------------------------- router advertisements at boot


def test_no_unsolicited_advertisement_before_a_link_local_address() -> None:
    """What a Linux guest sends right after its link comes up: MLD reports and a DAD probe
    from ::, then (its link-local address past DAD) a router solicitation."""
    stack = make()
    boot = [g6.mld_report("::"), g6.neighbor_solicit(g6.GUEST_LL, src="::"),
            g6.mld_report("::")]
    for i, frame in enumerate(boot):
        stack.handle(GuestFrame(frame), i)
    assert stack.poll_at() is None
    assert frames(stack.handle(Tick(), 16_000_000_000)) == []
    # the solicitation is answered at once, unicast, and the timer starts
    (ra,) = frames(stack.handle(GuestFrame(g6.router_solicit()), 1_000_000_000))
    assert ra.data.dst == g6.ip6(g6.GUEST_LL) and ra.data.data.type == 134
    # the unsolicited ones follow, the first not at once (it would repeat the answer)
    assert stack.poll_at() == 1_000_000_000 + 16_000_000_000


def test_a_link_local_source_starts_the_advertisements() -> None:
    stack = make()
    stack.handle(GuestFrame(g6.mld_report()), 7)  # an MLD report from its link-local address
    assert stack.poll_at() == 7
    (ra,) = frames(stack.handle(Tick(), 7))
    assert ra.data.dst == g6.ip6("ff02::1")


def test_a_foreign_frame_never_starts_them() -> None:
    stack = make()
    frame = MAC_C + g6.router_solicit()[6:]
    assert stack.handle(GuestFrame(frame), 0) == []
    assert stack.poll_at() is None and not stack._ndp.neighbors


def test_hub_echo_request_to_another_guest_is_answered_once() -> None:
    """The issue's first symptom: guest A pings guest B through the hub; the stack sees the
    request (to B's MAC) and must not answer it, nor open an echo flow to the host."""
    stack = two_guests()
    frame = gf.icmp_echo("10.0.2.16", dst_mac=MAC_B)
    assert stack.handle(GuestFrame(frame), 20) == []
    assert not [e for e in stack.handle(Tick(), 21) if isinstance(e, IcmpEchoOpen | UdpOpen)]


@pytest.mark.parametrize("runs", [False, True])
def test_the_summary_shows_other_stations_traffic_only_as_a_count(runs: bool) -> None:
    s = Session(runs=runs)
    s.lease()
    s.guest(syn("10.0.2.16", 8080, dst_mac=MAC_B))  # guest to guest, seen through the hub
    s.guest(gf.icmp_echo("10.0.2.16", dst_mac=MAC_B))
    s.guest(g6.tcp_syn("fec0::b", 8080, src="::1"))  # a martian source
    summary = summarize_journal(s.journal())
    assert summary.replay == "identical"
    # the guest-to-guest frames are no flow; the SYN from ::1 is one the guest sent and
    # nothing answered, but ::1 is none of the guest's addresses
    assert [f.guest for f in summary.flows] == ["[::1]:40001"]
    assert summary.drops["not_for_us"] == 2 and summary.drops["martian_src"] == 1
    assert summary.ipv6_addresses == {}
    text = format_summary(summary)
    assert "not_for_us" in text and "10.0.2.16" not in text

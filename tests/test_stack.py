"""The core stack end to end on frames: ARP, ICMP echo, DHCP, bad input."""

from __future__ import annotations

from collections.abc import Sequence

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from slirptrio.config import parse_user_options
from slirptrio.core.events import GuestFrame, GuestLink, SendFrame, Tick
from slirptrio.core.prng import Prng
from slirptrio.core.stack import Stack
from tests import guestframes as gf

GW_MAC = bytes.fromhex("52550a000202")


def make(options: str = "", seed: int = 1) -> Stack:
    return Stack(parse_user_options(options), seed)


def frames(effects: Sequence[object]) -> list[bytes]:
    out = [e.data for e in effects if isinstance(e, SendFrame)]
    assert all(len(f) >= 60 for f in out), "frames must be padded to 60 bytes"
    return out


def test_arp_answers_gateway_and_dns_with_derived_macs() -> None:
    stack = make()
    for target, mac in (("10.0.2.2", "52550a000202"), ("10.0.2.3", "52550a000203")):
        (reply,) = frames(stack.handle(GuestFrame(gf.arp_request(target)), 0))
        eth = gf.parse(reply)
        assert eth.dst == gf.GUEST_MAC
        arp = eth.data
        assert arp.op == dpkt.arp.ARP_OP_REPLY
        assert arp.sha == bytes.fromhex(mac) and arp.spa == gf.ip4(target)
        assert arp.tha == gf.GUEST_MAC and arp.tpa == gf.ip4("10.0.2.15")


def test_arp_ignores_other_addresses_so_guest_dad_succeeds() -> None:
    stack = make()
    assert frames(stack.handle(GuestFrame(gf.arp_request("10.0.2.15", sender="0.0.0.0")), 0)) == []
    assert frames(stack.handle(GuestFrame(gf.arp_request("10.0.2.77")), 0)) == []
    assert stack.counters["arp_ignored"] == 2


def test_ping_virtual_addresses() -> None:
    stack = make()
    for dst in ("10.0.2.2", "10.0.2.3"):
        (reply,) = frames(stack.handle(GuestFrame(gf.icmp_echo(dst, ident=9, seq=4)), 0))
        ip = gf.parse(reply).data
        assert ip.src == gf.ip4(dst) and ip.dst == gf.ip4("10.0.2.15")
        assert ip.p == dpkt.ip.IP_PROTO_ICMP
        icmp = ip.data
        assert icmp.type == 0 and icmp.data.id == 9 and icmp.data.seq == 4
        assert icmp.data.data == b"ping!" * 8
        # dpkt recomputes: zero the field and compare with what we sent.
        sent = icmp.sum
        icmp.sum = 0
        assert bytes(icmp) and icmp.sum == sent


def test_ping_elsewhere_is_not_answered_yet() -> None:
    stack = make()
    assert frames(stack.handle(GuestFrame(gf.icmp_echo("203.0.113.9")), 0)) == []


def dhcp_exchange(stack: Stack, mac: bytes = gf.GUEST_MAC, t: int = 0) -> str:
    (offer,) = frames(stack.handle(GuestFrame(gf.dhcp(1, mac=mac)), t))
    offered = gf.dhcp_of(offer)
    opts = dict(offered.opts)
    assert opts[53] == bytes([2])
    yiaddr = offered.yiaddr.to_bytes(4, "big")
    # the REQUEST is broadcast with ciaddr 0 while selecting
    req = gf.dhcp(3, mac=mac, requested=".".join(map(str, yiaddr)), server="10.0.2.2")
    (ack,) = frames(stack.handle(GuestFrame(req), t + 1000))
    acked = gf.dhcp_of(ack)
    assert dict(acked.opts)[53] == bytes([5])
    assert acked.yiaddr == offered.yiaddr
    return ".".join(map(str, yiaddr))


def test_dhcp_full_exchange_from_frames() -> None:
    stack = make("hostname=vm1")
    assert dhcp_exchange(stack) == "10.0.2.15"
    (offer,) = frames(stack.handle(GuestFrame(gf.dhcp(1)), 5))
    eth = gf.parse(offer)
    assert eth.src == GW_MAC
    ip = eth.data
    assert ip.src == gf.ip4("10.0.2.2")
    assert ip.data.sport == 67 and ip.data.dport == 68
    opts = dict(gf.dhcp_of(offer).opts)
    assert opts[1] == gf.ip4("255.255.255.0")
    assert opts[3] == gf.ip4("10.0.2.2") and opts[6] == gf.ip4("10.0.2.3")
    assert opts[12] == b"vm1"


def test_dhcp_second_client_gets_next_address() -> None:
    stack = make()
    assert dhcp_exchange(stack) == "10.0.2.15"
    assert dhcp_exchange(stack, mac=bytes.fromhex("525400abcdef")) == "10.0.2.16"


def test_custom_network() -> None:
    stack = make("net=192.168.76.0/24,dhcpstart=192.168.76.9")
    (offer,) = frames(stack.handle(GuestFrame(gf.dhcp(1)), 0))
    assert gf.dhcp_of(offer).yiaddr == int.from_bytes(gf.ip4("192.168.76.9"), "big")


def test_malformed_frames_are_counted_and_dropped() -> None:
    stack = make()
    good = gf.icmp_echo("10.0.2.2")
    bad_checksum = bytearray(good)
    bad_checksum[14 + 10] ^= 0xFF  # IPv4 header checksum
    lying_length = bytearray(good)
    lying_length[14 + 2 : 14 + 4] = (1400).to_bytes(2, "big")
    cases = [b"", b"\x00" * 10, bytes(bad_checksum), bytes(lying_length),
             good[:14] + b"\x45", gf.BROADCAST + gf.GUEST_MAC + b"\x12\x34" + b"x" * 50]
    for frame in cases:
        assert stack.handle(GuestFrame(frame), 0) == []
    drops = {k: v for k, v in stack.counters.items() if k.startswith("drop_")}
    assert sum(drops.values()) == len(cases), drops
    assert stack.counters["drop_unknown_ethertype"] == 1
    assert stack.counters["drop_ipv4_bad_checksum"] == 1


def test_padded_frames_trust_ip_length() -> None:
    stack = make()
    frame = gf.icmp_echo("10.0.2.2", payload=b"") + b"\x00" * 30
    assert len(frames(stack.handle(GuestFrame(frame), 0))) == 1


def test_other_events() -> None:
    stack = make()
    assert stack.handle(Tick(), 5) == []
    assert stack.handle(GuestLink(True), 5) == []
    assert stack.poll_at() is None


def test_ip_idents_come_from_the_seed_and_advance_by_one() -> None:
    # What the seed decides, written down independently of the stack: the first IPv4 ident
    # is one past the PRNG's first draw, and each datagram the stack sends takes the next.
    # Two stacks with the seed send the same bytes; another seed changes the idents only.
    outs: dict[int, list[list[bytes]]] = {}
    for seed in (42, 42, 43):
        stack = make(seed=seed)
        out = []
        for frame in (gf.arp_request("10.0.2.2"), gf.icmp_echo("10.0.2.3", ident=3, seq=9),
                      gf.dhcp(1), gf.icmp_echo("10.0.2.2")):
            (reply,) = frames(stack.handle(GuestFrame(frame), 1))
            out.append(reply)
        arp, echo, offer, echo2 = (gf.parse(f) for f in out)
        assert arp.type == dpkt.ethernet.ETH_TYPE_ARP and arp.data.op == dpkt.arp.ARP_OP_REPLY
        assert echo.data.data.type == 0 and (echo.data.data.data.id, echo.data.data.data.seq) == (
            3, 9)
        assert gf.dhcp_of(out[2]).opts[0] == (dpkt.dhcp.DHCP_OPT_MSGTYPE, bytes([2]))  # OFFER
        first = (Prng(seed).next_u32() + 1) & 0xFFFF
        assert [echo.data.id, offer.data.id, echo2.data.id] == [
            first, (first + 1) & 0xFFFF, (first + 2) & 0xFFFF]
        outs.setdefault(seed, []).append(out)
    assert outs[42][0] == outs[42][1]
    assert outs[43][0][0] == outs[42][0][0]  # ARP carries no ident: same bytes
    assert gf.parse(outs[43][0][1]).data.id != gf.parse(outs[42][0][1]).data.id


def frames_are_well_formed(out: Sequence[bytes]) -> None:
    """Every frame the stack sent parses with dpkt and has correct checksums (recomputed by
    dpkt, not taken from the stack) and a source MAC of the stack's own."""
    for frame in out:
        eth = gf.parse(frame)
        assert eth.src[:2] == b"\x52\x55", eth.src.hex()  # the stack's virtual MACs
        if eth.type == dpkt.ethernet.ETH_TYPE_IP:
            ip = eth.data
            sent_ip, sent_l4 = ip.sum, getattr(ip.data, "sum", None)
            ip.sum = 0
            if sent_l4 is not None:
                ip.data.sum = 0
            again = dpkt.ip.IP(bytes(ip))
            assert again.sum == sent_ip
            if sent_l4 is not None:
                assert again.data.sum == sent_l4


def still_answers(stack: Stack) -> None:
    """The stack still answers a ping of the gateway after whatever it was fed."""
    (reply,) = frames(stack.handle(GuestFrame(gf.icmp_echo("10.0.2.2", ident=77, seq=5)), 1))
    icmp = gf.parse(reply).data.data
    assert icmp.type == 0 and (icmp.data.id, icmp.data.seq) == (77, 5)


def outcome_is_accounted(stack: Stack, out: Sequence[bytes]) -> None:
    """One frame in; it was either dropped with a named reason or handled (a reply, a
    counter of the protocol that took it), never silently lost."""
    assert stack.counters["frames_in"] == 1
    drops = sum(v for k, v in stack.counters.items() if k.startswith("drop_"))
    handled = {k for k, v in stack.counters.items() if v and k != "frames_in"
               and not k.startswith("drop_")}
    assert drops + len(handled) + len(out) >= 1, dict(stack.counters)
    assert drops <= 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_dropped_and_counted(data: bytes) -> None:
    stack = make()
    out = frames(stack.handle(GuestFrame(data), 0))
    outcome_is_accounted(stack, out)
    frames_are_well_formed(out)
    if len(data) < 14:
        assert stack.counters["drop_eth_short"] == 1 and out == []
    still_answers(stack)


_SEEDS = [gf.arp_request("10.0.2.2"), gf.icmp_echo("10.0.2.2"), gf.dhcp(1), gf.dhcp(3)]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_SEEDS), st.data())
def test_truncated_and_mutated_frames_are_dropped_or_answered(
    frame: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(frame)))
    mutated = bytearray(frame[:cut])
    for _ in range(data.draw(st.integers(0, 4))):
        if mutated:
            i = data.draw(st.integers(0, len(mutated) - 1))
            mutated[i] = data.draw(st.integers(0, 255))
    stack = make()
    out = frames(stack.handle(GuestFrame(bytes(mutated)), 0))
    outcome_is_accounted(stack, out)
    frames_are_well_formed(out)
    if bytes(mutated) == frame:  # untouched: answered as the seed frame is
        assert out, "a valid frame got no answer"
    still_answers(stack)


def test_the_forwardable_first_bytes_agree_with_classify_ipv4() -> None:
    """The GRO path's table of first bytes says an address may be forwarded only where
    classify_ipv4 says so for every address with that first byte."""
    import random

    from slirptrio.core import stack as stack_mod
    from slirptrio.core.martian import classify_ipv4

    rng = random.Random(5)
    for a in range(256):
        tails = [(0, 0, 0), (255, 255, 255)] + [
            (rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(64)
        ]
        says = [not classify_ipv4(bytes((a, *t))) for t in tails]
        if stack_mod._FORWARDABLE4[a]:
            assert all(says), a
        else:
            assert not all(says), a

"""Flows of a departed guest are reset and freed; DHCP and ARP bookkeeping stays bounded.

On the real Stack, with frames as a guest sends them.
"""

from __future__ import annotations

from collections.abc import Sequence

from slirptrio.config import parse_user_options
from slirptrio.core.dhcp import MAX_REMEMBERED_MACS
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    GuestFrame,
    GuestLink,
    IcmpEchoClose,
    IcmpEchoOpen,
    TcpClose,
    TcpConnect,
    TcpConnected,
    TcpEof,
    TcpSent,
    Tick,
    UdpClose,
    UdpOpen,
)
from slirptrio.core.stack import ARP_TABLE_MAX, GUEST_GONE_TIMEOUT_NS, Stack, virtual_mac
from slirptrio.wire.tcp import ACK, FIN
from tests import guestframes as gf
from tests.test_martians import make, tcp_frame, udp_frame
from tests.test_stack import dhcp_exchange
from tests.test_tcp_core import GISN, GPORT, GUEST, Harness

SEC = 1_000_000_000
MAC_B = bytes.fromhex("525400bbbbbb")


def open_flows(stack: Stack, now: int) -> dict[type[Effect], int]:
    """A TCP, a UDP and an ICMP echo flow from 10.0.2.15; their flow ids by effect type."""
    out: dict[type[Effect], int] = {}
    for frame in (tcp_frame("203.0.113.1"), udp_frame("203.0.113.1"),
                  gf.icmp_echo("203.0.113.1")):
        for e in stack.handle(GuestFrame(frame), now):
            if isinstance(e, TcpConnect | UdpOpen | IcmpEchoOpen):
                out[type(e)] = e.flow
    stack.handle(TcpConnected(out[TcpConnect]), now)
    return out


def closes(effects: Sequence[Effect]) -> set[Effect]:
    return {e for e in effects if isinstance(e, TcpClose | UdpClose | IcmpEchoClose)}


def expected_closes(flows: dict[type[Effect], int]) -> set[Effect]:
    return {TcpClose(flows[TcpConnect], True), UdpClose(flows[UdpOpen]),
            IcmpEchoClose(flows[IcmpEchoOpen])}


# --------------------------------------------------------------------- another MAC, same IP


def test_address_leased_to_a_new_mac_resets_the_old_guests_flows() -> None:
    stack = make()
    assert dhcp_exchange(stack) == "10.0.2.15"
    flows = open_flows(stack, 10)
    # The old guest vanishes; its lease expires; another machine is given the address.
    later = 2 * 86400 * SEC
    effects = stack.handle(
        GuestFrame(gf.dhcp(3, mac=MAC_B, requested="10.0.2.15", server="10.0.2.2")), later
    )
    assert closes(effects) == expected_closes(flows)
    assert stack.counters["dhcp_address_moved"] == 1
    assert len(stack.tcp) == len(stack.udp) == len(stack.echo) == 0


def test_address_released_then_taken_by_another_mac() -> None:
    stack = make()
    assert dhcp_exchange(stack) == "10.0.2.15"
    flows = open_flows(stack, 10)
    stack.handle(GuestFrame(gf.dhcp(7, ciaddr="10.0.2.15", server="10.0.2.2")), 20)
    # The lease is gone, but the stack saw the old MAC use the address: still reset.
    effects = stack.handle(
        GuestFrame(gf.dhcp(3, mac=MAC_B, requested="10.0.2.15", server="10.0.2.2")), 30
    )
    assert closes(effects) == expected_closes(flows)


def test_same_mac_asking_again_keeps_its_flows() -> None:
    stack = make()
    assert dhcp_exchange(stack) == "10.0.2.15"
    open_flows(stack, 10)
    # A reboot or a link flap of the same machine (INIT-REBOOT): same MAC, same address.
    effects = stack.handle(
        GuestFrame(gf.dhcp(3, requested="10.0.2.15", server="10.0.2.2")), 20
    )
    assert closes(effects) == set()
    assert len(stack.tcp) == len(stack.udp) == len(stack.echo) == 1


def test_other_guests_flows_stay() -> None:
    stack = make()
    assert dhcp_exchange(stack) == "10.0.2.15"
    open_flows(stack, 10)
    # Another MAC gets another address: nothing of 10.0.2.15 is touched.
    assert dhcp_exchange(stack, mac=MAC_B, t=20) == "10.0.2.16"
    assert len(stack.tcp) == len(stack.udp) == len(stack.echo) == 1


# ---------------------------------------------------------------------- guest gone for long


def test_guest_gone_longer_than_the_timeout_resets_everything() -> None:
    stack = make()
    flows = open_flows(stack, 0)
    down = 0  # (the echo flow's own idle timeout is as long: both end at the same tick)
    assert stack.handle(GuestLink(False), down) == []
    due = stack.poll_at()
    assert due is not None and due <= down + GUEST_GONE_TIMEOUT_NS
    assert closes(stack.handle(Tick(), down + GUEST_GONE_TIMEOUT_NS - 1)) == set()
    effects = stack.handle(Tick(), down + GUEST_GONE_TIMEOUT_NS)
    assert closes(effects) == expected_closes(flows)
    assert len(stack.tcp) == len(stack.udp) == len(stack.echo) == 0
    assert stack.counters["tcp_guest_departed"] == 1
    assert stack.poll_at() is None  # nothing left to wait for


def test_guest_back_in_time_keeps_its_flows() -> None:
    stack = make()
    open_flows(stack, 0)
    stack.handle(GuestLink(False), SEC)
    stack.handle(GuestLink(True), 30 * SEC)
    effects = stack.handle(Tick(), 2 * GUEST_GONE_TIMEOUT_NS)
    assert not any(isinstance(e, TcpClose) for e in effects)  # (UDP, ICMP idle out anyway)
    assert len(stack.tcp) == 1 and stack.counters["tcp_guest_departed"] == 0


def test_frames_mean_the_guest_is_there() -> None:
    stack = make()
    open_flows(stack, 0)
    stack.handle(GuestLink(False), SEC)
    stack.handle(GuestFrame(gf.arp_request("10.0.2.2")), 2 * SEC)  # e.g. a dgram transport
    effects = stack.handle(Tick(), 2 * GUEST_GONE_TIMEOUT_NS)
    assert not any(isinstance(e, TcpClose) for e in effects)
    assert len(stack.tcp) == 1 and stack.counters["tcp_guest_departed"] == 0


def test_draining_flows_finish_their_delivery() -> None:
    h = Harness()
    flow, isn = h.open()
    other, _ = h.open(sport=GPORT + 1)
    h.send(ACK | FIN, GISN + 1, isn + 1, b"last words")
    h.host(TcpEof(flow))
    h.recv()
    h.send(ACK, GISN + 12, isn + 2)
    assert h.nat.flows()[0].state == "DRAINING"
    h.take()
    assert h.nat.forget_guest(GUEST) == 1  # the other one
    assert h.take() == [TcpClose(other, True)]
    h.host(TcpSent(flow, 10))  # the host took the guest's last bytes
    assert h.take() == [TcpClose(flow, False)]
    assert len(h.nat) == 0


# ---------------------------------------------------------------------------- bookkeeping


def test_dhcp_remembers_a_bounded_number_of_macs() -> None:
    stack = make()
    for i in range(3 * MAX_REMEMBERED_MACS):
        mac = bytes.fromhex("5254ff") + i.to_bytes(3, "big")
        ip = dhcp_exchange(stack, mac=mac, t=i * 10)
        stack.handle(GuestFrame(gf.dhcp(7, mac=mac, ciaddr=ip, server="10.0.2.2")), i * 10 + 5)
    assert len(stack._dhcp._last) == MAX_REMEMBERED_MACS
    assert len(stack._dhcp._leases) <= 16


def test_arp_table_is_bounded() -> None:
    stack = Stack(parse_user_options("net=10.0.0.0/8"), 1)
    stack.handle(DnsUpstreams(""), 0)
    gateway = virtual_mac(gf.ip4("10.0.0.2"))
    for i in range(3 * ARP_TABLE_MAX):
        src = f"10.1.{i >> 8}.{i & 0xFF}"
        stack.handle(GuestFrame(gf.icmp_echo("10.0.0.2", src=src, dst_mac=gateway)), i)
    assert len(stack._arp_table) == ARP_TABLE_MAX
    assert stack.counters["arp_table_evicted"] == 2 * ARP_TABLE_MAX

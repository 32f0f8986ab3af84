"""Several guests as ports of one core (issue 22): the switch in front of the stack.

Guest frames enter per port (port 0: ``GuestFrames``; others: ``PortFrames``), frames leave
naming their port (``SendFrames`` for port 0, ``PortSendFrames`` for the others). Checked here:
learning, flooding, forwarding, the same-port drop, ``isolate=on``, the stack as every port's
router, a departure resetting that port's flows only, a reconnecting guest's lease, snapshots
with several ports and a replay of a multi-port session.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import dpkt

from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    Event,
    FrameRuns,
    GuestFrames,
    GuestLink,
    PortFrames,
    PortLink,
    PortSendFrames,
    SendFrames,
    TcpConnect,
    TcpConnected,
    TcpReset,
    Tick,
    decode_effect,
    decode_event,
    encode,
)
from slirptrio.core.stack import Stack
from slirptrio.wire.framing import split_run
from tests import guestframes as gf
from tests.snapshots import plain_roundtrip, restored
from tests.test_stations import GW_MAC, syn

MAC = [bytes.fromhex(f"5254000000{i:02x}") for i in range(4)]
BCAST = b"\xff" * 6


def make(options: str = "") -> Stack:
    stack = Stack(parse_user_options(options), 7)
    stack.handle(DnsUpstreams("203.0.113.53:53"), 0)
    stack.handle(FrameRuns(True), 0)  # as a live session starts
    return stack


def run_of(items: Sequence[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in items)


def frames_in(port: int, *items: bytes) -> Event:
    return GuestFrames(run_of(items)) if port == 0 else PortFrames(port, run_of(items))


def by_port(effects: Sequence[Effect]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for e in effects:
        if isinstance(e, SendFrames):
            out.setdefault(0, []).extend(bytes(f) for f in split_run(e.data))
        elif isinstance(e, PortSendFrames):
            out.setdefault(e.port, []).extend(bytes(f) for f in split_run(e.data))
    return out


def raw(dst: bytes, src: bytes, body: bytes = b"x" * 46, ethertype: int = 0x88B5) -> bytes:
    """A frame of a local experimental ethertype: the stack ignores it, the switch carries it."""
    return dst + src + ethertype.to_bytes(2, "big") + body


def three_ports(options: str = "") -> Stack:
    stack = make(options)
    stack.handle(GuestLink(True), 1)
    stack.handle(PortLink(1, True, "b"), 2)
    stack.handle(PortLink(2, True, "c"), 3)
    return stack


def src(frame: bytes, mac: bytes) -> bytes:
    """``frame`` sent from ``mac`` (the helpers send from one guest MAC)."""
    return frame[:6] + mac + frame[12:]


def dhcp(stack: Stack, port: int, mac: bytes, t: int) -> str:
    offers = by_port(stack.handle(frames_in(port, src(gf.dhcp(1, mac=mac), mac)), t))
    offer = next(f for f in offers[port] if gf.parse(f).dst in (mac, BCAST))
    yiaddr = socket.inet_ntoa(gf.dhcp_of(offer).yiaddr.to_bytes(4, "big"))
    req = src(gf.dhcp(3, mac=mac, requested=yiaddr, server="10.0.2.2"), mac)
    acks = by_port(stack.handle(frames_in(port, req), t + 1))
    assert any(dict(gf.dhcp_of(f).opts)[53] == bytes([5]) for f in acks[port])
    return yiaddr


def test_one_guest_switches_nothing() -> None:
    """With port 0 alone the switch is off: frames for other MACs are left, as before."""
    stack = make()
    stack.handle(GuestLink(True), 1)
    assert stack.handle(frames_in(0, raw(MAC[1], MAC[0])), 2) == []
    assert stack.counters["drop_not_for_us"] == 1
    assert not stack._switch.active


def test_learning_flooding_and_forwarding() -> None:
    stack = three_ports()
    # unknown unicast: flooded to every other port, never back
    f1 = raw(MAC[1], MAC[0])
    assert by_port(stack.handle(frames_in(0, f1), 10)) == {1: [f1], 2: [f1]}
    # broadcast from port 1: to the others (the stack reads it too, if it is for it)
    f2 = raw(BCAST, MAC[1])
    assert by_port(stack.handle(frames_in(1, f2), 11)) == {0: [f2], 2: [f2]}
    # now MAC[0] (port 0) and MAC[1] (port 1) are learned: unicast goes to one port
    f3 = raw(MAC[0], MAC[1])
    assert by_port(stack.handle(frames_in(1, f3), 12)) == {0: [f3]}
    f4 = raw(MAC[1], MAC[2])
    assert by_port(stack.handle(frames_in(2, f4), 13)) == {1: [f4]}
    assert stack.counters["switch_forwarded"] == 2
    assert stack.counters["switch_flooded"] == 2


def test_a_frame_for_its_own_port_is_dropped() -> None:
    """A hub behind port 1 already delivered it: the switch does not send it back."""
    stack = three_ports()
    stack.handle(frames_in(1, raw(BCAST, MAC[1]), raw(BCAST, MAC[3])), 10)
    assert stack.handle(frames_in(1, raw(MAC[3], MAC[1])), 11) == []
    assert stack.counters["switch_same_port"] == 1
    assert stack.ports()[1]["drops"] == 1


def test_isolate_stops_guest_to_guest_but_not_the_router() -> None:
    stack = three_ports("isolate=on")
    stack.handle(frames_in(1, raw(BCAST, MAC[1])), 10)
    assert stack.handle(frames_in(0, raw(MAC[1], MAC[0])), 11) == []
    assert stack.handle(frames_in(0, raw(BCAST, MAC[0])), 12) == []
    assert stack.counters["switch_isolated"] == 3
    # every guest still gets its lease and reaches the host
    assert dhcp(stack, 1, MAC[1], 20) == "10.0.2.15"
    assert dhcp(stack, 2, MAC[2], 30) == "10.0.2.16"
    eff = stack.handle(frames_in(2, syn("10.0.2.2", src="10.0.2.16", src_mac=MAC[2])), 40)
    assert [type(e) for e in eff] == [TcpConnect]


def test_the_stack_serves_every_port_and_answers_to_the_right_one() -> None:
    stack = three_ports()
    leases = [dhcp(stack, p, MAC[p], 10 * (p + 1)) for p in (0, 1, 2)]
    assert leases == ["10.0.2.15", "10.0.2.16", "10.0.2.17"]
    # a ping to the gateway from port 2 is answered on port 2 only
    echo = src(gf.icmp_echo("10.0.2.2", src="10.0.2.17"), MAC[2])
    out = by_port(stack.handle(frames_in(2, echo), 100))
    assert list(out) == [2]
    assert gf.parse(out[2][0]).dst == MAC[2]
    info = {p["port"]: p for p in stack.ports()}
    assert info[1]["addresses"] == ["10.0.2.16"] and info[1]["peer"] == "b"
    assert info[2]["macs"] == [MAC[2].hex(":")]


def test_guest_to_guest_ping_is_forwarded_not_answered() -> None:
    stack = three_ports()
    dhcp(stack, 0, MAC[0], 10)
    dhcp(stack, 1, MAC[1], 20)
    echo = src(gf.icmp_echo("10.0.2.16", dst_mac=MAC[1]), MAC[0])
    out = stack.handle(frames_in(0, echo), 30)
    assert by_port(out) == {1: [echo]}  # as it is: no NAT between guests
    assert stack.counters["icmp_echo_replies"] == 0


def test_a_departed_port_takes_its_flows_only() -> None:
    stack = three_ports()
    dhcp(stack, 1, MAC[1], 10)
    dhcp(stack, 2, MAC[2], 20)
    flows = []
    for port, ip in ((1, "10.0.2.15"), (2, "10.0.2.16")):
        eff = stack.handle(frames_in(port, syn("10.0.2.2", src=ip, src_mac=MAC[port])), 30)
        (connect,) = [e for e in eff if isinstance(e, TcpConnect)]
        stack.handle(TcpConnected(connect.flow), 31)
        flows.append(connect.flow)
    assert len(stack.tcp) == 2
    stack.handle(PortLink(1, False, "b"), 40)
    assert len(stack.tcp) == 1 and stack.tcp.owns(flows[1])
    assert MAC[1] not in stack._switch.macs
    assert [p["port"] for p in stack.ports()] == [0, 2]
    # frames to the departed MAC are unknown unicast now: flooded to the ports left
    f = raw(MAC[1], MAC[2])
    assert by_port(stack.handle(frames_in(2, f), 50)) == {0: [f]}


def test_a_reconnecting_guest_gets_its_address_back() -> None:
    stack = three_ports()
    assert dhcp(stack, 1, MAC[1], 10) == "10.0.2.15"
    assert dhcp(stack, 2, MAC[2], 20) == "10.0.2.16"
    stack.handle(PortLink(1, False, "b"), 30)
    stack.handle(PortLink(3, True, "b again"), 40)  # back on another port
    assert dhcp(stack, 3, MAC[1], 50) == "10.0.2.15"


def test_port_zero_leaving_keeps_the_others_flows() -> None:
    """With the switch on, port 0's departure is a port's: no minute of grace that would end
    in resetting every guest's flows."""
    stack = three_ports()
    dhcp(stack, 0, MAC[0], 10)
    dhcp(stack, 1, MAC[1], 20)
    eff = stack.handle(frames_in(1, syn("10.0.2.2", src="10.0.2.16", src_mac=MAC[1])), 30)
    (connect,) = [e for e in eff if isinstance(e, TcpConnect)]
    stack.handle(TcpConnected(connect.flow), 31)
    stack.handle(GuestLink(False), 40)
    assert stack._link_down_at is None  # no minute of grace running
    stack.handle(Tick(), 40 + 61 * 10**9)
    assert stack.tcp.owns(connect.flow)
    assert MAC[0] not in stack._switch.macs


def test_a_larger_dhcp_pool() -> None:
    stack = make("dhcp-clients=40")
    stack.handle(GuestLink(True), 1)
    stack.handle(PortLink(1, True, "b"), 1)
    got = [dhcp(stack, 1, bytes.fromhex(f"5254000100{i:02x}"), 10 + 10 * i) for i in range(20)]
    assert got[-1] == "10.0.2.34" and len(set(got)) == 20
    small = make()
    small.handle(PortLink(1, True, "b"), 1)
    for i in range(16):
        dhcp(small, 1, bytes.fromhex(f"5254000100{i:02x}"), 10 + 10 * i)
    small.handle(PortFrames(1, run_of([gf.dhcp(1, mac=MAC[3])])), 1000)
    assert small._dhcp.counters["dhcp_pool_exhausted"] == 1


def _session() -> list[tuple[int, Event]]:
    events: list[tuple[int, Event]] = [
        (1, GuestLink(True)), (2, PortLink(1, True, "b")), (3, PortLink(2, True, "c")),
    ]
    t = 10
    for p in (0, 1, 2):
        events.append((t, frames_in(p, src(gf.dhcp(1, mac=MAC[p]), MAC[p]))))
        events.append((t + 1, frames_in(p, src(gf.dhcp(
            3, mac=MAC[p], requested=f"10.0.2.{15 + p}", server="10.0.2.2"), MAC[p]))))
        t += 10
    events += [
        (50, frames_in(0, src(gf.icmp_echo("10.0.2.16", dst_mac=MAC[1]), MAC[0]))),
        (51, frames_in(1, syn("10.0.2.2", src="10.0.2.16", src_mac=MAC[1]))),
        (52, frames_in(2, raw(BCAST, MAC[2]))),
        (53, PortLink(2, False, "c")),
        (54, frames_in(1, raw(MAC[2], MAC[1]))),
    ]
    return events


def test_snapshot_round_trip_with_several_ports() -> None:
    events = _session()
    stack = make()
    for t, ev in events[:-2]:
        stack.handle(ev, t)
    copy = restored(stack)
    assert copy._switch.snapshot_state() == stack._switch.snapshot_state()
    assert len(copy._switch.ports) == 3 and copy._switch.active
    for t, ev in events[-2:]:
        assert copy.handle(ev, t) == stack.handle(ev, t)
    assert copy.snapshot_state() == stack.snapshot_state()


def test_a_multi_port_session_replays_identical() -> None:
    """Through the journal encoding: the same events give the same effects, each naming its
    port."""
    first = make()
    recorded = [(t, encode(ev), [encode(e) for e in first.handle(ev, t)]) for t, ev in _session()]
    again = make()
    for t, raw_ev, raw_effects in plain_roundtrip(recorded):
        got = again.handle(decode_event(raw_ev), t)
        assert got == [decode_effect(e) for e in raw_effects]
    assert any(r[0] == PortSendFrames.TAG for _t, _e, effs in recorded for r in effs)


def test_the_stack_resets_nothing_on_a_port_it_never_heard_from() -> None:
    stack = three_ports()
    assert stack.handle(PortLink(2, False, "c"), 10) == []
    assert stack.handle(TcpReset(99, 104), 11) == []


def test_dhcp_reply_bytes_are_valid_frames() -> None:
    stack = three_ports()
    out = by_port(stack.handle(frames_in(1, src(gf.dhcp(1, mac=MAC[1]), MAC[1])), 10))
    for frames in out.values():
        for f in frames:
            assert isinstance(gf.parse(f).data, dpkt.ip.IP)
    assert gf.parse(out[1][0]).src == GW_MAC


def test_ctl_info_shows_the_ports_of_several_guests() -> None:
    from slirptrio.cli.ctl import format_answer

    stack = three_ports()
    dhcp(stack, 1, MAC[1], 10)
    ports: list[dict[str, object]] = list(stack.ports())
    for p in ports:
        p["queue_drops"] = 2 if p["port"] == 1 else 0
    text = format_answer("info", {"flows": [], "forwards": [], "ports": ports})
    (row,) = [line for line in text.splitlines() if line.startswith("1 ")]
    assert "b" in row and MAC[1].hex(":") in row and "10.0.2.15" in row
    assert row.split()[-1] == "2"  # the switch's drops and the queue's
    one = format_answer("info", {"flows": [], "forwards": [], "ports": ports[:1]})
    assert "Port" not in one  # one guest: no port table


def test_a_flooding_guest_fills_the_others_only_so_far() -> None:
    """Past FLOOD_PER_WINDOW floods in a window a port's floods are dropped (its broadcasts
    to the stack too); its unicast to a known guest still goes, and the budget comes back."""
    from slirptrio.core.switch import FLOOD_PER_WINDOW, FLOOD_WINDOW_NS

    stack = three_ports()
    stack.handle(frames_in(2, raw(BCAST, MAC[2])), 5)
    storm = [raw(BCAST, MAC[1], bytes([i % 256]) * 46) for i in range(FLOOD_PER_WINDOW + 200)]
    arp = src(gf.arp_request("10.0.2.2", sender="10.0.2.16", mac=MAC[1]), MAC[1])
    uni = raw(MAC[2], MAC[1])
    out = by_port(stack.handle(frames_in(1, *storm, arp, uni), 10))
    assert len(out[0]) == FLOOD_PER_WINDOW  # the floods that fit
    assert len(out[2]) == FLOOD_PER_WINDOW + 1  # and the unicast to port 2
    assert out[2][-1] == uni
    assert 1 not in out  # its ARP broadcast past the budget reached nobody, not even the stack
    assert stack.counters["switch_flood_limited"] == 201  # the storm's rest and the ARP
    (reply,) = by_port(stack.handle(frames_in(1, arp), 10 + FLOOD_WINDOW_NS))[1]
    assert gf.parse(reply).src == GW_MAC  # in the next window it is answered
    later = by_port(stack.handle(frames_in(1, storm[0]), 20 + FLOOD_WINDOW_NS))
    assert later == {0: [storm[0]], 2: [storm[0]]}


def test_every_attribute_of_a_switched_stack_is_covered_by_its_snapshot() -> None:
    """The snapshot guard (tests/test_snapshot_guard.py) over a stack with several ports."""
    from tests.snapshots import core_objects
    from tests.test_snapshot_guard import uncovered

    stack = make()
    for t, ev in _session():
        stack.handle(ev, t)
    names = {type(obj).__name__ for _path, obj in core_objects(stack)}
    assert {"Switch", "PortInfo"} <= names
    assert uncovered(stack) == []
    stack._switch.vlan = {}  # type: ignore[attr-defined]
    assert any("(Switch).vlan is not in its snapshot" in p for p in uncovered(stack))


def test_fault_rules_between_guests() -> None:
    """A rule's remote may be another guest: frames from port 0 to the guest on port 1 are
    delayed (released through the switch, to port 1) or, under a partition, dropped."""
    from slirptrio.core.events import FaultAdd, FaultRemove

    stack = three_ports()
    dhcp(stack, 0, MAC[0], 10)
    dhcp(stack, 1, MAC[1], 20)
    echo = src(gf.icmp_echo("10.0.2.16", dst_mac=MAC[1]), MAC[0])
    stack.handle(FaultAdd(1, "remote=10.0.2.16 delay=50ms"), 30)
    assert by_port(stack.handle(frames_in(0, echo), 40)) == {}
    due = stack.poll_at()
    assert due is not None and due >= 40 + 50_000_000
    assert by_port(stack.handle(Tick(), due)) == {1: [echo]}
    stack.handle(FaultRemove(-1), due + 1)
    stack.handle(FaultAdd(2, "remote=10.0.2.16 partition"), due + 2)
    assert by_port(stack.handle(frames_in(0, echo), due + 3)) == {}
    stack.handle(FaultRemove(-1), due + 4)
    assert by_port(stack.handle(frames_in(0, echo), due + 5)) == {1: [echo]}

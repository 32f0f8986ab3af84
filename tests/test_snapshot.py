"""Snapshot round trips, protocol by protocol: state built, snapshot taken (through msgpack),
restored into a fresh core, and the next inputs give the same effects as the original's, among
them the one that proves the state was carried over (a timer firing, a lease remembered)."""

from __future__ import annotations

from typing import Any

import pytest

from slirptrio.core.events import (
    IcmpEchoClose,
    SendFrame,
    TcpClose,
    TcpSend,
    UdpClose,
    decode_effect,
)
from slirptrio.core.prng import Prng
from slirptrio.core.stack import Stack
from tests import guestframes as gf
from tests import streams
from tests.snapshots import plain_roundtrip, restored, run, shape

MS, SEC = streams.MS, streams.SEC


def _frames(results: list[Any]) -> list[bytes]:
    return [e[1] for effs in results if effs and effs[0] != "raised" for e in effs if e[0] == 0]


def _effects(results: list[Any]) -> list[Any]:
    return [decode_effect(e) for effs in results for e in effs]


def _udp_payloads(results: list[Any]) -> list[bytes]:
    out = []
    for frame in _frames(results):
        ip = gf.parse(frame).data
        if getattr(ip, "p", None) == 17:
            out.append(bytes(ip.data.data))
    return out


def _tcp_segments(results: list[Any]) -> list[Any]:
    out = []
    for frame in _frames(results):
        ip = gf.parse(frame).data
        if getattr(ip, "p", None) == 6:
            out.append(ip.data)
    return out


def check(acts: list[streams.Action], options: str = "") -> list[Any]:
    """Drive ``acts`` (one ("mark",) among them); restore at the mark; return the effects
    after it, which both cores must agree on."""
    session = streams.drive(acts, options, 11)
    (mark,) = session.marks
    original = Stack(session.config, session.seed)
    run(original, session.events[:mark])
    copy = restored(original)
    assert shape(copy) == shape(original)
    after = session.events[mark:]
    want = run(original, after)
    assert run(copy, after) == want
    assert plain_roundtrip(copy.snapshot()) == plain_roundtrip(original.snapshot())
    return want


def test_prng_continues_the_same_sequence() -> None:
    a = Prng(99)
    for _ in range(5):
        a.next_u64()
    b = Prng(0)
    b.restore_state(plain_roundtrip(a.snapshot_state()))
    assert [b.next_u64() for _ in range(10)] == [a.next_u64() for _ in range(10)]


def test_tcp_buffers_sequence_numbers_and_retransmission() -> None:
    after = check([
        ("syn", 0, 0, True), ("connected", 0), ("seg", 0, "ack", 0),
        ("seg", 0, "ooo", 100), ("seg", 0, "data", 50), ("host_data", 0, 3000),
        ("mark",),
        # the guest acks nothing: the RTO fires after the restore, and go-back-N resends
        ("time", 2 * SEC), ("tick_due",), ("seg", 0, "data", 100), ("seg", 0, "ack", 0),
        ("host_sent", 0, 150), ("seg", 0, "fin", 0), ("host_eof", 0), ("seg", 0, "ack", 0),
    ])
    segments = _tcp_segments(after)
    assert any(len(s.data) == 1400 for s in segments), "the retransmission after the restore"
    assert any(isinstance(e, TcpSend) for e in _effects(after))


def test_tcp_time_wait_and_drain_timers() -> None:
    after = check([
        ("syn", 1, 1, False), ("connected", 1), ("seg", 1, "ack", 0), ("seg", 1, "data", 10),
        ("host_eof", 1), ("seg", 1, "ack", 0), ("seg", 1, "fin", 0),
        ("mark",),
        ("time", 70 * SEC), ("tick_due",), ("tick_due",),
    ])
    assert any(isinstance(e, TcpClose) for e in _effects(after))


def test_udp_flow_expires_after_restore() -> None:
    after = check([
        ("udp", 0, 1, 100), ("udp_recv", 0, 20), ("mark",),
        ("udp_recv", 0, 30), ("time", 241 * SEC), ("tick_due",),
    ])
    assert any(isinstance(e, UdpClose) for e in _effects(after))
    assert bytes(30) in _udp_payloads(after)


def test_dns_query_in_flight_times_out_after_restore() -> None:
    after = check([("upstreams", 0), ("dnsq", 5, 1), ("mark",), ("time", 6 * SEC), ("tick_due",)])
    # SERVFAIL to the guest, with its id
    assert any(p[:2] == b"\x00\x05" and p[3] & 15 == 2 for p in _udp_payloads(after))


def test_icmp_echo_flow_maps_reply_then_expires() -> None:
    after = check([
        ("ping", 0, 2, 1), ("mark",), ("echo_reply", 0, 1), ("time", 61 * SEC), ("tick_due",),
    ])
    effects = _effects(after)
    assert any(isinstance(e, SendFrame) for e in effects)
    assert any(isinstance(e, IcmpEchoClose) for e in effects)


def test_fragments_in_flight_complete_after_restore() -> None:
    # two of three fragments before the snapshot, the third after: the datagram is whole
    after = check([
        ("syn", 0, 0, False),  # any traffic first, so flow ids differ from zero
        ("frag", 3, [0, 1, 2], 2), ("mark",), ("frag", 3, [2, 0, 1], 0),
    ])
    assert any(e[0] == 21 and len(e[2]) == 2400 for effs in after for e in effs), after


def test_fragments_in_flight_time_out_after_restore() -> None:
    session = streams.drive([("frag", 4, [0, 1, 2], 1), ("mark",), ("time", 31 * SEC),
                             ("tick_due",)], "", 3)
    original = Stack(session.config, session.seed)
    run(original, session.events[: session.marks[0]])
    copy = restored(original)
    run(copy, session.events[session.marks[0] :])
    assert copy.counters["frag_timeout"] == 1


@pytest.mark.parametrize("options", ["", "hostname=vm1"])
def test_dhcp_lease_remembered(options: str) -> None:
    after = check([
        ("dhcp", 1, 1, False), ("dhcp", 3, 1, True), ("dhcp", 4, 2, False), ("mark",),
        ("dhcp", 1, 1, False), ("dhcp", 1, 0, False), ("dhcp", 7, 1, True), ("dhcp", 1, 2, False),
    ], options)
    offers = [gf.dhcp_of(f) for f in _frames(after)]
    # the first client gets its own address back after the restore
    assert offers[0].yiaddr == int.from_bytes(gf.ip4("10.0.2.16"), "big")


def test_guest_forward_and_arp_table() -> None:
    after = check([
        ("arp", "10.0.2.2"), ("fwd", 0, 1), ("mark",), ("arp", "10.0.2.101"), ("fwd", 1, 1),
        ("arp", "10.0.2.101"),
    ])
    assert len(_frames(after)) == 1  # answered while the forward exists, not after removal


def test_restored_stack_keeps_its_seed() -> None:
    stack = Stack(streams.drive([], "", 5).config, 12345)
    assert restored(stack).seed == 12345


def test_unknown_snapshot_version_is_refused() -> None:
    stack = Stack(streams.drive([], "", 5).config, 1)
    snap = stack.snapshot()
    snap["version"] = 99
    with pytest.raises(ValueError, match="snapshot version"):
        Stack.from_snapshot(stack.config, snap)

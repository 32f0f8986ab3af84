"""The hardening state survives a snapshot: half-open bookkeeping per destination, the memory
account, the probe rate limit, the guest's link-down time, the DNS relay's reported upstreams
and DHCP's memory of MACs. Restored through msgpack into a fresh core, the next inputs give the
same effects as the original's, among them the ones that prove the state was carried over."""

from __future__ import annotations

from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Event,
    GuestFrame,
    GuestLink,
    TcpClose,
    TcpConnected,
    TcpData,
    Tick,
    decode_effect,
)
from slirptrio.core.stack import GUEST_GONE_TIMEOUT_NS, Stack
from tests.snapshots import plain_roundtrip, restored, run, shape
from tests.test_martians import tcp_frame

SEC = 1_000_000_000
DEAD = "203.0.113.200"


def test_half_open_memory_and_link_down_carry_over() -> None:
    config = parse_user_options("hostloopback=off,mem-budget=1M")
    before: list[tuple[int, Event]] = [
        (0, GuestLink(True)),
        (0, DnsUpstreams("127.0.0.53:53 203.0.113.53:53")),
        (1, GuestFrame(tcp_frame("203.0.113.1", 80, sport=50000))),  # flow 1
        (2, TcpConnected(1)),
        (3, TcpData(1, b"x" * 3000)),  # in the send buffer: counted in mem_used
        *[(10 + i, GuestFrame(tcp_frame(DEAD, 80, sport=41000 + i))) for i in range(64)],
    ]
    original = Stack(config, 5)
    run(original, before)
    assert original.tcp.mem_used > 3000
    assert original.tcp._embryos_to
    copy = restored(original)
    assert shape(copy) == shape(original)
    assert copy.tcp.mem_used == original.tcp.mem_used
    assert copy.tcp._embryos_to == original.tcp._embryos_to
    after: list[tuple[int, Event]] = [
        # the destination's share is used up: refused at once (RST), in both cores
        (200, GuestFrame(tcp_frame(DEAD, 80, sport=42000))),
        # the same list again: no new warning, no change
        (300, DnsUpstreams("127.0.0.53:53 203.0.113.53:53")),
        # the link has been down long enough: every flow reset
        (400, GuestLink(False)),
        (400 + GUEST_GONE_TIMEOUT_NS, Tick()),
    ]
    want = run(original, after)
    assert run(copy, after) == want
    effects = [decode_effect(e) for effs in want for e in effs]
    assert sum(isinstance(e, TcpClose) for e in effects) == 65
    assert original.counters["tcp_half_open_dest_full"] == 1
    assert original.counters["dns_upstream_loopback_skipped"] == 1
    assert plain_roundtrip(copy.snapshot()) == plain_roundtrip(original.snapshot())


def test_probe_rate_limit_carries_over() -> None:
    config = parse_user_options("")
    original = Stack(config, 5)
    run(original, [(0, GuestFrame(tcp_frame("203.0.113.1", 80, sport=50001))),
                   (1, TcpConnected(1))])
    entry = original.tcp._by_flow[1]
    entry.last_oow_ack_ns = 10 * SEC  # as if a probe had just been answered
    copy = restored(original)
    assert copy.tcp._by_flow[1].last_oow_ack_ns == 10 * SEC
    assert plain_roundtrip(copy.snapshot()) == plain_roundtrip(original.snapshot())


def test_link_down_time_carries_over() -> None:
    config = parse_user_options("")
    before: list[tuple[int, Event]] = [
        (0, GuestFrame(tcp_frame("203.0.113.1", 80, sport=50002))),
        (1, TcpConnected(1)),
        (5 * SEC, GuestLink(False)),
    ]
    original = Stack(config, 5)
    run(original, before)
    copy = restored(original)
    assert copy._link_down_at == original._link_down_at == 5 * SEC
    after: list[tuple[int, Event]] = [(5 * SEC + GUEST_GONE_TIMEOUT_NS, Tick())]
    want = run(original, after)
    assert run(copy, after) == want
    assert TcpClose(1, True) in [decode_effect(e) for effs in want for e in effs]
    assert original.counters["tcp_guest_departed"] == 1

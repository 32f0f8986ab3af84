"""TCP budgets in the core: fair half-open slots, pressure deadlines, one memory budget.

smoltcp-style, on the Harness of test_tcp_core; times and events explicit.
"""

from __future__ import annotations

import socket

from slirptrio.core.events import (
    TcpClose,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpRecvCredit,
    TcpSend,
    TcpSent,
)
from slirptrio.core.tcp import PRESSURE_CONNECT_TIMEOUT_NS, TcpNat
from slirptrio.wire.tcp import ACK, RST, SYN
from tests.test_tcp_core import GISN, SEC, Harness, M, credit

DEAD = socket.inet_aton("203.0.113.200")
OTHER = socket.inet_aton("198.51.100.7")


def connects(h: Harness) -> list[TcpConnect]:
    return [e for e in h.take() if isinstance(e, TcpConnect)]


# ------------------------------------------------------------------------ half-open slots


def test_one_destination_gets_a_share_of_the_half_open_slots() -> None:
    h = Harness(max_half_open=64)
    assert h.nat.max_half_open_per_dest == 16
    for port in range(16):
        h.send(SYN, GISN, sport=10000 + port, dst=DEAD)
    assert len(connects(h)) == 16
    h.recv_nothing()
    h.send(SYN, GISN, sport=20000, dst=DEAD)  # the 17th to the same address: refused at once
    assert connects(h) == []
    rst = h.recv_one()
    assert rst.flags == RST | ACK and rst.ack == (GISN + 1) & M
    assert h.counters["tcp_half_open_dest_full"] == 1
    # Every other destination still connects.
    h.send(SYN, GISN, sport=20001, dst=OTHER)
    h.send(SYN, GISN, sport=20002)
    assert len(connects(h)) == 2


def test_flood_of_syns_to_one_unreachable_address_leaves_room_for_others() -> None:
    h = Harness()  # the defaults: 256 half-open, 64 per destination
    for port in range(300):
        h.send(SYN, GISN, sport=10000 + port, dst=DEAD)
    assert len(connects(h)) == 64
    assert len(h.recv()) == 300 - 64  # each refused SYN got its RST
    flow, _isn = h.open(sport=40000)  # the guest's next connection completes
    assert h.nat.owns(flow)


def test_slot_freed_when_the_handshake_completes() -> None:
    h = Harness(max_half_open=16)  # share: 8 (the floor)
    assert h.nat.max_half_open_per_dest == 8
    for port in range(8):
        h.send(SYN, GISN, sport=1000 + port, dst=DEAD)
    flows = [e.flow for e in connects(h)]
    h.host(TcpConnected(flows[0]))
    synack = h.recv_one()
    h.send(ACK, GISN + 1, synack.seq + 1, sport=1000, dst=DEAD)
    h.take()
    h.send(SYN, GISN, sport=2000, dst=DEAD)
    assert len(connects(h)) == 1  # the established one no longer counts


def test_no_pressure_keeps_the_long_connect_deadline() -> None:
    h = Harness(max_half_open=64, connect_timeout_ns=75 * SEC)
    h.send(SYN, GISN, dst=DEAD)
    (c,) = connects(h)
    h.advance(PRESSURE_CONNECT_TIMEOUT_NS)
    h.recv_nothing()
    assert h.nat.owns(c.flow)
    h.advance(75 * SEC)
    assert h.recv_one().flags == RST | ACK
    assert h.take() == [TcpClose(c.flow, True)]


def test_pressure_shortens_every_half_open_deadline() -> None:
    h = Harness(max_half_open=16)  # pressure from 8 half-open entries
    addrs = [socket.inet_aton(f"203.0.113.{10 + i}") for i in range(8)]
    for i, addr in enumerate(addrs[:7]):
        h.send(SYN, GISN, sport=3000 + i, dst=addr)
    h.advance(2 * SEC)
    h.send(SYN, GISN, sport=3007, dst=addrs[7])  # the mark: every entry gets 5 s from now
    flows = [e.flow for e in connects(h)]
    assert len(flows) == 8
    assert h.counters["tcp_half_open_pressure"] == 1
    h.advance(PRESSURE_CONNECT_TIMEOUT_NS - 1)
    h.recv_nothing()
    h.advance(1)
    rsts = h.recv()
    assert len(rsts) == 8 and all(r.flags == RST | ACK for r in rsts)
    assert sorted(e.flow for e in h.take() if isinstance(e, TcpClose) and e.abort) == flows
    assert h.counters["tcp_connect_timeout"] == 8
    assert len(h.nat) == 0
    # Pressure over: a new entry has the long deadline again.
    h.send(SYN, GISN, sport=4000, dst=DEAD)
    connects(h)
    h.advance(PRESSURE_CONNECT_TIMEOUT_NS)
    h.recv_nothing()


def test_pressure_deadline_for_a_guest_that_never_completes_the_handshake() -> None:
    h = Harness(max_half_open=2)  # pressure from the first entry
    h.send(SYN, GISN, dst=DEAD)
    (c,) = connects(h)
    h.host(TcpConnected(c.flow))
    assert h.recv_one().flags == SYN | ACK
    h.take()
    h.advance(PRESSURE_CONNECT_TIMEOUT_NS)
    segs = h.recv()
    assert segs[-1].flags & RST
    assert h.take()[-1] == TcpClose(c.flow, True)
    assert h.counters["tcp_handshake_timeout"] == 1
    assert not h.nat.owns(c.flow)


# ------------------------------------------------------------------------- memory budget


def check_accounting(nat: TcpNat) -> None:
    """mem_used is what every entry holds or let the host reader take, recomputed."""
    total = sum(
        c.host_unsent + c.ooo_bytes + len(c.sndbuf) + c.credit_out for c in nat._by_flow.values()
    )
    assert nat.mem_used == total == sum(c.charged for c in nat._by_flow.values())


def open_many(h: Harness, n: int, *, window: int = 65535, wscale: int | None = 4
              ) -> list[tuple[int, int, int]]:
    """n established entries: (flow, our ISN, guest port)."""
    out = []
    for i in range(n):
        flow, isn = h.open(sport=30000 + i, window=window, wscale=wscale)
        out.append((flow, isn, 30000 + i))
    return out


def test_no_pressure_no_change() -> None:
    h = Harness(buffer_size=64 * 1024, mem_budget=64 << 20)
    flow, _isn = h.open(wscale=7)
    assert h.counters["tcp_mem_limited"] == 0
    check_accounting(h.nat)
    assert h.nat.mem_used > 0
    h.host(TcpData(flow, b"x" * 1000))
    check_accounting(h.nat)


def test_budget_holds_while_no_guest_reads() -> None:
    # Every host sends as much as it may; no guest acknowledges anything.
    buf = 64 * 1024
    budget = 16 * buf
    h = Harness(buffer_size=buf, mem_budget=budget)
    flows = open_many(h, 40)
    for _round in range(4):
        for flow, _isn, _port in flows:
            granted = credit(h.take())
            del granted
            c = h.nat._by_flow[flow]
            if c.credit_out:
                h.host(TcpData(flow, b"d" * c.credit_out))
            check_accounting(h.nat)
            assert h.nat.mem_used <= budget + budget // 2
        h.recv()
    assert h.counters["tcp_mem_limited"] > 0
    assert h.counters["tcp_credit_overrun"] == 0
    held = sum(len(h.nat._by_flow[f].sndbuf) for f, _i, _p in flows)
    assert 0 < held <= budget + budget // 2


def test_largest_consumer_slows_first() -> None:
    buf = 256 * 1024
    budget = 3 * buf
    h = Harness(buffer_size=buf, mem_budget=budget)
    (big, big_isn, _big_port), (small, _small_isn, small_port) = open_many(h, 2, window=65535,
                                                                          wscale=6)
    h.take()
    # The big flow fills its whole buffer: the guest does not read.
    for _ in range(3):
        c = h.nat._by_flow[big]
        if c.credit_out:
            h.host(TcpData(big, b"B" * c.credit_out))
        credit(h.take())
    big_held = len(h.nat._by_flow[big].sndbuf)
    assert big_held == buf
    # Pressure now: the big one gets no more credit when the guest acknowledges a little...
    assert h.nat.mem_used > budget // 2
    h.send(ACK, GISN + 1, big_isn + 1 + 1000, window=65535, sport=30000)
    assert credit(h.take()) == 0
    # ...while the small one still moves data both ways.
    h.send(ACK | 0x08, GISN + 1, h.nat._by_flow[small].snd_nxt, b"q" * 5000, sport=small_port)
    assert [e for e in h.take() if isinstance(e, TcpSend)] == [TcpSend(small, b"q" * 5000)]
    c = h.nat._by_flow[small]
    h.host(TcpData(small, b"s" * min(c.credit_out, 4000)))
    assert any(s.payload for s in h.recv())
    check_accounting(h.nat)


def test_every_flow_keeps_its_share_and_gets_credit_back() -> None:
    buf = 64 * 1024
    budget = 6 * buf
    h = Harness(buffer_size=buf, mem_budget=budget)
    flows = open_many(h, 8)
    h.take()
    for flow, _isn, _port in flows:  # each host fills what it was given
        c = h.nat._by_flow[flow]
        assert c.credit_out >= budget // (4 * 8)  # the share, at least
        h.host(TcpData(flow, b"d" * c.credit_out))
        assert h.nat.mem_used <= budget + budget // 2
    h.recv()
    h.take()
    # The guests acknowledge everything: every flow gets credit again.
    for flow, _isn, port in flows:
        c = h.nat._by_flow[flow]
        h.send(ACK, GISN + 1, c.snd_nxt, window=65535, sport=port)
    got = {e.flow for e in h.take() if isinstance(e, TcpRecvCredit)}
    assert got == {f for f, _i, _p in flows}
    check_accounting(h.nat)


def test_guest_uploads_stay_within_the_budget_and_windows_reopen() -> None:
    buf = 64 * 1024
    budget = 4 * buf
    h = Harness(buffer_size=buf, mem_budget=budget)
    flows = open_many(h, 8, wscale=None)
    h.take()
    # Every guest fills the window it was offered at the start, twice over (it retransmits
    # what was dropped); no host socket takes anything (no TcpSent).
    for _ in range(2):
        for flow, isn, port in flows:
            c = h.nat._by_flow[flow]
            start = c.rcv_nxt
            for off in range(0, buf, 1460):
                seq = start + off
                h.send(ACK, seq, isn + 1, b"u" * 1460, sport=port)
            check_accounting(h.nat)
            assert h.nat.mem_used <= budget + budget // 2
    h.take()
    assert h.counters["tcp_mem_trimmed"] > 0
    held = {f: h.nat._by_flow[f].host_unsent for f, _i, _p in flows}
    assert sum(held.values()) <= budget + budget // 2
    assert min(held.values()) > 0  # every flow got its share, not only the first ones
    h.recv()
    # The hosts take everything: each flow carries data again.
    for flow, isn, port in flows:
        h.host(TcpSent(flow, held[flow]))
        c = h.nat._by_flow[flow]
        h.send(ACK, c.rcv_nxt, isn + 1, b"v" * 1000, sport=port)
        assert [e for e in h.take() if isinstance(e, TcpSend)] == [TcpSend(flow, b"v" * 1000)]
    check_accounting(h.nat)


def test_accounting_ends_at_zero() -> None:
    h = Harness(buffer_size=32 * 1024, mem_budget=1 << 20)
    flows = open_many(h, 5)
    for flow, _isn, port in flows:
        h.host(TcpData(flow, b"x" * 100))
        h.send(RST, GISN + 1, sport=port)
    assert len(h.nat) == 0 and h.nat.mem_used == 0

"""A send's report riding on the flow's next read (``TcpDataSent``), and the core's read-only
check that lets the shell hold a report back (``TcpNat.sent_can_wait``).

``TcpDataSent(flow, n, data)`` must be exactly ``TcpSent(flow, n)`` then ``TcpData(flow,
data)``: the same segments to the guest, the same effects, the same state. The check may say
"wait" only when the report would send the guest nothing, and must change no state (replay
does not run it: the journal records what the shell reported).
"""

from __future__ import annotations

from typing import Any

from slirptrio.core.events import (
    Event,
    TcpData,
    TcpDataSent,
    TcpSend,
    TcpSent,
    decode_event,
    encode,
)
from slirptrio.wire.tcp import ACK, FIN, PSH
from tests.test_tcp_core import GISN, MS, Harness
from tests.test_tcp_windows import MSS, feed

M = 0xFFFFFFFF


def _state(h: Harness) -> tuple[Any, ...]:
    return (h.nat.snapshot_state(), dict(h.counters))


def _request(h: Harness, size: int = 1) -> tuple[int, int, int]:
    """Open a connection, the guest sends ``size`` bytes; returns (flow, next seq, isn)."""
    flow, isn = h.open()
    seq = GISN + 1
    h.send(ACK | PSH, seq, isn + 1, b"q" * size)
    assert b"".join(e.data for e in h.take() if isinstance(e, TcpSend)) == b"q" * size
    h.advance(5 * MS)
    h.recv()
    return flow, seq + size, isn


def _both(events_a: list[Event], events_b: list[Event]) -> None:
    """The same connection driven by ``events_a`` and by ``events_b``: identical to the end."""
    ha, hb = Harness(), Harness()
    flow_a, seq, isn = _request(ha)
    flow_b, _seq, _isn = _request(hb)
    assert flow_a == flow_b == 101  # the flow the events name
    for ev in events_a:
        ha.host(ev)
    for ev in events_b:
        hb.host(ev)
    assert ha.counters["tcp_stale_event"] == 0
    assert ha.recv() == hb.recv()
    assert ha.take() == hb.take()
    assert _state(ha) == _state(hb)
    for h in (ha, hb):  # the guest acknowledges and asks again; time passes
        h.send(ACK | PSH, seq, isn + 1 + 2, b"r")
        h.advance(300 * MS)
    assert ha.recv() == hb.recv()
    assert ha.take() == hb.take()
    assert _state(ha) == _state(hb)


def test_data_sent_is_sent_then_data() -> None:
    flow = 101
    _both([TcpSent(flow, 1), TcpData(flow, b"ab")], [TcpDataSent(flow, 1, b"ab")])


def test_data_sent_credits_the_window() -> None:
    h = Harness(buffer_size=20_000)
    flow, isn = h.open()
    seq = feed(h, GISN + 1, isn + 1, 12_000)
    h.advance(5 * MS)
    assert h.recv()[-1].window == 8_000
    h.take()
    h.host(TcpDataSent(flow, 12_000, b"answer"))
    segs = h.recv()
    # the report reopened the window: the answer's segment carries the whole buffer
    assert [s.payload for s in segs][-1] == b"answer"
    assert segs[-1].window == 20_000 and segs[-1].ack == seq & M


def test_data_sent_on_an_unknown_flow_is_stale() -> None:
    h = Harness()
    h.host(TcpDataSent(999, 1, b"x"))
    assert h.counters["tcp_stale_event"] == 1
    h.recv_nothing()


def test_the_event_round_trips_through_the_journal_encoding() -> None:
    ev = TcpDataSent(3, 7, b"\x00data")
    assert encode(ev) == [16, 3, 7, b"\x00data"]
    assert decode_event(encode(ev)) == ev
    assert decode_event(encode(TcpSent(3, 7))) == TcpSent(3, 7)  # old journals still read


def test_a_small_report_on_a_healthy_window_may_wait() -> None:
    h = Harness()
    flow, seq, isn = _request(h)
    assert h.nat.sent_can_wait(flow, 1)
    assert not h.nat.sent_can_wait(flow, 2)  # more than the host was handed
    assert not h.nat.sent_can_wait(flow, 0)
    assert not h.nat.sent_can_wait(flow + 1, 1)  # no such flow
    h.send(ACK | FIN, seq, isn + 1)  # the guest closed: the core drains on what it is told
    assert not h.nat.sent_can_wait(flow, 1)


def test_more_than_a_segment_is_reported_at_once() -> None:
    h = Harness()
    flow, _seq, _isn = _request(h, MSS + 1)
    assert h.nat.sent_can_wait(flow, MSS)
    assert not h.nat.sent_can_wait(flow, MSS + 1)


def test_a_report_that_would_reopen_the_window_is_never_held() -> None:
    # The window the guest knows is below half the buffer; one more byte confirmed makes it
    # grow by two segments, which the core announces with a window update: that report must
    # be stepped at once, or the guest waits on a window that is in fact open.
    h = Harness(buffer_size=20_000)
    flow, isn = h.open()
    feed(h, GISN + 1, isn + 1, 10_001)
    h.advance(5 * MS)
    assert h.recv()[-1].window == 9_999
    h.host(TcpSent(flow, 2 * MSS - 1))
    h.recv_nothing()
    assert not h.nat.sent_can_wait(flow, 1)
    h.host(TcpSent(flow, 1))  # what the check foresaw: stepping it sends the update
    (upd,) = h.recv()
    assert upd.window == 9_999 + 2 * MSS and h.counters["tcp_window_updates"] == 1


def test_no_report_is_held_when_the_window_is_nearly_closed() -> None:
    # Less than two segments of room: held bytes could close the window with nothing left to
    # bring the shell back (the guest cannot send), so every report goes at once.
    h = Harness(buffer_size=20_000)
    flow, isn = h.open()
    feed(h, GISN + 1, isn + 1, 18_000)
    h.advance(5 * MS)
    assert h.recv()[-1].window == 2_000
    assert not h.nat.sent_can_wait(flow, 1)


def test_no_report_is_held_under_memory_pressure() -> None:
    h = Harness(buffer_size=60_000, mem_budget=100_000)
    flow, isn = h.open()
    feed(h, GISN + 1, isn + 1, 25_000)
    h.advance(5 * MS)
    h.recv()
    assert h.counters["tcp_mem_limited"] > 0
    assert not h.nat.sent_can_wait(flow, 1)


def test_the_check_is_read_only() -> None:
    for h, flow in _checked():
        before = _state(h)
        for n in (0, 1, 2, MSS, MSS + 1, 10**6):
            h.nat.sent_can_wait(flow, n)
        assert _state(h) == before


def _checked() -> list[tuple[Harness, int]]:
    """Connections in the states the check looks at: healthy, under pressure, closing."""
    out = []
    h = Harness()
    flow, _seq, _isn = _request(h)
    out.append((h, flow))
    h = Harness(buffer_size=60_000, mem_budget=100_000)
    flow, isn = h.open()
    feed(h, GISN + 1, isn + 1, 25_000)
    out.append((h, flow))
    h = Harness()
    flow, seq, isn = _request(h)
    h.send(ACK | FIN, seq, isn + 1)
    out.append((h, flow))
    return out

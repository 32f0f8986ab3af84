"""TCP receive-window invariants seen from the guest's side of the wire.

Two rules of the NAT's receive side, each pinned by the segments it sends to the guest (their
ACK and window fields), so a change to either fails here and not only in a capture replay:

* the right edge of the window (ACK + window) never moves left (RFC 9293 3.8.6.2.2), even
  when memory pressure shrinks what the entry may take;
* a window update (an ACK sent only because the host took bytes) goes out when the window the
  guest knows is below half the buffer and would grow by at least min(half the buffer, two
  segments of our MSS); never otherwise.
"""

from __future__ import annotations

from slirptrio.core.events import TcpSend, TcpSent
from slirptrio.wire.tcp import ACK, TcpSegment
from tests.test_tcp_core import GISN, MS, Harness

M = 0xFFFFFFFF
MSS = 1460  # the NAT's own MSS at the default MTU of 1500


def right_edges(segments: list[TcpSegment], first_ack: int) -> list[int]:
    """Each segment's right edge, as an offset from ``first_ack`` (unwrapped)."""
    return [((s.ack - first_ack) & M) + s.window for s in segments]


def feed(h: Harness, seq: int, ack: int, n: int, chunk: int = 1000) -> int:
    """The guest sends ``n`` bytes from ``seq`` in segments of ``chunk``; returns the next seq."""
    end = seq + n
    while seq < end:
        size = min(chunk, end - seq)
        h.send(ACK, seq, ack, b"g" * size)
        seq += size
    return seq


def test_right_edge_never_moves_left_under_memory_pressure() -> None:
    # The SYN-ACK offers the whole buffer (nothing is used yet). The guest then sends 25,000
    # bytes the host does not confirm: past half the memory budget (with the host reader's
    # credit), the entry may take less than its buffer. Offering only that would pull the
    # edge left of what the guest was promised; the NAT keeps the promised edge instead.
    h = Harness(buffer_size=60_000, mem_budget=100_000)
    _flow, isn = h.open()
    seq = GISN + 1
    edges = [60_000]  # the SYN-ACK's window, from the guest's first sequence number
    seq = feed(h, seq, isn + 1, 25_000)
    h.advance(5 * MS)
    acks = h.recv()
    assert acks and acks[-1].ack == seq & M
    assert h.counters["tcp_mem_limited"] > 0  # the pressure really bit
    edges += right_edges(acks, (GISN + 1) & M)
    assert acks[-1].window == 60_000 - 25_000, [a.window for a in acks]
    assert edges == sorted(edges), edges
    assert edges[-1] == 60_000


def test_right_edge_never_moves_left_as_host_bytes_pile_up() -> None:
    # Without pressure: the window shrinks by exactly what the guest sent and the host has
    # not confirmed, so the edge stays put; then the host confirms and the edge moves right.
    h = Harness(buffer_size=20_000)
    flow, isn = h.open()
    seq = GISN + 1
    seq = feed(h, seq, isn + 1, 12_000)
    h.advance(5 * MS)
    acks = h.recv()
    assert [a.ack for a in acks][-1] == seq & M
    edges = right_edges(acks, (GISN + 1) & M)
    assert edges and all(e == 20_000 for e in edges), edges
    h.host(TcpSent(flow, 12_000))
    (upd,) = h.recv()
    assert right_edges([upd], (GISN + 1) & M) == [32_000]


def _known_window(h: Harness, sent: int) -> tuple[int, int]:
    """Open a connection on ``h`` (buffer 20,000), have the guest send ``sent`` bytes that
    the host does not confirm yet, flush the ACKs; return (flow, the window the guest knows)."""
    flow, isn = h.open()
    seq = feed(h, GISN + 1, isn + 1, sent)
    h.advance(5 * MS)
    acks = h.recv()
    assert acks[-1].ack == seq & M
    assert b"".join(e.data for e in h.take() if isinstance(e, TcpSend)) == b"g" * sent
    return flow, acks[-1].window


def test_no_window_update_while_the_known_window_is_half_the_buffer() -> None:
    h = Harness(buffer_size=20_000)
    flow, known = _known_window(h, 10_000)
    assert known == 10_000  # exactly half: healthy, the guest's data ACKs carry the window
    h.host(TcpSent(flow, 10_000))
    h.recv_nothing()
    assert h.counters["tcp_window_updates"] == 0


def test_window_update_needs_two_segments_of_growth() -> None:
    h = Harness(buffer_size=20_000)
    flow, known = _known_window(h, 10_001)
    assert known == 9_999  # below half
    h.host(TcpSent(flow, 2 * MSS - 1))  # one byte short of two segments: not worth a segment
    h.recv_nothing()
    h.host(TcpSent(flow, 1))  # now the window would grow by exactly two segments
    (upd,) = h.recv()
    assert upd.flags == ACK and upd.window == 9_999 + 2 * MSS
    assert h.counters["tcp_window_updates"] == 1


def test_window_update_below_half_not_only_below_a_quarter() -> None:
    h = Harness(buffer_size=20_000)
    flow, known = _known_window(h, 12_000)
    assert known == 8_000  # below half, above a quarter
    h.host(TcpSent(flow, 3_000))
    (upd,) = h.recv()
    assert upd.window == 11_000


def test_window_update_threshold_is_half_the_buffer_when_smaller_than_two_segments() -> None:
    # A 4,000-byte buffer: half of it (2,000) is less than two segments (2,920).
    h = Harness(buffer_size=4_000)
    flow, known = _known_window(h, 3_000)
    assert known == 1_000
    h.host(TcpSent(flow, 1_999))
    h.recv_nothing()
    h.host(TcpSent(flow, 1))
    (upd,) = h.recv()
    assert upd.window == 3_000

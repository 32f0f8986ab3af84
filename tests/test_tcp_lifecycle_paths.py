"""TCP lifecycle transitions no other test takes: leaving TIME_WAIT with bytes still going to the
host, and aborting TIME_WAIT and DRAINING entries."""

from __future__ import annotations

from slirptrio.core.events import TcpClose, TcpEof, TcpReset, TcpSend, TcpSent, TcpShutdown
from slirptrio.wire.tcp import ACK, FIN
from tests.test_tcp_core import GISN, SEC, Harness


def time_wait_with_unsent_bytes() -> tuple[Harness, int]:
    """An entry in TIME_WAIT whose last 4 guest bytes the host socket has not confirmed."""
    h = Harness()
    flow, isn = h.open()
    seq = GISN + 1
    h.host(TcpEof(flow))
    assert h.recv()[-1].flags & FIN
    h.send(ACK, seq, isn + 2)
    assert h.nat.flows()[0].state == "FIN_WAIT_2"
    h.send(ACK | FIN, seq, isn + 2, b"last")
    assert h.take() == [TcpSend(flow, b"last"), TcpShutdown(flow)]
    assert h.nat.flows()[0].state == "TIME_WAIT"
    return h, flow


def test_time_wait_ends_in_draining_until_the_host_took_every_byte() -> None:
    h, flow = time_wait_with_unsent_bytes()
    h.advance(2 * SEC)
    assert h.nat.flows()[0].state == "DRAINING"
    assert h.take() == []
    h.host(TcpSent(flow, 4))
    assert h.take() == [TcpClose(flow, False)]
    assert len(h.nat) == 0


def test_draining_aborts_when_the_host_stops_taking_bytes() -> None:
    h, flow = time_wait_with_unsent_bytes()
    h.advance(2 * SEC)
    h.advance(h.nat.drain_timeout_ns)
    assert h.take() == [TcpClose(flow, True)]
    assert h.counters["tcp_drain_timeout"] == 1
    assert len(h.nat) == 0


def test_host_reset_in_time_wait_aborts_without_a_word_to_the_guest() -> None:
    h, flow = time_wait_with_unsent_bytes()
    h.recv()
    h.host(TcpReset(flow, 104))
    assert h.take() == [TcpClose(flow, True)]
    h.recv_nothing()
    assert len(h.nat) == 0

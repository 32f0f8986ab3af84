"""TCP into the guest (host forwards, connect_to_guest): our SYN, the guest's answer, data."""

from __future__ import annotations

import socket

from slirptrio.core.events import TcpClose, TcpData, TcpEof, TcpRecvCredit, TcpSend, TcpSent
from slirptrio.wire.tcp import ACK, FIN, PSH, RST, SYN
from tests.test_tcp_core import GUEST, SEC, Harness, M

HOST = socket.inet_aton("10.0.2.2")
FLOW = 1 << 32
GPORT = 22
PEER_PORT = 51000
GISN = 0x7FFFFFF0


def opened(h: Harness, wscale: int | None = 7) -> int:
    """Open FLOW into the guest and answer with a SYN-ACK; return our ISN."""
    assert h.nat.open_to_guest(FLOW, HOST, PEER_PORT, GUEST, GPORT, "127.0.0.1", 40000, h.now)
    syn = h.recv_one()
    assert syn.flags == SYN and syn.mss == h.nat.mss and syn.wscale == h.nat.wscale
    assert (syn.sport, syn.dport) == (PEER_PORT, GPORT)
    h.send(SYN | ACK, GISN, syn.seq + 1, window=65535, sport=GPORT, dport=PEER_PORT, dst=HOST,
           mss=1460, wscale=wscale)
    ack = h.recv_one()
    assert ack.flags == ACK and ack.ack == (GISN + 1) & M
    return syn.seq


def guest(h: Harness, flags: int, seq: int, ack: int, payload: bytes = b"") -> None:
    h.send(flags, seq, ack, payload, sport=GPORT, dport=PEER_PORT, dst=HOST)


def test_handshake_then_data_both_ways_and_close() -> None:
    h = Harness()
    iss = opened(h)
    credit = [e for e in h.take() if isinstance(e, TcpRecvCredit)]
    assert credit and credit[0].flow == FLOW
    (info,) = h.nat.flows()
    assert info.state == "ESTABLISHED" and info.host == "127.0.0.1"
    # host -> guest
    h.host(TcpData(FLOW, b"SSH-2.0-test\r\n"))
    seg = h.recv_one()
    assert seg.payload == b"SSH-2.0-test\r\n" and seg.flags == ACK | PSH
    guest(h, ACK, GISN + 1, iss + 1 + 14)
    # guest -> host
    guest(h, ACK | PSH, GISN + 1, iss + 1 + 14, b"hello")
    sends = [e for e in h.take() if isinstance(e, TcpSend)]
    assert sends == [TcpSend(FLOW, b"hello")]
    h.host(TcpSent(FLOW, 5))
    # host closes; guest closes
    h.host(TcpEof(FLOW))
    fin = h.recv()[-1]
    assert fin.flags & FIN
    guest(h, ACK | FIN, GISN + 6, iss + 1 + 14 + 1)
    h.advance(5 * SEC)
    assert TcpClose(FLOW, False) in h.take()
    assert h.nat.flows() == []


def test_guest_refuses_with_rst() -> None:
    h = Harness()
    assert h.nat.open_to_guest(FLOW, HOST, PEER_PORT, GUEST, GPORT, "127.0.0.1", 40000, h.now)
    syn = h.recv_one()
    h.send(RST | ACK, 0, syn.seq + 1, sport=GPORT, dport=PEER_PORT, dst=HOST)
    assert h.take() == [TcpClose(FLOW, True)]
    assert h.counters["tcp_inbound_refused"] == 1 and len(h.nat) == 0


def test_syn_retransmitted_then_given_up() -> None:
    h = Harness()
    assert h.nat.open_to_guest(FLOW, HOST, PEER_PORT, GUEST, GPORT, "127.0.0.1", 40000, h.now)
    first = h.recv_one()
    h.advance(1 * SEC)
    again = h.recv_one()
    assert again.flags == SYN and again.seq == first.seq
    h.advance(120 * SEC)
    assert TcpClose(FLOW, True) in h.take()
    assert len(h.nat) == 0


def test_guest_without_window_scaling() -> None:
    h = Harness()
    iss = opened(h, wscale=None)
    h.host(TcpData(FLOW, b"x" * 3000))
    segs = h.recv()
    assert sum(len(s.payload) for s in segs) == 3000
    guest(h, ACK, GISN + 1, iss + 1 + 3000)
    assert all(s.window <= 0xFFFF for s in h.recv())


def test_busy_tuple_and_duplicate_flow_refused() -> None:
    h = Harness()
    assert h.nat.open_to_guest(FLOW, HOST, PEER_PORT, GUEST, GPORT, "x", 1, h.now)
    assert not h.nat.open_to_guest(FLOW + 1, HOST, PEER_PORT, GUEST, GPORT, "x", 1, h.now)
    assert not h.nat.open_to_guest(FLOW, HOST, PEER_PORT + 1, GUEST, GPORT, "x", 1, h.now)
    assert h.take() == [TcpClose(FLOW + 1, True)]  # never a close for the live flow
    assert len(h.nat) == 1

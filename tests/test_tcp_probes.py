"""TCP acceptability (RFC 9293 3.10.7.4): keepalive and window probes of every shape, old
duplicates, impossible flag mixes, urgent pointers and option lengths that must do no harm.

smoltcp-style, on the Harness of test_tcp_core: the test plays the guest segment by segment.
"""

from __future__ import annotations

import struct

from slirptrio.core.events import TcpConnect, TcpConnected, TcpData, TcpEof, TcpSend, TcpSent
from slirptrio.core.tcp import MIN_SND_MSS, OOW_ACK_INTERVAL_NS
from slirptrio.wire.checksum import internet_checksum, pseudo_header_sum
from slirptrio.wire.tcp import ACK, FIN, PSH, RST, SYN, URG
from tests.test_tcp_core import GISN, GPORT, GUEST, MS, REMOTE, SEC, Harness, M, sends


def raw_tcp(
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    window: int = 65535,
    urgent: int = 0,
    options: bytes = b"",
    sport: int = GPORT,
    dport: int = 80,
) -> bytes:
    """A segment with any urgent pointer and any option bytes (padded to 32-bit words)."""
    options += b"\x00" * (-len(options) % 4)
    hlen = 20 + len(options)
    hdr = bytearray(
        struct.pack("!HHIIBBHHH", sport, dport, seq & M, ack & M, (hlen // 4) << 4, flags,
                    window, 0, urgent)
    ) + options
    seg = bytes(hdr) + payload
    csum = internet_checksum(seg, pseudo_header_sum(GUEST, REMOTE, 6, len(seg)))
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def inject(h: Harness, seg: bytes) -> None:
    h.nat.guest_segment(GUEST, REMOTE, seg, h.now)


# ------------------------------------------------------------------------ keepalive probes


def test_keepalive_probe_gets_an_ack() -> None:
    h = Harness()
    flow, isn = h.open()
    nxt = GISN + 1
    h.send(ACK, nxt, isn + 1, b"ping")
    h.take()
    h.advance(10 * MS)
    h.recv()  # the delayed ACK
    # Linux: an empty segment one below rcv_nxt, carrying the current ACK.
    h.send(ACK, nxt + 4 - 1, isn + 1)
    ack = h.recv_one()
    assert ack.flags == ACK and ack.payload == b""
    assert ack.ack == (nxt + 4) & M and ack.seq == (isn + 1) & M
    assert h.take() == []
    assert h.counters["tcp_unacceptable"] == 1
    assert h.nat.owns(flow)


def test_keepalive_probe_with_a_garbage_byte() -> None:
    # BSD-style keepalive: one old byte at rcv_nxt - 1; it must not reach the host again.
    h = Harness()
    _flow, isn = h.open()
    h.send(ACK, GISN, isn + 1, b"\x00")
    ack = h.recv_one()
    assert ack.ack == (GISN + 1) & M
    assert h.take() == []


def test_idle_connection_survives_keepalive_every_second() -> None:
    h = Harness()
    flow, isn = h.open()
    for _ in range(60):
        h.advance(1 * SEC)
        h.send(ACK, GISN, isn + 1)
        assert h.recv_one().ack == (GISN + 1) & M
    h.send(ACK | PSH, GISN + 1, isn + 1, b"still here")
    assert h.take() == [TcpSend(flow, b"still here")]
    h.host(TcpData(flow, b"so am I"))
    assert h.recv_one().payload == b"so am I"


def test_keepalive_in_fin_wait_2() -> None:
    h = Harness()
    flow, isn = h.open()
    h.host(TcpEof(flow))
    assert h.recv_one().flags & FIN
    h.send(ACK, GISN + 1, isn + 2)
    assert h.nat.flows()[0].state == "FIN_WAIT_2"
    h.advance(1 * SEC)
    h.send(ACK, GISN, isn + 2)
    ack = h.recv_one()
    assert ack.ack == (GISN + 1) & M and ack.seq == (isn + 2) & M


def test_probe_answers_are_rate_limited() -> None:
    h = Harness()
    _flow, isn = h.open()
    h.send(ACK, GISN, isn + 1)
    assert len(h.recv()) == 1
    h.advance(OOW_ACK_INTERVAL_NS - 1)
    h.send(ACK, GISN, isn + 1)
    h.recv_nothing()
    assert h.counters["tcp_probe_ack_limited"] == 1
    h.advance(1)
    h.send(ACK, GISN, isn + 1)
    assert len(h.recv()) == 1


# ------------------------------------------------------------------- zero-window probes


def closed_window(h: Harness) -> tuple[int, int, int]:
    """An entry whose receive window is closed: the host socket took nothing of 4000 bytes."""
    flow, isn = h.open()
    nxt = GISN + 1
    h.send(ACK, nxt, isn + 1, b"a" * 2000)
    h.send(ACK, nxt + 2000, isn + 1, b"b" * 2000)
    assert h.recv()[-1].window == 0
    h.take()
    return flow, isn, nxt + 4000


def test_linux_zero_window_probe() -> None:
    # Linux probes a closed window with an empty segment one below rcv_nxt.
    h = Harness(buffer_size=4000)
    flow, isn, nxt = closed_window(h)
    h.advance(1 * SEC)
    h.send(ACK, nxt - 1, isn + 1, window=65535)
    ack = h.recv_one()
    assert ack.ack == nxt & M and ack.window == 0
    h.host(TcpSent(flow, 4000))
    upd = h.recv_one()  # the window update
    assert upd.window == 4000
    h.advance(1 * SEC)
    h.send(ACK, nxt - 1, isn + 1)  # a probe after the update was lost: the window again
    assert h.recv_one().window == 4000


def test_bsd_zero_window_probe_of_one_new_byte() -> None:
    h = Harness(buffer_size=4000)
    _flow, isn, nxt = closed_window(h)
    h.advance(1 * SEC)
    h.send(ACK, nxt, isn + 1, b"c")
    ack = h.recv_one()
    assert ack.ack == nxt & M and ack.window == 0
    assert h.take() == []  # the byte was not taken
    assert h.counters["tcp_zero_window_drop"] == 1


def test_plain_ack_at_rcv_nxt_while_window_closed_gets_no_chatter() -> None:
    h = Harness(buffer_size=4000)
    _flow, isn, nxt = closed_window(h)
    h.advance(1 * SEC)
    h.send(ACK, nxt, isn + 1)
    h.recv_nothing()  # acceptable and nothing to answer: the window update comes by itself


def test_urgent_window_probe() -> None:
    # Linux in urgent mode probes with URG set, at rcv_nxt, empty.
    h = Harness(buffer_size=4000)
    _flow, isn, nxt = closed_window(h)
    h.advance(1 * SEC)
    inject(h, raw_tcp(nxt, isn + 1, ACK | URG, urgent=1))
    assert h.recv_one().window == 0
    assert h.counters["tcp_window_probe"] == 1


def test_empty_segment_beyond_the_window_gets_an_ack() -> None:
    h = Harness(buffer_size=4000)
    _flow, isn = h.open()
    h.send(ACK, GISN + 1 + 4000 + 10, isn + 1)
    ack = h.recv_one()
    assert ack.ack == (GISN + 1) & M


# --------------------------------------------------------------------- old duplicates


def test_old_duplicate_pure_ack_gets_an_ack() -> None:
    h = Harness()
    flow, isn = h.open()
    h.send(ACK, GISN + 1, isn + 1, b"x" * 1000)
    h.take()
    h.advance(10 * MS)
    h.recv()
    h.send(ACK, GISN + 1, isn + 1)  # a segment from before the data, delivered late
    ack = h.recv_one()
    assert ack.ack == (GISN + 1001) & M
    assert h.nat.owns(flow)


def test_old_duplicate_data_gets_an_ack_and_is_not_resent() -> None:
    h = Harness()
    flow, isn = h.open()
    h.send(ACK, GISN + 1, isn + 1, b"x" * 1000)
    assert sends(h.take()) == b"x" * 1000
    h.send(ACK, GISN + 1, isn + 1, b"x" * 1000)
    assert h.recv()[-1].ack == (GISN + 1001) & M
    assert h.take() == []
    assert h.nat.owns(flow)


def test_acceptable_pure_acks_get_no_answer() -> None:
    h = Harness()
    _flow, isn = h.open()
    h.send(ACK, GISN + 1, isn + 1)  # at rcv_nxt
    h.send(ACK, GISN + 1 + 100, isn + 1)  # inside the window (data before it was lost)
    h.recv_nothing()
    assert h.counters["tcp_unacceptable"] == 0


# ------------------------------------------------------------------ impossible flag mixes


def test_syn_fin_and_syn_rst_are_dropped_without_answer() -> None:
    h = Harness()
    for flags in (SYN | FIN, SYN | RST, SYN | FIN | ACK, SYN | RST | ACK, SYN | FIN | RST | PSH):
        inject(h, raw_tcp(GISN, 0, flags))
    h.recv_nothing()
    assert h.take() == []
    assert h.counters["tcp_bad_flags"] == 5
    assert len(h.nat) == 0


def test_syn_fin_on_an_established_flow_is_dropped() -> None:
    h = Harness()
    flow, isn = h.open()
    inject(h, raw_tcp(GISN + 1, isn + 1, SYN | FIN | ACK))
    h.recv_nothing()
    assert h.take() == []
    assert h.nat.flows()[0].state == "ESTABLISHED"
    assert h.nat.owns(flow)


# ------------------------------------------------------------------------ urgent pointer


def test_urgent_pointer_beyond_the_segment_is_harmless() -> None:
    h = Harness()
    flow, isn = h.open()
    inject(h, raw_tcp(GISN + 1, isn + 1, ACK | URG | PSH, b"abc", urgent=0xFFFF))
    inject(h, raw_tcp(GISN + 4, isn + 1, ACK | URG, urgent=500))  # no data at all
    inject(h, raw_tcp(GISN + 4, isn + 1, ACK | PSH, b"def", urgent=9))  # pointer without URG
    assert sends(h.take()) == b"abcdef"  # urgent data is ordinary data here
    assert h.nat.flows()[0].state == "ESTABLISHED"
    assert h.nat.owns(flow)


# ------------------------------------------------------------------------ option lengths


def syn_with_options(h: Harness, options: bytes, sport: int) -> TcpConnect:
    inject(h, raw_tcp(GISN, 0, SYN, options=options, sport=sport))
    effects = h.take()
    assert len(effects) == 1 and isinstance(effects[0], TcpConnect), effects
    return effects[0]


def test_bad_option_lengths_are_harmless() -> None:
    h = Harness()
    cases = [
        bytes([2, 0, 5, 0xB4]),  # MSS with length 0
        bytes([2, 1, 5, 0xB4]),  # length 1
        bytes([2, 40]),  # runs past the header
        bytes([3, 3]),  # window scale cut short
        bytes([2, 3, 5]),  # MSS of the wrong length
        bytes([8, 10, 1, 2, 3]),  # timestamps cut short
        bytes([99, 2, 3, 255, 0, 0, 0, 0]),  # unknown kind, then a lying window scale
        bytes([1] * 40),  # forty NOPs
    ]
    for i, options in enumerate(cases):
        eff = syn_with_options(h, options, 2000 + i)
        h.host(TcpConnected(eff.flow))
        synack = h.recv_one()
        assert synack.flags == SYN | ACK
        assert synack.wscale in (None, h.nat.wscale)
        h.take()


def test_window_scale_clamped_and_tiny_mss_raised() -> None:
    h = Harness()
    eff = syn_with_options(h, bytes([3, 3, 200, 1, 2, 4, 0, 1]), 3000)  # shift 200, MSS 1
    h.host(TcpConnected(eff.flow))
    synack = h.recv_one()
    h.send(ACK, GISN + 1, synack.seq + 1, window=100, sport=3000)
    h.take()
    h.host(TcpData(eff.flow, b"z" * 300))
    segs = h.recv()
    assert segs and all(len(s.payload) == MIN_SND_MSS for s in segs[:-1])
    assert sum(len(s.payload) for s in segs) == 300  # window 100 << 14: wide open


def test_mss_zero_counts_as_absent() -> None:
    h = Harness()
    eff = syn_with_options(h, bytes([2, 4, 0, 0]), 3001)
    h.host(TcpConnected(eff.flow))
    synack = h.recv_one()
    h.send(ACK, GISN + 1, synack.seq + 1, sport=3001)
    h.take()
    h.host(TcpData(eff.flow, b"z" * 1000))
    assert [len(s.payload) for s in h.recv()] == [536, 464]  # RFC 9293's default MSS


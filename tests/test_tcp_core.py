"""TCP NAT core: handshake, data both ways, windows and credit, timers, close, bounds.

smoltcp-style: the test plays the guest with explicit segments and explicit times, and the
host shell with explicit events; every segment the NAT sends is parsed back with parse_tcp.
"""

from __future__ import annotations

import collections
import errno
import socket
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from slirptrio.core.events import (
    Effect,
    Event,
    TcpClose,
    TcpConnect,
    TcpConnected,
    TcpConnectFailed,
    TcpData,
    TcpEof,
    TcpRecvCredit,
    TcpReset,
    TcpSend,
    TcpSent,
    TcpShutdown,
)
from slirptrio.core.prng import Prng
from slirptrio.core.tcp import TcpNat
from slirptrio.wire import MalformedFrame
from slirptrio.wire.fast import tcp_run
from slirptrio.wire.framing import split_run
from slirptrio.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment, build_tcp, parse_tcp

GUEST = socket.inet_aton("10.0.2.15")
REMOTE = socket.inet_aton("203.0.113.1")
FORBIDDEN = socket.inet_aton("198.51.100.99")
GPORT = 40000
MS = 1_000_000
SEC = 1_000_000_000
M = 0xFFFFFFFF
GISN = 0xFFFFFF00  # close to the wrap, so sequence arithmetic wraps in every test


class Harness:
    """A TcpNat with a recording guest link and host shell."""

    def __init__(self, **kw: Any) -> None:
        self.sent: list[tuple[bytes, bytes, int, bytes]] = []
        self.effects: list[Effect] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self._next_flow = 100
        self.now = 1_000 * SEC
        self.nat = TcpNat(
            rng=Prng(7),
            send_ip=self._send_ip,
            send_tcp=self._send_tcp,
            emit=self.effects.append,
            translate=self.translate,
            alloc_flow=self.alloc,
            counters=self.counters,
            **kw,
        )

    def _send_ip(self, src: bytes, dst: bytes, proto: int, payload: bytes) -> None:
        self.sent.append((src, dst, proto, bytes(payload)))

    def _send_tcp(self, src: bytes, dst: bytes, *args: Any) -> None:
        """The data path's run of segments, taken apart into segments again."""
        head = bytes(12) + b"\x08\x00\x45" + bytes(7) + b"\x40\x06" + bytes(2) + src + dst
        run = bytearray()
        tcp_run(run, head, 0, *args)
        for frame in split_run(run):
            end = 14 + int.from_bytes(frame[16:18], "big")
            self.sent.append((src, dst, 6, bytes(frame[34:end])))

    def translate(self, ip: bytes, port: int) -> tuple[str, int] | None:
        if ip == FORBIDDEN:
            return None
        return socket.inet_ntoa(ip), port

    def alloc(self) -> int:
        self._next_flow += 1
        return self._next_flow

    # --- guest side
    def send(
        self,
        flags: int,
        seq: int,
        ack: int = 0,
        payload: bytes = b"",
        window: int = 65535,
        *,
        sport: int = GPORT,
        dport: int = 80,
        dst: bytes = REMOTE,
        mss: int | None = None,
        wscale: int | None = None,
    ) -> None:
        raw = build_tcp(
            GUEST, dst, sport, dport, seq & M, ack & M, flags, window, payload,
            mss=mss, wscale=wscale,
        )  # fmt: skip
        self.nat.guest_segment(GUEST, dst, raw, self.now)

    def recv(self) -> list[TcpSegment]:
        out = []
        for src, dst, proto, raw in self.sent:
            assert proto == 6
            assert dst == GUEST
            out.append(parse_tcp(raw, src, dst))
        self.sent.clear()
        return out

    def recv_one(self) -> TcpSegment:
        segs = self.recv()
        assert len(segs) == 1, segs
        return segs[0]

    def recv_nothing(self) -> None:
        assert self.recv() == []

    def take(self) -> list[Effect]:
        out = list(self.effects)
        self.effects.clear()
        return out

    # --- host side
    def host(self, ev: Event) -> None:
        self.nat.host_event(ev, self.now)

    # --- time
    def advance(self, ns: int) -> None:
        """Advance the clock by ``ns``, running every timer on its exact deadline."""
        target = self.now + ns
        t = self.nat.poll_at()
        while t is not None and t <= target:
            assert t >= self.now
            self.now = t
            self.nat.tick(t)
            t = self.nat.poll_at()
        self.now = target

    # --- composite
    def open(
        self,
        *,
        window: int = 65535,
        mss: int | None = 1460,
        wscale: int | None = None,
        sport: int = GPORT,
        seq: int = GISN,
    ) -> tuple[int, int]:
        """Handshake; returns (flow, our ISN). The guest's next seq is ``seq + 1``."""
        self.send(SYN, seq, window=window, mss=mss, wscale=wscale, sport=sport)
        (connect,) = self.take()
        assert isinstance(connect, TcpConnect)
        self.recv_nothing()
        self.host(TcpConnected(connect.flow))
        synack = self.recv_one()
        assert synack.flags == SYN | ACK
        assert synack.ack == (seq + 1) & M
        self.send(ACK, seq + 1, synack.seq + 1, window=window, sport=sport)
        self.recv_nothing()
        self.take()
        return connect.flow, synack.seq


def sends(effects: list[Effect]) -> bytes:
    return b"".join(e.data for e in effects if isinstance(e, TcpSend))


def credit(effects: list[Effect]) -> int:
    return sum(e.n for e in effects if isinstance(e, TcpRecvCredit))


# ------------------------------------------------------------------------------ handshake


def test_synack_only_after_host_connected() -> None:
    h = Harness()
    h.send(SYN, GISN, window=64240, mss=1460)
    (eff,) = h.take()
    assert eff == TcpConnect(101, "203.0.113.1", 80)
    h.recv_nothing()
    assert h.nat.owns(101)
    assert h.nat.flows()[0].state == "SYN_PENDING"
    h.advance(5 * SEC)  # nothing is sent while the host connect runs
    h.recv_nothing()
    h.host(TcpConnected(101))
    synack = h.recv_one()
    assert synack.flags == SYN | ACK
    assert synack.ack == (GISN + 1) & M
    assert synack.mss == 1460
    assert synack.wscale is None  # not offered by the guest
    assert not synack.sack_permitted and synack.timestamps is None
    # Credit for the host reader: the guest's (unscaled) SYN window.
    assert h.take() == [TcpRecvCredit(101, 64240)]
    h.send(ACK, GISN + 1, synack.seq + 1)
    h.recv_nothing()
    assert h.nat.flows()[0].state == "ESTABLISHED"
    assert h.counters["tcp_established"] == 1


def test_isn_comes_from_the_rng() -> None:
    a, b = Harness(), Harness()
    _, isn_a = a.open()
    _, isn_b = b.open()
    assert isn_a == isn_b == Prng(7).next_u32()


def test_connect_refused_gives_rst_ack() -> None:
    h = Harness()
    h.send(SYN, GISN, mss=1460)
    (eff,) = h.take()
    assert isinstance(eff, TcpConnect)
    h.host(TcpConnectFailed(eff.flow, errno.ECONNREFUSED))
    rst = h.recv_one()
    assert rst.flags == RST | ACK
    assert rst.ack == (GISN + 1) & M
    assert h.take() == []  # the shell already dropped the flow
    assert not h.nat.owns(eff.flow)
    assert h.counters["tcp_connect_failed"] == 1
    assert h.nat.poll_at() is None


@pytest.mark.parametrize("err", [errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH])
def test_connect_timeouts_also_fail_fast(err: int) -> None:
    h = Harness()
    h.send(SYN, GISN)
    (eff,) = h.take()
    assert isinstance(eff, TcpConnect)
    h.host(TcpConnectFailed(eff.flow, err))
    assert h.recv_one().flags == RST | ACK


def test_restrict_refuses_at_once() -> None:
    h = Harness()
    h.send(SYN, GISN, dst=FORBIDDEN)
    assert h.take() == []
    rst = h.recv_one()
    assert rst.flags == RST | ACK
    assert rst.ack == (GISN + 1) & M
    assert rst.sport == 80 and rst.dport == GPORT
    assert h.counters["tcp_refused_restrict"] == 1
    assert len(h.nat) == 0


def test_duplicate_syn_while_pending_is_ignored() -> None:
    h = Harness()
    h.send(SYN, GISN)
    h.send(SYN, GISN)
    h.send(SYN, GISN)
    assert [type(e) for e in h.take()] == [TcpConnect]
    h.recv_nothing()
    assert h.counters["tcp_syn_dup"] == 2


def test_duplicate_syn_after_synack_resends_it() -> None:
    h = Harness()
    h.send(SYN, GISN)
    h.host(TcpConnected(101))
    first = h.recv_one()
    h.send(SYN, GISN)
    again = h.recv_one()
    assert again.flags == SYN | ACK and again.seq == first.seq


def test_synack_retransmitted_then_given_up() -> None:
    h = Harness()
    h.send(SYN, GISN)
    h.host(TcpConnected(101))
    first = h.recv_one()
    h.take()
    h.advance(999 * MS)
    h.recv_nothing()
    h.advance(1 * MS)
    assert h.recv_one().seq == first.seq
    h.advance(2 * SEC)
    assert h.recv_one().flags == SYN | ACK
    h.advance(60 * SEC)
    segs = h.recv()
    assert segs[-1].flags & RST
    assert h.take()[-1] == TcpClose(101, True)
    assert not h.nat.owns(101)


def test_guest_rst_while_pending_cancels_connect() -> None:
    h = Harness()
    h.send(SYN, GISN)
    h.take()
    h.send(RST, GISN + 1)
    assert h.take() == [TcpClose(101, True)]
    h.host(TcpConnected(101))  # the race: the shell connected anyway
    h.recv_nothing()
    assert h.counters["tcp_stale_event"] == 1


def test_connect_safety_timeout() -> None:
    h = Harness(connect_timeout_ns=30 * SEC)
    h.send(SYN, GISN)
    h.take()
    h.advance(30 * SEC)
    assert h.recv_one().flags == RST | ACK
    assert h.take() == [TcpClose(101, True)]


# ---------------------------------------------------------------------- guest -> host data


def test_guest_data_is_passed_on_and_acked() -> None:
    h = Harness()
    flow, isn = h.open()
    seq = GISN + 1
    h.send(ACK | PSH, seq, isn + 1, b"hello")
    assert h.take() == [TcpSend(flow, b"hello")]
    h.recv_nothing()  # a single small segment: the ACK is delayed
    h.advance(5 * MS)
    ack = h.recv_one()
    assert ack.flags == ACK and ack.ack == (seq + 5) & M
    assert ack.window == 65535  # no scaling: capped at 16 bits


def test_acks_are_coalesced_every_two_full_segments() -> None:
    h = Harness()
    _flow, isn = h.open()
    seq = GISN + 1
    data = bytes(range(256)) * 40
    for i in range(6):
        h.send(ACK, seq + i * 1460, isn + 1, data[i * 1460 : (i + 1) * 1460])
    acks = h.recv()
    assert [a.ack for a in acks] == [(seq + 2920 * k) & M for k in (1, 2, 3)]
    assert sends(h.take()) == data[: 6 * 1460]


def test_receive_window_shrinks_with_unsent_host_bytes_and_reopens() -> None:
    h = Harness(buffer_size=8000)
    flow, isn = h.open()
    seq = GISN + 1
    h.send(ACK, seq, isn + 1, b"a" * 3000)
    h.send(ACK, seq + 3000, isn + 1, b"b" * 3000)
    acks = h.recv()
    assert acks[-1].window == 2000
    # Beyond the window: trimmed to it.
    h.send(ACK, seq + 6000, isn + 1, b"c" * 3000)
    assert sends(h.take()) == b"a" * 3000 + b"b" * 3000 + b"c" * 2000
    h.advance(5 * MS)
    ack = h.recv_one()
    assert ack.ack == (seq + 8000) & M and ack.window == 0
    assert h.counters["tcp_beyond_window"] == 1
    # Zero window: the probe is answered, the byte dropped.
    h.send(ACK, seq + 8000, isn + 1, b"d")
    ack = h.recv_one()
    assert ack.ack == (seq + 8000) & M and ack.window == 0
    assert h.take() == []
    # The host socket takes bytes: a window update follows.
    h.host(TcpSent(flow, 5000))
    upd = h.recv_one()
    assert upd.window == 5000 and upd.ack == (seq + 8000) & M
    h.host(TcpSent(flow, 1))  # opening by one byte is not worth a segment
    h.recv_nothing()


def test_out_of_order_and_duplicates() -> None:
    h = Harness()
    flow, isn = h.open()
    seq = GISN + 1
    h.send(ACK, seq + 10, isn + 1, b"B" * 10)
    h.send(ACK, seq + 30, isn + 1, b"D" * 10)
    dup = h.recv()
    assert [a.ack for a in dup] == [(seq) & M] * 2  # duplicate ACKs for the hole
    assert h.take() == []
    h.send(ACK, seq + 10, isn + 1, b"B" * 10)  # duplicate out-of-order segment
    h.recv()
    h.send(ACK, seq, isn + 1, b"A" * 10)
    assert h.take() == [TcpSend(flow, b"A" * 10 + b"B" * 10)]
    assert h.recv_one().ack == (seq + 20) & M  # a hole was filled: ACK at once
    h.send(ACK, seq + 15, isn + 1, b"B" * 5 + b"C" * 10)  # overlaps the front
    assert h.take() == [TcpSend(flow, b"C" * 10 + b"D" * 10)]
    assert h.recv_one().ack == (seq + 40) & M
    h.send(ACK, seq, isn + 1, b"A" * 10)  # old duplicate
    assert h.take() == []
    assert h.recv_one().ack == (seq + 40) & M
    assert h.counters["tcp_dup_data"] == 2
    assert h.nat.flows()[0].recv_q == 40
    # An in-order segment that overlaps a queued one: each byte is passed on once.
    h.send(ACK, seq + 50, isn + 1, b"F" * 10)
    h.send(ACK, seq + 40, isn + 1, b"E" * 10 + b"F" * 5)
    assert h.take() == [TcpSend(flow, b"E" * 10 + b"F" * 10)]


def test_out_of_order_fin_waits_for_the_gap() -> None:
    h = Harness()
    flow, isn = h.open()
    seq = GISN + 1
    h.send(ACK | FIN, seq + 5, isn + 1, b"world")
    h.recv()
    assert h.take() == []
    h.send(ACK, seq, isn + 1, b"hello")
    assert h.take() == [TcpSend(flow, b"helloworld"), TcpShutdown(flow)]
    assert h.recv_one().ack == (seq + 11) & M


# ---------------------------------------------------------------------- host -> guest data


def test_host_data_segmented_by_mss_within_window() -> None:
    h = Harness()
    flow, isn = h.open(window=3000, mss=1000)
    h.take()
    h.host(TcpData(flow, b"x" * 2500))
    segs = h.recv()
    assert [len(s.payload) for s in segs] == [1000, 1000, 500]
    assert [s.seq for s in segs] == [(isn + 1 + k) & M for k in (0, 1000, 2000)]
    assert segs[-1].flags == ACK | PSH and segs[0].flags == ACK
    assert all(s.ack == (GISN + 1) & M for s in segs)
    h.host(TcpData(flow, b"y" * 1000))
    (seg,) = h.recv()
    assert len(seg.payload) == 500  # the guest's window ends here
    h.send(ACK, GISN + 1, isn + 1 + 3000, window=3000)
    (seg,) = h.recv()
    assert seg.payload == b"y" * 500


def test_credit_never_exceeds_guest_window_or_buffer() -> None:
    h = Harness(buffer_size=10000)
    h.send(SYN, GISN, window=4000, mss=1460)
    h.take()
    h.host(TcpConnected(101))
    synack = h.recv_one()
    assert h.take() == [TcpRecvCredit(101, 4000)]
    isn = synack.seq
    h.send(ACK, GISN + 1, isn + 1, window=30000)
    assert credit(h.take()) == 6000  # the buffer (10000) limits now
    h.host(TcpData(101, b"z" * 10000))
    assert len(h.recv()) == 7
    h.send(ACK, GISN + 1, isn + 1 + 1460, window=30000)
    assert credit(h.take()) == 0  # below a quarter of the limit: wait for more room
    h.send(ACK, GISN + 1, isn + 1 + 5000, window=30000)
    assert credit(h.take()) == 5000
    h.send(ACK, GISN + 1, isn + 1 + 10000, window=2000)
    assert credit(h.take()) == 0  # 5000 credit outstanding > new window: no more
    h.host(TcpData(101, b"w" * 5000))
    assert sum(len(s.payload) for s in h.recv()) == 2000
    assert h.counters["tcp_credit_overrun"] == 0


def test_guest_mss_and_default_mss() -> None:
    h = Harness(mtu=1400)
    flow, _ = h.open(mss=9000)
    assert h.nat.mss == 1360
    h.host(TcpData(flow, b"a" * 3000))
    assert [len(s.payload) for s in h.recv()] == [1360, 1360, 280]
    h2 = Harness()
    flow2, _ = h2.open(mss=None)
    h2.host(TcpData(flow2, b"a" * 1000))
    assert [len(s.payload) for s in h2.recv()] == [536, 464]


def test_synack_advertises_our_mss() -> None:
    h = Harness(mtu=9000)
    h.send(SYN, GISN, mss=1460)
    h.host(TcpConnected(101))
    assert h.recv_one().mss == 8960


def test_window_scaling_both_ways() -> None:
    h = Harness(buffer_size=256 * 1024)
    h.send(SYN, GISN, window=65535, mss=1460, wscale=7)
    h.host(TcpConnected(101))
    synack = h.recv_one()
    assert synack.wscale == 3  # 256 KiB >> 3 fits 16 bits
    assert synack.window == 65535  # never scaled in a SYN
    isn = synack.seq
    h.take()
    h.send(ACK, GISN + 1, isn + 1, window=1000)  # 1000 << 7 = 128000
    assert credit(h.take()) == 128000 - 65535
    h.send(ACK, GISN + 1, isn + 1, b"q" * 100, window=1000)
    h.advance(5 * MS)
    ack = h.recv_one()
    assert ack.window == (256 * 1024 - 100) >> 3
    h.host(TcpData(101, b"r" * 128000))
    assert sum(len(s.payload) for s in h.recv()) == 128000


def test_no_scaling_when_guest_does_not_offer_it() -> None:
    h = Harness(buffer_size=256 * 1024)
    _flow, isn = h.open(window=65535, wscale=None)
    h.send(ACK, GISN + 1, isn + 1, b"q", window=65535)
    h.advance(5 * MS)
    assert h.recv_one().window == 65535


# ------------------------------------------------------------------------------- timers


def test_retransmission_with_backoff_then_give_up() -> None:
    h = Harness()
    flow, _isn = h.open()
    h.host(TcpData(flow, b"payload"))
    first = h.recv_one()
    t0 = h.now
    times = []
    for _ in range(6):
        deadline = h.nat.poll_at()
        assert deadline is not None
        h.advance(deadline - h.now - 1)
        h.recv_nothing()
        h.advance(1)
        seg = h.recv_one()
        assert seg.seq == first.seq and seg.payload == b"payload"
        times.append(h.now - t0)
    # The handshake's RTT sample was 0: the first RTO is the 200 ms floor, then doubling.
    assert times[0] == 200 * MS
    gaps = [b - a for a, b in zip([0, *times], times, strict=False)]
    assert gaps == [200 * MS * 2**k for k in range(6)]
    assert h.counters["tcp_retransmits"] == 6
    h.advance(150 * SEC)
    assert h.nat.owns(flow)
    h.advance(150 * SEC)  # given up ~3 minutes after the first retransmission
    segs = h.recv()
    assert segs[-1].flags & RST
    assert h.take()[-1] == TcpClose(flow, True)
    assert h.counters["tcp_retransmit_give_up"] == 1
    assert not h.nat.owns(flow)
    assert h.nat.poll_at() is None


def test_rto_from_rtt_estimate_and_ack_stops_it() -> None:
    h = Harness()
    flow, isn = h.open()
    h.host(TcpData(flow, b"a"))
    h.recv_one()
    h.advance(10 * MS)
    h.send(ACK, GISN + 1, isn + 2)
    assert h.nat.poll_at() is None  # nothing outstanding, no timer at all
    h.host(TcpData(flow, b"b"))
    h.recv_one()
    assert h.nat.poll_at() == h.now + 200 * MS  # RTT ~ 0: the 200 ms floor
    h.advance(200 * MS)
    assert h.recv_one().payload == b"b"


def test_fast_retransmit_on_three_dup_acks() -> None:
    h = Harness()
    flow, isn = h.open()
    h.host(TcpData(flow, b"0123456789" * 600))
    segs = h.recv()
    assert len(segs) == 5
    for _ in range(3):
        h.send(ACK, GISN + 1, isn + 1)
    (rtx,) = h.recv()
    assert rtx.seq == (isn + 1) & M and len(rtx.payload) == 1460
    # Partial ACK: the next hole is resent at once.
    h.send(ACK, GISN + 1, isn + 1 + 1460)
    (rtx2,) = h.recv()
    assert rtx2.seq == (isn + 1 + 1460) & M
    assert h.counters["tcp_fast_retransmits"] == 2


def test_zero_window_persist_probe() -> None:
    h = Harness()
    flow, isn = h.open(window=1000)
    h.host(TcpData(flow, b"x" * 1000))
    h.recv()
    h.send(ACK, GISN + 1, isn + 1 + 1000, window=0)
    h.host(TcpData(flow, b"y" * 300))  # credit granted before the window closed
    h.recv_nothing()
    deadline = h.nat.poll_at()
    assert deadline is not None
    first = deadline - h.now
    h.advance(first)
    probe = h.recv_one()
    assert probe.payload == b"y" and probe.seq == (isn + 1001) & M
    h.send(ACK, GISN + 1, isn + 1 + 1000, window=0)
    nxt = h.nat.poll_at()
    assert nxt is not None and nxt - h.now == 2 * first  # backoff
    h.advance(nxt - h.now)
    assert h.recv_one().payload == b"y"
    assert h.counters["tcp_persist_probes"] == 2
    h.advance(10 * 60 * SEC)  # persist never gives up
    assert h.nat.owns(flow)
    h.recv()
    h.send(ACK, GISN + 1, isn + 1 + 1000, window=5000)
    seg = h.recv_one()
    assert seg.payload == b"y" * 300


def test_zero_window_without_data_probes_below_the_window() -> None:
    h = Harness()
    _flow, isn = h.open(window=1000)
    h.send(ACK, GISN + 1, isn + 1, window=0)
    h.take()
    deadline = h.nat.poll_at()
    assert deadline is not None
    h.advance(deadline - h.now)
    probe = h.recv_one()
    assert probe.payload == b"" and probe.seq == isn & M
    h.send(ACK, GISN + 1, isn + 1, window=8000)
    assert credit(h.take()) == 7000  # 1000 of the first grant is still unused
    assert h.nat.poll_at() is None


def test_idle_established_flow_has_no_timer() -> None:
    h = Harness()
    flow, _isn = h.open()
    assert h.nat.poll_at() is None
    h.advance(3600 * SEC)
    assert h.nat.owns(flow)
    h.recv_nothing()
    assert h.nat.flows()[0].idle_ns == 0
    assert h.nat.flows(h.now)[0].idle_ns == 3600 * SEC


# ------------------------------------------------------------------------------- closing


def test_guest_half_close_then_host_keeps_sending() -> None:
    h = Harness()
    flow, isn = h.open()
    seq = GISN + 1
    h.send(ACK | PSH | FIN, seq, isn + 1, b"request")
    assert h.take() == [TcpSend(flow, b"request"), TcpShutdown(flow)]
    assert h.recv_one().ack == (seq + 8) & M
    assert h.nat.flows()[0].state == "CLOSE_WAIT"
    h.host(TcpData(flow, b"response"))
    data = h.recv_one()
    assert data.payload == b"response"
    h.host(TcpEof(flow))
    fin = h.recv_one()
    assert fin.flags & FIN and fin.seq == (isn + 9) & M
    assert h.nat.flows()[0].state == "LAST_ACK"
    h.send(ACK, seq + 8, isn + 10)
    # The host socket has not confirmed the request yet: it drains first.
    assert h.take() == []
    assert h.nat.flows()[0].state == "DRAINING"
    h.host(TcpSent(flow, 7))
    assert h.take() == [TcpClose(flow, False)]
    assert len(h.nat) == 0


def test_host_eof_fin_after_data_then_time_wait() -> None:
    h = Harness()
    flow, isn = h.open()
    seq = GISN + 1
    h.host(TcpData(flow, b"bye"))
    h.host(TcpEof(flow))
    segs = h.recv()
    assert b"".join(s.payload for s in segs) == b"bye"
    assert segs[-1].flags & FIN
    h.send(ACK, seq, isn + 5)
    assert h.nat.flows()[0].state == "FIN_WAIT_2"
    h.send(ACK, seq, isn + 5, b"more")  # half-closed: the guest may still send
    assert h.take() == [TcpSend(flow, b"more")]
    h.host(TcpSent(flow, 4))
    h.send(ACK | FIN, seq + 4, isn + 5)
    assert h.take() == [TcpShutdown(flow)]
    assert h.recv()[-1].ack == (seq + 5) & M
    assert h.nat.flows()[0].state == "TIME_WAIT"
    h.send(ACK | FIN, seq + 4, isn + 5)  # retransmitted FIN: ACKed again
    assert h.recv_one().ack == (seq + 5) & M
    h.advance(2 * SEC)
    assert h.take() == [TcpClose(flow, False)]
    assert len(h.nat) == 0


def test_time_wait_reused_by_new_syn() -> None:
    h = Harness()
    flow, isn = h.open()
    h.host(TcpEof(flow))
    h.recv()
    h.send(ACK | FIN, GISN + 1, isn + 2)
    h.recv()
    assert h.nat.flows()[0].state == "TIME_WAIT"
    h.take()
    h.send(SYN, GISN + 100000)
    effects = h.take()
    assert effects[0] == TcpClose(flow, False)
    assert isinstance(effects[1], TcpConnect)


def test_guest_rst_aborts_host() -> None:
    h = Harness()
    flow, isn = h.open()
    h.send(RST, GISN + 1 + 100000)  # out of window: ignored
    assert h.take() == []
    h.send(RST, GISN + 1)
    assert h.take() == [TcpClose(flow, True)]
    assert not h.nat.owns(flow)
    h.send(ACK, GISN + 1, isn + 1, b"late")  # now an unknown flow
    rst = h.recv_one()
    assert rst.flags == RST and rst.seq == (isn + 1) & M
    h.host(TcpData(flow, b"late"))
    assert h.counters["tcp_stale_event"] == 1


def test_host_reset_resets_guest() -> None:
    h = Harness()
    flow, isn = h.open()
    h.host(TcpReset(flow, errno.ECONNRESET))
    rst = h.recv_one()
    assert rst.flags & RST and rst.seq == (isn + 1) & M
    assert h.take() == [TcpClose(flow, True)]
    assert not h.nat.owns(flow)


def test_host_reset_after_data_delivers_data_first() -> None:
    h = Harness()
    flow, isn = h.open()
    h.host(TcpData(flow, b"last words"))
    assert h.recv_one().payload == b"last words"
    h.host(TcpReset(flow, errno.ECONNRESET))
    assert h.take() == [TcpClose(flow, True)]
    h.recv_nothing()
    h.send(ACK, GISN + 1, isn + 11)
    rst = h.recv_one()
    assert rst.flags & RST and rst.seq == (isn + 11) & M
    assert not h.nat.owns(flow)
    assert h.take() == []


# -------------------------------------------------------------------------------- bounds


def test_table_full() -> None:
    h = Harness(max_flows=2)
    h.open(sport=1000)
    h.open(sport=1001)
    h.send(SYN, 5, sport=1002)
    assert h.take() == []
    rst = h.recv_one()
    assert rst.flags == RST | ACK and rst.ack == 6
    assert h.counters["tcp_table_full"] == 1


def test_half_open_full() -> None:
    h = Harness(max_half_open=2)
    h.send(SYN, 1, sport=1000)
    h.send(SYN, 1, sport=1001)
    h.send(SYN, 1, sport=1002)
    assert len(h.take()) == 2
    assert h.recv_one().flags == RST | ACK
    assert h.counters["tcp_half_open_full"] == 1
    h.host(TcpConnected(101))
    synack = h.recv_one()
    h.send(ACK, 2, synack.seq + 1, sport=1000)  # established: no longer half-open
    h.send(SYN, 1, sport=1003)
    assert [type(e) for e in h.take()] == [TcpRecvCredit, TcpConnect]


def test_unknown_flow_gets_rst() -> None:
    h = Harness()
    h.send(ACK, 1000, 5000, b"x")
    rst = h.recv_one()
    assert rst.flags == RST and rst.seq == 5000
    h.send(FIN, 1000, 0, b"abc")
    rst = h.recv_one()
    assert rst.flags == RST | ACK and rst.ack == 1004 and rst.seq == 0
    h.send(RST, 1000)
    h.recv_nothing()
    h.send(RST | ACK, 1000, 7)
    h.recv_nothing()
    assert h.counters["tcp_unknown_flow"] == 2
    assert h.counters["tcp_rst_unknown"] == 2
    assert h.take() == []


def test_malformed_segment_raises() -> None:
    h = Harness()
    raw = bytearray(build_tcp(GUEST, REMOTE, 1, 2, 3, 4, SYN, 5))
    raw[4] ^= 0xFF
    with pytest.raises(MalformedFrame):
        h.nat.guest_segment(GUEST, REMOTE, bytes(raw), h.now)
    assert len(h.nat) == 0


def test_ooo_buffer_bounded_by_window() -> None:
    h = Harness(buffer_size=4000, max_ooo_segments=3)
    _flow, isn = h.open()
    seq = GISN + 1
    for k in range(1, 6):
        h.send(ACK, seq + 100 * k, isn + 1, b"o" * 50)
    assert h.counters["tcp_ooo_queued"] == 3
    assert h.counters["tcp_ooo_full"] == 2
    h.send(ACK, seq + 10000, isn + 1, b"o" * 50)
    assert h.counters["tcp_out_of_window"] == 1
    assert h.nat.flows()[0].recv_q == 150


def test_flows_info() -> None:
    h = Harness()
    flow, _isn = h.open()
    h.host(TcpData(flow, b"12345"))
    (info,) = h.nat.flows()
    assert info.flow == flow
    assert (info.guest_ip, info.guest_port, info.dst_ip, info.dst_port) == (
        GUEST,
        GPORT,
        REMOTE,
        80,
    )
    assert (info.host, info.host_port) == ("203.0.113.1", 80)
    assert info.send_q == 5 and info.recv_q == 0


def test_a_session_gives_the_expected_segments_twice() -> None:
    data = bytes(range(256)) * 20

    def run() -> list[Any]:
        h = Harness()
        flow, isn = h.open(wscale=5)
        h.host(TcpData(flow, data))
        burst = h.recv()
        # The host's bytes in MSS-sized segments from our ISN + 1, the last one pushed.
        assert [((s.seq - isn - 1) & M, len(s.payload)) for s in burst] == [
            (0, 1460), (1460, 1460), (2920, 1460), (4380, 740)]
        assert b"".join(s.payload for s in burst) == data
        assert [s.flags for s in burst] == [ACK, ACK, ACK, ACK | PSH]
        assert all(s.ack == (GISN + 1) & M for s in burst)
        # The guest acknowledges 99 bytes and sends three: passed on as they are.
        h.send(ACK, GISN + 1, isn + 100, b"abc")
        assert h.take() == [TcpSend(flow, b"abc")]
        h.advance(3 * SEC)
        later = h.recv()
        # The delayed ACK of "abc", then the unacknowledged bytes again from the first one
        # not acknowledged, backing off (never the acknowledged 99 bytes).
        assert later[0].payload == b"" and later[0].ack == (GISN + 4) & M
        rtx = later[1:]
        assert len(rtx) >= 2
        assert all(s.seq == (isn + 100) & M and s.payload == data[99 : 99 + 1460] for s in rtx)
        assert h.take() == []
        return [*burst, *later]

    assert run() == run()


# ----------------------------------------------------------------------- stateful fuzzing


def _bucket(n: int) -> str:
    return "0" if n == 0 else "<10k" if n < 10_000 else ">=10k"


class OneConnection(RuleBasedStateMachine):
    """A sloppy guest (reordering, duplicating, dropping, changing windows) and a host
    shell that honours credit, driving one connection. Bytes must arrive intact both ways."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(buffer_size=20000)
        self.alive = False

    @initialize(
        gisn=st.integers(0, M),
        wscale=st.none() | st.integers(0, 6),
        mss=st.none() | st.integers(100, 1460),
        window=st.integers(0, 40000),
    )
    def connect(self, gisn: int, wscale: int | None, mss: int | None, window: int) -> None:
        h = self.h
        self.gisn = gisn
        self.gws = wscale or 0
        self.gwin = window
        h.send(SYN, gisn, window=min(window, 65535), mss=mss, wscale=wscale)
        (eff,) = h.take()
        assert isinstance(eff, TcpConnect)
        self.flow = eff.flow
        h.host(TcpConnected(self.flow))
        synack = h.recv_one()
        self.isn = synack.seq
        self.our_window = synack.window
        self.credit = 0
        self.host_unsent = 0
        self.host_stream = bytearray()  # host -> guest
        self.host_got = bytearray()  # guest -> host, as TcpSend delivered it
        self.guest_stream = bytearray()  # guest -> host
        self.guest_got = bytearray()  # host -> guest, reassembled in the guest
        self.guest_ooo: dict[int, bytes] = {}
        self.guest_una = 0  # our ACK of guest data (stream offset)
        self.wire: list[TcpSegment] = []  # NAT -> guest, not yet delivered
        self.alive = True
        self.counter = 0
        self._collect()
        self._guest_ack()

    # --- plumbing
    def _collect(self) -> None:
        for eff in self.h.take():
            if isinstance(eff, TcpSend):
                self.host_got += eff.data
                self.host_unsent += len(eff.data)
            elif isinstance(eff, TcpRecvCredit):
                self.credit += eff.n
            elif isinstance(eff, TcpClose):
                raise AssertionError(f"unexpected close {eff}")
        for seg in self.h.recv():
            assert not seg.flags & RST, seg
            self.wire.append(seg)
            rel = (seg.ack - self.gisn - 1) & M
            if seg.flags & ACK and rel <= len(self.guest_stream):
                self.guest_una = max(self.guest_una, rel)
                self.our_window = seg.window

    def _guest_ack(self) -> None:
        self.h.send(
            ACK,
            self.gisn + 1 + self.guest_una,
            self.isn + 1 + len(self.guest_got),
            window=min(self.gwin >> self.gws, 65535),
        )
        self._collect()

    # --- guest actions
    @rule(data=st.binary(min_size=1, max_size=3000))
    def guest_write(self, data: bytes) -> None:
        self.guest_stream += data

    @precondition(lambda self: len(self.guest_stream) > 0)
    @rule(start=st.integers(0, 10**6), length=st.integers(1, 800))
    def guest_send(self, start: int, length: int) -> None:
        lo = max(0, self.guest_una - 500)
        off = lo + start % (len(self.guest_stream) - lo + 1)
        chunk = bytes(self.guest_stream[off : off + length])
        if not chunk:
            return
        self.h.send(
            ACK,
            self.gisn + 1 + off,
            self.isn + 1 + len(self.guest_got),
            chunk,
            window=min(self.gwin >> self.gws, 65535),
        )
        self._collect()

    @rule(window=st.integers(0, 60000))
    def guest_window(self, window: int) -> None:
        self.gwin = window
        self._guest_ack()

    @precondition(lambda self: len(self.wire) > 0)
    @rule(index=st.integers(0, 10**6), action=st.sampled_from(["deliver", "drop", "dup"]))
    def wire_to_guest(self, index: int, action: str) -> None:
        i = index % len(self.wire)
        seg = self.wire[i] if action == "dup" else self.wire.pop(i)
        if action == "drop":
            return
        rel = (seg.seq - self.isn - 1) & M
        have = len(self.guest_got)
        if seg.payload and rel < have + self.gwin and rel + len(seg.payload) > have:
            self.guest_ooo[rel] = seg.payload[: have + self.gwin - rel]
            progressed = True
            while progressed:
                progressed = False
                for start, data in list(self.guest_ooo.items()):
                    if start <= len(self.guest_got):
                        del self.guest_ooo[start]
                        tail = data[len(self.guest_got) - start :]
                        if tail:
                            self.guest_got += tail
                            progressed = True
        self._guest_ack()

    # --- host actions
    @precondition(lambda self: self.credit > 0)
    @rule(n=st.integers(1, 30000), byte=st.integers(0, 255))
    def host_data(self, n: int, byte: int) -> None:
        n = min(n, self.credit)
        self.counter += 1
        data = bytes([(byte + i + self.counter) & 0xFF for i in range(n)])
        self.credit -= n
        self.host_stream += data
        self.h.host(TcpData(self.flow, data))
        self._collect()

    @precondition(lambda self: self.host_unsent > 0)
    @rule(n=st.integers(1, 30000))
    def host_sent(self, n: int) -> None:
        n = min(n, self.host_unsent)
        self.host_unsent -= n
        self.h.host(TcpSent(self.flow, n))
        self._collect()

    @rule(ms=st.integers(1, 2000))
    def time_passes(self, ms: int) -> None:
        self.h.advance(ms * MS)
        self._collect()

    @rule()
    def flush(self) -> None:
        """A well-behaved guest and host until everything has arrived."""
        self.gwin = 60000
        for _ in range(400):
            if self.host_unsent:
                self.h.host(TcpSent(self.flow, self.host_unsent))
                self.host_unsent = 0
            self._guest_ack()
            off = self.guest_una
            while off < len(self.guest_stream):
                chunk = bytes(self.guest_stream[off : off + 1000])
                self.h.send(
                    ACK,
                    self.gisn + 1 + off,
                    self.isn + 1 + len(self.guest_got),
                    chunk,
                    window=min(self.gwin >> self.gws, 65535),
                )
                off += len(chunk)
            self._collect()
            while self.wire:
                self.wire_to_guest(0, "deliver")
            if self.host_got == self.guest_stream and self.guest_got == self.host_stream:
                break
            self.h.advance(300 * MS)
            self._collect()
        assert bytes(self.host_got) == bytes(self.guest_stream)
        assert bytes(self.guest_got) == bytes(self.host_stream)
        event("flush: guest->host " + _bucket(len(self.host_got)))
        event("flush: host->guest " + _bucket(len(self.guest_got)))
        for name in ("tcp_ooo_queued", "tcp_retransmits", "tcp_fast_retransmits", "tcp_dup_data"):
            event(f"{name} {'yes' if self.h.counters[name] else 'no'}")

    def teardown(self) -> None:
        if self.alive:
            self.flush()

    @invariant()
    def streams_are_prefixes(self) -> None:
        if not self.alive:
            return
        assert self.guest_stream.startswith(self.host_got)
        assert self.host_stream.startswith(self.guest_got)
        (info,) = self.h.nat.flows()
        assert info.send_q <= 20000
        assert self.h.counters["tcp_credit_overrun"] == 0
        assert self.h.counters["tcp_retransmit_give_up"] == 0


OneConnection.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestOneConnection = OneConnection.TestCase

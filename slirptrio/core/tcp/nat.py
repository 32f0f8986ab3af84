"""The TCP NAT's table of entries and its handling of guest segments, host events and timers
(the package docstring is the theory of operation)."""

from __future__ import annotations

import bisect
import collections
import heapq
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from slirptrio.core import snapshot as snap
from slirptrio.core import tcp as params
from slirptrio.core.events import (
    Effect,
    Event,
    TcpClose,
    TcpConnect,
    TcpConnected,
    TcpConnectFailed,
    TcpData,
    TcpDataSent,
    TcpEof,
    TcpRecvCredit,
    TcpReset,
    TcpSend,
    TcpSent,
    TcpShutdown,
)
from slirptrio.core.info import FlowInfo
from slirptrio.core.martian import LOOPBACK, classify_ipv4
from slirptrio.core.prng import Prng
from slirptrio.core.tcp import lifecycle, memory, timers
from slirptrio.core.tcp.conn import CONN_CODECS, Key, _Conn, state_name
from slirptrio.core.tcp.lifecycle import HALF_OPEN, Phase, Trigger
from slirptrio.wire.tcp import ACK, FIN, PSH, RST, SYN, URG, TcpSegment, build_tcp, parse_tcp

log = logging.getLogger("slirptrio.core.tcp")

_M = 0xFFFFFFFF
_HALF = 0x80000000

_SYN_SENT = Phase.SYN_SENT
_PENDING = Phase.SYN_PENDING
_SYN_RCVD = Phase.SYN_RECEIVED
_SYNCED = Phase.SYNCED
_TIME_WAIT = Phase.TIME_WAIT
_DRAINING = Phase.DRAINING
_GONE = Phase.CLOSED


class TcpNat:
    """TCP NAT for one guest.

    Args:
      rng: the stack's PRNG (initial sequence numbers).
      send_ip: ``send_ip(src4, dst4, 6, segment)`` queues a TCP segment to the guest.
      send_tcp: ``send_tcp(src4, dst4, sport, dport, seq, ack, window, buf, start, length,
        mss, flags, last_flags)`` queues the segments (no options) carrying
        ``buf[start:start + length]``, ``mss`` bytes at most each, to the guest: the data
        path's way out (:meth:`slirptrio.core.stack.Stack.send_tcp`).
      emit: receives the host-side effects (``TcpConnect`` ... ``TcpClose``).
      translate: ``translate(dst4, dport) -> (host, port) | None`` (None: refused, RST).
      alloc_flow: returns a new flow id (shared with every other host flow).
      counters: where ``tcp_*`` counts go.
      mtu: the guest link MTU; our MSS is ``mtu - 40`` (``mtu - 60`` over IPv6: addresses of
        16 bytes make an IPv6 entry; everything else is the same).
      max_flows, max_half_open: table bounds.
      buffer_size: per direction and entry: receive window and send buffer.
      mem_budget: bytes all entries together may commit (None: no limit); see "Memory".
    """

    def __init__(
        self,
        *,
        rng: Prng,
        send_ip: Callable[[bytes, bytes, int, bytes], None],
        send_tcp: Callable[..., None],
        emit: Callable[[Effect], None],
        translate: Callable[[bytes, int], tuple[str, int] | None],
        alloc_flow: Callable[[], int],
        counters: collections.Counter[str],
        mtu: int = 1500,
        max_flows: int = params.MAX_FLOWS,
        max_half_open: int = params.MAX_HALF_OPEN,
        buffer_size: int = params.BUFFER_SIZE,
        rto_min_ns: int = params.RTO_MIN_NS,
        delack_ns: int = params.DELACK_NS,
        give_up_ns: int = params.GIVE_UP_NS,
        syn_give_up_ns: int = params.SYN_GIVE_UP_NS,
        fin_give_up_ns: int = params.FIN_GIVE_UP_NS,
        time_wait_ns: int = params.TIME_WAIT_NS,
        connect_timeout_ns: int = params.CONNECT_TIMEOUT_NS,
        pressure_connect_timeout_ns: int = params.PRESSURE_CONNECT_TIMEOUT_NS,
        drain_timeout_ns: int = params.DRAIN_TIMEOUT_NS,
        max_ooo_segments: int = params.MAX_OOO_SEGMENTS,
        mem_budget: int | None = None,
    ) -> None:
        self._rng = rng
        self._send_ip = send_ip
        self._send_tcp = send_tcp
        self._emit = emit
        self._translate = translate
        self._alloc_flow = alloc_flow
        self.counters = counters
        self.mss = max(64, mtu - 40)
        self.mss6 = max(64, mtu - 60)  # IPv6's fixed header is 20 bytes longer
        self.max_flows = max(1, max_flows)
        self.max_half_open = max(1, max_half_open)
        self.buffer_size = max(1, buffer_size)
        self.rto_min_ns = rto_min_ns
        self.delack_ns = delack_ns
        self.give_up_ns = give_up_ns
        self.syn_give_up_ns = syn_give_up_ns
        self.fin_give_up_ns = fin_give_up_ns
        self.time_wait_ns = time_wait_ns
        self.connect_timeout_ns = connect_timeout_ns
        self.pressure_connect_timeout_ns = pressure_connect_timeout_ns
        self.drain_timeout_ns = drain_timeout_ns
        self.max_ooo_segments = max_ooo_segments
        self.mem_budget = max(1, mem_budget) if mem_budget is not None else 1 << 62
        self.mem_soft = self.mem_budget // 2
        self.mem_used = 0  # bytes committed by every entry (see memory.commit)
        shift = 0
        while (self.buffer_size >> shift) > 0xFFFF and shift < 14:
            shift += 1
        self.wscale = shift
        self._by_key: dict[Key, _Conn] = {}
        self._by_flow: dict[int, _Conn] = {}
        self._half_open = 0
        # Guest-initiated half-open entries (SYN_PENDING, SYN_RECEIVED), oldest first, and
        # their count per destination address.
        self._embryos: dict[int, _Conn] = {}
        self._embryos_to: dict[bytes, int] = {}
        self.max_half_open_per_dest = max(8, self.max_half_open // params.HALF_OPEN_DEST_SHARE)
        self._pressure_mark = max(1, self.max_half_open // params.HALF_OPEN_PRESSURE)
        self._timers: list[tuple[int, int]] = []
        self._now = 0
        # The lean path for a host read toward an established entry (see _lean_read); False:
        # every read takes the general path (the reference, which the tests compare it with).
        self.lean = True

    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "_rng", "_send_ip", "_send_tcp", "_emit", "_translate", "_alloc_flow", "counters", "mss",
        "mss6",
        "max_flows", "max_half_open", "buffer_size", "rto_min_ns", "delack_ns", "give_up_ns",
        "syn_give_up_ns", "fin_give_up_ns", "time_wait_ns", "connect_timeout_ns",
        "drain_timeout_ns", "max_ooo_segments", "wscale", "pressure_connect_timeout_ns",
        "mem_budget", "mem_soft", "max_half_open_per_dest", "_pressure_mark", "lean",
    })  # fmt: skip
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({
        "_timers", "_embryos_to", "mem_used",
    })  # fmt: skip

    def __len__(self) -> int:
        return len(self._by_flow)

    def snapshot_state(self) -> dict[str, Any]:
        """Every entry (in table order) with its buffers, sequence numbers and timers."""
        skip = _Conn._SNAPSHOT_DERIVED
        return {
            "_by_flow": [snap.dump_slots(c, CONN_CODECS, skip) for c in self._by_flow.values()],
            "_by_key": [c.flow for c in self._by_key.values()],
            "_half_open": self._half_open,
            "_embryos": list(self._embryos),
            "_now": self._now,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        by_flow: dict[int, _Conn] = {}
        for raw in state["_by_flow"]:
            c = snap.load_slots(_Conn, raw, CONN_CODECS)
            c.key = (c.guest_ip, c.guest_port, c.dst_ip, c.dst_port)
            c.armed_at = None
            by_flow[c.flow] = c
        self._by_flow = by_flow
        self._by_key = {by_flow[f].key: by_flow[f] for f in state["_by_key"]}
        self._half_open = state["_half_open"]
        self._embryos = {f: by_flow[f] for f in state["_embryos"]}
        self._embryos_to = {}
        for c in self._embryos.values():
            self._embryos_to[c.dst_ip] = self._embryos_to.get(c.dst_ip, 0) + 1
        self.mem_used = sum(c.charged for c in by_flow.values())
        self._now = state["_now"]
        # Stale heap keys (deadlines since moved) only ever fire an entry with nothing due, so
        # a heap holding each entry once, at its true deadline, gives the same effects.
        self._timers = []
        for c in by_flow.values():
            self._rearm(c)

    # ------------------------------------------------------------------------ public face

    def guest_segment(self, src4: bytes, dst4: bytes, tcp: bytes | memoryview, now_ns: int) -> None:
        """A TCP segment from the guest; raises MalformedFrame if it does not parse."""
        seg = parse_tcp(tcp, src4, dst4)
        self.segment((src4, seg.sport, dst4, seg.dport), seg, now_ns)

    def segment(self, key: Key, seg: TcpSegment, now_ns: int, last_off: int = 0) -> None:
        """A parsed segment from the guest; ``key`` is (source address, source port,
        destination address, destination port).

        A segment coalesced from several in-order ones (the stack's GRO) carries the last
        one's acknowledgement and window, and ``last_off``, how far into it the last one
        started: the window is then taken as the last segment's (RFC 9293's SND.WL1 is its
        sequence number). Otherwise it is handled exactly as if it had arrived whole.
        """
        self._now = now_ns
        if seg.flags & SYN and seg.flags & (FIN | RST):
            # No TCP sends these (scanners and fuzzers do); answering would only help them.
            self.counters["tcp_bad_flags"] += 1
            log.debug("dropped TCP segment with flags %#x", seg.flags)
            return
        c = self._by_key.get(key)
        if c is None:
            self._no_entry(key, seg, now_ns)
            return
        c.last_ns = now_ns
        phase = c.phase
        if phase == _SYNCED:
            self._synced(c, seg, now_ns, last_off)
        elif phase == _SYN_SENT:
            self._syn_sent(c, seg, now_ns)
        elif phase == _SYN_RCVD:
            self._syn_received(c, seg, now_ns, last_off)
        elif phase == _PENDING:
            self._pending(c, seg)
        else:  # TIME_WAIT
            self._time_wait(c, key, seg, now_ns)
        if c.phase != _GONE:
            memory.commit(self, c)
            self._rearm(c)

    def open_to_guest(
        self,
        flow: int,
        src4: bytes,
        sport: int,
        guest4: bytes,
        gport: int,
        host: str,
        host_port: int,
        now_ns: int,
    ) -> bool:
        """Open a connection into the guest for ``flow``, whose host side is already
        connected (a forwarded host connection): SYN from ``src4:sport`` to
        ``guest4:gport``. Returns False (and closes the host side) when it cannot be."""
        self._now = now_ns
        key = (guest4, gport, src4, sport)
        counters = self.counters
        reason = ""
        if flow in self._by_flow:
            # A shell bug; closing would hit the live flow of that id.
            counters["tcp_inbound_duplicate_flow"] += 1
            return False
        if key in self._by_key:
            reason = "tcp_inbound_busy"
        elif len(self._by_flow) >= self.max_flows:
            reason = "tcp_table_full"
        elif self._half_open >= self.max_half_open:
            reason = "tcp_half_open_full"
        if reason:
            counters[reason] += 1
            self._emit(TcpClose(flow, True))
            return False
        c = _Conn(flow, key, host, host_port, Trigger.FORWARD)
        c.last_ns = now_ns
        iss = self._rng.next_u32()
        c.iss = c.snd_una = c.snd_wl2 = iss
        c.snd_nxt = c.snd_max = iss + 1
        c.buf_seq = iss + 1
        c.rcv_wscale = self.wscale  # offered; dropped if the guest does not scale
        self._by_key[key] = c
        self._by_flow[flow] = c
        self._half_open += 1
        counters["tcp_inbound"] += 1
        self._send_syn(c)
        c.rtt_seq = iss + 1
        c.rtt_start = now_ns
        c.rto_at = now_ns + c.rto
        self._rearm(c)
        return True

    def _mss(self, c: _Conn) -> int:
        return self.mss if len(c.guest_ip) == 4 else self.mss6

    def _snd_mss(self, c: _Conn, seg: TcpSegment) -> int:
        """The segment size toward the guest: its MSS option (RFC 9293's 536 without one),
        at most ours, and at least MIN_SND_MSS (an MSS of 1 would cost a frame per byte)."""
        mss = seg.mss if seg.mss else params.DEFAULT_MSS
        return min(max(mss, params.MIN_SND_MSS), self._mss(c))

    def _send_syn(self, c: _Conn) -> None:
        win = min(self.buffer_size, 0xFFFF)
        seg = build_tcp(
            c.dst_ip, c.guest_ip, c.dst_port, c.guest_port, c.iss & _M, 0, SYN, win,
            mss=self._mss(c), wscale=self.wscale,
        )
        self._send_ip(c.dst_ip, c.guest_ip, params.IPPROTO_TCP, seg)

    def _syn_sent(self, c: _Conn, seg: TcpSegment, now_ns: int) -> None:
        flags = seg.flags
        counters = self.counters
        ack_ok = bool(flags & ACK) and seg.ack == (c.iss + 1) & _M
        if flags & RST:
            if ack_ok:
                counters["tcp_inbound_refused"] += 1
                self._remove(c, abort=True)
            else:
                counters["tcp_rst_out_of_window"] += 1
            return
        if flags & ACK and not ack_ok:
            counters["tcp_bad_ack"] += 1
            self._rst_raw(c.dst_ip, c.guest_ip, c.dst_port, c.guest_port, seg.ack, 0, RST)
            return
        if not (flags & SYN and ack_ok):
            counters["tcp_syn_sent_ignored"] += 1
            return
        c.rcv_nxt = c.rcv_acked = seg.seq + 1
        c.rcv_adv = c.rcv_nxt + min(self.buffer_size, 0xFFFF)
        c.snd_una = c.iss + 1
        c.snd_mss = self._snd_mss(c, seg)
        if seg.wscale is not None:
            c.wscale_ok = True
            c.snd_wscale = seg.wscale
        else:
            c.rcv_wscale = 0
        c.snd_right = c.snd_una + seg.window  # a SYN's window is never scaled
        c.snd_wl1 = seg.seq
        c.snd_wl2 = c.snd_una
        if c.rtt_seq is not None and c.first_rtx_ns is None:
            timers.rtt_sample(c, now_ns - c.rtt_start, self.rto_min_ns)
        c.rtt_seq = None
        c.rto_at = None
        c.first_rtx_ns = None
        lifecycle.move(c, Trigger.GUEST_SYN_ACK, counters)
        self._half_open -= 1
        counters["tcp_established"] += 1
        self._ack_now(c)
        self._grant(c)
        self._output(c, now_ns)

    def host_event(self, event: Event, now_ns: int) -> None:
        """One of TcpConnected, TcpConnectFailed, TcpData, TcpSent, TcpDataSent, TcpEof,
        TcpReset."""
        self._now = now_ns
        flow: int = getattr(event, "flow", -1)
        c = self._by_flow.get(flow)
        if c is None:
            self.counters["tcp_stale_event"] += 1
            return
        t = type(event)
        if (t is TcpDataSent or t is TcpData) and self.lean and self._lean_read(c, event, now_ns):
            return
        if t is TcpData:
            assert isinstance(event, TcpData)
            self._host_data(c, event.data, now_ns)
        elif t is TcpSent:
            assert isinstance(event, TcpSent)
            self._host_sent(c, event.n, now_ns)
        elif t is TcpDataSent:
            assert isinstance(event, TcpDataSent)
            self._host_sent(c, event.sent, now_ns)
            if c.phase != _GONE:
                self._host_data(c, event.data, now_ns)
        elif t is TcpConnected:
            self._connected(c, now_ns)
        elif t is TcpEof:
            self._host_eof(c, now_ns)
        elif t is TcpConnectFailed:
            assert isinstance(event, TcpConnectFailed)
            self._connect_failed(c, event.errno)
        elif t is TcpReset:
            assert isinstance(event, TcpReset)
            self._host_reset(c, event.errno, now_ns)
        else:
            self.counters["tcp_unknown_event"] += 1
            return
        if c.phase != _GONE:
            memory.commit(self, c)
            self._rearm(c)

    def _lean_read(self, c: _Conn, event: Event, now_ns: int) -> bool:
        """A host read (``TcpData``, or ``TcpDataSent`` with the sends it reports) toward an
        established entry whose send buffer is empty, when it leaves as one run inside the
        guest's window and changes nothing else: the general path's effects and state
        (``_host_sent``, ``_host_data``, ``_output``, then ``host_event``'s commit and rearm)
        in fewer calls. False, having changed nothing, in every other case; the general path
        takes it then. tests/test_tcp_lean.py holds the two equal."""
        data: bytes = event.data  # type: ignore[attr-defined]
        n = len(data)
        sent: int = event.sent if type(event) is TcpDataSent else 0
        unsent = c.host_unsent - sent
        nxt = c.snd_nxt
        if (
            c.phase != _SYNCED or c.host_eof or c.rcv_fin or unsent < 0
            or not 0 < n <= c.credit_out or c.sndbuf or nxt != c.buf_seq
            or c.snd_right < nxt + n or self.mem_used > self.mem_soft
            or (sent and self._window_update_due(c, self.buffer_size - unsent))
        ):
            return False
        # _host_sent (no window update due: checked above) and _host_data
        c.host_unsent = unsent
        c.credit_out -= n
        c.last_ns = now_ns
        c.sndbuf += data
        self.counters["tcp_bytes_to_guest"] += n
        # _output: the whole buffer fits the window; no FIN (the host has not closed)
        end = nxt + n
        self._out(c, nxt, ACK, 0, n, ACK | PSH)
        if end > c.snd_max:
            self._sent_new(c, nxt, end, end, now_ns)
        c.snd_nxt = end
        if c.rto_at is None:
            c.rto_at = now_ns + c.rto
        c.persist_at = None  # _update_persist: data in flight
        c.persist_backoff = 0
        memory.commit(self, c)
        self._rearm(c)
        return True

    def forget_guest(self, guest_ip: bytes | None) -> int:
        """The guest at ``guest_ip`` (None: every guest) is gone: abort the host side of its
        entries and free them, without a word to the guest (it is not there). DRAINING
        entries keep delivering what the guest sent before it left. Returns how many."""
        gone = [
            c for c in self._by_flow.values()
            if c.phase != _DRAINING and (guest_ip is None or c.guest_ip == guest_ip)
        ]
        for c in gone:
            self._remove(c, abort=True)
        self.counters["tcp_guest_departed"] += len(gone)
        return len(gone)

    def owns(self, flow: int) -> bool:
        """Whether ``flow`` is one of our entries."""
        return flow in self._by_flow

    def flow_of(self, key: Key) -> int | None:
        """The flow id of the entry for the guest's (source address, source port,
        destination address, destination port), if there is one."""
        c = self._by_key.get(key)
        return None if c is None else c.flow

    def poll_at(self) -> int | None:
        """The next timer deadline (ns), or None."""
        h = self._timers
        by_flow = self._by_flow
        while h:
            t, flow = h[0]
            c = by_flow.get(flow)
            if c is None or c.armed_at != t:
                heapq.heappop(h)
                continue
            # The head may be a deadline since cancelled or pushed back: settle it here so
            # the shell is never woken for nothing. (timers.deadline inline: this runs after
            # every burst.)
            d = c.rto_at
            for x in (c.persist_at, c.delack_at, c.close_at):
                if x is not None and (d is None or x < d):
                    d = x
            if d == t:
                return t
            heapq.heappop(h)
            c.armed_at = None
            if d is not None:
                c.armed_at = d
                heapq.heappush(h, (d, flow))
        return None

    def tick(self, now_ns: int) -> None:
        """Run every timer due at ``now_ns``."""
        self._now = now_ns
        h = self._timers
        by_flow = self._by_flow
        due: list[_Conn] = []
        while h and h[0][0] <= now_ns:
            t, flow = heapq.heappop(h)
            c = by_flow.get(flow)
            if c is None or c.armed_at != t:
                continue
            c.armed_at = None
            due.append(c)
        # Fire in an order set by the entries' own state: the heap's keys depend on when
        # poll_at() tidied it, and poll_at() calls are not journaled, so replay makes
        # different ones. (A stale early key only fires an entry with nothing due.)
        due.sort(key=lambda c: (timers.deadline(c) or 0, c.flow))
        for c in due:
            if c.phase == _GONE:
                continue
            self._fire(c, now_ns)
            if c.phase != _GONE:
                memory.commit(self, c)
                self._rearm(c)

    def flows(self, now_ns: int | None = None) -> list[FlowInfo]:
        """Every entry, in creation order; idle time relative to ``now_ns`` (default: the
        time of the last event seen)."""
        now = self._now if now_ns is None else now_ns
        return [
            FlowInfo(
                flow=c.flow,
                proto="tcp",
                state=state_name(c),
                guest_ip=c.guest_ip,
                guest_port=c.guest_port,
                dst_ip=c.dst_ip,
                dst_port=c.dst_port,
                host=c.host,
                host_port=c.host_port,
                recv_q=c.host_unsent + c.ooo_bytes,
                send_q=len(c.sndbuf),
                idle_ns=max(0, now - c.last_ns),
            )
            for c in self._by_flow.values()
        ]

    # ------------------------------------------------------------------- segment output

    def _window_field(self, c: _Conn) -> int:
        # memory.cap_in, its common case inline
        cap = self.buffer_size if self.mem_used <= self.mem_soft else memory.cap_in(self, c)
        win = cap - c.host_unsent
        old = c.rcv_adv - c.rcv_nxt
        if old > win:
            win = old  # never move the right edge left (RFC 9293 3.8.6.2.2)
        if win < 0:
            win = 0
        field = win >> c.rcv_wscale
        if field > 0xFFFF:
            field = 0xFFFF
        edge = c.rcv_nxt + (field << c.rcv_wscale)
        if edge > c.rcv_adv:
            c.rcv_adv = edge
        return field

    def _out(
        self, c: _Conn, seq: int, flags: int, off: int = 0, n: int = 0, last_flags: int = -1
    ) -> None:
        """Send ``sndbuf[off:off + n]`` on ``c`` from ``seq``, in segments of at most the
        guest's MSS (one without data when ``n`` is 0), carrying our current ACK and window;
        the last segment has ``last_flags`` (default: ``flags``)."""
        payload, start = c.sndbuf.span(off, n)
        self._send_tcp(
            c.dst_ip,
            c.guest_ip,
            c.dst_port,
            c.guest_port,
            seq & _M,
            c.rcv_nxt & _M,
            self._window_field(c),
            payload,
            start,
            n,
            c.snd_mss,
            flags,
            flags if last_flags < 0 else last_flags,
        )
        c.rcv_acked = c.rcv_nxt
        c.delack_at = None

    def _sent_new(self, c: _Conn, nxt: int, limit: int, end: int, now_ns: int) -> None:
        """Data ``nxt..limit`` (``end``: past a FIN, if one went too) went out beyond
        ``snd_max``: time its first segment that starts at or after the old ``snd_max``, unless
        a segment is being timed, and move ``snd_max``."""
        if c.rtt_seq is None:
            mss = c.snd_mss
            snd_max = c.snd_max
            first = nxt if nxt >= snd_max else nxt - (nxt - snd_max) // mss * mss
            if first < limit:
                c.rtt_seq = end if first + mss >= limit else first + mss
                c.rtt_start = now_ns
        c.snd_max = end

    def _ack_now(self, c: _Conn) -> None:
        self._out(c, c.snd_nxt, ACK)

    def _send_synack(self, c: _Conn) -> None:
        win = max(0, min(memory.cap_in(self, c) - c.host_unsent, 0xFFFF))  # never scaled in a SYN
        c.rcv_adv = max(c.rcv_adv, c.rcv_nxt + win)
        seg = build_tcp(
            c.dst_ip,
            c.guest_ip,
            c.dst_port,
            c.guest_port,
            c.iss,
            c.rcv_nxt & _M,
            SYN | ACK,
            win,
            mss=self._mss(c),
            wscale=c.rcv_wscale if c.wscale_ok else None,
        )
        c.rcv_acked = c.rcv_nxt
        c.snd_max = max(c.snd_max, c.iss + 1)
        c.snd_nxt = c.iss + 1
        self._send_ip(c.dst_ip, c.guest_ip, params.IPPROTO_TCP, seg)

    def _rst_raw(
        self, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int
    ) -> None:
        self._send_ip(
            src,
            dst,
            params.IPPROTO_TCP,
            build_tcp(src, dst, sport, dport, seq & _M, ack & _M, flags, 0),
        )

    def _rst_entry(self, c: _Conn) -> None:
        self._rst_raw(
            c.dst_ip, c.guest_ip, c.dst_port, c.guest_port, c.snd_nxt, c.rcv_nxt, RST | ACK
        )

    def _fin_due(self, c: _Conn) -> bool:
        return c.host_eof and not c.reset_pending

    def _send_at(self, c: _Conn, seq: int, n: int, now_ns: int) -> int:
        """Send ``n`` bytes of the send buffer from ``seq`` (plus FIN if they end it);
        returns the sequence number after the segment."""
        off = seq - c.buf_seq
        buf = c.sndbuf
        blen = len(buf)
        flags = ACK
        end = seq + n
        if off + n == blen:
            if n:
                flags |= PSH
            if self._fin_due(c):
                flags |= FIN
                if not c.rcv_fin:
                    c.active_close = True
                end += 1
        self._out(c, seq, flags, off, n)
        if end > c.snd_max:
            if c.rtt_seq is None and seq >= c.snd_max:
                c.rtt_seq = end
                c.rtt_start = now_ns
            c.snd_max = end
        if c.rto_at is None:
            c.rto_at = now_ns + c.rto
        return end

    def _output(self, c: _Conn, now_ns: int) -> None:
        """Send whatever the guest's window allows, and the FIN when due.

        The bytes from ``snd_nxt`` up to the window's edge (or the end of the buffer) leave
        as one run of MSS-sized segments built in one call (TSO-style); the last carries PSH,
        and the FIN when it ends the buffer and the host side is done.
        """
        if c.phase != _SYNCED:
            return
        data_end = c.buf_seq + len(c.sndbuf)
        nxt = c.snd_nxt
        sent = False
        if nxt < data_end:
            limit = c.snd_right if c.snd_right < data_end else data_end
            if limit > nxt:
                last = ACK
                end = limit
                if limit == data_end:
                    last = ACK | PSH
                    if self._fin_due(c):
                        last |= FIN
                        end += 1
                        if not c.rcv_fin:
                            c.active_close = True
                self._out(c, nxt, ACK, nxt - c.buf_seq, limit - nxt, last)
                if end > c.snd_max:
                    self._sent_new(c, nxt, limit, end, now_ns)
                nxt = end
                sent = True
        elif nxt == data_end and self._fin_due(c):
            if not c.rcv_fin:
                c.active_close = True
            self._out(c, nxt, ACK | FIN)
            nxt += 1
            if nxt > c.snd_max:
                c.snd_max = nxt
            sent = True
        c.snd_nxt = nxt
        if sent and c.rto_at is None:
            c.rto_at = now_ns + c.rto
        self._update_persist(c, now_ns)

    def _update_persist(self, c: _Conn, now_ns: int) -> None:
        data_end = c.buf_seq + len(c.sndbuf)
        if (
            c.phase == _SYNCED
            and c.snd_nxt == c.snd_una
            and c.snd_right <= c.snd_nxt
            and (c.snd_nxt < data_end or not c.host_eof)
        ):
            if c.persist_at is None:
                c.persist_at = now_ns + timers.backoff(c.rto, c.persist_backoff)
        else:
            c.persist_at = None
            c.persist_backoff = 0

    def _grant(self, c: _Conn) -> None:
        """Grant the host reader credit up to min(guest window, buffer_size)."""
        if c.host_eof or not c.host_open or c.phase > _SYNCED:
            return
        limit = c.snd_right - c.buf_seq
        cap = self.buffer_size
        if self.mem_used > self.mem_soft:
            cap = memory.cap(self, c, len(c.sndbuf) + c.credit_out)
        if limit > cap:
            limit = cap
        room = limit - len(c.sndbuf) - c.credit_out
        if room <= 0 or room < (limit >> 2):
            return
        c.credit_out += room
        memory.commit(self, c)
        self._emit(TcpRecvCredit(c.flow, room))

    # -------------------------------------------------------------------- guest segments

    def _no_entry(self, key: Key, seg: TcpSegment, now_ns: int) -> None:
        flags = seg.flags
        c = self.counters
        if flags & RST:
            c["tcp_rst_unknown"] += 1
            return
        if flags & SYN and not flags & ACK:
            self._new(key, seg, now_ns)
            return
        c["tcp_unknown_flow"] += 1
        self._rst_reply(key, seg)

    def _rst_reply(self, key: Key, seg: TcpSegment) -> None:
        """RST for a segment that belongs to nothing (RFC 9293 3.10.7.1)."""
        guest_ip, gport, dst_ip, dport = key
        if seg.flags & ACK:
            self._rst_raw(dst_ip, guest_ip, dport, gport, seg.ack, 0, RST)
        else:
            self._rst_raw(dst_ip, guest_ip, dport, gport, 0, seg.seq + seg.seg_len, RST | ACK)

    def _new(self, key: Key, seg: TcpSegment, now_ns: int) -> None:
        counters = self.counters
        _, gport, dst_ip, dport = key
        if gport == 0 or dport == 0 or (
            dst_ip[0] == 0xFF if len(dst_ip) == 16 else classify_ipv4(dst_ip) not in ("", LOOPBACK)
        ):
            counters["tcp_bad_address"] += 1  # (other martians: translate refuses them, RST)
            return
        if len(self._by_flow) >= self.max_flows:
            counters["tcp_table_full"] += 1
            self._rst_reply(key, seg)
            return
        if self._half_open >= self.max_half_open:
            counters["tcp_half_open_full"] += 1
            self._rst_reply(key, seg)
            return
        if self._embryos_to.get(dst_ip, 0) >= self.max_half_open_per_dest:
            counters["tcp_half_open_dest_full"] += 1
            self._rst_reply(key, seg)
            return
        target = self._translate(dst_ip, dport)
        if target is None:
            counters["tcp_refused_restrict"] += 1
            self._rst_reply(key, seg)
            return
        c = _Conn(self._alloc_flow(), key, target[0], target[1], Trigger.GUEST_SYN)
        c.last_ns = now_ns
        irs = seg.seq
        c.rcv_nxt = c.rcv_acked = c.rcv_adv = irs + 1
        c.snd_wl1 = irs
        iss = self._rng.next_u32()
        c.iss = c.snd_una = c.snd_wl2 = iss
        c.snd_nxt = c.snd_max = iss
        c.buf_seq = iss + 1
        c.snd_right = iss + 1 + seg.window
        c.snd_mss = self._snd_mss(c, seg)
        if seg.wscale is not None:
            c.wscale_ok = True
            c.snd_wscale = seg.wscale
            c.rcv_wscale = self.wscale
        c.close_at = now_ns + self.connect_timeout_ns
        self._by_key[key] = c
        self._by_flow[c.flow] = c
        self._half_open += 1
        self._embryos[c.flow] = c
        self._embryos_to[dst_ip] = self._embryos_to.get(dst_ip, 0) + 1
        if self._half_open >= self._pressure_mark:
            self._hurry(c, now_ns)
        counters["tcp_syn"] += 1
        if seg.payload:
            counters["tcp_syn_data_ignored"] += 1
        self._emit(TcpConnect(c.flow, target[0], target[1]))
        self._rearm(c)

    def _pending(self, c: _Conn, seg: TcpSegment) -> None:
        flags = seg.flags
        if flags & RST:
            if seg.seq == c.rcv_nxt & _M:
                self.counters["tcp_guest_rst"] += 1
                self._remove(c, abort=True)
            else:
                self.counters["tcp_rst_out_of_window"] += 1
        elif flags & SYN:
            self.counters["tcp_syn_dup"] += 1
        else:
            self.counters["tcp_pending_ignored"] += 1

    def _syn_received(self, c: _Conn, seg: TcpSegment, now_ns: int, last_off: int = 0) -> None:
        flags = seg.flags
        counters = self.counters
        if flags & RST:
            if ((seg.seq - c.rcv_nxt) & _M) < max(1, c.rcv_adv - c.rcv_nxt):
                counters["tcp_guest_rst"] += 1
                self._remove(c, abort=True)
            else:
                counters["tcp_rst_out_of_window"] += 1
            return
        if flags & SYN:
            counters["tcp_syn_dup"] += 1
            if seg.seq == (c.rcv_nxt - 1) & _M and not flags & ACK:
                self._send_synack(c)  # our SYN-ACK was lost
            return
        if not flags & ACK:
            counters["tcp_no_ack"] += 1
            return
        if seg.ack != (c.iss + 1) & _M:
            counters["tcp_bad_ack"] += 1
            self._rst_raw(c.dst_ip, c.guest_ip, c.dst_port, c.guest_port, seg.ack, 0, RST)
            return
        lifecycle.move(c, Trigger.GUEST_ACK, counters)
        self._half_open -= 1
        self._embryo_done(c)
        counters["tcp_established"] += 1
        c.snd_una = c.iss + 1
        c.close_at = None
        if c.snd_nxt < c.snd_una:
            c.snd_nxt = c.snd_una
        if c.rtt_seq is not None:
            timers.rtt_sample(c, now_ns - c.rtt_start, self.rto_min_ns)
            c.rtt_seq = None
        c.rto_at = None
        c.first_rtx_ns = None
        # The SYN's window was unscaled; from now on the scaled one counts.
        c.snd_right = c.snd_una + (seg.window << c.snd_wscale)
        c.snd_wl1 = c.rcv_nxt - 1
        c.snd_wl2 = c.snd_una
        self._synced(c, seg, now_ns, last_off)

    def _time_wait(self, c: _Conn, key: Key, seg: TcpSegment, now_ns: int) -> None:
        flags = seg.flags
        if flags & RST:
            self.counters["tcp_guest_rst"] += 1
            self._finish(c, now_ns)
            return
        if flags & SYN and not flags & ACK:
            # RFC 6191-style reuse: the guest's new connection replaces the dead one.
            self.counters["tcp_time_wait_reused"] += 1
            self._finish(c, now_ns)
            self._new(key, seg, now_ns)
            return
        if flags & FIN or seg.payload:
            # A retransmitted FIN: our last ACK was lost. Pure ACKs get no answer (no ping-pong).
            if flags & FIN:
                c.close_at = now_ns + self.time_wait_ns
            self._ack_now(c)
        else:
            self.counters["tcp_time_wait_ignored"] += 1

    def _synced(self, c: _Conn, seg: TcpSegment, now_ns: int, last_off: int = 0) -> None:
        flags = seg.flags
        counters = self.counters
        rcv_nxt = c.rcv_nxt
        seq = rcv_nxt + (((seg.seq - rcv_nxt + _HALF) & _M) - _HALF)
        if flags & RST:
            if rcv_nxt <= seq < max(c.rcv_adv, rcv_nxt + 1):
                counters["tcp_guest_rst"] += 1
                self._remove(c, abort=True)
            else:
                counters["tcp_rst_out_of_window"] += 1
            return
        if flags & SYN:
            counters["tcp_syn_in_window"] += 1
            self._ack_now(c)  # challenge ACK (RFC 5961)
            return
        if not flags & ACK:
            counters["tcp_no_ack"] += 1
            return
        plen = len(seg.payload)
        if not plen and not flags & FIN:
            # RFC 9293 3.10.7.4: a zero-length segment is acceptable at rcv_nxt, or inside a
            # non-empty window; any other gets an ACK and is dropped. Keepalive probes (one
            # below rcv_nxt) and Linux's window probes have this shape. Linux in urgent mode
            # probes a closed window at rcv_nxt with URG set: answered too. (Plain ACKs at
            # rcv_nxt are not: they carry nothing to answer, and an answer would be chatter.)
            wnd = c.rcv_adv - rcv_nxt
            if seq != rcv_nxt and not (wnd > 0 and rcv_nxt < seq < rcv_nxt + wnd):
                counters["tcp_unacceptable"] += 1
                self._answer_probe(c, now_ns)
                return
            if wnd <= 0 and flags & URG:
                counters["tcp_window_probe"] += 1
                self._answer_probe(c, now_ns)
        # --- ACK
        una = c.snd_una
        ack = una + (((seg.ack - una + _HALF) & _M) - _HALF)
        if ack > c.snd_max:
            counters["tcp_ack_unsent"] += 1
            self._ack_now(c)
            return
        right = ack + (seg.window << c.snd_wscale)
        if ack > una:
            if not self._acked(c, ack, now_ns):
                return
        elif (
            ack == una
            and plen == 0
            and not flags & FIN
            and c.snd_nxt > una
            and right == c.snd_right
        ):
            self._dupack(c, now_ns)
        wseq = seq + last_off
        if c.snd_wl1 < wseq or (c.snd_wl1 == wseq and c.snd_wl2 <= ack):
            c.snd_right = right
            c.snd_wl1 = wseq
            c.snd_wl2 = ack
        # --- data and FIN
        if (plen or flags & FIN) and not self._data(c, seg.payload, seq, plen, flags & FIN, now_ns):
            return
        if c.phase != _SYNCED:
            return
        self._grant(c)
        nxt = c.snd_nxt
        # Skip _output on the common pure-receive path: nothing to send, window open.
        if (
            nxt < c.buf_seq + len(c.sndbuf)
            or c.host_eof
            or c.persist_at is not None
            or c.snd_right <= nxt
        ):
            self._output(c, now_ns)

    # ------------------------------------------------------------------------ half-open

    def _embryo_done(self, c: _Conn) -> None:
        """``c`` (guest-initiated) is no longer half-open."""
        if self._embryos.pop(c.flow, None) is None:
            return
        n = self._embryos_to[c.dst_ip] - 1
        if n:
            self._embryos_to[c.dst_ip] = n
        else:
            del self._embryos_to[c.dst_ip]

    def _hurry(self, new: _Conn, now_ns: int) -> None:
        """Under half-open pressure: give ``new`` the short deadline and, when the mark has
        just been reached, every older half-open entry too (a bounded walk, oldest first)."""
        deadline = now_ns + self.pressure_connect_timeout_ns
        todo = self._embryos.values() if self._half_open == self._pressure_mark else (new,)
        for c in todo:
            if c.close_at is None or c.close_at > deadline:
                c.close_at = deadline
                self._rearm(c)
        self.counters["tcp_half_open_pressure"] += 1

    def _answer_probe(self, c: _Conn, now_ns: int) -> None:
        """ACK a probe-shaped segment, at most once per OOW_ACK_INTERVAL_NS."""
        if now_ns - c.last_oow_ack_ns < params.OOW_ACK_INTERVAL_NS:
            self.counters["tcp_probe_ack_limited"] += 1
            return
        c.last_oow_ack_ns = now_ns
        self._ack_now(c)

    def _acked(self, c: _Conn, ack: int, now_ns: int) -> bool:
        """New data acknowledged; False if the entry is gone as a result."""
        buf = c.sndbuf
        data_end = c.buf_seq + len(buf)
        k = (ack if ack < data_end else data_end) - c.buf_seq
        if k > 0:
            del buf[:k]
            c.buf_seq += k
        c.snd_una = ack
        if ack > c.snd_nxt:
            c.snd_nxt = ack  # a persist probe was accepted
        if c.rtt_seq is not None and ack >= c.rtt_seq:
            timers.rtt_sample(c, now_ns - c.rtt_start, self.rto_min_ns)
            c.rtt_seq = None
        elif c.first_rtx_ns is not None:
            c.rto = timers.rto_from_estimate(c, self.rto_min_ns)
        c.first_rtx_ns = None
        c.rto_at = now_ns + c.rto if c.snd_nxt > ack else None
        if c.recover is not None:
            if ack < c.recover:
                self.counters["tcp_fast_retransmits"] += 1
                self._send_at(c, ack, min(c.snd_mss, max(0, data_end - ack)), now_ns)
            else:
                c.recover = None
        c.dupacks = 0
        if c.reset_pending and ack >= c.buf_seq + len(buf):
            self._rst_entry(c)
            self._remove(c, abort=True)
            return False
        if c.host_eof and ack > c.buf_seq + len(buf):
            c.fin_acked = True
            if c.rcv_fin:
                self._both_closed(c, now_ns)
                return False
        return True

    def _dupack(self, c: _Conn, now_ns: int) -> None:
        c.dupacks += 1
        if c.dupacks == 3 and c.recover is None:
            self.counters["tcp_fast_retransmits"] += 1
            c.recover = c.snd_max
            c.rtt_seq = None
            data_end = c.buf_seq + len(c.sndbuf)
            self._send_at(c, c.snd_una, min(c.snd_mss, max(0, data_end - c.snd_una)), now_ns)

    def _data(self, c: _Conn, payload: bytes, seq: int, plen: int, fin: int, now_ns: int) -> bool:
        """Accept guest data and FIN; False if the entry is gone as a result."""
        counters = self.counters
        rcv_nxt = c.rcv_nxt
        if c.rcv_fin:
            counters["tcp_after_fin"] += 1
            self._ack_now(c)
            return True
        if c.reset_pending and seq + plen > rcv_nxt:
            # The host socket is gone: nothing can take these bytes.
            counters["tcp_data_after_host_reset"] += 1
            self._rst_entry(c)
            self._remove(c, abort=True)
            return False
        edge = c.rcv_adv
        if self.mem_used >= self.mem_budget:
            edge = memory.edge(self, c, edge)
        end = seq + plen
        if seq > rcv_nxt:
            self._out_of_order(c, payload, seq, end, fin, edge)
            return True
        if end < rcv_nxt or (end == rcv_nxt and not fin):
            counters["tcp_dup_data"] += 1
            self._ack_now(c)
            return True
        if end > edge:
            counters["tcp_beyond_window"] += 1
            end = edge
            fin = 0
        n = end - rcv_nxt
        parts: list[bytes] = []
        if n > 0:
            off = rcv_nxt - seq
            parts.append(payload if off == 0 and n == plen else payload[off : off + n])
            rcv_nxt = end
        elif plen:
            counters["tcp_zero_window_drop"] += 1
        if fin:
            c.rcv_fin_seq = end
        filled = False
        if c.ooo:
            filled = True
            rcv_nxt = self._reassemble(c, parts, rcv_nxt)
        c.rcv_nxt = rcv_nxt
        if parts:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            c.host_unsent += len(data)
            counters["tcp_bytes_to_host"] += len(data)
            self._emit(TcpSend(c.flow, data))
        if c.rcv_fin_seq is not None and c.rcv_fin_seq == rcv_nxt:
            c.rcv_nxt = rcv_nxt + 1
            c.rcv_fin = True
            c.ooo.clear()
            c.ooo_bytes = 0
            counters["tcp_guest_fin"] += 1
            if c.host_open:
                self._emit(TcpShutdown(c.flow))
            self._ack_now(c)
            if c.fin_acked:
                self._both_closed(c, now_ns)
                return False
            return True
        if filled or n <= 0 or rcv_nxt - c.rcv_acked >= 2 * self.mss:
            self._ack_now(c)
        elif c.delack_at is None:
            c.delack_at = now_ns + self.delack_ns
        return True

    def _out_of_order(
        self, c: _Conn, payload: bytes, seq: int, end: int, fin: int, edge: int
    ) -> None:
        counters = self.counters
        if seq >= edge:
            counters["tcp_out_of_window"] += 1
            self._ack_now(c)
            return
        if end > edge:
            counters["tcp_beyond_window"] += 1
            payload = payload[: edge - seq]
            end = edge
            fin = 0
        if fin and (c.rcv_fin_seq is None or end < c.rcv_fin_seq):
            c.rcv_fin_seq = end
        if payload:
            ooo = c.ooo
            i = bisect.bisect_left(ooo, (seq, b""))
            if i < len(ooo) and ooo[i][0] == seq and len(ooo[i][1]) >= len(payload):
                counters["tcp_dup_data"] += 1
            elif len(ooo) >= self.max_ooo_segments or c.ooo_bytes + len(payload) > edge - c.rcv_nxt:
                counters["tcp_ooo_full"] += 1
            else:
                ooo.insert(i, (seq, payload))
                c.ooo_bytes += len(payload)
                counters["tcp_ooo_queued"] += 1
        self._ack_now(c)  # duplicate ACK: lets the guest fast-retransmit the gap

    def _reassemble(self, c: _Conn, parts: list[bytes], rcv_nxt: int) -> int:
        ooo = c.ooo
        i = 0
        nbytes = 0
        while i < len(ooo) and ooo[i][0] <= rcv_nxt:
            start, d = ooo[i]
            nbytes += len(d)
            i += 1
            e = start + len(d)
            if e > rcv_nxt:
                parts.append(d[rcv_nxt - start :] if start < rcv_nxt else d)
                rcv_nxt = e
        if i:
            del ooo[:i]
            c.ooo_bytes -= nbytes
        return rcv_nxt

    # ------------------------------------------------------------------------ host events

    def _connected(self, c: _Conn, now_ns: int) -> None:
        if c.phase != _PENDING:
            self.counters["tcp_stale_event"] += 1
            return
        self.counters["tcp_connected"] += 1
        lifecycle.move(c, Trigger.CONNECTED, self.counters)
        c.close_at = None
        if self._half_open >= self._pressure_mark:
            c.close_at = now_ns + self.pressure_connect_timeout_ns
        self._send_synack(c)
        c.rtt_seq = c.iss + 1
        c.rtt_start = now_ns
        c.rto_at = now_ns + c.rto
        self._grant(c)

    def _connect_failed(self, c: _Conn, errno: int) -> None:
        if c.phase != _PENDING:
            self.counters["tcp_stale_event"] += 1
            return
        self.counters["tcp_connect_failed"] += 1
        log.debug("flow %d: connect failed, errno %d", c.flow, errno)
        c.host_open = False  # the shell has already dropped the flow
        self._rst_raw(c.dst_ip, c.guest_ip, c.dst_port, c.guest_port, 0, c.rcv_nxt, RST | ACK)
        self._remove(c, abort=True)

    def _host_data(self, c: _Conn, data: bytes, now_ns: int) -> None:
        n = len(data)
        if c.host_eof or c.phase > _SYNCED:
            self.counters["tcp_stale_event"] += 1
            return
        if n > c.credit_out:
            self.counters["tcp_credit_overrun"] += 1
            c.credit_out = 0
        else:
            c.credit_out -= n
        c.last_ns = now_ns
        c.sndbuf += data
        self.counters["tcp_bytes_to_guest"] += n
        self._output(c, now_ns)

    def _host_sent(self, c: _Conn, n: int, now_ns: int) -> None:
        c.host_unsent -= n
        if c.host_unsent < 0:
            self.counters["tcp_sent_overrun"] += 1
            c.host_unsent = 0
        if c.phase == _DRAINING:
            if c.host_unsent == 0:
                self._remove(c, abort=False)
            else:
                c.close_at = now_ns + self.drain_timeout_ns
            return
        if c.phase != _SYNCED or c.rcv_fin:
            return
        self._window_update(c)

    def sent_can_wait(self, flow: int, n: int) -> bool:
        """Whether the shell may hold back the report that the host socket of ``flow`` took
        ``n`` more bytes (all it holds back for it) until the flow's next :class:`TcpDataSent`.
        Only while the report would send the guest nothing: an established entry whose guest
        has not closed, at most one segment held, no window update due with the report, and
        room for two more segments (half the buffer, if smaller) without it, so the guest's next
        data brings the shell back here before the held bytes could close the window.
        Read-only: the decision is the shell's; the journal records what it reported."""
        c = self._by_flow.get(flow)
        if c is None or c.phase != _SYNCED or c.rcv_fin or not 0 < n <= self.mss:
            return False
        if n > c.host_unsent or self.mem_used > self.mem_soft:
            return False  # under memory pressure every byte counts (and cap_in counts it)
        free = self.buffer_size - c.host_unsent
        if free < min(self.buffer_size >> 1, 2 * self.mss):
            return False
        return not self._window_update_due(c, free + n)

    def _window_update_due(self, c: _Conn, free: int) -> bool:
        """Whether a window of ``free`` bytes is one :meth:`_window_update` announces."""
        cap = 0xFFFF << c.rcv_wscale
        new_edge = c.rcv_nxt + (free if free < cap else cap)
        return c.rcv_adv - c.rcv_nxt < (self.buffer_size >> 1) and new_edge - c.rcv_adv >= min(
            self.buffer_size >> 1, 2 * self.mss
        )

    def _window_update(self, c: _Conn) -> None:
        """ACK with the new window when the window the guest knows has fallen below half the
        buffer and would grow by two segments (or half the buffer, if smaller). A healthy
        window needs none: the ACKs of the guest's data carry it."""
        cap = self.buffer_size if self.mem_used <= self.mem_soft else memory.cap_in(self, c)
        if self._window_update_due(c, cap - c.host_unsent):
            self.counters["tcp_window_updates"] += 1
            self._ack_now(c)

    def _host_eof(self, c: _Conn, now_ns: int) -> None:
        if c.host_eof or c.phase > _SYNCED:
            self.counters["tcp_stale_event"] += 1
            return
        c.host_eof = True
        self.counters["tcp_host_eof"] += 1
        self._output(c, now_ns)

    def _host_reset(self, c: _Conn, errno: int, now_ns: int) -> None:
        counters = self.counters
        counters["tcp_host_reset"] += 1
        log.debug("flow %d: host socket failed, errno %d", c.flow, errno)
        if c.phase == _PENDING:
            self._rst_raw(c.dst_ip, c.guest_ip, c.dst_port, c.guest_port, 0, c.rcv_nxt, RST | ACK)
            self._remove(c, abort=True)
            return
        if c.phase == _SYN_SENT:
            self._rst_raw(c.dst_ip, c.guest_ip, c.dst_port, c.guest_port, c.iss + 1, 0, RST)
            self._remove(c, abort=True)
            return
        if c.phase >= _TIME_WAIT:
            self._remove(c, abort=True)
            return
        if c.host_open:
            c.host_open = False
            self._emit(TcpClose(c.flow, True))
        data_end = c.buf_seq + len(c.sndbuf)
        if c.phase == _SYNCED and c.snd_una < data_end and not c.host_eof:
            # Let the guest have what the host sent before failing, then reset it.
            c.host_eof = True
            c.reset_pending = True
            self._output(c, now_ns)
            return
        self._rst_entry(c)
        self._remove(c, abort=True)

    # ----------------------------------------------------------------------------- timers

    def _rearm(self, c: _Conn) -> None:
        d = c.rto_at  # timers.deadline inline: this runs after every step on an entry
        for x in (c.persist_at, c.delack_at, c.close_at):
            if x is not None and (d is None or x < d):
                d = x
        if d is not None and (c.armed_at is None or d < c.armed_at):
            c.armed_at = d
            heapq.heappush(self._timers, (d, c.flow))

    def _fire(self, c: _Conn, now_ns: int) -> None:
        if c.close_at is not None and c.close_at <= now_ns:
            c.close_at = None
            self._close_timer(c, now_ns)
            if c.phase == _GONE:
                return
        if c.rto_at is not None and c.rto_at <= now_ns:
            c.rto_at = None
            self._on_rto(c, now_ns)
            if c.phase == _GONE:
                return
        if c.persist_at is not None and c.persist_at <= now_ns:
            c.persist_at = None
            self._on_persist(c, now_ns)
        if c.delack_at is not None and c.delack_at <= now_ns:
            c.delack_at = None
            if c.rcv_acked != c.rcv_nxt and c.phase == _SYNCED:
                self._ack_now(c)

    def _close_timer(self, c: _Conn, now_ns: int) -> None:
        counters = self.counters
        if c.phase == _PENDING:
            counters["tcp_connect_timeout"] += 1
            self._rst_raw(c.dst_ip, c.guest_ip, c.dst_port, c.guest_port, 0, c.rcv_nxt, RST | ACK)
            self._remove(c, abort=True)
        elif c.phase == _SYN_RCVD:  # under pressure, the guest never completed the handshake
            counters["tcp_handshake_timeout"] += 1
            self._rst_entry(c)
            self._remove(c, abort=True)
        elif c.phase == _TIME_WAIT:
            self._finish(c, now_ns)
        elif c.phase == _DRAINING:
            counters["tcp_drain_timeout"] += 1
            self._remove(c, abort=True)

    def _on_rto(self, c: _Conn, now_ns: int) -> None:
        if c.phase == _SYNCED and c.snd_nxt <= c.snd_una:
            return
        if c.phase not in (_SYN_SENT, _SYN_RCVD, _SYNCED):
            return
        if c.first_rtx_ns is None:
            c.first_rtx_ns = now_ns
        if c.phase in (_SYN_SENT, _SYN_RCVD):
            limit = self.syn_give_up_ns
        elif c.host_eof:
            limit = self.fin_give_up_ns
        else:
            limit = self.give_up_ns
        if now_ns - c.first_rtx_ns >= limit:
            self.counters["tcp_retransmit_give_up"] += 1
            if c.phase == _SYN_SENT:
                self._remove(c, abort=True)
            elif c.host_eof and c.rcv_fin and not c.reset_pending:
                # Both directions are over; only the ACK of our FIN is missing.
                self._finish(c, now_ns)
            else:
                self._rst_entry(c)
                self._remove(c, abort=True)
            return
        self.counters["tcp_retransmits"] += 1
        c.rto = timers.backoff(c.rto, 1)
        c.rtt_seq = None
        c.recover = None
        c.dupacks = 0
        if c.phase == _SYN_RCVD:
            self._send_synack(c)
            c.rto_at = now_ns + c.rto
            return
        if c.phase == _SYN_SENT:
            self._send_syn(c)
            c.rto_at = now_ns + c.rto
            return
        una = c.snd_una
        data_end = c.buf_seq + len(c.sndbuf)
        c.snd_nxt = self._send_at(c, una, min(c.snd_mss, max(0, data_end - una)), now_ns)
        c.rto_at = now_ns + c.rto
        self._update_persist(c, now_ns)

    def _on_persist(self, c: _Conn, now_ns: int) -> None:
        if c.phase != _SYNCED or c.snd_nxt != c.snd_una or c.snd_right > c.snd_nxt:
            c.persist_backoff = 0
            self._output(c, now_ns)
            return
        self.counters["tcp_persist_probes"] += 1
        data_end = c.buf_seq + len(c.sndbuf)
        nxt = c.snd_nxt
        if nxt < data_end:
            self._out(c, nxt, ACK, nxt - c.buf_seq, 1)
            if nxt + 1 > c.snd_max:
                c.snd_max = nxt + 1
        else:
            # Below the window: the guest must answer with an ACK carrying its window.
            self._out(c, nxt - 1, ACK)
        c.persist_backoff += 1
        c.persist_at = now_ns + timers.backoff(c.rto, c.persist_backoff)

    # ---------------------------------------------------------------------------- removal

    def _both_closed(self, c: _Conn, now_ns: int) -> None:
        """Both FINs exchanged and acknowledged."""
        if c.active_close:
            lifecycle.move(c, Trigger.ACTIVE_CLOSE_DONE, self.counters)
            c.rto_at = c.persist_at = c.delack_at = None
            c.close_at = now_ns + self.time_wait_ns
            self._rearm(c)
        else:
            self._finish(c, now_ns)

    def _finish(self, c: _Conn, now_ns: int) -> None:
        """The guest side is over: close the host socket once it has sent everything."""
        if c.host_open and c.host_unsent > 0:
            if self._by_key.get(c.key) is c:
                del self._by_key[c.key]
            lifecycle.move(c, Trigger.DRAIN, self.counters)
            c.rto_at = c.persist_at = c.delack_at = None
            c.close_at = now_ns + self.drain_timeout_ns
            self._rearm(c)
            return
        self._remove(c, abort=False)

    def _remove(self, c: _Conn, *, abort: bool) -> None:
        self.mem_used -= c.charged
        c.charged = 0
        if c.phase in HALF_OPEN:
            self._half_open -= 1
            if c.phase != _SYN_SENT:
                self._embryo_done(c)
        lifecycle.move(c, Trigger.ABORT if abort else Trigger.CLOSE, self.counters)
        if self._by_key.get(c.key) is c:
            del self._by_key[c.key]
        self._by_flow.pop(c.flow, None)
        self.counters["tcp_closed_abort" if abort else "tcp_closed"] += 1
        if c.host_open:
            c.host_open = False
            self._emit(TcpClose(c.flow, abort))

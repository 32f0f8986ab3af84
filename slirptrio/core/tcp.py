"""TCP NAT: the guest's TCP connections spliced onto host stream sockets.

Theory of operation
-------------------
The guest speaks TCP to us; the host side is a plain stream socket run by the shell
(:mod:`slirptrio.shell.flows`). Each guest connection is one *entry*, keyed by
(guest address, guest port, destination address, destination port) and named by a flow id.
We play the server towards the guest and terminate its TCP completely: sequence numbers,
windows, retransmission and FIN/RST handling towards the guest are ours; towards the host only
byte streams, EOF and errors exist.

Entry lifecycle::

    guest SYN ──> SYN_PENDING ──TcpConnected──> SYN_RECEIVED ──guest ACK──> ESTABLISHED
                      │  (TcpConnect emitted;       (SYN-ACK sent,
                      │   SYN retransmits ignored)   retransmitted on RTO)
                      └─TcpConnectFailed─> RST|ACK to the guest, entry gone

    ESTABLISHED ──guest FIN──> CLOSE_WAIT ──TcpEof, data out──> LAST_ACK ──ACK──> closed
    ESTABLISHED ──TcpEof, data out (FIN sent)──> FIN_WAIT_1 ──ACK──> FIN_WAIT_2
                 ──guest FIN──> TIME_WAIT (time_wait_ns, 2 s) ──> closed
    FIN_WAIT_1 ──guest FIN──> CLOSING ──ACK──> TIME_WAIT

The SYN-ACK waits for the host connect, so a refused port fails fast and truthfully in the guest.
A failed connect answers RST|ACK whatever the errno, ETIMEDOUT and EHOSTUNREACH included: the
guest's connect() then fails at once with "connection refused" rather than after its own long
SYN timeout (libslirp does the same for refusals; an ICMP unreachable would carry the reason
but many stacks retry on it). ``translate`` returning None (restrict=on) refuses with RST at
once, without a host connect.

A guest FIN becomes :class:`TcpShutdown` as soon as every byte before it has been handed over as
:class:`TcpSend` (the shell shuts the socket down after its queue drains); :class:`TcpEof`
becomes our FIN once every host byte has been sent to the guest. An entry whose guest side is
closed but whose host socket still has unsent bytes from the guest is DRAINING: it leaves the
lookup table (the 4-tuple is free again) and gets its :class:`TcpClose` when the last
:class:`TcpSent` arrives (or aborts after ``drain_timeout_ns`` without progress). Every
:class:`TcpConnect` is matched by exactly one :class:`TcpClose`, except after
:class:`TcpConnectFailed`, where the shell has already forgotten the flow.

Resets: a guest RST (in window) aborts the host socket (``TcpClose(abort=True)``) and drops the
entry. :class:`TcpReset` from the host closes the host side at once; the guest still receives
the host bytes already queued here and then an RST instead of a FIN. A segment for no entry gets
an RST as RFC 9293 prescribes (never in answer to an RST).

Acceptability (RFC 9293 3.10.7.4)
---------------------------------
Every segment that is not acceptable and not a RST gets an ACK: keepalive probes (empty, one
below ``rcv_nxt``, or one old byte), window probes of every shape (empty below ``rcv_nxt``, one
new byte into a closed window, empty with URG at ``rcv_nxt`` while our window is closed), old
duplicates and segments beyond the window. Answers to zero-length segments are rate-limited
per entry (``OOW_ACK_INTERVAL_NS``, as Linux does) so a desynchronised peer cannot start an
ACK storm.
SYN together with FIN or RST comes from no real TCP: dropped unanswered (``tcp_bad_flags``).
The urgent pointer is ignored (urgent bytes are ordinary data), so no value of it matters;
option lists that lie about lengths end option parsing (:mod:`slirptrio.wire.tcp`); the guest's
MSS is raised to ``MIN_SND_MSS`` and its window shift clamped to 14.

Flow control and credit
-----------------------
Guest → host: we accept data inside the window we advertised; in-order bytes are passed on
immediately as ``TcpSend`` (no copy: the parsed payload itself), out-of-order segments are kept
(bounded by the window and ``max_ooo_segments``) until the gap fills. ``host_unsent`` counts
bytes handed to the shell and not yet confirmed by ``TcpSent``; the advertised window is
``buffer_size - host_unsent``, its right edge never moving left. ACKs are coalesced: one at
least every two full segments, at once for anything out of order, a FIN or a zero-window probe,
otherwise after ``delack_ns``. A ``TcpSent`` that reopens a window that had fallen below half
the buffer sends a window update.

Host → guest: the shell reads only what ``TcpRecvCredit`` allowed. The send buffer holds the
bytes not yet acknowledged by the guest (sent or not); credit is granted so that
``len(send buffer) + outstanding credit <= min(guest window, buffer_size)``, in chunks of at
least a quarter of that limit so host reads stay large. Segments follow the guest's MSS and
window (scaled per RFC 7323 when the guest offered scaling; our own shift makes
``buffer_size`` fit). There is no congestion control: the guest is one virtual hop away.

Timers
------
Per entry: retransmission (RFC 6298 RTO from an RTT estimate, Karn's rule, 200 ms floor, 60 s
cap, exponential backoff, go-back-N from the oldest unacked byte; give up after ``give_up_ns``
(``syn_give_up_ns`` for the SYN-ACK, ``fin_give_up_ns`` once our FIN is out) with RST to the
guest and an aborted host socket), fast retransmit after three duplicate ACKs (NewReno-style
partial-ACK retransmits), persist (zero guest window: a one-byte probe when data waits, else an
ACK below the window that makes the guest repeat its window; never gives up), delayed ACK,
and one "close" deadline (connect safety net, TIME_WAIT, drain). Established idle entries have
no timer and never expire. All deadlines go into one heap of ``(deadline, flow)`` with lazy
deletion: an entry records the deadline it is armed for, later deadlines are re-armed when the
earlier one fires, so an ACK that pushes the RTO back costs no heap operation.

Bounds
------
``max_flows`` entries (DRAINING included; a SYN beyond: RST, ``tcp_table_full``),
``max_half_open`` in SYN_PENDING/SYN_RECEIVED (RST, ``tcp_half_open_full``); per entry the send
buffer stays within ``buffer_size``, out-of-order data within the advertised window. Every
dropped segment is counted under a ``tcp_*`` counter.

Half-open fairness: one destination address holds at most a share of the half-open slots
(``HALF_OPEN_DEST_SHARE``; beyond: RST, ``tcp_half_open_dest_full``), so SYNs to one
unreachable address cannot lock the guest out of the rest. Once half the slots are taken
(``HALF_OPEN_PRESSURE``) every half-open entry has ``PRESSURE_CONNECT_TIMEOUT_NS`` left at most
(the connect safety net, shortened); when it fires the guest gets RST and the host side
``TcpClose``.

Memory: ``mem_used`` is what all entries hold (bytes handed to the host and not confirmed,
out-of-order data, send buffers) plus the credit their host readers may still use; each entry
re-counts its part after every event (``_commit``). Up to half of ``mem_budget`` nothing
changes. Past it, an entry may grow in a direction (new window, new credit) only up to what the
budget has left, or its share (``MEM_SHARE_DIVISOR``) when that is more: the largest entries
stop first, every entry keeps its share. Past the whole budget, data arriving inside windows
advertised earlier is kept only up to the entry's share (the rest is dropped, the guest
retransmits), so ``mem_used`` stays below one and a half budgets.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from slirptrio.core import snapshot as snap
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
from slirptrio.core.martian import LOOPBACK, classify_ipv4
from slirptrio.core.prng import Prng
from slirptrio.wire.tcp import ACK, FIN, PSH, RST, SYN, URG, TcpSegment, build_tcp, parse_tcp

log = logging.getLogger("slirptrio.core.tcp")

IPPROTO_TCP = 6
_M = 0xFFFFFFFF
_HALF = 0x80000000
_MS = 1_000_000
_SEC = 1_000_000_000
RTO_INITIAL_NS = _SEC
RTO_MAX_NS = 60 * _SEC
DEFAULT_MSS = 536  # RFC 9293: assumed when the SYN carries no MSS option
MAX_FLOWS = 4096
MAX_HALF_OPEN = 256
BUFFER_SIZE = 256 * 1024  # per direction and entry: receive window and send buffer
RTO_MIN_NS = 200 * _MS
DELACK_NS = 5 * _MS
GIVE_UP_NS = 180 * _SEC
SYN_GIVE_UP_NS = 60 * _SEC
FIN_GIVE_UP_NS = 30 * _SEC
TIME_WAIT_NS = 2 * _SEC
CONNECT_TIMEOUT_NS = 75 * _SEC
DRAIN_TIMEOUT_NS = 60 * _SEC
MAX_OOO_SEGMENTS = 512
MIN_SND_MSS = 48  # a smaller MSS from the guest is raised to this (Linux's tcp_min_snd_mss)
HALF_OPEN_DEST_SHARE = 4
"""One destination address may hold at most ``max_half_open // HALF_OPEN_DEST_SHARE`` (and at
least 8) of the half-open entries, so connects to one unreachable address cannot lock the
guest out of every other."""
HALF_OPEN_PRESSURE = 2
"""Past ``max_half_open // HALF_OPEN_PRESSURE`` half-open entries, the table is under pressure:
every half-open entry gets at most ``PRESSURE_CONNECT_TIMEOUT_NS`` to complete."""
PRESSURE_CONNECT_TIMEOUT_NS = 5 * _SEC
"""Connect (and handshake) deadline of half-open entries under pressure: room for two SYN
retransmissions; past it the guest gets RST and the host connect is abandoned."""
MEM_SHARE_DIVISOR = 4
"""Under memory pressure each entry may always hold ``mem_budget / (MEM_SHARE_DIVISOR * n)``
bytes per direction (n entries; at least ``MEM_MIN_SHARE``): all these shares together are
half the budget, so a guaranteed share never starves a flow and the total stays below one and
a half budgets."""
MEM_MIN_SHARE = 4096
OOW_ACK_INTERVAL_NS = 200 * _MS
"""Least time between two ACKs answering unacceptable zero-length segments of one entry
(keepalive and window probes, old duplicates): no ACK ping-pong with a desynchronised peer,
and still an answer to every probe (a probe timer never runs below 200 ms)."""

# Entry phases.
_SYN_SENT = -1  # our SYN to the guest is out (a forward into the guest)
_PENDING = 0  # SYN seen, host connect running
_SYN_RCVD = 1  # SYN-ACK sent
_SYNCED = 2  # handshake done (established or closing)
_TIME_WAIT = 3
_DRAINING = 4  # guest side closed, host socket still sending
_GONE = 5

_Key = tuple[bytes, int, bytes, int]


@dataclass(frozen=True, slots=True)
class TcpFlowInfo:
    """One entry, for display. ``recv_q``: guest bytes not yet accepted by the host socket
    (including out-of-order ones); ``send_q``: host bytes not yet acknowledged by the guest."""

    flow: int
    state: str
    guest_ip: bytes
    guest_port: int
    dst_ip: bytes
    dst_port: int
    host: str
    host_port: int
    recv_q: int
    send_q: int
    idle_ns: int


class _Conn:
    __slots__ = (
        "active_close",
        "armed_at",
        "buf_seq",
        "charged",
        "close_at",
        "credit_out",
        "delack_at",
        "dst_ip",
        "dst_port",
        "dupacks",
        "fin_acked",
        "first_rtx_ns",
        "flow",
        "guest_ip",
        "guest_port",
        "host",
        "host_eof",
        "host_open",
        "host_port",
        "host_unsent",
        "iss",
        "key",
        "last_ns",
        "last_oow_ack_ns",
        "ooo",
        "ooo_bytes",
        "persist_at",
        "persist_backoff",
        "phase",
        "rcv_acked",
        "rcv_adv",
        "rcv_fin",
        "rcv_fin_seq",
        "rcv_nxt",
        "rcv_wscale",
        "recover",
        "reset_pending",
        "rto",
        "rto_at",
        "rtt_seq",
        "rtt_start",
        "rttvar",
        "snd_max",
        "snd_mss",
        "snd_nxt",
        "snd_right",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wscale",
        "sndbuf",
        "srtt",
        "wscale_ok",
    )
    # The timer heap is rebuilt on restore, each entry armed for its true deadline.
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"key", "armed_at"})

    def __init__(self, flow: int, key: _Key, host: str, host_port: int) -> None:
        self.flow = flow
        self.key = key
        self.guest_ip, self.guest_port, self.dst_ip, self.dst_port = key
        self.host = host
        self.host_port = host_port
        self.phase = _PENDING
        self.host_open = True
        self.last_ns = 0
        self.charged = 0  # this entry's part of TcpNat.mem_used
        self.last_oow_ack_ns = -OOW_ACK_INTERVAL_NS  # when we last answered an unacceptable segment
        # guest -> host
        self.rcv_nxt = 0
        self.rcv_adv = 0  # highest right edge ever advertised
        self.rcv_acked = 0  # rcv_nxt as of our last ACK
        self.rcv_wscale = 0
        self.rcv_fin = False
        self.rcv_fin_seq: int | None = None
        self.ooo: list[tuple[int, bytes]] = []
        self.ooo_bytes = 0
        self.host_unsent = 0
        # host -> guest
        self.iss = 0
        self.snd_una = 0
        self.snd_nxt = 0
        self.snd_max = 0
        self.buf_seq = 0  # sequence number of sndbuf[0]
        self.sndbuf = bytearray()
        self.snd_right = 0  # guest's window right edge
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self.snd_wscale = 0
        self.snd_mss = DEFAULT_MSS
        self.wscale_ok = False
        self.credit_out = 0
        self.host_eof = False
        self.reset_pending = False
        self.fin_acked = False
        self.active_close = False
        self.dupacks = 0
        self.recover: int | None = None
        # RTT / timers
        self.srtt: int | None = None
        self.rttvar = 0
        self.rto = RTO_INITIAL_NS
        self.rtt_seq: int | None = None
        self.rtt_start = 0
        self.first_rtx_ns: int | None = None
        self.persist_backoff = 0
        self.rto_at: int | None = None
        self.persist_at: int | None = None
        self.delack_at: int | None = None
        self.close_at: int | None = None
        self.armed_at: int | None = None


def _dump_ooo(ooo: list[tuple[int, bytes]]) -> list[list[Any]]:
    return [[seq, bytes(data)] for seq, data in ooo]


def _load_ooo(raw: list[list[Any]]) -> list[tuple[int, bytes]]:
    return [(seq, data) for seq, data in raw]


_CONN_CODECS: dict[str, snap.Codec] = {"sndbuf": snap.BYTEARRAY, "ooo": (_dump_ooo, _load_ooo)}


def _state_name(c: _Conn) -> str:
    p = c.phase
    if p == _SYN_SENT:
        return "SYN_SENT"
    if p == _PENDING:
        return "SYN_PENDING"
    if p == _SYN_RCVD:
        return "SYN_RECEIVED"
    if p == _TIME_WAIT:
        return "TIME_WAIT"
    if p == _DRAINING:
        return "DRAINING"
    if p == _GONE:
        return "CLOSED"
    fin_sent = c.host_eof and c.snd_max > c.buf_seq + len(c.sndbuf)
    if c.rcv_fin:
        if not fin_sent:
            return "CLOSE_WAIT"
        return "CLOSING" if c.active_close else "LAST_ACK"
    if fin_sent:
        return "FIN_WAIT_2" if c.fin_acked else "FIN_WAIT_1"
    return "ESTABLISHED"


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
        max_flows: int = MAX_FLOWS,
        max_half_open: int = MAX_HALF_OPEN,
        buffer_size: int = BUFFER_SIZE,
        rto_min_ns: int = RTO_MIN_NS,
        delack_ns: int = DELACK_NS,
        give_up_ns: int = GIVE_UP_NS,
        syn_give_up_ns: int = SYN_GIVE_UP_NS,
        fin_give_up_ns: int = FIN_GIVE_UP_NS,
        time_wait_ns: int = TIME_WAIT_NS,
        connect_timeout_ns: int = CONNECT_TIMEOUT_NS,
        pressure_connect_timeout_ns: int = PRESSURE_CONNECT_TIMEOUT_NS,
        drain_timeout_ns: int = DRAIN_TIMEOUT_NS,
        max_ooo_segments: int = MAX_OOO_SEGMENTS,
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
        self._mem_soft = self.mem_budget // 2
        self.mem_used = 0  # bytes committed by every entry (see _commit)
        shift = 0
        while (self.buffer_size >> shift) > 0xFFFF and shift < 14:
            shift += 1
        self.wscale = shift
        self._by_key: dict[_Key, _Conn] = {}
        self._by_flow: dict[int, _Conn] = {}
        self._half_open = 0
        # Guest-initiated half-open entries (SYN_PENDING, SYN_RECEIVED), oldest first, and
        # their count per destination address.
        self._embryos: dict[int, _Conn] = {}
        self._embryos_to: dict[bytes, int] = {}
        self.max_half_open_per_dest = max(8, self.max_half_open // HALF_OPEN_DEST_SHARE)
        self._pressure_mark = max(1, self.max_half_open // HALF_OPEN_PRESSURE)
        self._timers: list[tuple[int, int]] = []
        self._now = 0

    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "_rng", "_send_ip", "_send_tcp", "_emit", "_translate", "_alloc_flow", "counters", "mss",
        "mss6",
        "max_flows", "max_half_open", "buffer_size", "rto_min_ns", "delack_ns", "give_up_ns",
        "syn_give_up_ns", "fin_give_up_ns", "time_wait_ns", "connect_timeout_ns",
        "drain_timeout_ns", "max_ooo_segments", "wscale", "pressure_connect_timeout_ns",
        "mem_budget", "_mem_soft", "max_half_open_per_dest", "_pressure_mark",
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
            "_by_flow": [snap.dump_slots(c, _CONN_CODECS, skip) for c in self._by_flow.values()],
            "_by_key": [c.flow for c in self._by_key.values()],
            "_half_open": self._half_open,
            "_embryos": list(self._embryos),
            "_now": self._now,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        by_flow: dict[int, _Conn] = {}
        for raw in state["_by_flow"]:
            c = snap.load_slots(_Conn, raw, _CONN_CODECS)
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

    def segment(self, key: _Key, seg: TcpSegment, now_ns: int, last_off: int = 0) -> None:
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
            self._commit(c)
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
        c = _Conn(flow, key, host, host_port)
        c.phase = _SYN_SENT
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
        mss = seg.mss if seg.mss else DEFAULT_MSS
        return min(max(mss, MIN_SND_MSS), self._mss(c))

    def _send_syn(self, c: _Conn) -> None:
        win = min(self.buffer_size, 0xFFFF)
        seg = build_tcp(
            c.dst_ip, c.guest_ip, c.dst_port, c.guest_port, c.iss & _M, 0, SYN, win,
            mss=self._mss(c), wscale=self.wscale,
        )
        self._send_ip(c.dst_ip, c.guest_ip, IPPROTO_TCP, seg)

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
            self._rtt_sample(c, now_ns - c.rtt_start)
        c.rtt_seq = None
        c.rto_at = None
        c.first_rtx_ns = None
        c.phase = _SYNCED
        self._half_open -= 1
        counters["tcp_established"] += 1
        self._ack_now(c)
        self._grant(c)
        self._output(c, now_ns)

    def host_event(self, event: Event, now_ns: int) -> None:
        """One of TcpConnected, TcpConnectFailed, TcpData, TcpSent, TcpEof, TcpReset."""
        self._now = now_ns
        flow: int = getattr(event, "flow", -1)
        c = self._by_flow.get(flow)
        if c is None:
            self.counters["tcp_stale_event"] += 1
            return
        t = type(event)
        if t is TcpData:
            assert isinstance(event, TcpData)
            self._host_data(c, event.data, now_ns)
        elif t is TcpSent:
            assert isinstance(event, TcpSent)
            self._host_sent(c, event.n, now_ns)
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
            self._commit(c)
            self._rearm(c)

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

    def flow_of(self, key: _Key) -> int | None:
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
            # the shell is never woken for nothing.
            d = self._deadline(c)
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
        due.sort(key=lambda c: (self._deadline(c) or 0, c.flow))
        for c in due:
            if c.phase == _GONE:
                continue
            self._fire(c, now_ns)
            if c.phase != _GONE:
                self._commit(c)
                self._rearm(c)

    def flows(self, now_ns: int | None = None) -> list[TcpFlowInfo]:
        """Every entry, in creation order; idle time relative to ``now_ns`` (default: the
        time of the last event seen)."""
        now = self._now if now_ns is None else now_ns
        return [
            TcpFlowInfo(
                flow=c.flow,
                state=_state_name(c),
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
        win = self._cap_in(c) - c.host_unsent
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
        self._send_tcp(
            c.dst_ip,
            c.guest_ip,
            c.dst_port,
            c.guest_port,
            seq & _M,
            c.rcv_nxt & _M,
            self._window_field(c),
            c.sndbuf,
            off,
            n,
            c.snd_mss,
            flags,
            flags if last_flags < 0 else last_flags,
        )
        c.rcv_acked = c.rcv_nxt
        c.delack_at = None

    def _ack_now(self, c: _Conn) -> None:
        self._out(c, c.snd_nxt, ACK)

    def _send_synack(self, c: _Conn) -> None:
        win = max(0, min(self._cap_in(c) - c.host_unsent, 0xFFFF))  # never scaled in a SYN
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
        self._send_ip(c.dst_ip, c.guest_ip, IPPROTO_TCP, seg)

    def _rst_raw(
        self, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int
    ) -> None:
        self._send_ip(
            src, dst, IPPROTO_TCP, build_tcp(src, dst, sport, dport, seq & _M, ack & _M, flags, 0)
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
                snd_max = c.snd_max
                if end > snd_max:
                    if c.rtt_seq is None:
                        # Time the first segment that starts at or after the old snd_max.
                        mss = c.snd_mss
                        first = nxt if nxt >= snd_max else nxt - (nxt - snd_max) // mss * mss
                        if first < limit:
                            c.rtt_seq = end if first + mss >= limit else first + mss
                            c.rtt_start = now_ns
                    c.snd_max = end
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
                c.persist_at = now_ns + self._backoff(c.rto, c.persist_backoff)
        else:
            c.persist_at = None
            c.persist_backoff = 0

    @staticmethod
    def _backoff(rto: int, k: int) -> int:
        return min(rto << min(k, 16), RTO_MAX_NS)

    def _grant(self, c: _Conn) -> None:
        """Grant the host reader credit up to min(guest window, buffer_size)."""
        if c.host_eof or not c.host_open or c.phase > _SYNCED:
            return
        limit = c.snd_right - c.buf_seq
        cap = self.buffer_size
        if self.mem_used > self._mem_soft:
            cap = self._cap(c, len(c.sndbuf) + c.credit_out)
        if limit > cap:
            limit = cap
        room = limit - len(c.sndbuf) - c.credit_out
        if room <= 0 or room < (limit >> 2):
            return
        c.credit_out += room
        self._commit(c)
        self._emit(TcpRecvCredit(c.flow, room))

    # -------------------------------------------------------------------- guest segments

    def _no_entry(self, key: _Key, seg: TcpSegment, now_ns: int) -> None:
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

    def _rst_reply(self, key: _Key, seg: TcpSegment) -> None:
        """RST for a segment that belongs to nothing (RFC 9293 3.10.7.1)."""
        guest_ip, gport, dst_ip, dport = key
        if seg.flags & ACK:
            self._rst_raw(dst_ip, guest_ip, dport, gport, seg.ack, 0, RST)
        else:
            self._rst_raw(dst_ip, guest_ip, dport, gport, 0, seg.seq + seg.seg_len, RST | ACK)

    def _new(self, key: _Key, seg: TcpSegment, now_ns: int) -> None:
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
        c = _Conn(self._alloc_flow(), key, target[0], target[1])
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
        c.phase = _SYNCED
        self._half_open -= 1
        self._embryo_done(c)
        counters["tcp_established"] += 1
        c.snd_una = c.iss + 1
        c.close_at = None
        if c.snd_nxt < c.snd_una:
            c.snd_nxt = c.snd_una
        if c.rtt_seq is not None:
            self._rtt_sample(c, now_ns - c.rtt_start)
            c.rtt_seq = None
        c.rto_at = None
        c.first_rtx_ns = None
        # The SYN's window was unscaled; from now on the scaled one counts.
        c.snd_right = c.snd_una + (seg.window << c.snd_wscale)
        c.snd_wl1 = c.rcv_nxt - 1
        c.snd_wl2 = c.snd_una
        self._synced(c, seg, now_ns, last_off)

    def _time_wait(self, c: _Conn, key: _Key, seg: TcpSegment, now_ns: int) -> None:
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

    # ----------------------------------------------------------------------------- memory

    def _commit(self, c: _Conn) -> None:
        """Bring ``c``'s part of ``mem_used`` up to date: the bytes it holds (handed to the
        host and not confirmed, out of order, in the send buffer) and the credit the host
        reader may still turn into send buffer."""
        new = c.host_unsent + c.ooo_bytes + len(c.sndbuf) + c.credit_out
        self.mem_used += new - c.charged
        c.charged = new

    def _share(self) -> int:
        """Under memory pressure, what one entry may always hold in one direction."""
        share = self.mem_budget // (MEM_SHARE_DIVISOR * max(1, len(self._by_flow)))
        return share if share > MEM_MIN_SHARE else MEM_MIN_SHARE

    def _cap(self, c: _Conn, used_dir: int) -> int:
        """Under memory pressure, how many bytes ``c`` may hold in one direction where it
        now holds ``used_dir``: its share, or more while the budget has room. So the largest
        entries stop growing first; the others keep their share."""
        self._commit(c)
        free = self.mem_budget - self.mem_used
        cap = used_dir + free if free > 0 else used_dir
        share = self._share()
        if cap < share:
            cap = share
        if cap < self.buffer_size:
            self.counters["tcp_mem_limited"] += 1
            return cap
        return self.buffer_size

    def _cap_in(self, c: _Conn) -> int:
        """The receive buffer ``c`` may have: what the host has not confirmed plus the window
        we offer."""
        if self.mem_used <= self._mem_soft:
            return self.buffer_size
        return self._cap(c, c.host_unsent + c.ooo_bytes)

    def _mem_edge(self, c: _Conn, edge: int) -> int:
        """Past the whole budget, data already inside an advertised window is taken only up
        to the entry's share; the rest is dropped as a full receiver drops it (the guest
        retransmits). Windows advertised before the pressure therefore cost the budget at
        most one share per entry."""
        self._commit(c)
        room = self._share() - c.host_unsent - c.ooo_bytes
        limit = c.rcv_nxt + (room if room > 0 else 0)
        if limit < edge:
            self.counters["tcp_mem_trimmed"] += 1
            return limit
        return edge

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
        if now_ns - c.last_oow_ack_ns < OOW_ACK_INTERVAL_NS:
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
            self._rtt_sample(c, now_ns - c.rtt_start)
            c.rtt_seq = None
        elif c.first_rtx_ns is not None:
            c.rto = self._rto_from_estimate(c)
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
            edge = self._mem_edge(c, edge)
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
        c.phase = _SYN_RCVD
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

    def _window_update(self, c: _Conn) -> None:
        """ACK with the new window when the window the guest knows has fallen below half the
        buffer and would grow by two segments (or half the buffer, if smaller). A healthy
        window needs none: the ACKs of the guest's data carry it."""
        free = self._cap_in(c) - c.host_unsent
        cap = 0xFFFF << c.rcv_wscale
        new_edge = c.rcv_nxt + (free if free < cap else cap)
        if c.rcv_adv - c.rcv_nxt < (self.buffer_size >> 1) and new_edge - c.rcv_adv >= min(
            self.buffer_size >> 1, 2 * self.mss
        ):
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

    @staticmethod
    def _deadline(c: _Conn) -> int | None:
        d = c.rto_at
        for t in (c.persist_at, c.delack_at, c.close_at):
            if t is not None and (d is None or t < d):
                d = t
        return d

    def _rearm(self, c: _Conn) -> None:
        d = self._deadline(c)
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
        c.rto = self._backoff(c.rto, 1)
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
        c.persist_at = now_ns + self._backoff(c.rto, c.persist_backoff)

    # -------------------------------------------------------------------------------- RTT

    def _rtt_sample(self, c: _Conn, r: int) -> None:
        if r < 0:
            r = 0
        if c.srtt is None:
            c.srtt = r
            c.rttvar = r >> 1
        else:
            c.rttvar = (3 * c.rttvar + abs(c.srtt - r)) >> 2
            c.srtt = (7 * c.srtt + r) >> 3
        c.rto = self._rto_from_estimate(c)

    def _rto_from_estimate(self, c: _Conn) -> int:
        if c.srtt is None:
            return RTO_INITIAL_NS
        rto = c.srtt + max(_MS, 4 * c.rttvar)
        return min(max(rto, self.rto_min_ns), RTO_MAX_NS)

    # ---------------------------------------------------------------------------- removal

    def _both_closed(self, c: _Conn, now_ns: int) -> None:
        """Both FINs exchanged and acknowledged."""
        if c.active_close:
            c.phase = _TIME_WAIT
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
            c.phase = _DRAINING
            c.rto_at = c.persist_at = c.delack_at = None
            c.close_at = now_ns + self.drain_timeout_ns
            self._rearm(c)
            return
        self._remove(c, abort=False)

    def _remove(self, c: _Conn, *, abort: bool) -> None:
        self.mem_used -= c.charged
        c.charged = 0
        if c.phase in (_SYN_SENT, _PENDING, _SYN_RCVD):
            self._half_open -= 1
            if c.phase != _SYN_SENT:
                self._embryo_done(c)
        c.phase = _GONE
        if self._by_key.get(c.key) is c:
            del self._by_key[c.key]
        self._by_flow.pop(c.flow, None)
        self.counters["tcp_closed_abort" if abort else "tcp_closed"] += 1
        if c.host_open:
            c.host_open = False
            self._emit(TcpClose(c.flow, abort))

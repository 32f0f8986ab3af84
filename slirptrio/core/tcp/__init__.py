"""TCP NAT: the guest's TCP connections spliced onto host stream sockets.

The package: :mod:`.nat` (:class:`TcpNat`, the entries' table and segment handling),
:mod:`.lifecycle` (phases and transitions), :mod:`.conn` (one entry), :mod:`.memory` (the
memory budget), :mod:`.timers` (deadlines, RTT and RTO). The constants below are read at use
(replay may set them to a journal's values).

Theory of operation
-------------------
The guest speaks TCP to us; the host side is a plain stream socket run by the shell
(:mod:`slirptrio.shell.flows`). Each guest connection is one *entry*, keyed by
(guest address, guest port, destination address, destination port) and named by a flow id.
We play the server towards the guest and terminate its TCP completely: sequence numbers,
windows, retransmission and FIN/RST handling towards the guest are ours; towards the host only
byte streams, EOF and errors exist.

Entry lifecycle: the phases of :class:`~slirptrio.core.tcp.lifecycle.Phase` and their
transitions (:data:`~slirptrio.core.tcp.lifecycle.TRANSITIONS`; a test keeps these arrows equal
to the table)::

    new entry ──guest SYN──> SYN_PENDING
    new entry ──forwarded connection, our SYN──> SYN_SENT
    SYN_SENT ──guest SYN-ACK──> SYNCED
    SYN_SENT ──reset, refused or given up (TcpClose abort)──> CLOSED
    SYN_PENDING ──TcpConnected, our SYN-ACK──> SYN_RECEIVED
    SYN_PENDING ──reset, refused or given up (TcpClose abort)──> CLOSED
    SYN_RECEIVED ──guest ACK──> SYNCED
    SYN_RECEIVED ──reset, refused or given up (TcpClose abort)──> CLOSED
    SYNCED ──both FINs acked, ours first──> TIME_WAIT
    SYNCED ──guest side over, host bytes unsent──> DRAINING
    SYNCED ──closed (TcpClose)──> CLOSED
    SYNCED ──reset, refused or given up (TcpClose abort)──> CLOSED
    TIME_WAIT ──guest side over, host bytes unsent──> DRAINING
    TIME_WAIT ──closed (TcpClose)──> CLOSED
    TIME_WAIT ──reset, refused or given up (TcpClose abort)──> CLOSED
    DRAINING ──closed (TcpClose)──> CLOSED
    DRAINING ──reset, refused or given up (TcpClose abort)──> CLOSED

SYN_PENDING ignores the guest's SYN retransmits (TcpConnect is out); SYN_RECEIVED retransmits
the SYN-ACK on RTO. Within SYNCED the RFC 9293 state (``info`` shows it) follows the FINs::

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
the buffer sends a window update. ``TcpDataSent`` is a ``TcpSent`` the shell held back and a
``TcpData``, in one step: the shell holds a complete send's report only while
``sent_can_wait`` (read-only) says it sends the guest nothing, so a request/response round trip
costs two steps, not three; replay needs no such check, the journal has what was reported.

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
re-counts its part after every event (:func:`.memory.commit`). Up to half of ``mem_budget`` nothing
changes. Past it, an entry may grow in a direction (new window, new credit) only up to what the
budget has left, or its share (``MEM_SHARE_DIVISOR``) when that is more: the largest entries
stop first, every entry keeps its share. Past the whole budget, data arriving inside windows
advertised earlier is kept only up to the entry's share (the rest is dropped, the guest
retransmits), so ``mem_used`` stays below one and a half budgets.
"""

from __future__ import annotations

# Journal headers record every constant this module's namespace held when it was one file,
# these imported ones too; replay counts a missing one as a conflict, so they stay here.
from slirptrio.core.martian import LOOPBACK
from slirptrio.wire.tcp import ACK, FIN, PSH, RST, SYN, URG

IPPROTO_TCP = 6
_MS = 1_000_000
_SEC = 1_000_000_000
RTO_INITIAL_NS: int = _SEC
RTO_MAX_NS: int = 60 * _SEC
DEFAULT_MSS = 536  # RFC 9293: assumed when the SYN carries no MSS option
MAX_FLOWS = 4096
MAX_HALF_OPEN = 256
BUFFER_SIZE = 256 * 1024  # per direction and entry: receive window and send buffer
RTO_MIN_NS: int = 200 * _MS
DELACK_NS: int = 5 * _MS
GIVE_UP_NS: int = 180 * _SEC
SYN_GIVE_UP_NS: int = 60 * _SEC
FIN_GIVE_UP_NS: int = 30 * _SEC
TIME_WAIT_NS: int = 2 * _SEC
CONNECT_TIMEOUT_NS: int = 75 * _SEC
DRAIN_TIMEOUT_NS: int = 60 * _SEC
MAX_OOO_SEGMENTS = 512
MIN_SND_MSS = 48  # a smaller MSS from the guest is raised to this (Linux's tcp_min_snd_mss)
HALF_OPEN_DEST_SHARE = 4
"""One destination address may hold at most ``max_half_open // HALF_OPEN_DEST_SHARE`` (and at
least 8) of the half-open entries, so connects to one unreachable address cannot lock the
guest out of every other."""
HALF_OPEN_PRESSURE = 2
"""Past ``max_half_open // HALF_OPEN_PRESSURE`` half-open entries, the table is under pressure:
every half-open entry gets at most ``PRESSURE_CONNECT_TIMEOUT_NS`` to complete."""
PRESSURE_CONNECT_TIMEOUT_NS: int = 5 * _SEC
"""Connect (and handshake) deadline of half-open entries under pressure: room for two SYN
retransmissions; past it the guest gets RST and the host connect is abandoned."""
MEM_SHARE_DIVISOR = 4
"""Under memory pressure each entry may always hold ``mem_budget / (MEM_SHARE_DIVISOR * n)``
bytes per direction (n entries; at least ``MEM_MIN_SHARE``): all these shares together are
half the budget, so a guaranteed share never starves a flow and the total stays below one and
a half budgets."""
MEM_MIN_SHARE = 4096
OOW_ACK_INTERVAL_NS: int = 200 * _MS
"""Least time between two ACKs answering unacceptable zero-length segments of one entry
(keepalive and window probes, old duplicates): no ACK ping-pong with a desynchronised peer,
and still an answer to every probe (a probe timer never runs below 200 ms)."""


# The package's face; the modules read the constants above from here, at use.
from slirptrio.core.tcp.conn import _Conn, state_name  # noqa: E402
from slirptrio.core.tcp.lifecycle import TRANSITIONS, Phase, Trigger  # noqa: E402
from slirptrio.core.tcp.nat import TcpNat  # noqa: E402

__all__ = [
    "ACK", "FIN", "LOOPBACK", "PSH", "RST", "SYN", "TRANSITIONS", "URG", "Phase", "TcpNat",
    "Trigger", "_Conn", "state_name",
]  # fmt: skip

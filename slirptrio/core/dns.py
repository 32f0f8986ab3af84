"""DNS relay at the virtual ``dns=`` address: guest queries to upstream resolvers and back.

Theory of operation
-------------------
The guest sends its UDP queries to ``dns:53``. Each query is forwarded, with a fresh random
transaction id, to the current upstream resolver over a host UDP socket (one relay flow per
upstream, opened on demand with :class:`UdpOpen`, closed after ``idle_timeout_ns`` without
traffic once no query sent there is still waiting; a new socket means a new source port).
The table of queries in flight maps the upstream id back to the guest's address, port and id;
an answer is accepted only on a flow the query went to, with a known id and the same
question (case-insensitive), and is given back to the guest from ``dns:53`` with the guest's id.

Fresh ids, as a resolver should use, keep one guest's ids from colliding with another's
retransmission and make blind spoofing of the relay as hard as of a stub resolver.

Failure: a query still unanswered ``timeout_ns`` after it arrived is answered with SERVFAIL
built from the query itself (same id and question), so the guest hears an answer rather than
silence. A host error on an upstream's socket (e.g. port unreachable) moves the queries sent
there to the next upstream not yet tried, or answers SERVFAIL at once. The guest retransmitting
a query in flight (same address, port and id) resends it, to the next upstream when there are
several. With no upstream at all, the guest gets SERVFAIL immediately; before the shell has
reported the list (:class:`DnsUpstreams`, an event so replay sees the same list), queries wait.

Upstream state: an upstream is *up* once it answers and *failing* once a query sent there
timed out or its socket reported an error; each change is logged once (not per query), counted
(``dns_upstream_failing``, ``dns_upstream_recovered``) and shown by :meth:`upstream_states`
(``ctl info``). The state is observation only: it changes no answer.

Bounded: at most ``max_pending`` queries in flight; beyond that the guest gets SERVFAIL.
The header codec below reads only what the relay needs and never trusts a count or a length
byte without a bounds check; dpkt is not used here.
"""

from __future__ import annotations

import collections
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from slirptrio.core import snapshot as snap
from slirptrio.core.events import Effect, UdpClose, UdpOpen, UdpSend
from slirptrio.core.martian import is_loopback_host
from slirptrio.core.prng import Prng
from slirptrio.syntax.address import hostport
from slirptrio.syntax.address import parse_upstream as parse_upstream
from slirptrio.wire import MalformedFrame

log = logging.getLogger("slirptrio.core.dns")
upstream_log = logging.getLogger("slirptrio.core.dns.upstream")
"""One line per change of an upstream's state (answering, failing); replay quiets it."""

DNS_PORT = 53
HEADER = struct.Struct(">HHHHHH")
HEADER_LEN = HEADER.size
_ID = struct.Struct(">H")

FLAG_QR = 0x8000
FLAG_OPCODE = 0x7800
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_CD = 0x0010
RCODE_SERVFAIL = 2

SendUdp = Callable[[bytes, int, bytes, int, bytes], None]
"""send_udp(src_ip, src_port, dst_ip, dst_port, payload): one UDP datagram to the guest."""


# ------------------------------------------------------------------------------- the codec


@dataclass(frozen=True, slots=True)
class DnsHeader:
    """The fixed 12-byte DNS header."""

    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)


def parse_header(msg: bytes | memoryview) -> DnsHeader:
    """The header of a DNS message; MalformedFrame("dns_short") if there is none."""
    if len(msg) < HEADER_LEN:
        raise MalformedFrame("dns_short", f"{len(msg)} bytes")
    return DnsHeader(*HEADER.unpack_from(msg))


def _skip_name(msg: bytes | memoryview, pos: int) -> int:
    """The offset just past the (possibly compressed) name at ``pos``."""
    for _ in range(128):
        if pos >= len(msg):
            raise MalformedFrame("dns_name", "runs past the end")
        n = msg[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            if pos + 2 > len(msg):
                raise MalformedFrame("dns_name", "truncated pointer")
            return pos + 2
        if n & 0xC0:
            raise MalformedFrame("dns_name", f"label type {n:#x}")
        pos += 1 + n
    raise MalformedFrame("dns_name", "too many labels")


def question(msg: bytes | memoryview) -> bytes:
    """The question section (QNAME, QTYPE, QCLASS of every question), names lower-cased."""
    hdr = parse_header(msg)
    pos = HEADER_LEN
    parts: list[bytes] = []
    for _ in range(hdr.qdcount):
        end = _skip_name(msg, pos)
        if end + 4 > len(msg):
            raise MalformedFrame("dns_question", "truncated")
        parts.append(bytes(msg[pos:end]).lower())
        parts.append(bytes(msg[end : end + 4]))
        pos = end + 4
    return b"".join(parts)


def with_id(msg: bytes | memoryview, ident: int) -> bytes:
    """``msg`` with its transaction id replaced."""
    return _ID.pack(ident) + bytes(msg[2:])


def servfail(query: bytes | memoryview) -> bytes:
    """A SERVFAIL response to ``query``: same id, opcode, RD, CD and question (if readable)."""
    hdr = parse_header(query)
    try:
        qsec = question(query) if hdr.qdcount == 1 else b""
    except MalformedFrame:
        qsec = b""
    if qsec:
        qsec = bytes(query[HEADER_LEN : HEADER_LEN + len(qsec)])
    flags = FLAG_QR | FLAG_RA | (hdr.flags & (FLAG_OPCODE | FLAG_RD | FLAG_CD)) | RCODE_SERVFAIL
    return HEADER.pack(hdr.id, flags, 1 if qsec else 0, 0, 0, 0) + qsec


# ------------------------------------------------------------------------ upstream lists


def format_upstreams(servers: list[tuple[str, int]]) -> str:
    """The :class:`DnsUpstreams` text for a list of (host, port)."""
    return " ".join(hostport(h, p) for h, p in servers)


def parse_upstreams(text: str) -> list[tuple[str, int]]:
    """Inverse of :func:`format_upstreams`; entries that do not parse are skipped."""
    out: list[tuple[str, int]] = []
    for item in text.split():
        try:
            out.append(parse_upstream(item))
        except ValueError:
            log.warning("ignoring bad DNS upstream %r", item)
    return out


def _errno_name(n: int) -> str:
    """``ECONNREFUSED``-style names for the numbers Linux uses (a table: the core has no os)."""
    return _ERRNO_NAMES.get(n, str(n))


_ERRNO_NAMES = {111: "ECONNREFUSED", 113: "EHOSTUNREACH", 101: "ENETUNREACH", 110: "ETIMEDOUT",
                13: "EACCES", 1: "EPERM", 104: "ECONNRESET", 90: "EMSGSIZE"}


# ------------------------------------------------------------------------------ the relay


class _Pending:
    __slots__ = (
        "deadline_ns",
        "flows",
        "guest",
        "guest_id",
        "query",
        "question",
        "server",
        "tried",
        "upstream_id",
    )

    def __init__(
        self,
        upstream_id: int,
        guest: tuple[bytes, int],
        guest_id: int,
        query: bytes,
        qsec: bytes,
        deadline_ns: int,
    ) -> None:
        self.upstream_id = upstream_id
        self.guest = guest
        self.guest_id = guest_id
        self.query = query
        self.question = qsec
        self.deadline_ns = deadline_ns
        self.server = b""  # the address the guest asked (the answer's source)
        self.tried: list[int] = []  # upstream indexes, in order
        self.flows: list[int] = []  # relay flows the query went out on


_PENDING_CODECS: dict[str, snap.Codec] = {"guest": snap.TUPLE}


class _Upstream:
    __slots__ = ("busy_until_ns", "flow", "last_used_ns")

    def __init__(self, flow: int, now_ns: int) -> None:
        self.flow = flow
        self.last_used_ns = now_ns
        self.busy_until_ns = now_ns  # the latest deadline of a query sent here

    def idle_at(self, idle_timeout_ns: int) -> int:
        return max(self.last_used_ns + idle_timeout_ns, self.busy_until_ns)


class DnsRelay:
    """Relays the guest's UDP DNS queries at ``dns_ip:53`` to the upstream resolvers.

    Args:
      send_udp: queues one UDP datagram to the guest.
      alloc_flow: returns a new flow id (shared with every other host flow).
      rng: the stack's PRNG (upstream transaction ids).
      counters: where ``dns_*`` counts go.
      dns_ip: the virtual DNS address (packed).
      enabled: False under restrict=on (queries are dropped, as libslirp does).
      loopback_ok: False under hostloopback=off: upstreams on the host's own loopback
        (127.0.0.53, ::1, 0.0.0.0) are left out, UDP and TCP alike, so the relay is no way
        around the option; with none left the guest gets SERVFAIL.
      timeout_ns: how long a query may wait for its answer before the guest gets SERVFAIL.
      idle_timeout_ns: an upstream socket idle this long is closed.
      max_pending: queries in flight at once.
    """

    def __init__(
        self,
        *,
        send_udp: SendUdp,
        alloc_flow: Callable[[], int],
        rng: Prng,
        counters: collections.Counter[str],
        dns_ip: bytes,
        enabled: bool = True,
        loopback_ok: bool = True,
        timeout_ns: int = 5_000_000_000,
        idle_timeout_ns: int = 10_000_000_000,
        max_pending: int = 256,
    ) -> None:
        self._send_udp = send_udp
        self._alloc_flow = alloc_flow
        self._rng = rng
        self.counters = counters
        self.dns_ip = dns_ip
        self.enabled = enabled
        self.loopback_ok = loopback_ok
        self.timeout_ns = timeout_ns
        self.idle_timeout_ns = idle_timeout_ns
        self.max_pending = min(max_pending, 0x8000)
        self.upstreams: list[tuple[str, int]] | None = None  # None: not reported yet
        self._reported: list[tuple[str, int]] | None = None  # as reported, before filtering
        self._open: dict[int, _Upstream] = {}  # upstream index -> its relay flow
        self._flow_index: dict[int, int] = {}  # relay flow -> upstream index
        self._pending: dict[int, _Pending] = {}  # upstream id -> query, oldest first
        self._by_guest: dict[tuple[bytes, int, int], int] = {}  # (ip, port, id) -> upstream id
        self._health: dict[str, str] = {}  # "host:port" -> "up" | "failing: REASON"

    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "_send_udp", "_alloc_flow", "_rng", "counters", "dns_ip", "enabled", "timeout_ns",
        "idle_timeout_ns", "max_pending", "loopback_ok",
    })  # fmt: skip
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"_flow_index", "_by_guest"})

    def snapshot_state(self) -> dict[str, Any]:
        """Upstreams, their open relay flows and the queries in flight (oldest first)."""
        ups = self.upstreams
        return {
            "upstreams": None if ups is None else [[h, p] for h, p in ups],
            "_reported": None if self._reported is None else [[h, p] for h, p in self._reported],
            "_open": [[i, snap.dump_slots(u)] for i, u in self._open.items()],
            "_pending": [snap.dump_slots(p, _PENDING_CODECS) for p in self._pending.values()],
            "_health": dict(self._health),
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        ups = state["upstreams"]
        self.upstreams = None if ups is None else [(h, p) for h, p in ups]
        rep = state["_reported"]
        self._reported = None if rep is None else [(h, p) for h, p in rep]
        self._open = {i: snap.load_slots(_Upstream, raw) for i, raw in state["_open"]}
        self._health = dict(state.get("_health", {}))  # older snapshots: nothing seen yet
        self._flow_index = {u.flow: i for i, u in self._open.items()}
        self._pending = {}
        self._by_guest = {}
        for raw in state["_pending"]:
            p = snap.load_slots(_Pending, raw, _PENDING_CODECS)
            self._pending[p.upstream_id] = p
            self._by_guest[(p.guest[0], p.guest[1], p.guest_id)] = p.upstream_id

    # ------------------------------------------------------------------------ public face

    def owns(self, flow: int) -> bool:
        """Whether ``flow`` is one of the relay's upstream sockets."""
        return flow in self._flow_index

    def tcp_upstream(self) -> tuple[str, int] | None:
        """Where a guest's TCP connection to ``dns:53`` should go (the first upstream)."""
        return self.upstreams[0] if self.upstreams else None

    def pending(self) -> int:
        return len(self._pending)

    def upstream_states(self) -> list[dict[str, str]]:
        """Each current upstream and its state: ``up`` (it answered last), ``failing: ...``
        (its last query timed out or its socket failed), or ``unused`` (not asked yet)."""
        return [{"upstream": name, "state": self._health.get(name, "unused")}
                for name in (format_upstreams([u]) for u in self.upstreams or [])]

    def _mark(self, index: int | None, state: str) -> None:
        """Upstream ``index`` is ``up`` or ``failing: REASON``; a change is logged once."""
        ups = self.upstreams
        if index is None or not ups or index >= len(ups):
            return
        name = format_upstreams([ups[index]])
        before = self._health.get(name, "unused")
        if before == state or (before.startswith("failing") and state.startswith("failing")):
            return
        self._health[name] = state
        if state == "up":
            if before != "unused":
                self.counters["dns_upstream_recovered"] += 1
                upstream_log.warning("DNS upstream %s answers again", name)
        else:
            self.counters["dns_upstream_failing"] += 1
            upstream_log.warning("DNS upstream %s is %s; the guest gets SERVFAIL after %.1f s "
                                 "until it answers", name, state, self.timeout_ns / 1e9)

    def guest_query(
        self,
        guest_ip: bytes,
        guest_port: int,
        data: bytes | memoryview,
        now_ns: int,
        *,
        server_ip: bytes | None = None,
    ) -> list[Effect]:
        """A UDP datagram from the guest to ``dns:53`` (or to ``server_ip``:53, the address
        the answers then come from: the IPv6 DNS address)."""
        server = self.dns_ip if server_ip is None else server_ip
        c = self.counters
        if not self.enabled:
            c["dns_restricted"] += 1
            return []
        try:
            hdr = parse_header(data)
        except MalformedFrame:
            c["dns_malformed"] += 1
            return []
        if hdr.is_response:
            c["dns_not_a_query"] += 1
            return []
        c["dns_queries"] += 1
        query = bytes(data)
        out: list[Effect] = []
        known = self._by_guest.get((guest_ip, guest_port, hdr.id))
        if known is not None:
            c["dns_retransmits"] += 1
            self._send(self._pending[known], now_ns, out, failover=True)
            return out
        if self.upstreams == []:
            c["dns_no_upstream"] += 1
            self._send_udp(server, DNS_PORT, guest_ip, guest_port, servfail(query))
            return out
        if len(self._pending) >= self.max_pending:
            c["dns_pending_full"] += 1
            self._send_udp(server, DNS_PORT, guest_ip, guest_port, servfail(query))
            return out
        try:
            qsec = question(query)
        except MalformedFrame:
            qsec = b""
        uid = self._rng.below(0x10000)
        while uid in self._pending:
            uid = self._rng.below(0x10000)
        p = _Pending(uid, (guest_ip, guest_port), hdr.id, query, qsec, now_ns + self.timeout_ns)
        p.server = server
        self._pending[uid] = p
        self._by_guest[(guest_ip, guest_port, hdr.id)] = uid
        if self.upstreams is not None:
            self._send(p, now_ns, out, failover=False)
        return out

    def set_upstreams(self, text: str, now_ns: int) -> list[Effect]:
        """A :class:`DnsUpstreams` report: switch to the new list if it differs."""
        servers = parse_upstreams(text)
        if not self.loopback_ok:
            kept = [(h, p) for h, p in servers if not is_loopback_host(h)]
            if len(kept) < len(servers) and servers != self._reported:
                self.counters["dns_upstream_loopback_skipped"] += 1
                log.warning(
                    "hostloopback=off: not using DNS upstream %s on the host's loopback%s",
                    format_upstreams([s for s in servers if s not in kept]),
                    "" if kept else "; give a reachable one with --dns-upstream",
                )
            self._reported = servers
            servers = kept
        if servers == self.upstreams:
            return []
        log.info("DNS upstreams: %s", format_upstreams(servers) or "(none)")
        self.counters["dns_upstream_changes"] += 1
        self.upstreams = servers
        out: list[Effect] = [UdpClose(u.flow) for u in self._open.values()]
        self._open.clear()
        self._flow_index.clear()
        for p in list(self._pending.values()):
            p.tried.clear()
            p.flows.clear()
            self._send(p, now_ns, out, failover=False)
        return out

    def received(self, flow: int, data: bytes, now_ns: int) -> list[Effect]:
        """A datagram from an upstream (``flow`` is one of :meth:`owns`)."""
        c = self.counters
        index = self._flow_index.get(flow)
        if index is not None:
            self._open[index].last_used_ns = now_ns
        try:
            hdr = parse_header(data)
        except MalformedFrame:
            c["dns_bad_answer"] += 1
            return []
        p = self._pending.get(hdr.id)
        if p is None or flow not in p.flows or not hdr.is_response:
            c["dns_unmatched_answer"] += 1
            return []
        if hdr.qdcount:
            try:
                qsec = question(data)
            except MalformedFrame:
                qsec = None
            if qsec != p.question:
                c["dns_unmatched_answer"] += 1
                return []
        self._forget(p)
        c["dns_answers"] += 1
        self._mark(index, "up")
        self._send_udp(p.server, DNS_PORT, p.guest[0], p.guest[1], with_id(data, p.guest_id))
        return []

    def error(self, flow: int, errno: int, now_ns: int) -> list[Effect]:
        """A host error on an upstream's socket: fail over, or SERVFAIL what went there."""
        self.counters["dns_upstream_errors"] += 1
        log.debug("DNS upstream flow %d: error %d", flow, errno)
        self._mark(self._flow_index.get(flow), f"failing: error {_errno_name(errno)}")
        out: list[Effect] = []
        for p in list(self._pending.values()):
            if p.flows and p.flows[-1] == flow:
                if self.upstreams and len(p.tried) < len(self.upstreams):
                    self._send(p, now_ns, out, failover=True)
                else:
                    self._fail(p)
        return out

    def poll_at(self) -> int | None:
        t: int | None = None
        for p in self._pending.values():
            t = p.deadline_ns
            break
        for u in self._open.values():
            d = u.idle_at(self.idle_timeout_ns)
            if t is None or d < t:
                t = d
        return t

    def tick(self, now_ns: int) -> list[Effect]:
        """SERVFAIL the queries whose time is up; close idle upstream sockets."""
        while self._pending:
            p = next(iter(self._pending.values()))
            if p.deadline_ns > now_ns:
                break
            self.counters["dns_timeouts"] += 1
            if p.tried:
                self._mark(p.tried[-1], f"failing: no answer in {self.timeout_ns / 1e9:g} s")
            self._fail(p)
        out: list[Effect] = []
        for index, u in list(self._open.items()):
            if u.idle_at(self.idle_timeout_ns) <= now_ns:
                del self._open[index]
                del self._flow_index[u.flow]
                out.append(UdpClose(u.flow))
        return out

    # ---------------------------------------------------------------------------- helpers

    def _send(self, p: _Pending, now_ns: int, out: list[Effect], *, failover: bool) -> None:
        ups = self.upstreams
        if not ups:
            if ups == []:
                self._fail(p)
            return
        if not p.tried:
            index = 0
        elif failover:
            index = (p.tried[-1] + 1) % len(ups)
        else:
            index = p.tried[-1]
        if index not in p.tried:
            p.tried.append(index)
        u = self._open.get(index)
        if u is None:
            u = _Upstream(self._alloc_flow(), now_ns)
            self._open[index] = u
            self._flow_index[u.flow] = index
            host, port = ups[index]
            out.append(UdpOpen(u.flow, host, port))
        u.last_used_ns = now_ns
        u.busy_until_ns = max(u.busy_until_ns, p.deadline_ns)
        if u.flow in p.flows:
            p.flows.remove(u.flow)
        p.flows.append(u.flow)
        self.counters["dns_forwarded"] += 1
        out.append(UdpSend(u.flow, with_id(p.query, p.upstream_id)))

    def _fail(self, p: _Pending) -> None:
        self._forget(p)
        self.counters["dns_servfail"] += 1
        self._send_udp(p.server, DNS_PORT, p.guest[0], p.guest[1], servfail(p.query))

    def _forget(self, p: _Pending) -> None:
        del self._pending[p.upstream_id]
        self._by_guest.pop((p.guest[0], p.guest[1], p.guest_id), None)

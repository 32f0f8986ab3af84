"""Whole sessions for the core, generated from short lists of abstract actions.

:func:`actions` is a Hypothesis strategy for a list of actions (a guest's DHCP, ARP, pings,
UDP, DNS, fragments, TCP segments; the host's socket results; time passing, timer ticks,
forwards). :func:`drive` plays them against a fresh :class:`Stack`: it turns each action into
a concrete event, using what the stack said so far (flow ids from its effects, sequence numbers
from the segments it sent), and returns the concrete events with their times, so a test can
feed the same session to another core. Every event stream is valid input; many are odd on
purpose (data beyond credit, stale flows, overlapping fragments).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

from slirptrio.config import Config, parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    Event,
    GuestFrame,
    GuestFwdAdd,
    GuestFwdRemove,
    GuestLink,
    IcmpEchoError,
    IcmpEchoOpen,
    IcmpEchoReply,
    IcmpUnavailable,
    SendFrame,
    TcpConnect,
    TcpConnected,
    TcpConnectFailed,
    TcpData,
    TcpEof,
    TcpInbound,
    TcpReset,
    TcpSend,
    TcpSent,
    Tick,
    UdpError,
    UdpInbound,
    UdpOpen,
    UdpReceived,
)
from slirptrio.core.stack import Stack
from slirptrio.wire import ethernet as weth
from slirptrio.wire import ipv4 as wip
from slirptrio.wire import udp as wudp
from slirptrio.wire.tcp import ACK, FIN, RST, SYN, build_tcp
from tests import guestframes as gf

MS = 1_000_000
SEC = 1_000_000_000
GUEST_IP = gf.ip4("10.0.2.15")
GW_MAC = bytes.fromhex("52550a000202")
MACS = [gf.GUEST_MAC, bytes.fromhex("525400aabbcc"), bytes.fromhex("525400ddeeff")]
DESTS = [gf.ip4("203.0.113.1"), gf.ip4("203.0.113.9"), gf.ip4("10.0.2.2"), gf.ip4("10.0.2.3")]
OPTIONS = ["", "hostname=vm1,mtu=600", "restrict=on", "udp-timeout=3,dns-timeout=2,max-flows=3"]
M = 0xFFFFFFFF

Action = tuple[Any, ...]


def _dns_query(qid: int, name: int) -> bytes:
    labels = [f"h{name}".encode(), b"example", b"test"]
    qname = b"".join(bytes([len(x)]) + x for x in labels) + b"\0"
    header = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    return header + qname + b"\0\1\0\1"


def _dns_answer(query: bytes) -> bytes:
    return query[:2] + b"\x81\x80" + query[4:6] + b"\x00\x01\x00\x00\x00\x00" + query[12:] + (
        b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xcb\x00\x71\x4d"
    )


def _ip_frame(dst: bytes, proto: int, payload: bytes, **kw: Any) -> bytes:
    packet = wip.build_ipv4(GUEST_IP, dst, proto, payload, **kw)
    return weth.build_ethernet(GW_MAC, gf.GUEST_MAC, weth.ETH_P_IP, packet)


_small = st.integers(0, 3)
_size = st.sampled_from([0, 1, 7, 100, 536, 1400, 3000])

ACTION = st.one_of(
    st.tuples(st.just("dhcp"), st.sampled_from([1, 3, 3, 4, 7, 8]), st.integers(0, 2),
              st.booleans()),
    st.tuples(st.just("arp"), st.sampled_from(["10.0.2.2", "10.0.2.3", "10.0.2.77"])),
    st.tuples(st.just("ping"), _small, st.integers(0, 2), st.integers(0, 5)),
    st.tuples(st.just("udp"), _small, st.integers(0, 3), _size),
    st.tuples(st.just("dnsq"), st.integers(0, 3), st.integers(0, 2)),
    st.tuples(st.just("frag"), st.integers(0, 3), st.permutations([0, 1, 2]),
              st.integers(0, 3)),
    st.tuples(st.just("syn"), _small, st.integers(0, 2), st.booleans()),
    st.tuples(st.just("seg"), _small, st.sampled_from(["ack", "data", "fin", "rst", "ooo",
                                                        "dup", "partial", "zero"]), _size),
    st.tuples(st.just("connected"), _small),
    st.tuples(st.just("connect_failed"), _small),
    st.tuples(st.just("host_data"), _small, _size),
    st.tuples(st.just("host_sent"), _small, st.sampled_from([1, 100, 10**6])),
    st.tuples(st.just("host_eof"), _small),
    st.tuples(st.just("host_reset"), _small),
    st.tuples(st.just("udp_recv"), _small, _size),
    st.tuples(st.just("udp_error"), _small, st.integers(0, 3)),
    st.tuples(st.just("echo_reply"), _small, st.integers(0, 5)),
    st.tuples(st.just("echo_error"), _small),
    st.tuples(st.just("icmp_unavailable"), _small),
    st.tuples(st.just("upstreams"), st.integers(0, 3)),
    st.tuples(st.just("tick_due")),
    st.tuples(st.just("time"), st.sampled_from([1 * MS, 5 * MS, 300 * MS, 2 * SEC, 31 * SEC,
                                                 100 * SEC])),
    st.tuples(st.just("fwd"), st.integers(0, 4), _small),
    st.tuples(st.just("link"), st.booleans()),
    st.tuples(st.just("garbage"), st.binary(max_size=80)),
)


def _tcp_session(
    i: int, dst: int, opts: bool, exchanges: list[tuple[int, int]], close: str
) -> list[Action]:
    out: list[Action] = [("syn", i, dst, opts), ("connected", i), ("seg", i, "ack", 0)]
    for up, down in exchanges:
        out += [("seg", i, "data", up), ("host_data", i, down), ("seg", i, "ack", 0),
                ("host_sent", i, up), ("tick_due",)]
    if close == "guest":
        out += [("seg", i, "fin", 0), ("host_eof", i), ("seg", i, "ack", 0), ("tick_due",)]
    elif close == "host":
        out += [("host_eof", i), ("seg", i, "ack", 0), ("seg", i, "fin", 0), ("tick_due",),
                ("time", 3 * SEC), ("tick_due",)]
    elif close == "reset":
        out += [("host_reset", i), ("seg", i, "ack", 0)]
    return out


def _dns(qid: int) -> list[Action]:
    return [("dnsq", qid, qid), ("udp_recv", 0, 0), ("time", 300 * MS), ("tick_due",)]


# Common sequences beside single actions, so that most sessions get past handshakes into the
# interesting parts; single actions then interleave odd events anywhere.
_TCP_SESSION = st.builds(
    _tcp_session, _small, st.integers(0, 2), st.booleans(),
    st.lists(st.tuples(_size, _size), max_size=4),
    st.sampled_from(["guest", "host", "reset", "open"]),
)
BLOCK = st.one_of(
    ACTION.map(lambda a: [a]),
    ACTION.map(lambda a: [a]),
    _TCP_SESSION,
    _TCP_SESSION,
    st.builds(_dns, st.integers(0, 3)),
    st.just([("dhcp", 1, 0, False), ("dhcp", 3, 0, True), ("arp", "10.0.2.2")]),
    st.just([("ping", 0, 1, 1), ("echo_reply", 0, 1), ("time", 2 * SEC), ("tick_due",)]),
)


def actions(min_blocks: int = 8, max_blocks: int = 30) -> st.SearchStrategy[list[Action]]:
    """A session: a list of blocks (single actions or common sequences), flattened."""
    return st.lists(BLOCK, min_size=min_blocks, max_size=max_blocks).map(
        lambda blocks: [a for b in blocks for a in b]
    )


@dataclasses.dataclass
class _GuestConn:
    port: int
    dst: bytes
    dport: int
    iss: int
    nxt: int = 0  # the guest's next sequence number
    peer_nxt: int = 0  # highest sequence number the stack has sent + 1 (what we ack)
    peer_seen: bool = False
    flow: int | None = None


@dataclasses.dataclass
class Session:
    """A generated session: its config and seed, and the events with their times."""

    options: str
    seed: int
    events: list[tuple[int, Event]]
    marks: list[int] = dataclasses.field(default_factory=list)
    """Where ("mark",) actions stood: the number of events before each."""

    @property
    def config(self) -> Config:
        return parse_user_options(self.options)


class _Driver:
    def __init__(self, options: str, seed: int) -> None:
        self.stack = Stack(parse_user_options(options), seed)
        self.now = 0
        self.events: list[tuple[int, Event]] = []
        self.tcp_flows: list[int] = []
        self.udp_flows: list[int] = []
        self.echo_flows: list[int] = []
        self.conns: dict[int, _GuestConn] = {}
        self.queries: dict[int, bytes] = {}
        self.sent_to_host: dict[int, int] = {}
        self.inbound = 1 << 32
        self.marks: list[int] = []

    def step(self, event: Event) -> list[Effect]:
        self.events.append((self.now, event))
        effects = self.stack.handle(event, self.now)
        for eff in effects:
            if isinstance(eff, TcpConnect):
                self.tcp_flows.append(eff.flow)
            elif isinstance(eff, UdpOpen):
                self.udp_flows.append(eff.flow)
            elif isinstance(eff, IcmpEchoOpen):
                self.echo_flows.append(eff.flow)
            elif isinstance(eff, TcpSend):
                self.sent_to_host[eff.flow] = self.sent_to_host.get(eff.flow, 0) + len(eff.data)
            elif isinstance(eff, SendFrame):
                self._watch(eff.data)
        return effects

    def _watch(self, frame: bytes) -> None:
        """Track the stack's TCP sequence numbers toward each guest connection."""
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            return
        ihl = (frame[14] & 15) * 4
        tcp = frame[14 + ihl :]
        total = int.from_bytes(frame[16:18], "big")
        dport = int.from_bytes(tcp[2:4], "big")
        conn = self.conns.get(dport)
        if conn is None:
            return
        seq = int.from_bytes(tcp[4:8], "big")
        flags = tcp[13]
        plen = total - ihl - (tcp[12] >> 4) * 4
        end = (seq + plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & M
        if not conn.peer_seen or ((end - conn.peer_nxt) & M) < 0x80000000:
            conn.peer_nxt = end
            conn.peer_seen = True

    @staticmethod
    def pick(items: list[int], k: int) -> int | None:
        return items[k % len(items)] if items else None

    def tcp_flow(self, k: int) -> int | None:
        """Guest connection k's flow if it has one, else the k-th flow seen."""
        c = self.conns.get(40000 + k)
        if c is not None and c.flow is not None:
            return c.flow
        return self.pick(self.tcp_flows, k)

    def play(self, action: Action) -> None:
        kind = action[0]
        handler = getattr(self, "_" + kind)
        handler(*action[1:])

    # ------------------------------------------------------------------------ guest side

    def _dhcp(self, kind: int, mac_i: int, with_server: bool) -> None:
        mac = MACS[mac_i]
        if kind in (1, 8):
            frame = gf.dhcp(kind, mac=mac)
        elif kind == 7:
            frame = gf.dhcp(7, mac=mac, ciaddr=f"10.0.2.{15 + mac_i}", server="10.0.2.2")
        else:
            frame = gf.dhcp(kind, mac=mac, requested=f"10.0.2.{15 + mac_i}",
                            server="10.0.2.2" if with_server else None)
        self.step(GuestFrame(frame))

    def _arp(self, target: str) -> None:
        self.step(GuestFrame(gf.arp_request(target)))

    def _ping(self, dst_i: int, ident: int, seq: int) -> None:
        dst = ".".join(str(b) for b in DESTS[dst_i])
        self.step(GuestFrame(gf.icmp_echo(dst, ident=ident, seq=seq)))

    def _udp(self, dst_i: int, port_i: int, size: int) -> None:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        dport = [53, 5353, 9, 7][port_i]
        seg = wudp.build_udp(GUEST_IP, DESTS[dst_i], 41000 + port_i, dport, payload)
        self.step(GuestFrame(_ip_frame(DESTS[dst_i], 17, seg, ident=port_i)))

    def _dnsq(self, qid: int, name: int) -> None:
        query = _dns_query(qid, name)
        self.queries[qid] = query
        seg = wudp.build_udp(GUEST_IP, DESTS[3], 42000, 53, query)
        self.step(GuestFrame(_ip_frame(DESTS[3], 17, seg)))

    def _frag(self, ident: int, order: list[int], drop: int) -> None:
        payload = bytes((i * 7) & 255 for i in range(2400))
        seg = wudp.build_udp(GUEST_IP, DESTS[0], 43000, 9, payload)
        pieces = [(0, seg[:1000], True), (1000, seg[1000:2000], True), (2000, seg[2000:], False)]
        for i in order:
            if i == drop:
                continue
            off, chunk, mf = pieces[i]
            packet = wip.build_ipv4(GUEST_IP, DESTS[0], 17, chunk, ident=ident, mf=mf,
                                    frag_offset=off)
            self.step(GuestFrame(weth.build_ethernet(GW_MAC, gf.GUEST_MAC, weth.ETH_P_IP, packet)))

    def _tcp_frame(self, c: _GuestConn, seq: int, ack: int, flags: int, payload: bytes = b"",
                   window: int = 65535, **kw: Any) -> None:
        seg = build_tcp(GUEST_IP, c.dst, c.port, c.dport, seq & M, ack & M, flags, window,
                        payload, **kw)
        self.step(GuestFrame(_ip_frame(c.dst, 6, seg)))

    def _syn(self, i: int, dst_i: int, opts: bool) -> None:
        iss = 0xFFFFFF00 + i * 0x1000  # near the wrap
        c = _GuestConn(40000 + i, DESTS[dst_i], [80, 8080, 80][dst_i % 3], iss, nxt=iss + 1)
        self.conns[c.port] = c
        kw: dict[str, Any] = {"mss": 1400, "wscale": 7} if opts else {}
        before = len(self.tcp_flows)
        self._tcp_frame(c, iss, 0, SYN, **kw)
        if len(self.tcp_flows) > before:
            c.flow = self.tcp_flows[-1]

    def _seg(self, i: int, what: str, size: int) -> None:
        c = self.conns.get(40000 + i)
        if c is None:
            return
        data = bytes((c.nxt + k) & 255 for k in range(size))
        ack = c.peer_nxt
        if what == "ack":
            self._tcp_frame(c, c.nxt, ack, ACK)
        elif what == "data":
            self._tcp_frame(c, c.nxt, ack, ACK, data or b"x")
            c.nxt += len(data or b"x")
        elif what == "fin":
            self._tcp_frame(c, c.nxt, ack, ACK | FIN, data)
            c.nxt += len(data) + 1
        elif what == "rst":
            self._tcp_frame(c, c.nxt, ack, RST | ACK)
        elif what == "ooo":
            self._tcp_frame(c, c.nxt + 1000, ack, ACK, data or b"y")
        elif what == "dup":
            self._tcp_frame(c, c.nxt - max(1, size), ack, ACK, data or b"z")
        elif what == "partial":
            self._tcp_frame(c, c.nxt, ack - min(size, 500), ACK)
        else:  # a zero window
            self._tcp_frame(c, c.nxt, ack, ACK, window=0)

    def _garbage(self, data: bytes) -> None:
        self.step(GuestFrame(data))

    def _link(self, up: bool) -> None:
        self.step(GuestLink(up))

    # ------------------------------------------------------------------------- host side

    def _connected(self, k: int) -> None:
        flow = self.tcp_flow(k)
        if flow is not None:
            self.step(TcpConnected(flow))

    def _connect_failed(self, k: int) -> None:
        flow = self.tcp_flow(k)
        if flow is not None:
            self.step(TcpConnectFailed(flow, 111))

    def _host_data(self, k: int, size: int) -> None:
        flow = self.tcp_flow(k)
        if flow is not None:
            self.step(TcpData(flow, bytes((flow + j) & 255 for j in range(max(1, size)))))

    def _host_sent(self, k: int, n: int) -> None:
        flow = self.tcp_flow(k)
        if flow is not None:
            owed = self.sent_to_host.get(flow, 0)
            n = min(n, owed) if n < 10**6 else n  # the big one overruns on purpose
            self.sent_to_host[flow] = max(0, owed - n)
            self.step(TcpSent(flow, n))

    def _host_eof(self, k: int) -> None:
        flow = self.tcp_flow(k)
        if flow is not None:
            self.step(TcpEof(flow))

    def _host_reset(self, k: int) -> None:
        flow = self.tcp_flow(k)
        if flow is not None:
            self.step(TcpReset(flow, 104))

    def _udp_recv(self, k: int, size: int) -> None:
        flow = self.pick(self.udp_flows, k)
        if flow is None:
            return
        if self.queries and k % 2:
            query = self.queries[sorted(self.queries)[k % len(self.queries)]]
            # The relay changed the id: answer every id it could have picked is hopeless, so
            # answer with the guest's (usually unmatched) and let the relay count it.
            self.step(UdpReceived(flow, _dns_answer(query)))
        else:
            self.step(UdpReceived(flow, bytes(size)))

    def _udp_error(self, k: int, variant: int) -> None:
        flow = self.pick(self.udp_flows, k)
        if flow is not None:
            origin, icmp_type, code = [(0, 0, 0), (2, 3, 3), (2, 3, 4), (3, 1, 4)][variant]
            self.step(UdpError(flow, 111, origin, icmp_type, code, 1280, "203.0.113.254"))

    def _echo_reply(self, k: int, seq: int) -> None:
        flow = self.pick(self.echo_flows, k)
        if flow is not None:
            self.step(IcmpEchoReply(flow, seq, b"pong" * 8))

    def _echo_error(self, k: int) -> None:
        flow = self.pick(self.echo_flows, k)
        if flow is not None:
            self.step(IcmpEchoError(flow, 113, 2, 3, 1, 0, "203.0.113.254"))

    def _icmp_unavailable(self, k: int) -> None:
        flow = self.pick(self.echo_flows, k)
        if flow is not None:
            self.step(IcmpUnavailable(flow, 13))

    def _upstreams(self, variant: int) -> None:
        text = ["127.0.0.1:5353", "127.0.0.1:5353 127.0.0.2:53", "", "[::1]:53"][variant]
        self.step(DnsUpstreams(text))

    def _fwd(self, variant: int, k: int) -> None:
        if variant == 0:
            self.step(GuestFwdAdd(k, f"10.0.2.{100 + k}", 80))
        elif variant == 1:
            self.step(GuestFwdRemove(k))
        elif variant == 2:
            self.inbound += 1
            self.step(TcpInbound(self.inbound, "10.0.2.15", 22, "127.0.0.1", 50000 + k))
            self.tcp_flows.append(self.inbound)
        elif variant == 3:
            self.step(UdpInbound(k, "10.0.2.15", 53, "198.51.100.7", 6000 + k, b"hello"))
        else:
            self.step(GuestFwdAdd(k, "not an address", 80))

    # ------------------------------------------------------------------------------ time

    def _tick_due(self) -> None:
        due = self.stack.poll_at()
        if due is not None:
            self.now = max(self.now, due)
        self.step(Tick())

    def _time(self, dt: int) -> None:
        self.now += dt

    def _mark(self) -> None:
        self.marks.append(len(self.events))


def drive(acts: list[Action], options: str = "", seed: int = 1) -> Session:
    """Play ``acts`` against a fresh stack; the session's concrete events and times."""
    driver = _Driver(options, seed)
    driver.step(DnsUpstreams("127.0.0.1:5353"))
    for action in acts:
        driver.play(action)
    return Session(options, seed, driver.events, driver.marks)

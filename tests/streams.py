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
import random
from typing import Any

from hypothesis import strategies as st

from slirptrio.config import Config, parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    Event,
    FaultAdd,
    FaultRemove,
    GuestFrame,
    GuestFwdAdd,
    GuestFwdRemove,
    GuestLink,
    IcmpEchoError,
    IcmpEchoOpen,
    IcmpEchoReply,
    IcmpUnavailable,
    PortFrames,
    PortLink,
    SendFrame,
    TcpConnect,
    TcpConnected,
    TcpConnectFailed,
    TcpData,
    TcpDataSent,
    TcpEof,
    TcpInbound,
    TcpReset,
    TcpSend,
    TcpSent,
    TftpChunk,
    TftpOpen,
    TftpOpened,
    TftpRead,
    Tick,
    UdpError,
    UdpInbound,
    UdpOpen,
    UdpReceived,
)
from slirptrio.core.stack import Stack
from slirptrio.wire import ethernet as weth
from slirptrio.wire import ipv4 as wip
from slirptrio.wire import ipv6 as wip6
from slirptrio.wire import udp as wudp
from slirptrio.wire.checksum import internet_checksum, pseudo_header_sum
from slirptrio.wire.tcp import ACK, FIN, RST, SYN, build_tcp
from tests import guestframes as gf
from tests import guestframes6 as gf6

MS = 1_000_000
SEC = 1_000_000_000
GUEST_IP = gf.ip4("10.0.2.15")
GW_MAC = bytes.fromhex("52550a000202")
MACS = [gf.GUEST_MAC, bytes.fromhex("525400aabbcc"), bytes.fromhex("525400ddeeff")]
DESTS = [gf.ip4("203.0.113.1"), gf.ip4("203.0.113.9"), gf.ip4("10.0.2.2"), gf.ip4("10.0.2.3")]
# IPv6 twins of DESTS: two outside addresses, the host and the DNS address of the prefix.
GUEST_IP6 = gf6.ip6(gf6.GUEST_IP)
DESTS6 = [gf6.ip6(a) for a in ("2001:db8:1::1", "2001:db8:1::9", "fec0::2", "fec0::3")]
OPTIONS = ["", "hostname=vm1,mtu=600", "restrict=on", "udp-timeout=3,dns-timeout=2,max-flows=3",
           "tftp=/nonexistent-streams-root,bootfile=pxelinux.0"]
M = 0xFFFFFFFF

Action = tuple[Any, ...]
# Fault rules of every kind (issue 23); each draws on the rules' PRNG or holds frames back.
FAULT_RULES = [
    "loss=30%",
    "proto=udp delay=50ms jitter=20ms",
    "dir=in duplicate=50% reorder=50%",
    "dir=in rate=1mbit limit=4k",
    "ge-p=20% ge-r=50% ge-bad=90% proto=icmp",
    "corrupt=50% dir=out proto=udp",
    "proto=tcp rport=80 connect=refuse",
    "proto=tcp reset-bytes=200",
    "proto=tcp reset-after=1s",
    "proto=dns dns=servfail",
    "proto=dns name=*.test dns=nxdomain",
    "remote=203.0.113.0/24,2001:db8:1::/48 partition after=10ms for=2s",
    "proto=tcp stall",
    "proto=tcp slow-close=100ms",
]


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
    if len(dst) == 16:
        packet = wip6.build_ipv6(GUEST_IP6, dst, proto, payload)
        return weth.build_ethernet(gf6.ROUTER_MAC, gf.GUEST_MAC, weth.ETH_P_IPV6, packet)
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
    st.tuples(st.just("fwd"), st.integers(0, 7), _small),
    st.tuples(st.just("link"), st.booleans()),
    st.tuples(st.just("garbage"), st.binary(max_size=80)),
    # IPv6, as often as IPv4: the same flows over the other family, NDP and DHCPv6
    st.tuples(st.just("ping6"), _small, st.integers(0, 2), st.integers(0, 5)),
    st.tuples(st.just("udp6"), _small, st.integers(0, 3), _size),
    st.tuples(st.just("dnsq6"), st.integers(0, 3), st.integers(0, 2)),
    st.tuples(st.just("frag6"), st.integers(0, 3), st.permutations([0, 1, 2]),
              st.integers(0, 3)),
    st.tuples(st.just("syn6"), _small, st.integers(0, 3), st.booleans()),
    st.tuples(st.just("seg"), st.integers(4, 7), st.sampled_from(["ack", "data", "fin", "rst",
                                                                  "ooo", "dup", "partial",
                                                                  "zero"]), _size),
    st.tuples(st.just("ndp"), st.integers(0, 4)),
    st.tuples(st.just("dhcpv6"), st.integers(0, 3)),
    st.tuples(st.just("echo_error6"), _small),
    # TFTP over both families (a session needs a tftp= option to get anywhere)
    st.tuples(st.just("tftp_rrq"), st.booleans(), _small),
    st.tuples(st.just("tftp_opened"), _small, st.sampled_from([0, 0, 2])),
    st.tuples(st.just("tftp_chunk"), _small),
    st.tuples(st.just("tftp_ack"), _small, st.integers(0, 3)),
)


def _tcp_session(
    i: int, dst: int, opts: bool, exchanges: list[tuple[int, int]], close: str, v6: bool = False
) -> list[Action]:
    if v6:
        i += 4  # guest connections 4-7 are the IPv6 ones
    out: list[Action] = [("syn6" if v6 else "syn", i, dst, opts), ("connected", i),
                         ("seg", i, "ack", 0)]
    for j, (up, down) in enumerate(exchanges):
        if j % 2:  # the live shell's request/response: the send's report rides on the answer
            out += [("seg", i, "data", up), ("host_data_sent", i, up, down),
                    ("seg", i, "ack", 0), ("tick_due",)]
            continue
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


def _dns(qid: int, v6: bool = False) -> list[Action]:
    return [("dnsq6" if v6 else "dnsq", qid, qid), ("udp_recv", 0, 0), ("time", 300 * MS),
            ("tick_due",)]


def _tftp(v6: bool, k: int, blocks: int) -> list[Action]:
    """A whole TFTP read: the request, the shell's open and reads, the guest's acks."""
    out: list[Action] = [("tftp_rrq", v6, k), ("tftp_opened", k, 0)]
    for b in range(blocks):
        out += [("tftp_chunk", k), ("tftp_ack", k, b % 4)]
    return out


# Common sequences beside single actions, so that most sessions get past handshakes into the
# interesting parts; single actions then interleave odd events anywhere.
_TCP_SESSION = st.builds(
    _tcp_session, _small, st.integers(0, 3), st.booleans(),
    st.lists(st.tuples(_size, _size), max_size=4),
    st.sampled_from(["guest", "host", "reset", "open"]), st.booleans(),
)
BLOCK = st.one_of(
    ACTION.map(lambda a: [a]),
    ACTION.map(lambda a: [a]),
    _TCP_SESSION,
    _TCP_SESSION,
    st.builds(_dns, st.integers(0, 3), st.booleans()),
    st.just([("dhcp", 1, 0, False), ("dhcp", 3, 0, True), ("arp", "10.0.2.2")]),
    st.just([("ndp", 0), ("ndp", 1), ("dhcpv6", 0)]),
    st.just([("ping", 0, 1, 1), ("echo_reply", 0, 1), ("time", 2 * SEC), ("tick_due",)]),
    st.just([("ping6", 0, 1, 1), ("echo_reply", 0, 1), ("time", 2 * SEC), ("tick_due",)]),
    # one block per family: a drawn boolean leans to False, and IPv6 reads would be rare
    st.builds(_tftp, st.just(False), _small, st.integers(0, 3)),
    st.builds(_tftp, st.just(True), _small, st.integers(0, 3)),
    # fault rules (issue 23) put in force, or taken out, while everything else goes on
    st.tuples(st.just("fault"), st.integers(0, 2),
              st.integers(0, len(FAULT_RULES) - 1)).map(lambda a: [a]),
    st.tuples(st.just("fault_rm"), st.integers(-1, 2)).map(lambda a: [a]),
    # other guests on further switch ports (issue 22): they come, send, and go
    st.tuples(st.just("port_link"), st.integers(1, 2), st.booleans()).map(lambda a: [a]),
    st.tuples(st.just("port_frames"), st.integers(1, 2),
              st.integers(0, 2**32 - 1)).map(lambda a: [a]),
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
    src: bytes = GUEST_IP
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
        self.tftp: list[int] = []  # TFTP session ids, in the order the stack opened them
        self.tftp_reads: dict[int, tuple[int, int]] = {}  # session: the last read asked
        self.tftp_peer: dict[int, tuple[bool, int]] = {}  # session: (IPv6, guest port)
        self.tftp_blocks: dict[int, int] = {}  # session: the last DATA block sent

    def step(self, event: Event) -> list[Effect]:
        self.events.append((self.now, event))
        effects = self.stack.handle(event, self.now)
        assert self.stack.poll_at() == self.stack.poll_at_fresh(), f"poll_at stale: {event!r:.200}"
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
            elif isinstance(eff, TftpOpen):
                self.tftp.append(eff.session)
            elif isinstance(eff, TftpRead):
                self.tftp_reads[eff.session] = (eff.offset, eff.size)
        return effects

    def _watch(self, frame: bytes) -> None:
        """Track the stack's TCP sequence numbers toward each guest connection, and the TFTP
        blocks it sends."""
        if len(frame) >= 54 and frame[12:14] == b"\x08\x00":
            ihl = (frame[14] & 15) * 4
            proto, l4 = frame[23], frame[14 + ihl : 14 + int.from_bytes(frame[16:18], "big")]
        elif len(frame) >= 74 and frame[12:14] == b"\x86\xdd":
            proto, l4 = frame[20], frame[54 : 54 + int.from_bytes(frame[18:20], "big")]
        else:
            return
        if proto == 17 and len(l4) >= 12 and l4[8:10] == b"\x00\x03":
            self._watch_tftp(l4)
        if proto != 6 or len(l4) < 20:
            return
        tcp = l4
        dport = int.from_bytes(tcp[2:4], "big")
        conn = self.conns.get(dport)
        if conn is None:
            return
        seq = int.from_bytes(tcp[4:8], "big")
        flags = tcp[13]
        plen = len(tcp) - (tcp[12] >> 4) * 4
        end = (seq + plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & M
        if not conn.peer_seen or ((end - conn.peer_nxt) & M) < 0x80000000:
            conn.peer_nxt = end
            conn.peer_seen = True

    def _watch_tftp(self, l4: bytes) -> None:
        dport = int.from_bytes(l4[2:4], "big")
        for sid, (_v6, port) in self.tftp_peer.items():
            if port == dport:
                self.tftp_blocks[sid] = int.from_bytes(l4[10:12], "big")

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
        seg = build_tcp(c.src, c.dst, c.port, c.dport, seq & M, ack & M, flags, window,
                        payload, **kw)
        self.step(GuestFrame(_ip_frame(c.dst, 6, seg)))

    def _syn(self, i: int, dst_i: int, opts: bool, v6: bool = False) -> None:
        iss = 0xFFFFFF00 + i * 0x1000  # near the wrap
        # to the DNS address: port 53, DNS over TCP through the relay's upstream
        dport = 53 if dst_i == 3 else [80, 8080, 80][dst_i % 3]
        dst, src = (DESTS6[dst_i], GUEST_IP6) if v6 else (DESTS[dst_i], GUEST_IP)
        c = _GuestConn(40000 + i, dst, dport, iss, src=src, nxt=iss + 1)
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

    def _syn6(self, i: int, dst_i: int, opts: bool) -> None:
        self._syn(i, dst_i, opts, v6=True)

    def _ping6(self, dst_i: int, ident: int, seq: int) -> None:
        dst = DESTS6[dst_i]
        body = (128 << 24).to_bytes(4, "big") + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
        self.step(GuestFrame(_ip_frame(dst, 58, _icmp6(body + b"ping6!" * 8, dst))))

    def _udp6(self, dst_i: int, port_i: int, size: int) -> None:
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        dport = [53, 5353, 9, 7][port_i]
        seg = wudp.build_udp(GUEST_IP6, DESTS6[dst_i], 41000 + port_i, dport, payload)
        self.step(GuestFrame(_ip_frame(DESTS6[dst_i], 17, seg)))

    def _dnsq6(self, qid: int, name: int) -> None:
        query = _dns_query(qid, name)
        self.queries[qid] = query
        seg = wudp.build_udp(GUEST_IP6, DESTS6[3], 42000, 53, query)
        self.step(GuestFrame(_ip_frame(DESTS6[3], 17, seg)))

    def _frag6(self, ident: int, order: list[int], drop: int) -> None:
        payload = bytes((i * 7) & 255 for i in range(2400))
        seg = wudp.build_udp(GUEST_IP6, DESTS6[0], 43000, 9, payload)
        pieces = [(0, seg[:1000], True), (1000, seg[1000:2000], True), (2000, seg[2000:], False)]
        for i in order:
            if i == drop:
                continue
            off, chunk, mf = pieces[i]
            body = wip6.fragment_header(17, off, mf, 0x10000 + ident) + chunk
            self.step(GuestFrame(_ip_frame(DESTS6[0], 44, body)))

    def _ndp(self, variant: int) -> None:
        frame = [
            lambda: gf6.router_solicit(),
            lambda: gf6.neighbor_solicit("fe80::2"),
            lambda: gf6.neighbor_solicit("fec0::2", src=gf6.GUEST_IP),
            lambda: gf6.neighbor_advert(gf6.GUEST_IP),
            lambda: gf6.neighbor_solicit("fec0::3", src="::"),  # duplicate address detection
        ][variant]()
        self.step(GuestFrame(frame))

    def _dhcpv6(self, variant: int) -> None:
        duid = (1, gf6.CLIENT_DUID)
        options = [
            [duid, (6, bytes.fromhex("00170018003b"))],  # information-request: DNS, search
            [duid, (3, bytes(12)), (6, bytes.fromhex("0017"))],  # solicit with an IA_NA
            [duid],
            [(6, bytes.fromhex("0017"))],  # no client id
        ][variant]
        kind = [11, 1, 11, 11][variant]
        self.step(GuestFrame(gf6.dhcpv6(kind, options, xid=0x100 + variant)))

    def _echo_error6(self, k: int) -> None:
        flow = self.pick(self.echo_flows, k)
        if flow is not None:  # an ICMPv6 "address unreachable" from a router on the way
            self.step(IcmpEchoError(flow, 113, 3, 1, 3, 0, "2001:db8:ff::1"))

    # TFTP: the guest's side (requests, acks) and the shell's (opens, reads)
    def _tftp_rrq(self, v6: bool, k: int) -> None:
        port = 2000 + k
        rrq = b"\x00\x01" + f"file{k}".encode() + b"\x00octet\x00"
        if k % 2:
            rrq += b"blksize\x00512\x00windowsize\x002\x00tsize\x000\x00"
        src, dst = (GUEST_IP6, DESTS6[2]) if v6 else (GUEST_IP, DESTS[2])
        before = len(self.tftp)
        self.step(GuestFrame(_ip_frame(dst, 17, wudp.build_udp(src, dst, port, 69, rrq))))
        if len(self.tftp) > before:
            self.tftp_peer[self.tftp[-1]] = (v6, port)

    def _tftp_opened(self, k: int, err: int) -> None:
        sid = self.pick(self.tftp, k)
        if sid is not None:
            self.step(TftpOpened(sid, err, 0 if err else 1500 + 700 * k))

    def _tftp_chunk(self, k: int) -> None:
        sid = self.pick(self.tftp, k)
        if sid is not None and sid in self.tftp_reads:
            off, size = self.tftp_reads.pop(sid)
            n = max(0, min(size, 1500 + 700 * k - off))
            self.step(TftpChunk(sid, off, bytes((off + j) & 255 for j in range(n)), 0))

    def _tftp_ack(self, k: int, back: int) -> None:
        sid = self.pick(self.tftp, k)
        if sid is None or sid not in self.tftp_peer:
            return
        v6, port = self.tftp_peer[sid]
        block = max(0, self.tftp_blocks.get(sid, 0) - (1 if back == 3 else 0))
        src, dst = (GUEST_IP6, DESTS6[2]) if v6 else (GUEST_IP, DESTS[2])
        ack = b"\x00\x04" + block.to_bytes(2, "big")
        self.step(GuestFrame(_ip_frame(dst, 17, wudp.build_udp(src, dst, port, 69, ack))))

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

    def _host_data_sent(self, k: int, n: int, size: int) -> None:
        """A send's report riding on the flow's next read (the live shell's TcpDataSent)."""
        flow = self.tcp_flow(k)
        if flow is not None:
            owed = self.sent_to_host.get(flow, 0)
            n = min(n, owed)
            self.sent_to_host[flow] = owed - n
            data = bytes((flow + j) & 255 for j in range(max(1, size)))
            self.step(TcpDataSent(flow, n, data) if n else TcpData(flow, data))

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

    def _fault(self, rid: int, variant: int) -> None:
        self.step(FaultAdd(rid, FAULT_RULES[variant]))

    def _fault_rm(self, rid: int) -> None:
        self.step(FaultRemove(rid))

    def _port_link(self, port: int, up: bool) -> None:
        self.step(PortLink(port, up, f"p{port}"))

    def _port_frames(self, port: int, seed: int) -> None:
        from tests.fuzz_ports import port_burst

        self.step(PortFrames(port, port_burst(random.Random(seed), port)))

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
        elif variant == 4:
            self.step(GuestFwdAdd(k, "not an address", 80))
        elif variant == 5:  # the IPv6 twins: a guest forward at an address of the prefix,
            self.step(GuestFwdAdd(k, f"fec0::{0x100 + k:x}", 80))
        elif variant == 6:  # a host forward into the guest's IPv6 address,
            self.inbound += 1
            self.step(TcpInbound(self.inbound, gf6.GUEST_IP, 22, "::1", 50000 + k))
            self.tcp_flows.append(self.inbound)
        else:  # and a datagram forwarded to it
            self.step(UdpInbound(k, gf6.GUEST_IP, 53, "2001:db8::7", 6000 + k, b"hello6"))

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


def _icmp6(body: bytes, dst: bytes) -> bytes:
    """An ICMPv6 message from the guest to ``dst`` with its checksum filled in."""
    csum = internet_checksum(body, pseudo_header_sum(GUEST_IP6, dst, 58, len(body)))
    return body[:2] + csum.to_bytes(2, "big") + body[4:]


def drive(acts: list[Action], options: str = "", seed: int = 1) -> Session:
    """Play ``acts`` against a fresh stack; the session's concrete events and times."""
    driver = _Driver(options, seed)
    driver.step(DnsUpstreams("127.0.0.1:5353"))
    for action in acts:
        driver.play(action)
    return Session(options, seed, driver.events, driver.marks)

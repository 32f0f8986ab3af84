"""Stack-level fuzzer: guest frames that reach the protocols, mixed with host events.

Theory of operation
-------------------
Mutating finished frames stops at the first checksum: almost every case is dropped as
``ipv4_bad_checksum`` and the protocol code never runs. Here every generated frame is
*guided* (built from the state the fuzzer has seen: the DHCP lease offered, the sequence
numbers of the stack's SYN-ACK, the DNS query the relay sent upstream), then *mutated* at the
level of its fields (flags, lengths, options, offsets, truncation, garbage), and then *fixed
up*: the IPv4 header checksum and the TCP, UDP (or a UDP checksum of 0) and ICMP checksums are
recomputed over whatever the mutation left, lying lengths included. So a lying UDP length or a
TCP option list that runs off its header reaches the parser that must reject it.

Each protocol (:data:`PROTOCOLS`) has its generator; a session starts from the guest frames and
host events of a recorded real session (``captures/*.journal``, played back verbatim), then
runs the generator, and between frames the fuzzer plays the shell: it answers the core's effects
with host events (``TcpConnected``, ``TcpData`` within the credit granted or beyond it,
``TcpSent`` (alone or riding on a read as ``TcpDataSent``), ``TcpEof``, ``TcpReset``,
``UdpReceived`` with DNS answers built from the forwarded query, ICMP echo replies and errors,
upstream lists, forwards, link changes) and advances time to the core's own deadlines or past
them.

libslirp's CVE shapes are among the generators' cases (``../shared/PEERS.md``): short and
lying UDP to ports 67, 53 and 69 (CVE-2021-3592..3595), NC-SI frames (ethertype 0x88F8) and
ARP cut short (CVE-2020-29129/29130), overlapping and overrunning fragments (CVE-2019-14378,
-15890, CVE-2020-1983), urgent pointers and bad TCP option lengths.

Half the sessions send the guest's frames in bursts, as the transports deliver them
(``GuestFrames`` runs of 2-16 frames, now and then with an empty frame or a cut-off tail, and
``FrameRuns`` on): the coalescing (GRO) path, native or pure, sees the same guided and mutated
segments, in-order data rows among them.

IPv6 sessions come as often as IPv4 ones: each generator has an IPv6 twin (NDP for ``arp``,
DHCPv6, DNS over IPv6, ICMPv6 echo and errors, UDP, TFTP and TCP to outside IPv6 addresses,
IPv6 fragments, IPv6 headers that stop short for ``l2``), fixed up and mutated at the level of
IPv6 fields and extension headers (:func:`fixup6`, :func:`mutate_ip6`).

Checked: no exception escapes ``Stack.handle``; every table and buffer stays within its bound
(:func:`check_bounds`); at two random points of every session the core's snapshot (through
msgpack) is restored into a fresh core that is fed every later event too, with identical effects
and, at the end, an identical state; every session is journaled exactly as the door does and its
journal replays identical, a ring's also from its last segment's snapshot (mid-session).

``python -m tests.fuzz --frames N`` runs N guest frames per protocol and prints frames/s, the
core's counters and the peak memory; ``tests/test_fuzz.py`` runs a CI-sized slice.
"""

from __future__ import annotations

import argparse
import collections
import errno as _errno
import logging
import random
import resource
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from replay.engine import ReplayResult, Target, format_divergence, replay_journal
from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    Event,
    FaultAdd,
    FaultRemove,
    FrameRuns,
    GuestFrame,
    GuestFrames,
    GuestFwdAdd,
    GuestFwdRemove,
    GuestLink,
    HostFwdChange,
    IcmpEchoClose,
    IcmpEchoError,
    IcmpEchoOpen,
    IcmpEchoReply,
    IcmpEchoSend,
    IcmpUnavailable,
    PortFrames,
    PortLink,
    SendFrame,
    SendFrames,
    TcpClose,
    TcpConnect,
    TcpConnected,
    TcpConnectFailed,
    TcpData,
    TcpDataSent,
    TcpEof,
    TcpInbound,
    TcpRecvCredit,
    TcpReset,
    TcpSend,
    TcpSent,
    Tick,
    UdpClose,
    UdpError,
    UdpInbound,
    UdpOpen,
    UdpReceived,
    UdpSend,
    decode_event,
)
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import open_journal
from slirptrio.journal.writer import Recorder
from slirptrio.wire.checksum import internet_checksum, pseudo_header_sum
from slirptrio.wire.framing import split_run
from tests.fuzz_ports import port_burst
from tests.journals import header_for
from tests.snapshots import plain_roundtrip
from tests.streams import FAULT_RULES

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "captures"

PROTOCOLS = ("arp", "dhcp", "dns", "icmp", "tcp", "udp", "frag", "l2")

# Sessions cycle through these; the third and fourth of every four are IPv6 sessions, so the
# short CI run gives its IPv6 sessions configurations with IPv6 on (mtu=576 turns it off).
CONFIGS = (
    "",
    "hostloopback=off,mem-budget=1M,max-flows=64",
    "mtu=65520,dnssearch=example.test,hostname=fuzz",
    "tftp=/nonexistent-fuzz-root,bootfile=pxelinux.0",
    "restrict=on,hostfwd=tcp::2222-:22",
    "mtu=576,guestfwd=tcp:10.0.2.100:80-cmd:cat",
    "ipv6=off,tftp=/nonexistent-fuzz-root",
)

SEC = 1_000_000_000
MS = 1_000_000

GUEST_MACS = [bytes.fromhex(h) for h in ("525400123456", "525400abcdef", "5254000000ff")]
GW_MAC = bytes.fromhex("52550a000202")
GW6_MAC = bytes.fromhex("525600000002")  # the IPv6 router's (fec0::2's) MAC
BCAST_MAC = b"\xff" * 6

ETH_IP, ETH_ARP, ETH_IP6, ETH_NCSI, ETH_VLAN = 0x0800, 0x0806, 0x86DD, 0x88F8, 0x8100
TCP, UDP, ICMP, ICMP6, FRAG6 = 6, 17, 1, 58, 44
HOPOPTS, ROUTING, DSTOPTS, NONE6 = 0, 43, 60, 59
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def ip4(text: str) -> bytes:
    return bytes(int(p) for p in text.split("."))


GUEST_IPS = [ip4(a) for a in ("10.0.2.15", "10.0.2.16", "10.0.2.30")]
DESTS = [ip4(a) for a in (
    "10.0.2.2", "10.0.2.3", "10.0.2.100", "10.0.2.77", "10.0.2.255", "203.0.113.1",
    "203.0.113.200", "198.51.100.7", "127.0.0.1", "127.0.0.2", "0.0.0.0", "224.0.0.251",
    "239.255.255.250", "240.0.0.1", "255.255.255.255",
)]
COMMON = DESTS[:7]  # the ones that go somewhere
TCP_DESTS = [d for d in COMMON if d != ip4("10.0.2.255")]


def ip6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


# IPv6 twins: the guest's SLAAC addresses (from its MACs), link-local and other sources; the
# host, DNS and router addresses of the default prefix, outside (documentation) addresses, and
# martians and multicast groups that must stay inside.
GUEST_IPS6 = [ip6(a) for a in ("fec0::5054:ff:fe12:3456", "fec0::5054:ff:feab:cdef",
                               "fe80::5054:ff:fe12:3456", "fec0::99")]
HOST6, DNS6, ROUTER_LL = ip6("fec0::2"), ip6("fec0::3"), ip6("fe80::2")
DESTS6 = [ip6(a) for a in (
    "fec0::2", "fec0::3", "2001:db8:1::1", "2001:db8:1::9", "2001:db8:2::53", "fe80::2",
    "fec0::77", "::1", "::", "::ffff:203.0.113.1", "ff02::1", "ff02::2", "ff02::1:2",
    "ff05::fb", "fe80::1",
)]
COMMON6 = DESTS6[:5]
TCP_DESTS6 = DESTS6[:5]


# ----------------------------------------------------------------------------- frame building


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, *, ident: int = 1, ttl: int = 64,
         frag: int = 0, options: bytes = b"") -> bytes:
    hlen = 20 + len(options)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | (hlen // 4), 0, hlen + len(payload), ident & 0xFFFF,
                      frag, ttl, proto, 0, src, dst) + options
    return hdr + payload


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes, *, hlim: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, hlim, src, dst) + payload


def mcast_mac6(dst: bytes) -> bytes:
    return b"\x33\x33" + dst[12:]


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
        payload: bytes = b"", *, options: bytes = b"", urgent: int = 0) -> bytes:
    options += b"\x01" * (-len(options) % 4)
    off = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       (off & 0xF) << 4, flags & 0xFF, window & 0xFFFF, 0, urgent & 0xFFFF
                       ) + options + payload


def icmp(type_: int, code: int, rest: bytes, data: bytes) -> bytes:
    return struct.pack("!BBH", type_, code, 0) + rest[:4].ljust(4, b"\0") + data


def fixup6(frame: bytes, rng: random.Random, *, keep_lengths: bool = False) -> bytes:
    """The IPv6 twin of :func:`fixup`: the payload length, and the TCP, UDP or ICMPv6
    checksum after the hop-by-hop, routing and destination-options headers (a fragment's
    belongs to the whole datagram; a UDP checksum of 0 is invalid over IPv6, so it stays)."""
    b = bytearray(frame)
    if len(b) < 54 or b[14] >> 4 != 6:
        return bytes(b)
    if not keep_lengths:
        struct.pack_into("!H", b, 18, min(len(b) - 54, 0xFFFF))
    end = min(len(b), 54 + struct.unpack_from("!H", b, 18)[0])
    nh, off = b[20], 54
    for _ in range(8):
        if nh not in (HOPOPTS, ROUTING, DSTOPTS) or off + 8 > end:
            break
        nh, off = b[off], off + (b[off + 1] + 1) * 8
    if off > end:
        return bytes(b)
    l4 = b[off:end]
    src, dst = bytes(b[22:38]), bytes(b[38:54])
    if nh == TCP and len(l4) >= 20:
        l4[16:18] = b"\0\0"
        struct.pack_into("!H", l4, 16, internet_checksum(l4, pseudo_header_sum(src, dst, TCP,
                                                                                 len(l4))))
    elif nh == UDP and len(l4) >= 8:
        l4[6:8] = b"\0\0"
        ulen = struct.unpack_from("!H", l4, 4)[0]
        n = ulen if 8 <= ulen <= len(l4) else len(l4)
        csum = internet_checksum(l4[:n], pseudo_header_sum(src, dst, UDP, n))
        struct.pack_into("!H", l4, 6, csum or 0xFFFF)
    elif nh == ICMP6 and len(l4) >= 4:
        l4[2:4] = b"\0\0"
        struct.pack_into("!H", l4, 2, internet_checksum(l4, pseudo_header_sum(src, dst, ICMP6,
                                                                                len(l4))))
    b[off:end] = l4
    return bytes(b)


def fixup(frame: bytes, rng: random.Random, *, keep_lengths: bool = False) -> bytes:
    """Recompute the IPv4 header checksum and the L4 checksum over whatever ``frame`` holds
    (a UDP checksum may become 0 instead); with ``keep_lengths`` lying lengths stay lies.
    IPv6 frames go to :func:`fixup6`."""
    b = bytearray(frame)
    if len(b) >= 54 and b[12:14] == b"\x86\xdd":
        return fixup6(frame, rng, keep_lengths=keep_lengths)
    if len(b) < 34 or b[12:14] != b"\x08\x00" or b[14] >> 4 != 4:
        return bytes(b)
    ihl = (b[14] & 0xF) * 4
    if ihl < 20 or 14 + ihl > len(b):
        return bytes(b)
    if not keep_lengths:
        struct.pack_into("!H", b, 16, min(len(b) - 14, 0xFFFF))
    total = struct.unpack_from("!H", b, 16)[0]
    b[24:26] = b"\0\0"
    struct.pack_into("!H", b, 24, internet_checksum(b[14 : 14 + ihl]))
    frag = struct.unpack_from("!H", b, 20)[0]
    if frag & 0x3FFF:  # a fragment: its L4 checksum belongs to the whole datagram
        return bytes(b)
    start = 14 + ihl
    end = min(len(b), 14 + max(total, ihl))
    l4 = b[start:end]
    src, dst, proto = bytes(b[26:30]), bytes(b[30:34]), b[23]
    if proto == TCP and len(l4) >= 20:
        l4[16:18] = b"\0\0"
        struct.pack_into("!H", l4, 16, internet_checksum(l4, pseudo_header_sum(src, dst, TCP,
                                                                                 len(l4))))
    elif proto == UDP and len(l4) >= 8:
        l4[6:8] = b"\0\0"
        if rng.random() < 0.7:
            ulen = struct.unpack_from("!H", l4, 4)[0]
            n = ulen if 8 <= ulen <= len(l4) else len(l4)
            csum = internet_checksum(l4[:n], pseudo_header_sum(src, dst, UDP, n))
            struct.pack_into("!H", l4, 6, csum or 0xFFFF)
    elif proto == ICMP and len(l4) >= 4:
        l4[2:4] = b"\0\0"
        struct.pack_into("!H", l4, 2, internet_checksum(l4))
    b[start:end] = l4
    return bytes(b)


INTERESTING16 = (0, 1, 2, 7, 8, 19, 20, 21, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE,
                 0xFFFF)


def mutate_bytes(data: bytes, rng: random.Random, start: int = 0) -> bytes:
    """A few random edits at or after ``start``: flips, interesting values, cuts, garbage."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if len(b) <= start:
            b += rng.randbytes(rng.randint(1, 16))
            continue
        i = rng.randrange(start, len(b))
        op = rng.random()
        if op < 0.35:
            b[i] ^= 1 << rng.randrange(8)
        elif op < 0.55:
            b[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op < 0.7 and i + 1 < len(b):
            struct.pack_into("!H", b, i, rng.choice(INTERESTING16))
        elif op < 0.8:
            del b[rng.randrange(start, len(b)) :]
        elif op < 0.9:
            b[i:i] = rng.randbytes(rng.randint(1, 40))
        else:
            j = rng.randrange(start, len(b))
            b[i], b[j] = b[j], b[i]
    return bytes(b)


def mutate_ip6(frame: bytes, rng: random.Random) -> tuple[bytes, bool]:
    """Mutate an IPv6 frame's header, extension headers or payload; True when a length lie
    must stay."""
    b = bytearray(frame)
    op = rng.random()
    if op < 0.5:  # the upper layer
        return mutate_bytes(bytes(b), rng, 54), False
    if op < 0.62:  # extension headers in front: padding, unknown options, a routing header,
        # an atomic fragment, chains longer than any walk allows, lying lengths
        chain = [rng.choice((HOPOPTS, DSTOPTS, ROUTING, FRAG6))
                 for _ in range(rng.choice((1, 1, 2, 3, 9)))]
        first, nh = chain[0], b[20]
        ext = bytearray()
        for i, kind in enumerate(chain):
            nxt = chain[i + 1] if i + 1 < len(chain) else nh
            if kind == FRAG6:
                ext += struct.pack("!BBHI", nxt, 0, 0, rng.randrange(1 << 32))
            elif kind == ROUTING:
                ext += bytes((nxt, 0, rng.choice((0, 2, 4)), rng.randrange(3))) + bytes(4)
            else:
                body = rng.choice((bytes(6), b"\x01\x04" + bytes(4), b"\xc2\x04" + bytes(4),
                                   b"\x80\x04" + bytes(4), rng.randbytes(6)))
                ext += bytes((nxt, 0)) + body
            if rng.random() < 0.05:
                ext[-7] = rng.randrange(256)  # the length lies
        b[20] = first
        b[54:54] = ext
        return bytes(b), False
    if op < 0.72:  # payload length lie (0 is a jumbogram without its option)
        struct.pack_into("!H", b, 18, rng.choice((0, 1, len(b) - 55, len(b) - 53, 0xFFFF,
                                                  rng.randrange(0x10000))))
        return bytes(b), True
    if op < 0.85:  # next header, hop limit, traffic class and flow label, version
        field_ = rng.choice((20, 21, 15, 16, 14))
        b[field_] = rng.randrange(256) if field_ != 14 else 0x60 | rng.randrange(16)
        if rng.random() < 0.1:
            b[14] = rng.randrange(256)  # not version 6 at all
        return bytes(b), False
    if op < 0.92:  # the source or destination address
        at = rng.choice((22, 38))
        b[at : at + 16] = rng.choice(DESTS6 + GUEST_IPS6 + [rng.randbytes(16)])
        return bytes(b), False
    return mutate_bytes(bytes(b), rng, 14), rng.random() < 0.5


def mutate_ip(frame: bytes, rng: random.Random) -> tuple[bytes, bool]:
    """Mutate an IPv4 frame's header or payload; True when a length lie must stay. IPv6 frames
    go to :func:`mutate_ip6`."""
    b = bytearray(frame)
    if len(b) >= 54 and b[12:14] == b"\x86\xdd":
        return mutate_ip6(frame, rng)
    if len(b) < 34:
        return bytes(b), False
    op = rng.random()
    if op < 0.5:  # the transport header and payload
        return mutate_bytes(bytes(b), rng, 34), False
    if op < 0.6:  # IPv4 options (the header grows; garbage options)
        opts = rng.choice((b"\x01\x01\x01\x00", b"\x07\x03\x04\x00", b"\x44\x02\x00\x00",
                           rng.randbytes(4 * rng.randint(1, 10))))
        b[14] = 0x40 | ((20 + len(opts)) // 4)
        b[34:34] = opts
        return bytes(b), False
    if op < 0.7:  # total length lie
        struct.pack_into("!H", b, 16, rng.choice((20, len(b) - 15, len(b) - 13, 0xFFFF,
                                                  rng.randrange(0x10000))))
        return bytes(b), True
    if op < 0.8:  # flags and fragment offset
        struct.pack_into("!H", b, 20, rng.choice((0x2000, 0x4000, 0x8000, 0x1FFF, 0x2001,
                                                  rng.randrange(0x10000))))
        return bytes(b), False
    if op < 0.9:  # protocol, TTL, TOS, header length
        field_ = rng.choice((23, 22, 15, 14))
        b[field_] = rng.randrange(256) if field_ != 14 else 0x40 | rng.randrange(16)
        return bytes(b), field_ == 14
    return mutate_bytes(bytes(b), rng, 14), rng.random() < 0.5


# ------------------------------------------------------------------------ the shell's view


@dataclass
class TcpFlowView:
    credit: int = 0
    unsent: int = 0
    connected: bool = False
    inbound: bool = False


@dataclass
class GuestConn:
    """The guided guest's side of one TCP connection."""

    mac: bytes
    src: bytes
    sport: int
    dst: bytes
    dport: int
    iss: int
    nxt: int  # next sequence number we send
    peer_nxt: int | None = None  # what we acknowledge (from the stack's segments)
    peer_ack: int = 0  # the highest ack the stack sent us


@dataclass
class Stats:
    frames: collections.Counter[str] = field(default_factory=collections.Counter)
    frames6: collections.Counter[str] = field(default_factory=collections.Counter)
    """Of ``frames``, those the IPv6 generators made."""
    events: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    sessions: int = 0
    replayed: int = 0
    segments: int = 0  # journal segments replayed, each from a snapshot after the first
    max_tcp: int = 0
    max_udp: int = 0
    max_mem_used: int = 0
    max_reasm_bytes: int = 0
    v6_sessions: int = 0
    counters6: collections.Counter[str] = field(default_factory=collections.Counter)
    """The core's counters of the IPv6 sessions alone."""
    v6_opens: collections.Counter[str] = field(default_factory=collections.Counter)
    """Host sockets ("tcp", "udp", "icmp") the core opened to IPv6 hosts."""
    replay_seconds: float = 0.0  # spent replaying journals (not in ``seconds``)
    replay_gaps: int = 0  # gaps the replayed journals named (records the recorder lost)
    empty_replays: int = 0  # replays with nothing to compare (a ring too small: named gaps)
    snapshots: int = 0  # mid-session snapshots restored into a fresh core and followed
    twin_events: int = 0  # events fed to both the original and a restored core, compared
    replayed_mid: int = 0  # journals whose replay started at a snapshot past record 0
    first_seqs: list[int] = field(default_factory=list)  # each ring replay's first record


def check_bounds(stack: Stack) -> None:
    """Every table and buffer of the core within its bound."""
    t = stack.tcp
    assert len(t) <= t.max_flows, len(t)
    assert t._half_open <= t.max_half_open
    assert t.mem_used <= t.mem_budget + t.mem_budget // 2 + 2 * t.buffer_size, t.mem_used
    assert t.mem_used == sum(c.charged for c in t._by_flow.values())
    for c in t._by_flow.values():
        assert c.ooo_bytes <= t.buffer_size + t.mss and len(c.ooo) <= t.max_ooo_segments
        assert len(c.sndbuf) <= t.buffer_size + (1 << 18), len(c.sndbuf)  # + one overrun read
    assert len(stack.udp) <= stack.udp.max_flows
    assert len(stack.echo) <= stack.echo.max_flows
    assert stack.udp.dns.pending() <= stack.udp.dns.max_pending
    r = stack._reasm
    assert len(r) <= r.max_datagrams and r.total_bytes <= r.max_total_bytes
    assert len(stack._arp_table) <= 256
    assert len(stack._dhcp._last) <= 64 and len(stack._dhcp._leases) <= 16
    assert len(stack.counters) < 600, sorted(stack.counters)


# ----------------------------------------------------------------------------- the fuzzer


class StrictDoor(Door):
    """The door, except that an exception from the core is a finding: it propagates."""

    def step(self, event: Event, now_ns: int) -> list[Effect]:
        if now_ns < self.now_ns:
            now_ns = self.now_ns
        self.now_ns = now_ns
        effects = self.stack.handle(event, now_ns)
        # The timers' cache against asking every component (after every step, so the cache
        # is also tested right after the steps that keep it).
        assert self.stack.poll_at() == self.stack.poll_at_fresh(), f"poll_at stale: {event!r:.200}"
        if self.sink is not None:
            self.sink(self.seq, now_ns, event, effects)
        self.seq += 1
        return effects


class Session:
    """One Stack behind a door that journals as the runtime's does (segments with snapshots
    when ``journal_max`` bounds it), driven by one protocol's generator; with ``bursts``, the
    generated frames arrive in runs (GuestFrames) and the frames out leave in runs."""

    def __init__(self, rng: random.Random, protocol: str, config: str, journal: Path,
                 seed: int, journal_max: int | None = None, bursts: bool = False,
                 v6: bool = False, snapshots: int = 2) -> None:
        self.rng = rng
        self.bursts = bursts
        self.protocol = protocol
        self.v6 = v6
        cfg = parse_user_options(config)
        self.cfg = cfg
        self.stack = Stack(cfg, seed)
        # The restored twin: from each of these points (guest frames into the generated part)
        # on, a core restored from a snapshot of this one (through msgpack, as the journal
        # keeps it) is fed every event too and must give identical effects.
        self.snap_at = sorted(rng.random() for _ in range(snapshots))
        self.twin: Stack | None = None
        self.snapshots = 0
        self.twin_events = 0
        self.v6_opens: collections.Counter[str] = collections.Counter()
        self.frames6 = 0  # generated by the IPv6 twins
        self.recorder = Recorder.open(
            header_for(cfg, seed), journal_dir=str(journal), pcap_path=None,
            journal_max=journal_max, pcap_max=None, threaded=False,
        )
        self.door = StrictDoor(self.stack, self.recorder)
        self.recorder.attach(self.door.snapshot)
        self.journal = journal
        self.now = 0
        self.seq = 0
        self.tcp: dict[int, TcpFlowView] = {}
        self.udp: set[int] = set()
        self.dns_flows: dict[int, list[bytes]] = {}  # relay flows and the queries sent there
        self.echo: dict[int, list[int]] = {}
        self.conns: list[GuestConn] = []
        self.lease: bytes = GUEST_IPS[0]
        self.next_inbound = 1 << 32
        self.frames = 0

    # --- the door
    def step(self, event: Event) -> list[Effect]:
        try:
            effects = self.door.step(event, self.now)
        except Exception:
            self.recorder.close()
            print(f"fuzz: exception in Stack.handle; journal kept: {self.journal}",
                  file=sys.stderr)
            raise
        if self.twin is not None:
            theirs = self.twin.handle(event, self.door.now_ns)
            if theirs != effects:
                self.recorder.close()
                raise AssertionError(
                    f"fuzz: a core restored from a snapshot differs at event {self.seq} "
                    f"({event!r:.300}):\n original {effects!r:.1500}\n restored {theirs!r:.1500}"
                    f"\njournal kept: {self.journal}"
                )
            self.twin_events += 1
        self.seq += 1
        if self.seq % 64 == 0:
            self.recorder.flush()  # between steps, as the runtime flushes after a burst
        self.observe(effects)
        return effects

    def frame(self, data: bytes) -> None:
        self.frames += 1
        self.step(GuestFrame(data))

    def burst(self, frames: list[bytes]) -> None:
        """Frames in one run, sometimes with an empty frame or a cut-off tail."""
        rng = self.rng
        run = bytearray()
        for f in frames:
            run += len(f).to_bytes(4, "big") + f
            if rng.random() < 0.02:
                run += bytes(4)
        if rng.random() < 0.03:  # a tail that is no whole frame: its length or bytes cut off
            f = rng.choice(frames)
            tail = (len(f) + 1).to_bytes(4, "big") + f
            run += tail[: rng.randrange(1, len(tail))]
        self.frames += len(frames)
        self.step(GuestFrames(bytes(run)))

    def snapshot_twin(self) -> None:
        """Restore a fresh core from a snapshot of this one; it follows from here on."""
        self.twin = Stack.from_snapshot(self.cfg, plain_roundtrip(self.stack.snapshot()))
        self.snapshots += 1

    def check_twin(self) -> None:
        if self.twin is not None:
            ours, theirs = (plain_roundtrip(s.snapshot()) for s in (self.stack, self.twin))
            assert ours == theirs, "the restored core's state differs at the end of the session"

    def advance(self) -> None:
        rng = self.rng
        due = self.stack.poll_at()
        if due is not None and rng.random() < 0.6:
            self.now = max(self.now, due + rng.choice((0, 0, 1, rng.randrange(50 * MS))))
        else:
            self.now += rng.choice((1, MS, 10 * MS, 200 * MS, SEC, 5 * SEC, 70 * SEC))
        self.step(Tick())

    # --- the shell's view of effects
    def observe(self, effects: list[Effect]) -> None:
        for e in effects:
            t = type(e)
            if t is SendFrame:
                assert isinstance(e, SendFrame)
                self.observe_frame(e.data)
            elif t is SendFrames:
                assert isinstance(e, SendFrames)
                for f in split_run(e.data):
                    self.observe_frame(bytes(f))
            elif t is TcpConnect:
                assert isinstance(e, TcpConnect)
                self.tcp[e.flow] = TcpFlowView()
                self.v6_opens["tcp"] += ":" in e.host
            elif t is TcpRecvCredit:
                assert isinstance(e, TcpRecvCredit)
                if e.flow in self.tcp:
                    self.tcp[e.flow].credit += e.n
            elif t is TcpSend:
                assert isinstance(e, TcpSend)
                if e.flow in self.tcp:
                    self.tcp[e.flow].unsent += len(e.data)
            elif t is TcpClose:
                assert isinstance(e, TcpClose)
                self.tcp.pop(e.flow, None)
            elif t is UdpOpen:
                assert isinstance(e, UdpOpen)
                self.v6_opens["udp"] += ":" in e.host
                if e.port == 53 and e.host in self.upstream_hosts():
                    self.dns_flows[e.flow] = []
                else:
                    self.udp.add(e.flow)
            elif t is UdpSend:
                assert isinstance(e, UdpSend)
                if e.flow in self.dns_flows:
                    q = self.dns_flows[e.flow]
                    q.append(e.data)
                    del q[:-8]
            elif t is UdpClose:
                assert isinstance(e, UdpClose)
                self.udp.discard(e.flow)
                self.dns_flows.pop(e.flow, None)
            elif t is IcmpEchoOpen:
                assert isinstance(e, IcmpEchoOpen)
                self.echo[e.flow] = []
                self.v6_opens["icmp"] += ":" in e.host
            elif t is IcmpEchoSend:
                assert isinstance(e, IcmpEchoSend)
                if e.flow in self.echo:
                    self.echo[e.flow] = [*self.echo[e.flow][-4:], e.seq]
            elif t is IcmpEchoClose:
                assert isinstance(e, IcmpEchoClose)
                self.echo.pop(e.flow, None)

    upstreams = "127.0.0.1:53 203.0.113.53:53"

    def upstream_hosts(self) -> set[str]:
        return {u.rpartition(":")[0].strip("[]") for u in self.upstreams.split()}

    def observe_frame(self, f: bytes) -> None:
        if len(f) >= 74 and f[12:14] == b"\x86\xdd":
            proto, src, dst = f[20], f[22:38], f[38:54]
            l4 = f[54 : 54 + struct.unpack_from("!H", f, 18)[0]]
        elif len(f) >= 54 and f[12:14] == b"\x08\x00":
            ihl = (f[14] & 0xF) * 4
            proto, src, dst = f[23], f[26:30], f[30:34]
            l4 = f[14 + ihl : 14 + struct.unpack_from("!H", f, 16)[0]]  # frames come padded
        else:
            return
        if proto == UDP and len(l4) >= 8 + 240 and l4[0:2] == b"\x00\x43":
            yiaddr = l4[8 + 16 : 8 + 20]
            if yiaddr != b"\0\0\0\0":
                self.lease = yiaddr
        elif proto == TCP and len(l4) >= 20:
            sport, dport, seq, ack, off, flags = struct.unpack_from("!HHIIBB", l4)
            for c in self.conns:
                if c.dport == sport and c.sport == dport and c.dst == src and c.src == dst:
                    plen = max(0, len(l4) - (off >> 4) * 4)
                    end = (seq + plen + (1 if flags & (SYN | FIN) else 0)) & 0xFFFFFFFF
                    ahead = c.peer_nxt is None or 0 < ((end - c.peer_nxt) & 0xFFFFFFFF) < 1 << 31
                    if ahead or flags & SYN:
                        c.peer_nxt = end
                    if flags & ACK:
                        c.peer_ack = ack
                    if flags & RST:
                        self.conns.remove(c)
                    break

    # --- host events, answering the core as the shell would
    def host_event(self) -> None:
        rng = self.rng
        choices: list[Callable[[], Event | None]] = [self.tcp_event] * 6
        if self.udp:
            choices += [self.udp_event] * 2
        if self.dns_flows:
            choices += [self.dns_event] * 3
        if self.echo:
            choices += [self.echo_event] * 2
        choices += [self.misc_event]
        ev = rng.choice(choices)()
        if ev is not None:
            self.step(ev)

    def tcp_event(self) -> Event | None:
        rng = self.rng
        if not self.tcp:
            return None
        pending = [f for f, v in self.tcp.items() if not v.connected and not v.inbound]
        flow = rng.choice(pending if pending and rng.random() < 0.5 else list(self.tcp))
        v = self.tcp[flow]
        r = rng.random()
        if not v.connected and not v.inbound:
            if r < 0.85:
                v.connected = True
                return TcpConnected(flow)
            self.tcp.pop(flow)
            return TcpConnectFailed(flow, rng.choice((_errno.ECONNREFUSED, _errno.ETIMEDOUT,
                                                      _errno.EHOSTUNREACH, _errno.EMFILE)))
        if r < 0.45 and v.credit > 0:
            n = min(v.credit, rng.choice((1, 100, 1460, 5000, 20000)))
            v.credit -= n
            return TcpData(flow, rng.randbytes(n))
        if r < 0.5:
            return TcpData(flow, rng.randbytes(rng.randint(1, 3000)))  # beyond any credit
        if r < 0.8 and v.unsent > 0:
            n = rng.randint(1, v.unsent)
            v.unsent -= n
            if r < 0.6 and v.credit > 0:  # the report riding on the flow's next read
                k = min(v.credit, rng.choice((1, 100, 1460)))
                v.credit -= k
                return TcpDataSent(flow, n, rng.randbytes(k))
            return TcpSent(flow, n)
        if r < 0.82:
            return TcpSent(flow, rng.randint(1, 100000))  # more than was asked
        if r < 0.9:
            return TcpEof(flow)
        if r < 0.94:
            return TcpReset(flow, rng.choice((_errno.ECONNRESET, _errno.ETIMEDOUT, _errno.EPIPE)))
        return TcpData(rng.randrange(1, 50), b"stale")

    def udp_event(self) -> Event | None:
        rng = self.rng
        flow = rng.choice(list(self.udp))
        if rng.random() < 0.75:
            return UdpReceived(flow, rng.randbytes(rng.choice((0, 1, 8, 100, 1472, 4000, 70000))))
        return UdpError(flow, rng.choice((_errno.ECONNREFUSED, _errno.EHOSTUNREACH,
                                          _errno.EMSGSIZE, 0)),
                        rng.randrange(5), rng.randrange(16), rng.randrange(20),
                        rng.choice((0, 576, 1280, 100000)),
                        rng.choice(("", "203.0.113.9", "127.0.0.1", "::1", "garbage", "1.2.3",
                                    "2001:db8:ff::1", "fe80::1")))

    def dns_event(self) -> Event | None:
        rng = self.rng
        flow = rng.choice(list(self.dns_flows))
        queries = self.dns_flows[flow]
        if queries and rng.random() < 0.8:
            q = rng.choice(queries)
            ans = bytearray(q)
            if len(ans) >= 4:
                ans[2] |= 0x80
                ans[3] = (ans[3] & 0xF0) | rng.choice((0, 0, 0, 2, 3))
            if rng.random() < 0.5 and len(ans) >= 12:
                struct.pack_into("!H", ans, 6, 1)
                ans += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + rng.randbytes(4)
            if rng.random() < 0.3:
                ans = bytearray(mutate_bytes(bytes(ans), rng))
            return UdpReceived(flow, bytes(ans))
        if rng.random() < 0.5:
            return UdpReceived(flow, rng.randbytes(rng.randint(0, 60)))
        return UdpError(flow, _errno.ECONNREFUSED, 2, 3, 3, 0, "")

    def echo_event(self) -> Event | None:
        rng = self.rng
        flow = rng.choice(list(self.echo))
        seqs = self.echo[flow] or [rng.randrange(0x10000)]
        r = rng.random()
        if r < 0.7:
            return IcmpEchoReply(flow, rng.choice(seqs), rng.randbytes(rng.choice((0, 8, 56,
                                                                                  1500))))
        if r < 0.95:
            return IcmpEchoError(flow, 0, rng.randrange(5), rng.choice((3, 11, 12, 5, 1, 2)),
                                 rng.randrange(16), rng.choice((0, 1280, 9000)),
                                 rng.choice(("", "198.51.100.1", "0.0.0.0", "fe80::1")))
        return IcmpUnavailable(flow, _errno.EPERM)

    def misc_event(self) -> Event | None:
        rng = self.rng
        r = rng.random()
        if r < 0.2:
            self.upstreams = rng.choice((
                "127.0.0.1:53 203.0.113.53:53", "203.0.113.53:53", "[::1]:53 127.0.0.53:53",
                "", "nonsense 1.2.3.4:99999 [::1]", "0.0.0.0:53",
            ))
            return DnsUpstreams(self.upstreams)
        if r < 0.35:
            return GuestLink(rng.random() < 0.5)
        if r < 0.55:
            flow = self.next_inbound
            self.next_inbound += 1
            self.tcp[flow] = TcpFlowView(connected=True, inbound=True)
            guests = ("fec0::5054:ff:fe12:3456", "fec0::2", "fe80::1", "::1") if self.v6 else (
                "10.0.2.15", "10.0.2.16", "10.0.2.2", "203.0.113.1")
            return TcpInbound(flow, rng.choice((*guests, "x")), rng.choice((22, 80, 0)),
                              rng.choice(("127.0.0.1", "203.0.113.9", "::1", "2001:db8::7", "")),
                              rng.randrange(0x10000))
        if r < 0.7:
            dests = ("fec0::5054:ff:fe12:3456", "fec0::3") if self.v6 else (
                "10.0.2.15", "10.0.2.3")
            return UdpInbound(rng.randrange(5), rng.choice((*dests, "bad")),
                              rng.choice((53, 5000, 0)),
                              rng.choice(("127.0.0.1", "192.0.2.9", "::1", "2001:db8::9")),
                              rng.randrange(0x10000), rng.randbytes(rng.randint(0, 600)))
        if r < 0.8:
            return GuestFwdAdd(rng.randrange(4), rng.choice(("10.0.2.100", "10.0.2.101", "bad")),
                               rng.choice((80, 443)))
        if r < 0.85:
            return GuestFwdRemove(rng.randrange(4))
        if r < 0.88:
            return HostFwdChange("tcp::2222-:22", rng.randrange(65536), rng.random() < 0.5)
        if r < 0.92:  # fault rules of every kind come and go (issue 23), now and then a bad one
            text = rng.choice((*FAULT_RULES, "loss=200%", "nonsense", "delay=-1ms", ""))
            return FaultAdd(rng.randrange(4), text)
        if r < 0.94:
            return FaultRemove(rng.randrange(-1, 4))
        if r < 0.95:  # more guests on the link now and then (issue 22): the switch comes on
            return PortLink(rng.randrange(1, 3), rng.random() < 0.7, "fuzz")
        if r < 0.96:
            return PortFrames(rng.randrange(1, 3), port_burst(rng, rng.randrange(1, 3)))
        if r < 0.97:
            return IcmpUnavailable(rng.randrange(1, 50), _errno.EPERM)
        return UdpReceived(rng.randrange(1, 100), b"for nobody")

    # --- guest frame generators, one per protocol
    def mac(self) -> bytes:
        return self.rng.choice(GUEST_MACS)

    def guest_ip(self) -> bytes:
        return self.lease if self.rng.random() < 0.8 else self.rng.choice(GUEST_IPS)

    def finish(self, frame: bytes, *, mutate: float = 0.3) -> bytes:
        rng = self.rng
        keep = False
        if rng.random() < mutate:
            frame, keep = mutate_ip(frame, rng)
        if rng.random() < 0.97:
            frame = fixup(frame, rng, keep_lengths=keep)
        return frame

    def guest_ip6(self) -> bytes:
        return GUEST_IPS6[0] if self.rng.random() < 0.7 else self.rng.choice(GUEST_IPS6)

    def ip_frame(self, dst: bytes, proto: int, l4: bytes, *, src: bytes | None = None,
                 mutate: float = 0.3) -> bytes:
        rng = self.rng
        if len(dst) == 16:
            d_mac = mcast_mac6(dst) if dst[0] == 0xFF else (
                GW6_MAC if rng.random() < 0.95 else GW_MAC)
            frame = eth(d_mac, self.mac(), ETH_IP6,
                        ipv6(src or self.guest_ip6(), dst, proto, l4,
                             hlim=255 if proto == ICMP6 else 64))
            return self.finish(frame, mutate=mutate)
        d_mac = BCAST_MAC if dst[0] >= 224 or dst[3] == 255 else GW_MAC
        frame = eth(d_mac, self.mac(), ETH_IP,
                    ipv4(src or self.guest_ip(), dst, proto, l4, ident=rng.randrange(0x10000)))
        return self.finish(frame, mutate=mutate)

    def gen_arp(self) -> bytes:
        rng = self.rng
        mac = self.mac()
        op = rng.choice((1, 1, 1, 2, 3, 0))
        target = rng.choice(DESTS + GUEST_IPS)
        sender = rng.choice((self.guest_ip(), b"\0\0\0\0", rng.choice(DESTS)))
        body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, sender, b"\0" * 6, target)
        if rng.random() < 0.3:
            body = mutate_bytes(body, rng)
        if rng.random() < 0.15:
            body = body[: rng.randrange(len(body) + 1)]  # cut short (CVE-2020-29130)
        return eth(rng.choice((BCAST_MAC, GW_MAC)), mac, ETH_ARP, body)

    def dhcp_message(self) -> bytes:
        rng = self.rng
        mac = self.mac()
        kind = rng.choice((1, 3, 3, 7, 4, 8, 2, 9, 0))
        ciaddr = rng.choice((b"\0\0\0\0", self.lease, rng.choice(GUEST_IPS)))
        fixed = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", rng.choice((1, 1, 1, 2, 0)), 1, 6, 0,
                            rng.randrange(1 << 32), 0, rng.choice((0, 0x8000)), ciaddr,
                            b"\0" * 4, b"\0" * 4, b"\0" * 4, mac.ljust(16, b"\0"), b"", b"")
        opts = bytearray(b"\x63\x82\x53\x63")
        if kind:
            opts += bytes((53, 1, kind))
        if rng.random() < 0.6:
            opts += bytes((50, 4)) + rng.choice((self.lease, rng.choice(GUEST_IPS), DESTS[5]))
        if rng.random() < 0.5:
            opts += bytes((54, 4)) + rng.choice((ip4("10.0.2.2"), DESTS[5]))
        if rng.random() < 0.4:
            opts += bytes((55, 8, 1, 3, 6, 12, 15, 26, 28, 119))
        if rng.random() < 0.3:  # options with lying lengths, overloads, pads
            opts += rng.choice((bytes((61, 200, 1)), bytes((52, 1, 3)), bytes((12, 0)),
                                b"\0" * 10, bytes((53, 2, 3, 3)), rng.randbytes(20)))
        if rng.random() < 0.9:
            opts += b"\xff"
        msg = fixed + bytes(opts)
        if rng.random() < 0.2:
            msg = mutate_bytes(msg, rng, 236)
        if rng.random() < 0.1:
            msg = msg[: rng.randrange(0, 240)]  # shorter than bootp_t (CVE-2021-3592)
        return msg

    def gen_dhcp(self) -> bytes:
        rng = self.rng
        body = udp(68, 67, self.dhcp_message())
        src = b"\0\0\0\0" if rng.random() < 0.7 else self.lease
        dst = rng.choice((b"\xff\xff\xff\xff", b"\xff\xff\xff\xff", ip4("10.0.2.2"),
                          ip4("10.0.2.255"), ip4("10.0.2.3")))
        return self.udp_frame(src, dst, body)

    def udp_frame(self, src: bytes, dst: bytes, body: bytes) -> bytes:
        """A UDP frame, sometimes with a lying UDP length and a zero checksum."""
        rng = self.rng
        lie = rng.random() < 0.15
        if lie:
            b = bytearray(body)
            struct.pack_into("!H", b, 4, rng.choice((0, 7, 8, 9, len(b) - 1, len(b) + 1,
                                                     0xFFFF)))
            body = bytes(b)
        if len(dst) == 16:  # IPv6: the checksum is never 0; fixup6 sums the lying length
            frame = eth(mcast_mac6(dst) if dst[0] == 0xFF else GW6_MAC, self.mac(), ETH_IP6,
                        ipv6(src, dst, UDP, body))
            return fixup6(frame, rng) if lie else self.finish(frame, mutate=0.2)
        frame = eth(BCAST_MAC if dst[0] >= 224 or dst[3] == 255 else GW_MAC, self.mac(), ETH_IP,
                    ipv4(src, dst, UDP, body, ident=rng.randrange(0x10000)))
        if lie:  # checksum 0: the parser must catch the lie itself
            fixed = bytearray(fixup(frame, rng))
            fixed[40:42] = b"\0\0"
            return bytes(fixed)
        return self.finish(frame, mutate=0.2)

    def dns_query(self) -> bytes:
        rng = self.rng
        labels = [rng.choice((b"example", b"a" * 63, b"xn--p1ai", b"", rng.randbytes(5)))
                  for _ in range(rng.randint(1, 4))]
        name = b"".join(bytes((len(x),)) + x for x in labels if x) + b"\0"
        if rng.random() < 0.1:
            name = rng.choice((b"\xc0\x0c", b"\xc0\xff", b"\x3f" + b"a" * 10, b"\x80abc\0"))
        qd = rng.choice((1, 1, 1, 0, 2, 0xFFFF))
        flags = rng.choice((0x0100, 0x0100, 0x8180, 0x7800, 0x0110))
        msg = struct.pack("!HHHHHH", rng.randrange(0x10000), flags, qd, 0, 0, 0) + name + \
            struct.pack("!HH", rng.choice((1, 28, 255, 16)), 1)
        if rng.random() < 0.15:
            msg = mutate_bytes(msg, rng)
        if rng.random() < 0.1:
            msg = msg[: rng.randrange(13)]  # shorter than a DNS header (CVE-2021-3594 shape)
        return msg

    def gen_dns(self) -> bytes:
        rng = self.rng
        body = udp(rng.choice((33000, 33001, 5353, 0)), 53, self.dns_query())
        dst = ip4("10.0.2.3") if rng.random() < 0.85 else rng.choice(COMMON)
        return self.udp_frame(self.guest_ip(), dst, body)

    def gen_icmp(self) -> bytes:
        rng = self.rng
        r = rng.random()
        dst = rng.choice(DESTS)
        if r < 0.7:
            msg = icmp(8, 0, struct.pack("!HH", rng.choice((7, 8, 9)), rng.randrange(0x10000)),
                       rng.randbytes(rng.choice((0, 8, 56, 1400, 3000))))
        elif r < 0.85:  # an error quoting something
            quoted = ipv4(self.guest_ip(), rng.choice(DESTS), rng.choice((TCP, UDP, ICMP)),
                          rng.randbytes(8))
            msg = icmp(rng.choice((3, 11, 12, 5, 4)), rng.randrange(16), b"\0\0\0\0",
                       quoted[: rng.randrange(len(quoted) + 1)])
        else:
            msg = icmp(rng.randrange(256), rng.randrange(256), rng.randbytes(4),
                       rng.randbytes(rng.randint(0, 40)))
        return self.ip_frame(dst, ICMP, msg)

    def gen_udp(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.3:  # TFTP read requests, short and lying (CVE-2021-3595)
            rrq = rng.choice((b"\x00\x01file\x00octet\x00", b"\x00\x01", b"\x00",
                              b"\x00\x01" + b"x" * 600 + b"\x00netascii\x00blksize\x001428\x00",
                              rng.randbytes(rng.randint(0, 20))))
            body = udp(rng.randrange(1024, 65536), 69, rrq)
            dst = rng.choice((ip4("10.0.2.2"), DESTS[5]))
        else:
            dport = rng.choice((7, 9, 53, 67, 68, 123, 137, 1900, 5353, 0, rng.randrange(65536)))
            body = udp(rng.choice((5000, 5001, 68, 0)), dport,
                       rng.randbytes(rng.choice((0, 1, 20, 512, 1472, 2000))))
            dst = rng.choice(DESTS)
        return self.udp_frame(self.guest_ip(), dst, body)

    def tcp_options(self, syn: bool) -> bytes:
        rng = self.rng
        if rng.random() < 0.2:  # lying lengths (libslirp's tcp_dooptions had its share)
            return rng.choice((bytes((2, 0)), bytes((2, 1, 5)), bytes((2, 40, 1, 1)),
                               bytes((3, 3)), bytes((8, 2)), bytes((254, 255)),
                               rng.randbytes(rng.choice((4, 12, 40)))))
        if not syn:
            return b"" if rng.random() < 0.8 else bytes((1, 1, 8, 10)) + rng.randbytes(8)
        opts = b""
        if rng.random() < 0.8:
            opts += struct.pack("!BBH", 2, 4, rng.choice((1460, 536, 65495, 0, 1, 48, 9000)))
        if rng.random() < 0.6:
            opts += bytes((1, 3, 3, rng.choice((0, 7, 14, 15, 200))))
        if rng.random() < 0.4:
            opts += bytes((1, 1, 4, 2))
        return opts

    def gen_tcp_row(self) -> list[bytes]:
        """A row one connection's segments would make in a burst (the GRO path's food):
        in-order data without options, now and then pure ACKs or a FIN at the end."""
        rng = self.rng
        synced = [c for c in self.conns if c.peer_nxt is not None]
        if not synced:
            return [self.gen_tcp() for _ in range(rng.randint(2, 8))]
        c = rng.choice(synced)
        assert c.peer_nxt is not None
        k = rng.randint(2, 24)
        window = rng.choice((65535, 65535, 29200, 0, 512))
        out = []
        if rng.random() < 0.2:  # acknowledgements that advance (or, sometimes, do not)
            for i in range(k):
                ack = (c.peer_nxt - 100 * (k - 1 - i) + rng.choice((0, 0, 0, -1, 1))) & 0xFFFFFFFF
                seg = tcp(c.sport, c.dport, c.nxt, ack, ACK, window)
                out.append(self.ip_frame(c.dst, TCP, seg, src=c.src, mutate=0.02))
            return out
        size = rng.choice((1, 100, 536, 1448, 1460))
        for i in range(k):
            payload = rng.randbytes(size)
            flags = ACK | (PSH if rng.random() < 0.3 else 0)
            if i == k - 1 and rng.random() < 0.1:
                flags |= FIN
            seg = tcp(c.sport, c.dport, c.nxt, c.peer_nxt, flags, window, payload)
            c.nxt += len(payload) + (1 if flags & FIN else 0)
            out.append(self.ip_frame(c.dst, TCP, seg, src=c.src, mutate=0.02))
        return out

    def gen_tcp6(self) -> bytes:
        return self.gen_tcp(v6=True)

    def gen_tcp(self, v6: bool = False) -> bytes:
        rng = self.rng
        conns = self.conns
        r = rng.random()
        if r < 0.12 or not conns:
            if v6:
                dst = rng.choice(DESTS6) if rng.random() < 0.1 else rng.choice(TCP_DESTS6)
                src = self.guest_ip6()
            else:
                dst = rng.choice(DESTS) if rng.random() < 0.1 else rng.choice(TCP_DESTS)
                src = self.guest_ip()
            c = GuestConn(self.mac(), src, rng.randrange(1024, 65536), dst,
                          rng.choice((80, 22, 53, 8080, 0, 443)), rng.randrange(1 << 32), 0)
            c.nxt = c.iss + 1
            if len(conns) >= 64:  # make room: connections that went nowhere must not pile up
                conns.pop(rng.randrange(len(conns)))
            conns.append(c)
            flags = SYN if rng.random() < 0.9 else rng.choice((SYN | FIN, SYN | RST, SYN | ACK,
                                                               FIN, 0, 0xFF))
            seg = tcp(c.sport, c.dport, c.iss, 0, flags, rng.choice((64240, 0, 65535, 1)),
                      options=self.tcp_options(True))
            return self.ip_frame(c.dst, TCP, seg, src=c.src, mutate=0.1)
        synced = [c for c in conns if c.peer_nxt is not None]
        c = rng.choice(synced if synced and rng.random() < 0.8 else conns)
        ack = c.peer_nxt if c.peer_nxt is not None else rng.randrange(1 << 32)
        window = rng.choice((65535, 65535, 29200, 0, 1, 512))
        seq = c.nxt
        flags = ACK
        payload = b""
        urgent = 0
        kind = rng.random()
        if kind < 0.45:  # data
            payload = rng.randbytes(rng.choice((1, 10, 100, 536, 1460, 3000)))
            flags |= PSH if rng.random() < 0.5 else 0
            if rng.random() < 0.1:
                flags |= URG
                urgent = rng.choice((0, 1, len(payload), len(payload) + 1, 0xFFFF))
            if rng.random() < 0.85:
                c.nxt += len(payload)
            else:
                seq = c.nxt + rng.choice((len(payload), 70000, -len(payload), 1 << 31))
        elif kind < 0.55:  # keepalive and window probes
            seq = c.nxt - 1
            payload = b"" if rng.random() < 0.7 else b"\0"
        elif kind < 0.62:
            flags |= FIN
            c.nxt += 1
        elif kind < 0.66:
            flags = RST | rng.choice((0, ACK))
            seq = c.nxt + rng.choice((0, 0, 1, 100000))
        elif kind < 0.7:
            flags = SYN | rng.choice((0, ACK))
            seq = c.iss
        elif kind < 0.75:  # old duplicates, wild acks
            seq = c.nxt - rng.choice((1, 100, 1 << 20))
            ack = (ack + rng.choice((-1, 1, 1 << 31))) & 0xFFFFFFFF
        elif kind < 0.8:
            flags = rng.randrange(256)
        # else: a pure ACK
        seg = tcp(c.sport, c.dport, seq, ack, flags, window, payload,
                  options=self.tcp_options(False), urgent=urgent)
        return self.ip_frame(c.dst, TCP, seg, src=c.src, mutate=0.1)

    def gen_frag(self) -> bytes:
        """Fragments of a datagram (sent one per call, queued): overlaps with different bytes,
        duplicates, tiny and overrunning pieces, lying offsets (ip_reass CVEs)."""
        rng = self.rng
        if not self._frags:
            proto = rng.choice((UDP, ICMP, TCP))
            if proto == UDP:
                inner = udp(5000, rng.choice((7, 53, 67, 69)), rng.randbytes(rng.randint(0, 4000)))
            elif proto == ICMP:
                inner = icmp(8, 0, b"\0\x07\0\x01", rng.randbytes(rng.randint(0, 4000)))
            else:
                inner = tcp(40000, 80, 1, 0, SYN, 65535, rng.randbytes(rng.randint(0, 100)))
            src, dst = self.guest_ip(), rng.choice(COMMON)
            whole = fixup(eth(GW_MAC, self.mac(), ETH_IP, ipv4(src, dst, proto, inner)), rng)
            inner = whole[34:]
            ident = rng.randrange(0x10000)
            pieces: list[tuple[int, bytes, bool]] = []
            off = 0
            while off < len(inner):
                n = rng.choice((8, 16, 256, 1024, 1480, len(inner)))
                chunk = inner[off : off + n]
                pieces.append((off, chunk, off + n < len(inner)))
                off += n
            r = rng.random()
            if r < 0.15 and pieces:  # an overlap with different bytes
                o, chunk, mf = rng.choice(pieces)
                pieces.append((o, bytes(len(chunk)), mf))
            elif r < 0.3 and pieces:  # a duplicate
                pieces.append(rng.choice(pieces))
            elif r < 0.4:  # past 65535 ("ping of death")
                pieces.append((65528, rng.randbytes(16), False))
            elif r < 0.5:  # odd-sized middle pieces, a lying last one
                pieces.append((rng.randrange(0, 8192) & ~7, rng.randbytes(rng.randint(1, 9)),
                               rng.random() < 0.5))
            if rng.random() < 0.5:
                rng.shuffle(pieces)
            for o, chunk, mf in pieces:
                frag = ((0x2000 if mf else 0) | ((o >> 3) & 0x1FFF))
                self._frags.append(fixup(eth(GW_MAC, self.mac(), ETH_IP,
                                             ipv4(src, dst, proto, chunk, ident=ident,
                                                  frag=frag)), rng))
        return self._frags.popleft()

    _frags: collections.deque[bytes]

    # --- IPv6 twins of the generators: real flows over IPv6, NDP, DHCPv6, IPv6 fragments
    def gen_ndp(self) -> bytes:
        """Router and neighbour solicitations and advertisements (the ARP of IPv6), some
        malformed: a hop limit other than 255, a non-zero code, options of length 0 or cut
        short, a solicitation from :: with a link-layer option."""
        rng = self.rng
        mac = self.mac()
        kind = rng.choice((133, 135, 135, 135, 136, 134, 137))
        src = rng.choice((GUEST_IPS6[2], GUEST_IPS6[2], self.guest_ip6(), ip6("::")))
        target = rng.choice((ROUTER_LL, HOST6, DNS6, ROUTER_LL, self.guest_ip6(),
                             rng.choice(DESTS6)))
        opt = rng.choice((bytes((1, 1)) + mac, bytes((1, 1)) + mac, b"", bytes((1, 0)) + mac,
                          bytes((2, 1)) + mac, bytes((1, 2)) + mac + bytes(8), bytes((1, 1, 9)),
                          bytes((14, 1)) + rng.randbytes(6)))
        if kind == 133:
            dst, rest, body = ip6("ff02::2"), bytes(4), opt
        elif kind == 135:
            dst = rng.choice((ip6("ff02::1:ff00:0")[:13] + target[13:], target, ROUTER_LL))
            rest, body = bytes(4), target + opt
        elif kind == 136:
            dst = rng.choice((ip6("ff02::1"), ROUTER_LL))
            rest = struct.pack("!I", rng.choice((0x20000000, 0x60000000, 0xA0000000, 0)))
            body = rng.choice((src, target)) + opt
        elif kind == 134:  # a guest that thinks it is a router
            dst, rest = ip6("ff02::1"), struct.pack("!BBH", 64, 0, 1800)
            body = bytes(8) + opt
        else:  # a redirect
            dst, rest, body = ROUTER_LL, bytes(4), target + rng.choice(DESTS6) + opt
        msg = icmp(kind, 0 if rng.random() < 0.9 else rng.randrange(1, 256), rest, body)
        frame = eth(mcast_mac6(dst) if dst[0] == 0xFF else GW6_MAC, mac, ETH_IP6,
                    ipv6(src, dst, ICMP6, msg, hlim=255 if rng.random() < 0.9 else 64))
        return self.finish(frame, mutate=0.15)

    def dhcp6_message(self) -> bytes:
        rng = self.rng
        kind = rng.choice((11, 11, 1, 1, 3, 5, 6, 8, 9, 4, 12, 2, 0, 255))
        opts = bytearray()
        if rng.random() < 0.8:
            duid = b"\x00\x03\x00\x01" + self.mac()
            opts += struct.pack("!HH", 1, len(duid)) + duid
        if rng.random() < 0.6:
            oro = rng.choice((b"\x00\x17\x00\x18", b"\x00\x17", b"\x00\x3b\x00\x17\x00\x18",
                              b"\x00"))
            opts += struct.pack("!HH", 6, len(oro)) + oro
        if rng.random() < 0.5:
            opts += struct.pack("!HHH", 8, 2, rng.randrange(0x10000))
        if rng.random() < 0.3:
            ia = struct.pack("!III", rng.randrange(1 << 32), 0, 0)
            if rng.random() < 0.5:
                addr = struct.pack("!HH16sII", 5, 24, self.guest_ip6(), 3600, 7200)
                ia += addr
            opts += struct.pack("!HH", rng.choice((3, 4)), len(ia)) + ia
        if rng.random() < 0.2:
            opts += struct.pack("!HH", 14, 0)
        if rng.random() < 0.2:
            sid = b"\x00\x03\x00\x01" + GW6_MAC
            opts += struct.pack("!HH", 2, len(sid)) + sid
        if rng.random() < 0.2:  # lying lengths, unknown options, garbage
            opts += rng.choice((struct.pack("!HH", 1, 200), struct.pack("!HH", 6, 3) + b"\x00",
                                struct.pack("!HH", 0xFFFF, 4) + bytes(4), rng.randbytes(12)))
        msg = bytes((kind,)) + rng.randbytes(3) + bytes(opts)
        if rng.random() < 0.15:
            msg = mutate_bytes(msg, rng, 4)
        if rng.random() < 0.1:
            msg = msg[: rng.randrange(6)]
        return msg

    def gen_dhcp6(self) -> bytes:
        rng = self.rng
        body = udp(rng.choice((546, 546, 546, 547, 5000)), rng.choice((547, 547, 547, 546)),
                   self.dhcp6_message())
        src = GUEST_IPS6[2] if rng.random() < 0.8 else self.guest_ip6()
        dst = rng.choice((ip6("ff02::1:2"), ip6("ff02::1:2"), ip6("ff02::1:2"), ROUTER_LL,
                          HOST6, ip6("ff05::1:3")))
        return self.udp_frame(src, dst, body)

    def gen_dns6(self) -> bytes:
        rng = self.rng
        body = udp(rng.choice((33000, 33001, 5353, 0)), 53, self.dns_query())
        dst = DNS6 if rng.random() < 0.85 else rng.choice(COMMON6)
        return self.udp_frame(self.guest_ip6(), dst, body)

    def gen_icmp6(self) -> bytes:
        rng = self.rng
        r = rng.random()
        dst = rng.choice(COMMON6) if rng.random() < 0.7 else rng.choice(DESTS6)
        if r < 0.65:  # echo requests: to outside addresses they open echo flows
            msg = icmp(128, 0, struct.pack("!HH", rng.choice((7, 8, 9)), rng.randrange(0x10000)),
                       rng.randbytes(rng.choice((0, 8, 56, 1232, 1400, 3000))))
        elif r < 0.85:  # an error quoting something
            quoted = ipv6(self.guest_ip6(), rng.choice(DESTS6), rng.choice((TCP, UDP, ICMP6)),
                          rng.randbytes(8))
            msg = icmp(rng.choice((1, 2, 3, 4)), rng.randrange(8),
                       struct.pack("!I", rng.choice((0, 1280, 1500, 68))),
                       quoted[: rng.randrange(len(quoted) + 1)])
        elif r < 0.92:  # replies, MLD, and types of the NDP family out of place
            msg = icmp(rng.choice((129, 130, 131, 132, 143, 133, 135, 136, 137)), 0,
                       rng.randbytes(4), rng.randbytes(rng.randint(0, 40)))
        else:
            msg = icmp(rng.randrange(256), rng.randrange(256), rng.randbytes(4),
                       rng.randbytes(rng.randint(0, 40)))
        return self.ip_frame(dst, ICMP6, msg)

    def gen_udp6(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.3:  # TFTP over IPv6, short and lying requests among them
            rrq = rng.choice((b"\x00\x01file\x00octet\x00", b"\x00\x01", b"\x00",
                              b"\x00\x01pxelinux.0\x00octet\x00blksize\x001428\x00tsize\x000\x00",
                              b"\x00\x04\x00\x01", rng.randbytes(rng.randint(0, 20))))
            body = udp(rng.randrange(1024, 65536), 69, rrq)
            dst = rng.choice((HOST6, HOST6, COMMON6[2]))
        else:
            dport = rng.choice((7, 9, 53, 123, 137, 547, 1900, 5353, 0, rng.randrange(65536)))
            body = udp(rng.choice((5000, 5001, 546, 0)), dport,
                       rng.randbytes(rng.choice((0, 1, 20, 512, 1232, 1452, 2000))))
            dst = rng.choice(COMMON6) if rng.random() < 0.7 else rng.choice(DESTS6)
        return self.udp_frame(self.guest_ip6(), dst, body)

    def gen_frag6(self) -> bytes:
        """IPv6 fragments (Fragment headers) of a datagram: overlaps (forbidden outright,
        RFC 5722), duplicates, pieces that are not multiples of 8, past 65535, a first piece
        without the upper-layer header (RFC 7112), atomic fragments."""
        rng = self.rng
        if not self._frags:
            proto = rng.choice((UDP, ICMP6, TCP))
            if proto == UDP:
                inner = udp(5000, rng.choice((7, 53, 69, 9)), rng.randbytes(rng.randint(0, 4000)))
            elif proto == ICMP6:
                inner = icmp(128, 0, b"\0\x07\0\x01", rng.randbytes(rng.randint(0, 4000)))
            else:
                inner = tcp(40000, 80, 1, 0, SYN, 65535, rng.randbytes(rng.randint(0, 100)))
            src, dst = self.guest_ip6(), rng.choice(COMMON6)
            whole = fixup6(eth(GW6_MAC, self.mac(), ETH_IP6, ipv6(src, dst, proto, inner)), rng)
            inner = whole[54:]
            ident = rng.randrange(1 << 32)
            pieces: list[tuple[int, bytes, bool]] = []
            off = 0
            while off < len(inner):
                n = rng.choice((8, 16, 256, 1024, 1232, len(inner)))
                chunk = inner[off : off + n]
                pieces.append((off, chunk, off + n < len(inner)))
                off += n
            r = rng.random()
            if r < 0.1 and pieces:  # an overlap
                o, chunk, mf = rng.choice(pieces)
                pieces.append((o + 8 if len(chunk) > 8 else o, bytes(len(chunk)), mf))
            elif r < 0.25 and pieces:  # a duplicate
                pieces.append(rng.choice(pieces))
            elif r < 0.35:  # past 65535
                pieces.append((65528, rng.randbytes(16), False))
            elif r < 0.45:  # odd-sized middle pieces, a lying last one
                pieces.append((rng.randrange(0, 8192) & ~7, rng.randbytes(rng.randint(1, 9)),
                               rng.random() < 0.5))
            elif r < 0.5:  # the first piece cut inside the upper-layer header
                pieces[0] = (0, inner[:4], True)
            elif r < 0.55:  # an atomic fragment: offset 0, M clear
                pieces = [(0, inner, False)]
            if rng.random() < 0.5:
                rng.shuffle(pieces)
            for o, chunk, mf in pieces:
                fh = struct.pack("!BBHI", proto, 0, (o & 0xFFF8) | (1 if mf else 0), ident)
                self._frags.append(eth(GW6_MAC, self.mac(), ETH_IP6,
                                       ipv6(src, dst, FRAG6, fh + chunk)))
        return self._frags.popleft()

    def gen_l2_6(self) -> bytes:
        """IPv6 headers that stop short of any protocol: too many extension headers, no next
        header, a jumbogram's zero length, a frame shorter than its header."""
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            return self.gen_l2()
        nh = rng.choice((NONE6, HOPOPTS, DSTOPTS, ROUTING, 50, 51, 135, 253, rng.randrange(256)))
        body = rng.randbytes(rng.randint(0, 80))
        if nh in (HOPOPTS, DSTOPTS, ROUTING) and rng.random() < 0.5:
            body = b"".join(bytes((DSTOPTS, 0)) + bytes(6) for _ in range(12)) + body
        frame = eth(GW6_MAC, self.mac(), ETH_IP6, ipv6(self.guest_ip6(), rng.choice(DESTS6),
                                                       nh, body))
        if r < 0.6:
            frame = frame[: rng.randrange(14, 54)]
        elif r < 0.7:
            frame = frame[:18] + b"\0\0" + frame[20:]
        return frame

    def gen_l2(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.3:  # NC-SI (CVE-2020-29129): libslirp answered it reading past short frames
            body = rng.choice((b"", b"\0" * 4, b"\0\x01\0\0" + rng.randbytes(rng.randint(0, 40))))
            return eth(BCAST_MAC, self.mac(), ETH_NCSI, body)
        if r < 0.5:
            return rng.randbytes(rng.randint(0, 14))
        if r < 0.6:  # multicast source
            return eth(GW_MAC, b"\x01\0\x5e\0\0\x01", ETH_IP, rng.randbytes(40))
        if r < 0.7:
            return eth(BCAST_MAC, self.mac(), ETH_IP6, rng.randbytes(rng.randint(0, 80)))
        if r < 0.8:
            return eth(GW_MAC, self.mac(), ETH_VLAN, rng.randbytes(rng.randint(0, 60)))
        if r < 0.9:
            return eth(GW_MAC, self.mac(), rng.randrange(0x10000),
                       rng.randbytes(rng.randint(0, 100)))
        return eth(GW_MAC, self.mac(), ETH_IP, rng.randbytes(rng.randint(0, 100)))

    def generator(self) -> Callable[[], bytes]:
        """The protocol's generator; in an IPv6 session its IPv6 twin, with an IPv4 frame
        now and then (a dual-stack guest)."""
        self._frags = collections.deque()
        v4 = {
            "arp": self.gen_arp, "dhcp": self.gen_dhcp, "dns": self.gen_dns,
            "icmp": self.gen_icmp, "tcp": self.gen_tcp, "udp": self.gen_udp,
            "frag": self.gen_frag, "l2": self.gen_l2,
        }[self.protocol]
        if not self.v6:
            return v4
        v6 = {
            "arp": self.gen_ndp, "dhcp": self.gen_dhcp6, "dns": self.gen_dns6,
            "icmp": self.gen_icmp6, "tcp": self.gen_tcp6, "udp": self.gen_udp6,
            "frag": self.gen_frag6, "l2": self.gen_l2_6,
        }[self.protocol]
        rng = self.rng

        def mixed() -> bytes:
            if self._frags or rng.random() < 0.85:
                self.frames6 += 1
                return v6()
            return v4()

        return mixed

    # --- a whole session
    def play_capture(self, path: Path) -> None:
        """A recorded real session, verbatim: realistic state to fuzz from."""
        for rec in open_journal(path).records:
            ev = decode_event(rec.event)
            self.now = max(self.now, rec.t_ns)
            if isinstance(ev, GuestFrame):
                self.frame(ev.data)
            else:
                self.step(ev)

    def run(self, frames: int, capture: Path | None) -> None:
        rng = self.rng
        self.step(GuestLink(True))
        if self.bursts:
            self.step(FrameRuns(True))
        self.step(DnsUpstreams(self.upstreams))
        if capture is not None:
            self.play_capture(capture)
        if self.v6:  # as a guest comes up: a router solicitation, duplicate address detection
            self.frame(self.gen_ndp_start(GUEST_IPS6[2]))
            self.frame(self.gen_ndp_start(GUEST_IPS6[0]))
        gen = self.generator()
        start = self.frames
        snap_at = [start + int(x * frames) for x in self.snap_at]
        while self.frames - start < frames:
            if snap_at and self.frames >= snap_at[0]:
                snap_at.pop(0)
                self.snapshot_twin()
            r = rng.random()
            if r < 0.25:
                self.host_event()
            elif r < 0.3:
                self.advance()
            elif self.bursts and r < 0.65:
                if self.protocol == "tcp" and rng.random() < 0.4:
                    self.burst(self.gen_tcp_row())
                else:
                    self.burst([gen() for _ in range(rng.randint(2, 16))])
            else:
                self.frame(gen())
            if self.seq % 512 == 0:
                check_bounds(self.stack)
        for _ in range(20):  # let timers run out
            self.advance()
        check_bounds(self.stack)
        self.check_twin()
        self.recorder.close()

    def gen_ndp_start(self, src: bytes) -> bytes:
        """The first NDP a booting guest sends: an RS from its link-local address, then a
        neighbour solicitation for its own global address (duplicate address detection)."""
        mac = GUEST_MACS[0]
        if src == GUEST_IPS6[2]:
            dst = ip6("ff02::2")
            msg = icmp(133, 0, bytes(4), bytes((1, 1)) + mac)
            frame = eth(mcast_mac6(dst), mac, ETH_IP6, ipv6(src, dst, ICMP6, msg, hlim=255))
        else:
            dst = ip6("ff02::1:ff00:0")[:13] + src[13:]
            msg = icmp(135, 0, bytes(4), src)
            frame = eth(mcast_mac6(dst), mac, ETH_IP6,
                        ipv6(ip6("::"), dst, ICMP6, msg, hlim=255))
        return fixup6(frame, self.rng)


def cve_frames() -> dict[str, list[bytes]]:
    """The shapes of libslirp's CVE history as guest frames (checksums right, so the parser
    that must refuse them is the one that sees them)."""
    rng = random.Random(0)
    guest, mac = GUEST_IPS[0], GUEST_MACS[0]
    bcast, gw, dns = b"\xff\xff\xff\xff", ip4("10.0.2.2"), ip4("10.0.2.3")

    def ipf(src: bytes, dst: bytes, proto: int, l4: bytes, ident: int = 1, frag: int = 0
            ) -> bytes:
        return fixup(eth(GW_MAC, mac, ETH_IP, ipv4(src, dst, proto, l4, ident=ident, frag=frag)),
                     rng)

    def lying_udp(dst: bytes, dport: int, payload: bytes, ulen: int) -> bytes:
        body = bytearray(udp(68 if dport == 67 else 5000, dport, payload))
        struct.pack_into("!H", body, 4, ulen)
        frame = bytearray(ipf(guest, dst, UDP, bytes(body)))
        frame[40:42] = b"\0\0"  # no checksum: the length alone must be checked
        return bytes(frame)

    whole = udp(5000, 7, bytes(range(256)) * 8)
    return {
        # CVE-2021-3592: UDP to 67 shorter than a BOOTP message
        "bootp-short": [ipf(b"\0\0\0\0", bcast, UDP, udp(68, 67, b"\x01\x01\x06" + b"\0" * 20))],
        "bootp-lying-length": [lying_udp(bcast, 67, b"\x01" * 300, 2000),
                               lying_udp(bcast, 67, b"\x01" * 300, 7)],
        # CVE-2021-3594/3593: UDP shorter than its header; DNS shorter than its header
        "udp-short-header": [ipf(guest, gw, UDP, b"\x13\x88\x00")],
        "dns-short": [ipf(guest, dns, UDP, udp(5000, 53, b"\xbe\xef\x01"))],
        "dns-lying-length": [lying_udp(dns, 53, b"\xbe\xef" + b"\0" * 20, 1000)],
        # CVE-2021-3595: TFTP shorter than tftp_t
        "tftp-short": [ipf(guest, gw, UDP, udp(5000, 69, b"\x00\x01")),
                       lying_udp(gw, 69, b"\x00\x01file\x00octet\x00", 600)],
        # CVE-2020-29129/29130: NC-SI and ARP read past a short frame
        "ncsi-short": [eth(BCAST_MAC, mac, ETH_NCSI, b""),
                       eth(BCAST_MAC, mac, ETH_NCSI, b"\0" * 3)],
        "arp-short": [eth(BCAST_MAC, mac, ETH_ARP, b"\x00\x01\x08\x00\x06\x04\x00\x01")],
        # CVE-2019-14378, -15890, CVE-2020-1983: ip_reass with crafted fragments
        "frag-overlap-different": [
            ipf(guest, gw, UDP, whole[:1024], ident=77, frag=0x2000),
            ipf(guest, gw, UDP, bytes(1024), ident=77, frag=0x2000 | (512 >> 3)),
            ipf(guest, gw, UDP, whole[1024:], ident=77, frag=1024 >> 3),
        ],
        "frag-past-65535": [ipf(guest, gw, UDP, bytes(64), ident=78, frag=0x2000 | 8189),
                            ipf(guest, gw, UDP, whole[:8], ident=78, frag=0x2000)],
        "frag-first-huge-then-tiny": [
            ipf(guest, gw, UDP, whole[:1480], ident=79, frag=0x2000),
            *[ipf(guest, gw, UDP, bytes(8), ident=79, frag=0x2000 | (1480 + 8 * k) >> 3)
              for k in range(40)],
        ],
        # the TCP shapes: urgent pointer past the segment, option lengths that lie
        "tcp-urgent-beyond": [ipf(guest, gw, TCP, tcp(40000, 80, 1, 0, SYN, 65535)),
                              ipf(guest, gw, TCP, tcp(40000, 80, 2, 1, ACK | URG, 65535, b"x",
                                                      urgent=0xFFFF))],
        "tcp-option-lengths": [ipf(guest, gw, TCP, tcp(40001, 80, 1, 0, SYN, 65535,
                                                       options=o))
                               for o in (bytes((2, 0)), bytes((2, 1, 5, 0xB4)), bytes((3, 200)),
                                         bytes((2, 40)), bytes((8, 1)))],
    }


def captures() -> list[Path]:
    return sorted(CAPTURES.glob("*.journal"))


def fuzz(protocol: str, frames: int, *, seed: int, session_frames: int = 5000,
         replay_every: int = 1, stats: Stats | None = None, workdir: Path | None = None,
         ring_bytes: int = 1 << 20) -> Stats:
    """Run ``frames`` guest frames of ``protocol`` in sessions of ``session_frames``; every
    other session journals into a ring of ``ring_bytes`` (segments with snapshots), replayed
    whole and again from its last segment's snapshot, taken mid-session."""
    stats = stats if stats is not None else Stats()
    rng = random.Random(f"{seed}-{protocol}")
    caps = captures()
    done = 0
    index = 0
    with tempfile.TemporaryDirectory(prefix="slirptrio-fuzz-", dir=workdir) as tmp:
        while done < frames:
            n = min(session_frames, frames - done)
            config = CONFIGS[index % len(CONFIGS)]
            path = Path(tmp) / f"{protocol}-{index}.journal"
            t0 = time.perf_counter()
            # Every other session in a bounded ring of segments, each starting with a snapshot:
            # replay then starts from a restored core and checks the state at each boundary.
            # Sessions come in fours: IPv4 and IPv6 ones alike, with and without a ring,
            # frame by frame and in bursts.
            v6 = index % 4 in (2, 3)
            s = Session(rng, protocol, config, path, seed=rng.randrange(1 << 62),
                        journal_max=ring_bytes if index % 2 else None,
                        bursts=index % 4 in (1, 2), v6=v6)
            s.run(n, caps[index % len(caps)] if caps and index % 2 == 0 else None)
            stats.v6_sessions += v6
            stats.frames6[protocol] += s.frames6
            stats.v6_opens.update(s.v6_opens)
            if v6:
                stats.counters6.update(s.stack.counters)
            stats.snapshots += s.snapshots
            stats.twin_events += s.twin_events
            stats.seconds[protocol] += time.perf_counter() - t0
            stats.frames[protocol] += s.frames
            stats.events += s.seq
            stats.counters.update(s.stack.counters)
            stats.counters.update(s.stack._dhcp.counters)
            stats.sessions += 1
            stats.max_tcp = max(stats.max_tcp, len(s.stack.tcp))
            stats.max_udp = max(stats.max_udp, len(s.stack.udp))
            stats.max_mem_used = max(stats.max_mem_used, s.stack.tcp.mem_used)
            stats.max_reasm_bytes = max(stats.max_reasm_bytes, s.stack._reasm.total_bytes)
            if index % replay_every == 0:
                t1 = time.perf_counter()
                replay(stats, path, f"{protocol}#{index} ({config!r})", ring=index % 2 == 1)
                stats.replay_seconds += time.perf_counter() - t1
            shutil.rmtree(path)
            done += n
            index += 1
    return stats


def replay(stats: Stats, path: Path, name: str, *, ring: bool) -> None:
    """Replay a session's journal whole, and a ring's once more from its last segment's
    snapshot (taken mid-session): both identical, or AssertionError (the journal kept)."""

    def check(result: ReplayResult) -> None:
        if result.divergence is not None:
            keep = Path(tempfile.gettempdir()) / path.name
            shutil.move(path, keep)
            raise AssertionError(f"fuzz session {name} did not replay identical; journal kept "
                                 f"at {keep}:\n{format_divergence(result)}")
        # A replay that compares nothing proves nothing: only a ring too small for a segment
        # (the recorder names that gap) may leave no records.
        if result.records == 0 and not result.gaps:
            raise AssertionError(f"fuzz session {name}: nothing replayed")

    result = replay_journal(path)
    check(result)
    stats.replayed += 1
    stats.segments += result.segments
    stats.replay_gaps += len(result.gaps)
    stats.empty_replays += result.records == 0
    if not ring or result.last is None:
        return
    first = result.first.seq if result.first is not None else 0
    if result.segments > 1:  # from the last segment's snapshot: a core restored mid-session
        tail = replay_journal(path, start=Target(seq=result.last.seq))
        check(tail)
        first = tail.first.seq if tail.first is not None else first
    stats.first_seqs.append(first)
    stats.replayed_mid += first > 0


def report(stats: Stats) -> Iterator[str]:
    total_s = sum(stats.seconds.values())
    for p in PROTOCOLS:
        if stats.frames[p]:
            yield (f"{p:6} {stats.frames[p]:>10} frames ({stats.frames6[p]} IPv6) "
                   f"{stats.seconds[p]:8.1f} s "
                   f"{stats.frames[p] / max(stats.seconds[p], 1e-9):9.0f} frames/s")
    yield (f"total  {sum(stats.frames.values()):>10} frames, {stats.events} events, "
           f"{stats.sessions} sessions ({stats.v6_sessions} IPv6; {stats.replayed} replayed "
           f"identical, {stats.segments} segments; {stats.replayed_mid} rings replayed from a "
           f"mid-session snapshot), {total_s:.1f} s (+ {stats.replay_seconds:.1f} s replaying)")
    yield (f"IPv6: host sockets opened to IPv6 hosts {dict(stats.v6_opens)}; replay gaps "
           f"{stats.replay_gaps} ({stats.empty_replays} replays with no record); core "
           f"exceptions {stats.counters['core_exceptions']} (none escaped: one would have "
           f"stopped the run)")
    yield (f"snapshots: {stats.snapshots} mid-session snapshots restored into a fresh core, "
           f"{stats.twin_events} events after them with identical effects, every final state "
           f"identical")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield (f"peak RSS {rss / 1024:.1f} MiB; max TCP entries {stats.max_tcp}, UDP flows "
           f"{stats.max_udp}, TCP mem_used {stats.max_mem_used}, reassembly bytes "
           f"{stats.max_reasm_bytes}")
    drops = [(k, v) for k, v in stats.counters.most_common() if k.startswith("drop_")]
    yield "drops: " + ", ".join(f"{k}={v}" for k, v in drops[:25])
    others = [(k, v) for k, v in stats.counters.most_common() if not k.startswith("drop_")]
    yield "counters: " + ", ".join(f"{k}={v}" for k, v in others[:60])


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("slirptrio").setLevel(logging.CRITICAL)  # the fuzz is noisy by design
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=10_000, help="guest frames per protocol")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--session", type=int, default=5000, help="frames per session (one Stack)")
    ap.add_argument("--replay-every", type=int, default=1, help="replay every Nth session")
    args = ap.parse_args(argv)
    stats = Stats()
    for p in args.protocols.split(","):
        if p not in PROTOCOLS:
            ap.error(f"unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
        fuzz(p, args.frames, seed=args.seed, session_frames=args.session,
             replay_every=args.replay_every, stats=stats)
        print(next(line for line in report(stats) if line.startswith(p)), flush=True)
    for line in report(stats):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

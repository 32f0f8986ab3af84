"""What happened in a session, from its journal: leases, flows, DNS, ICMP errors, drops.

Theory of operation
-------------------
:func:`summarize` takes a journal header and its records (``seq, t_ns, event, effects``, as
:func:`slirptrio.journal.open_journal` gives them) and runs them once through a fresh core, as
replay does. While the replayed effects equal the journaled ones, the summary reads the
replayed ones (whole, where the journal keeps large frames only as digests) and the core's
counters give the drops by reason; after a divergence (or when the header's configuration does
not load) it reads the journal's own effects and says so.

Everything is read off the door's inputs and outputs, never the core's internals:

* a TCP flow starts with the guest's SYN (``TcpConnect`` in the same record names its flow
  id and where it went on the host) or with a forwarded connection (``TcpInbound`` and our
  SYN to the guest); its bytes are ``TcpSend`` (guest → host) and ``TcpData`` (host → guest);
  it ends with a failed connect (refused, timed out, unreachable: from the errno), an RST
  (from the guest's frame or ``TcpReset`` from the host), our RST sent from a timer (the
  core gave up: timed out), an RST answering the SYN itself with no connect (refused by the
  stack: restrict=on, a full table), or ``TcpClose`` after FINs. Retransmissions are
  segments either side sends again below the highest sequence number it already sent.
* UDP flows start with ``UdpOpen`` (or ``UdpInbound`` for a host forward) and end with
  ``UdpClose``; echo flows with ``IcmpEchoOpen``, or are answered by the stack itself.
* DNS lookups are the guest's queries to the relay address, matched with the answers it got.
* Leases are the DHCP ACKs (and NAKs, RELEASEs) on the wire; ICMP errors are those sent to
  the guest; drops are the core's ``drop_<reason>`` counters.

Memory stays bounded for any journal length: per flow, marks are capped and data activity is
kept in at most ``MAX_BINS`` time bins whose width doubles when they run out.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import json
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import dpkt

from replay.progress import Progress
from slirptrio.config import Config, ConfigError
from slirptrio.core import constants
from slirptrio.core.events import (
    DnsUpstreams,
    FaultRemove,
    GuestFrame,
    GuestFrames,
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
    TcpShutdown,
    TftpChunk,
    TftpClose,
    TftpOpen,
    TftpOpened,
    TftpRead,
    Tick,
    UdpClose,
    UdpError,
    UdpFwdSend,
    UdpInbound,
    UdpOpen,
    UdpReceived,
    UdpSend,
    decode_event,
    encode,
)
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import (
    Header,
    JournalError,
    SegmentStart,
    compact,
    frames_of,
    is_digest,
    open_journal,
)
from slirptrio.wire.framing import split_run
from slirptrio.wire.pcap import PcapWriter

SESSION_RECORD = ".session.json"
"""The suffix of the session record the command line writes beside a journal of its state
directory when the session closes (``session-X.journal`` -> ``session-X.session.json``;
:mod:`slirptrio.cli.statedir`)."""

_KNOWN_EVENTS = frozenset(c.TAG for c in (
    GuestFrame, TcpData, TcpConnectFailed, TcpReset, TcpInbound, UdpReceived, UdpInbound,
    IcmpEchoReply, UdpError, IcmpEchoError, IcmpUnavailable, TftpOpened, TftpChunk, GuestLink,
    HostFwdChange, DnsUpstreams, Tick, TcpSent, TcpEof, TcpConnected, TcpDataSent,
))
_KNOWN_EFFECTS = frozenset(c.TAG for c in (
    SendFrame, TcpSend, TcpClose, TcpConnect, UdpSend, UdpFwdSend, UdpClose, UdpOpen,
    IcmpEchoSend, IcmpEchoClose, IcmpEchoOpen, TftpClose, TftpOpen, TftpRead, TcpRecvCredit,
    TcpShutdown,
))

MAX_BINS = 512
"""Data-activity bins kept per flow (their width doubles when more would be needed)."""
MAX_MARKS = 256
"""Set-up, retransmission, FIN and RST marks kept per flow (beyond: counted only)."""
MAX_FLOWS = 100_000
"""Flows kept in full; later ones are counted only (a summary must stay bounded)."""
MAX_LOOKUPS = 10_000
"""DNS lookups and ICMP errors kept in full; later ones are counted only."""
FIRST_BIN_NS = 1_000_000

FAILED_ENDS = frozenset(
    {"RST", "refused", "timed out", "unreachable", "unavailable", "no reply"}
)

_NS = 1_000_000_000
_M32 = 0xFFFFFFFF
_ETH_IP, _ETH_ARP, _ETH_IPV6 = 0x0800, 0x0806, 0x86DD
_TCP_HDR = struct.Struct("!HHIIBB")
_PORTS = struct.Struct("!HH")
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_ICMP_ERROR_TYPES = {3: "unreachable", 4: "source quench", 5: "redirect", 11: "time exceeded",
                     12: "parameter problem"}
_ICMP6_ERROR_TYPES = {1: "unreachable", 2: "packet too big", 3: "time exceeded",
                      4: "parameter problem"}
_UNREACH_CODES = {0: "net", 1: "host", 2: "protocol", 3: "port", 4: "fragmentation needed",
                  9: "net prohibited", 10: "host prohibited", 13: "administratively prohibited"}
_DHCP_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK",
               7: "RELEASE", 8: "INFORM"}
_DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED"}
_DNS_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
              33: "SRV", 65: "HTTPS"}


# ------------------------------------------------------------------------------ the model


class Activity:
    """Bytes over time in at most :data:`MAX_BINS` bins of equal width."""

    def __init__(self, width_ns: int = FIRST_BIN_NS) -> None:
        self.width_ns = width_ns
        self._bins: dict[int, int] = {}

    def add(self, t_ns: int, n: int) -> None:
        b = t_ns // self.width_ns
        bins = self._bins
        bins[b] = bins.get(b, 0) + n
        if len(bins) > MAX_BINS:
            self.width_ns *= 2
            merged: dict[int, int] = {}
            for k, v in bins.items():
                merged[k // 2] = merged.get(k // 2, 0) + v
            self._bins = merged

    def bins(self) -> list[tuple[int, int]]:
        """``(start_ns, bytes)`` per non-empty bin, in time order."""
        return [(k * self.width_ns, v) for k, v in sorted(self._bins.items())]


@dataclass
class Flow:
    """One connection or datagram flow, as the guest saw it."""

    index: int
    proto: str  # "tcp" | "udp" | "icmp" | "tftp" (a transfer from the stack's own server)
    direction: str  # "out": the guest started it; "in": a host forward carried it in
    guest: str  # the guest's end, "10.0.2.15:40012"
    remote: str  # the far end as the guest sees it, "10.0.2.2:8080"
    start_ns: int
    host: str = ""  # where it really went (or came from) on the host
    flow_id: int | None = None
    last_ns: int = 0
    bytes_to_host: int = 0
    bytes_to_guest: int = 0
    packets_to_host: int = 0
    packets_to_guest: int = 0
    retransmits: int = 0
    established_ns: int | None = None
    end: str = "open"  # "FIN", "RST", "refused", "timed out", "unreachable", "closed", "open"
    end_detail: str = ""
    end_ns: int | None = None
    icmp_errors: list[str] = field(default_factory=list)
    marks: list[tuple[int, str]] = field(default_factory=list)
    marks_dropped: int = 0
    activity: Activity = field(default_factory=Activity, repr=False)
    # sequence tracking (TCP): highest end seen from each side, None before the first segment
    _hi_guest: int | None = field(default=None, repr=False)
    _hi_ours: int | None = field(default=None, repr=False)
    _fin_guest: bool = field(default=False, repr=False)  # the guest sent its FIN
    _fin_host: bool = field(default=False, repr=False)  # we sent ours (the host's EOF)

    @property
    def failed(self) -> bool:
        """Refused, reset, timed out, unreachable, or answered with an ICMP error."""
        return self.end in FAILED_ENDS or bool(self.icmp_errors)

    @property
    def duration_ns(self) -> int:
        end = self.end_ns if self.end_ns is not None else self.last_ns
        return max(0, end - self.start_ns)

    def mark(self, t_ns: int, kind: str) -> None:
        if len(self.marks) < MAX_MARKS:
            self.marks.append((t_ns, kind))
        else:
            self.marks_dropped += 1

    def finish(self, t_ns: int, end: str, detail: str = "") -> None:
        """Record how the flow ended (the first decisive reason wins)."""
        if self.end_ns is None:
            self.end, self.end_detail, self.end_ns = end, detail, t_ns
            self.last_ns = max(self.last_ns, t_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "proto": self.proto,
            "direction": self.direction,
            "guest": self.guest,
            "remote": self.remote,
            "host": self.host,
            "flow_id": self.flow_id,
            "start_s": _s(self.start_ns),
            "duration_s": _s(self.duration_ns),
            "established_s": _s(self.established_ns) if self.established_ns is not None else None,
            "bytes_to_host": self.bytes_to_host,
            "bytes_to_guest": self.bytes_to_guest,
            "packets_to_host": self.packets_to_host,
            "packets_to_guest": self.packets_to_guest,
            "retransmits": self.retransmits,
            "end": self.end,
            "end_detail": self.end_detail,
            "failed": self.failed,
            "icmp_errors": list(self.icmp_errors),
        }


@dataclass
class Lookup:
    """One DNS question the guest asked the relay, and what it was told."""

    t_ns: int
    name: str
    qtype: str
    guest: str
    answered_ns: int | None = None
    rcode: str = ""
    answers: list[str] = field(default_factory=list)
    retries: int = 0

    @property
    def failed(self) -> bool:
        return self.answered_ns is None or self.rcode not in ("NOERROR", "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "t_s": _s(self.t_ns),
            "name": self.name,
            "type": self.qtype,
            "guest": self.guest,
            "rcode": self.rcode if self.answered_ns is not None else "no answer",
            "answers": list(self.answers),
            "latency_ms": (
                round((self.answered_ns - self.t_ns) / 1e6, 3)
                if self.answered_ns is not None else None
            ),
            "retries": self.retries,
        }


@dataclass
class Note:
    """A dated line: a DHCP message, an ICMP error, a link or forward change."""

    t_ns: int
    kind: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"t_s": _s(self.t_ns), "kind": self.kind, "text": self.text, **self.data}


@dataclass
class Summary:
    """Everything :func:`summarize` found; ``to_dict()`` is the ``--json`` form."""

    header: Header
    records: int = 0
    frames_in: int = 0
    frames_out: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    flows: list[Flow] = field(default_factory=list)
    flows_not_kept: int = 0
    lookups: list[Lookup] = field(default_factory=list)
    lookups_not_kept: int = 0
    starts_at: int = 0  # the first record the journal still holds (a ring drops old ones)
    gaps: int = 0
    ipv6_addresses: dict[bytes, int] = field(default_factory=dict)  # the guest's, first seen
    dhcp: list[Note] = field(default_factory=list)
    icmp_errors: list[Note] = field(default_factory=list)
    events: list[Note] = field(default_factory=list)  # link, forwards, DNS upstreams
    counters: dict[str, int] | None = None  # None: not replayed
    replay: str = "identical"  # "identical" | "diverged at record N" | "not replayed: ..."
    truncated_bytes: int = 0
    end_ns: int | None = None  # when the session closed (its session record), if known
    first_guest_ns: int | None = None  # the guest's first frame (before it: QEMU, boot)
    window: tuple[int, int] | None = None  # --from/--until: the session times shown
    window_records: int = 0  # records inside the window
    faults: list[dict[str, Any]] = field(default_factory=list)  # each rule and what it did
    # Several guests (issue 22): each switch port's guest, and frames between guests by
    # (from port, to port); the destination port is "?" until its MAC was seen.
    guests: dict[int, dict[str, Any]] = field(default_factory=dict)
    between: dict[tuple[int, int | str], list[int]] = field(default_factory=dict)

    @property
    def lookups_failed(self) -> int:
        """DNS lookups unanswered or answered with an error (NXDOMAIN, SERVFAIL ...)."""
        return sum(1 for lk in self.lookups if lk.failed)

    @property
    def drops(self) -> dict[str, int]:
        if self.counters is None:
            return {}
        return {k[5:]: v for k, v in sorted(self.counters.items()) if k.startswith("drop_")}

    @property
    def span_ns(self) -> int:
        """From the first record (the session's start) to the session's close when the
        session record says it, else to the last record."""
        if self.first_ns is None or self.last_ns is None:
            return 0
        last = self.last_ns
        if self.end_ns is not None and self.window is None:
            last = max(last, self.end_ns)
        return last - self.first_ns

    def leases(self) -> list[dict[str, Any]]:
        """Each address acknowledged to a MAC: first and last ACK, lease time, released."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for n in self.dhcp:
            ip, mac = n.data.get("ip", ""), n.data.get("mac", "")
            if n.data.get("type") == "ACK" and ip and ip != "0.0.0.0":
                entry = out.setdefault((ip, mac), {
                    "ip": ip, "mac": mac, "first_s": _s(n.t_ns), "acks": 0, "released_s": None,
                    "lease_s": n.data.get("lease_s"), "hostname": n.data.get("hostname", ""),
                })
                entry["acks"] += 1
                entry["last_s"] = _s(n.t_ns)
            elif n.data.get("type") == "RELEASE":
                for (lip, lmac), entry in out.items():
                    if lmac == mac and lip == n.data.get("ciaddr"):
                        entry["released_s"] = _s(n.t_ns)
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        h = self.header
        return {
            "journal": {
                "format": h.format, "version": h.version, "seed": h.seed,
                "origin_ns": h.origin_ns, "meta": h.meta,
                "config": h.config,
            },
            "records": self.records,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "span": {
                "first_s": _s(self.first_ns or 0),
                "last_s": _s(self.last_ns or 0),
                "duration_s": _s(self.span_ns),
                "start_wall_ns": h.origin_ns + (self.first_ns or 0),
                "last_record_s": _s(self.last_ns or 0),
                "window": list(self.window) if self.window is not None else None,
                "window_records": self.window_records if self.window is not None else None,
            },
            "replay": self.replay,
            "starts_at_record": self.starts_at,
            "truncated_bytes": self.truncated_bytes,
            "leases": self.leases(),
            "ipv6_addresses": [
                {"address": _ip_text(a), "first_s": _s(t)} for a, t in self.ipv6_addresses.items()
            ],
            "dhcp": [n.to_dict() for n in self.dhcp],
            "flows": [f.to_dict() for f in self.flows],
            "flows_not_kept": self.flows_not_kept,
            "dns": [lk.to_dict() for lk in self.lookups],
            "dns_not_kept": self.lookups_not_kept,
            "dns_failed": self.lookups_failed,
            "icmp_errors": [n.to_dict() for n in self.icmp_errors],
            "events": [n.to_dict() for n in self.events],
            "drops": self.drops,
            "counters": self.counters,
            "faults": self.faults,
            "guests": [self.guests[p] for p in sorted(self.guests)],
            "guest_to_guest": [
                {"from_port": a, "to_port": b, "frames": n, "bytes": size}
                for (a, b), (n, size) in sorted(self.between.items(), key=str)
            ],
        }


def _s(t_ns: int) -> float:
    return round(t_ns / _NS, 6)


# --------------------------------------------------------------------------- frame views


def _ip_text(raw: bytes) -> str:
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    return str(ipaddress.IPv6Address(raw))


def _ep(ip: bytes, port: int | None) -> str:
    text = _ip_text(ip)
    if port is None:
        return text
    return f"[{text}]:{port}" if len(ip) == 16 else f"{text}:{port}"


@dataclass(slots=True)
class _Pkt:
    """The parts of one IP packet the summary looks at."""

    src: bytes
    dst: bytes
    proto: int  # 6, 17, 1 or 58
    sport: int = 0
    dport: int = 0
    seq: int = 0
    flags: int = 0
    plen: int = 0  # transport payload length (from the IP header: frames may be digests)
    payload: bytes = b""  # as much of the payload as the frame holds
    icmp_type: int = -1
    icmp_code: int = 0
    inner: bytes = b""  # an ICMP error's quoted packet


def _parse(frame: bytes) -> _Pkt | None:
    """The IP packet in an Ethernet frame, or None (ARP, other, too short)."""
    if len(frame) < 14:
        return None
    etype = (frame[12] << 8) | frame[13]
    if etype == _ETH_IP:
        return _parse_ip(frame, 14)
    if etype == _ETH_IPV6:
        return _parse_ip6(frame, 14)
    return None


def _parse_ip(buf: bytes, off: int) -> _Pkt | None:
    if len(buf) < off + 20 or buf[off] >> 4 != 4:
        return None
    ihl = (buf[off] & 15) * 4
    total = (buf[off + 2] << 8) | buf[off + 3]
    frag = ((buf[off + 6] & 0x1F) << 8) | buf[off + 7]
    proto = buf[off + 9]
    pkt = _Pkt(buf[off + 12 : off + 16], buf[off + 16 : off + 20], proto)
    if frag:  # a later fragment: no transport header here
        pkt.proto = -1
        return pkt
    _transport(pkt, buf, off + ihl, total - ihl)
    return pkt


_IP6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options: (len + 1) * 8 bytes
_IP6_FRAG = 44


def _parse_ip6(buf: bytes, off: int) -> _Pkt | None:
    if len(buf) < off + 40 or buf[off] >> 4 != 6:
        return None
    plen = (buf[off + 4] << 8) | buf[off + 5]
    nh = buf[off + 6]
    pkt = _Pkt(buf[off + 8 : off + 24], buf[off + 24 : off + 40], nh)
    l4, rest = off + 40, plen
    for _ in range(8):  # a bounded walk of the extension headers
        if nh in _IP6_EXT and len(buf) >= l4 + 2:
            n = (buf[l4 + 1] + 1) * 8
        elif nh == _IP6_FRAG and len(buf) >= l4 + 8:
            if ((buf[l4 + 2] << 8) | buf[l4 + 3]) & 0xFFF8:
                pkt.proto = -1  # a later fragment: no transport header here
                return pkt
            n = 8
        else:
            break
        nh = buf[l4]
        l4, rest = l4 + n, rest - n
    pkt.proto = nh
    _transport(pkt, buf, l4, rest)
    return pkt


def _transport(pkt: _Pkt, buf: bytes, l4: int, l4_len: int) -> None:
    proto = pkt.proto
    if proto == 6 and len(buf) >= l4 + 14:
        pkt.sport, pkt.dport, pkt.seq, _ack, doff, pkt.flags = _TCP_HDR.unpack_from(buf, l4)
        hlen = (doff >> 4) * 4
        pkt.plen = max(0, l4_len - hlen)
        pkt.payload = buf[l4 + hlen : l4 + hlen + pkt.plen]
    elif proto == 17 and len(buf) >= l4 + 8:
        pkt.sport, pkt.dport = _PORTS.unpack_from(buf, l4)
        pkt.plen = max(0, l4_len - 8)
        pkt.payload = buf[l4 + 8 : l4 + 8 + pkt.plen]
    elif proto in (1, 58) and len(buf) >= l4 + 8:
        pkt.icmp_type, pkt.icmp_code = buf[l4], buf[l4 + 1]
        pkt.sport = (buf[l4 + 4] << 8) | buf[l4 + 5]  # echo id
        pkt.plen = max(0, l4_len - 8)
        pkt.inner = buf[l4 + 8 : l4 + l4_len]


def _host_port(host: str, port: int) -> str:
    """``HOST:PORT`` with an IPv6 host in brackets (as the effects name hosts)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _field_bytes(value: Any) -> tuple[bytes, int]:
    """A bytes field of an effect: (what is kept, full length); digests keep the head."""
    if is_digest(value):
        return bytes(value[3]), int(value[1])
    return value, len(value)


def _errno_name(n: int) -> str:
    return _errno.errorcode.get(n, f"errno {n}")


# ------------------------------------------------------------------------------ analysis


class _Analyzer:
    """Reads records one at a time and builds a :class:`Summary`."""

    def __init__(self, header: Header) -> None:
        self.s = Summary(header)
        self.config: Config | None = None
        self.stack: Stack | None = None
        self.door: Door | None = None
        self._actual: list[Any] = []
        try:
            self.config = Config.from_dict(header.config)
        except ConfigError as exc:
            self.s.replay = f"not replayed: {exc}"
        if self.config is not None:
            self.stack = Stack(self.config, header.seed)
            self.door = Door(self.stack, self._sink)
        cfg = self.config
        self.dns_ips: set[bytes] = set()
        self.host_ips: set[bytes] = set()  # where the stack's own TFTP server answers
        if cfg is not None:
            self.dns_ips.add(cfg.dns.packed)
            self.host_ips.add(cfg.host.packed)
            if getattr(cfg, "ipv6", False) and hasattr(cfg, "ipv6_dns"):
                self.dns_ips.add(cfg.ipv6_dns.packed)
                self.host_ips.add(cfg.ipv6_host.packed)
        self.tftp: dict[int, Flow] = {}  # by session
        self.tftp_sizes: dict[int, int] = {}
        self.tcp: dict[tuple[bytes, int, bytes, int], Flow] = {}  # live, by guest 4-tuple
        self.udp: dict[tuple[bytes, int, bytes, int], Flow] = {}
        self.echo: dict[tuple[bytes, bytes, int], Flow] = {}
        self.by_id: dict[int, Flow] = {}
        self.relay_flows: dict[int, str] = {}  # DNS relay upstream sockets: flow id -> host
        self.pending_dns: dict[tuple[bytes, int, int], Lookup] = {}
        self.udp_fwd: dict[tuple[int, str, int], Flow] = {}
        # A forwarded datagram's flow, until our frame to the guest shows its addresses.
        self._pending_udp_in: tuple[tuple[bytes, int], Flow] | None = None
        # Inside a run of guest frames: each frame takes the opening effect it caused out of
        # the run's effects (see _take), so two SYNs in one burst do not share a TcpConnect.
        self._in_run = False
        self._mac_port: dict[bytes, int] = {}  # each guest MAC's switch port, last seen

    def _sink(self, seq: int, t_ns: int, event: Any, effects: list[Any]) -> None:
        self._actual = effects

    def segment(self, item: SegmentStart, first: bool) -> None:
        """A segment begins (formats 3+): after a gap, or when the journal no longer holds
        the session's start, the core is restored from the segment's snapshot."""
        snap = item.snapshot
        if item.gap is not None:
            g = item.gap
            self._note(self.s.events, Note(g.t_ns, "gap", f"gap: {g.lost} records lost "
                                           f"({g.reason}); flows open then may have ended "
                                           "unseen", {"lost": g.lost, "reason": g.reason}))
        if snap is None or self.config is None:
            return
        starts_session = first and snap.get("seq") == 0 and snap.get("now_ns") == 0
        if starts_session or not (first or item.gap is not None):
            return  # the fresh core (or the one replayed so far) is already there
        if first:
            self.s.starts_at = int(snap.get("seq", 0))
        if self.door is None and not first:
            return  # diverged earlier: reading the journal's own effects
        try:
            self.door = Door.from_snapshot(self.config, snap, self._sink)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            self.door = None
            self.s.replay = (f"not replayed from segment {item.segment.number}: its snapshot "
                             f"does not fit this build ({type(exc).__name__})")
            return
        self.stack = self.door.stack

    # -- bookkeeping -----------------------------------------------------------------------

    def _new_flow(self, proto: str, direction: str, guest: str, remote: str, t_ns: int) -> Flow:
        f = Flow(len(self.s.flows) + self.s.flows_not_kept + 1, proto, direction, guest, remote,
                 t_ns, last_ns=t_ns)
        if len(self.s.flows) < MAX_FLOWS:
            self.s.flows.append(f)
        else:
            self.s.flows_not_kept += 1
        return f

    def _note(self, bucket: list[Note], note: Note) -> None:
        if len(bucket) < MAX_LOOKUPS:
            bucket.append(note)

    # -- one record ------------------------------------------------------------------------

    def record(
        self, seq: int, t_ns: int, raw_event: list[Any], raw_effects: list[Any]
    ) -> list[Any]:
        """Read one record; returns the effects it was read with (replayed or journaled)."""
        s = self.s
        s.records += 1
        if s.first_ns is None:
            s.first_ns = t_ns
        s.last_ns = t_ns
        effects = raw_effects
        if self.door is not None:
            event = decode_event(raw_event)
            if raw_event[0] == FaultRemove.TAG:
                self._faults_gone(t_ns, raw_event[1])
            self.door.seq = seq
            self.door.step(event, t_ns)
            got = [encode(e) for e in self._actual]
            if [compact(g) for g in got] == [compact(list(e)) for e in raw_effects]:
                effects = got
            else:
                s.replay = f"diverged at record {s.records - 1} (seq {seq})"
                assert self.stack is not None
                s.counters = dict(self.stack.counters)
                self.door = None
        self._event(t_ns, raw_event, effects)
        return effects

    def _guest(self, port: int, t: int, peer: str = "") -> dict[str, Any]:
        g = self.s.guests.get(port)
        if g is None:
            g = self.s.guests[port] = {"port": port, "peer": peer, "macs": [], "frames": 0,
                                       "arrived_s": [], "left_s": []}
        elif peer:
            g["peer"] = peer
        return g

    def _port_frames(self, t: int, port: int, run: Any) -> None:
        """Who sent from which port, and the frames one guest sent another."""
        if not isinstance(run, bytes):
            return  # a digest: the frames are not in the journal
        g = self._guest(port, t)
        for frame in split_run(run):
            g["frames"] += 1
            if len(frame) < 14:
                continue
            dst, src = bytes(frame[:6]), bytes(frame[6:12])
            if not src[0] & 1:
                if src not in self._mac_port and len(g["macs"]) < 16:
                    g["macs"].append(src.hex(":"))
                self._mac_port[src] = port
            if dst[0] & 1 or (self.stack is not None and self.stack.frame_for_us(dst)):
                continue
            to: int | str = self._mac_port.get(dst, "?")
            if to == port:
                continue  # the hub behind that port delivered it
            entry = self.s.between.setdefault((port, to), [0, 0])
            entry[0] += 1
            entry[1] += len(frame)

    def _event(self, t: int, ev: list[Any], effects: list[Any]) -> None:
        tag = ev[0]
        if tag == GuestFrames.TAG and len(ev) == 2:
            self._port_frames(t, 0, ev[1])
        elif tag == PortFrames.TAG and len(ev) == 3:
            self._port_frames(t, ev[1], ev[2])
        elif tag == PortLink.TAG and len(ev) == 4:
            g = self._guest(ev[1], t, ev[3])
            g["arrived_s" if ev[2] else "left_s"].append(_s(t))
            self._note(self.s.events, Note(t, "link", f"guest port {ev[1]} "
                                           f"{'attached' if ev[2] else 'detached'}: {ev[3]}",
                                           {"up": bool(ev[2]), "port": ev[1]}))
            return
        if tag == GuestFrame.TAG:
            self.s.frames_in += 1
            if self.s.first_guest_ns is None:
                self.s.first_guest_ns = t
            self._guest_frame(t, ev[1], effects)
        elif tag not in _KNOWN_EVENTS:
            # Other carriers of guest frames (runs of them): frames_of takes them apart.
            pool = list(effects)
            self._in_run = True
            try:
                for _d, frame in frames_of(ev, []):
                    if isinstance(frame, bytes | memoryview):
                        self.s.frames_in += 1
                        if self.s.first_guest_ns is None:
                            self.s.first_guest_ns = t
                        self._guest_frame(t, bytes(frame), pool)
            finally:
                self._in_run = False
        elif tag == TcpData.TAG or tag == TcpDataSent.TAG:
            f = self.by_id.get(ev[1])
            if f is not None:
                data = ev[-1]  # TcpDataSent: [TAG, flow, sent, data]
                f.bytes_to_guest += len(data)
                f.activity.add(t, len(data))
                f.last_ns = t
        elif tag == TcpConnectFailed.TAG:
            f = self.by_id.get(ev[1])
            if f is not None:
                err = ev[2]
                end = ("refused" if err == _errno.ECONNREFUSED
                       else "timed out" if err == _errno.ETIMEDOUT
                       else "unreachable" if err in (_errno.EHOSTUNREACH, _errno.ENETUNREACH)
                       else "refused")
                f.finish(t, end, _errno_name(err))
                f.mark(t, "fail")
        elif tag == TcpReset.TAG:
            f = self.by_id.get(ev[1])
            if f is not None:
                f.finish(t, "RST", f"by the host, {_errno_name(ev[2])}")
                f.mark(t, "rst")
        elif tag == TcpInbound.TAG:
            self._tcp_inbound(t, ev, effects)
        elif tag == UdpReceived.TAG:
            f = self.by_id.get(ev[1])
            if f is not None:
                f.bytes_to_guest += len(ev[2])
                f.packets_to_guest += 1
                f.activity.add(t, len(ev[2]))
                f.last_ns = t
        elif tag == UdpInbound.TAG:
            self._udp_inbound(t, ev)
        elif tag == IcmpEchoReply.TAG:
            f = self.by_id.get(ev[1])
            if f is not None:
                f.packets_to_guest += 1
                f.bytes_to_guest += len(ev[3])
                f.last_ns = t
        elif tag in (UdpError.TAG, IcmpEchoError.TAG):
            self._host_error(t, ev)
        elif tag == IcmpUnavailable.TAG:
            f = self.by_id.get(ev[1])
            if f is not None:
                f.finish(t, "unavailable", f"no ping or raw socket ({_errno_name(ev[2])})")
        elif tag == TftpOpened.TAG:
            f = self.tftp.get(ev[1])
            if f is not None:
                if ev[2]:
                    f.finish(t, "refused", f"file: {_errno_name(ev[2])}")
                    f.mark(t, "fail")
                else:
                    self.tftp_sizes[ev[1]] = ev[3]
                    f.established_ns = t
                    f.mark(t, "established")
        elif tag == TftpChunk.TAG:
            f = self.tftp.get(ev[1])
            if f is not None:
                f.bytes_to_guest += len(ev[3])
                f.activity.add(t, len(ev[3]))
                f.last_ns = t
                if ev[4]:
                    f.finish(t, "RST", f"read failed: {_errno_name(ev[4])}")
                    f.mark(t, "rst")
        elif tag == GuestLink.TAG:
            self._guest(0, t)["arrived_s" if ev[1] else "left_s"].append(_s(t))
            self._note(self.s.events, Note(t, "link", "guest attached" if ev[1] else
                                           "guest detached", {"up": bool(ev[1])}))
        elif tag == HostFwdChange.TAG:
            rule, port, added = ev[1], ev[2], ev[3]
            text = (f"hostfwd {rule} added, host port {port}" if added
                    else f"hostfwd {rule} removed")
            self._note(self.s.events, Note(t, "hostfwd", text,
                                           {"rule": rule, "port": port, "added": bool(added)}))
        elif tag == DnsUpstreams.TAG:
            self._note(self.s.events, Note(t, "dns-upstreams",
                                           f"DNS upstreams: {ev[1] or '(none)'}",
                                           {"servers": ev[1]}))
        self._effects(t, ev, effects)

    # -- frames from the guest -------------------------------------------------------------

    def _take(self, effects: list[Any], tag: int, host: str | None = None,
              port: int | None = None) -> list[Any] | None:
        """The effect ``tag`` (an opening one: TcpConnect, UdpOpen...) a guest frame caused.

        For a single frame, the first of its kind. Inside a run of frames the effects are
        the whole run's: the first naming the frame's ``port`` (and its ``host`` if any does)
        is taken out of the list, so each frame has the next unclaimed one for its
        destination. (The journal does not say which frame of a run caused what; a
        translated host, the gateway's, is not named in the effect.)
        """
        if not self._in_run:
            first: list[Any] | None = next((e for e in effects if e[0] == tag), None)
            return first
        best = None
        for i, e in enumerate(effects):
            if e[0] != tag:
                continue
            fields = e[2:4]
            if port is not None and port not in fields:
                continue
            if host is not None and host in fields:
                best = i
                break
            if best is None:
                best = i
        if best is None:
            return None
        taken: list[Any] = effects.pop(best)
        return taken

    def _tcp_connect(self, effects: list[Any], p: _Pkt) -> list[Any] | None:
        """The TcpConnect a guest's SYN caused; inside a run, while the replayed core is in
        step, the one for the flow the core made for the frame's addresses (none: refused)."""
        if self._in_run and self.door is not None and self.stack is not None:
            flow = self.stack.tcp.flow_of((p.src, p.sport, p.dst, p.dport))
            for i, e in enumerate(effects):
                if e[0] == TcpConnect.TAG and e[1] == flow:
                    found: list[Any] = effects.pop(i)
                    return found
            return None
        return self._take(effects, TcpConnect.TAG, _ip_text(p.dst), p.dport)

    def _guest_frame(self, t: int, frame: bytes, effects: list[Any]) -> None:
        if self.stack is not None and not self.stack.frame_for_us(frame[:6]):
            return  # another station's (guests on one hub): only counted, drop_not_for_us
        pkt = _parse(frame)
        if pkt is None:
            return
        if (len(pkt.src) == 16 and pkt.src not in self.s.ipv6_addresses
                and len(self.s.ipv6_addresses) < MAX_LOOKUPS):
            a = ipaddress.IPv6Address(pkt.src)
            if not (a.is_unspecified or a.is_link_local or a.is_multicast or a.is_loopback
                    or a.ipv4_mapped is not None):  # martian sources: dropped by the core
                self.s.ipv6_addresses[pkt.src] = t
        if pkt.proto == 6:
            self._guest_tcp(t, pkt, effects)
        elif pkt.proto == 17:
            self._guest_udp(t, pkt, effects)
        elif pkt.proto in (1, 58) and pkt.icmp_type in (8, 128):
            self._guest_echo(t, pkt, effects)

    def _guest_tcp(self, t: int, p: _Pkt, effects: list[Any]) -> None:
        key = (p.src, p.sport, p.dst, p.dport)
        f = self.tcp.get(key)
        flags = p.flags
        if flags & _SYN and not flags & _ACK:
            if f is not None and f.end_ns is None and f.direction == "out":
                f.retransmits += 1
                f.mark(t, "retransmit")
                return
            f = self._new_flow("tcp", "out", _ep(p.src, p.sport), _ep(p.dst, p.dport), t)
            self.tcp[key] = f
            f.mark(t, "syn")
            f._hi_guest = (p.seq + 1) & _M32
            f.packets_to_host += 1
            connect = self._tcp_connect(effects, p)
            if connect is not None:
                f.flow_id = connect[1]
                f.host = _host_port(connect[2], connect[3])
                self.by_id[connect[1]] = f
            return
        if f is None:
            return
        f.packets_to_host += 1
        f.last_ns = t
        end = (p.seq + p.plen + (1 if flags & (_SYN | _FIN) else 0)) & _M32
        if p.plen or flags & _FIN:
            hi = f._hi_guest
            if hi is not None and ((hi - end) & _M32) < 0x80000000:
                f.retransmits += 1
                f.mark(t, "retransmit")
            else:
                f._hi_guest = end
                if p.plen:
                    f.activity.add(t, p.plen)
                    if p.dport == 53 and p.dst in self.dns_ips:
                        self._dns_over_tcp(t, p.src, p.sport, p.payload, query=True)
        if flags & _SYN and flags & _ACK and f.direction == "in" and f.established_ns is None:
            f.established_ns = t
            f.mark(t, "established")
        if flags & _RST:
            if f.direction == "in" and f.established_ns is None:
                f.finish(t, "refused", "by the guest (RST)")
                f.mark(t, "fail")
            else:
                f.finish(t, "RST", "by the guest")
                f.mark(t, "rst")
        elif flags & _FIN and not f._fin_guest:
            f._fin_guest = True
            f.mark(t, "fin")
            if f._fin_host:
                f.finish(t, "FIN")

    def _guest_udp(self, t: int, p: _Pkt, effects: list[Any]) -> None:
        if p.dport == 67 or p.sport == 68:
            self._dhcp(t, p.payload, from_guest=True)
            return
        if p.dport == 69 and p.dst in self.host_ips:
            self._tftp_request(t, p, effects)
            return
        if p.dport == 53 and p.dst in self.dns_ips:
            self._dns_query(t, p.src, p.sport, p.payload)
            for e in effects:
                if e[0] == UdpOpen.TAG:
                    self.relay_flows[e[1]] = _host_port(e[2], e[3])
            return
        key = (p.src, p.sport, p.dst, p.dport)
        f = self.udp.get(key)
        opened = self._take(effects, UdpOpen.TAG, _ip_text(p.dst), p.dport)
        if opened is not None or f is None or f.end_ns is not None:
            if opened is None and f is None:
                # No host socket: broadcast kept inside, restrict=on, a reply on a forward.
                return
            if opened is not None:
                f = self._new_flow("udp", "out", _ep(p.src, p.sport), _ep(p.dst, p.dport), t)
                f.flow_id = opened[1]
                f.host = _host_port(opened[2], opened[3])
                self.by_id[opened[1]] = f
                self.udp[key] = f
        assert f is not None
        f.last_ns = t
        if f.direction == "in":  # a reply on a host forward
            f.packets_to_host += 1
            f.bytes_to_host += p.plen
            f.activity.add(t, p.plen)

    def _tftp_request(self, t: int, p: _Pkt, effects: list[Any]) -> None:
        """A guest's TFTP packet to the stack's server: a read request starts a transfer."""
        op = (p.payload[0] << 8) | p.payload[1] if len(p.payload) >= 2 else 0
        if op not in (1, 2):  # ACKs and errors belong to a transfer already listed
            return
        name = p.payload[2:].split(b"\0", 1)[0].decode("utf-8", "replace")
        key = (p.src, p.sport, p.dst, p.dport)
        old = self.udp.get(key)
        if old is not None and old.proto == "tftp" and old.end_ns is None:
            old.retransmits += 1
            old.mark(t, "retransmit")
            return
        f = self._new_flow("tftp", "out", _ep(p.src, p.sport), _ep(p.dst, p.dport), t)
        f.host = name if op == 1 else f"{name} (write)"
        f.mark(t, "syn")
        self.udp[key] = f
        opened = self._take(effects, TftpOpen.TAG)
        if opened is None:
            f.finish(t, "refused", "write" if op == 2 else "no tftp= root, or a path outside it")
            f.mark(t, "fail")
        else:
            self.tftp[opened[1]] = f

    def _guest_echo(self, t: int, p: _Pkt, effects: list[Any]) -> None:
        key = (p.src, p.dst, p.sport)
        f = self.echo.get(key)
        opened = self._take(effects, IcmpEchoOpen.TAG, _ip_text(p.dst))
        if f is None or f.end_ns is not None or opened is not None:
            f = self._new_flow("icmp", "out", _ip_text(p.src), _ip_text(p.dst), t)
            f.host = opened[2] if opened is not None else "(answered by slirptrio)"
            if opened is not None:
                f.flow_id = opened[1]
                self.by_id[opened[1]] = f
            self.echo[key] = f
        f.packets_to_host += 1
        f.bytes_to_host += p.plen
        f.activity.add(t, p.plen)
        f.last_ns = t

    # -- forwards into the guest -----------------------------------------------------------

    def _tcp_inbound(self, t: int, ev: list[Any], effects: list[Any]) -> None:
        flow_id, guest_ip, guest_port, peer_ip, peer_port = ev[1:6]
        syn = None
        for e in effects:
            if e[0] == SendFrame.TAG:
                frames = [_field_bytes(e[1])[0]]
            elif e[0] == SendFrames.TAG:
                frames = [bytes(f) for _d, f in frames_of([], [e])]
            else:
                continue
            for frame in frames:
                pkt = _parse(frame)
                if pkt is not None and pkt.proto == 6 and pkt.flags & _SYN:
                    syn = pkt
        remote = _ep(syn.src, syn.sport) if syn is not None else _host_port(peer_ip, peer_port)
        f = self._new_flow("tcp", "in", _host_port(guest_ip, guest_port), remote, t)
        f.flow_id = flow_id
        f.host = _host_port(peer_ip, peer_port)
        self.by_id[flow_id] = f
        if syn is None:
            f.finish(t, "refused", "by slirptrio (no such guest address, or table full)")
            f.mark(t, "fail")
            return
        f.mark(t, "syn")
        self.tcp[(syn.dst, syn.dport, syn.src, syn.sport)] = f

    def _udp_inbound(self, t: int, ev: list[Any]) -> None:
        fid, guest_ip, guest_port, peer_ip, peer_port, data = ev[1:7]
        key = (fid, peer_ip, peer_port)
        f = self.udp_fwd.get(key)
        if f is None:
            f = self._new_flow("udp", "in", _host_port(guest_ip, guest_port),
                               _host_port(peer_ip, peer_port), t)
            f.host = f.remote
            self.udp_fwd[key] = f
            try:
                gkey = (ipaddress.ip_address(guest_ip).packed, int(guest_port))
            except ValueError:
                gkey = None
            if gkey is not None:
                # The guest's replies come back from its port to the address it was sent from,
                # which is known once our frame to the guest is seen (see _our_udp).
                self._pending_udp_in = (gkey, f)
        f.packets_to_guest += 1
        f.bytes_to_guest += len(data)
        f.activity.add(t, len(data))
        f.last_ns = t

    # -- effects ---------------------------------------------------------------------------

    def _effects(self, t: int, ev: list[Any], effects: list[Any]) -> None:
        for e in effects:
            tag = e[0]
            if tag == SendFrame.TAG:
                self.s.frames_out += 1
                self._our_frame(t, ev, effects, *_field_bytes(e[1]))
            elif tag not in _KNOWN_EFFECTS:
                for _d, frame in frames_of([], [e]):
                    if isinstance(frame, bytes | memoryview):  # not a digest
                        self.s.frames_out += 1
                        self._our_frame(t, ev, effects, bytes(frame), len(frame))
            elif tag == TcpSend.TAG:
                f = self.by_id.get(e[1])
                if f is not None:
                    f.bytes_to_host += _field_bytes(e[2])[1]
            elif tag == TcpClose.TAG:
                f = self.by_id.get(e[1])
                if f is not None:
                    self._tcp_closed(t, ev, f, bool(e[2]))
            elif tag == UdpSend.TAG:
                f = self.by_id.get(e[1])
                if f is not None:
                    n = _field_bytes(e[2])[1]
                    f.bytes_to_host += n
                    f.packets_to_host += 1
                    f.activity.add(t, n)
            elif tag == UdpFwdSend.TAG:
                for (fid, pip, pport), f in self.udp_fwd.items():
                    if fid == e[1] and pip == e[2] and pport == e[3]:
                        n = _field_bytes(e[4])[1]
                        f.bytes_to_host += n
                        f.packets_to_host += 1
                        f.activity.add(t, n)
                        break
            elif tag == UdpClose.TAG:
                f = self.by_id.get(e[1])
                if f is not None:
                    f.finish(t, "closed", "idle" if ev[0] == Tick.TAG else "")
                self.relay_flows.pop(e[1], None)
            elif tag == IcmpEchoSend.TAG:
                pass  # counted from the guest's request
            elif tag == TftpClose.TAG:
                f = self.tftp.pop(e[1], None)
                if f is not None:
                    size = self.tftp_sizes.pop(e[1], None)
                    if size is not None and f.bytes_to_guest >= size:
                        f.finish(t, "done", f"{size} bytes")
                    elif ev[0] == Tick.TAG:
                        f.finish(t, "timed out", "the guest stopped acknowledging")
                        f.mark(t, "fail")
                    else:
                        f.finish(t, "closed")
            elif tag == IcmpEchoClose.TAG:
                f = self.by_id.get(e[1])
                if f is not None:
                    f.finish(t, "closed", "idle" if ev[0] == Tick.TAG else "")

    def _tcp_closed(self, t: int, ev: list[Any], f: Flow, abort: bool) -> None:
        if f.end_ns is not None:
            return
        if not abort:
            f.finish(t, "FIN")
        elif ev[0] == Tick.TAG:
            f.finish(t, "timed out", "slirptrio gave up (no answer from the guest)")
            f.mark(t, "fail")
        else:
            f.finish(t, "RST", "aborted")
            f.mark(t, "rst")

    def _our_frame(
        self, t: int, ev: list[Any], effects: list[Any], frame: bytes, length: int
    ) -> None:
        pkt = _parse(frame)
        if pkt is None:
            return
        if pkt.proto == 6:
            self._our_tcp(t, ev, effects, pkt)
        elif pkt.proto == 17:
            if pkt.sport == 67:
                self._dhcp(t, pkt.payload, from_guest=False)
            elif pkt.sport == 53 and pkt.src in self.dns_ips:
                self._dns_answer(t, pkt.dst, pkt.dport, pkt.payload)
            else:
                pending = self._pending_udp_in
                if pending is not None and pending[0] == (pkt.dst, pkt.dport):
                    self.udp[(pkt.dst, pkt.dport, pkt.src, pkt.sport)] = pending[1]
                    self._pending_udp_in = None
        elif pkt.proto in (1, 58):
            if pkt.icmp_type in (0, 129):
                f = self.echo.get((pkt.dst, pkt.src, pkt.sport))
                if f is not None and f.flow_id is None:  # answered by the stack itself
                    f.packets_to_guest += 1
                    f.bytes_to_guest += pkt.plen
                    f.last_ns = t
            elif (pkt.proto == 1 and pkt.icmp_type in _ICMP_ERROR_TYPES) or (
                pkt.proto == 58 and pkt.icmp_type in _ICMP6_ERROR_TYPES
            ):
                self._icmp_error_to_guest(t, pkt)

    def _our_tcp(self, t: int, ev: list[Any], effects: list[Any], p: _Pkt) -> None:
        key = (p.dst, p.dport, p.src, p.sport)
        f = self.tcp.get(key)
        if f is None:
            return
        f.packets_to_guest += 1
        f.last_ns = t
        flags = p.flags
        if flags & _SYN:
            if flags & _ACK:
                if f.established_ns is None:
                    f.established_ns = t
                    f.mark(t, "established")
                else:
                    f.retransmits += 1
                    f.mark(t, "retransmit")
            elif f._hi_ours is not None:
                f.retransmits += 1
                f.mark(t, "retransmit")
            f._hi_ours = (p.seq + 1) & _M32
        elif p.plen or flags & _FIN:
            end = (p.seq + p.plen + (1 if flags & _FIN else 0)) & _M32
            hi = f._hi_ours
            if hi is not None and ((hi - end) & _M32) < 0x80000000:
                f.retransmits += 1
                f.mark(t, "retransmit")
            else:
                f._hi_ours = end
                if p.plen:
                    f.activity.add(t, p.plen)
                    if p.sport == 53 and p.src in self.dns_ips:
                        self._dns_over_tcp(t, p.dst, p.dport, p.payload, query=False)
        if flags & _RST:
            if f.end_ns is None:
                tag = ev[0]
                if (tag == GuestFrame.TAG or tag == GuestFrames.TAG) and (
                    f.flow_id is None and f.direction == "out"
                ):
                    f.finish(t, "refused", "by slirptrio (restrict=on, no route, or table full)")
                    f.mark(t, "fail")
                elif tag == Tick.TAG:
                    f.finish(t, "timed out", "slirptrio gave up (no answer)")
                    f.mark(t, "fail")
                elif tag == TcpReset.TAG:
                    f.finish(t, "RST", "by host")
                    f.mark(t, "rst")
                else:
                    f.finish(t, "RST", "by slirptrio")
                    f.mark(t, "rst")
        elif flags & _FIN and not f._fin_host:
            f._fin_host = True
            f.mark(t, "fin")
            if f._fin_guest:
                f.finish(t, "FIN")

    # -- DNS, DHCP, ICMP errors ------------------------------------------------------------

    def _dns_query(self, t: int, src: bytes, sport: int, payload: bytes) -> None:
        try:
            msg = dpkt.dns.DNS(payload)
        except (dpkt.UnpackError, ValueError, IndexError, struct.error):
            return
        if msg.qr:
            return
        key = (src, sport, msg.id)
        old = self.pending_dns.get(key)
        if old is not None and old.answered_ns is None:
            old.retries += 1
            return
        q = msg.qd[0] if msg.qd else None
        lookup = Lookup(
            t, (q.name if q is not None else "") or ".",
            _DNS_TYPES.get(q.type, str(q.type)) if q is not None else "?",
            _ep(src, sport),
        )
        self.pending_dns[key] = lookup
        if len(self.s.lookups) < MAX_LOOKUPS:
            self.s.lookups.append(lookup)
        else:
            self.s.lookups_not_kept += 1
        if len(self.pending_dns) > MAX_LOOKUPS:
            self.pending_dns.pop(next(iter(self.pending_dns)))

    def _dns_answer(self, t: int, dst: bytes, dport: int, payload: bytes) -> None:
        if len(payload) < 12:
            return
        ident = (payload[0] << 8) | payload[1]
        lookup = self.pending_dns.pop((dst, dport, ident), None)
        if lookup is None:
            return
        lookup.answered_ns = t
        lookup.rcode = _DNS_RCODES.get(payload[3] & 15, str(payload[3] & 15))
        try:
            msg = dpkt.dns.DNS(payload)
        except (dpkt.UnpackError, ValueError, IndexError, struct.error):
            return
        for rr in msg.an:
            if (rr.type, len(rr.rdata)) in ((1, 4), (28, 16)):
                lookup.answers.append(_ip_text(rr.rdata))
            elif rr.type == 5:
                lookup.answers.append(f"CNAME {getattr(rr, 'cname', '?')}")
            else:
                lookup.answers.append(_DNS_TYPES.get(rr.type, f"type {rr.type}"))

    def _dns_over_tcp(
        self, t: int, ip: bytes, port: int, payload: bytes, *, query: bool
    ) -> None:
        """A DNS message over TCP (RFC 1035 4.2.2: a 2-byte length first), when a segment
        starts with one; an answer split across segments still gives its id and rcode."""
        if len(payload) < 14:
            return
        n = (payload[0] << 8) | payload[1]
        msg = payload[2 : 2 + n]
        if query:
            if len(msg) == n:
                self._dns_query(t, ip, port, msg)
        else:
            self._dns_answer(t, ip, port, msg)

    def _dhcp(self, t: int, payload: bytes, *, from_guest: bool) -> None:
        try:
            msg = dpkt.dhcp.DHCP(payload)
            opts = dict(msg.opts)
        except (dpkt.UnpackError, ValueError, IndexError, struct.error):
            return
        kind = _DHCP_TYPES.get(opts.get(53, b"\x00")[0], "?")
        mac = bytes(msg.chaddr[:6]).hex(":")
        data: dict[str, Any] = {"type": kind, "mac": mac, "from_guest": from_guest}
        text = f"{kind} {'from' if from_guest else 'to'} {mac}"
        if not from_guest and kind in ("OFFER", "ACK"):
            ip = _ip_text(struct.pack("!I", msg.yiaddr))
            data["ip"] = ip
            text += f": {ip}"
            lease = opts.get(51)
            if lease is not None and len(lease) == 4:
                data["lease_s"] = int.from_bytes(lease, "big")
                text += f" for {data['lease_s']} s"
            if 12 in opts:
                data["hostname"] = opts[12].decode(errors="replace")
        if from_guest:
            data["ciaddr"] = _ip_text(struct.pack("!I", msg.ciaddr))
            req = opts.get(50)
            if req is not None and len(req) == 4:
                data["requested"] = _ip_text(req)
                text += f" (asks for {data['requested']})"
            if kind == "RELEASE":
                text += f": {data['ciaddr']}"
        self._note(self.s.dhcp, Note(t, "dhcp", text, data))

    def _icmp_error_to_guest(self, t: int, p: _Pkt) -> None:
        v6 = p.proto == 58
        name = (_ICMP6_ERROR_TYPES if v6 else _ICMP_ERROR_TYPES)[p.icmp_type]
        if not v6 and p.icmp_type == 3:
            name += f" ({_UNREACH_CODES.get(p.icmp_code, p.icmp_code)})"
        else:
            name += f" (code {p.icmp_code})"
        inner = _parse_ip(p.inner, 0) if not v6 else _parse_ip6(p.inner, 0)
        about = ""
        if inner is not None:
            proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(inner.proto, str(inner.proto))
            if inner.proto in (6, 17):
                about = f"{proto} {_ep(inner.src, inner.sport)} > {_ep(inner.dst, inner.dport)}"
                table = self.tcp if inner.proto == 6 else self.udp
                f = table.get((inner.src, inner.sport, inner.dst, inner.dport))
            else:
                about = f"{proto} {_ip_text(inner.src)} > {_ip_text(inner.dst)}"
                f = self.echo.get((inner.src, inner.dst, inner.sport))
            if f is not None:
                f.icmp_errors.append(name)
                f.mark(t, "icmp")
        text = f"{name} from {_ip_text(p.src)}" + (f" about {about}" if about else "")
        self._note(self.s.icmp_errors, Note(t, "icmp", text, {
            "type": p.icmp_type, "code": p.icmp_code, "from": _ip_text(p.src), "about": about,
        }))

    def _host_error(self, t: int, ev: list[Any]) -> None:
        flow = ev[1]
        if flow in self.relay_flows:
            self._note(self.s.events, Note(t, "dns-upstream-error",
                                           f"DNS upstream {self.relay_flows[flow]}: "
                                           f"{_errno_name(ev[2])}", {"errno": ev[2]}))

    def _faults_gone(self, t_ns: int, rule: int) -> None:
        """Keep what the fault rules taken out of force now did (issue 23)."""
        assert self.stack is not None
        for r in self.stack.fault_rules(t_ns):
            if rule in (-1, r.id):
                self.s.faults.append({**r.to_dict(), "removed_s": _s(t_ns)})

    def finish(self) -> Summary:
        if self.stack is not None and self.door is not None:
            self.s.counters = dict(self.stack.counters)
            end = self.s.last_ns or 0
            self.s.faults += [{**r.to_dict(), "removed_s": None}
                              for r in self.stack.fault_rules(end)]
        for f in self.s.flows:
            if f.proto != "icmp":
                continue
            f.end_detail = f"{f.packets_to_guest}/{f.packets_to_host} replies" + (
                f", {f.end_detail}" if f.end_detail else ""
            )
            if f.packets_to_guest == 0 and f.packets_to_host:
                f.end = "no reply"
            elif f.flow_id is None or (f.end == "open" and f.packets_to_guest):
                f.end = "answered"  # an echo flow lingers after its replies: it did its job
            if f.flow_id is None and f.end_ns is None:
                f.end_ns = f.last_ns  # nothing to close: the stack answered by itself
        return self.s

    def cut(self, first_ns: int, last_ns: int) -> None:
        """Keep what the window ``first_ns``..``last_ns`` saw: flows alive in it, lookups and
        notes dated in it (flow numbers stay the session's)."""
        s = self.s
        s.window = (first_ns, last_ns)
        s.first_ns, s.last_ns = first_ns, last_ns

        def alive(f: Flow) -> bool:
            end = f.end_ns if f.end_ns is not None else (last_ns if f.end == "open"
                                                         else f.last_ns)
            return f.start_ns <= last_ns and end >= first_ns

        s.flows = [f for f in s.flows if alive(f)]
        s.lookups = [lk for lk in s.lookups if first_ns <= lk.t_ns <= last_ns]
        for bucket in (s.dhcp, s.icmp_errors, s.events):
            bucket[:] = [n for n in bucket if first_ns <= n.t_ns <= last_ns]


class Point(Protocol):
    """A window's end (``replay.engine.Target``): before which record it lies."""

    def before(self, rec: Any) -> bool: ...


def summarize(
    header: Header,
    entries: Iterable[Any],
    *,
    progress: Callable[[int], None] | None = None,
    start: Point | None = None,
    until: Point | None = None,
    pcap: PcapWriter | None = None,
) -> Summary:
    """Summarize a session from its journal header and entries: records (``seq``, ``t_ns``,
    ``event``, ``effects``) and, in formats 3 and later, segment starts, as
    :meth:`slirptrio.journal.Journal.entries` gives them. ``progress(records)`` is called
    every 1024 records.

    ``start``/``until`` (``--from``/``--until``) limit the summary to a window: every record
    before it is still read (a flow open in the window began earlier), none after it;
    ``pcap`` gets the window's frames."""
    a = _Analyzer(header)
    first = True
    window: list[int] = []
    with constants.applied(header.constants or {}):
        for item in entries:
            if isinstance(item, SegmentStart):
                a.segment(item, first)
                first = False
                continue
            first = False
            if until is not None and not until.before(item):
                break
            effects = a.record(item.seq, item.t_ns, item.event, item.effects)
            if start is None or not start.before(item):
                a.s.window_records += 1
                if not window:
                    window = [item.t_ns, item.t_ns]
                window[1] = item.t_ns
                if pcap is not None:
                    for _d, frame in frames_of(item.event, effects):
                        if isinstance(frame, bytes | memoryview):
                            pcap.write(header.origin_ns + item.t_ns, bytes(frame))
            if progress is not None and not a.s.records & 1023:
                progress(a.s.records)
    summary = a.finish()
    if start is not None or until is not None:
        if not window:  # nothing happened in it: the window as asked, where it says a time
            lo = getattr(start, "t_ns", None)
            hi = getattr(until, "t_ns", None)
            lo = lo if isinstance(lo, int) else summary.last_ns or 0
            window = [lo, max(lo, hi if isinstance(hi, int) else lo)]
            summary.window_records = 0
        a.cut(window[0], window[1])
    if pcap is not None:
        pcap.flush()
    return summary


def summarize_journal(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    progress: Progress | None = None,
    start: Point | None = None,
    until: Point | None = None,
    pcap: PcapWriter | None = None,
) -> Summary:
    """Summarize the journal at ``source`` (a journal directory, an older single journal
    file, or an open binary file of one); ``start``, ``until`` and ``pcap`` as for
    :func:`summarize`. The session record beside a journal directory (written when the
    session closed) gives the session's end."""
    journal = open_journal(source)
    if progress is not None:
        progress.total = journal.total_bytes or None

    def moved(_records: int) -> None:
        if progress is not None:
            progress.update(journal.bytes_read, f"{_records} records")

    summary = summarize(journal.header, journal.entries(), progress=moved, start=start,
                        until=until, pcap=pcap)
    if isinstance(source, str | os.PathLike):
        summary.end_ns = _closed_at(os.fspath(source), journal.header.origin_ns)
    summary.gaps = len(journal.gaps)
    if journal.truncated:
        summary.truncated_bytes = journal.truncated[0]
    return summary


summarize_file = summarize_journal


def _closed_at(path: str, origin_ns: int) -> int | None:
    """The session time at which the session closed, from the session record beside the
    journal (None: no record, or one of another journal)."""
    record_path = os.path.splitext(path.rstrip(os.sep))[0] + SESSION_RECORD
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
        end = record.get("end_wall_ns")
        mine = record.get("journal") == os.path.basename(path.rstrip(os.sep))
    except (OSError, ValueError, AttributeError):
        return None
    return end - origin_ns if mine and isinstance(end, int) and end >= origin_ns else None


# ------------------------------------------------------------------------------ the text


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB"):
        n_f = n / 1000
        if n_f < 1000 or unit == "GB":
            return f"{n_f:.1f} {unit}"
        n = int(n_f)
    return f"{n} B"


def _dur(t_ns: int) -> str:
    if t_ns < 1_000_000:
        return f"{t_ns / 1000:.0f} µs"
    if t_ns < _NS:
        return f"{t_ns / 1e6:.1f} ms"
    return f"{t_ns / 1e9:.3f} s"


def _ts(t_ns: int) -> str:
    return f"{t_ns / 1e9:9.3f}s"


def _wall(ns: int) -> str:
    import datetime

    when = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_summary(s: Summary, name: str = "") -> str:
    """The human-readable summary."""
    h = s.header
    cfg = h.config
    first, last = s.first_ns or 0, s.last_ns or 0
    if s.window is None and s.end_ns is not None and s.end_ns > last:
        last = s.end_ns
        until = f"; the last record at {_ts(s.last_ns or 0).strip()}"
    else:
        until = ""
    lines = [
        f"Session {name}".rstrip(),
        f"  slirptrio {h.version or '?'}, journal format {h.format}, seed {h.seed}, "
        f"net {cfg.get('net', '?')}" + (f", {cfg['hostfwd']}" if cfg.get("hostfwd") else ""),
        f"  {_wall(h.origin_ns + first)} to {_wall(h.origin_ns + last)} "
        f"({_dur(s.span_ns)}{until}); {s.records} records, {s.frames_in} frames from the "
        f"guest, {s.frames_out} to it",
        *([f"  window {_ts(first).strip()} to {_ts(last).strip()} (--from/--until), "
           f"{s.window_records} records: the flows alive in it, the lookups and events dated "
           "in it"] if s.window is not None else []),
        *([f"  the journal starts at record {s.starts_at}: earlier segments are gone (a "
           "bounded journal); flows open then are not listed"] if s.starts_at else []),
        f"  replay: {s.replay}"
        + (f" (a truncated last record of {s.truncated_bytes} bytes ignored)"
           if s.truncated_bytes else ""),
    ]
    leases = s.leases()
    lines.append(f"\nLeases ({len(leases)}):")
    for lease in leases:
        extra = f", released at {lease['released_s']:.3f}s" if lease["released_s"] else ""
        lines.append(
            f"  {lease['ip']:<15} {lease['mac']}  at {lease['first_s']:.3f}s"
            f" ({lease['acks']} ACK{'s' if lease['acks'] != 1 else ''}, lease "
            f"{lease['lease_s']} s{extra})"
        )
    if len(s.guests) > 1:  # several guests on the switch (issue 22)
        lines.append(f"\nGuests ({len(s.guests)} switch ports):")
        for g in (s.guests[p] for p in sorted(s.guests)):
            comings = ", ".join(f"{x:.3f}s" for x in g["arrived_s"]) or "-"
            goings = ", ".join(f"{x:.3f}s" for x in g["left_s"]) or "-"
            lines.append(f"  port {g['port']:<3} {g['peer'] or '-':<20} "
                         f"{','.join(g['macs']) or '-':<18} {g['frames']:>8} frames; "
                         f"attached {comings}; left {goings}")
        if s.between:
            lines.append("  guest to guest (frames the switch carried between ports):")
            lines += [f"    port {a} -> port {b}: {n} frames, {_size(size)}"
                      for (a, b), (n, size) in sorted(s.between.items(), key=str)]
    if s.ipv6_addresses:
        lines.append(f"\nGuest IPv6 addresses ({len(s.ipv6_addresses)}):")
        aw = max(len(_ip_text(a)) for a in s.ipv6_addresses)
        lines += [f"  {_ip_text(a):<{aw}} first used at {t / 1e9:.3f}s"
                  for a, t in s.ipv6_addresses.items()]
    failed = [f for f in s.flows if f.failed]
    lines.append(
        f"\nFlows ({len(s.flows) + s.flows_not_kept}"
        + (f", {len(failed)} failed" if failed else "") + "):"
    )
    # Columns as wide as their longest entry (IPv6 endpoints), 22 at least.
    gw = max([22, *(len(f.guest) for f in s.flows)])
    rw = max([22, *(len(f.remote) for f in s.flows)])
    hw = max([22, *(len(f.host) for f in s.flows)])
    if s.flows:
        lines.append(
            f"  {'#':>4} {'proto':<5} {'guest':<{gw}}   {'remote':<{rw}} {'host':<{hw}} "
            f"{'start':>10} {'duration':>9} {'to host':>9} {'to guest':>9}  end"
        )
    for f in s.flows:
        arrow = "->" if f.direction == "out" else "<-"
        end = f.end + (f" ({f.end_detail})" if f.end_detail else "")
        if f.retransmits:
            end += f", {f.retransmits} retransmission{'s' if f.retransmits != 1 else ''}"
        if f.icmp_errors:
            end += ", ICMP " + "; ".join(sorted(set(f.icmp_errors)))
        lines.append(
            f"  {f.index:>4} {f.proto:<5} {f.guest:<{gw}} {arrow} {f.remote:<{rw}} {f.host:<{hw}} "
            f"{_ts(f.start_ns):>10} {_dur(f.duration_ns):>9} {_size(f.bytes_to_host):>9} "
            f"{_size(f.bytes_to_guest):>9}  {end}"
        )
    if s.flows_not_kept:
        lines.append(f"  ... and {s.flows_not_kept} more flows not kept")
    failed_lookups = s.lookups_failed
    lines.append(f"\nDNS ({len(s.lookups) + s.lookups_not_kept} lookups"
                 + (f", {failed_lookups} failed" if failed_lookups else "") + "):")
    for lk in s.lookups:
        if lk.answered_ns is None:
            what = "no answer"
        else:
            what = lk.rcode
            if lk.answers:
                what = ", ".join(lk.answers)
            what += f" ({_dur(lk.answered_ns - lk.t_ns)})"
        retries = f", {lk.retries} retries" if lk.retries else ""
        lines.append(f"  {_ts(lk.t_ns)}  {lk.name} {lk.qtype} -> {what}{retries}")
    lines.append(f"\nICMP errors to the guest ({len(s.icmp_errors)}):")
    lines += [f"  {_ts(n.t_ns)}  {n.text}" for n in s.icmp_errors]
    drops = s.drops
    if s.counters is None:
        lines.append("\nDrops by reason: unknown (not replayed)")
    else:
        lines.append(f"\nDrops by reason ({sum(drops.values())}):")
        lines += [f"  {k:<28} {v}" for k, v in drops.items()]
    if s.faults:
        lines.append(f"\nFault rules ({len(s.faults)}):")
        for r in s.faults:
            until = f" to {r['removed_s']:.3f}s" if r["removed_s"] is not None else ""
            did = ", ".join(f"{k} {v}" for k, v in sorted(r["stats"].items())) or "nothing"
            lines.append(f"  {r['id']:>3}  {r['rule']}  (from {r['added_s']:.3f}s{until}): {did}")
    if s.events:
        lines.append("\nEvents:")
        lines += [f"  {_ts(n.t_ns)}  {n.text}" for n in s.events]
    return "\n".join(lines)


def main(
    path: str,
    *,
    text: bool = True,
    as_json: bool = False,
    timeline: str | None = None,
    progress: bool | None = None,
    start: Point | None = None,
    until: Point | None = None,
    pcap: str | None = None,
) -> int:
    """CLI entry for ``slirptrio replay --summary/--json/--timeline``: prints the summary
    (``text``), its JSON (``as_json``), writes the timeline to ``timeline`` (SVG, or PNG when
    the name ends in .png); a progress line on stderr when it is a terminal (or ``progress``
    says so). ``start``/``until`` limit all of it to a window, whose frames go to ``pcap``.
    Files written are 0600. Returns 0 when the replay was identical, 1 when it diverged (the
    summary is still printed), 2 when the journal or an output cannot be used."""
    try:
        pcap_file = _private_output(pcap, binary=True) if pcap is not None else None
    except OSError as exc:
        print(f"slirptrio: error: --pcap {pcap}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        with Progress("summarizing", enabled=progress) as line:
            summary = summarize_journal(
                path, progress=line, start=start, until=until,
                pcap=PcapWriter(pcap_file) if pcap_file is not None else None)
    except (OSError, JournalError) as exc:
        text_ = str(exc)
        where = "" if text_.startswith(path) else f"{path}: "
        print(f"slirptrio: error: journal {where}{text_}", file=sys.stderr)
        return 2
    finally:
        if pcap_file is not None:
            pcap_file.close()
    if timeline is not None:
        from replay.timeline import render_png, render_svg

        try:
            if timeline.lower().endswith(".png"):
                data = render_png(summary, title=path)
            else:
                data = render_svg(summary, title=path).encode()
            with _private_output(timeline, binary=True) as out:
                out.write(data)
        except OSError as exc:
            print(f"slirptrio: error: --timeline {timeline}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    elif text:
        print(format_summary(summary, path))
    if timeline is not None:
        failed = sum(1 for fl in summary.flows if fl.failed)
        print(f"timeline: {timeline} ({len(summary.flows)} flows, {failed} failed)",
              file=sys.stderr if as_json or text else sys.stdout)
    if summary.replay != "identical":
        print(f"slirptrio replay: replay {summary.replay}; run slirptrio replay {path} "
              "for the report", file=sys.stderr)
    return 0 if summary.replay == "identical" else 1


def _private_output(path: str, *, binary: bool) -> IO[Any]:
    """``path`` created or emptied for writing, mode 0600 (a session's files are private)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb" if binary else "w")


def flows_by_state(summary: Summary) -> Iterator[tuple[str, int]]:
    """How many flows ended each way (for tests and a one-line overview)."""
    counts: dict[str, int] = {}
    for f in summary.flows:
        counts[f.end] = counts.get(f.end, 0) + 1
    yield from sorted(counts.items())


__all__ = [
    "Flow", "Lookup", "Note", "Summary", "format_summary", "main", "summarize",
    "summarize_file", "summarize_journal",
]

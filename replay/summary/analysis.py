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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any, Protocol

import dpkt

from replay.progress import Progress
from replay.summary.model import (
    MAX_FLOWS,
    MAX_LOOKUPS,
    Flow,
    Lookup,
    Note,
    Summary,
    _ip_text,
    _s,
)
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
    SegmentStart,
    compact,
    frames_of,
    is_digest,
    open_journal,
)
from slirptrio.syntax.address import hostport
from slirptrio.wire.dhcp import MESSAGE_NAMES
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
_DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED"}
_DNS_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
              33: "SRV", 65: "HTTPS"}


# --------------------------------------------------------------------------- frame views
# The summary's own decoder, not describe's (dpkt) nor the wire codecs. The wire codecs
# validate (lengths, checksums) and so reject the head a journal digest keeps of a large
# frame and a frame with a bad checksum, both of which the summary counts. dpkt reads a head
# but gives the payload it holds, not the IP header's length, and differs on malformed
# headers; it is also about 5x slower per frame, on every frame of a journal.


def _ep(ip: bytes, port: int | None) -> str:
    text = _ip_text(ip)
    return text if port is None else hostport(text, port)


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
                f.host = hostport(connect[2], connect[3])
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
                    self.relay_flows[e[1]] = hostport(e[2], e[3])
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
                f.host = hostport(opened[2], opened[3])
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
        remote = _ep(syn.src, syn.sport) if syn is not None else hostport(peer_ip, peer_port)
        f = self._new_flow("tcp", "in", hostport(guest_ip, guest_port), remote, t)
        f.flow_id = flow_id
        f.host = hostport(peer_ip, peer_port)
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
            f = self._new_flow("udp", "in", hostport(guest_ip, guest_port),
                               hostport(peer_ip, peer_port), t)
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
        kind = MESSAGE_NAMES.get(opts.get(53, b"\x00")[0], "?")
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

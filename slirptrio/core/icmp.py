"""ICMP beyond the virtual addresses: echo forwarding, and the ICMP errors sent to the guest.

Theory of operation
-------------------
Echo to the stack's own addresses is answered by the Stack itself. An echo request to any other
address comes here. One flow exists per (guest address, guest echo id, destination); its first
request opens a host ICMP socket (:class:`IcmpEchoOpen`: an unprivileged ping socket, or a raw
socket when running as root — the shell decides) and each request is sent as
:class:`IcmpEchoSend` with the flow's own host id (unique among flows; a raw socket uses it to
tell replies apart, a ping socket's kernel substitutes its own). Replies come back as
:class:`IcmpEchoReply` (flow, sequence, data) and reach the guest from the destination it
pinged, with its own id. A flow idle for ``idle_timeout_ns`` is closed; at most ``max_flows``
exist, the least recently used giving way.

When the shell can open neither socket kind it reports :class:`IcmpUnavailable`: the core logs
that once, and from then on drops echo requests to non-virtual addresses (counted) without
asking again.

Errors. The shell reads host ICMP errors with IP_RECVERR and reports the kernel's
``sock_extended_err`` fields (:class:`IcmpEchoError`, and :class:`UdpError` for UDP flows).
:func:`host_error` maps them to the ICMPv4 error the guest should see — destination
unreachable with the same code, time exceeded, "fragmentation needed" with the MTU (ICMPv6
errors translated; a failed send mapped from its errno as libslirp does) — or to nothing when
the error is about the host's own packet only. :func:`error_message` then builds it, quoting
the guest's datagram as :func:`quote` rebuilds it from the saved header fields and first bytes.

IPv6 flows (addresses of 16 bytes) get ICMPv6 instead, from the same kernel fields:
:func:`host_error6` maps them (unreachable with its code, packet too big with the path MTU,
time exceeded; a failed send by its errno), :func:`quote6` rebuilds the guest's packet (fixed
header only), and :func:`error_for_guest` picks the family for the callers. Echo flows to
IPv6 destinations answer with ICMPv6 echo replies.
"""

from __future__ import annotations

import collections
import errno as _errno
import ipaddress
import logging
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from slirptrio.core import snapshot as snap
from slirptrio.core.events import (
    Effect,
    IcmpEchoClose,
    IcmpEchoError,
    IcmpEchoOpen,
    IcmpEchoReply,
    IcmpEchoSend,
    IcmpUnavailable,
)
from slirptrio.core.info import FlowInfo
from slirptrio.core.martian import BROADCAST, MULTICAST, classify_ipv4
from slirptrio.core.prng import Prng
from slirptrio.wire import icmp as wicmp
from slirptrio.wire import icmpv6 as wicmp6
from slirptrio.wire.checksum import internet_checksum

log = logging.getLogger("slirptrio.core.icmp")

IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58

ECHO_REPLY = 0
DEST_UNREACH = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11

UNREACH_NET = 0
UNREACH_HOST = 1
UNREACH_PORT = 3
UNREACH_NEEDFRAG = 4
UNREACH_ADMIN = 13

SO_EE_ORIGIN_NONE = 0
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3

ECHO_IDLE_TIMEOUT_NS = 60_000_000_000
MAX_ECHO_FLOWS = 256
QUOTE_L4_BYTES = 128
"""How much of a guest datagram's transport part is kept for quoting in an ICMP error."""

_IPV4_HEADER = struct.Struct(">BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct(">IHBB16s16s")
_IPV6_MIN_MTU = 1280
_ID_SEQ = struct.Struct(">HH")
_UNUSED_MTU = struct.Struct(">HH")
_MIN_MTU = 68

SendIp = Callable[[bytes, bytes, int, bytes], None]
Translate = Callable[[bytes, int], tuple[str, int] | None]


class HostError(Protocol):
    """The kernel's report of a host socket error (:class:`UdpError`, :class:`IcmpEchoError`)."""

    @property
    def errno(self) -> int: ...
    @property
    def origin(self) -> int: ...
    @property
    def icmp_type(self) -> int: ...
    @property
    def icmp_code(self) -> int: ...
    @property
    def info(self) -> int: ...
    @property
    def offender(self) -> str: ...


class QuotedHeader(Protocol):
    """The fields of the guest's IPv4 header that an ICMP error quotes."""

    @property
    def tos(self) -> int: ...
    @property
    def ident(self) -> int: ...
    @property
    def df(self) -> bool: ...
    @property
    def ttl(self) -> int: ...
    @property
    def proto(self) -> int: ...
    @property
    def src(self) -> bytes: ...
    @property
    def dst(self) -> bytes: ...


# --------------------------------------------------------------------------- error helpers


def quote(hdr: QuotedHeader, l4_len: int, l4_head: bytes | memoryview) -> bytes:
    """The guest's datagram as an ICMP error quotes it: its IPv4 header (options dropped,
    unfragmented, total length of the whole datagram) and the first bytes of its payload."""
    header = bytearray(
        _IPV4_HEADER.pack(
            0x45,
            hdr.tos,
            min(20 + l4_len, 0xFFFF),
            hdr.ident,
            0x4000 if hdr.df else 0,
            hdr.ttl,
            hdr.proto,
            0,
            hdr.src,
            hdr.dst,
        )
    )
    struct.pack_into(">H", header, 10, internet_checksum(header))
    return bytes(header) + bytes(l4_head[:QUOTE_L4_BYTES])


def error_message(icmp_type: int, code: int, quoted: bytes, info: int = 0) -> bytes:
    """An ICMP error message quoting ``quoted``; ``info`` is the next-hop MTU for
    "fragmentation needed", ignored otherwise."""
    mtu = min(info, 0xFFFF) if icmp_type == DEST_UNREACH and code == UNREACH_NEEDFRAG else 0
    return wicmp.build_icmp(icmp_type, code, _UNUSED_MTU.pack(0, mtu), quoted)


_ERRNO_UNREACH = {
    _errno.ECONNREFUSED: UNREACH_PORT,
    _errno.EHOSTUNREACH: UNREACH_HOST,
    _errno.ENETUNREACH: UNREACH_NET,
    _errno.EACCES: UNREACH_ADMIN,
    _errno.EPERM: UNREACH_ADMIN,
}
_ICMP6_UNREACH = {0: UNREACH_NET, 1: UNREACH_ADMIN, 2: UNREACH_HOST, 3: UNREACH_HOST}


def host_error(
    errno: int, origin: int, icmp_type: int, icmp_code: int, info: int
) -> tuple[int, int, int] | None:
    """The ICMPv4 (type, code, info) to give the guest for a host socket error, or None."""
    if origin == SO_EE_ORIGIN_ICMP:
        if icmp_type == DEST_UNREACH and 0 <= icmp_code <= 15:
            return DEST_UNREACH, icmp_code, info if icmp_code == UNREACH_NEEDFRAG else 0
        if icmp_type == TIME_EXCEEDED and icmp_code in (0, 1):
            return TIME_EXCEEDED, icmp_code, 0
        return None
    if origin == SO_EE_ORIGIN_ICMP6:
        if icmp_type == 1:  # destination unreachable
            if icmp_code == 4:
                return DEST_UNREACH, UNREACH_PORT, 0
            return DEST_UNREACH, _ICMP6_UNREACH.get(icmp_code, UNREACH_ADMIN), 0
        if icmp_type == 2:  # packet too big: the IPv6 path MTU, less the larger header
            return DEST_UNREACH, UNREACH_NEEDFRAG, max(_MIN_MTU, info - 20)
        if icmp_type == 3:  # time exceeded
            return TIME_EXCEEDED, min(icmp_code, 1), 0
        return None
    if origin == SO_EE_ORIGIN_LOCAL:
        if errno == _errno.EMSGSIZE and info:
            return DEST_UNREACH, UNREACH_NEEDFRAG, info
        return None
    if origin == SO_EE_ORIGIN_NONE:
        # libslirp answers any failed sendto with "net unreachable"; keep the finer codes.
        return DEST_UNREACH, _ERRNO_UNREACH.get(errno, UNREACH_NET), 0
    return None


def error_source(offender: str, host: str, default: bytes) -> bytes:
    """The source address of an error sent to the guest: the router that reported it when
    that is a plain IPv4 address other than the flow's own destination, else ``default``."""
    if not offender or offender == host or ":" in offender:
        return default
    parts = offender.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
        return default
    packed = bytes(int(p) for p in parts)
    if packed[0] in (0, 127) or packed[0] >= 224:
        return default
    return packed


def quote6(hdr: QuotedHeader, l4_len: int, l4_head: bytes | memoryview) -> bytes:
    """The guest's IPv6 packet as an ICMPv6 error quotes it: its fixed header (extension
    headers dropped, payload length of the upper-layer part) and the first bytes after it."""
    header = _IPV6_HEADER.pack(
        (6 << 28) | (hdr.tos << 20), min(l4_len, 0xFFFF), hdr.proto, hdr.ttl, hdr.src, hdr.dst
    )
    return header + bytes(l4_head[:QUOTE_L4_BYTES])


_ERRNO_UNREACH6 = {
    _errno.ECONNREFUSED: wicmp6.UNREACH_PORT,
    _errno.EHOSTUNREACH: wicmp6.UNREACH_ADDR,
    _errno.ENETUNREACH: wicmp6.UNREACH_NOROUTE,
    _errno.EACCES: wicmp6.UNREACH_ADMIN,
    _errno.EPERM: wicmp6.UNREACH_ADMIN,
}
_ICMP4_UNREACH6 = {UNREACH_PORT: wicmp6.UNREACH_PORT, UNREACH_NET: wicmp6.UNREACH_NOROUTE}


def host_error6(
    errno: int, origin: int, icmp_type: int, icmp_code: int, info: int
) -> tuple[int, int, int] | None:
    """The ICMPv6 (type, code, info) to give the guest for a host socket error, or None."""
    if origin == SO_EE_ORIGIN_ICMP6:
        if icmp_type == wicmp6.DEST_UNREACH and 0 <= icmp_code <= 6:
            return wicmp6.DEST_UNREACH, icmp_code, 0
        if icmp_type == wicmp6.PACKET_TOO_BIG:
            return wicmp6.PACKET_TOO_BIG, 0, max(_IPV6_MIN_MTU, info)
        if icmp_type == wicmp6.TIME_EXCEEDED and icmp_code in (0, 1):
            return wicmp6.TIME_EXCEEDED, icmp_code, 0
        return None
    if origin == SO_EE_ORIGIN_ICMP:  # an IPv4 error on a dual-stack socket
        if icmp_type == DEST_UNREACH:
            if icmp_code == UNREACH_NEEDFRAG:
                return wicmp6.PACKET_TOO_BIG, 0, max(_IPV6_MIN_MTU, info + 20)
            return wicmp6.DEST_UNREACH, _ICMP4_UNREACH6.get(icmp_code, wicmp6.UNREACH_ADDR), 0
        if icmp_type == TIME_EXCEEDED and icmp_code in (0, 1):
            return wicmp6.TIME_EXCEEDED, icmp_code, 0
        return None
    if origin == SO_EE_ORIGIN_LOCAL:
        if errno == _errno.EMSGSIZE and info:
            return wicmp6.PACKET_TOO_BIG, 0, max(_IPV6_MIN_MTU, info)
        return None
    if origin == SO_EE_ORIGIN_NONE:
        return wicmp6.DEST_UNREACH, _ERRNO_UNREACH6.get(errno, wicmp6.UNREACH_NOROUTE), 0
    return None


def error_source6(offender: str, host: str, default: bytes) -> bytes:
    """As :func:`error_source`, for IPv6: a global unicast offender, else ``default``."""
    if not offender or offender == host or ":" not in offender:
        return default
    try:
        addr = ipaddress.IPv6Address(offender)
    except ValueError:
        return default
    if (not addr.is_global and not addr.is_private) or addr.is_loopback or addr.is_link_local:
        return default
    if addr.is_multicast or addr.ipv4_mapped is not None or addr.is_unspecified:
        return default
    return addr.packed


def error_for_guest(
    hdr: QuotedHeader,
    l4_len: int,
    l4_head: bytes,
    ev: HostError,
    host: str,
    default_src: bytes,
) -> tuple[bytes, int, bytes] | None:
    """The (source, protocol, message) of the ICMP or ICMPv6 error that tells the guest of
    host error ``ev`` on its flow (sent to ``hdr.src``), or None when there is none to send."""
    if len(hdr.src) == 16:
        mapped = host_error6(ev.errno, ev.origin, ev.icmp_type, ev.icmp_code, ev.info)
        if mapped is None:
            return None
        src = error_source6(ev.offender, host, default_src)
        quoted = quote6(hdr, l4_len, l4_head)
        body = mapped[2].to_bytes(4, "big") + quoted
        msg = wicmp6.build_icmpv6(src, hdr.src, mapped[0], mapped[1], body)
        return src, IPPROTO_ICMPV6, msg
    mapped = host_error(ev.errno, ev.origin, ev.icmp_type, ev.icmp_code, ev.info)
    if mapped is None:
        return None
    src = error_source(ev.offender, host, default_src)
    msg = error_message(mapped[0], mapped[1], quote(hdr, l4_len, l4_head), mapped[2])
    return src, IPPROTO_ICMP, msg


# ---------------------------------------------------------------------------- echo flows


class _EchoFlow:
    __slots__ = (
        "dst_ip",
        "expires_ns",
        "flow",
        "guest_ident",
        "guest_ip",
        "hdr",
        "head",
        "host",
        "host_ident",
        "key",
        "l4_len",
    )
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"key"})

    def __init__(
        self,
        flow: int,
        key: tuple[bytes, int, bytes],
        host: str,
        host_ident: int,
        hdr: QuotedHeader,
    ) -> None:
        self.flow = flow
        self.key = key
        self.guest_ip, self.guest_ident, self.dst_ip = key
        self.host = host
        self.host_ident = host_ident
        self.hdr = hdr
        self.l4_len = 0
        self.head = b""
        self.expires_ns = 0


_ECHO_CODECS: dict[str, snap.Codec] = {"hdr": snap.HEADER}


class IcmpEcho:
    """Forwards the guest's echo requests to non-virtual addresses and maps replies back.

    Args:
      send_ip: ``send_ip(src_ip, dst_ip, proto, payload)`` queues a datagram to the guest.
      translate: ``translate(dst_ip, 0)`` gives the host address to ping, None if forbidden.
      alloc_flow: returns a new flow id (shared with every other host flow).
      rng: the stack's PRNG (host echo ids).
      counters: where ``icmp_*`` counts go.
      restrict: restrict=on: no echo leaves the stack.
      idle_timeout_ns: a flow without requests or replies this long is closed.
      max_flows: echo flows at once.
    """

    def __init__(
        self,
        *,
        send_ip: SendIp,
        translate: Translate,
        alloc_flow: Callable[[], int],
        rng: Prng,
        counters: collections.Counter[str],
        restrict: bool = False,
        idle_timeout_ns: int = ECHO_IDLE_TIMEOUT_NS,
        max_flows: int = MAX_ECHO_FLOWS,
    ) -> None:
        self._send_ip = send_ip
        self._translate = translate
        self._alloc_flow = alloc_flow
        self._rng = rng
        self.counters = counters
        self.restrict = restrict
        self.idle_timeout_ns = idle_timeout_ns
        self.max_flows = max(1, min(max_flows, 0x8000))
        self.unavailable = False
        self._flows: dict[tuple[bytes, int, bytes], _EchoFlow] = {}
        self._lru: collections.OrderedDict[int, _EchoFlow] = collections.OrderedDict()
        self._host_idents: set[int] = set()

    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "_send_ip", "_translate", "_alloc_flow", "_rng", "counters", "restrict",
        "idle_timeout_ns", "max_flows",
    })  # fmt: skip
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"_host_idents"})

    def __len__(self) -> int:
        return len(self._lru)

    def snapshot_state(self) -> dict[str, Any]:
        """The echo flows in LRU order, their creation order, and whether echo works."""
        skip = _EchoFlow._SNAPSHOT_DERIVED
        return {
            "unavailable": self.unavailable,
            "_lru": [snap.dump_slots(f, _ECHO_CODECS, skip) for f in self._lru.values()],
            "_flows": [f.flow for f in self._flows.values()],
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self.unavailable = bool(state["unavailable"])
        self._lru = collections.OrderedDict()
        for raw in state["_lru"]:
            f = snap.load_slots(_EchoFlow, raw, _ECHO_CODECS)
            f.key = (f.guest_ip, f.guest_ident, f.dst_ip)
            self._lru[f.flow] = f
        self._flows = {self._lru[fid].key: self._lru[fid] for fid in state["_flows"]}
        self._host_idents = {f.host_ident for f in self._lru.values()}

    def flows(self, now_ns: int) -> list[FlowInfo]:
        """The echo flows; the ports shown are the guest's and the host's echo ids."""
        return [
            FlowInfo(
                f.flow, "icmp", "open", f.guest_ip, f.guest_ident, f.dst_ip, 0, f.host,
                f.host_ident, 0, 0, max(0, now_ns - (f.expires_ns - self.idle_timeout_ns)),
            )
            for f in self._lru.values()
        ]

    # ------------------------------------------------------------------------ public face

    def guest_echo(
        self,
        hdr: QuotedHeader,
        ident: int,
        seq: int,
        data: bytes | memoryview,
        segment: bytes | memoryview,
        now_ns: int,
    ) -> list[Effect]:
        """An echo request from the guest to a non-virtual address; ``segment`` is the
        whole ICMP message (quoted if an error comes back)."""
        c = self.counters
        if self.restrict:
            c["icmp_restricted"] += 1
            return []
        if self.unavailable:
            c["icmp_echo_unavailable"] += 1
            return []
        dst = hdr.dst
        if len(dst) == 4 and classify_ipv4(dst) in (MULTICAST, BROADCAST):
            c["icmp_echo_bad_destination"] += 1
            return []  # other martians, and IPv6 destinations, are vetted by translate
        key = (hdr.src, ident, dst)
        out: list[Effect] = []
        f = self._flows.get(key)
        if f is None:
            target = self._translate(dst, 0)
            if target is None:
                c["icmp_forbidden"] += 1
                return []
            while len(self._lru) >= self.max_flows:
                c["icmp_flows_evicted"] += 1
                out.append(self._close(next(iter(self._lru.values()))))
            host_ident = self._rng.below(0x10000)
            while host_ident in self._host_idents:
                host_ident = self._rng.below(0x10000)
            f = _EchoFlow(self._alloc_flow(), key, target[0], host_ident, hdr)
            self._flows[key] = f
            self._lru[f.flow] = f
            self._host_idents.add(host_ident)
            c["icmp_flows_opened"] += 1
            out.append(IcmpEchoOpen(f.flow, f.host))
        else:
            self._lru.move_to_end(f.flow)
        f.hdr = hdr
        f.l4_len = len(segment)
        f.head = bytes(segment[:QUOTE_L4_BYTES])
        f.expires_ns = now_ns + self.idle_timeout_ns
        c["icmp_echo_forwarded"] += 1
        out.append(IcmpEchoSend(f.flow, f.host_ident, seq, bytes(data)))
        return out

    def host_event(self, ev: object, now_ns: int) -> list[Effect]:
        """An :class:`IcmpEchoReply`, :class:`IcmpEchoError` or :class:`IcmpUnavailable`."""
        c = self.counters
        if type(ev) is IcmpUnavailable:
            return self._unavailable(ev)
        if type(ev) is IcmpEchoReply:
            f = self._lru.get(ev.flow)
            if f is None:
                c["icmp_stale_event"] += 1
                return []
            self._lru.move_to_end(f.flow)
            f.expires_ns = now_ns + self.idle_timeout_ns
            c["icmp_echo_replies_forwarded"] += 1
            id_seq = _ID_SEQ.pack(f.guest_ident, ev.seq & 0xFFFF)
            if len(f.dst_ip) == 16:
                reply = wicmp6.build_icmpv6(
                    f.dst_ip, f.guest_ip, wicmp6.ECHO_REPLY, 0, id_seq + ev.data
                )
                self._send_ip(f.dst_ip, f.guest_ip, IPPROTO_ICMPV6, reply)
            else:
                reply = wicmp.build_icmp(ECHO_REPLY, 0, id_seq, ev.data)
                self._send_ip(f.dst_ip, f.guest_ip, IPPROTO_ICMP, reply)
            return []
        if type(ev) is IcmpEchoError:
            f = self._lru.get(ev.flow)
            if f is None:
                c["icmp_stale_event"] += 1
                return []
            err = error_for_guest(f.hdr, f.l4_len, f.head, ev, f.host, f.dst_ip)
            if err is None:
                c["icmp_error_ignored"] += 1
                return []
            c["icmp_errors_to_guest"] += 1
            self._send_ip(err[0], f.guest_ip, err[1], err[2])
            return []
        c["icmp_unknown_event"] += 1
        return []

    def forget_guest(self, guest_ip: bytes | None) -> list[Effect]:
        """Close the echo flows of the guest at ``guest_ip`` (None: of every guest)."""
        gone = [f for f in self._lru.values() if guest_ip is None or f.guest_ip == guest_ip]
        self.counters["icmp_guest_departed"] += len(gone)
        return [self._close(f) for f in gone]

    def poll_at(self) -> int | None:
        """When the least recently used flow goes idle, or None."""
        for f in self._lru.values():
            return f.expires_ns
        return None

    def tick(self, now_ns: int) -> list[Effect]:
        """Close the flows that have been idle too long."""
        out: list[Effect] = []
        while self._lru:
            f = next(iter(self._lru.values()))
            if f.expires_ns > now_ns:
                break
            self.counters["icmp_flows_expired"] += 1
            out.append(self._close(f))
        return out

    # ---------------------------------------------------------------------------- helpers

    def _close(self, f: _EchoFlow) -> Effect:
        del self._lru[f.flow]
        del self._flows[f.key]
        self._host_idents.discard(f.host_ident)
        return IcmpEchoClose(f.flow)

    def _unavailable(self, ev: IcmpUnavailable) -> list[Effect]:
        if not self.unavailable:
            log.warning(
                "ICMP echo cannot be forwarded: neither ping sockets (sysctl "
                "net.ipv4.ping_group_range) nor raw sockets (root or CAP_NET_RAW) are "
                "permitted (errno %d); pings to addresses outside the stack are dropped",
                ev.errno,
            )
        self.unavailable = True
        self.counters["icmp_unavailable"] += 1
        out: list[Effect] = []
        for f in list(self._lru.values()):
            out.append(self._close(f))
        return out

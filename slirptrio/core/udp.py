"""UDP NAT: the guest's datagrams over host UDP sockets, one flow per guest and destination.

Theory of operation
-------------------
A flow is keyed by (guest address, guest port, destination address, destination port). The
first datagram asks ``translate(dst_ip, dst_port)`` where the flow really goes (the host
address maps to host loopback; None means forbidden, e.g. restrict=on: dropped and counted),
opens a host UDP socket connected there (:class:`UdpOpen`) and every datagram is sent on it as
:class:`UdpSend`. What the socket receives (:class:`UdpReceived`) reaches the guest from the
destination it wrote to, so a guest sees the address it chose whatever the host mapping was.

Broadcast, as libslirp: a datagram to the virtual network's broadcast address goes to the host
address's mapping (host loopback) and the replies come from the host address. The limited
broadcast 255.255.255.255 and multicast are not forwarded (they would leak onto the host's
networks) and are counted. Port 0 and non-unicast guest sources are dropped.

``dns:53`` (and ``ipv6-dns`` port 53) is the DNS relay (:class:`slirptrio.core.dns.DnsRelay`,
owned here) rather than a NAT flow; other ports of ``dns`` go to ``translate`` like any address.

IPv6 flows work the same way with 16-byte addresses; there is no broadcast, multicast
destinations stay on the link, and martian destinations are refused by ``translate``.

Timers: a flow idle for ``idle_timeout_ns`` (libslirp's 240 s) is closed with
:class:`UdpClose`; flows to port 53 anywhere use ``dns_idle_timeout_ns`` (libslirp's 10 s).
Each timeout class keeps its flows in least-recently-used order, which is also deadline
order, so expiry and ``poll_at`` look at two list heads only. At most ``max_flows`` flows
exist; a new one evicts the one closest to expiry.

Errors: the shell reads the socket's IP_RECVERR queue and reports :class:`UdpError`; the guest
gets the matching ICMP error (:func:`slirptrio.core.icmp.host_error`) quoting the last datagram
it sent on the flow, of which the header fields and first bytes are kept. A failed send is
reported the same way (origin 0) and becomes "unreachable", as in libslirp.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from slirptrio.core import icmp
from slirptrio.core import snapshot as snap
from slirptrio.core.dns import DNS_PORT, DnsRelay
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    UdpClose,
    UdpError,
    UdpFwdSend,
    UdpOpen,
    UdpReceived,
    UdpSend,
)
from slirptrio.core.info import FlowInfo
from slirptrio.core.martian import classify_ipv4
from slirptrio.core.prng import Prng
from slirptrio.wire import icmpv6 as wicmp6
from slirptrio.wire import udp as wudp

log = logging.getLogger("slirptrio.core.udp")

IPPROTO_UDP = 17
UDP_MAX_PAYLOAD = 65535 - 20 - 8
UDP6_MAX_PAYLOAD = 65535 - 8  # the IPv6 payload length counts no fixed header
MAX_FLOWS = 1024
DNS_QUERY_TIMEOUT_NS = 2_000_000_000
"""A relayed query unanswered this long gets SERVFAIL: well inside the 5 s a stub resolver
(glibc, busybox) waits per try, so glibc's two tries end in 4 s instead of 10 s; 2 s still
leaves a recursive resolver time (README, DNS)."""
MAX_DNS_PENDING = 256
_UNSPECIFIED6 = bytes(16)
_NORMAL = 0
_FAST = 1

_Key = tuple[bytes, int, bytes, int]


class _Flow:
    __slots__ = (
        "dst_ip",
        "dst_port",
        "expires_ns",
        "flow",
        "fwd",
        "guest_ip",
        "guest_port",
        "hdr",
        "head",
        "host",
        "host_port",
        "key",
        "l4_len",
        "reply_src",
        "timer",
    )
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"key"})

    def __init__(self, flow: int, key: _Key, host: str, reply_src: bytes, timer: int) -> None:
        self.flow = flow
        self.key = key
        self.guest_ip, self.guest_port, self.dst_ip, self.dst_port = key
        self.host = host
        self.host_port = 0
        self.fwd: tuple[int, str, int] | None = None  # (fid, peer ip, peer port) if inbound
        self.reply_src = reply_src
        self.timer = timer
        self.expires_ns = 0
        self.hdr: icmp.QuotedHeader | None = None
        self.l4_len = 0
        self.head = b""


_FLOW_CODECS: dict[str, snap.Codec] = {"fwd": snap.TUPLE, "hdr": snap.HEADER}


class UdpNat:
    """UDP NAT and the DNS relay for one guest.

    Args:
      send_ip: ``send_ip(src_ip, dst_ip, proto, payload)`` queues a datagram to the guest.
      translate: ``translate(dst_ip, dst_port) -> (host, port) | None`` (None: forbidden).
      alloc_flow: returns a new flow id (shared with every other host flow).
      rng: the stack's PRNG.
      counters: where ``udp_*`` and ``dns_*`` counts go.
      host_ip, dns_ip, net_broadcast: the virtual addresses (packed).
      dns_ip6: the virtual IPv6 DNS address (b"" without IPv6); its port 53 is the relay too.
      restrict: restrict=on: nothing is forwarded, not even DNS (libslirp drops it too).
      loopback_ok: False under hostloopback=off (see :class:`DnsRelay`).
      idle_timeout_ns, dns_idle_timeout_ns: flow idle timeouts (port 53: the second).
      dns_timeout_ns: how long a relayed query waits before the guest gets SERVFAIL.
      max_flows, max_dns_pending: table bounds.
    """

    def __init__(
        self,
        *,
        send_ip: icmp.SendIp,
        translate: icmp.Translate,
        alloc_flow: Callable[[], int],
        rng: Prng,
        counters: collections.Counter[str],
        host_ip: bytes,
        dns_ip: bytes,
        net_broadcast: bytes,
        dns_ip6: bytes = b"",
        restrict: bool = False,
        loopback_ok: bool = True,
        idle_timeout_ns: int = 240_000_000_000,
        dns_idle_timeout_ns: int = 10_000_000_000,
        dns_timeout_ns: int = DNS_QUERY_TIMEOUT_NS,
        max_flows: int = MAX_FLOWS,
        max_dns_pending: int = MAX_DNS_PENDING,
    ) -> None:
        self._send_ip = send_ip
        self._translate = translate
        self._alloc_flow = alloc_flow
        self.counters = counters
        self.host_ip = host_ip
        self.dns_ip = dns_ip
        self.net_broadcast = net_broadcast
        self.dns_ip6 = dns_ip6
        self.restrict = restrict
        self._timeouts = (idle_timeout_ns, dns_idle_timeout_ns)
        self.max_flows = max(1, max_flows)
        self._flows: dict[_Key, _Flow] = {}
        self._by_id: dict[int, _Flow] = {}
        self._lru: tuple[collections.OrderedDict[int, _Flow], ...] = (
            collections.OrderedDict(),
            collections.OrderedDict(),
        )
        self.dns = DnsRelay(
            send_udp=self.send_udp,
            alloc_flow=alloc_flow,
            rng=rng,
            counters=counters,
            dns_ip=dns_ip,
            enabled=not restrict,
            loopback_ok=loopback_ok,
            timeout_ns=dns_timeout_ns,
            idle_timeout_ns=dns_idle_timeout_ns,
            max_pending=max_dns_pending,
        )

    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "_send_ip", "_translate", "_alloc_flow", "counters", "host_ip", "dns_ip",
        "net_broadcast", "restrict", "_timeouts", "max_flows",
        "dns_ip6",  # set by the Stack from the config, right after construction
    })  # fmt: skip
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"_flows"})

    def __len__(self) -> int:
        return len(self._by_id)

    def snapshot_state(self) -> dict[str, Any]:
        """The flows (in creation order), each timeout class's LRU order, the DNS relay."""
        skip = _Flow._SNAPSHOT_DERIVED
        return {
            "_by_id": [snap.dump_slots(f, _FLOW_CODECS, skip) for f in self._by_id.values()],
            "_lru": [list(lru) for lru in self._lru],
            "dns": self.dns.snapshot_state(),
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        by_id: dict[int, _Flow] = {}
        for raw in state["_by_id"]:
            f = snap.load_slots(_Flow, raw, _FLOW_CODECS)
            f.key = (f.guest_ip, f.guest_port, f.dst_ip, f.dst_port)
            by_id[f.flow] = f
        self._by_id = by_id
        self._flows = {f.key: f for f in by_id.values()}
        for lru, order in zip(self._lru, state["_lru"], strict=True):
            lru.clear()
            for fid in order:
                lru[fid] = by_id[fid]
        self.dns.restore_state(state["dns"])

    def flows(self, now_ns: int) -> list[FlowInfo]:
        """The open NAT flows (the DNS relay's upstream sockets are not listed)."""
        out = []
        for f in self._by_id.values():
            last = f.expires_ns - self._timeouts[f.timer]
            out.append(FlowInfo(
                f.flow, "udp", "open", f.guest_ip, f.guest_port, f.dst_ip, f.dst_port,
                f.host, f.host_port, 0, 0, max(0, now_ns - last),
            ))
        return out

    # ------------------------------------------------------------------------ public face

    def guest_datagram(
        self,
        hdr: icmp.QuotedHeader,
        sport: int,
        dport: int,
        data: bytes | memoryview,
        segment: bytes | memoryview,
        now_ns: int,
    ) -> list[Effect]:
        """A UDP datagram from the guest not meant for the stack's own services.

        ``data`` is the UDP payload, ``segment`` the whole UDP segment (header included),
        kept in part to quote in ICMP errors.
        """
        dst = hdr.dst
        if dport == DNS_PORT and (dst == self.dns_ip or dst == self.dns_ip6):
            return self.dns.guest_query(hdr.src, sport, data, now_ns, server_ip=dst)
        c = self.counters
        fwd = self._flows.get((hdr.src, sport, dst, dport))
        if fwd is not None and fwd.fwd is not None:
            # A reply on a host forward: allowed even under restrict=on, as in QEMU.
            self._lru[fwd.timer].move_to_end(fwd.flow)
            fwd.expires_ns = now_ns + self._timeouts[fwd.timer]
            c["udp_to_host"] += 1
            return [UdpFwdSend(fwd.fwd[0], fwd.fwd[1], fwd.fwd[2], bytes(data))]
        if self.restrict:
            c["udp_restricted"] += 1
            return []
        src = hdr.src
        if len(src) == 16:
            # IPv6: the guest's own unicast sources only; multicast stays on the link (other
            # martian destinations are refused by translate).
            if src[0] == 0xFF or src == _UNSPECIFIED6:
                c["udp_bad_source"] += 1
                return []
            if dst[0] == 0xFF:
                c["udp_not_forwarded"] += 1
                return []
        elif src[0] == 0 or src[0] >= 224 or src == self.net_broadcast:
            c["udp_bad_source"] += 1
            return []
        elif classify_ipv4(dst) and not self._is_alias(dst):
            c["udp_not_forwarded"] += 1
            return []
        if sport == 0 or dport == 0:
            c["udp_port_zero"] += 1
            return []
        key = (src, sport, dst, dport)
        out: list[Effect] = []
        f = self._flows.get(key)
        if f is None:
            f = self._open(key, out)
            if f is None:
                if dst != self.net_broadcast:
                    self._prohibited(hdr, segment)
                return out
        else:
            self._lru[f.timer].move_to_end(f.flow)
        f.hdr = hdr
        f.l4_len = len(segment)
        f.head = bytes(segment[: icmp.QUOTE_L4_BYTES])
        f.expires_ns = now_ns + self._timeouts[f.timer]
        c["udp_to_host"] += 1
        out.append(UdpSend(f.flow, bytes(data)))
        return out

    def inbound(
        self,
        fid: int,
        src_ip: bytes,
        guest_ip: bytes,
        guest_port: int,
        peer_ip: str,
        peer_port: int,
        data: bytes,
        now_ns: int,
    ) -> list[Effect]:
        """A datagram from a host peer on UDP forward ``fid``, for ``guest_ip:guest_port``.

        It reaches the guest from ``src_ip:peer_port``; the guest's replies to that address
        go back to the peer through the forward's socket (:class:`UdpFwdSend`).
        """
        out: list[Effect] = []
        key = (guest_ip, guest_port, src_ip, peer_port)
        f = self._flows.get(key)
        if f is None:
            while len(self._by_id) >= self.max_flows:
                self.counters["udp_flows_evicted"] += 1
                out.append(self._close(self._closest_to_expiry()))
            f = _Flow(self._alloc_flow(), key, peer_ip, src_ip, _NORMAL)
            f.host_port = peer_port
            self._flows[key] = f
            self._by_id[f.flow] = f
            self._lru[_NORMAL][f.flow] = f
            self.counters["udp_inbound_flows"] += 1
        else:
            self._lru[f.timer].move_to_end(f.flow)
        f.fwd = (fid, peer_ip, peer_port)
        f.expires_ns = now_ns + self._timeouts[f.timer]
        self.counters["udp_inbound"] += 1
        self.send_udp(src_ip, peer_port, guest_ip, guest_port, data)
        return out

    def host_event(self, ev: object, now_ns: int) -> list[Effect]:
        """A :class:`UdpReceived`, :class:`UdpError` or :class:`DnsUpstreams`."""
        c = self.counters
        if type(ev) is UdpReceived:
            f = self._by_id.get(ev.flow)
            if f is None:
                if self.dns.owns(ev.flow):
                    return self.dns.received(ev.flow, ev.data, now_ns)
                c["udp_stale_event"] += 1
                return []
            if len(ev.data) > (UDP_MAX_PAYLOAD if len(f.guest_ip) == 4 else UDP6_MAX_PAYLOAD):
                c["udp_too_big"] += 1
                return []
            self._lru[f.timer].move_to_end(f.flow)
            f.expires_ns = now_ns + self._timeouts[f.timer]
            c["udp_from_host"] += 1
            self.send_udp(f.reply_src, f.dst_port, f.guest_ip, f.guest_port, ev.data)
            return []
        if type(ev) is UdpError:
            f = self._by_id.get(ev.flow)
            if f is None:
                if self.dns.owns(ev.flow):
                    return self.dns.error(ev.flow, ev.errno, now_ns)
                c["udp_stale_event"] += 1
                return []
            self._error_to_guest(f, ev)
            return []
        if type(ev) is DnsUpstreams:
            return self.dns.set_upstreams(ev.servers, now_ns)
        c["udp_unknown_event"] += 1
        return []

    def forget_guest(self, guest_ip: bytes | None) -> list[Effect]:
        """Close the flows of the guest at ``guest_ip`` (None: of every guest): it is gone."""
        gone = [f for f in self._by_id.values() if guest_ip is None or f.guest_ip == guest_ip]
        self.counters["udp_guest_departed"] += len(gone)
        return [self._close(f) for f in gone]

    def poll_at(self) -> int | None:
        """The next flow expiry or DNS deadline, or None."""
        t = self.dns.poll_at()
        for lru in self._lru:
            for f in lru.values():
                if t is None or f.expires_ns < t:
                    t = f.expires_ns
                break
        return t

    def tick(self, now_ns: int) -> list[Effect]:
        """Close idle flows; time out DNS queries."""
        out = self.dns.tick(now_ns)
        for lru in self._lru:
            while lru:
                f = next(iter(lru.values()))
                if f.expires_ns > now_ns:
                    break
                self.counters["udp_flows_expired"] += 1
                out.append(self._close(f))
        return out

    def send_udp(
        self, src_ip: bytes, sport: int, dst_ip: bytes, dport: int, payload: bytes | memoryview
    ) -> None:
        """Queue one UDP datagram to the guest."""
        self._send_ip(
            src_ip, dst_ip, IPPROTO_UDP, wudp.build_udp(src_ip, dst_ip, sport, dport, payload)
        )

    # ---------------------------------------------------------------------------- helpers

    def _open(self, key: _Key, out: list[Effect]) -> _Flow | None:
        dst, dport = key[2], key[3]
        reply_src = dst
        if dst == self.net_broadcast:
            reply_src = self.host_ip
        target = self._translate(reply_src, dport)
        if target is None:
            self.counters["udp_forbidden"] += 1
            return None
        while len(self._by_id) >= self.max_flows:
            self.counters["udp_flows_evicted"] += 1
            out.append(self._close(self._closest_to_expiry()))
        timer = _FAST if dport == DNS_PORT else _NORMAL
        f = _Flow(self._alloc_flow(), key, target[0], reply_src, timer)
        f.host_port = target[1]
        self._flows[key] = f
        self._by_id[f.flow] = f
        self._lru[timer][f.flow] = f
        self.counters["udp_flows_opened"] += 1
        out.append(UdpOpen(f.flow, target[0], target[1]))
        return f

    def _is_alias(self, ip: bytes) -> bool:
        # Only the virtual addresses are known here; the Stack has already dropped every
        # martian outside the virtual network, so this is the fallback for direct users.
        return ip in (self.host_ip, self.dns_ip, self.net_broadcast)

    def _prohibited(self, hdr: icmp.QuotedHeader, segment: bytes | memoryview) -> None:
        """ICMP "administratively prohibited" for a datagram nothing may carry (the host
        address under ``hostloopback=off``), from the address the guest wrote to; ICMPv6's
        (destination unreachable, code 1) for an IPv6 datagram."""
        self.counters["udp_prohibited_icmp"] += 1
        if len(hdr.src) == 16:
            body = bytes(4) + icmp.quote6(hdr, len(segment), segment)
            msg = wicmp6.build_icmpv6(
                hdr.dst, hdr.src, wicmp6.DEST_UNREACH, wicmp6.UNREACH_ADMIN, body
            )
            self._send_ip(hdr.dst, hdr.src, icmp.IPPROTO_ICMPV6, msg)
            return
        msg = icmp.error_message(
            icmp.DEST_UNREACH, icmp.UNREACH_ADMIN, icmp.quote(hdr, len(segment), segment)
        )
        self._send_ip(hdr.dst, hdr.src, icmp.IPPROTO_ICMP, msg)

    def _closest_to_expiry(self) -> _Flow:
        heads = [next(iter(lru.values())) for lru in self._lru if lru]
        return min(heads, key=lambda f: f.expires_ns)

    def _close(self, f: _Flow) -> Effect:
        del self._lru[f.timer][f.flow]
        del self._by_id[f.flow]
        del self._flows[f.key]
        return UdpClose(f.flow)

    def _error_to_guest(self, f: _Flow, ev: UdpError) -> None:
        c = self.counters
        err = None
        if f.hdr is not None:
            err = icmp.error_for_guest(f.hdr, f.l4_len, f.head, ev, f.host, f.reply_src)
        if err is None:
            c["udp_error_ignored"] += 1
            return
        c["udp_icmp_errors"] += 1
        self._send_ip(err[0], f.guest_ip, err[1], err[2])

"""UDP NAT in the core: flows, address mapping, broadcast, timeouts, bounds, ICMP errors."""

from __future__ import annotations

import collections
import errno
import socket
import struct
from dataclasses import dataclass
from typing import Any

import dpkt

from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    UdpClose,
    UdpError,
    UdpOpen,
    UdpReceived,
    UdpSend,
)
from slirptrio.core.prng import Prng
from slirptrio.core.udp import UdpNat

GUEST = socket.inet_aton("10.0.2.15")
HOST = socket.inet_aton("10.0.2.2")
DNS = socket.inet_aton("10.0.2.3")
BCAST = socket.inet_aton("10.0.2.255")
REMOTE = socket.inet_aton("203.0.113.1")
FORBIDDEN = socket.inet_aton("198.51.100.99")
SEC = 1_000_000_000


@dataclass(frozen=True)
class Hdr:
    src: bytes
    dst: bytes
    proto: int = 17
    tos: int = 0
    ident: int = 0x1234
    df: bool = True
    ttl: int = 64


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def udp_checksum_ok(src: bytes, dst: bytes, segment: bytes) -> bool:
    pseudo = src + dst + struct.pack(">BBH", 0, 17, len(segment))
    return checksum(pseudo + segment) == 0xFFFF


class Harness:
    """A UdpNat with a recording send_ip and a libslirp-like translate."""

    def __init__(self, **kw: Any) -> None:
        self.sent: list[tuple[bytes, bytes, int, bytes]] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self._next_flow = 100
        self.nat = UdpNat(
            send_ip=self.send_ip,
            translate=self.translate,
            alloc_flow=self.alloc,
            rng=Prng(1),
            counters=self.counters,
            host_ip=HOST,
            dns_ip=DNS,
            net_broadcast=BCAST,
            **kw,
        )

    def send_ip(self, src: bytes, dst: bytes, proto: int, payload: bytes) -> None:
        self.sent.append((src, dst, proto, bytes(payload)))

    @staticmethod
    def translate(ip: bytes, port: int) -> tuple[str, int] | None:
        if ip == FORBIDDEN:
            return None
        if ip == HOST:
            return "127.0.0.1", port
        return socket.inet_ntoa(ip), port

    def alloc(self) -> int:
        self._next_flow += 1
        return self._next_flow

    def guest(
        self,
        dst: bytes,
        dport: int,
        data: bytes,
        now: int = 0,
        sport: int = 5000,
        src: bytes = GUEST,
    ) -> list[Effect]:
        u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
        u.ulen = 8 + len(data)
        segment = bytes(u)
        return self.nat.guest_datagram(
            Hdr(src, dst), sport, dport, memoryview(data), memoryview(segment), now
        )

    def udp_out(self) -> list[tuple[bytes, int, bytes, int, bytes]]:
        """Datagrams sent to the guest: (src, sport, dst, dport, data); checksums checked."""
        out = []
        for src, dst, proto, payload in self.sent:
            assert proto == 17
            assert udp_checksum_ok(src, dst, payload)
            u = dpkt.udp.UDP(payload)
            assert u.ulen == len(payload)
            out.append((src, u.sport, dst, u.dport, bytes(u.data)))
        self.sent.clear()
        return out


def test_first_datagram_opens_a_flow_later_ones_reuse_it() -> None:
    h = Harness()
    effects = h.guest(REMOTE, 7, b"one")
    assert effects == [UdpOpen(101, "203.0.113.1", 7), UdpSend(101, b"one")]
    assert h.guest(REMOTE, 7, b"two") == [UdpSend(101, b"two")]
    # another destination port, or another guest port: another flow
    assert h.guest(REMOTE, 8, b"x")[0] == UdpOpen(102, "203.0.113.1", 8)
    assert h.guest(REMOTE, 7, b"x", sport=5001)[0] == UdpOpen(103, "203.0.113.1", 7)
    assert len(h.nat) == 3
    assert h.counters["udp_to_host"] == 4


def test_reply_comes_from_the_original_destination() -> None:
    h = Harness()
    h.guest(REMOTE, 7, b"ping", sport=4242)
    assert h.nat.host_event(UdpReceived(101, b"pong"), 1) == []
    assert h.udp_out() == [(REMOTE, 7, GUEST, 4242, b"pong")]


def test_host_address_maps_to_loopback_and_replies_from_it() -> None:
    h = Harness()
    assert h.guest(HOST, 9999, b"hi")[0] == UdpOpen(101, "127.0.0.1", 9999)
    h.nat.host_event(UdpReceived(101, b"yo"), 1)
    assert h.udp_out() == [(HOST, 9999, GUEST, 5000, b"yo")]


def test_network_broadcast_goes_to_host_loopback_and_replies_from_host() -> None:
    h = Harness()
    assert h.guest(BCAST, 5353, b"anyone?")[0] == UdpOpen(101, "127.0.0.1", 5353)
    h.nat.host_event(UdpReceived(101, b"me"), 1)
    assert h.udp_out() == [(HOST, 5353, GUEST, 5000, b"me")]


def test_not_forwarded_destinations_and_sources() -> None:
    h = Harness()
    assert h.guest(b"\xff\xff\xff\xff", 9, b"x") == []
    assert h.guest(socket.inet_aton("224.0.0.251"), 5353, b"x") == []
    assert h.counters["udp_not_forwarded"] == 2
    assert h.guest(REMOTE, 0, b"x") == []
    assert h.counters["udp_port_zero"] == 1
    assert h.guest(REMOTE, 7, b"x", src=b"\0\0\0\0") == []
    assert h.counters["udp_bad_source"] == 1
    assert h.guest(FORBIDDEN, 7, b"x") == []
    assert h.counters["udp_forbidden"] == 1
    assert len(h.nat) == 0


def test_restrict_forwards_nothing_not_even_dns() -> None:
    h = Harness(restrict=True)
    assert h.guest(REMOTE, 7, b"x") == []
    assert h.guest(DNS, 53, b"\x12\x34" + bytes(10)) == []
    assert h.counters["udp_restricted"] == 1 and h.counters["dns_restricted"] == 1


def test_idle_timeout_240s_refreshed_both_ways() -> None:
    h = Harness()
    h.guest(REMOTE, 7, b"x", now=0)
    assert h.nat.poll_at() == 240 * SEC
    h.nat.host_event(UdpReceived(101, b"y"), 100 * SEC)
    assert h.nat.poll_at() == 340 * SEC
    assert h.nat.tick(340 * SEC - 1) == []
    assert h.nat.tick(340 * SEC) == [UdpClose(101)]
    assert len(h.nat) == 0 and h.nat.poll_at() is None
    # a late reply for the closed flow is counted, not delivered
    assert h.nat.host_event(UdpReceived(101, b"late"), 341 * SEC) == []
    assert h.udp_out() == [(REMOTE, 7, GUEST, 5000, b"y")]
    assert h.counters["udp_stale_event"] == 1


def test_port_53_flows_expire_after_10s_and_timeouts_are_configurable() -> None:
    h = Harness(idle_timeout_ns=50 * SEC, dns_idle_timeout_ns=3 * SEC)
    h.guest(REMOTE, 53, b"q", now=0)
    h.guest(REMOTE, 123, b"ntp", now=1 * SEC)
    assert h.nat.poll_at() == 3 * SEC
    assert h.nat.tick(3 * SEC) == [UdpClose(101)]
    assert h.nat.poll_at() == 51 * SEC
    assert h.nat.tick(51 * SEC) == [UdpClose(102)]
    assert Harness().nat.dns.idle_timeout_ns == 10 * SEC


def test_flow_table_bound_evicts_the_flow_closest_to_expiry() -> None:
    h = Harness(max_flows=2)
    h.guest(REMOTE, 1, b"a", now=0)
    h.guest(REMOTE, 2, b"b", now=1)
    h.guest(REMOTE, 1, b"a again", now=2)  # flow 101 is now the most recent
    effects = h.guest(REMOTE, 3, b"c", now=3)
    assert effects[0] == UdpClose(102)
    assert effects[1] == UdpOpen(103, "203.0.113.1", 3)
    assert len(h.nat) == 2
    assert h.counters["udp_flows_evicted"] == 1


def icmp_out(h: Harness) -> list[tuple[bytes, bytes, dpkt.icmp.ICMP, bytes]]:
    out = []
    for src, dst, proto, payload in h.sent:
        assert proto == 1
        assert checksum(payload) == 0xFFFF
        out.append((src, dst, dpkt.icmp.ICMP(payload), payload))
    h.sent.clear()
    return out


def test_port_unreachable_quotes_the_guests_datagram() -> None:
    h = Harness()
    h.guest(HOST, 9, b"first", sport=4000)
    h.guest(HOST, 9, b"second datagram", sport=4000)
    ev = UdpError(101, errno.ECONNREFUSED, 2, 3, 3, 0, "127.0.0.1")
    assert h.nat.host_event(ev, 1) == []
    ((src, dst, msg, raw),) = icmp_out(h)
    assert (src, dst) == (HOST, GUEST)
    assert (msg.type, msg.code) == (3, 3)
    quoted = raw[8:]
    assert checksum(quoted[:20]) == 0xFFFF
    ip = dpkt.ip.IP(quoted)
    assert ip.src == GUEST and ip.dst == HOST and ip.p == 17
    assert ip.len == 20 + 8 + len(b"second datagram")
    sport, dport, ulen = struct.unpack_from(">HHH", quoted, 20)
    assert (sport, dport, ulen) == (4000, 9, 8 + len(b"second datagram"))
    assert quoted[28:] == b"second datagram"
    assert h.counters["udp_icmp_errors"] == 1


def test_error_from_a_router_comes_from_that_router() -> None:
    h = Harness()
    h.guest(REMOTE, 33434, b"probe")
    h.nat.host_event(UdpError(101, errno.EHOSTUNREACH, 2, 11, 0, 0, "192.0.2.254"), 1)
    ((src, _dst, msg, _raw),) = icmp_out(h)
    assert src == socket.inet_aton("192.0.2.254")
    assert (msg.type, msg.code) == (11, 0)


def test_fragmentation_needed_carries_the_mtu() -> None:
    h = Harness()
    h.guest(REMOTE, 7, b"x" * 100)
    h.nat.host_event(UdpError(101, errno.EMSGSIZE, 2, 3, 4, 1400, "203.0.113.1"), 1)
    ((src, _dst, msg, raw),) = icmp_out(h)
    assert src == REMOTE
    assert (msg.type, msg.code) == (3, 4)
    assert struct.unpack_from(">HH", raw, 4) == (0, 1400)


def test_failed_send_becomes_unreachable_and_irrelevant_errors_are_ignored() -> None:
    h = Harness()
    h.guest(REMOTE, 7, b"x")
    h.nat.host_event(UdpError(101, errno.ENETUNREACH, 0, 0, 0, 0, ""), 1)
    ((_src, _dst, msg, _raw),) = icmp_out(h)
    assert (msg.type, msg.code) == (3, 0)
    h.nat.host_event(UdpError(101, errno.EPROTO, 2, 12, 0, 0, "203.0.113.1"), 2)
    assert h.sent == []
    assert h.counters["udp_error_ignored"] == 1


def test_oversized_reply_is_dropped() -> None:
    h = Harness()
    h.guest(REMOTE, 7, b"x")
    h.nat.host_event(UdpReceived(101, bytes(65535 - 28 + 1)), 1)
    h.nat.host_event(UdpReceived(101, bytes(65535 - 28)), 1)
    assert h.counters["udp_too_big"] == 1
    assert len(h.sent) == 1


def test_unknown_events_are_counted() -> None:
    h = Harness()
    assert h.nat.host_event(UdpError(5, 1, 0, 0, 0, 0, ""), 0) == []
    assert h.nat.host_event(object(), 0) == []
    assert h.counters["udp_stale_event"] == 1 and h.counters["udp_unknown_event"] == 1


def test_dns_upstreams_event_reaches_the_relay() -> None:
    h = Harness()
    assert h.nat.host_event(DnsUpstreams("127.0.0.53:53"), 0) == []
    assert h.nat.dns.tcp_upstream() == ("127.0.0.53", 53)

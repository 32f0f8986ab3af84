"""ICMP echo forwarding in the core, and the ICMP error helpers."""

from __future__ import annotations

import collections
import errno
import logging
import socket
import struct
from typing import Any

import dpkt
import pytest

from slirptrio.core import icmp
from slirptrio.core.events import (
    Effect,
    IcmpEchoClose,
    IcmpEchoError,
    IcmpEchoOpen,
    IcmpEchoReply,
    IcmpEchoSend,
    IcmpUnavailable,
)
from slirptrio.core.prng import Prng
from tests.test_udp_core import FORBIDDEN, GUEST, HOST, REMOTE, SEC, Harness, Hdr, checksum


class EchoHarness:
    def __init__(self, **kw: Any) -> None:
        self.sent: list[tuple[bytes, bytes, int, bytes]] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self._next_flow = 200
        self.echo = icmp.IcmpEcho(
            send_ip=lambda s, d, p, b: self.sent.append((s, d, p, bytes(b))),
            translate=Harness.translate,
            alloc_flow=self.alloc,
            rng=Prng(3),
            counters=self.counters,
            **kw,
        )

    def alloc(self) -> int:
        self._next_flow += 1
        return self._next_flow

    def ping(
        self, dst: bytes, ident: int = 77, seq: int = 1, data: bytes = b"abcdefgh", now: int = 0
    ) -> list[Effect]:
        msg = bytes(dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=data)))
        return self.echo.guest_echo(Hdr(GUEST, dst, proto=1), ident, seq, data, msg, now)

    def out(self) -> list[tuple[bytes, bytes, dpkt.icmp.ICMP, bytes]]:
        got = []
        for src, dst, proto, payload in self.sent:
            assert proto == 1 and checksum(payload) == 0xFFFF
            got.append((src, dst, dpkt.icmp.ICMP(payload), payload))
        self.sent.clear()
        return got


def test_echo_opens_a_flow_and_reply_maps_back_to_the_guest_id() -> None:
    h = EchoHarness()
    effects = h.ping(REMOTE, ident=77, seq=1)
    assert effects[0] == IcmpEchoOpen(201, "203.0.113.1")
    send = effects[1]
    assert isinstance(send, IcmpEchoSend)
    assert (send.flow, send.seq, send.data) == (201, 1, b"abcdefgh")
    assert h.ping(REMOTE, ident=77, seq=2) == [IcmpEchoSend(201, send.ident, 2, b"abcdefgh")]
    assert h.echo.host_event(IcmpEchoReply(201, 2, b"abcdefgh"), 1) == []
    ((src, dst, msg, _raw),) = h.out()
    assert (src, dst) == (REMOTE, GUEST)
    assert msg.type == 0 and msg.code == 0
    assert (msg.data.id, msg.data.seq, msg.data.data) == (77, 2, b"abcdefgh")


def test_each_guest_id_and_destination_is_a_flow_with_its_own_host_id() -> None:
    h = EchoHarness()
    a = h.ping(REMOTE, ident=1)
    b = h.ping(REMOTE, ident=2)
    c = h.ping(HOST, ident=1)
    assert [type(e) for e in a + b + c] == [IcmpEchoOpen, IcmpEchoSend] * 3
    assert c[0] == IcmpEchoOpen(203, "127.0.0.1")
    idents = {e.ident for e in a + b + c if isinstance(e, IcmpEchoSend)}
    assert len(idents) == 3
    assert len(h.echo) == 3


def test_unavailable_logs_once_closes_and_drops(caplog: pytest.LogCaptureFixture) -> None:
    h = EchoHarness()
    h.ping(REMOTE)
    with caplog.at_level(logging.WARNING, logger="slirptrio.core.icmp"):
        assert h.echo.host_event(IcmpUnavailable(201, errno.EACCES), 1) == [IcmpEchoClose(201)]
        assert h.ping(REMOTE, now=2) == []
        assert h.echo.host_event(IcmpUnavailable(201, errno.EACCES), 3) == []
    warnings = [r for r in caplog.records if "ping_group_range" in r.getMessage()]
    assert len(warnings) == 1
    assert h.counters["icmp_echo_unavailable"] == 1
    assert len(h.echo) == 0


def test_host_error_becomes_an_error_quoting_the_echo_request() -> None:
    h = EchoHarness()
    h.ping(REMOTE, ident=9, seq=4)
    h.echo.host_event(IcmpEchoError(201, errno.EHOSTUNREACH, 2, 3, 1, 0, "192.0.2.1"), 1)
    ((src, dst, msg, raw),) = h.out()
    assert (src, dst) == (socket.inet_aton("192.0.2.1"), GUEST)
    assert (msg.type, msg.code) == (3, 1)
    quoted = raw[8:]
    assert dpkt.ip.IP(quoted).p == 1
    assert struct.unpack_from(">BBHHH", quoted, 20)[::3] == (8, 9)
    assert struct.unpack_from(">HH", quoted, 24) == (9, 4)


def test_idle_flows_expire_and_the_table_is_bounded() -> None:
    h = EchoHarness(idle_timeout_ns=60 * SEC, max_flows=2)
    h.ping(REMOTE, ident=1, now=0)
    h.ping(REMOTE, ident=2, now=1)
    effects = h.ping(REMOTE, ident=3, now=2)
    assert effects[0] == IcmpEchoClose(201)
    assert h.counters["icmp_flows_evicted"] == 1
    assert h.echo.poll_at() == 60 * SEC + 1
    h.echo.host_event(IcmpEchoReply(202, 1, b""), 30 * SEC)
    assert h.echo.tick(60 * SEC + 2) == [IcmpEchoClose(203)]
    assert h.echo.tick(90 * SEC) == [IcmpEchoClose(202)]
    assert h.echo.poll_at() is None
    assert h.echo.host_event(IcmpEchoReply(202, 1, b""), 91 * SEC) == []
    assert h.counters["icmp_stale_event"] == 1


def test_restrict_forbidden_and_non_unicast_are_dropped() -> None:
    assert EchoHarness(restrict=True).ping(REMOTE) == []
    h = EchoHarness()
    assert h.ping(FORBIDDEN) == []
    assert h.ping(b"\xff\xff\xff\xff") == []
    assert h.ping(socket.inet_aton("224.0.0.1")) == []
    assert h.counters["icmp_forbidden"] == 1
    assert h.counters["icmp_echo_bad_destination"] == 2


# ------------------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((errno.ECONNREFUSED, 2, 3, 3, 0), (3, 3, 0)),
        ((errno.EMSGSIZE, 2, 3, 4, 1280), (3, 4, 1280)),
        ((errno.EHOSTUNREACH, 2, 11, 0, 0), (11, 0, 0)),
        ((errno.EPROTO, 2, 12, 0, 0), None),
        ((errno.ECONNREFUSED, 3, 1, 4, 0), (3, 3, 0)),
        ((errno.EMSGSIZE, 3, 2, 0, 1400), (3, 4, 1380)),
        ((errno.EHOSTUNREACH, 3, 3, 0, 0), (11, 0, 0)),
        ((errno.EMSGSIZE, 1, 0, 0, 1500), (3, 4, 1500)),
        ((errno.ENOBUFS, 1, 0, 0, 0), None),
        ((errno.ENETUNREACH, 0, 0, 0, 0), (3, 0, 0)),
        ((errno.EHOSTUNREACH, 0, 0, 0, 0), (3, 1, 0)),
        ((errno.EPERM, 0, 0, 0, 0), (3, 13, 0)),
        ((errno.EINVAL, 0, 0, 0, 0), (3, 0, 0)),
        ((0, 9, 0, 0, 0), None),
    ],
)
def test_host_error_mapping(
    args: tuple[int, int, int, int, int], expected: tuple[int, int, int] | None
) -> None:
    assert icmp.host_error(*args) == expected


def test_quote_rebuilds_a_valid_header_without_options() -> None:
    hdr = Hdr(GUEST, REMOTE, proto=17, tos=0x10, ident=0xABCD, df=False, ttl=3)
    q = icmp.quote(hdr, 1000, bytes(range(200)))
    assert len(q) == 20 + icmp.QUOTE_L4_BYTES
    assert checksum(q[:20]) == 0xFFFF
    ip = dpkt.ip.IP(q[:20] + bytes(1000))
    assert (ip.tos, ip.len, ip.id, ip.ttl, ip.p) == (0x10, 1020, 0xABCD, 3, 17)
    assert (ip.df, ip.mf, ip.offset) == (0, 0, 0)
    assert q[20:] == bytes(range(icmp.QUOTE_L4_BYTES))


@pytest.mark.parametrize(
    ("offender", "expected"),
    [
        ("", REMOTE),
        ("203.0.113.1", REMOTE),
        ("127.0.0.1", REMOTE),
        ("::1", REMOTE),
        ("not an address", REMOTE),
        ("192.0.2.7", socket.inet_aton("192.0.2.7")),
    ],
)
def test_error_source(offender: str, expected: bytes) -> None:
    assert icmp.error_source(offender, "203.0.113.1", REMOTE) == expected

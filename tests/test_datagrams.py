"""Host-side UDP/ICMP flows and DNS upstreams, against loopback sockets only."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence

import dpkt
import pytest
import trio
import trio.testing

from slirptrio.core.events import (
    DnsUpstreams,
    Event,
    IcmpEchoClose,
    IcmpEchoOpen,
    IcmpEchoReply,
    IcmpEchoSend,
    IcmpUnavailable,
    UdpClose,
    UdpError,
    UdpOpen,
    UdpReceived,
    UdpSend,
)
from slirptrio.shell import datagrams as dg
from slirptrio.shell.datagrams import Datagrams
from tests.test_udp_core import DNS, GUEST, Harness


async def next_event(recv: trio.MemoryReceiveChannel[Event], seconds: float = 5) -> Event:
    with trio.fail_after(seconds):
        return await recv.receive()


async def next_of(recv: trio.MemoryReceiveChannel[Event], cls: type[Event]) -> Event:
    while True:
        ev = await next_event(recv)
        if isinstance(ev, cls):
            return ev


def closed_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


async def udp_echo_server(sock: trio.socket.SocketType) -> None:
    while True:
        data, addr = await sock.recvfrom(65536)
        await sock.sendto(data, addr)


async def bound_udp() -> tuple[trio.socket.SocketType, int]:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    return sock, port


async def test_udp_round_trip_through_a_loopback_echo_server() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    d = Datagrams(send, dns_upstreams=[])
    server, port = await bound_udp()
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        nursery.start_soon(udp_echo_server, server)
        await trio.testing.wait_all_tasks_blocked()
        assert await next_event(recv) == DnsUpstreams("")
        d.udp_open(UdpOpen(1, "127.0.0.1", port))
        for data in (b"hello", b"x" * 20000, b""):
            d.udp_send(UdpSend(1, data))
            assert await next_event(recv) == UdpReceived(1, data)
        d.close(UdpClose(1))
        await trio.testing.wait_all_tasks_blocked()
        assert len(d) == 0
        d.udp_send(UdpSend(1, b"after close"))
        assert d.stale == 1
        nursery.cancel_scope.cancel()
    server.close()


async def test_closed_port_gives_an_icmp_port_unreachable_event() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    d = Datagrams(send, dns_upstreams=[])
    port = closed_udp_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await next_event(recv)
        d.udp_open(UdpOpen(3, "127.0.0.1", port))
        d.udp_send(UdpSend(3, b"anyone?"))
        ev = await next_event(recv)
        assert ev == UdpError(3, errno.ECONNREFUSED, 2, 3, 3, 0, "127.0.0.1")
        # the flow keeps working: a second datagram gets a second error
        d.udp_send(UdpSend(3, b"still?"))
        assert await next_event(recv) == ev
        nursery.cancel_scope.cancel()


async def test_open_failure_is_reported_on_each_send() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    d = Datagrams(send, dns_upstreams=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await next_event(recv)
        d.udp_open(UdpOpen(4, "not-an-ip.example", 53))
        d.udp_send(UdpSend(4, b"x"))
        assert await next_event(recv) == UdpError(4, errno.EINVAL, 0, 0, 0, 0, "")
        d.udp_send(UdpSend(4, b"y"))
        assert await next_event(recv) == UdpError(4, errno.EINVAL, 0, 0, 0, 0, "")
        nursery.cancel_scope.cancel()


async def test_dns_relay_against_a_fake_server_on_loopback() -> None:
    """Core relay + shell sockets + a fake resolver: the guest's query is answered."""
    send, recv = trio.open_memory_channel[Event](64)
    server, port = await bound_udp()
    seen_ids: list[int] = []

    async def fake_dns() -> None:
        while True:
            data, addr = await server.recvfrom(4096)
            q = dpkt.dns.DNS(data)
            seen_ids.append(q.id)
            q.qr, q.ra = 1, 1
            q.an = [dpkt.dns.DNS.RR(name=q.qd[0].name, type=1, cls=1, ttl=5, rdata=b"\1\2\3\4")]
            await server.sendto(bytes(q), addr)

    d = Datagrams(send, dns_upstreams=[("127.0.0.1", port)])
    h = Harness()
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        nursery.start_soon(fake_dns)
        handlers = d.handlers()

        def run(effects: Sequence[object]) -> None:
            for eff in effects:
                handlers[type(eff)](eff)

        ev = await next_event(recv)
        assert ev == DnsUpstreams(f"127.0.0.1:{port}")
        run(h.nat.host_event(ev, 0))
        q = bytes(dpkt.dns.DNS(id=0x5151, rd=1, qd=[dpkt.dns.DNS.Q(name="a.test", type=1)]))
        run(h.guest(DNS, 53, q, sport=40000))
        ev = await next_event(recv)
        assert isinstance(ev, UdpReceived)
        run(h.nat.host_event(ev, 1))
        ((src, sport, dst, dport, data),) = h.udp_out()
        assert (src, sport, dst, dport) == (DNS, 53, GUEST, 40000)
        reply = dpkt.dns.DNS(data)
        assert reply.id == 0x5151 and reply.an[0].rdata == b"\1\2\3\4"
        assert len(seen_ids) == 1
        nursery.cancel_scope.cancel()
    server.close()


async def test_dns_to_a_closed_port_servfails_at_once() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    d = Datagrams(send, dns_upstreams=[("127.0.0.1", closed_udp_port())])
    h = Harness()
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        handlers = d.handlers()
        for eff in h.nat.host_event(await next_event(recv), 0):
            handlers[type(eff)](eff)
        q = bytes(dpkt.dns.DNS(id=7, qd=[dpkt.dns.DNS.Q(name="a.test", type=1)]))
        for eff in h.guest(DNS, 53, q):
            handlers[type(eff)](eff)
        ev = await next_event(recv)
        assert isinstance(ev, UdpError) and ev.errno == errno.ECONNREFUSED
        h.nat.host_event(ev, 1)
        ((*_, data),) = h.udp_out()
        assert dpkt.dns.DNS(data).rcode == 2
        nursery.cancel_scope.cancel()


async def test_resolv_conf_is_followed(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# generated\nsearch example\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n")
    send, recv = trio.open_memory_channel[Event](64)
    d = Datagrams(send, resolv_conf=str(conf), resolv_check_s=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        assert await next_event(recv) == DnsUpstreams("127.0.0.53:53")
        conf.write_text("nameserver ::1\n")
        os.utime(conf, ns=(1, 1))  # a different mtime even on coarse clocks
        assert await next_event(recv) == DnsUpstreams("[::1]:53")
        conf.unlink()
        assert await next_event(recv) == DnsUpstreams("127.0.0.1:53")
        nursery.cancel_scope.cancel()


def test_read_resolv_conf(tmp_path: pathlib.Path) -> None:
    conf = tmp_path / "r"
    conf.write_text("nameserver bogus\n; comment\nnameserver 192.0.2.1 # x\n")
    assert dg.read_resolv_conf(str(conf)) == [("192.0.2.1", 53)]
    conf.write_text("options edns0\n")
    assert dg.read_resolv_conf(str(conf)) == [("127.0.0.1", 53)]
    assert dg.read_resolv_conf(str(tmp_path / "missing")) == [("127.0.0.1", 53)]


def test_parse_recverr() -> None:
    ee = struct.pack("=IBBBBII", errno.ECONNREFUSED, 2, 3, 3, 0, 0, 0)
    sin = struct.pack("=H", socket.AF_INET) + struct.pack(">H", 0) + socket.inet_aton("192.0.2.9")
    sin += bytes(8)
    got = dg.parse_recverr([(dg.SOL_IP, dg.IP_RECVERR, ee + sin)])
    assert got == (errno.ECONNREFUSED, 2, 3, 3, 0, "192.0.2.9")
    assert dg.parse_recverr([(dg.SOL_IP, dg.IP_RECVERR, ee)])[-1] == ""
    with pytest.raises(ValueError):
        dg.parse_recverr([(1, 2, b"")])


async def test_ping_loopback_or_report_unavailable() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    d = Datagrams(send, dns_upstreams=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await next_event(recv)
        d.icmp_open(IcmpEchoOpen(9, "127.0.0.1"))
        d.icmp_send(IcmpEchoSend(9, 0x4321, 5, b"payload!"))
        ev = await next_event(recv)
        if isinstance(ev, IcmpUnavailable):
            assert ev.flow == 9 and ev.errno in (errno.EACCES, errno.EPERM)
            assert len(d) == 0
        else:
            assert ev == IcmpEchoReply(9, 5, b"payload!")
            d.icmp_send(IcmpEchoSend(9, 0x4321, 6, b"again"))
            assert await next_of(recv, IcmpEchoReply) == IcmpEchoReply(9, 6, b"again")
            d.close(IcmpEchoClose(9))
            await trio.testing.wait_all_tasks_blocked()
            assert len(d) == 0
        nursery.cancel_scope.cancel()


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
async def test_raw_socket_path_when_ping_sockets_are_denied() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    d = Datagrams(send, dns_upstreams=[])
    d._ping_denied = True  # as when net.ipv4.ping_group_range excludes us
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await next_event(recv)
        d.icmp_open(IcmpEchoOpen(9, "127.0.0.1"))
        d.icmp_send(IcmpEchoSend(9, 0x1234, 1, b"raw"))
        assert await next_event(recv) == IcmpEchoReply(9, 1, b"raw")
        nursery.cancel_scope.cancel()


_NETNS_SCRIPT = r"""
import errno, subprocess, trio
from slirptrio.core.events import *
from slirptrio.shell.datagrams import Datagrams

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
    f.write("0 2147483647")

async def main():
    send, recv = trio.open_memory_channel(64)
    d = Datagrams(send, dns_upstreams=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        with trio.fail_after(5):
            await recv.receive()
            d.icmp_open(IcmpEchoOpen(1, "127.0.0.1"))
            assert not d._flows[1].raw, "expected a ping socket"
            for seq in (1, 2):
                d.icmp_send(IcmpEchoSend(1, 0x1111, seq, b"ns ping"))
                ev = await recv.receive()
                assert ev == IcmpEchoReply(1, seq, b"ns ping"), ev
            # No route in this namespace: the guest must hear "unreachable".
            d.icmp_open(IcmpEchoOpen(2, "192.0.2.1"))
            d.icmp_send(IcmpEchoSend(2, 1, 1, b"x"))
            ev = await recv.receive()
            assert ev == IcmpEchoError(2, errno.ENETUNREACH, 0, 0, 0, 0, ""), ev
            d.udp_open(UdpOpen(3, "192.0.2.1", 9))
            d.udp_send(UdpSend(3, b"x"))
            ev = await recv.receive()
            assert ev == UdpError(3, errno.ENETUNREACH, 0, 0, 0, 0, ""), ev
        nursery.cancel_scope.cancel()

trio.run(main)
print("ok")
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="needs root, unshare and ip",
)
def test_ping_socket_and_unreachable_in_a_private_network_namespace() -> None:
    """Ping sockets (allowed by ping_group_range) and no-route errors, in an empty netns."""
    root = pathlib.Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", _NETNS_SCRIPT],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr

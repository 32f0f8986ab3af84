"""The shell's IPv6 sockets in an empty network namespace: ping sockets (IPPROTO_ICMPV6, allowed
by net.ipv4.ping_group_range), raw ICMPv6 sockets as root, UDP over IPv6, and host errors read
with IPV6_RECVERR."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

_NETNS_SCRIPT = r"""
import errno, subprocess, trio
from slirptrio.core.events import *
from slirptrio.shell.datagrams import Datagrams

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
    f.write("0 2147483647")

async def echo_server(task_status=trio.TASK_STATUS_IGNORED):
    s = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM)
    await s.bind(("::1", 7777))
    task_status.started()
    while True:
        data, addr = await s.recvfrom(65536)
        await s.sendto(data, addr)

async def main():
    send, recv = trio.open_memory_channel(64)
    d = Datagrams(send, dns_upstreams=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        await nursery.start(echo_server)
        with trio.fail_after(10):
            await recv.receive()
            d.icmp_open(IcmpEchoOpen(1, "::1"))
            assert not d._flows[1].raw, "expected a ping socket"
            for seq in (1, 2):
                d.icmp_send(IcmpEchoSend(1, 0x1111, seq, b"ns ping6"))
                ev = await recv.receive()
                assert ev == IcmpEchoReply(1, seq, b"ns ping6"), ev
            # Raw ICMPv6 (root), as when ping sockets are not permitted.
            d._ping_denied = True
            d.icmp_open(IcmpEchoOpen(2, "::1"))
            assert d._flows[2].raw
            d.icmp_send(IcmpEchoSend(2, 0x2222, 7, b"raw6"))
            ev = await recv.receive()
            assert ev == IcmpEchoReply(2, 7, b"raw6"), ev
            # No route: unreachable.
            d._ping_denied = False
            d.icmp_open(IcmpEchoOpen(3, "2001:db8::1"))
            d.icmp_send(IcmpEchoSend(3, 1, 1, b"x"))
            ev = await recv.receive()
            assert isinstance(ev, IcmpEchoError) and ev.errno == errno.ENETUNREACH, ev
            # UDP over IPv6: an echo, then ICMPv6 port unreachable through IPV6_RECVERR.
            d.udp_open(UdpOpen(4, "::1", 7777))
            d.udp_send(UdpSend(4, b"x" * 20000))
            ev = await recv.receive()
            assert ev == UdpReceived(4, b"x" * 20000), ev
            d.udp_open(UdpOpen(5, "::1", 7778))
            d.udp_send(UdpSend(5, b"y"))
            ev = await recv.receive()
            assert ev == UdpError(5, errno.ECONNREFUSED, 3, 1, 4, 0, "::1"), ev
        nursery.cancel_scope.cancel()

trio.run(main)
print("ok")
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
    reason="needs root (raw sockets, a network namespace), unshare and ip",
)
def test_ipv6_sockets_in_a_private_network_namespace() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", _NETNS_SCRIPT],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr

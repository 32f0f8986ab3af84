"""A dead host peer is noticed: keepalive probes on host TCP sockets end an idle flow with
``TcpReset(ETIMEDOUT)``.

Needs root: two network namespaces of the test's own, joined by a veth pair (192.0.2.1 and
192.0.2.2, a documentation network that exists only there). The flow tasks run in one of them
(a child process, the keepalive settings shortened), the server in the other; once the
connection is idle a blackhole route makes the server vanish without a word.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from slirptrio.shell import flows as flows_mod

REPO = Path(__file__).resolve().parents[1]

CLIENT = textwrap.dedent(
    """
    import sys, subprocess, trio
    from slirptrio.core.events import TcpConnect, TcpConnected, TcpRecvCredit, TcpReset
    from slirptrio.shell import flows

    flows.KEEPALIVE_IDLE_S, flows.KEEPALIVE_INTERVAL_S, flows.KEEPALIVE_COUNT = 1, 1, 2

    async def main():
        send, recv = trio.open_memory_channel(100)
        tcp = flows.TcpFlows(send)
        async with trio.open_nursery() as nursery:
            await nursery.start(tcp.run)
            tcp.connect(TcpConnect(1, "192.0.2.2", 5000))
            with trio.fail_after(10):
                ev = await recv.receive()
            assert isinstance(ev, TcpConnected), ev
            tcp.credit(TcpRecvCredit(1, 1000))
            await trio.sleep(0.3)
            subprocess.run(["ip", "route", "add", "blackhole", "192.0.2.2/32"], check=True)
            with trio.fail_after(20):
                ev = await recv.receive()
            print(type(ev).__name__, getattr(ev, "errno", ""), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)
    """
)

SERVER = (
    "import socket, time\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('192.0.2.2', 5000)); s.listen(1); print('listening', flush=True)\n"
    "c, _ = s.accept(); time.sleep(60)\n"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=10, capture_output=True)


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin") is None:
        pytest.skip("needs root and iproute2 (network namespaces)")
    a, b = f"stka-{os.getpid()}-a", f"stka-{os.getpid()}-b"
    try:
        _ip("netns", "add", a)
        _ip("netns", "add", b)
        _ip("-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        _ip("-n", a, "addr", "add", "192.0.2.1/24", "dev", "va")
        _ip("-n", b, "addr", "add", "192.0.2.2/24", "dev", "vb")
        for ns, dev in ((a, "va"), (b, "vb")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield a, b
    finally:
        for ns in (a, b):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=10).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_dead_host_peer_is_reported_as_etimedout(two_namespaces: tuple[str, str]) -> None:
    a, b = two_namespaces
    server = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", CLIENT],
                             capture_output=True, text=True, timeout=40, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["TcpReset", str(errno.ETIMEDOUT)]
    finally:
        server.kill()
        server.wait(5)


def test_default_keepalive_notices_a_dead_peer_within_minutes() -> None:
    # What the kernel was told on a real socket, not the module's constants: probing starts
    # after half a minute idle at the earliest, and a peer that never answers is given up
    # within five minutes (idle + interval * count, the kernel's own rule).
    import socket

    s = socket.socket()
    try:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        flows_mod.set_keepalive(s)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        count = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
    finally:
        s.close()
    assert idle >= 30 and interval >= 1 and count >= 1
    assert idle + interval * count <= 300, (idle, interval, count)


def test_keepalive_options_are_set_on_host_tcp_sockets() -> None:
    import socket

    s = socket.socket()
    try:
        flows_mod.set_keepalive(s)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == flows_mod.KEEPALIVE_IDLE_S
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == (
            flows_mod.KEEPALIVE_INTERVAL_S
        )
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == flows_mod.KEEPALIVE_COUNT
    finally:
        s.close()

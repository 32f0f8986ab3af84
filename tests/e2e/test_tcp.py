"""TCP NAT with the Linux kernel as the guest: bulk both ways, refusals, many flows, half-close."""

from __future__ import annotations

import errno
import hashlib
import signal
import sys

import dpkt
import pytest

from slirptrio.core.events import TcpConnectFailed, TcpDataSent, TcpSent
from tests.e2e.evidence import assert_stack_refused, events, guest_sent, tcp_resets_to_guest
from tests.e2e.harness import (
    HOST_ADDR,
    REPO_ROOT,
    Relay,
    Slirptrio,
    Topology,
    pcap_problems,
    replay,
)
from tests.e2e.servers import pattern

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
HTTP_PORT = 8080
ECHO_PORT = 7070
BULK = 20_000_000
# Larger than any link here moves between the first megabyte and the cut.
CUT = 2_000_000_000
# A download that says "flowing" once a megabyte of the body has arrived, then reads on.
DOWNLOAD = """\
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(b"GET /" + sys.argv[3].encode() + b" HTTP/1.0\\r\\n\\r\\n")
got = 0
while chunk := s.recv(1 << 16):
    got += len(chunk)
    if got >= 1_000_000 > got - len(chunk):
        print("flowing", flush=True)
"""


def py(*args: str) -> list[str]:
    return [sys.executable, SERVERS, *args]


def start(topo: Topology, options: str = "") -> tuple[Slirptrio, Relay]:
    for addr in ("127.0.0.1", HOST_ADDR):
        topo.host_spawn(f"http-{addr}", py("http", addr, str(HTTP_PORT))).wait_line(
            "listening", 10
        )
        topo.host_spawn(f"echo-{addr}", py("tcp-echo", addr, str(ECHO_PORT))).wait_line(
            "listening", 10
        )
    topo.host_spawn("dns", py("dns", "5353")).wait_line("listening", 10)
    st, relay = topo.attach("listen", options, extra_args=["--dns-upstream", "127.0.0.1:5353"])
    assert topo.udhcpc().ip == "10.0.2.15"
    return st, relay


def curl(topo: Topology, *args: str, timeout: float = 120) -> str:
    out = topo.guest_run(["curl", "-sS", "--max-time", str(int(timeout)), *args], timeout + 10,
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def stop_and_replay(st: Slirptrio, relay: Relay) -> None:
    relay.stop()
    assert st.stop() == 0, st.proc.output()
    result = replay(st.journal, timeout=300)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


def test_bulk_both_ways_and_replay(topo: Topology) -> None:
    st, relay = start(topo)
    want = hashlib.sha256(pattern(BULK)).hexdigest()
    # Download through the host alias (host loopback), sha256 checked in the guest.
    got = topo.guest_run(
        ["sh", "-c", f"curl -sS --max-time 120 http://10.0.2.2:{HTTP_PORT}/{BULK} | sha256sum"],
        130,
    ).stdout.split()[0]
    assert got == want
    # Upload to a server in the test's own namespace; it answers the sha256 it received.
    blob = topo.dir / "upload.bin"
    blob.write_bytes(pattern(BULK))
    assert curl(topo, "-T", str(blob), f"http://{HOST_ADDR}:{HTTP_PORT}/up") == want
    assert pcap_problems(st.pcap, checksums=False) == []
    stop_and_replay(st, relay)


def test_refused_many_half_close_dns_tcp(topo: Topology) -> None:
    st, relay = start(topo)
    out = topo.guest_run(["curl", "-sS", f"http://10.0.2.2:{HTTP_PORT + 1}/"], 30, check=False)
    assert out.returncode == 7, out.stderr  # "couldn't connect": an RST, not a timeout
    # 200 concurrent connections, each echoed, half-closed by the guest, digest checked.
    res = topo.guest_run(py("tcp-many", HOST_ADDR, str(ECHO_PORT), "200", "20000"), 180)
    assert res.stdout.strip() == "200/200 ok", res.stdout + res.stderr
    # Half-close: the guest shuts its write side, the server still sends (the digest).
    res = topo.guest_run(py("tcp-many", "10.0.2.2", str(ECHO_PORT), "1", "1000000"), 60)
    assert res.stdout.strip() == "1/1 ok", res.stdout + res.stderr
    # DNS over TCP through the relay at 10.0.2.3.
    res = topo.guest_run(py("dns-query", "10.0.2.3", "tcp.example.test", "tcp"), 30)
    assert res.stdout.strip().endswith("rcode=0 answers=1 a=203.0.113.77"), res.stdout
    # One-byte round trips on one connection (issue 20): each request's send is reported with
    # the answer's read, in one step, not a TcpSent step of its own; the session replays.
    res = topo.guest_run(py("tcp-rr", HOST_ADDR, str(ECHO_PORT), "50"), 60)
    assert res.stdout.strip() == "50/50 ok", res.stdout + res.stderr
    stop_and_replay(st, relay)
    reports = [e for e in events(st.journal) if isinstance(e, TcpSent | TcpDataSent)]
    rr_flow = reports[-1].flow  # the round trips' connection is the last to report a send
    reports = [e for e in reports if e.flow == rr_flow]
    folded = [e for e in reports if isinstance(e, TcpDataSent)]
    # the first request may go alone: its report opens the window past the SYN-ACK's 64 KiB
    assert len(folded) >= 45 and len(reports) - len(folded) <= 5, reports
    # The refusal was the host's, passed on at once: the core asked for the connect, the
    # shell reported it refused, and the stack's reset answered the guest's first SYN (no
    # retransmitted SYN was ever needed).
    syns = [p for p in guest_sent(st.journal, "10.0.2.2", 6)
            if p.ip.data.dport == HTTP_PORT + 1 and p.ip.data.flags & dpkt.tcp.TH_SYN]
    assert len(syns) == 1, syns
    assert any(isinstance(e, TcpConnectFailed) and e.errno == errno.ECONNREFUSED
               for e in events(st.journal)), "no refused connect in the journal"
    assert [p for p in tcp_resets_to_guest(st.journal) if p.ip.data.sport == HTTP_PORT + 1]


def test_guest_disconnect_mid_transfer(topo: Topology) -> None:
    st, relay = start(topo)
    # Cut while the body flows: once the guest has read its first megabyte (the download says
    # so), not after a guessed while.
    dl = topo.guest_spawn("download-cut", [sys.executable, "-c", DOWNLOAD, "10.0.2.2",
                                            str(HTTP_PORT), str(CUT)])
    dl.wait_line("flowing", 60)
    relay.stop(signal.SIGKILL)
    dl.stop(signal.SIGKILL)
    assert st.proc.alive(), st.proc.output()
    relay = topo.start_relay(st.transport)
    want = hashlib.sha256(pattern(1_000_000)).hexdigest()
    got = topo.guest_run(
        ["sh", "-c", f"curl -sS --max-time 60 http://10.0.2.2:{HTTP_PORT}/1000000 | sha256sum"],
        70,
    ).stdout.split()[0]
    assert got == want
    stop_and_replay(st, relay)


def test_restrict_blocks_tcp(topo: Topology) -> None:
    st, relay = start(topo, "restrict=on")
    topo.guest_run(["ip", "route", "add", "default", "via", "10.0.2.2", "dev", "tap0"])
    out = topo.guest_run(
        ["curl", "-sS", "--max-time", "5", f"http://{HOST_ADDR}:{HTTP_PORT}/10"], 30, check=False
    )
    assert out.returncode == 7, (out.returncode, out.stderr)
    stop_and_replay(st, relay)
    # curl's "couldn't connect" would also follow a stack that connected to the host and then
    # reset the guest: the journal shows the SYN reached the stack, no connect to the host was
    # ever asked for, and the stack itself answered with a reset.
    assert_stack_refused(st.journal, HOST_ADDR, (6,))
    resets = [p for p in tcp_resets_to_guest(st.journal) if p.src == HOST_ADDR]
    assert resets and all(p.ip.data.sport == HTTP_PORT for p in resets), resets

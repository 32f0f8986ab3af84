"""TCP NAT with the Linux kernel as the guest: bulk both ways, refusals, many flows, half-close."""

from __future__ import annotations

import hashlib
import signal
import sys
import time

import pytest

from tests.e2e.evidence import assert_stack_refused, tcp_resets_to_guest
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
# Larger than any link here moves in the second the guest lets it run before the cut.
CUT = 2_000_000_000


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
    t0 = time.monotonic()
    out = topo.guest_run(["curl", "-sS", f"http://10.0.2.2:{HTTP_PORT + 1}/"], 30, check=False)
    elapsed = time.monotonic() - t0
    assert out.returncode == 7, out.stderr  # "couldn't connect": an RST, not a timeout
    assert elapsed < 1.0, elapsed
    # 200 concurrent connections, each echoed, half-closed by the guest, digest checked.
    res = topo.guest_run(py("tcp-many", HOST_ADDR, str(ECHO_PORT), "200", "20000"), 180)
    assert res.stdout.strip() == "200/200 ok", res.stdout + res.stderr
    # Half-close: the guest shuts its write side, the server still sends (the digest).
    res = topo.guest_run(py("tcp-many", "10.0.2.2", str(ECHO_PORT), "1", "1000000"), 60)
    assert res.stdout.strip() == "1/1 ok", res.stdout + res.stderr
    # DNS over TCP through the relay at 10.0.2.3.
    res = topo.guest_run(py("dns-query", "10.0.2.3", "tcp.example.test", "tcp"), 30)
    assert res.stdout.strip().endswith("rcode=0 answers=1 a=203.0.113.77"), res.stdout
    stop_and_replay(st, relay)


def test_guest_disconnect_mid_transfer(topo: Topology) -> None:
    st, relay = start(topo)
    dl = topo.guest_spawn(
        "curl-cut", ["curl", "-sS", "-o", "/dev/null", f"http://10.0.2.2:{HTTP_PORT}/{CUT}"]
    )
    time.sleep(1.0)
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

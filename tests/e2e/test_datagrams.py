"""UDP NAT, the DNS relay, ICMP echo forwarding and fragments, with the kernel as the guest."""

from __future__ import annotations

import sys

import pytest

from tests.e2e.evidence import assert_stack_refused
from tests.e2e.harness import (
    HOST_ADDR,
    REPO_ROOT,
    Relay,
    Slirptrio,
    Topology,
    pcap_problems,
    replay,
)

pytestmark = pytest.mark.e2e

DNS_PORT = 5353
ECHO_PORT = 7777


SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")


def py(*args: str) -> list[str]:
    return [sys.executable, SERVERS, *args]


def guest_py(topo: Topology, *args: str, timeout: float = 30) -> str:
    out = topo.guest_run(py(*args), timeout, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


def start(topo: Topology, options: str = "") -> tuple[Slirptrio, Relay]:
    topo.host_spawn("dns", py("dns", str(DNS_PORT))).wait_line("listening", 10)
    for addr in ("127.0.0.1", HOST_ADDR):
        topo.host_spawn(f"echo-{addr}", py("udp-echo", addr, str(ECHO_PORT))).wait_line(
            "listening", 10
        )
    st, relay = topo.attach(
        "listen", options, extra_args=["--dns-upstream", f"127.0.0.1:{DNS_PORT}"]
    )
    lease = topo.udhcpc()
    assert lease.ip == "10.0.2.15", lease.raw
    return st, relay


def finish(st: Slirptrio, relay: Relay) -> None:
    relay.stop()
    assert st.stop() == 0, st.proc.output()
    assert pcap_problems(st.pcap) == []
    result = replay(st.journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


def test_udp_dns_icmp_fragments(topo: Topology) -> None:
    st, relay = start(topo)
    # DNS through the relay at 10.0.2.3, with busybox's resolver and with our own client.
    out = topo.guest_run(["busybox", "nslookup", "vm.example.test", "10.0.2.3"], 30).stdout
    assert "203.0.113.77" in out, out
    assert guest_py(topo, "dns-query", "10.0.2.3", "a.example.test").endswith(
        "rcode=0 answers=1 a=203.0.113.77"
    )
    # No answer upstream: SERVFAIL (rcode 2) instead of silence.
    assert "rcode=2" in guest_py(topo, "dns-query", "10.0.2.3", "silent.example.test")
    # UDP echo via the host alias (host loopback) and to a server in the test's namespace.
    assert guest_py(topo, "udp-client", "10.0.2.2", str(ECHO_PORT), "100") == "ok 10.0.2.2"
    assert guest_py(topo, "udp-client", HOST_ADDR, str(ECHO_PORT), "100") == f"ok {HOST_ADDR}"
    # 20,000 bytes: fragmented by the guest at MTU 1500, reassembled, and fragmented back.
    assert guest_py(topo, "udp-client", "10.0.2.2", str(ECHO_PORT), "20000") == "ok 10.0.2.2"
    # A closed port: the host's ICMP error comes back as port unreachable.
    assert guest_py(topo, "udp-client", "10.0.2.2", "7778", "10") == "refused"
    # ping: answered by the stack, and forwarded through a host ping socket.
    for addr in ("10.0.2.2", HOST_ADDR):
        res = topo.ping(addr, check=False)
        assert "3 packets received" in res.stdout, res.stdout + res.stderr
    finish(st, relay)


def test_restrict_blocks_udp_and_icmp(topo: Topology) -> None:
    st, relay = start(topo, "restrict=on")
    # restrict=on offers no router (as QEMU); route through the gateway by hand to try anyway.
    topo.guest_run(["ip", "route", "add", "default", "via", "10.0.2.2", "dev", "tap0"])
    assert guest_py(topo, "udp-client", HOST_ADDR, str(ECHO_PORT), "10") == "timeout"
    res = topo.ping(HOST_ADDR, count=1, check=False)
    assert "1 packets received" not in res.stdout, res.stdout
    finish(st, relay)
    # The guest's datagram and echo request reached the stack, which never asked the shell to
    # reach the host: the stack refused them (not the guest's routing, not the host).
    assert_stack_refused(st.journal, HOST_ADDR, (17, 1))

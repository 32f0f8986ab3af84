"""IPv6 with the kernel as the guest: SLAAC and the default route from our router
advertisements with no manual set-up, ping6, HTTP to [fec0::2] from the host's ::1, TCP and UDP
to the test namespace's IPv6 address, AAAA lookups via fec0::3 over UDP and TCP, dhclient's
information request, 20 kB datagrams both ways (fragmented), host forwards from [::1] into the
guest, restrict=on; every pcap clean in tshark, every session replayed identical."""

from __future__ import annotations

import shutil
import sys
import time

import pytest

from tests.e2e.evidence import assert_stack_refused, tcp_resets_to_guest
from tests.e2e.harness import (
    HOST_ADDR6,
    REPO_ROOT,
    Relay,
    Slirptrio,
    Topology,
    pcap_problems,
    pcap_protocols,
    replay,
)

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
DNS_PORT = 5353
ECHO_PORT = 7777
TCP_PORT = 7778
HTTP_PORT = 8080
GUEST_ECHO = 2222

DHCLIENT_SCRIPT = """#!/bin/sh
{{ echo "reason=$reason"; env | grep '^new_dhcp6_' | sort; }} >> '{out}'
exit 0
"""


def py(*args: str) -> list[str]:
    return [sys.executable, SERVERS, *args]


def guest_py(topo: Topology, *args: str, timeout: float = 30) -> str:
    out = topo.guest_run(py(*args), timeout, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


def host_py(topo: Topology, *args: str, timeout: float = 30) -> str:
    out = topo.host_run(py(*args), timeout, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


def finish(st: Slirptrio, relay: Relay) -> None:
    relay.stop()
    assert st.stop() == 0, st.proc.output()
    assert pcap_problems(st.pcap) == []
    assert "ipv6" in pcap_protocols(st.pcap)
    result = replay(st.journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


def test_dual_stack_guest(topo: Topology) -> None:
    # The DNS upstream is IPv6 (::1) while guests ask over both families.
    topo.host_spawn("dns", py("dns", str(DNS_PORT), "::1")).wait_line("listening", 10)
    topo.host_spawn("http", py("http", "::1", str(HTTP_PORT))).wait_line("listening", 10)
    for addr in ("::1", HOST_ADDR6):
        topo.host_spawn(f"echo-{addr}", py("udp-echo", addr, str(ECHO_PORT))).wait_line(
            "listening", 10
        )
    topo.host_spawn("tcp-echo", py("tcp-echo", HOST_ADDR6, str(TCP_PORT))).wait_line(
        "listening", 10
    )
    options = (f"hostfwd=tcp:[::1]:{GUEST_ECHO}-:{GUEST_ECHO},"
               f"hostfwd=tcp:[::1]:{GUEST_ECHO + 1}-[fec0::15]:{GUEST_ECHO}")
    st, relay = topo.attach("listen", options,
                            extra_args=["--dns-upstream", f"[::1]:{DNS_PORT}"])
    # Both families: a DHCP lease, and SLAAC with no manual set-up.
    assert topo.udhcpc().ip == "10.0.2.15"
    addr, router = topo.slaac()
    assert addr.startswith("fec0::") and router == "fe80::2"
    site = topo.guest_run(["ip", "-6", "addr", "show", "dev", "tap0"]).stdout
    assert "scope site" in site, site

    # ping6: answered by the stack, and forwarded through a host ping socket.
    for dst in ("fec0::2", "fec0::3", HOST_ADDR6):
        res = topo.ping6(dst, check=False)
        assert "3 packets received" in res.stdout, res.stdout + res.stderr

    # HTTP to [fec0::2], served from the host's ::1.
    curl = topo.guest_run(["curl", "-g", "-s", "-o", "/dev/null", "-w", "%{size_download}",
                           f"http://[fec0::2]:{HTTP_PORT}/100000"], 30)
    assert curl.stdout.strip() == "100000", curl.stdout + curl.stderr

    # TCP and UDP to the test namespace's IPv6 address; UDP to ::1 via fec0::2.
    assert guest_py(topo, "tcp-client", HOST_ADDR6, str(TCP_PORT), "300000") == "ok"
    assert guest_py(topo, "udp-client", HOST_ADDR6, str(ECHO_PORT), "100") == f"ok {HOST_ADDR6}"
    # 20,000 bytes both ways: the guest fragments, we reassemble; we fragment, it reassembles.
    assert guest_py(topo, "udp-client", "fec0::2", str(ECHO_PORT), "20000") == "ok fec0::2"
    # A closed port: the host's ICMPv6 error comes back as port unreachable.
    assert guest_py(topo, "udp-client", "fec0::2", str(ECHO_PORT + 5), "10") == "refused"

    # AAAA (and A) through fec0::3, over UDP and TCP, to an IPv6 upstream.
    for proto in ("udp", "tcp"):
        out = guest_py(topo, "dns-query", "fec0::3", "v6.example.test", proto, "aaaa")
        assert out.endswith("rcode=0 answers=1 aaaa=2001:db8::77"), out
    assert guest_py(topo, "dns-query", "fec0::3", "a.example.test").endswith("a=203.0.113.77")
    out = topo.guest_run(["busybox", "nslookup", "-type=AAAA", "v6.example.test", "fec0::3"],
                         30).stdout
    assert "2001:db8::77" in out, out

    # Host forwards from [::1] into the guest, to its IPv4 and to an IPv6 address of its own.
    topo.guest_run(["ip", "-6", "addr", "add", "fec0::15/64", "dev", "tap0", "nodad"])
    topo.guest_spawn("guest-echo", py("tcp-echo", "::", str(GUEST_ECHO))).wait_line(
        "listening", 10
    )
    for port in (GUEST_ECHO, GUEST_ECHO + 1):
        assert host_py(topo, "tcp-client", "::1", str(port), "50000") == "ok"

    # A real DHCPv6 client's information request gets the DNS server.
    if shutil.which("dhclient", path="/usr/sbin:/sbin:/usr/bin") is None:
        pytest.fail("dhclient is missing (tests/run.sh installs isc-dhcp-client)")
    env_file = topo.dir / "dhclient.env"
    script = topo.dir / "dhclient.sh"
    script.write_text(DHCLIENT_SCRIPT.format(out=env_file))
    script.chmod(0o755)
    dh = topo.guest_spawn("dhclient", [
        "dhclient", "-6", "-S", "-d", "-v", "-1", "-sf", str(script),
        "-lf", str(topo.dir / "dhclient.leases"), "-pf", str(topo.dir / "dhclient.pid"), "tap0",
    ])  # fmt: skip
    deadline = time.monotonic() + 30
    env = ""
    # dhclient 4.4 runs its script with reason RENEW6 (not INFORM6) for an -S reply.
    while "name_servers" not in env and time.monotonic() < deadline and dh.alive():
        time.sleep(0.1)
        env = env_file.read_text() if env_file.exists() else ""
    dh.stop()
    assert "new_dhcp6_name_servers=fec0::3" in env, env + dh.output()
    assert "new_dhcp6_server_id=0:3:0:1:52:56:0:0:0:2" in env, env

    finish(st, relay)


def test_restrict_blocks_ipv6_egress(topo: Topology) -> None:
    topo.host_spawn("echo", py("udp-echo", HOST_ADDR6, str(ECHO_PORT))).wait_line(
        "listening", 10
    )
    topo.host_spawn("tcp-echo", py("tcp-echo", HOST_ADDR6, str(TCP_PORT))).wait_line(
        "listening", 10
    )
    st, relay = topo.attach("listen", "restrict=on")
    # SLAAC still works; the router lifetime is 0 (no default route), as IPv4 offers no
    # router under restrict=on. Route through the router by hand to try anyway.
    _addr, router = topo.slaac(default_route=False)
    assert router == ""
    topo.guest_run(["ip", "-6", "route", "add", "default", "via", "fe80::2", "dev", "tap0"])
    assert guest_py(topo, "udp-client", HOST_ADDR6, str(ECHO_PORT), "10") == "timeout"
    res = topo.ping6(HOST_ADDR6, count=1, check=False)
    assert "1 packets received" not in res.stdout, res.stdout
    assert guest_py(topo, "tcp-client", HOST_ADDR6, str(TCP_PORT), "10") == (
        "error ConnectionRefusedError"
    )
    # The stack's own addresses still answer.
    assert "3 packets received" in topo.ping6("fec0::2").stdout
    finish(st, relay)
    # Each attempt reached the stack and none reached the host: the stack refused them, the
    # TCP connect with a reset of its own.
    assert_stack_refused(st.journal, HOST_ADDR6, (17, 58, 6))
    assert [p for p in tcp_resets_to_guest(st.journal) if p.src == HOST_ADDR6]

"""Hardening with the Linux kernel as the guest: idle connections with keepalive live, crafted
traffic to loopback addresses reaches nothing on the host, a SYN flood to an unreachable
address leaves room for the guest's other connections. Every session replays identical."""

from __future__ import annotations

import json
import sys

import pytest

from slirptrio.core.martian import is_loopback_host
from tests.e2e.evidence import host_targets
from tests.e2e.harness import (
    HOST_ADDR,
    REPO_ROOT,
    Relay,
    Slirptrio,
    Topology,
    pcap_fields,
    replay,
)

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
TOOLS = str(REPO_ROOT / "tests" / "e2e" / "hardening_tools.py")
HTTP_PORT = 8080
ECHO_PORT = 7070
TRAP_PORT = 7777
UNROUTED = "198.51.100.7"  # routed into the dead end, which drops it without a word
TRAP_ADDRS = ("127.0.0.1", "127.0.0.2")
MARK = """\
import socket, sys
port = int(sys.argv[1])
for addr in sys.argv[2:]:
    with socket.create_connection((addr, port), timeout=10, source_address=("127.0.0.9", 0)):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.9", 0))
        u.sendto(b"mark", (addr, port))
"""


def py(script: str, *args: str) -> list[str]:
    return [sys.executable, script, *args]


def start(topo: Topology, options: str = "") -> tuple[Slirptrio, Relay]:
    for addr in ("127.0.0.1", HOST_ADDR):
        topo.host_spawn(f"http-{addr}", py(SERVERS, "http", addr, str(HTTP_PORT))).wait_line(
            "listening", 10
        )
        topo.host_spawn(f"echo-{addr}", py(SERVERS, "tcp-echo", addr, str(ECHO_PORT))).wait_line(
            "listening", 10
        )
    topo.host_spawn("dns", py(SERVERS, "dns", "5353")).wait_line("listening", 10)
    st, relay = topo.attach("listen", options, extra_args=["--dns-upstream", "127.0.0.1:5353"])
    assert topo.udhcpc().ip == "10.0.2.15"
    return st, relay


def stop_and_replay(st: Slirptrio, relay: Relay) -> None:
    relay.stop()
    assert st.stop() == 0, st.proc.output()
    result = replay(st.journal, timeout=300)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


# ------------------------------------------------------------------------------ keepalive


def test_idle_connection_with_keepalive_every_second_survives_a_minute(topo: Topology) -> None:
    st, relay = start(topo)
    res = topo.guest_run(py(TOOLS, "keepalive", "10.0.2.2", str(ECHO_PORT), "60"), 120)
    assert res.stdout.strip() == "ok", res.stdout + res.stderr
    stop_and_replay(st, relay)
    # The guest probed about once a second, and every probe was answered.
    probes = pcap_fields(st.pcap, "tcp.analysis.keep_alive", ["frame.number"])
    answers = pcap_fields(st.pcap, "tcp.analysis.keep_alive_ack", ["frame.number"])
    assert len(probes) >= 50, len(probes)
    assert len(answers) >= len(probes) - 1, (len(probes), len(answers))


# ------------------------------------------------------------------------------ loopback


@pytest.mark.parametrize("options", ["", "hostloopback=off"])
def test_crafted_traffic_to_loopback_reaches_nothing(topo: Topology, options: str) -> None:
    trap = topo.host_spawn("trap", py(TOOLS, "listen", str(TRAP_PORT), ",".join(TRAP_ADDRS)))
    trap.wait_line("listening", 10)
    st, relay = start(topo, options)
    dsts = ["127.0.0.1", "127.0.0.2", "0.0.0.0", "240.0.0.1"]
    res = topo.guest_run(py(TOOLS, "craft", "tap0", "10.0.2.15", ",".join(dsts),
                            str(TRAP_PORT)), 30)
    answers = json.loads(res.stdout)
    for d in dsts:  # each refused at once by the gateway: "administratively prohibited"
        for proto in ("tcp", "udp", "icmp"):
            assert answers[d][proto] == [3, 13, "10.0.2.2"], (d, proto, answers)
    if options:
        # hostloopback=off: the host address leads nowhere either (TCP refused, UDP refused),
        # and the DNS relay does not use the upstream on the host's loopback.
        res = topo.guest_run(py(TOOLS, "craft", "tap0", "10.0.2.15", "10.0.2.2",
                                str(TRAP_PORT)), 30)
        alias = json.loads(res.stdout)["10.0.2.2"]
        assert alias["tcp"][0] == "flags" and alias["tcp"][1] & 0x04, alias
        assert alias["udp"] == [3, 13, "10.0.2.2"], alias
        out = topo.guest_run(py(SERVERS, "dns-query", "10.0.2.3", "loop.example.test"), 30)
        assert "rcode=2" in out.stdout, out.stdout + out.stderr
        st.proc.wait_line("not using DNS upstream 127.0.0.1:5353", 5, tag=None)
    stop_and_replay(st, relay)
    # With the stack gone nothing more can reach the trap. A marker connection and datagram
    # from 127.0.0.9 to each trap address queue behind anything that reached it before (its
    # accept and receive queues are in order): once the trap has printed all four markers,
    # it has printed every earlier arrival, and there must be none.
    markers = [f"{proto} {addr} 127.0.0.9" for addr in TRAP_ADDRS for proto in ("tcp", "udp")]
    topo.host_run([sys.executable, "-c", MARK, str(TRAP_PORT), *TRAP_ADDRS], 30)
    for line in markers:
        trap.wait_line(line, 30)
    assert sorted(trap.lines("out")) == sorted(["listening", *markers]), trap.output()
    targets = host_targets(st.journal)
    leaked = [t for t in targets if is_loopback_host(t[1])]
    if options:
        assert leaked == [], leaked
    else:
        # By default only the DNS relay's own upstream is on the loopback: nothing the guest chose.
        assert {t for t in leaked} <= {("UdpOpen", "127.0.0.1")}, leaked


# ----------------------------------------------------------------------------- SYN flood


def test_syn_flood_to_an_unreachable_address_leaves_room(topo: Topology) -> None:
    st, relay = start(topo)
    # 300 connects to one address the dead end swallows: a share of the half-open slots, the
    # rest refused at once; the guest's own connection meanwhile completes.
    res = topo.guest_run(py(TOOLS, "syn-flood", UNROUTED, "80", "300", "10.0.2.2",
                            str(HTTP_PORT), "3", "64"), 60)
    one = json.loads(res.stdout)
    assert one["check_ok"], one
    assert one["pending_settled"] <= 64 and one["refused_settled"] >= 300 - 64, one
    # 150 connects to 150 different swallowed addresses (with the 64 above still half-open):
    # past half the slots, every half-open entry gets 5 s at most, so they end in RST well
    # before the host's 20 s connect timeout, and the guest's own connection still completes.
    dsts = ",".join(f"198.51.100.{i}" for i in range(10, 160))
    res = topo.guest_run(py(TOOLS, "syn-flood", dsts, "80", "150", HOST_ADDR, str(HTTP_PORT),
                            "9", "150"), 60)
    many = json.loads(res.stdout)
    assert many["check_ok"], many
    assert many["pending_at_check"] == 150, many  # really half-open for a while
    assert many["pending_end"] == 0 and many["refused_end"] == 150, many
    stop_and_replay(st, relay)
    # The journal shows the first flood's refusals were the stack's: only its share of
    # half-open slots ever became a connect to the host.
    to_unrouted = [t for t in host_targets(st.journal) if t == ("TcpConnect", UNROUTED)]
    assert 0 < len(to_unrouted) <= 64, len(to_unrouted)

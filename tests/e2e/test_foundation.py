"""A real Linux guest gets DHCP, pings the gateway and DNS address, over every transport.

Each run is then checked from three angles: tshark reads slirptrio's pcap without complaint,
QEMU's own capture of the same link shows the DHCP exchange, and the journal replays exactly.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import (
    MODES,
    REPO_ROOT,
    Lease,
    Mode,
    Relay,
    Slirptrio,
    Topology,
    dhcp_message_types,
    pcap_problems,
    pcap_protocols,
    replay,
)

pytestmark = pytest.mark.e2e

DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5


def assert_pings(topo: Topology, addr: str) -> None:
    out = topo.ping(addr, check=False)
    assert out.returncode == 0, f"ping {addr} failed:\n{out.stdout}{out.stderr}"
    assert "3 packets received" in out.stdout, out.stdout


def finish_and_check(st: Slirptrio, relay: Relay, protocols: set[str]) -> None:
    """Stop both ends, then check both captures and the journal's replay."""
    relay.stop()
    assert st.stop() == 0, st.proc.output()

    assert pcap_problems(st.pcap) == []
    seen = pcap_protocols(st.pcap)
    assert protocols <= seen, f"missing {protocols - seen} in {sorted(seen)}"

    assert relay.pcap is not None
    assert pcap_problems(relay.pcap) == []
    assert {DISCOVER, OFFER, REQUEST, ACK} <= set(dhcp_message_types(relay.pcap))

    result = replay(st.journal)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical" in result.stdout, result.stdout


@pytest.mark.parametrize("mode", MODES)
def test_dhcp_and_ping(topo: Topology, mode: Mode) -> None:
    st, relay = topo.attach(mode)
    lease = topo.udhcpc()
    assert (lease.ip, lease.router, lease.dns, lease.subnet) == (
        "10.0.2.15", "10.0.2.2", ["10.0.2.3"], "255.255.255.0"
    ), lease.raw
    assert lease.mtu in (None, 1500), lease.raw
    assert_pings(topo, "10.0.2.2")
    assert_pings(topo, "10.0.2.3")
    finish_and_check(st, relay, {"dhcp", "arp", "icmp"})


def test_custom_network(topo: Topology) -> None:
    st, relay = topo.attach(
        "listen", "net=192.168.76.0/24,dhcpstart=192.168.76.9,hostname=vm1,mtu=9000"
    )
    lease = topo.udhcpc()
    assert (lease.ip, lease.router, lease.dns, lease.hostname, lease.mtu) == (
        "192.168.76.9", "192.168.76.2", ["192.168.76.3"], "vm1", 9000
    ), lease.raw
    assert "mtu 9000" in topo.guest_run(["ip", "link", "show", "tap0"]).stdout
    assert_pings(topo, "192.168.76.2")
    finish_and_check(st, relay, {"dhcp", "arp", "icmp"})


def _set_mac(topo: Topology, mac: str) -> None:
    for argv in (["down"], ["address", mac], ["up"]):
        topo.guest_run(["ip", "link", "set", "dev", "tap0", *argv])


def test_reconnect_keeps_lease(topo: Topology) -> None:
    # Two MACs hold two leases, so the second one's address proves the table survived:
    # a stack that forgot its leases would hand the first free address (.15) out again.
    st, relay = topo.attach("listen")
    _set_mac(topo, "52:54:00:e2:e0:01")
    first = topo.udhcpc()
    _set_mac(topo, "52:54:00:e2:e0:02")
    second = topo.udhcpc()
    assert first.ip == "10.0.2.15"
    assert second.ip not in ("", first.ip), (first.raw, second.raw)
    assert_pings(topo, "10.0.2.2")

    relay.stop(signal.SIGKILL)  # an abrupt disconnect, not a goodbye
    assert st.proc.alive(), st.proc.output()
    relay = topo.start_relay(st.transport)
    again: Lease = topo.udhcpc()
    assert again.ip == second.ip, again.raw
    assert_pings(topo, "10.0.2.2")
    assert_pings(topo, "10.0.2.3")
    finish_and_check(st, relay, {"dhcp", "arp", "icmp"})


@pytest.mark.parametrize(
    ("options", "name"),
    [("net=10.0.2.0/24,bogus=1", "bogus"), ("dns=10.9.9.9", "dns")],
)
def test_bad_options_exit_2(tmp_path: Path, options: str, name: str) -> None:
    # No namespace needed: a refused option must exit before any socket is opened.
    argv = [
        sys.executable, "-m", "slirptrio", "run", "--listen", f"unix:{tmp_path / 's.sock'}",
        "--journal", str(tmp_path / "j"), "--pcap", str(tmp_path / "p"), options,
    ]  # fmt: skip
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=30, cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], proc.stderr
    assert not (tmp_path / "s.sock").exists()

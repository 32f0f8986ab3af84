"""Several guests on one stack (issue 22): three kernel guests, each behind a QEMU relay of its
own, all connected to one ``slirptrio run --listen`` socket (three switch ports).

They get distinct leases, ping and fetch HTTP from each other (every pair, both ways), each
reaches the host through 10.0.2.2, a host forward to the second guest's address reaches that
guest, a guest that leaves and comes back gets its address again, and the session (several
ports, arrivals and departures) replays identical.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from replay.summary import summarize_journal
from replay.timeline import render_svg
from tests.e2e.harness import REPO_ROOT, TAP, Topology, pcap_fields, replay, run

pytestmark = pytest.mark.e2e

HTTP_PORT = 8080
FWD_PORT = 2222
JOIN_FWD_PORT = 2224


def web_root(topo: Topology, name: str, text: str) -> str:
    root = topo.dir / f"www-{name}"
    root.mkdir()
    (root / "index.html").write_text(text + "\n")
    return str(root)


def fetch(guest: Topology, url: str) -> str:
    out = guest.guest_run(["curl", "-sS", "-m", "20", url], 60, check=False)
    return out.stdout.strip() or out.stderr.strip()


def test_three_guests_on_one_listen_socket(topo: Topology) -> None:
    g2, g3 = topo.add_guest("g2"), topo.add_guest("g3")
    guests = [topo, g2, g3]
    topo.host_spawn("http-host", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                                  "127.0.0.1", "--directory", web_root(topo, "host", "host")])
    topo.wait_listening(HTTP_PORT)
    st = topo.start_slirptrio("listen", f"hostfwd=tcp:127.0.0.1:{FWD_PORT}-10.0.2.16:{HTTP_PORT}",
                              seed=22)
    relays = [g.start_relay(st.transport) for g in guests]
    ips = [g.udhcpc().ip for g in guests]  # one after the other: .15, .16, .17
    assert ips == ["10.0.2.15", "10.0.2.16", "10.0.2.17"]
    for i, g in enumerate(guests):
        g.guest_spawn(f"httpd{i}", ["busybox", "httpd", "-f", "-p", str(HTTP_PORT), "-h",
                                    web_root(topo, f"g{i}", f"guest{i}")])
        g.wait_listening(HTTP_PORT, where="guest")

    for i, src in enumerate(guests):
        for j, dst in enumerate(ips):
            if i == j:
                continue
            res = src.ping(dst, count=2, wait=3, check=False)
            assert "2 packets received" in res.stdout and "DUP" not in res.stdout, res.stdout
            assert fetch(src, f"http://{dst}:{HTTP_PORT}/index.html") == f"guest{j}"
        assert fetch(src, f"http://10.0.2.2:{HTTP_PORT}/index.html") == "host"

    # IPv6 between guests too: SLAAC on the first two, ping6 each other through the switch.
    addr0, _ = topo.slaac()
    addr1, _ = g2.slaac()
    for src, dst in ((topo, addr1), (g2, addr0)):
        res = src.ping6(dst, count=2, wait=3, check=False)
        assert "2 packets received" in res.stdout and "DUP" not in res.stdout, res.stdout

    # The host forward leads to the second guest.
    out = topo.host_run(["curl", "-sS", "-m", "20",
                         f"http://127.0.0.1:{FWD_PORT}/index.html"], 60, check=False)
    assert out.stdout.strip() == "guest1", out.stdout + out.stderr

    # The third guest leaves (its QEMU goes) and comes back: the same address.
    relays[2].stop()
    ctl_wait = time.monotonic() + 30
    while "guest port 2 down" not in st.proc.output():
        assert time.monotonic() < ctl_wait, st.proc.output()
        time.sleep(0.1)
    relays[2] = g3.start_relay(st.transport)
    assert g3.udhcpc().ip == ips[2]
    assert fetch(g3, f"http://{ips[0]}:{HTTP_PORT}/index.html") == "guest0"

    for relay in relays:
        relay.stop()
    assert st.stop() == 0, st.proc.output()
    result = replay(st.journal, timeout=600)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr
    summary = summarize_journal(st.journal)
    assert sorted(summary.guests) == [0, 1, 2]
    assert len(summary.guests[2]["arrived_s"]) == 2  # the third guest came back
    pairs = {(a, b) for a, b in summary.between}
    assert {(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)} <= pairs, summary.between
    svg = render_svg(summary)  # the timeline groups its lanes per guest
    assert all(f'data-guest="{ip}"' in svg for ip in ips), svg[:2000]
    # pcapng with an interface per port: guest 0's pings to guest 2 cross ports 0 and 2
    ng = topo.dir / "ports.pcapng"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    run([sys.executable, "-m", "slirptrio", "replay", str(st.journal), "--pcapng", str(ng)],
        600, env=env)
    rows = pcap_fields(ng, f"icmp.type == 8 && ip.src == {ips[0]} && ip.dst == {ips[2]}",
                       ["frame.interface_name", "frame.packet_flags_direction"])
    assert {(r[0], int(r[1], 16)) for r in rows} == {("port 0", 1), ("port 2", 2)}, rows


def test_qemu_join_attaches_a_second_vm(topo: Topology) -> None:
    """``slirptrio qemu --join CONTROL -- qemu ... -netdev user,hostfwd=...``: the second QEMU
    joins the running stack (no stack of its own); its hostfwd is added to that stack while it
    runs, leads to its guest, and is removed when it ends."""
    g2 = topo.add_guest("g2")
    ctl = topo.dir / "st.ctl"
    st = topo.start_slirptrio("listen", seed=23, extra_args=["--control", str(ctl)])
    topo.start_relay(st.transport)
    assert topo.udhcpc().ip == "10.0.2.15"
    qemu = [
        "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
        "-no-user-config",
        "-netdev", f"tap,id=t0,ifname={TAP},script=no,downscript=no",
        "-netdev", f"user,id=b0,hostfwd=tcp:127.0.0.1:{JOIN_FWD_PORT}-10.0.2.16:{HTTP_PORT}",
        "-netdev", "hubport,id=p0,hubid=0,netdev=t0",
        "-netdev", "hubport,id=p1,hubid=0,netdev=b0",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    join = topo.spawn("join", g2.guest_cmd(
        [sys.executable, "-m", "slirptrio", "qemu", "--join", str(ctl), "--", *qemu]), env)
    join.wait_line("joined the stack", 30, tag=None)
    deadline = time.monotonic() + 30
    while not g2._tap_carrier():
        assert join.alive() and time.monotonic() < deadline, join.output()
        time.sleep(0.05)
    assert g2.udhcpc().ip == "10.0.2.16"
    g2.guest_spawn("httpd", ["busybox", "httpd", "-f", "-p", str(HTTP_PORT), "-h",
                             web_root(topo, "g2", "joined")])
    g2.wait_listening(HTTP_PORT, where="guest")
    assert fetch(topo, f"http://10.0.2.16:{HTTP_PORT}/index.html") == "joined"
    res = g2.ping("10.0.2.15", count=3, wait=3, check=False)
    assert "3 packets received" in res.stdout, res.stdout
    out = topo.host_run(["curl", "-sS", "-m", "20",
                         f"http://127.0.0.1:{JOIN_FWD_PORT}/index.html"], 60, check=False)
    assert out.stdout.strip() == "joined", out.stdout + out.stderr
    assert join.stop(timeout=30) in (0, 143), join.output()
    gone = topo.host_run(["curl", "-sS", "-m", "5",
                          f"http://127.0.0.1:{JOIN_FWD_PORT}/index.html"], 30, check=False)
    assert gone.returncode != 0, gone.stdout  # the forward left with its VM
    assert st.stop() == 0, st.proc.output()
    result = replay(st.journal, timeout=600)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


BUS = "230.0.0.22:1234"


def test_two_vms_on_qemu_multicast_bus(topo: Topology) -> None:
    """``slirptrio run --mcast GROUP:PORT`` is one more member of QEMU's ``socket,mcast=`` bus,
    on loopback in the host namespace only (a 224.0.0.0/4 route via lo there, nowhere else):
    two guests whose relays sit on the bus get leases, reach each other and the host, and the
    session replays identical."""
    from tests.e2e.harness import _HUB_FD0, _OPEN_TAP

    g2 = topo.add_guest("g2")
    run(["ip", "-n", topo.host_ns, "link", "set", "lo", "multicast", "on"], 10)
    run(["ip", "-n", topo.host_ns, "route", "add", "224.0.0.0/4", "dev", "lo"], 10)
    topo.host_spawn("http-host", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                                  "127.0.0.1", "--directory", web_root(topo, "host", "host")])
    topo.wait_listening(HTTP_PORT)
    journal, pcap = topo.dir / "mcast.journal", topo.dir / "mcast.pcap"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    st = topo.spawn("slirptrio-mcast", topo.host_cmd([
        sys.executable, "-m", "slirptrio", "run", "--mcast", BUS, "--journal", str(journal),
        "--pcap", str(pcap), "--seed", "5", "-v"]), env)
    st.wait_line("slirptrio: ready", 30)
    for i, g in enumerate((topo, g2)):
        # QEMU's bus socket in the host namespace, its tap opened in the guest's.
        fd = str(_HUB_FD0)
        topo.spawn(f"qemu-mcast-{i}", [
            "ip", "netns", "exec", g.guest_ns, sys.executable, "-c", _OPEN_TAP, TAP, fd,
            "nsenter", f"--net=/run/netns/{topo.host_ns}",
            "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
            "-no-user-config", "-netdev", f"tap,id=t0,fd={fd}",
            "-netdev", f"socket,id=b0,mcast={BUS},localaddr=127.0.0.1",
            "-netdev", "hubport,id=p0,hubid=0,netdev=t0",
            "-netdev", "hubport,id=p1,hubid=0,netdev=b0",
        ])  # fmt: skip
        deadline = time.monotonic() + 30
        while not g._tap_carrier():
            assert time.monotonic() < deadline, topo.logs()
            time.sleep(0.05)
    ip1, ip2 = topo.udhcpc().ip, g2.udhcpc().ip
    assert {ip1, ip2} == {"10.0.2.15", "10.0.2.16"}
    for src, dst in ((topo, ip2), (g2, ip1)):
        res = src.ping(dst, count=2, wait=3, check=False)
        assert "2 packets received" in res.stdout and "DUP" not in res.stdout, res.stdout
        assert fetch(src, f"http://10.0.2.2:{HTTP_PORT}/index.html") == "host"
    assert st.stop() == 0, st.output()
    result = replay(journal, timeout=600)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


def test_legacy_socket_and_stream_guests_on_one_tcp_listener(topo: Topology) -> None:
    """``--listen tcp:`` takes QEMU's legacy ``-netdev socket,connect=`` and ``-netdev
    stream`` at once (the same framing): two guests, one of each, share the network."""
    from tests.e2e.harness import _HUB_FD0, _OPEN_TAP

    g2 = topo.add_guest("g2")
    port = 10022  # the host namespace is this test's own
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    journal = topo.dir / "tcp.journal"
    st = topo.spawn("slirptrio-tcp", topo.host_cmd([
        sys.executable, "-m", "slirptrio", "run", "--listen", f"tcp:127.0.0.1:{port}",
        "--journal", str(journal), "--no-pcap", "--seed", "9", "-v"]), env)
    st.wait_line("slirptrio: ready", 30)
    netdevs = [f"socket,id=b0,connect=127.0.0.1:{port}",
               f"stream,id=b0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"]
    for i, (g, netdev) in enumerate(zip((topo, g2), netdevs, strict=True)):
        fd = str(_HUB_FD0)
        topo.spawn(f"qemu-tcp-{i}", [
            "ip", "netns", "exec", g.guest_ns, sys.executable, "-c", _OPEN_TAP, TAP, fd,
            "nsenter", f"--net=/run/netns/{topo.host_ns}",
            "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
            "-no-user-config", "-netdev", f"tap,id=t0,fd={fd}", "-netdev", netdev,
            "-netdev", "hubport,id=p0,hubid=0,netdev=t0",
            "-netdev", "hubport,id=p1,hubid=0,netdev=b0",
        ])  # fmt: skip
        deadline = time.monotonic() + 30
        while not g._tap_carrier():
            assert time.monotonic() < deadline, topo.logs()
            time.sleep(0.05)
    ip1, ip2 = topo.udhcpc().ip, g2.udhcpc().ip
    assert (ip1, ip2) == ("10.0.2.15", "10.0.2.16")
    for src, dst in ((topo, ip2), (g2, ip1)):
        res = src.ping(dst, count=2, wait=3, check=False)
        assert "2 packets received" in res.stdout and "DUP" not in res.stdout, res.stdout
    assert st.stop() == 0, st.output()
    result = replay(journal, timeout=600)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr

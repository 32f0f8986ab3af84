"""Several stations on one link, and a guest right after attach (issues #24 and #21 item 6).

* Two kernel guests behind one QEMU hub (``-machine none``, two taps in two namespaces and a
  ``-netdev stream`` to slirptrio on hub 0, as QEMU's documentation extends one user network to
  several VMs): they ping each other with no duplicate replies and fetch HTTP from each other
  (every request answered by the other guest, though the host listens on the same port), and
  both reach the host; the session replays identical and its summary shows the guest-to-guest
  traffic only as a count.
* Right after attach, with IPv6 coming up as the guest's link does: a name with A and AAAA
  records, to a closed port, fails at once with "connection refused" (not after a timeout of
  SYNs from ::1); frames from 127.0.0.1 and ::1 reach nothing and are counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.e2e.harness import (
    HOST_ADDR,
    HOST_ADDR6,
    REPO_ROOT,
    TAP,
    Topology,
    pcap_fields,
    pcap_problems,
    replay,
    run,
)

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
TOOLS = str(REPO_ROOT / "tests" / "e2e" / "stations_tools.py")
HTTP_PORT = 8080
DNS_PORT = 5353
LISTEN_PORT = 7001
CLOSED_PORT = 9


def replay_json(journal: object) -> dict[str, object]:
    env_argv = [sys.executable, "-m", "slirptrio", "replay", str(journal), "--json"]
    out = subprocess.run(env_argv, capture_output=True, text=True, timeout=300,
                         cwd=REPO_ROOT, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def web_root(topo: Topology, name: str, text: str) -> str:
    root = topo.dir / f"www-{name}"
    root.mkdir()
    (root / "index.html").write_text(text + "\n")
    return str(root)


def test_two_guests_on_one_hub(topo: Topology) -> None:
    g2 = topo.add_guest("g2")
    topo.host_spawn("http-host", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind",
                                  "127.0.0.1", "--directory", web_root(topo, "host", "host")])
    topo.wait_listening(HTTP_PORT)
    st = topo.start_slirptrio("listen", seed=24)
    relay = topo.start_hub_relay(st.transport, [g2])
    ip1, ip2 = topo.udhcpc().ip, g2.udhcpc().ip
    assert {ip1, ip2} == {"10.0.2.15", "10.0.2.16"}
    g2.guest_spawn("httpd", ["busybox", "httpd", "-f", "-p", str(HTTP_PORT), "-h",
                             web_root(topo, "g2", "guest2")])
    g2.wait_listening(HTTP_PORT, where="guest")

    # Ping between the guests, both ways: every reply once (the stack used to answer too).
    for src, dst in ((topo, ip2), (g2, ip1)):
        res = src.ping(dst, count=5, wait=2, check=False)
        assert "5 packets received" in res.stdout and "DUP" not in res.stdout, res.stdout

    # 20 of 20 HTTP requests to guest 2 answered by guest 2, never by the host's listener.
    loop = topo.guest_run(["sh", "-c", f"for i in $(seq 20); do curl -sS -m 10 "
                           f"http://{ip2}:{HTTP_PORT}/index.html || echo FAILED; done"], 300,
                          check=False)
    answers = loop.stdout.split()
    assert answers.count("guest2") == 20 and len(answers) == 20, loop.stdout + loop.stderr

    # Both reach the host, by its address and through the NAT.
    for guest in (topo, g2):
        out = guest.guest_run(["curl", "-sS", "-m", "10",
                               f"http://10.0.2.2:{HTTP_PORT}/index.html"], 30)
        assert out.stdout.strip() == "host", out.stdout + out.stderr
        assert "3 packets received" in guest.ping(HOST_ADDR, check=False).stdout

    # IPv6 between them too: SLAAC on both, then ping6 each other, no duplicates.
    addr1, _ = topo.slaac()
    addr2, _ = g2.slaac()
    for src, dst in ((topo, addr2), (g2, addr1)):
        res = src.ping6(dst, count=3, check=False)
        assert "3 packets received" in res.stdout and "DUP" not in res.stdout, res.stdout

    relay.stop()
    assert st.stop() == 0, st.proc.output()
    assert pcap_problems(st.pcap) == []
    result = replay(st.journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr
    summary = replay_json(st.journal)
    drops = summary["drops"]
    assert isinstance(drops, dict) and drops.get("not_for_us", 0) > 0, drops
    flows = summary["flows"]
    assert isinstance(flows, list)
    between = [f for f in flows if ip2 in f["remote"] or ip1 in f["remote"]
               or addr1 in f["remote"] or addr2 in f["remote"]]
    assert between == [], between
    # the stack never answered in a guest's name: nothing it sent came from a guest address
    sent = pcap_fields(st.pcap, f"eth.src == 52:55:0a:00:02:02 && ip.src == {ip2}", ["ip.src"])
    assert sent == []


def test_right_after_attach(topo: Topology) -> None:
    """A dual-stack name to a closed port fails at once; martian sources reach nothing."""
    # The DNS test server answers A 203.0.113.77 and AAAA 2001:db8::77: the host namespace's
    # own (closed port: its kernel refuses at once).
    topo.host_run(["ip", "addr", "add", "203.0.113.77/32", "dev", "lo"])
    topo.host_run(["ip", "-6", "addr", "add", "2001:db8::77/128", "dev", "lo", "nodad"])
    topo.host_spawn("dns", [sys.executable, SERVERS, "dns", str(DNS_PORT)]).wait_line(
        "listening", 10)
    listener = topo.host_spawn("listen", [sys.executable, TOOLS, "listen", str(LISTEN_PORT),
                                          HOST_ADDR, HOST_ADDR6])
    listener.wait_line("listening", 10)
    # IPv6 is off on the tap until the link comes up, as in a VM that boots.
    run(["ip", "netns", "exec", topo.guest_ns, "sysctl", "-q", "-w",
         f"net.ipv6.conf.{TAP}.disable_ipv6=1"], 10)
    st, relay = topo.attach("listen", extra_args=["--dns-upstream", f"127.0.0.1:{DNS_PORT}"])
    for key, value in (("accept_ra", "1"), ("autoconf", "1"), ("disable_ipv6", "0")):
        run(["ip", "netns", "exec", topo.guest_ns, "sysctl", "-q", "-w",
             f"net.ipv6.conf.{TAP}.{key}={value}"], 10)
    lease = topo.udhcpc()
    start = time.monotonic()
    curl = topo.guest_run(["curl", "-sS", "-v", "-o", "/dev/null", "-m", "60",
                           f"http://good.test:{CLOSED_PORT}/"], 90, check=False)
    elapsed = time.monotonic() - start
    tries = [line for line in curl.stderr.splitlines() if "connect" in line.lower()
             or "Trying" in line]
    print(f"curl to a closed port of a dual-stack name right after attach: {elapsed:.3f} s; "
          + "; ".join(tries))
    # exit 7: the name resolved (A and AAAA), then no connection; IPv4 refused, and IPv6
    # refused or unreachable (no route yet), never left waiting for a timeout
    assert curl.returncode == 7, curl.stderr
    assert "connect to 203.0.113.77 port 9 failed: Connection refused" in curl.stderr, tries
    assert "Trying [2001:db8::77]:9" in curl.stderr, tries
    assert elapsed < 5.0, f"{elapsed:.3f} s: the guest waited for a connection timeout"

    # And all through the guest's IPv6 boot (link-local address, solicitation, advertisement,
    # SLAAC address still tentative, then usable): every try fails at once, none times out.
    loop = topo.guest_run(["sh", "-c", "for i in $(seq 30); do curl -sS -v -o /dev/null -m 5 "
                           f"-w 'time=%{{time_total}}\\n' http://good.test:{CLOSED_PORT}/; "
                           "echo rc=$?; sleep 0.1; done"], 300, check=False)
    codes = [line for line in loop.stdout.split() if line.startswith("rc=")]
    times = [float(line[5:]) for line in loop.stdout.split() if line.startswith("time=")]
    v6_refused = loop.stderr.count("connect to 2001:db8::77 port 9 failed: Connection refused")
    print(f"30 tries during IPv6 boot: slowest {max(times):.3f} s; IPv6 refused in "
          f"{v6_refused}, unreachable in {loop.stderr.count('Network is unreachable')}")
    assert codes == ["rc=7"] * 30, loop.stdout + loop.stderr
    # once IPv6 is up, its attempt too is refused by the host (through the stack)
    topo.slaac("fec0:", 30)
    curl = topo.guest_run(["curl", "-sS", "-v", "-o", "/dev/null", "-m", "10",
                           f"http://good.test:{CLOSED_PORT}/"], 30, check=False)
    assert "connect to 2001:db8::77 port 9 failed: Connection refused" in curl.stderr, curl.stderr

    # Frames from 127.0.0.1 and ::1 (TCP, UDP, echo): nothing reaches the host's servers,
    # nothing is answered; the control datagram after them does arrive.
    sent = topo.guest_run([sys.executable, TOOLS, "send-martians", TAP, lease.ip,
                           str(LISTEN_PORT), HOST_ADDR, HOST_ADDR6], 30)
    assert sent.stdout.split() == ["sent", "6"], sent.stdout
    listener.wait_line("control", 30)
    assert [line for line in listener.lines("out") if "listening" not in line] == [
        f"udp {HOST_ADDR} control"]  # NATed from the host namespace's own address

    relay.stop()
    assert st.stop() == 0, st.proc.output()
    answered = pcap_fields(st.pcap, "ip.dst == 127.0.0.1 || ipv6.dst == ::1", ["frame.number"])
    assert answered == []
    summary = replay_json(st.journal)
    assert summary["replay"] == "identical"
    drops = summary["drops"]
    assert isinstance(drops, dict) and drops.get("martian_src", 0) >= 6, drops

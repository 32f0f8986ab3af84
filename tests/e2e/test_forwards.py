"""Port forwards, the control socket and the embedding API, with the kernel as the guest."""

from __future__ import annotations

import json
import re
import signal
import sys

import pytest

from tests.e2e.evidence import guest_sent, host_targets, tcp_resets_to_guest
from tests.e2e.harness import (
    HOST_ADDR,
    REPO_ROOT,
    Relay,
    Slirptrio,
    Topology,
    replay,
)

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
GUEST_ECHO = 2222
GUEST_UDP = 5005
HOST_HTTP = 8080


def py(*args: str) -> list[str]:
    return [sys.executable, SERVERS, *args]


def ctl(topo: Topology, sock: str, *args: str) -> dict[str, object]:
    out = topo.host_run(
        [sys.executable, "-m", "slirptrio", "ctl", sock, "--json", *args], 30, check=False
    )
    answer = json.loads(out.stdout)
    assert isinstance(answer, dict)
    return answer


def start(topo: Topology, options: str) -> tuple[Slirptrio, Relay, str]:
    topo.host_spawn("http", py("http", "127.0.0.1", str(HOST_HTTP))).wait_line("listening", 10)
    control = str(topo.dir / "ctl.sock")
    st, relay = topo.attach("listen", options, extra_args=["--control", control,
                                                            "--dns-upstream", "127.0.0.1:5353"])
    assert topo.udhcpc().ip == "10.0.2.15"
    topo.guest_spawn("guest-echo", py("tcp-echo", "0.0.0.0", str(GUEST_ECHO))).wait_line(
        "listening", 10
    )
    topo.guest_spawn("guest-udp", py("udp-echo-any", str(GUEST_UDP))).wait_line("listening", 10)
    return st, relay, control


def host_port(st: Slirptrio, rule: str) -> int:
    for line in st.proc.lines():
        m = re.search(re.escape(f"hostfwd {rule}: host port ") + r"(\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no port reported for {rule}: {st.proc.output()}")


def stop_and_replay(st: Slirptrio, relay: Relay) -> None:
    relay.stop()
    assert st.stop() == 0, st.proc.output()
    result = replay(st.journal, timeout=300)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


def host_py(topo: Topology, *args: str) -> str:
    return topo.host_run(py(*args), 60).stdout.strip()


@pytest.mark.parametrize("restrict", ["off", "on"])
def test_hostfwd_guestfwd_ctl(topo: Topology, restrict: str) -> None:
    tcp_rule = f"tcp:127.0.0.1:0-:{GUEST_ECHO}"
    udp_rule = f"udp:127.0.0.1:0-:{GUEST_UDP}"
    unix_path = topo.dir / "fwd.sock"
    options = (
        f"restrict={restrict},hostfwd={tcp_rule},hostfwd={udp_rule},"
        f"hostfwd=unix:{unix_path}-:{GUEST_ECHO},"
        f"guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:{HOST_HTTP},"
        "guestfwd=tcp:10.0.2.101:7-cmd:cat"
    )
    st, relay, control = start(topo, options)
    tport, uport = host_port(st, tcp_rule), host_port(st, udp_rule)
    assert tport > 0 and uport > 0
    # host -> guest, TCP and UDP, through ports that were 0 in the rules
    assert host_py(topo, "tcp-client", "127.0.0.1", str(tport), "300000") == "ok"
    assert host_py(topo, "udp-client", "127.0.0.1", str(uport), "1000") == "ok 127.0.0.1"
    assert host_py(topo, "tcp-client", f"unix:{unix_path}", "0", "50000") == "ok"
    # guest -> host socket, and guest -> a spawned `cat`
    body = topo.guest_run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w",
                           "%{size_download}", "http://10.0.2.100/1234"], 30)
    assert body.stdout == "1234", body
    echo = topo.guest_run(["sh", "-c", "printf 'meow\\n' | busybox nc 10.0.2.101 7"], 30)
    assert echo.stdout == "meow\n", echo
    # A forward added at runtime over the control socket, with an ephemeral port.
    added = ctl(topo, control, "hostfwd-add", f"tcp:127.0.0.1:0-:{GUEST_ECHO}")
    assert added["ok"], added
    port2 = added["port"]
    assert isinstance(port2, int) and port2 not in (0, tport)
    assert host_py(topo, "tcp-client", "127.0.0.1", str(port2), "1000") == "ok"
    # `info` lists a flow that is open right now.
    # Held 8 s: long enough for both ctl calls below even on a loaded machine.
    holder = topo.host_spawn("holder", py("tcp-client", "127.0.0.1", str(port2), "10", "8"))
    for _ in range(50):
        info = ctl(topo, control, "info")
        flows = info["flows"]
        assert isinstance(flows, list)
        if any(f["proto"] == "tcp" and f["guest"] == f"10.0.2.15:{GUEST_ECHO}" for f in flows):
            break
        topo.host_run(["sleep", "0.1"], 5)
    else:
        raise AssertionError(f"no forwarded flow in info: {info}")
    human = topo.host_run([sys.executable, "-m", "slirptrio", "ctl", control, "info"], 30).stdout
    assert f"10.0.2.15:{GUEST_ECHO}" in human and "Proto[State]" in human
    assert holder.wait(30) == 0 and holder.lines()[-1] == "ok"
    removed = ctl(topo, control, "hostfwd-remove", f"tcp:127.0.0.1:{port2}")
    assert removed["ok"], removed
    assert host_py(topo, "tcp-client", "127.0.0.1", str(port2), "10").startswith("error")
    bad = ctl(topo, control, "hostfwd-add", "tcp:nonsense")
    assert not bad["ok"] and "error" in bad
    stats = ctl(topo, control, "stats")
    counters = stats["counters"]
    assert isinstance(counters, dict) and counters["frames_in"] > 0
    if restrict == "on":
        # Outbound TCP, UDP and ICMP are blocked while the forwards above worked.
        topo.guest_run(["ip", "route", "add", "default", "via", "10.0.2.2", "dev", "tap0"])
        out = topo.guest_run(["curl", "-sS", "--max-time", "5", f"http://10.0.2.2:{HOST_HTTP}/1"],
                             30, check=False)
        assert out.returncode == 7, out
        assert host_py(topo, "udp-client", "127.0.0.1", str(uport), "10") == "ok 127.0.0.1"
        udp = topo.guest_run(py("udp-client", HOST_ADDR, "9", "10"), 30).stdout.strip()
        assert udp == "timeout"
        ping = topo.ping(HOST_ADDR, count=1, check=False)
        assert "1 packets received" not in ping.stdout
    stop_and_replay(st, relay)
    if restrict == "on":
        # Each attempt reached the stack, which never asked the shell to connect, open a UDP
        # flow or ping anywhere but through the guest forwards (the host forwards are
        # inbound; a DNS upstream is the relay's own), and reset the guest's TCP itself.
        for dst, proto in (("10.0.2.2", 6), (HOST_ADDR, 17), (HOST_ADDR, 1)):
            assert guest_sent(st.journal, dst, proto), (dst, proto)
        outbound = [t for t in host_targets(st.journal) if not t[1].startswith("guestfwd:")
                    and (t[0] != "UdpOpen" or t[1] == HOST_ADDR)]
        assert outbound == [], outbound
        assert [p for p in tcp_resets_to_guest(st.journal) if p.src == "10.0.2.2"
                and p.ip.data.sport == HOST_HTTP]


def test_embedding_api_handler_and_connect_to_guest(topo: Topology) -> None:
    transport = topo.transport("listen")
    journal = topo.dir / "embed.journal"
    trigger = topo.dir / "go"
    demo = str(REPO_ROOT / "tests" / "e2e" / "embed_demo.py")
    env_argv = ["env", f"PYTHONPATH={REPO_ROOT}", sys.executable, demo, str(transport.path),
                str(journal), str(trigger), str(GUEST_ECHO)]
    proc = topo.host_spawn("embed", env_argv)
    proc.wait_line("ready", 20)
    relay = topo.start_relay(transport)
    assert topo.udhcpc().ip == "10.0.2.15"
    topo.guest_spawn("guest-echo", py("tcp-echo", "0.0.0.0", str(GUEST_ECHO))).wait_line(
        "listening", 10
    )
    # The guest's curl is served by the trio handler inside the embedding program.
    page = topo.guest_run(["curl", "-sS", "--max-time", "20", "http://10.0.2.100/hi"], 30)
    assert page.stdout == "hello from a trio handler: GET /hi HTTP/1.1", page.stdout
    # The program talks to the guest's server with no host socket at all.
    trigger.write_text("go")
    line = proc.wait_line("connect_to_guest", 30)
    assert line.endswith("ok"), line
    relay.stop()
    assert proc.stop(signal.SIGTERM) == 0, proc.output()
    result = replay(journal, timeout=120)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr

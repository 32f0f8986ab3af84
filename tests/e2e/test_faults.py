"""Fault rules with the Linux kernel as the guest: iperf3 under loss and a rate limit, a refused
connect and a reset seen by curl, SERVFAIL seen by nslookup, rules added and removed through
``slirptrio ctl`` mid-session; every session replays identical (drops, delays and resets too).

Speeds are printed, never asserted closely (the machine is shared): the rate-limited run's
measured rate is reported against the rule's and held to generous bounds only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import HOST_ADDR, REPO_ROOT, Relay, Slirptrio, Topology, replay, run

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
HTTP_PORT = 8080
IPERF_PORT = 5201


def py(*args: str) -> list[str]:
    return [sys.executable, SERVERS, *args]


def ctl(control: Path, *words: str) -> str:
    """``slirptrio ctl CONTROL WORDS...`` (the control socket is a path: no namespace)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    out = run([sys.executable, "-m", "slirptrio", "ctl", str(control), *words], 30, env=env)
    return out.stdout


def start(topo: Topology, faults: str = "", *, mtu: int = 1500) -> tuple[Slirptrio, Relay, Path]:
    topo.host_spawn("http", py("http", HOST_ADDR, str(HTTP_PORT))).wait_line("listening", 10)
    topo.host_spawn("http-lo", py("http", "127.0.0.1", str(HTTP_PORT))).wait_line("listening", 10)
    topo.host_spawn("dns", py("dns", "5353")).wait_line("listening", 10)
    control = topo.dir / "ctl.sock"
    extra = ["--dns-upstream", "127.0.0.1:5353", "--control", str(control)]
    if faults:
        path = topo.dir / "faults.toml"
        path.write_text(faults)
        extra += ["--faults", str(path)]
    st, relay = topo.attach("listen", f"mtu={mtu}", extra_args=extra, seed=23)
    assert topo.udhcpc().ip == "10.0.2.15"
    return st, relay, control


def stop_and_replay(st: Slirptrio, relay: Relay) -> None:
    relay.stop()
    assert st.stop() == 0, st.proc.output()
    result = replay(st.journal, timeout=600)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


def iperf(topo: Topology, seconds: int) -> dict[str, float]:
    """iperf3 from the guest to the host namespace: received rate and retransmissions."""
    argv = ["iperf3", "-c", HOST_ADDR, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    proc = topo.guest_run(argv, seconds + 90, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"iperf3 gave no JSON (exit {proc.returncode}):\n"
                             f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}") from None
    assert "error" not in report, report["error"]
    end = report["end"]
    return {"bps": end["sum_received"]["bits_per_second"],
            "retransmits": end.get("sum_sent", {}).get("retransmits", 0)}


def _rules(control: Path) -> list[dict[str, object]]:
    answer = json.loads(ctl(control, "--json", "fault", "list"))
    assert answer["ok"], answer
    rules = answer["faults"]
    assert isinstance(rules, list)
    return rules


def test_iperf_under_loss_and_a_rate_rule_added_through_ctl(topo: Topology) -> None:
    topo.host_spawn("iperf3", ["iperf3", "-s", "-B", HOST_ADDR, "-p", str(IPERF_PORT)])
    topo.wait_listening(IPERF_PORT)
    st, relay, control = start(topo)
    out = ctl(control, "fault", "add", "proto=tcp", f"remote={HOST_ADDR}", "loss=1%")
    assert out.startswith("fault rule 1: proto=tcp remote=203.0.113.1/32 loss=1%"), out
    lossy = iperf(topo, 5)
    (rule,) = _rules(control)
    stats = rule["stats"]
    assert isinstance(stats, dict)
    print(f"\niperf3 under 1% loss: {lossy['bps'] / 1e6:.1f} Mbit/s, "
          f"{lossy['retransmits']} retransmissions; rule: {stats}")
    assert lossy["bps"] > 0 and stats["dropped"] > 0
    # about 1% of what the rule saw: binomial, generous
    assert 0.002 < stats["dropped"] / stats["matched"] < 0.03
    assert ctl(control, "fault", "remove", "1").strip() == "removed"
    assert _rules(control) == []

    ctl(control, "fault", "add", "dir=out", "proto=tcp", "rport=5201", "rate=10mbit")
    limited = iperf(topo, 8)
    mbps = limited["bps"] / 1e6
    print(f"iperf3 under a 10 Mbit/s rule (Ethernet frames): {mbps:.2f} Mbit/s received "
          f"({100 * (mbps / 10 - 1):+.1f}% of the rule; TCP/IP headers are ~4% at MTU 1500)")
    assert 5 < mbps < 11
    ctl(control, "fault", "clear")
    assert _rules(control) == []
    stop_and_replay(st, relay)


FAULTS = f"""\
# refused connects, a reset after 100 kB, SERVFAIL for one domain
[[rule]]
remote = "{HOST_ADDR}"
rport = {HTTP_PORT}
connect = "refuse"

[[rule]]
remote = "10.0.2.2"
rport = {HTTP_PORT}
reset-bytes = "100k"

[[rule]]
text = "name=*.fail.test dns=servfail"
"""


def test_refuse_reset_and_servfail_from_a_faults_file(topo: Topology) -> None:
    st, relay, control = start(topo, FAULTS)
    # refused: curl's "couldn't connect" (7), though a server listens there
    out = topo.guest_run(["curl", "-sS", "--max-time", "20", f"http://{HOST_ADDR}:{HTTP_PORT}/10"],
                         40, check=False)
    assert out.returncode == 7, (out.returncode, out.stderr)
    # reset after 100 kB: curl's "failure receiving" (56) in the middle of a 1 MB body
    out = topo.guest_run(["curl", "-sS", "--max-time", "30", "-o", "/dev/null",
                          f"http://10.0.2.2:{HTTP_PORT}/1000000"], 60, check=False)
    assert out.returncode == 56, (out.returncode, out.stderr)
    # a small body under the limit goes through the same rule untouched
    out = topo.guest_run(["curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w",
                          "%{size_download}", f"http://10.0.2.2:{HTTP_PORT}/100"], 60, check=False)
    assert out.returncode == 0 and out.stdout == "100", (out.stdout, out.stderr)
    # SERVFAIL for the matching name, an answer for another
    bad = topo.guest_run(["busybox", "nslookup", "www.fail.test", "10.0.2.3"], 30, check=False)
    assert "SERVFAIL" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    good = topo.guest_run(["busybox", "nslookup", "www.ok.test", "10.0.2.3"], 30, check=False)
    assert "203.0.113.77" in good.stdout, good.stdout + good.stderr
    rules = {r["id"]: r["stats"] for r in _rules(control)}
    print(f"\nrules: {rules}")
    assert rules[1]["refused"] >= 1 and rules[2]["reset"] == 1  # type: ignore[index]
    assert rules[3]["dns_servfail"] >= 1  # type: ignore[index]
    stats = json.loads(ctl(control, "--json", "stats"))
    assert stats["counters"]["fault_resets"] == 1 and len(stats["faults"]) == 3
    stop_and_replay(st, relay)
    summary = subprocess.run([sys.executable, "-m", "slirptrio", "replay", "--summary",
                              str(st.journal)], capture_output=True, text=True, timeout=300,
                             cwd=REPO_ROOT)
    assert "Fault rules (3):" in summary.stdout, summary.stdout + summary.stderr

"""Issue #18's failure, as a user met it: IPv6 flows open while the flight recorder starts a new
segment. With the Linux kernel as the guest, a ping6 and a UDP datagram to an outside IPv6
address leave IPv6 echo and UDP flows in the core; then 8 MiB over HTTP with
``--journal-max 4M`` makes the recorder start segment after segment, each with a snapshot of
those flows. The download completes with the right checksum, the stack lives to the end, and
the journal replays identical from each of its segments' snapshots."""

from __future__ import annotations

import hashlib
import sys

import pytest

from replay.engine import Target, format_divergence, replay_journal
from slirptrio.journal import SegmentStart, open_journal
from tests.e2e.harness import HOST_ADDR, HOST_ADDR6, REPO_ROOT, Topology, replay
from tests.e2e.servers import pattern

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
HTTP_PORT = 8080
ECHO_PORT = 9999
MiB = 1 << 20


def py(*args: str) -> list[str]:
    return [sys.executable, SERVERS, *args]


def test_ipv6_flows_survive_journal_segments(topo: Topology) -> None:
    topo.host_spawn("http", py("http", HOST_ADDR, str(HTTP_PORT))).wait_line("listening", 10)
    topo.host_spawn("dns", py("dns", "5353")).wait_line("listening", 10)
    topo.host_spawn("echo6", py("udp-echo", HOST_ADDR6, str(ECHO_PORT))).wait_line(
        "listening", 10
    )
    st, relay = topo.attach("listen", "", extra_args=[
        "--dns-upstream", "127.0.0.1:5353", "--journal-max", "4M",
    ])
    assert topo.udhcpc().ip == "10.0.2.15"
    topo.slaac()
    # IPv6 echo and UDP flows to an outside address, alive in the core from here on.
    res = topo.ping6(HOST_ADDR6, count=2, check=False)
    assert "2 packets received" in res.stdout, res.stdout + res.stderr
    out = topo.guest_run(py("udp-client", HOST_ADDR6, str(ECHO_PORT), "100"), 30)
    assert out.stdout.strip() == f"ok {HOST_ADDR6}", out.stdout + out.stderr

    size = 8 * MiB
    got = topo.guest_run(["sh", "-c", f"curl -sS --max-time 300 "
                                      f"http://{HOST_ADDR}:{HTTP_PORT}/{size} | sha256sum"], 320)
    assert got.stdout.split()[0] == hashlib.sha256(pattern(size)).hexdigest(), (
        got.stdout + got.stderr + st.proc.output()
    )
    # The stack is still there and answers, over both families.
    assert st.proc.alive()
    res = topo.ping6("fec0::2", count=1, check=False)
    assert "1 packets received" in res.stdout, res.stdout + res.stderr
    relay.stop()
    assert st.stop() == 0, st.proc.output()
    log = st.proc.output()
    assert "cannot snapshot" not in log and "Traceback" not in log, log

    # Segments rotated (4 MiB / 16 per segment), each opening with a snapshot of a core that
    # held the IPv6 flows; the whole journal and every segment's snapshot replay identical.
    starts = [e.snapshot["seq"] for e in open_journal(st.journal).entries()
              if isinstance(e, SegmentStart) and e.snapshot is not None]
    assert len(starts) >= 3 and starts[-1] > 0, starts
    whole = replay(st.journal)
    assert whole.returncode == 0 and "identical" in whole.stdout, whole.stdout + whole.stderr
    for seq in starts:
        result = replay_journal(st.journal, start=Target(seq=seq))
        assert result.divergence is None, format_divergence(result)
        assert result.first is not None and result.first.seq >= seq and not result.gaps

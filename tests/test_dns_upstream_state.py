"""The DNS relay's upstream state: one log line and one count per change (up -> failing ->
up), not one per query; ``ctl info`` shows it; the state snapshots and restores."""

from __future__ import annotations

import errno
import logging

import pytest

from slirptrio.cli.ctl import format_answer
from slirptrio.core.events import UdpError, UdpReceived, UdpSend
from slirptrio.core.udp import DNS_QUERY_TIMEOUT_NS
from tests.test_dns_core import answer, ask, query, started

LOGGER = "slirptrio.core.dns.upstream"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_silent_upstream_is_logged_once_and_its_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    h = started()
    assert h.nat.dns.upstream_states() == [{"upstream": "127.0.0.53:53", "state": "unused"}]
    t = 0
    for i in range(5):  # five queries, all unanswered
        ask(h, query(0x100 + i, f"q{i}.example"), now=t)
        t += DNS_QUERY_TIMEOUT_NS
        h.nat.tick(t)
    assert h.counters["dns_timeouts"] == 5 and h.counters["dns_servfail"] == 5
    assert h.counters["dns_upstream_failing"] == 1
    assert lines(caplog) == [
        "DNS upstream 127.0.0.53:53 is failing: no answer in 2 s; the guest gets SERVFAIL "
        "after 2.0 s until it answers"]
    state = h.nat.dns.upstream_states()[0]["state"]
    assert state.startswith("failing: no answer")
    # It answers again: one line, and the state is up.
    send = ask(h, query(0x200, "back.example"), now=t)[-1]
    assert isinstance(send, UdpSend)
    h.nat.host_event(UdpReceived(send.flow, answer(send.data)), t + 1)
    send = ask(h, query(0x201, "again.example"), now=t + 2)[-1]
    assert isinstance(send, UdpSend)
    h.nat.host_event(UdpReceived(send.flow, answer(send.data)), t + 3)
    assert h.nat.dns.upstream_states()[0]["state"] == "up"
    assert lines(caplog)[1:] == ["DNS upstream 127.0.0.53:53 answers again"]
    assert h.counters["dns_upstream_recovered"] == 1


def test_a_socket_error_marks_the_upstream_failing_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    h = started("127.0.0.53:53 127.0.0.54:53")
    send = ask(h, query(1))[-1]
    assert isinstance(send, UdpSend)
    h.nat.host_event(UdpError(send.flow, errno.ECONNREFUSED, 2, 3, 3, 0, "127.0.0.53"), 1)
    send2 = ask(h, query(2), now=2)[-1]
    assert isinstance(send2, UdpSend)
    h.nat.host_event(UdpError(send2.flow, errno.ECONNREFUSED, 2, 3, 3, 0, "127.0.0.53"), 3)
    states = {s["upstream"]: s["state"] for s in h.nat.dns.upstream_states()}
    assert states["127.0.0.53:53"] == "failing: error ECONNREFUSED"
    assert len([m for m in lines(caplog) if "127.0.0.53:53" in m]) == 1


def test_the_state_is_in_the_snapshot() -> None:
    h = started()
    ask(h, query(1), now=0)
    h.nat.tick(DNS_QUERY_TIMEOUT_NS)
    state = h.nat.dns.snapshot_state()
    other = started()
    other.nat.dns.restore_state(state)
    assert other.nat.dns.upstream_states() == h.nat.dns.upstream_states()
    del state["_health"]  # a snapshot of an older build: nothing seen yet
    other.nat.dns.restore_state(state)
    assert other.nat.dns.upstream_states()[0]["state"] == "unused"


def test_ctl_info_shows_the_upstreams_and_stats_reads_as_text() -> None:
    info = {"ok": True, "forwards": [], "tftp": [], "flows": [
        {"flow": 7, "proto": "tcp", "state": "ESTABLISHED", "guest": "10.0.2.15:40000",
         "dest": "10.0.2.2:80", "host": "127.0.0.1:80", "recv_q": 0, "send_q": 0,
         "idle_s": 1.0}],
        "dns_upstreams": [{"upstream": "127.0.0.1:53", "state": "failing: no answer in 2.5 s"}]}
    text = format_answer("info", info).splitlines()
    assert text[0].split()[-1] == "Flow"
    row = next(ln for ln in text if ln.startswith("tcp[ESTABLISHED]"))
    assert row.split()[-1] == "7"
    assert "DNS upstream 127.0.0.1:53" in text[-1] and text[-1].endswith("no answer in 2.5 s")
    stats = {"ok": True, "counters": {"frames_in": 3, "drop_short": 1}, "flows_by_state": {},
             "leases": 1, "journal_bytes": 2048, "journal_records": 5, "journal_gaps": 0,
             "journal_lost_records": 0, "journal_queued_bytes": 0, "pcap_lost_frames": 0,
             "frames_dropped_toward_guest": 0, "guest_attached": True, "fast_path": "native"}
    out = format_answer("stats", stats)
    assert not out.lstrip().startswith("{")
    assert "guest attached: yes" in out and "journal: 2K bytes" in out
    assert any(ln.split() == ["frames_in", "3"] for ln in out.splitlines())
    assert "drops (1):" in out

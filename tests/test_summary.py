"""The session summary: recorded sessions in captures/ and scripted sessions with known
outcomes (FIN, refused, timed out, RST either way, retransmissions, DNS, ICMP errors)."""

from __future__ import annotations

import errno
import json
import pathlib
from typing import Any

import pytest

from replay.summary import FAILED_ENDS, Activity, Summary, format_summary, summarize_journal
from slirptrio.cli import main as cli_main
from tests.sessionbuilder import Session

CAPTURES = pathlib.Path(__file__).parent.parent / "captures"


def summary_of(name: str) -> Summary:
    return summarize_journal(CAPTURES / f"{name}.journal")


def test_tcp_http_capture_names_each_flow() -> None:
    s = summary_of("tcp-http")
    assert s.replay == "identical"
    by_port = {f.remote.rsplit(":", 1)[1]: f for f in s.flows if f.direction == "out"}
    http, refused = by_port["8080"], by_port["8081"]
    assert (http.proto, http.guest.startswith("10.0.2.15:"), http.remote) == (
        "tcp", True, "10.0.2.2:8080"
    )
    assert http.host == "127.0.0.1:8080" and http.end == "FIN" and not http.failed
    assert http.bytes_to_guest > 300_000 and 0 < http.bytes_to_host < 200
    assert refused.end == "refused" and refused.end_detail == "ECONNREFUSED" and refused.failed
    assert refused.bytes_to_guest == refused.bytes_to_host == 0
    (inbound,) = [f for f in s.flows if f.direction == "in"]
    assert inbound.guest == "10.0.2.15:8000" and inbound.host.startswith("127.0.0.1:")
    assert inbound.end == "FIN" and inbound.bytes_to_host > 100  # busybox httpd's answer
    assert [(n.data["rule"], n.data["port"]) for n in s.events if n.kind == "hostfwd"] == [
        ("tcp:127.0.0.1:2280-:8000", 2280)
    ]
    (lease,) = s.leases()
    assert lease["ip"] == "10.0.2.15" and lease["lease_s"] == 86400
    # Recorded with IPv6 on (the default since it landed): nothing of the guest's is dropped.
    assert s.counters is not None and s.drops == {}
    text = format_summary(s, "tcp-http")
    assert "refused (ECONNREFUSED)" in text and "10.0.2.2:8081" in text


def test_dns_capture_names_the_names_asked() -> None:
    s = summary_of("dns-udp")
    asked = {(lk.name, lk.qtype) for lk in s.lookups}
    assert asked == {("vm.example.test", "A"), ("vm.example.test", "AAAA"),
                     ("other.example.test", "A"), ("other.example.test", "AAAA")}
    a = [lk for lk in s.lookups if lk.qtype == "A"]
    assert all(lk.answers == ["203.0.113.77"] and lk.rcode == "NOERROR" for lk in a)
    assert "vm.example.test A -> 203.0.113.77" in format_summary(s)


def test_ping_and_release_captures() -> None:
    s = summary_of("dhcp-ping")
    pings = [(f.remote, f.end, f.end_detail) for f in s.flows]
    assert pings == [("10.0.2.2", "answered", "3/3 replies"), ("10.0.2.3", "answered",
                                                                "3/3 replies")]
    # The format-2 recording has the guest's RELEASE (the format-3 one lost it).
    s = summarize_journal(CAPTURES / "format2" / "release-renew.journal")
    (lease,) = s.leases()
    assert lease["acks"] == 3 and lease["released_s"] is not None
    assert [n.data["type"] for n in s.dhcp].count("RELEASE") == 1


@pytest.mark.parametrize("journal", sorted(CAPTURES.glob("*.journal")), ids=lambda p: p.stem)
def test_every_capture_summarizes_and_serializes(journal: pathlib.Path) -> None:
    s = summarize_journal(journal)
    assert s.replay == "identical" and s.records > 5
    data = json.loads(json.dumps(s.to_dict()))
    assert data["span"]["duration_s"] > 0 and data["records"] == s.records


def scripted(runs: bool = False) -> Session:
    s = Session(runs=runs)
    s.lease()
    s.connection("203.0.113.1", 40001, 80)
    s.refused("203.0.113.1", 40002, 81)
    s.refused("203.0.113.9", 40003, 80, errno.ETIMEDOUT)
    s.refused("198.51.100.1", 40004, 80, errno.EHOSTUNREACH)
    s.connection("203.0.113.1", 40005, 80, ending="host-reset")
    s.connection("203.0.113.1", 40006, 80, ending="guest-reset", retransmit=True)
    s.dns("vm.example.test", 5000, "203.0.113.77")
    s.dns("nothing.example.test", 5001, None)
    s.udp_unreachable("203.0.113.1", 6000, 9999)
    s.tick_until(5000)
    return s


def test_scripted_session_outcomes() -> None:
    session = scripted()
    s = summarize_journal(session.journal())
    assert s.replay == "identical"
    ends = {int(f.guest.rsplit(":", 1)[1]): (f.end, f.end_detail) for f in s.flows}
    assert ends[40001] == ("FIN", "")
    assert ends[40002] == ("refused", "ECONNREFUSED")
    assert ends[40003] == ("timed out", "ETIMEDOUT")
    assert ends[40004] == ("unreachable", "EHOSTUNREACH")
    assert ends[40005] == ("RST", "by the host, ECONNRESET")
    assert ends[40006] == ("RST", "by the guest")
    flows = {int(f.guest.rsplit(":", 1)[1]): f for f in s.flows}
    assert flows[40006].retransmits == 1
    assert any(k == "retransmit" for _t, k in flows[40006].marks)
    assert flows[40001].bytes_to_host == len(b"GET /\r\n")
    assert flows[40001].bytes_to_guest == len(b"HTTP/1.0 200 OK\r\n\r\nhello")
    assert flows[40001].established_ns is not None
    kinds = [k for _t, k in flows[40001].marks]
    assert kinds[:2] == ["syn", "established"] and kinds.count("fin") == 2
    udp = flows[6000]
    assert udp.proto == "udp" and udp.icmp_errors == ["unreachable (port)"] and udp.failed
    (err,) = s.icmp_errors
    assert "about udp 10.0.2.15:6000 > 203.0.113.1:9999" in err.text
    lookups = {lk.name: lk for lk in s.lookups}
    assert lookups["vm.example.test"].answers == ["203.0.113.77"]
    assert lookups["nothing.example.test"].rcode == "NXDOMAIN"
    assert lookups["nothing.example.test"].failed
    assert {f.end for f in s.flows if f.failed} <= FAILED_ENDS | {"open"}


def test_a_round_trip_reported_in_one_step() -> None:
    """TcpDataSent (a send's report riding on the answer) counts the answer's bytes to the
    guest, is no carrier of guest frames, and the session replays identical."""
    s = Session()
    s.lease()
    s.connection("203.0.113.1", 40200, 80, folded=True)
    summary = summarize_journal(s.journal())
    assert summary.replay == "identical"
    (flow,) = summary.flows
    assert flow.bytes_to_host == len(b"GET /\r\n")
    assert flow.bytes_to_guest == len(b"HTTP/1.0 200 OK\r\n\r\nhello")
    assert flow.end == "FIN"


def test_summary_from_the_journal_alone_after_a_divergence() -> None:
    """A journal whose effects the core no longer produces: the summary says so and reads the
    journal's own effects from there on."""
    from tests.journals import rewrite

    session = scripted()
    path = pathlib.Path(session.journal())

    def bend(_seg: pathlib.Path, items: list[Any]) -> None:
        for rec in items[2:]:  # after the header and the snapshot
            if rec[3]:
                rec[3] = rec[3][:-1]  # one early record's effects differ: drop one
                return

    rewrite(path, bend)
    s = summarize_journal(path)
    assert s.replay.startswith("diverged at record")
    ends = {int(f.guest.rsplit(":", 1)[1]): f.end for f in s.flows}
    assert ends[40002] == "refused" and ends[40001] == "FIN"


def test_activity_stays_bounded() -> None:
    a = Activity()
    for i in range(100_000):
        a.add(i * 3_000_000, 10)
    bins = a.bins()
    assert len(bins) <= 512 and sum(n for _t, n in bins) == 1_000_000


def test_cli_summary_and_json(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = scripted()
    path = session.journal()
    assert cli_main(["replay", str(path), "--summary"]) == 0
    out = capsys.readouterr().out
    assert "refused (ECONNREFUSED)" in out and "nothing.example.test A -> NXDOMAIN" in out
    assert cli_main(["replay", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {f["end"] for f in data["flows"]} >= {"FIN", "refused", "timed out", "RST"}
    assert data["replay"] == "identical" and data["leases"][0]["ip"] == "10.0.2.15"


def test_cli_summary_unreadable(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.journal"
    path.write_bytes(b"not a journal")  # an old-style single file that is no journal
    assert cli_main(["replay", str(path), "--summary"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slirptrio: error: journal ") and "bad magic" in err


def test_dns_over_tcp_is_a_lookup_too() -> None:
    import socket
    import struct

    import dpkt

    s = Session()
    s.lease()
    q = bytes(dpkt.dns.DNS(id=0x1111, qd=[dpkt.dns.DNS.Q(name="tcp.example.test", type=1)]))
    a = dpkt.dns.DNS(id=0x1111, qd=dpkt.dns.DNS(q).qd,
                     an=[dpkt.dns.DNS.RR(name="tcp.example.test", type=1, cls=1, ttl=5,
                                         rdata=socket.inet_aton("203.0.113.5"))])
    a.op = 0x8180
    s.connection("10.0.2.3", 40100, 53, request=struct.pack("!H", len(q)) + q,
                 response=struct.pack("!H", len(bytes(a))) + bytes(a))
    summary = summarize_journal(s.journal())
    (lookup,) = summary.lookups
    assert (lookup.name, lookup.qtype, lookup.answers) == ("tcp.example.test", "A",
                                                           ["203.0.113.5"])
    (flow,) = summary.flows
    assert flow.remote == "10.0.2.3:53" and flow.host == "127.0.0.1:5353" and flow.end == "FIN"


def test_ipv6_capture() -> None:
    s = summary_of("ipv6")
    assert s.replay == "identical"
    (addr,) = s.ipv6_addresses
    assert str(__import__("ipaddress").IPv6Address(addr)).startswith("fec0::")
    (web,) = [f for f in s.flows if f.proto == "tcp"]
    assert web.remote == "[fec0::2]:8082" and web.host == "[::1]:8082" and web.end == "FIN"
    assert web.bytes_to_guest > 100_000
    pings = {f.remote: f.end for f in s.flows if f.proto == "icmp"}
    assert pings == {"fec0::2": "answered", "fec0::3": "answered"}
    assert [(lk.name, lk.qtype, lk.rcode) for lk in s.lookups] == [
        ("vm.example.test", "AAAA", "NOERROR")
    ]


def test_tftp_transfers() -> None:
    from tests.sessionbuilder import tftp_get

    s = Session("tftp=/srv/tftp")
    s.lease()
    tftp_get(s, "pxelinux.0", b"x" * 1500, sport=2000)
    tftp_get(s, "missing.cfg", None, sport=2001)
    tftp_get(s, "../etc/passwd", b"secret", sport=2002)
    summary = summarize_journal(s.journal())
    got = {f.host: (f.proto, f.end, f.bytes_to_guest) for f in summary.flows}
    assert got["pxelinux.0"] == ("tftp", "done", 1500)
    assert got["missing.cfg"][:2] == ("tftp", "refused")
    assert got["../etc/passwd"][:2] == ("tftp", "refused")
    assert {f.remote for f in summary.flows} == {"10.0.2.2:69"}


def test_a_ring_journal_that_lost_its_start() -> None:
    """A bounded journal whose first segments are gone: the summary starts from the first
    snapshot it has, replays identical from there, and lists what it saw."""
    s = Session(journal_max=512 << 10)
    s.lease()
    for i in range(400):
        s.connection("203.0.113.1", 20000 + i, 80, response=b"r" * 2000)
        if i % 20 == 19:
            s.tick_until(3000)  # TIME_WAIT ends: the snapshots stay small
    path = pathlib.Path(s.journal())
    assert not (path / "00000001.seg").exists()  # the ring dropped the start
    summary = summarize_journal(path)
    assert summary.replay == "identical" and summary.starts_at > 0
    assert summary.leases() == []  # the lease was in a lost segment
    ports = [int(f.guest.rsplit(":", 1)[1]) for f in summary.flows]
    assert ports and ports == sorted(ports) and ports[-1] == 20399
    assert all(f.end == "FIN" for f in summary.flows if f.established_ns is not None)
    assert "starts_at_record" in summary.to_dict()


def _flows(s: Summary) -> list[tuple[Any, ...]]:
    return [(f.proto, f.direction, f.guest, f.remote, f.host, f.end, f.end_detail,
             f.bytes_to_host, f.bytes_to_guest, f.retransmits, [k for _t, k in f.marks])
            for f in s.flows]


def test_runs_of_frames_summarize_as_single_frames() -> None:
    """A session recorded as the runtime records it (FrameRuns on, the guest's frames in
    GuestFrames runs) summarizes exactly as the same session one frame per record."""
    one, many = scripted(), scripted(runs=True)  # kept alive: their journals go with them
    single = summarize_journal(one.journal())
    runs = summarize_journal(many.journal())
    assert runs.replay == "identical"
    assert _flows(runs) == _flows(single)
    assert (runs.frames_in, runs.frames_out) == (single.frames_in, single.frames_out)
    assert [(lk.name, lk.answers) for lk in runs.lookups] == [
        (lk.name, lk.answers) for lk in single.lookups
    ]


def test_a_burst_of_syns_names_each_flow_and_inbound_runs() -> None:
    """Several connections opened in one burst: each frame is matched with the TcpConnect
    it caused (a refused one in between takes none), and a forward into the guest whose SYN
    leaves in a run is not taken for refused."""
    from slirptrio.core.events import TcpConnect, TcpInbound
    from slirptrio.wire.tcp import SYN

    s = Session("hostloopback=off", runs=True)
    s.lease()
    effects = s.burst([
        s.tcp_frame("203.0.113.1", 41000, 8080, 1000, 0, SYN),
        s.tcp_frame("10.0.2.2", 41001, 8081, 1000, 0, SYN),  # hostloopback=off: refused, RST
        s.tcp_frame("203.0.113.2", 41002, 8081, 1000, 0, SYN),
        s.tcp_frame("203.0.113.3", 41003, 8080, 1000, 0, SYN),
    ])
    connects = [e for e in effects if isinstance(e, TcpConnect)]
    assert [(c.host, c.port) for c in connects] == [
        ("203.0.113.1", 8080), ("203.0.113.2", 8081), ("203.0.113.3", 8080)
    ]
    s.step(TcpInbound(900, "10.0.2.15", 22, "127.0.0.1", 50000), 2)
    summary = summarize_journal(s.journal())
    assert summary.replay == "identical"
    flows = {f.guest: f for f in summary.flows}
    assert flows["10.0.2.15:41000"].host == "203.0.113.1:8080"
    assert flows["10.0.2.15:41002"].host == "203.0.113.2:8081"
    assert flows["10.0.2.15:41003"].host == "203.0.113.3:8080"
    assert flows["10.0.2.15:41001"].end == "refused"
    assert flows["10.0.2.15:22"].direction == "in"
    assert flows["10.0.2.15:22"].end != "refused"

"""Fault rules (slirptrio.core.faults): each impairment on a real core, driven by events.

Rates are checked against binomial bounds (five standard deviations: a correct
implementation fails about once in 3.5 million seeds, a wrong rate fails at once); the same
seed makes the same choices and another seed other ones; a session with rules replays
identical from its journal; the rules' state snapshots.
"""

from __future__ import annotations

import itertools
import math
import pathlib
import socket
from collections.abc import Iterable

import pytest

from replay.diff import diff_journal
from replay.engine import replay_journal
from replay.summary import format_summary, summarize_journal
from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    Event,
    FaultAdd,
    FaultRemove,
    GuestFrame,
    GuestFrames,
    SendFrame,
    SendFrames,
    TcpClose,
    TcpConnect,
    TcpConnected,
    TcpSend,
    Tick,
    UdpOpen,
    UdpReceived,
    UdpSend,
)
from slirptrio.core.faults import FaultError, parse_rule, rule_from_table
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.wire import MalformedFrame
from slirptrio.wire.ethernet import build_ethernet
from slirptrio.wire.framing import split_run
from slirptrio.wire.ipv4 import build_ipv4, parse_ipv4
from slirptrio.wire.tcp import ACK, FIN, RST, SYN, build_tcp, parse_tcp
from slirptrio.wire.udp import build_udp, parse_udp
from tests import guestframes as gf
from tests.journals import recording

GUEST = socket.inet_aton("10.0.2.15")
REMOTE = socket.inet_aton("203.0.113.1")
DNS = socket.inet_aton("10.0.2.3")
GW_MAC = bytes.fromhex("52550a000202")
MS = 1_000_000
SEC = 1_000_000_000


def _udp(payload: bytes, sport: int = 40000, dst: bytes = REMOTE, dport: int = 9) -> bytes:
    seg = build_udp(GUEST, dst, sport, dport, payload)
    return build_ethernet(GW_MAC, gf.GUEST_MAC, 0x0800, build_ipv4(GUEST, dst, 17, seg, ident=1))


def _tcp(seq: int, ack: int, flags: int, payload: bytes = b"", dport: int = 80) -> bytes:
    seg = build_tcp(GUEST, REMOTE, 41000, dport, seq, ack, flags, 0xFFFF, payload)
    return build_ethernet(GW_MAC, gf.GUEST_MAC, 0x0800, build_ipv4(GUEST, REMOTE, 6, seg, ident=2))


def _dns_query(name: str, qid: int = 0x4242) -> bytes:
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(len(p).to_bytes(1, "big") + p.encode() for p in name.split(".")) + b"\x00"
    return q + b"\x00\x01\x00\x01"


def _frames(effects: Iterable[Effect]) -> list[bytes]:
    out: list[bytes] = []
    for e in effects:
        if isinstance(e, SendFrames):
            out += [bytes(f) for f in split_run(e.data)]
        elif isinstance(e, SendFrame):
            out.append(bytes(e.data))
    return out


class Driver:
    """A stack at a settable time; every effect it made is kept."""

    def __init__(self, seed: int = 7, *rules: str, door: Door | None = None) -> None:
        self.stack = door.stack if door is not None else Stack(parse_user_options(""), seed)
        self.door = door
        self.now = 0
        self.effects: list[Effect] = []
        self.timed: list[tuple[int, Effect]] = []
        self.events: list[tuple[int, Event]] = []
        for i, text in enumerate(rules, 1):
            self.step(FaultAdd(i, text))

    def step(self, ev: Event) -> list[Effect]:
        self.events.append((self.now, ev))
        if self.door is not None:
            out = self.door.step(ev, self.now)
        else:
            out = self.stack.handle(ev, self.now)
        self.effects += out
        self.timed += [(self.now, e) for e in out]
        return out

    def until_quiet(self, limit_ns: int = 600 * SEC) -> None:
        """Tick at every deadline the core asks for, up to ``limit_ns``."""
        while (t := self.stack.poll_at()) is not None and t <= limit_ns:
            self.now = max(self.now, t)
            self.step(Tick())

    def of(self, kind: type[Effect]) -> list[Effect]:
        return [e for e in self.effects if isinstance(e, kind)]

    def stats(self, rule: int = 1) -> dict[str, int]:
        return next(r.stats for r in self.stack.fault_rules(self.now) if r.id == rule)


def _within_binomial(k: int, n: int, p: float) -> bool:
    sd = math.sqrt(n * p * (1 - p))
    return abs(k - n * p) <= 5 * sd


def _udp_out(d: Driver, n: int) -> list[int]:
    """Send ``n`` numbered datagrams from the guest (one flow); the numbers that went out."""
    for i in range(n):
        d.step(GuestFrame(_udp(i.to_bytes(4, "big"))))
        d.now += 1000
    d.until_quiet()
    return [int.from_bytes(e.data[:4], "big") for e in d.of(UdpSend)]  # type: ignore[attr-defined]


def _udp_in(d: Driver, n: int) -> list[int]:
    """``n`` numbered datagrams from the remote toward the guest; the numbers it got."""
    d.step(GuestFrame(_udp(b"open")))
    flow = d.of(UdpOpen)[0].flow  # type: ignore[attr-defined]
    before = len(_frames(d.effects))
    for i in range(n):
        d.now += 1000
        d.step(UdpReceived(flow, i.to_bytes(4, "big")))
    d.until_quiet()
    got = []
    for f in _frames(d.effects)[before:]:
        hdr, body = parse_ipv4(memoryview(f)[14:])
        got.append(int.from_bytes(bytes(parse_udp(body, hdr.src, hdr.dst)[2][:4]), "big"))
    return got


# --------------------------------------------------------------------------------- syntax


def test_rule_text_round_trips() -> None:
    for text in (
        "proto=tcp remote=203.0.113.0/24 loss=2% delay=50ms jitter=50ms",
        "dir=in rate=10000000bit limit=256k",
        "proto=tcp rport=8080 connect=refuse",
        "proto=dns name=*.example.com dns=servfail",
        "remote=203.0.113.7/32,2001:db8:1::1/128 after=10s for=30s partition",
        "ge-p=1% ge-r=30% ge-bad=100%",
        "loss=0.25% duplicate=1% corrupt=0.5% reorder=5% reorder-gap=3ms",
        "proto=tcp reset-bytes=10000 reset-after=2s stall slow-close=1s gport=41000 flow=3",
    ):
        rule = parse_rule(text)
        assert parse_rule(rule.text()) == rule, text
    assert parse_rule("rate=10mbit").rate == 10_000_000
    assert parse_rule("rate=1.5Mbit/s").rate == 1_500_000
    assert parse_rule("loss=0.5%").loss == 5000
    assert parse_rule("delay=1.5s").delay_ns == 1_500_000_000
    assert parse_rule("connect=refuse").proto == "tcp"  # implied
    assert parse_rule("dns=nxdomain").proto == "dns"


@pytest.mark.parametrize(("text", "needle"), [
    ("los=2%", "los=2%: unknown key 'los'"),
    ("loss=2", "loss=2: expected a percentage"),
    ("loss=200%", "loss=200%: at most 100%"),
    ("delay=5parsecs", "delay=5parsecs: expected a duration"),
    ("remote=300.1.2.3 loss=1%", "remote=300.1.2.3: expected an address or a prefix"),
    ("proto=udp connect=refuse", "connect: a connection fault needs proto=tcp"),
    ("proto=tcp", "impairs nothing"),
    ("dir=sideways loss=1%", "dir=sideways: expected one of in, out, both"),
])
def test_bad_rules_name_the_word(text: str, needle: str) -> None:
    with pytest.raises(FaultError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_rule(text)


def test_toml_table() -> None:
    rule = rule_from_table({"proto": "tcp", "remote": ["10.0.0.0/8"], "loss": "2%",
                            "stall": True, "rport": 80})
    assert rule == parse_rule("proto=tcp remote=10.0.0.0/8 loss=2% stall rport=80")


def test_bad_rule_event_is_counted_not_raised() -> None:
    d = Driver(7)
    d.step(FaultAdd(1, "nonsense=1"))
    assert d.stack.counters["fault_bad_rule"] == 1 and d.stack.fault_rules(0) == []


# ------------------------------------------------------------------------------ link faults


def test_loss_rate_out_within_binomial_bounds() -> None:
    d = Driver(7, "dir=out proto=udp loss=10%")
    sent = _udp_out(d, 2000)
    lost = 2000 - len(sent)
    assert _within_binomial(lost, 2000, 0.10), lost
    assert d.stats()["dropped"] == lost and d.stats()["matched"] == 2000


def test_loss_same_seed_same_choices_other_seed_other() -> None:
    a = _udp_out(Driver(7, "dir=out loss=30%"), 300)
    b = _udp_out(Driver(7, "dir=out loss=30%"), 300)
    c = _udp_out(Driver(8, "dir=out loss=30%"), 300)
    assert a == b
    assert a != c


@pytest.mark.parametrize("rule", [
    "dir=out duplicate=20%", "dir=out reorder=20%", "dir=out corrupt=20%",
    "dir=out delay=10ms jitter=10ms", "dir=out ge-p=20% ge-r=20%",
])
def test_every_impairment_same_seed_same_choices(rule: str) -> None:
    def run(seed: int) -> tuple[list[tuple[int, bytes]], dict[str, int]]:
        d = Driver(seed, rule)
        _udp_out(d, 300)
        sent = [(t, e.data) for t, e in d.timed if isinstance(e, UdpSend)]
        return sent, d.stats()

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_loss_in_direction_only() -> None:
    d = Driver(3, "dir=in proto=udp loss=20%")
    got = _udp_in(d, 1000)
    assert _within_binomial(1000 - len(got), 1000, 0.20)
    assert d.of(UdpSend)  # the guest's datagram went out untouched


def test_gilbert_elliott_bursts() -> None:
    d = Driver(5, "dir=out ge-p=5% ge-r=50%")
    sent = set(_udp_out(d, 4000))
    lost = [i for i in range(4000) if i not in sent]
    # stationary share of the bad state p/(p+r), every frame in it lost
    share = 0.05 / 0.55
    assert _within_binomial(len(lost), 4000, share) or abs(len(lost) / 4000 - share) < 0.03
    bursts = 1 + sum(1 for a, b in itertools.pairwise(lost) if b != a + 1)
    assert len(lost) / bursts > 1.5  # bursts (mean length 1/r = 2), not independent losses


def test_duplicate_rate() -> None:
    d = Driver(9, "dir=out duplicate=10%")
    sent = _udp_out(d, 2000)
    assert _within_binomial(len(sent) - 2000, 2000, 0.10)
    assert sorted(set(sent)) == list(range(2000))
    assert d.stats()["duplicated"] == len(sent) - 2000


def test_corrupt_toward_guest_has_a_bad_checksum() -> None:
    d = Driver(1, "dir=in proto=udp corrupt=100%")
    d.step(GuestFrame(_udp(b"open")))
    flow = d.of(UdpOpen)[0].flow  # type: ignore[attr-defined]
    out = d.step(UdpReceived(flow, b"payload"))
    (frame,) = _frames(out)
    hdr, body = parse_ipv4(memoryview(frame)[14:])
    with pytest.raises(MalformedFrame):
        parse_udp(body, hdr.src, hdr.dst)
    assert d.stats()["corrupted"] == 1


def test_corrupt_from_guest_is_dropped_by_the_stack() -> None:
    d = Driver(1, "dir=out corrupt=100%")
    _udp_out(d, 10)
    assert not d.of(UdpSend) and d.stats()["corrupted"] == 10


def test_delay_with_jitter_is_a_core_timer_and_keeps_order() -> None:
    d = Driver(2, "dir=out delay=50ms jitter=10ms")
    for i in range(20):
        assert d.step(GuestFrame(_udp(i.to_bytes(4, "big")))) == []
        d.now += MS
    first = d.stack.poll_at()
    assert first is not None and 40 * MS <= first <= 60 * MS
    d.until_quiet()
    sends = d.of(UdpSend)
    assert [int.from_bytes(e.data[:4], "big") for e in sends] == list(range(20))  # type: ignore[attr-defined]
    assert d.stats()["delayed"] == 20


def test_reorder() -> None:
    d = Driver(4, "dir=out reorder=30%")
    sent = _udp_out(d, 200)
    assert sorted(sent) == list(range(200)) and sent != list(range(200))
    assert _within_binomial(d.stats()["reordered"], 200, 0.30)


def test_rate_limit_spaces_frames_at_the_rate() -> None:
    d = Driver(6, "dir=in rate=1mbit limit=1m")
    d.step(GuestFrame(_udp(b"open")))
    flow = d.of(UdpOpen)[0].flow  # type: ignore[attr-defined]
    before = len(_frames(d.effects))
    for _ in range(100):
        d.step(UdpReceived(flow, bytes(958)))  # 1000-byte frames
    times = []
    while (t := d.stack.poll_at()) is not None:
        d.now = t
        if _frames(d.step(Tick())):
            times.append(t)
    assert len(_frames(d.effects)) - before == 100
    # 100 frames of 1000 bytes at 1 Mbit/s: the last leaves after 0.8 s, 8 ms apart
    assert times[-1] == 100 * 8 * MS
    assert all(b - a >= 8 * MS for a, b in itertools.pairwise(times))


def test_rate_limit_queue_bound_drops_the_tail() -> None:
    d = Driver(6, "dir=in rate=1mbit limit=10k")
    d.step(GuestFrame(_udp(b"open")))
    flow = d.of(UdpOpen)[0].flow  # type: ignore[attr-defined]
    before = len(_frames(d.effects))
    for _ in range(100):
        d.step(UdpReceived(flow, bytes(958)))  # 1000-byte frames, at once
    d.until_quiet()
    got = len(_frames(d.effects)) - before
    assert got == 10 and d.stats()["rate_dropped"] == 90


def test_partition_window_then_heals() -> None:
    d = Driver(1, "remote=203.0.113.0/24 partition after=1s for=2s")
    for t in (0, SEC, 2 * SEC, 3 * SEC, 4 * SEC):
        d.now = t
        d.step(GuestFrame(_udp(t.to_bytes(8, "big"))))
    sent = [int.from_bytes(e.data[:8], "big") for e in d.of(UdpSend)]  # type: ignore[attr-defined]
    assert sent == [0, 3 * SEC, 4 * SEC]
    assert d.stats()["partitioned"] == 2


def test_remote_prefix_and_port_select() -> None:
    d = Driver(1, "remote=198.51.100.0/24 loss=100%", "rport=53 proto=udp loss=100%")
    d.step(GuestFrame(_udp(b"x", dst=socket.inet_aton("198.51.100.9"))))
    d.step(GuestFrame(_udp(b"y", dport=53)))
    d.step(GuestFrame(_udp(b"z", dport=54)))
    assert [e.data for e in d.of(UdpSend)] == [b"z"]  # type: ignore[attr-defined]


def test_remove_and_clear() -> None:
    d = Driver(1, "dir=out loss=100%", "dir=in loss=100%")
    d.step(FaultRemove(1))
    assert [r.id for r in d.stack.fault_rules(0)] == [2]
    d.step(GuestFrame(_udp(b"a")))
    d.step(FaultRemove(-1))
    assert d.stack.fault_rules(0) == []
    d.step(GuestFrame(_udp(b"b")))
    assert [e.data for e in d.of(UdpSend)] == [b"a", b"b"]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------ connection faults


def _rsts(effects: Iterable[Effect]) -> list[tuple[int, int]]:
    out = []
    for f in _frames(effects):
        hdr, body = parse_ipv4(memoryview(f)[14:])
        if hdr.proto == 6:
            seg = parse_tcp(body, hdr.src, hdr.dst)
            if seg.flags & RST:
                out.append((seg.seq, seg.ack))
    return out


def test_connect_refuse_answers_rst() -> None:
    d = Driver(1, "proto=tcp rport=80 connect=refuse")
    out = d.step(GuestFrame(_tcp(1000, 0, SYN)))
    assert not d.of(TcpConnect)
    assert _rsts(out) == [(0, 1001)]
    assert d.stats()["refused"] == 1
    d.step(GuestFrame(_tcp(5000, 0, SYN, dport=81)))
    assert len(d.of(TcpConnect)) == 1  # another port connects


def test_connect_timeout_swallows_syns() -> None:
    d = Driver(1, "connect=timeout")
    for _ in range(3):
        assert d.step(GuestFrame(_tcp(1000, 0, SYN))) == []
    assert not d.of(TcpConnect) and d.stats()["connect_dropped"] == 3


def _established(d: Driver) -> tuple[int, int]:
    """Open guest port 41000 -> 203.0.113.1:80; (flow, the stack's next sequence number)."""
    d.step(GuestFrame(_tcp(1000, 0, SYN)))
    flow = d.of(TcpConnect)[-1].flow  # type: ignore[attr-defined]
    out = d.step(TcpConnected(flow))
    f = _frames(out)[0]
    hdr, body = parse_ipv4(memoryview(f)[14:])
    seg = parse_tcp(body, hdr.src, hdr.dst)
    d.step(GuestFrame(_tcp(1001, seg.seq + 1, ACK)))
    return flow, seg.seq + 1


def test_reset_after_bytes() -> None:
    d = Driver(1, "proto=tcp reset-bytes=1000")
    flow, iss = _established(d)
    d.now += MS
    d.step(GuestFrame(_tcp(1001, iss, ACK, b"a" * 600)))
    assert d.of(TcpSend)
    assert d.step(GuestFrame(_tcp(1601, iss, ACK, b"b" * 600))) == []  # past the limit: gone
    assert d.stack.poll_at() == d.now  # the reset is due now
    out = d.step(Tick())
    assert len(_rsts(out)) == 1 and TcpClose(flow, True) in out
    assert d.stats()["reset"] == 1
    assert [e.data for e in d.of(TcpSend)] == [b"a" * 600]  # type: ignore[attr-defined]


def test_reset_after_time() -> None:
    d = Driver(1, "proto=tcp reset-after=2s")
    flow, _iss = _established(d)
    assert d.stack.poll_at() is not None
    d.until_quiet(limit_ns=10 * SEC)
    assert TcpClose(flow, True) in d.effects and len(_rsts(d.effects)) == 1


def test_stall_drops_data_not_acks() -> None:
    d = Driver(1, "proto=tcp stall")
    _flow, iss = _established(d)
    d.step(GuestFrame(_tcp(1001, iss, ACK, b"data")))
    assert not d.of(TcpSend) and d.stats()["stalled"] == 1


def test_slow_close_holds_the_fin() -> None:
    d = Driver(1, "proto=tcp slow-close=3s")
    _flow, iss = _established(d)
    d.step(GuestFrame(_tcp(1001, iss, ACK | FIN)))
    assert not [e for e in d.effects if type(e).__name__ == "TcpShutdown"]
    assert d.stack.poll_at() == d.now + 3 * SEC
    d.now += 3 * SEC
    d.step(Tick())
    assert [e for e in d.effects if type(e).__name__ == "TcpShutdown"]


def test_flow_number_matches_one_connection() -> None:
    d = Driver(1)
    flow, iss = _established(d)
    d.step(FaultAdd(1, f"flow={flow} stall"))
    d.step(GuestFrame(_tcp(1001, iss, ACK, b"x")))
    assert d.stats()["stalled"] == 1


# ------------------------------------------------------------------------------- DNS faults


def _dns_answers(effects: Iterable[Effect]) -> list[bytes]:
    out = []
    for f in _frames(effects):
        hdr, body = parse_ipv4(memoryview(f)[14:])
        if hdr.proto == 17:
            sport, _dport, data = parse_udp(body, hdr.src, hdr.dst)
            if sport == 53:
                out.append(bytes(data))
    return out


@pytest.mark.parametrize(("kind", "rcode", "tc"), [("servfail", 2, 0), ("nxdomain", 3, 0),
                                                   ("truncate", 0, 2)])
def test_dns_answers_for_matching_names(kind: str, rcode: int, tc: int) -> None:
    d = Driver(1, f"name=*.example.com dns={kind}")
    d.step(DnsUpstreams("127.0.0.1:5353"))
    out = d.step(GuestFrame(_udp(_dns_query("www.example.com"), dst=DNS, dport=53)))
    (answer,) = _dns_answers(out)
    assert answer[:2] == b"\x42\x42" and answer[3] & 0x0F == rcode and answer[2] & 0x02 == tc
    assert answer[2] & 0x80 and answer[12:] == _dns_query("www.example.com")[12:]
    assert not d.of(UdpSend)
    d.step(GuestFrame(_udp(_dns_query("example.org"), dst=DNS, dport=53)))
    assert d.of(UdpSend)  # relayed upstream
    # matched: the query, and the answer on its way to the guest (a rule sees both ways)
    assert d.stats() == {"matched": 2, f"dns_{kind}": 1}


# ---------------------------------------------------------------------- replay, snapshots


def _session(d: Driver) -> None:
    _udp_out(d, 200)  # under rule 1
    d.step(FaultRemove(1))
    d.step(FaultAdd(3, "dir=in proto=udp loss=20% delay=5ms jitter=5ms duplicate=5%"))
    _udp_in(d, 200)
    d.step(FaultAdd(4, "proto=tcp reset-bytes=500"))
    _flow, iss = _established(d)
    d.step(GuestFrame(_tcp(1001, iss, ACK, b"q" * 400)))
    d.step(GuestFrame(_tcp(1401, iss, ACK, b"r" * 400)))
    d.step(FaultRemove(3))
    d.until_quiet()


def test_session_with_rules_replays_identical(tmp_path: pathlib.Path) -> None:
    journal = tmp_path / "faults.journal"
    with recording(journal, parse_user_options(""), 21) as door:
        _session(Driver(21, "dir=out loss=10%", door=door))
    result = replay_journal(journal)
    assert result.identical and result.records > 400
    counters = door.stack.counters
    assert counters["fault_dropped"] > 10 and counters["fault_resets"] == 1
    # the summary says what each rule did, the removed ones included
    summary = summarize_journal(journal)
    rules = {r["id"]: r for r in summary.faults}
    assert sorted(rules) == [1, 3, 4]
    assert rules[1]["removed_s"] is not None and rules[1]["stats"]["dropped"] > 5
    assert rules[4]["removed_s"] is None and rules[4]["stats"]["reset"] == 1
    text = format_summary(summary)
    assert "Fault rules (3):" in text and "proto=tcp reset-bytes=500" in text
    # and --diff finds nothing to report
    assert diff_journal(journal).identical


def test_fault_state_snapshots_and_restores() -> None:
    from tests.snapshots import restored, shape
    from tests.test_snapshot_guard import uncovered

    d = Driver(13, "dir=in proto=udp delay=100ms rate=1mbit", "proto=tcp reset-after=5s",
               "dir=in proto=udp ge-p=10% ge-r=10%")
    d.step(GuestFrame(_udp(b"open")))
    flow = d.of(UdpOpen)[0].flow  # type: ignore[attr-defined]
    for i in range(30):
        d.step(UdpReceived(flow, i.to_bytes(4, "big") * 100))
    _established(d)
    state = d.stack._faults.snapshot_state()
    assert state["_held"] and state["_tracked"] and state["_rules"]
    assert uncovered(d.stack) == []
    copy = restored(d.stack)
    assert shape(copy) == shape(d.stack)
    t = d.now
    rest = [(t + k * 10 * MS, Tick()) for k in range(1, 700)]
    assert [copy.handle(ev, at) for at, ev in rest] == [d.stack.handle(ev, at) for at, ev in rest]


# ------------------------------------------------------------------------------------ IPv6


def test_ipv6_matched_by_prefix_and_neighbour_discovery_never_impaired() -> None:
    from tests import guestframes6 as gf6

    d = Driver(1, "remote=2001:db8::/32 loss=100%", "dir=in proto=icmp loss=100%")
    d.step(GuestFrame(gf6.udp6("2001:db8:1::1", 9, b"lost")))
    d.step(GuestFrame(gf6.udp6("2001:db9::1", 9, b"kept")))
    assert [e.data for e in d.of(UdpSend)] == [b"kept"]  # type: ignore[attr-defined]
    # a solicitation for the router is answered though every ICMP frame to the guest is lost
    out = d.step(GuestFrame(gf6.neighbor_solicit("fe80::2")))
    assert _frames(out) and d.stats(2).get("dropped", 0) == 0
    d.step(GuestFrame(gf6.echo6("fec0::2")))  # the stack's own echo reply: lost
    assert d.stats(2)["dropped"] == 1


def test_refuse_over_ipv6() -> None:
    from tests import guestframes6 as gf6

    d = Driver(1, "connect=refuse")
    out = d.step(GuestFrame(gf6.tcp_syn("2001:db8:1::1", 443)))
    assert not d.of(TcpConnect) and d.stats()["refused"] == 1
    (frame,) = _frames(out)
    assert frame[12:14] == b"\x86\xdd" and frame[20] == 6 and frame[54 + 13] & RST


def test_malformed_frames_pass_the_rules_without_a_word() -> None:
    """Cut and scrambled frames never raise out of the rules (the stack counts them)."""
    from slirptrio.core.prng import Prng

    rng = Prng(99)
    d = Driver(1, "loss=10% corrupt=10% duplicate=10% delay=1ms", "proto=tcp reset-bytes=10",
               "name=*.x dns=servfail", "connect=refuse")
    seeds = [_udp(b"x" * 40), _tcp(1, 0, SYN), _udp(_dns_query("a.x"), dst=DNS, dport=53)]
    for i in range(3000):
        frame = bytearray(seeds[i % len(seeds)])
        for _ in range(1 + rng.below(4)):
            frame[rng.below(len(frame))] = rng.below(256)
        cut = bytes(frame[: rng.below(len(frame) + 1)])
        d.now += 1000
        d.step(GuestFrame(cut))
        d.step(GuestFrames(len(cut).to_bytes(4, "big") + cut))
    d.until_quiet()
    assert d.stack.counters["core_exceptions"] == 0

"""The DNS relay: id mapping, answers, SERVFAIL on timeout and errors, failover, the codec."""

from __future__ import annotations

import errno
import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slirptrio.core import dns
from slirptrio.core.events import DnsUpstreams, UdpClose, UdpError, UdpOpen, UdpReceived, UdpSend
from slirptrio.core.udp import DNS_QUERY_TIMEOUT_NS
from slirptrio.wire import MalformedFrame
from tests.test_udp_core import DNS, GUEST, SEC, Harness


def query(qid: int = 0xBEEF, name: str = "example.com", rd: bool = True) -> bytes:
    q = dpkt.dns.DNS(id=qid, rd=int(rd), qd=[dpkt.dns.DNS.Q(name=name, type=1, cls=1)])
    return bytes(q)


def answer(msg: bytes, ip: bytes = b"\x5d\xb8\xd8\x22") -> bytes:
    q = dpkt.dns.DNS(msg)
    q.qr = 1
    q.ra = 1
    q.an = [dpkt.dns.DNS.RR(name=q.qd[0].name, type=1, cls=1, ttl=60, rdata=ip)]
    return bytes(q)


def started(upstreams: str = "127.0.0.53:53", **kw: object) -> Harness:
    h = Harness(**kw)
    assert h.nat.host_event(DnsUpstreams(upstreams), 0) == []
    return h


def ask(h: Harness, msg: bytes, now: int = 0, sport: int = 33000) -> list[object]:
    return list(h.guest(DNS, 53, msg, now=now, sport=sport))


def test_query_is_relayed_with_a_fresh_id_and_the_answer_mapped_back() -> None:
    h = started()
    q = query(0x1111)
    effects = ask(h, q)
    assert effects[0] == UdpOpen(101, "127.0.0.53", 53)
    send = effects[1]
    assert isinstance(send, UdpSend) and send.flow == 101
    upstream_id = struct.unpack(">H", send.data[:2])[0]
    assert send.data[2:] == q[2:]
    assert h.nat.dns.pending() == 1
    reply = answer(send.data)
    assert h.nat.host_event(UdpReceived(101, reply), 1) == []
    ((src, sport, dst, dport, data),) = h.udp_out()
    assert (src, sport, dst, dport) == (DNS, 53, GUEST, 33000)
    assert data == struct.pack(">H", 0x1111) + reply[2:]
    assert dpkt.dns.DNS(data).an[0].rdata == b"\x5d\xb8\xd8\x22"
    assert h.nat.dns.pending() == 0
    assert upstream_id in range(0x10000)
    assert h.counters["dns_answers"] == 1


def test_two_guests_with_the_same_id_get_distinct_upstream_ids() -> None:
    h = started()
    a = ask(h, query(7), sport=1000)[-1]
    b = ask(h, query(7, "other.example"), sport=1001)[-1]
    assert isinstance(a, UdpSend) and isinstance(b, UdpSend)
    assert a.data[:2] != b.data[:2]
    h.nat.host_event(UdpReceived(101, answer(b.data)), 1)
    h.nat.host_event(UdpReceived(101, answer(a.data)), 1)
    got = h.udp_out()
    assert [(g[3], dpkt.dns.DNS(g[4]).id) for g in got] == [(1001, 7), (1000, 7)]
    assert dpkt.dns.DNS(got[0][4]).qd[0].name == "other.example"


def test_unmatched_answers_are_dropped() -> None:
    h = started("127.0.0.53:53 192.0.2.53:53")
    send = ask(h, query())[-1]
    assert isinstance(send, UdpSend)
    reply = answer(send.data)
    wrong_id = struct.pack(">H", (struct.unpack(">H", reply[:2])[0] + 1) & 0xFFFF) + reply[2:]
    other_q = answer(with_question(send.data, "evil.example"))
    for bad in (wrong_id, other_q, send.data, b"\x00"):
        assert h.nat.host_event(UdpReceived(101, bad), 1) == []
    assert h.sent == []
    assert h.counters["dns_unmatched_answer"] == 3 and h.counters["dns_bad_answer"] == 1
    # the genuine answer still works; case differences in the name are fine
    upper = answer(send.data).replace(b"example", b"EXAMPLE")
    h.nat.host_event(UdpReceived(101, upper), 2)
    assert len(h.udp_out()) == 1


def with_question(msg: bytes, name: str) -> bytes:
    m = dpkt.dns.DNS(msg)
    m.qd[0].name = name
    return bytes(m)


def test_timeout_gives_servfail_built_from_the_query() -> None:
    h = started()
    q = query(0x4242, "slow.example", rd=True)
    ask(h, q, now=1 * SEC)
    deadline = 1 * SEC + DNS_QUERY_TIMEOUT_NS
    assert h.nat.poll_at() == deadline
    assert h.nat.tick(deadline - 1) == []
    assert h.sent == []
    h.nat.tick(deadline)
    ((src, sport, dst, dport, data),) = h.udp_out()
    assert (src, sport, dst, dport) == (DNS, 53, GUEST, 33000)
    m = dpkt.dns.DNS(data)
    assert m.id == 0x4242 and m.qr == 1 and m.rcode == dns.RCODE_SERVFAIL
    assert m.rd == 1 and m.ra == 1 and m.opcode == 0
    assert [q.name for q in m.qd] == ["slow.example"] and m.an == []
    assert h.counters["dns_timeouts"] == 1 and h.nat.dns.pending() == 0


def test_timeout_is_configurable() -> None:
    h = started(dns_timeout_ns=2 * SEC)
    ask(h, query())
    assert h.nat.poll_at() == 2 * SEC


def test_retransmission_resends_without_a_new_entry() -> None:
    h = started()
    first = ask(h, query(9))[-1]
    again = ask(h, query(9), now=1 * SEC)
    assert again == [first]
    assert h.nat.dns.pending() == 1
    assert h.counters["dns_retransmits"] == 1


def test_retransmission_fails_over_to_the_next_upstream() -> None:
    h = started("127.0.0.53:53 192.0.2.53:5353")
    ask(h, query(9))
    again = ask(h, query(9), now=1 * SEC)
    assert again[0] == UdpOpen(102, "192.0.2.53", 5353)
    assert isinstance(again[1], UdpSend) and again[1].flow == 102
    # an answer on either upstream is accepted
    h.nat.host_event(UdpReceived(101, answer(again[1].data)), 2)
    assert len(h.udp_out()) == 1


def test_upstream_error_fails_over_then_servfails() -> None:
    h = started("127.0.0.53:53 192.0.2.53:53")
    ask(h, query(5))
    effects = h.nat.host_event(UdpError(101, errno.ECONNREFUSED, 2, 3, 3, 0, "127.0.0.53"), 1)
    assert effects[0] == UdpOpen(102, "192.0.2.53", 53)
    assert h.sent == []
    h.nat.host_event(UdpError(102, errno.ECONNREFUSED, 2, 3, 3, 0, "192.0.2.53"), 2)
    ((_s, _sp, _d, _dp, data),) = h.udp_out()
    assert dpkt.dns.DNS(data).rcode == dns.RCODE_SERVFAIL
    assert h.nat.dns.pending() == 0


def test_upstream_error_with_one_upstream_servfails_at_once() -> None:
    h = started()
    ask(h, query(5))
    h.nat.host_event(UdpError(101, errno.ECONNREFUSED, 2, 3, 3, 0, "127.0.0.53"), 1)
    ((*_, data),) = h.udp_out()
    assert dpkt.dns.DNS(data).rcode == dns.RCODE_SERVFAIL


def test_queries_wait_for_the_first_upstream_list() -> None:
    h = Harness()
    assert ask(h, query(1)) == []
    effects = h.nat.host_event(DnsUpstreams("[::1]:53"), 1)
    assert effects[0] == UdpOpen(101, "::1", 53)
    assert isinstance(effects[1], UdpSend)


def test_no_upstream_servfails_immediately() -> None:
    h = started("")
    assert ask(h, query(3)) == []
    ((*_, data),) = h.udp_out()
    assert dpkt.dns.DNS(data).rcode == dns.RCODE_SERVFAIL
    assert h.counters["dns_no_upstream"] == 1


def test_upstream_change_closes_old_socket_and_resends() -> None:
    h = started()
    ask(h, query(3))
    effects = h.nat.host_event(DnsUpstreams("192.0.2.1:53"), 1)
    assert effects[0] == UdpClose(101)
    assert effects[1] == UdpOpen(102, "192.0.2.1", 53)
    assert isinstance(effects[2], UdpSend) and effects[2].flow == 102
    assert h.nat.host_event(DnsUpstreams("192.0.2.1:53"), 2) == []
    assert h.nat.dns.tcp_upstream() == ("192.0.2.1", 53)
    # The old socket's late answer is not taken
    assert h.nat.host_event(UdpReceived(101, answer(effects[2].data)), 3) == []
    assert h.counters["udp_stale_event"] == 1


def test_idle_upstream_socket_is_closed() -> None:
    h = started()
    send = ask(h, query(3))[-1]
    assert isinstance(send, UdpSend)
    h.nat.host_event(UdpReceived(101, answer(send.data)), 1 * SEC)
    assert h.nat.poll_at() == 11 * SEC
    assert h.nat.tick(11 * SEC) == [UdpClose(101)]
    assert h.nat.poll_at() is None
    # the next query opens a new socket (a new source port on the host)
    assert ask(h, query(4), now=12 * SEC)[0] == UdpOpen(102, "127.0.0.53", 53)


def test_busy_upstream_is_not_closed_before_its_queries_end() -> None:
    h = started(dns_timeout_ns=20 * SEC)  # longer than the 10 s idle timeout
    ask(h, query(3))
    assert h.nat.poll_at() == 20 * SEC
    assert h.nat.tick(10 * SEC) == []
    assert h.nat.poll_at() == 20 * SEC
    assert h.nat.tick(20 * SEC) == [UdpClose(101)]
    assert len(h.udp_out()) == 1  # the SERVFAIL


def test_pending_bound_answers_servfail() -> None:
    h = started(max_dns_pending=2)
    ask(h, query(1))
    ask(h, query(2))
    ask(h, query(3))
    ((*_, data),) = h.udp_out()
    assert dpkt.dns.DNS(data).id == 3
    assert h.counters["dns_pending_full"] == 1


def test_garbage_and_responses_from_the_guest_are_dropped() -> None:
    h = started()
    assert ask(h, b"\x01\x02") == []
    assert ask(h, answer(query())) == []
    assert h.counters["dns_malformed"] == 1 and h.counters["dns_not_a_query"] == 1


# -------------------------------------------------------------------------------- codec


def test_servfail_of_unparsable_question_has_no_question() -> None:
    bad = struct.pack(">HHHHHH", 77, 0x0100, 1, 0, 0, 0) + b"\x05abc"
    m = dpkt.dns.DNS(dns.servfail(bad))
    assert m.id == 77 and m.rcode == 2 and m.qd == [] and m.rd == 1
    with pytest.raises(MalformedFrame):
        dns.servfail(b"\x00")


def test_question_is_case_insensitive_and_bounded() -> None:
    assert dns.question(query(name="A.Example")) == dns.question(query(name="a.example"))
    looping = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a" * 200 + b"\x00" + bytes(4)
    with pytest.raises(MalformedFrame):
        dns.question(looping)
    pointer = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c" + bytes(4)
    assert dns.question(pointer) == b"\xc0\x0c" + bytes(4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.53", ("127.0.0.53", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[fe80::1%eth0]", ("fe80::1%eth0", 53)),
    ],
)
def test_parse_upstream(text: str, expected: tuple[str, int]) -> None:
    assert dns.parse_upstream(text) == expected
    assert dns.parse_upstreams(dns.format_upstreams([expected])) == [expected]


@pytest.mark.parametrize("text", ["dns.google", "192.0.2.4:0", "192.0.2.4:x", "[::1", "[::1]x"])
def test_parse_upstream_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        dns.parse_upstream(text)


def ref_question(msg: bytes) -> bytes | None:
    """RFC 1035 4.1.2 read the obvious way: every question's name (labels up to a zero byte
    or a 2-byte pointer, lower-cased) with its type and class; None if it does not parse."""
    if len(msg) < 12:
        return None
    pos, out = 12, b""
    for _ in range(int.from_bytes(msg[4:6], "big")):
        start = pos
        for _label in range(128):
            if pos >= len(msg):
                return None
            n = msg[pos]
            if n >= 0xC0:
                if pos + 2 > len(msg):
                    return None
                pos += 2
                break
            if n >= 0x40:
                return None
            pos += 1 + n
            if n == 0:
                break
        else:
            return None
        if pos + 4 > len(msg):
            return None
        out += msg[start:pos].lower() + msg[pos : pos + 4]
        pos += 4
    return out


def check_codec(data: bytes) -> None:
    """parse_header, question and servfail on ``data`` against the reference reading and
    dpkt's decoding of the SERVFAIL."""
    if len(data) < 12:
        for fn in (dns.question, dns.servfail, dns.parse_header):
            with pytest.raises(MalformedFrame) as info:
                fn(data)
            assert info.value.reason == "dns_short"
        return
    fields = struct.unpack(">6H", data[:12])
    hdr = dns.parse_header(data)
    assert (hdr.id, hdr.flags, hdr.qdcount, hdr.ancount, hdr.nscount, hdr.arcount) == fields
    want = ref_question(data)
    try:
        got: bytes | None = dns.question(data)
    except MalformedFrame:
        got = None
    assert got == want
    reply = dns.servfail(data)
    flags = struct.unpack(">H", reply[2:4])[0]
    assert reply[:2] == data[:2] and flags & 0x800F == 0x8002  # a response, SERVFAIL
    assert flags & 0x7910 == fields[1] & 0x7910  # opcode, RD and CD kept
    assert reply[6:12] == bytes(6)  # no answers of any kind
    if want is not None and fields[2] == 1:  # one readable question: quoted as sent
        assert reply[4:6] == b"\x00\x01" and reply[12:] == data[12 : 12 + len(want)]
    else:
        assert reply[4:6] == b"\x00\x00" and len(reply) == 12


@given(st.binary(max_size=80))
def test_codec_agrees_with_a_reference_reading(data: bytes) -> None:
    check_codec(data)


@given(st.lists(st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=4),
       st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.data())
def test_codec_on_queries_and_their_mutations(
    labels: list[str], ident: int, flags: int, data: st.DataObject
) -> None:
    query = bytes(dpkt.dns.DNS(id=ident, op=flags & 0x7FFF,
                               qd=[dpkt.dns.DNS.Q(name=".".join(labels))]))
    assert dns.question(query) == query[12:].lower()
    check_codec(query)
    raw = bytearray(query[: data.draw(st.integers(0, len(query)))])
    for _ in range(data.draw(st.integers(0, 3))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    check_codec(bytes(raw))

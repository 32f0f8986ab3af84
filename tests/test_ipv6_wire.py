"""IPv6, ICMPv6, NDP and DHCPv6 codecs, with dpkt as the independent oracle where it has the
protocol, and Hypothesis on the NDP and DHCPv6 parsers."""

from __future__ import annotations

import struct
from collections.abc import Callable

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slirptrio.wire import MalformedFrame
from slirptrio.wire import dhcpv6 as w6
from slirptrio.wire import ndp as wndp
from slirptrio.wire.icmpv6 import build_icmpv6, parse_icmpv6
from slirptrio.wire.ipv6 import (
    build_ipv6,
    fragment_header,
    multicast_mac,
    parse_ipv6,
    solicited_node,
    walk_extensions,
)
from slirptrio.wire.tcp import SYN, build_tcp, parse_tcp
from slirptrio.wire.udp import build_udp, parse_udp
from tests.guestframes6 import ip6

A = ip6("fec0::5054:ff:fe12:3456")
B = ip6("2001:db8::77")


def dpkt_ip6(raw: bytes) -> dpkt.ip6.IP6:
    return dpkt.ip6.IP6(raw)


# ------------------------------------------------------------------------------- IPv6


def test_build_ipv6_parsed_by_dpkt_and_back() -> None:
    raw = build_ipv6(A, B, 17, b"x" * 30, hop_limit=9, tc=0x2E, flow_label=0x12345)
    ip = dpkt_ip6(raw)
    assert (ip.src, ip.dst, ip.nxt, ip.hlim, ip.plen) == (A, B, 17, 9, 30)
    assert (ip.fc, ip.flow) == (0x2E, 0x12345)
    hdr, body = parse_ipv6(raw + b"\x00" * 7)  # link padding is cut by the payload length
    assert (hdr.src, hdr.dst, hdr.proto, hdr.ttl, hdr.tos, hdr.flow_label) == (
        A, B, 17, 9, 0x2E, 0x12345
    )
    assert bytes(body) == b"x" * 30 and hdr.header_len == 40 and not hdr.fragment


def test_extension_headers_are_walked() -> None:
    hop = bytes((60, 0)) + bytes(6)  # hop-by-hop -> destination options
    dst = bytes((43, 1)) + bytes(14)  # destination options (16 bytes) -> routing
    rt = bytes((17, 0, 0, 0)) + bytes(4)  # routing (segments left 0) -> UDP
    raw = build_ipv6(A, B, 0, hop + dst + rt + b"payload!")
    hdr, body = parse_ipv6(raw)
    assert hdr.proto == 17 and hdr.header_len == 40 + 32 and bytes(body) == b"payload!"


def test_fragment_header() -> None:
    raw = build_ipv6(A, B, 44, fragment_header(17, 1232, True, 0xDEADBEEF) + b"d" * 16)
    hdr, body = parse_ipv6(raw)
    assert hdr.fragment and hdr.mf and hdr.frag_offset == 1232 and hdr.ident == 0xDEADBEEF
    assert hdr.proto == 17 and bytes(body) == b"d" * 16 and hdr.header_len == 48
    frag = dpkt.ip6.IP6FragmentHeader(fragment_header(6, 8, False, 5))
    assert (frag.nxt, frag.frag_off, frag.m_flag, frag.id) == (6, 1, 0, 5)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x60" + bytes(30), "ipv6_short"),
        (build_ipv6(A, B, 17, b"abc")[:-1], "ipv6_bad_length"),
        (b"\x40" + build_ipv6(A, B, 17, b"abc")[1:], "ipv6_bad_version"),
        (build_ipv6(A, B, 17, b"abc")[:4] + b"\x00\x00" + build_ipv6(A, B, 17, b"abc")[6:],
         "ipv6_jumbogram"),
        (build_ipv6(A, B, 0, bytes((17, 3)) + bytes(6)), "ipv6_bad_extension"),
        (build_ipv6(A, B, 0, bytes((17,))), "ipv6_bad_extension"),
        (build_ipv6(A, B, 60, (bytes((60, 0)) + bytes(6)) * 9 + bytes((17, 0)) + bytes(6)),
         "ipv6_too_many_extensions"),
        (build_ipv6(A, B, 44, b"\x11\x00\x00"), "ipv6_bad_fragment"),
    ],
)
def test_malformed_ipv6(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedFrame) as err:
        parse_ipv6(raw)
    assert err.value.reason == reason


def test_walk_extensions_stops_at_upper_layer() -> None:
    assert walk_extensions(6, b"anything") == (6, 0)
    assert walk_extensions(60, bytes((58, 0)) + bytes(6) + b"x") == (58, 8)


def test_multicast_helpers() -> None:
    assert solicited_node(A) == ip6("ff02::1:ff12:3456")
    assert multicast_mac(ip6("ff02::1")) == bytes.fromhex("333300000001")


# ------------------------------------------------------------ checksums over IPv6


def test_icmpv6_checksum_matches_dpkt() -> None:
    body = struct.pack("!HH", 7, 9) + b"echo data"
    msg = build_icmpv6(A, B, 128, 0, body)
    ip = dpkt.ip6.IP6(src=A, dst=B, nxt=58, hlim=64, data=dpkt.icmp6.ICMP6(msg))
    ip.plen = len(msg)
    sent = ip.data.sum
    ip.data.sum = 0
    again = dpkt_ip6(bytes(ip))  # dpkt recomputes the zeroed checksum
    assert again.data.sum == sent
    type_, code, rest = parse_icmpv6(msg, A, B)
    assert (type_, code, bytes(rest)) == (128, 0, body)
    with pytest.raises(MalformedFrame, match="icmpv6_bad_checksum"):
        parse_icmpv6(msg, A, ip6("2001:db8::78"))


def test_udp_over_ipv6_checksum_and_zero_checksum() -> None:
    seg = build_udp(A, B, 1234, 53, b"query")
    ip = dpkt.ip6.IP6(src=A, dst=B, nxt=17, hlim=64, data=dpkt.udp.UDP(seg))
    ip.plen = len(seg)
    sent = ip.data.sum
    ip.data.sum = 0
    assert dpkt_ip6(bytes(ip)).data.sum == sent
    assert parse_udp(seg, A, B)[:2] == (1234, 53)
    with pytest.raises(MalformedFrame, match="udp_zero_checksum_ipv6"):
        parse_udp(seg[:6] + b"\x00\x00" + seg[8:], A, B)


def test_tcp_over_ipv6_checksum() -> None:
    seg = build_tcp(A, B, 1000, 80, 1, 0, SYN, 65535, b"", mss=1440)
    ip = dpkt.ip6.IP6(src=A, dst=B, nxt=6, hlim=64, data=dpkt.tcp.TCP(seg))
    ip.plen = len(seg)
    sent = ip.data.sum
    ip.data.sum = 0
    assert dpkt_ip6(bytes(ip)).data.sum == sent
    assert parse_tcp(seg, A, B).mss == 1440
    with pytest.raises(MalformedFrame, match="tcp_bad_checksum"):
        parse_tcp(seg, B, A[:15] + b"\x00")


# --------------------------------------------------------------------------------- NDP


def test_router_advert_round_trip() -> None:
    prefix = wndp.Prefix(ip6("fec0::"), 64, wndp.PREFIX_ONLINK | wndp.PREFIX_AUTONOMOUS,
                         86400, 14400)
    body = wndp.build_ra(
        hop_limit=64, flags=wndp.RA_OTHER, lifetime=1800, source_mac=b"RSMAC!", mtu=1500,
        prefixes=[prefix], dns_servers=[ip6("fec0::3")], dns_lifetime=1800,
        search=["example.test", "b.example"],
    )
    assert len(body) % 8 == 4  # 12-byte fixed part, options in units of 8
    ra = wndp.parse_ra(body)
    assert (ra.hop_limit, ra.flags, ra.lifetime, ra.mtu) == (64, wndp.RA_OTHER, 1800, 1500)
    assert ra.source_lladdr == b"RSMAC!" and ra.prefixes == [prefix]
    assert ra.dns_servers == [ip6("fec0::3")] and ra.dns_lifetime == 1800
    assert ra.search == ["example.test", "b.example"]


def test_neighbor_messages() -> None:
    na = wndp.build_na(wndp.NA_ROUTER | wndp.NA_SOLICITED, A, b"\x52\x56\x00\x00\x00\x02")
    flags, target, opts = wndp.parse_na(na)
    assert flags == wndp.NA_ROUTER | wndp.NA_SOLICITED and target == A
    assert wndp.lladdr(opts, wndp.OPT_TARGET_LLADDR) == b"\x52\x56\x00\x00\x00\x02"
    target, opts = wndp.parse_ns(wndp.build_ns(B, b"GUEST!"))
    assert target == B and wndp.lladdr(opts, wndp.OPT_SOURCE_LLADDR) == b"GUEST!"
    assert wndp.parse_ns(wndp.build_ns(B, None)) == (B, [])
    assert wndp.lladdr(wndp.parse_rs(wndp.build_rs(b"GUEST!")), wndp.OPT_SOURCE_LLADDR) == b"GUEST!"


@pytest.mark.parametrize(
    "body",
    [
        bytes(4) + A + bytes((1, 0)) + bytes(6),  # option length 0
        bytes(4) + A + bytes((1, 2)) + bytes(6),  # overruns
        bytes(4) + A + bytes((1,)),  # truncated
        bytes(4) + ip6("ff02::1"),  # multicast target
        bytes(10),  # short
    ],
)
def test_malformed_ns(body: bytes) -> None:
    with pytest.raises(MalformedFrame):
        wndp.parse_ns(body)


def test_names() -> None:
    assert wndp.decode_names(wndp.encode_names(["a.b", "c"]) + bytes(3)) == ["a.b", "c"]
    with pytest.raises(MalformedFrame):
        wndp.decode_names(b"\x03ab")


def ref_options(data: bytes) -> list[tuple[int, bytes]] | None:
    """RFC 4861 4.6 options read the obvious way (None: the message must be dropped)."""
    out: list[tuple[int, bytes]] = []
    while data:
        if len(data) < 2 or data[1] == 0 or data[1] * 8 > len(data) or len(out) >= 64:
            return None
        out.append((data[0], data[2 : data[1] * 8]))
        data = data[data[1] * 8 :]
    return out


def ref_names(data: bytes) -> list[str] | None:
    """Uncompressed DNS names with zero padding (RFC 8106 5.2), or None."""
    names: list[str] = []
    labels: list[str] = []
    while data:
        n, data = data[0], data[1:]
        if n == 0:
            if labels:
                names.append(".".join(labels))
            labels = []
        elif n >= 64 or n > len(data):
            return None
        else:
            labels.append(data[:n].decode("ascii", "replace"))
            data = data[n:]
    return None if labels else names


def reading(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except MalformedFrame:
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_ndp_parsers_agree_with_a_reference_reading(data: bytes) -> None:
    assert reading(lambda: wndp.parse_options(data)) == ref_options(data)
    assert reading(lambda: wndp.decode_names(data)) == ref_names(data)
    rs = ref_options(data[4:]) if len(data) >= 4 else None
    assert reading(lambda: wndp.parse_rs(data)) == rs
    ns = ref_options(data[20:]) if len(data) >= 20 and data[4] != 0xFF else None
    assert reading(lambda: wndp.parse_ns(data)) == (None if ns is None else (data[4:20], ns))
    assert reading(lambda: wndp.parse_na(data)) == (
        None if ns is None else (int.from_bytes(data[:4], "big"), data[4:20], ns))
    ra = reading(lambda: wndp.parse_ra(data))
    opts = ref_options(data[12:]) if len(data) >= 12 else None
    if opts is None:
        assert ra is None
    elif ra is not None:
        assert isinstance(ra, wndp.RouterAdvert)
        assert (ra.hop_limit, ra.lifetime) == (data[0], int.from_bytes(data[2:4], "big"))
        lls = [v[:6] for t, v in opts if t == wndp.OPT_SOURCE_LLADDR and len(v) >= 6]
        assert ra.source_lladdr == (lls[0] if lls else None)
        assert [p.prefix for p in ra.prefixes] == [
            v[14:30] for t, v in opts if t == wndp.OPT_PREFIX_INFO and len(v) == 30]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=40)), max_size=6),
    st.binary(min_size=16, max_size=16),
)
def test_ndp_options_round_trip(opts: list[tuple[int, bytes]], target: bytes) -> None:
    raw = b"".join(wndp.option(t, v) for t, v in opts)
    parsed = wndp.parse_options(raw)
    assert [t for t, _ in parsed] == [t for t, _ in opts]
    for (_, v), (_, p) in zip(opts, parsed, strict=True):
        assert p[: len(v)] == v and not any(p[len(v) :])  # zero padding only
    if target[0] != 0xFF:
        assert wndp.parse_ns(bytes(4) + target + raw) == (target, parsed)


# ------------------------------------------------------------------------------ DHCPv6


def test_dhcpv6_round_trip() -> None:
    raw = w6.build_message(w6.REPLY, 0xABCDEF, [(w6.OPT_SERVERID, w6.duid_ll(b"SERVER")),
                                                (w6.OPT_DNS_SERVERS, ip6("fec0::3"))])
    msg = w6.parse_dhcpv6(raw)
    assert (msg.msg_type, msg.xid) == (w6.REPLY, 0xABCDEF)
    assert msg.option(w6.OPT_SERVERID) == bytes.fromhex("00030001") + b"SERVER"
    assert msg.all(w6.OPT_DNS_SERVERS) == [ip6("fec0::3")] and msg.option(99) is None


@pytest.mark.parametrize(
    "raw",
    [b"\x0b\x00", b"\x0b\x00\x00\x01\x00\x01\x00\x05abc", b"\x0c" + bytes(40),
     b"\x0b\x00\x00\x01\x00\x01"],
)
def test_dhcpv6_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedFrame):
        w6.parse_dhcpv6(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_dhcpv6_parser(data: bytes) -> None:
    try:
        msg = w6.parse_dhcpv6(data)
    except MalformedFrame:
        return
    assert w6.build_message(msg.msg_type, msg.xid, msg.options) == data


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 11), st.integers(0, 0xFFFFFF),
       st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=30)), max_size=8))
def test_dhcpv6_build_parse(msg_type: int, xid: int, opts: list[tuple[int, bytes]]) -> None:
    msg = w6.parse_dhcpv6(w6.build_message(msg_type, xid, opts))
    assert (msg.msg_type, msg.xid, msg.options) == (msg_type, xid, opts)

"""TCP codec: built segments as dpkt sees them, dpkt-built segments as we see them, fuzzing."""

from __future__ import annotations

import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slirptrio.wire import MalformedFrame
from slirptrio.wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    build_tcp,
    parse_tcp,
)

SRC = bytes([10, 0, 2, 15])
DST = bytes([93, 184, 216, 34])


def dpkt_segment(
    src: bytes, dst: bytes, payload: bytes = b"", opts: bytes = b"", **fields: int
) -> bytes:
    """A TCP segment built and checksummed by dpkt."""
    tcp = dpkt.tcp.TCP(opts=opts, data=payload, **fields)
    tcp.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, data=tcp)
    raw: bytes = bytes(ip)[20:]
    return raw


def dpkt_checksum_ok(src: bytes, dst: bytes, seg: bytes) -> bool:
    pseudo = src + dst + struct.pack(">BBH", 0, 6, len(seg))
    return bool(dpkt.in_cksum(pseudo + seg) == 0)


def test_flag_values() -> None:
    assert tuple(1 << i for i in range(8)) == (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR)
    assert (FIN, SYN, RST, PSH, ACK) == (
        dpkt.tcp.TH_FIN,
        dpkt.tcp.TH_SYN,
        dpkt.tcp.TH_RST,
        dpkt.tcp.TH_PUSH,
        dpkt.tcp.TH_ACK,
    )


def test_build_plain_segment_matches_dpkt() -> None:
    raw = build_tcp(SRC, DST, 40000, 80, 0xDEADBEEF, 0x01020304, ACK | PSH, 29200, b"GET /\r\n")
    assert dpkt_checksum_ok(SRC, DST, raw)
    t = dpkt.tcp.TCP(raw)
    assert (t.sport, t.dport, t.seq, t.ack) == (40000, 80, 0xDEADBEEF, 0x01020304)
    assert (t.flags, t.win, t.urp, t.off) == (ACK | PSH, 29200, 0, 5)
    assert t.data == b"GET /\r\n"
    assert raw == dpkt_segment(
        SRC,
        DST,
        b"GET /\r\n",
        sport=40000,
        dport=80,
        seq=0xDEADBEEF,
        ack=0x01020304,
        flags=ACK | PSH,
        win=29200,
    )


def test_build_syn_options_match_dpkt() -> None:
    raw = build_tcp(
        SRC, DST, 80, 40000, 7, 8, SYN | ACK, 65535, mss=1460, wscale=3, sack_permitted=True
    )
    assert dpkt_checksum_ok(SRC, DST, raw)
    t = dpkt.tcp.TCP(raw)
    assert t.off * 4 == len(raw) == 32
    opts = dict((k, v) for k, v in dpkt.tcp.parse_opts(t.opts) if k != dpkt.tcp.TCP_OPT_NOP)
    assert opts[dpkt.tcp.TCP_OPT_MSS] == struct.pack(">H", 1460)
    assert opts[dpkt.tcp.TCP_OPT_WSCALE] == b"\x03"
    assert opts[dpkt.tcp.TCP_OPT_SACKOK] == b""


@pytest.mark.parametrize("payload", [b"", b"x", b"odd!!", bytes(range(256)) * 6])
def test_build_checksum_any_length(payload: bytes) -> None:
    raw = build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, payload)
    assert dpkt_checksum_ok(SRC, DST, raw)
    raw_mv = build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, memoryview(bytearray(payload)))
    assert raw_mv == raw


def test_parse_dpkt_built_segment_with_options() -> None:
    opts = (
        b"\x02\x04\x05\xb4"  # MSS 1460
        + b"\x04\x02"  # SACK permitted
        + b"\x08\x0a\x00\x00\x00\x2a\x00\x00\x00\x07"  # timestamps 42, 7
        + b"\x01"  # NOP
        + b"\x03\x03\x07"  # wscale 7
    )
    raw = dpkt_segment(
        SRC, DST, b"", opts, sport=51000, dport=443, seq=1, ack=0, flags=SYN, win=64240
    )
    seg = parse_tcp(raw, SRC, DST)
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags) == (51000, 443, 1, 0, SYN)
    assert seg.window == 64240
    assert seg.mss == 1460
    assert seg.wscale == 7
    assert seg.sack_permitted
    assert seg.timestamps == (42, 7)
    assert seg.payload == b""
    assert seg.seg_len == 1


def test_parse_data_segment() -> None:
    raw = dpkt_segment(
        SRC, DST, b"hello", sport=1, dport=2, seq=0xFFFFFFFF, ack=9, flags=ACK | FIN, win=3
    )
    seg = parse_tcp(memoryview(raw), SRC, DST)
    assert seg.payload == b"hello"
    assert isinstance(seg.payload, bytes)
    assert seg.seq == 0xFFFFFFFF
    assert seg.mss is None and seg.wscale is None and not seg.sack_permitted
    assert seg.seg_len == 6


def test_wscale_clamped_to_14() -> None:
    raw = dpkt_segment(SRC, DST, b"", b"\x03\x03\x20\x00", sport=1, dport=2, flags=SYN)
    assert parse_tcp(raw, SRC, DST).wscale == 14


@pytest.mark.parametrize(
    "opts",
    [
        b"\x01\x01\x02\x04",  # MSS cut off by the end of the header
        b"\x05\x00\x00\x00",  # length 0
        b"\x05\x01\x00\x00",  # length 1
        b"\xfe\x28\x00\x00",  # length past the end
        b"\x02\x03\x05\x00",  # MSS with a wrong length
        b"\x00\x02\x04\x05\xb4\x00\x00\x00",  # EOL first: the rest is ignored
    ],
)
def test_garbage_options_are_tolerated(opts: bytes) -> None:
    opts = opts + b"\x00" * (-len(opts) % 4)
    raw = dpkt_segment(SRC, DST, b"data", opts, sport=1, dport=2, flags=ACK)
    seg = parse_tcp(raw, SRC, DST)
    assert seg.payload == b"data"
    assert seg.mss is None


def test_errors() -> None:
    good = build_tcp(SRC, DST, 1, 2, 3, 4, ACK, 5, b"abc")
    with pytest.raises(MalformedFrame) as e:
        parse_tcp(good[:19], SRC, DST)
    assert e.value.reason == "tcp_short"
    bad_off = bytearray(good)
    bad_off[12] = 4 << 4
    with pytest.raises(MalformedFrame) as e:
        parse_tcp(bytes(bad_off), SRC, DST, verify_checksum=False)
    assert e.value.reason == "tcp_bad_offset"
    bad_off[12] = 15 << 4  # 60-byte header in a 23-byte segment
    with pytest.raises(MalformedFrame) as e:
        parse_tcp(bytes(bad_off), SRC, DST, verify_checksum=False)
    assert e.value.reason == "tcp_bad_offset"
    corrupt = bytearray(good)
    corrupt[-1] ^= 1
    with pytest.raises(MalformedFrame) as e:
        parse_tcp(bytes(corrupt), SRC, DST)
    assert e.value.reason == "tcp_bad_checksum"
    assert parse_tcp(bytes(corrupt), SRC, DST, verify_checksum=False).payload == b"abb"
    with pytest.raises(MalformedFrame) as e:
        parse_tcp(good, SRC, bytes([1, 2, 3, 4]))  # pseudo-header covers the addresses
    assert e.value.reason == "tcp_bad_checksum"


@given(
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 255),
    window=st.integers(0, 65535),
    payload=st.binary(max_size=200),
    mss=st.none() | st.integers(0, 65535),
    wscale=st.none() | st.integers(0, 14),
    sack=st.booleans(),
)
def test_roundtrip_against_dpkt(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes,
    mss: int | None,
    wscale: int | None,
    sack: bool,
) -> None:
    raw = build_tcp(
        SRC,
        DST,
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
        payload,
        mss=mss,
        wscale=wscale,
        sack_permitted=sack,
    )
    assert dpkt_checksum_ok(SRC, DST, raw)
    t = dpkt.tcp.TCP(raw)
    assert (t.sport, t.dport, t.seq, t.ack, t.flags, t.win) == (
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
    )
    assert t.data == payload
    seg = parse_tcp(raw, SRC, DST)
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window) == (
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
    )
    assert (seg.mss, seg.wscale, seg.sack_permitted, seg.payload) == (mss, wscale, sack, payload)


@given(st.binary(max_size=120), st.booleans())
def test_random_bytes_only_raise_malformed(data: bytes, verify: bool) -> None:
    try:
        seg = parse_tcp(data, SRC, DST, verify_checksum=verify)
    except MalformedFrame:
        return
    assert len(seg.payload) <= len(data) - 20


@given(st.binary(min_size=0, max_size=40), st.binary(max_size=20))
def test_random_options_only_raise_malformed(opts: bytes, payload: bytes) -> None:
    opts = opts + b"\x00" * (-len(opts) % 4)
    raw = dpkt_segment(SRC, DST, payload, opts, sport=1, dport=2, flags=ACK)
    seg = parse_tcp(raw, SRC, DST)
    assert seg.payload == payload

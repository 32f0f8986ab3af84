"""The native fast path against its pure-Python reference: identical results, identical bytes.

Skipped (with the reason) when the native extension is not in use, e.g. under SLIRPTRIO_PURE=1.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from slirptrio.wire import _accel, fast
from slirptrio.wire.ethernet import build_ethernet
from slirptrio.wire.ipv4 import build_ipv4
from slirptrio.wire.ipv6 import build_ipv6, fragment_header
from slirptrio.wire.tcp import build_tcp, parse_tcp
from slirptrio.wire.udp import build_udp

native: Any = _accel.native
pytestmark = pytest.mark.skipif(native is None, reason=f"native path not in use: {_accel.REASON}")

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

macs = st.binary(min_size=6, max_size=6)
ips = st.binary(min_size=4, max_size=4)
ips6 = st.binary(min_size=16, max_size=16)
ports = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def tcp_frames(draw: st.DrawFn) -> bytes:
    src, dst = draw(ips), draw(ips)
    opts: dict[str, Any] = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "mss": st.integers(0, 0xFFFF),
                "wscale": st.integers(0, 14),
                "sack_permitted": st.booleans(),
            },
        )
    )
    seg = build_tcp(
        src, dst, draw(ports), draw(ports), draw(u32), draw(u32), draw(st.integers(0, 255)),
        draw(ports), draw(st.binary(max_size=1600)), **opts,
    )
    packet = build_ipv4(
        src, dst, 6, seg, ident=draw(ports), ttl=draw(st.integers(0, 255)),
        df=draw(st.booleans()), mf=draw(st.booleans()),
        frag_offset=draw(st.sampled_from([0, 0, 0, 8, 1480])),
    )
    return build_ethernet(draw(macs), draw(macs), 0x0800, packet)


@st.composite
def udp_frames(draw: st.DrawFn) -> bytes:
    src, dst = draw(ips), draw(ips)
    dgram = build_udp(src, dst, draw(ports), draw(ports), draw(st.binary(max_size=1600)))
    if draw(st.booleans()):
        dgram = dgram[:6] + b"\x00\x00" + dgram[8:]  # no checksum
    packet = build_ipv4(src, dst, 17, dgram, ident=draw(ports))
    return build_ethernet(draw(macs), draw(macs), 0x0800, packet)


@st.composite
def ip6_frames(draw: st.DrawFn) -> bytes:
    """IPv6 TCP or UDP (a zero UDP checksum now and then), sometimes behind a hop-by-hop
    header or a fragment header, so both the fast and the general path's share are drawn."""
    src, dst = draw(ips6), draw(ips6)
    proto = draw(st.sampled_from([6, 17]))
    payload = draw(st.binary(max_size=1600))
    if proto == 6:
        l4 = build_tcp(
            src, dst, draw(ports), draw(ports), draw(u32), draw(u32), draw(st.integers(0, 255)),
            draw(ports), payload, mss=draw(st.one_of(st.none(), ports)),
        )
    else:
        l4 = build_udp(src, dst, draw(ports), draw(ports), payload)
        if draw(st.integers(0, 5)) == 0:
            l4 = l4[:6] + b"\x00\x00" + l4[8:]
    nh = proto
    how = draw(st.sampled_from(["plain", "plain", "plain", "hop", "frag"]))
    if how == "hop":
        l4, nh = bytes([proto, 0]) + bytes(6) + l4, 0
    elif how == "frag":
        l4, nh = fragment_header(proto, 0, False, draw(u32)) + l4, 44
    packet = build_ipv6(src, dst, nh, l4, hop_limit=draw(st.integers(0, 255)),
                        tc=draw(st.integers(0, 255)), flow_label=draw(st.integers(0, 0xFFFFF)))
    src_mac = bytes([draw(st.integers(0, 255)) & (0xFF if draw(st.integers(0, 9)) == 0 else 0xFE)])
    return build_ethernet(draw(macs), src_mac + draw(st.binary(min_size=5, max_size=5)), 0x86DD,
                          packet)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    frame = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["flip", "cut", "pad", "set"]))
        if how == "flip" and frame:
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << draw(st.integers(0, 7))
        elif how == "cut":
            del frame[draw(st.integers(0, len(frame))) :]
        elif how == "pad":
            frame += draw(st.binary(max_size=20))
        elif how == "set" and len(frame) > 71:
            # header bytes that steer the parser: ethertype, IHL, length, flags, proto, offset
            # (IPv6: version, payload length, next header, the TCP offset and checksum)
            i = draw(st.sampled_from(
                [0, 6, 12, 13, 14, 16, 17, 18, 19, 20, 21, 23, 46, 38, 39, 66, 70, 71]
            ))
            frame[i] = draw(st.integers(0, 255))
    return bytes(frame)


frames = st.one_of(
    mutated(tcp_frames()), mutated(udp_frames()), st.binary(max_size=120), tcp_frames(),
    mutated(ip6_frames()), ip6_frames(),
)


def run_of(items: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in items)


@SETTINGS
@given(st.binary(max_size=4000), st.one_of(st.integers(0, (1 << 48) - 1), st.integers(0, 1 << 200)))
def test_ones_sum(data: bytes, initial: int) -> None:
    # any size of initial: IPv6 pseudo-header sums pass big unfolded ones
    assert native.ones_sum(data, initial) == fast.pure_ones_sum(data, initial)
    assert native.ones_sum(data) == fast.pure_ones_sum(data)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 31, 32, 33, 65535, 65536, 1 << 20])
def test_ones_sum_extremes(n: int) -> None:
    for data in (b"\xff" * n, b"\x00" * n, bytes(range(256)) * (n // 256) + b"\x01" * (n % 256)):
        for initial in (0, 1, 0xFFFF, 0x1FFFE, (1 << 48) - 1, 1 << 48, 0xFFFF << 100, 1 << 128):
            assert native.ones_sum(data, initial) == fast.pure_ones_sum(data, initial)


@SETTINGS
@given(frames)
def test_parse_frame(frame: bytes) -> None:
    assert native.parse_frame(frame) == fast.pure_parse_frame(frame)


@SETTINGS
@given(tcp_frames())
def test_parse_frame_finds_tcp(frame: bytes) -> None:
    rec = native.parse_frame(frame)
    assert rec == fast.pure_parse_frame(frame)
    if frame[14 + 6] & 0x3F or frame[14 + 7] or frame[6] & 1:
        assert rec[0] == fast.KIND_OTHER  # fragments and multicast sources go the general way
        return
    assert rec[0] == fast.KIND_TCP
    end = 14 + int.from_bytes(frame[16:18], "big")  # without the Ethernet padding
    seg = parse_tcp(frame[34:end], frame[26:30], frame[30:34])
    assert rec[6:12] == (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window)
    assert frame[rec[13] : rec[14]] == seg.payload


@SETTINGS
@given(ip6_frames())
def test_parse_frame_finds_ipv6(frame: bytes) -> None:
    rec = native.parse_frame(frame)
    assert rec == fast.pure_parse_frame(frame)
    nh = frame[14 + 6]
    zero_udp = nh == 17 and frame[54 + 6 : 54 + 8] == b"\x00\x00"
    if nh not in (6, 17) or frame[6] & 1 or zero_udp:
        assert rec[0] == fast.KIND_OTHER  # extension headers, multicast, no UDP checksum
        return
    assert rec[0] == nh
    assert (rec[4], rec[5]) == (frame[22:38], frame[38:54])
    end = 54 + int.from_bytes(frame[18:20], "big")
    if nh == 6:
        seg = parse_tcp(frame[54:end], frame[22:38], frame[38:54])
        assert rec[6:12] == (seg.sport, seg.dport, seg.seq, seg.ack, seg.flags, seg.window)
        assert frame[rec[13] : rec[14]] == seg.payload
    else:
        assert rec[9] == end


@SETTINGS
@given(st.lists(frames, max_size=8), st.integers(0, 8), st.booleans())
def test_scan_frames(items: list[bytes], cut: int, empty: bool) -> None:
    run = run_of(items)
    if empty:
        run = b"\x00\x00\x00\x00" + run
    run = run[: len(run) - cut]
    assert native.scan_frames(run) == fast.pure_scan_frames(run)
    assert native.scan_frames(bytearray(run)) == fast.pure_scan_frames(memoryview(run))


@st.composite
def flow_runs(draw: st.DrawFn) -> list[bytes]:
    """Segments of a few flows, mostly each flow's next one in order (so they coalesce), some
    out of order, pure ACKs, other flags, another MAC, and other frames in between."""
    from slirptrio.wire.tcp import ACK, FIN, PSH, SYN

    nxt = [0, 0, 0]
    acks = [0xFFFFFFF0, 0xFFFFFFF0, 0xFFFFFFF0]
    out: list[bytes] = []
    for _ in range(draw(st.integers(0, 30))):
        if draw(st.integers(0, 9)) == 0:
            out.append(draw(frames))
            continue
        flow = draw(st.integers(0, 2))
        # flow 2 is IPv6 (sharing ports and the last address byte with an IPv4 flow's)
        src, dst = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2 + flow])
        if flow == 2:
            src, dst = bytes(15) + b"\x0f", bytes(15) + b"\x03"
        k = nxt[flow] if draw(st.integers(0, 4)) else draw(st.integers(0, 6))
        acks[flow] = (acks[flow] + draw(st.sampled_from([0, 0, 7, 1460, -7]))) & 0xFFFFFFFF
        flags = draw(st.sampled_from([ACK, ACK, ACK, ACK | PSH, ACK | FIN, SYN, ACK | 0x40]))
        pure_ack = flags == ACK and draw(st.integers(0, 3)) == 0
        payload = b"" if pure_ack else bytes([k]) * 100
        nxt[flow] = k if pure_ack else k + 1
        mac = b"\x52\x54\x00\x12\x34" + (b"\x57" if draw(st.integers(0, 9)) == 0 else b"\x56")
        seq = (0xFFFFFF00 + 100 * k) & 0xFFFFFFFF  # wrapping
        seg = build_tcp(src, dst, 40000 + flow, 80, seq, acks[flow], flags, draw(ports), payload)
        # now and then another destination MAC: a batch holds one pair of MACs only
        to = b"\x52\x55\x0a\x00\x02" + (b"\x10" if draw(st.integers(0, 9)) == 0 else b"\x02")
        if flow == 2:
            out.append(build_ethernet(to, mac, 0x86DD, build_ipv6(src, dst, 6, seg)))
        else:
            out.append(build_ethernet(to, mac, 0x0800, build_ipv4(src, dst, 6, seg)))
    return out


@SETTINGS
@given(flow_runs(), st.integers(0, 5))
def test_gro_scan(items: list[bytes], cut: int) -> None:
    run = run_of(items)
    run = run[: len(run) - cut] if cut else run
    got = native.gro_scan(run)
    assert got == fast.pure_gro_scan(run)
    event("coalesced" if any(i[0] == fast.KIND_TCP and i[11] > 1 for i in got) else "single")
    # every frame is accounted for, once
    assert sum(i[11] if i[0] == fast.KIND_TCP else 1 for i in got) == len(
        fast.pure_scan_frames(run)
    )


@SETTINGS
@given(
    st.lists(st.binary(max_size=100), max_size=6),
    st.integers(0, 40),
    st.integers(0, 120),
    st.booleans(),
)
def test_frames_end(items: list[bytes], cut: int, max_frame: int, empty: bool) -> None:
    run = (b"\x00\x00\x00\x00" if empty else b"") + run_of(items)
    n = max(0, len(run) - cut)
    assert native.frames_end(run, n, max_frame) == fast.pure_frames_end(run, n, max_frame)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    ip = bytearray(20)
    ip[0] = 0x45
    ip[1] = draw(st.integers(0, 255))  # tos
    ip[6] = draw(st.sampled_from([0, 0x40]))  # DF
    ip[8] = draw(st.integers(0, 255))  # ttl
    ip[9] = 6
    ip[12:20] = draw(ips) + draw(ips)
    src_mac = bytes([draw(st.integers(0, 255)) & 0xFE]) + draw(st.binary(min_size=5, max_size=5))
    if draw(st.integers(0, 2)) == 0:  # an IPv6 template
        ip6 = build_ipv6(draw(ips6), draw(ips6), 6, b"", hop_limit=draw(st.integers(0, 255)),
                         tc=draw(st.integers(0, 255)), flow_label=draw(st.integers(0, 0xFFFFF)))
        return draw(macs) + src_mac + b"\x86\xdd" + ip6
    return draw(macs) + src_mac + b"\x08\x00" + bytes(ip)


@SETTINGS
@given(
    heads(),
    ports,
    ports,
    ports,
    u32,
    u32,
    ports,
    st.binary(max_size=5000),
    st.data(),
)
def test_tcp_run(
    head: bytes, ident: int, sport: int, dport: int, seq: int, ack: int, window: int,
    payload: bytes, data: st.DataObject,
) -> None:
    start = data.draw(st.integers(0, len(payload)))
    length = data.draw(st.integers(0, len(payload) - start))
    mss = data.draw(st.one_of(st.integers(1, 1600), st.just(65495)))
    flags, last = data.draw(st.integers(0, 255)), data.draw(st.integers(0, 255))
    prefix = data.draw(st.binary(max_size=10))
    a, b = bytearray(prefix), bytearray(prefix)
    args = (head, ident, sport, dport, seq, ack, window, payload, start, length, mss, flags, last)
    assert native.tcp_run(a, *args) == fast.pure_tcp_run(b, *args)
    assert a == b
    # tcp_frames: the same run as bytes, built in place (native) and the reference way
    run = native.tcp_frames(*args)
    assert type(run) is bytes and type(fast.pure_tcp_frames(*args)) is bytes
    assert run == fast.pure_tcp_frames(*args) == a[len(prefix) :]
    # every frame of the run parses back to what was asked for
    pos = seq
    recs = native.scan_frames(bytes(a[len(prefix) :]))
    for i, rec in enumerate(recs):
        assert rec[0] == fast.KIND_TCP
        assert (rec[4], rec[5]) == ((head[22:38], head[38:54]) if len(head) == 54
                                    else (head[26:30], head[30:34]))
        assert rec[6:10] == (sport, dport, pos, ack)
        assert rec[10] == (last if i == len(recs) - 1 else flags)
        pos = (pos + rec[14] - rec[13]) & 0xFFFFFFFF
    assert pos == (seq + length) & 0xFFFFFFFF


@SETTINGS
@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.integers(0, 8),
    st.integers(0, (1 << 32) * 10**9 - 1),
    st.integers(0, 400),
)
def test_pcap_run(items: list[bytes], cut: int, ts_ns: int, snaplen: int) -> None:
    run = run_of(items)
    run = run[: len(run) - cut] if cut else run
    a, b = bytearray(b"x"), bytearray(b"x")
    assert native.pcap_run(a, run, ts_ns, snaplen) == fast.pure_pcap_run(b, run, ts_ns, snaplen)
    assert a == b


def test_pcap_run_is_what_per_frame_writes_make() -> None:
    import io

    from slirptrio.wire.pcap import PcapWriter, read_pcap

    frames = [bytes([i]) * (60 + i) for i in range(20)]
    one, many = io.BytesIO(), io.BytesIO()
    w1, w2 = PcapWriter(one, snaplen=70), PcapWriter(many, snaplen=70)
    w1.write_run(1_700_000_000_123_456_789, run_of(frames))
    for f in frames:
        w2.write(1_700_000_000_123_456_789, f)
    w1.flush()
    w2.flush()
    assert one.getvalue() == many.getvalue()
    assert [f for _t, f in read_pcap(io.BytesIO(one.getvalue()))] == [f[:70] for f in frames]


def test_ones_sum_rejects_a_negative_initial() -> None:
    with pytest.raises(ValueError):
        native.ones_sum(b"ab", -1)
    with pytest.raises(ValueError):
        native.ones_sum(b"ab", -(1 << 70))


def test_tcp_frames_pads_every_short_frame() -> None:
    """Tiny MSSs give frames below 60 bytes before the last one: each is padded, and the
    bytes tcp_frames sizes up front are exactly the run (nothing written past them)."""
    head = b"\x02" * 12 + b"\x08\x00" + bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6]) + bytes(10)
    head6 = b"\x02" * 12 + b"\x86\xdd" + build_ipv6(bytes(16), bytes(16), 6, b"")
    for h in (head, head6):
        for mss in range(1, 9):
            for length in range(0, 3 * mss + 2):
                args = (h, 1, 2, 3, 4, 5, 6, bytes(range(length)), 0, length, mss, 0x10, 0x18)
                ref = bytearray()
                fast.pure_tcp_run(ref, *args)
                assert native.tcp_frames(*args) == ref
        # the checksum summed while copying: all-ones words (every add carries), zeros, odd
        # starts and lengths, the biggest segments
        for fill in (b"\xff", b"\x00", b"\xfe\x01"):
            data = (fill * 140000)[:140000]
            for start, length, mss in [(0, 65495, 65495), (1, 65494, 65495), (3, 131001, 65495),
                                       (7, 1001, 1460), (0, 9, 4)]:
                args = (h, 1, 2, 3, 4, 5, 6, data, start, length, mss, 0x10, 0x18)
                ref = bytearray()
                fast.pure_tcp_run(ref, *args)
                assert native.tcp_frames(*args) == ref


def test_tcp_run_rejects_what_the_reference_rejects() -> None:
    head = b"\x02" * 12 + b"\x08\x00" + bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6]) + bytes(10)
    head6 = b"\x02" * 12 + b"\x86\xdd" + build_ipv6(bytes(16), bytes(16), 6, b"")
    good = (head, 1, 2, 3, 4, 5, 6, b"abc", 0, 3, 1460, 0x10, 0x18)
    native.tcp_run(bytearray(), head6, *good[1:])  # both families' templates are taken
    for i, bad in [
        (0, head[:-1]), (0, head[:23] + b"\x11" + head[24:]), (0, head[:20] + b"\x20" + head[21:]),
        (1, 0x10000), (2, -1), (4, 1 << 32), (6, 0x10000), (8, 2), (9, 4), (10, 0), (12, 256),
        (0, head6[:-1] + b"\x00\x00"), (0, head6[:14] + b"\x45" + head6[15:]),
        (0, head6[:20] + b"\x11" + head6[21:]), (0, head6[:13] + b"\xde" + head6[14:]),
    ]:
        args: list[Any] = list(good)
        args[i] = bad
        with pytest.raises(ValueError):
            native.tcp_run(bytearray(), *args)
        with pytest.raises(ValueError):
            fast.pure_tcp_run(bytearray(), *args)
        with pytest.raises(ValueError):
            native.tcp_frames(*args)
        with pytest.raises(ValueError):
            fast.pure_tcp_frames(*args)


def test_the_choice_is_visible() -> None:
    assert fast.IMPL == "native" and fast.REASON == ""
    assert fast.tcp_run is native.tcp_run
    assert fast.tcp_frames is native.tcp_frames


def test_pure_is_forced_by_the_environment() -> None:
    import subprocess
    import sys

    code = "from slirptrio.wire import fast; print(fast.IMPL, fast.REASON)"
    env = {**os.environ, "SLIRPTRIO_PURE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.stdout.startswith("pure ") and "SLIRPTRIO_PURE" in out.stdout

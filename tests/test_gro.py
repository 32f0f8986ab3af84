"""Bursts in, runs out: GuestFrames (GRO-style coalescing) and FrameRuns (SendFrames).

The reference for both is the per-frame path: a burst must deliver to the host exactly the
bytes, and to the guest exactly the frames, that the same frames one event each would, and the
connection must end in the same state.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    CoreError,
    Effect,
    Event,
    FrameRuns,
    GuestFrame,
    GuestFrames,
    SendFrame,
    SendFrames,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpEof,
    TcpSend,
    TcpSent,
)
from slirptrio.core.stack import Stack
from slirptrio.wire.ethernet import build_ethernet
from slirptrio.wire.framing import split_run
from slirptrio.wire.ipv4 import build_ipv4
from slirptrio.wire.ipv6 import build_ipv6
from slirptrio.wire.tcp import ACK, FIN, PSH, SYN, build_tcp, parse_tcp
from tests import guestframes as gf

GUEST = socket.inet_aton("10.0.2.15")
HOST = socket.inet_aton("10.0.2.2")
GW_MAC = bytes.fromhex("52550a000202")
GUEST6 = socket.inet_pton(socket.AF_INET6, "fec0::5054:ff:fe12:3456")
HOST6 = socket.inet_pton(socket.AF_INET6, "fec0::2")
M = 0xFFFFFFFF


def tcp(seq: int, ack: int, flags: int, payload: bytes = b"", *, sport: int = 40000,
        window: int = 0xFFFF, v6: bool = False, **opts: Any) -> bytes:
    if v6:  # the IPv6 fast path: the same segment over IPv6 (the stack answers from our MAC)
        seg = build_tcp(GUEST6, HOST6, sport, 80, seq & M, ack & M, flags, window, payload,
                        **opts)
        return build_ethernet(GW_MAC, gf.GUEST_MAC, 0x86DD, build_ipv6(GUEST6, HOST6, 6, seg))
    seg = build_tcp(GUEST, HOST, sport, 80, seq & M, ack & M, flags, window, payload, **opts)
    return build_ethernet(GW_MAC, gf.GUEST_MAC, 0x0800, build_ipv4(GUEST, HOST, 6, seg, ident=9))


def run_of(frames: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def frames_of(effects: list[Effect]) -> list[bytes]:
    out: list[bytes] = []
    for e in effects:
        if isinstance(e, SendFrame):
            out.append(e.data)
        elif isinstance(e, SendFrames):
            out.extend(bytes(f) for f in split_run(e.data))
    return out


def host_effects(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, SendFrame | SendFrames)]


class Guest:
    """A stack with one TCP connection from the guest (port ``sport``) to 10.0.2.2:80."""

    def __init__(self, *, bursts: bool, runs: bool, sports: tuple[int, ...] = (40000,),
                 v6: bool = False) -> None:
        self.stack = Stack(parse_user_options("ipv6=on" if v6 else ""), 5)
        self.v6 = v6
        self.now = 1_000_000
        self.bursts = bursts
        self.out: list[Effect] = []
        if runs:
            self.step(FrameRuns(True))
        self.flows: dict[int, int] = {}
        self.isn: dict[int, int] = {}
        for sport in sports:
            effects = self.guest([tcp(1000, 0, SYN, sport=sport, mss=1460, wscale=7, v6=v6)])
            flow = next(e.flow for e in effects if isinstance(e, TcpConnect))
            (synack_frame,) = [f for f in frames_of(self.step(TcpConnected(flow)))
                               if f[12:14] == (b"\x86\xdd" if v6 else b"\x08\x00")]
            synack = (parse_tcp(synack_frame[54:], HOST6, GUEST6) if v6
                      else parse_tcp(synack_frame[34:], HOST, GUEST))
            self.guest([tcp(1001, synack.seq + 1, ACK, sport=sport, v6=v6)])
            self.flows[sport] = flow
            self.isn[sport] = synack.seq + 1
        self.out.clear()

    def step(self, event: Event) -> list[Effect]:
        self.now += 1000
        effects = self.stack.handle(event, self.now)
        self.out += effects
        return effects

    def guest(self, frames: list[bytes]) -> list[Effect]:
        if self.bursts:
            return self.step(GuestFrames(run_of(frames)))
        out: list[Effect] = []
        for f in frames:
            out += self.step(GuestFrame(f))
        return out

    def to_host(self, sport: int = 40000) -> bytes:
        flow = self.flows[sport]
        return b"".join(e.data for e in self.out if isinstance(e, TcpSend) and e.flow == flow)

    def state(self, sport: int = 40000) -> tuple[int, ...]:
        c = self.stack.tcp._by_flow[self.flows[sport]]
        return (
            c.rcv_nxt, c.snd_una, c.snd_nxt, c.snd_right, c.snd_wl1, c.snd_wl2, c.host_unsent,
            int(c.rcv_fin),
        )


@pytest.mark.parametrize("v6", [False, True])
def test_a_burst_of_data_is_one_send_and_one_ack(v6: bool) -> None:
    g = Guest(bursts=True, runs=True, v6=v6)
    ack = g.isn[40000]
    data = [bytes([i]) * 1440 for i in range(8)]
    effects = g.guest([tcp(1001 + i * 1440, ack, ACK | PSH, d, v6=v6) for i, d in enumerate(data)])
    assert host_effects(effects) == [TcpSend(g.flows[40000], b"".join(data))]
    (run,) = [e for e in effects if isinstance(e, SendFrames)]
    (frame,) = frames_of([run])
    seg = parse_tcp(frame[54:74], HOST6, GUEST6) if v6 else parse_tcp(frame[34:54], HOST, GUEST)
    assert seg.flags == ACK and seg.ack == 1001 + 8 * 1440
    assert g.stack.counters["tcp_gro_merged"] == 7
    assert g.stack.counters["frames_in"] >= 8


def test_pure_acks_in_a_burst_are_taken_as_the_last_one() -> None:
    g = Guest(bursts=True, runs=True)
    flow, una = g.flows[40000], g.isn[40000]
    g.step(TcpData(flow, bytes(range(256)) * 40))  # 10240 bytes: 8 segments out
    acks = [tcp(1001, una + k * 2920, ACK) for k in range(1, 4)]
    g.guest(acks)
    assert g.stack.counters["tcp_gro_merged"] == 2
    assert g.state()[1] == una + 3 * 2920


def test_other_frames_in_a_burst_keep_their_place() -> None:
    g = Guest(bursts=True, runs=True, sports=(40000, 40001))
    a, b = g.isn[40000], g.isn[40001]
    frames = [
        tcp(1001, a, ACK, b"a1", sport=40000),
        tcp(1001, b, ACK, b"b1", sport=40001),
        gf.arp_request("10.0.2.2"),
        tcp(1003, a, ACK, b"a2", sport=40000),
        tcp(1003, b, ACK | FIN, b"b2", sport=40001),
        gf.icmp_echo("10.0.2.2"),
        b"\x00short",
    ]
    effects = g.guest(frames)
    assert g.to_host(40000) == b"a1a2" and g.to_host(40001) == b"b1b2"
    kinds = [parse_tcp_or_kind(f) for f in frames_of(effects)]
    assert "arp" in kinds and "icmp" in kinds
    assert g.stack.counters["drop_eth_short"] == 1
    assert g.state(40001)[-1] == 1  # the FIN


def parse_tcp_or_kind(frame: bytes) -> str:
    if frame[12:14] == b"\x08\x06":
        return "arp"
    return {1: "icmp", 6: "tcp", 17: "udp"}.get(frame[23], "?")


def test_a_truncated_run_is_counted() -> None:
    g = Guest(bursts=True, runs=True)
    run = run_of([tcp(1001, g.isn[40000], ACK, b"xy")])
    g.step(GuestFrames(run + b"\x00\x00\x05"))
    assert g.to_host() == b"xy"
    assert g.stack.counters["drop_run_truncated"] == 1


segments = st.lists(
    st.tuples(
        st.integers(-3000, 6000),  # offset from the next expected byte
        st.integers(0, 1460),  # length
        st.sampled_from([ACK, ACK, ACK | PSH, ACK | FIN]),
        st.integers(0, 3),  # how far the ACK field advances (in our segments)
    ),
    max_size=24,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(segments, min_size=1, max_size=4), st.booleans(), st.booleans())
def test_a_burst_delivers_what_single_frames_deliver(
    bursts: list[Any], host_data: bool, v6: bool
) -> None:
    """Whatever mix of in-order, overlapping, out-of-order and FIN segments the guest sends,
    over IPv4 or IPv6, one event per burst hands the host the same bytes and leaves the same
    state as one event per frame."""
    single = Guest(bursts=False, runs=False, v6=v6)
    burst = Guest(bursts=True, runs=True, v6=v6)
    stream = bytes(range(251)) * 100
    flow = single.flows[40000]
    assert burst.flows[40000] == flow
    if host_data:
        for g in (single, burst):
            g.step(TcpData(flow, stream[:5000]))
            g.step(TcpEof(flow))
    una = single.isn[40000]
    nxt = 1001
    for spec in bursts:
        frames = []
        ack = una
        for off, length, flags, adv in spec:
            seq = max(1001, nxt + off)
            payload = stream[(seq - 1001) % 5000 :][:length]
            ack = min(ack + adv * 1460, una + (5001 if host_data else 0))
            frames.append(tcp(seq, ack, flags, payload, v6=v6))
            if seq <= nxt < seq + len(payload):
                nxt = seq + len(payload)
        for g in (single, burst):
            g.guest(frames)
        assert burst.to_host() == single.to_host()
        if flow not in single.stack.tcp._by_flow:
            assert flow not in burst.stack.tcp._by_flow
            return
        assert burst.state() == single.state()
        unsent = single.stack.tcp._by_flow[flow].host_unsent
        if unsent:  # the host socket took it all: the window opens again
            for g in (single, burst):
                g.step(TcpSent(flow, unsent))


@pytest.mark.parametrize("v6", [False, True])
def test_runs_carry_the_frames_single_effects_carry(v6: bool) -> None:
    """FrameRuns changes how frames are packaged, never which frames or their bytes."""
    per_frame = Guest(bursts=False, runs=False, v6=v6)
    runs = Guest(bursts=False, runs=True, v6=v6)
    for g in (per_frame, runs):
        flow = g.flows[40000]
        g.step(TcpData(flow, bytes(range(256)) * 200))
        g.guest([tcp(1001, g.isn[40000] + 2920, ACK, b"hello", v6=v6)])
        g.step(TcpSent(flow, 5))
        g.step(TcpEof(flow))
    assert frames_of(runs.out) == frames_of(per_frame.out)
    assert host_effects(runs.out) == host_effects(per_frame.out)
    assert not any(isinstance(e, SendFrame) for e in runs.out)
    assert not any(isinstance(e, SendFrames) for e in per_frame.out)


def test_a_bug_on_one_frame_of_a_burst_spares_the_others(monkeypatch: Any) -> None:
    """A core exception while handling one frame of a burst is that frame's CoreError, in its
    place; the other frames' effects are kept (the door would lose the whole burst)."""
    g = Guest(bursts=True, runs=True)
    original = Stack._arp

    def arp(self: Stack, src_mac: bytes, payload: Any) -> None:
        raise KeyError("injected")

    monkeypatch.setattr(Stack, "_arp", arp)
    effects = g.guest([
        tcp(1001, g.isn[40000], ACK, b"before"),
        gf.arp_request("10.0.2.2"),
        tcp(1007, g.isn[40000], ACK, b"after"),
    ])
    monkeypatch.setattr(Stack, "_arp", original)
    errors = [e for e in effects if isinstance(e, CoreError)]
    assert errors == [CoreError("KeyError", "'injected'")]
    assert g.to_host() == b"beforeafter"
    assert g.stack.counters["core_exceptions"] == 1
    # in its place: after what the first segment caused, before what the last one did
    kinds = [type(e).__name__ for e in effects]
    assert kinds.index("CoreError") > kinds.index("TcpSend")


def _seg(dst: str, seq: int = 7, flags: int = SYN, payload: bytes = b"",
         src: str = "10.0.2.15") -> bytes:
    """A TCP segment without options (what the GRO path takes) between any two addresses."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    seg = build_tcp(s, d, 40001, 80, seq, 0 if flags == SYN else 5, flags, 0xFFFF, payload)
    return build_ethernet(GW_MAC, gf.GUEST_MAC, 0x0800, build_ipv4(s, d, 6, seg, ident=9))


@pytest.mark.parametrize(
    ("options", "frames"),
    [
        ("", [_seg("127.0.0.1")]),
        ("", [_seg("0.1.2.3"), _seg("0.1.2.3", 8, ACK, b"x" * 9),
              _seg("0.1.2.3", 17, ACK | PSH, b"y" * 9)]),
        ("", [_seg("224.0.0.9"), _seg("255.255.255.255"), _seg("240.0.0.1", 8, ACK, b"z")]),
        ("", [_seg("10.0.2.255"), _seg("203.0.113.1", src="127.0.0.1")]),
        ("", [_seg("203.0.113.1"), _seg("203.0.113.1", 8, ACK, b"a"), _seg("127.0.0.1")]),
        ("ipv4=off,ipv6=on", [_seg("203.0.113.1")]),
    ],
)
def test_a_burst_keeps_the_checks_before_tcp(options: str, frames: list[bytes]) -> None:
    """Martian sources and destinations, the network's broadcast and ipv4=off hold for segments
    that arrive in a burst exactly as for single frames: dropped, counted, answered alike."""
    single = Stack(parse_user_options(options), 5)
    burst = Stack(parse_user_options(options), 5)
    one = [e for f in frames for e in single.handle(GuestFrame(f), 1000)]
    many = burst.handle(GuestFrames(run_of(frames)), 1000)
    assert frames_of(many) == frames_of(one)
    assert host_effects(many) == host_effects(one)
    assert len(burst.tcp) == len(single.tcp)
    drops = {k: v for k, v in single.counters.items() if k.startswith("drop_")}
    assert drops and drops == {k: v for k, v in burst.counters.items() if k.startswith("drop_")}
    assert burst.counters["frames_in"] == single.counters["frames_in"] == len(frames)


def _seg6(dst: str, seq: int = 7, flags: int = SYN, payload: bytes = b"",
          src: str = "fec0::5054:ff:fe12:3456") -> bytes:
    """:func:`_seg` over IPv6."""
    s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    seg = build_tcp(s, d, 40001, 80, seq, 0 if flags == SYN else 5, flags, 0xFFFF, payload)
    return build_ethernet(GW_MAC, gf.GUEST_MAC, 0x86DD, build_ipv6(s, d, 6, seg))


@pytest.mark.parametrize(
    ("options", "frames"),
    [
        ("ipv6=on", [_seg6("fec0::2", src="::1"), _seg6("fec0::2", 8, ACK, b"x", src="::1")]),
        ("ipv6=on", [_seg6("fec0::2", src="ff02::1"), _seg6("fec0::2", src="::")]),
        ("ipv6=on", [_seg6("fec0::2", src="::ffff:10.0.2.15"), _seg6("2001:db8::1")]),
        # a segment to an address the same burst shows to be a guest's: never NATed
        ("ipv6=on", [_seg6("fec0::99"), _seg6("fec0::2", src="fec0::99"),
                     _seg6("fec0::99", 8, ACK, b"y")]),
        ("ipv4=on,ipv6=off", [_seg6("fec0::2"), _seg6("fec0::2", 8, ACK, b"z")]),
    ],
)
def test_a_burst_keeps_the_checks_before_tcp_over_ipv6(options: str, frames: list[bytes]) -> None:
    """The IPv6 fast path keeps the general path's checks: martian sources, a guest's address
    as destination, ipv6=off; what a burst does is what single frames do."""
    single = Stack(parse_user_options(options), 5)
    burst = Stack(parse_user_options(options), 5)
    one = [e for f in frames for e in single.handle(GuestFrame(f), 1000)]
    many = burst.handle(GuestFrames(run_of(frames)), 1000)
    assert frames_of(many) == frames_of(one)
    assert host_effects(many) == host_effects(one)
    assert len(burst.tcp) == len(single.tcp)
    assert {k: v for k, v in single.counters.items() if k.startswith("drop_")} == {
        k: v for k, v in burst.counters.items() if k.startswith("drop_")
    }
    assert burst.counters["frames_in"] == single.counters["frames_in"] == len(frames)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=9000), st.integers(1, 1440), st.integers(0, M), st.integers(0, M),
       st.sampled_from([ACK, ACK | PSH, ACK | FIN]))
def test_ipv6_segments_built_natively_are_the_codecs_segments(
    payload: bytes, mss: int, seq: int, ack: int, last: int
) -> None:
    """send_tcp over IPv6 (one tcp_frames run) gives the very frames the codecs gave
    segment by segment (build_tcp, then the stack's own IPv6 and Ethernet framing)."""
    fast_stack = Stack(parse_user_options("ipv6=on"), 5)
    codec_stack = Stack(parse_user_options("ipv6=on"), 5)
    fast_stack.send_tcp(HOST6, GUEST6, 80, 40000, seq, ack, 1000, payload, 0, len(payload), mss,
                        ACK, last)
    pos, s = 0, seq
    while True:
        n = min(mss, len(payload) - pos)
        done = pos + n >= len(payload)
        seg = build_tcp(HOST6, GUEST6, 80, 40000, s, ack, last if done else ACK, 1000,
                        payload[pos : pos + n])
        codec_stack.send_ip(HOST6, GUEST6, 6, seg)
        if done:
            break
        pos, s = pos + n, (s + n) & M
    pending = b"".join(fast_stack._parts) + fast_stack._frames  # the frames not yet effects
    assert pending == b"".join(codec_stack._parts) + codec_stack._frames
    assert fast_stack.counters["frames_out"] == codec_stack.counters["frames_out"]


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["tcp4", "tcp6", "udp4"]), st.binary(max_size=3000),
        st.integers(1, 1440), st.sampled_from([ACK, ACK | PSH, ACK | FIN]),
    ),
    max_size=6,
)


@settings(max_examples=100, deadline=None)
@given(_OPS, st.booleans())
def test_a_group_of_runs_and_frames_is_what_the_codecs_make(
    ops: list[tuple[str, bytes, int, int]], runs: bool
) -> None:
    """Frames made in one group, TCP runs (built in place as bytes) and single frames mixed,
    become the effects the codecs' frames, one at a time and in the same order, become: one
    SendFrames of ``bytes`` (FrameRuns; the very run when it is one TCP run), else SendFrame
    each."""
    fast_stack = Stack(parse_user_options("ipv6=on"), 5)
    codec_stack = Stack(parse_user_options("ipv6=on"), 5)
    for stack in (fast_stack, codec_stack):
        stack._out = []
        stack._runs = runs
    made: list[bytes] = []
    for kind, payload, mss, last in ops:
        if kind == "udp4":
            fast_stack.send_ip(HOST, GUEST, 17, payload[:100])
            codec_stack.send_ip(HOST, GUEST, 17, payload[:100])
            continue
        src, dst = (HOST, GUEST) if kind == "tcp4" else (HOST6, GUEST6)
        fast_stack.send_tcp(src, dst, 80, 40000, 7, 9, 1000, payload, 0, len(payload), mss, ACK,
                            last)
        if len(fast_stack._parts) > len(made):
            made.append(fast_stack._parts[-1])
        pos, s = 0, 7
        while True:
            n = min(mss, len(payload) - pos)
            done = pos + n >= len(payload)
            seg = build_tcp(src, dst, 80, 40000, s, 9, last if done else ACK, 1000,
                            payload[pos : pos + n])
            codec_stack.send_ip(src, dst, 6, seg)
            if done:
                break
            pos, s = pos + n, (s + n) & M
    assert not codec_stack._parts
    for stack in (fast_stack, codec_stack):
        if stack._parts or stack._frames:
            stack._flush_frames()
        assert not stack._parts and not stack._frames
    assert fast_stack._out == codec_stack._out
    assert all(type(e.data) is bytes for e in fast_stack._out)  # type: ignore[attr-defined]
    assert fast_stack.counters["frames_out"] == codec_stack.counters["frames_out"]
    if runs and ops and all(k != "udp4" for k, *_ in ops[:1]) and len(ops) == 1:
        assert fast_stack._out[0].data is made[0]  # type: ignore[attr-defined]

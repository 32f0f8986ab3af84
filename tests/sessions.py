"""A scripted session through the door, recorded as a journal: bursts in, runs out, both
directions of bulk TCP, plus ARP, DHCP and ping. Used to check that a journal made on one fast
path (native or pure) replays identical on the other.

``python -c 'from tests.sessions import record; record("PATH")'`` records one with whatever
path this process uses (``SLIRPTRIO_PURE=1`` forces pure).
"""

from __future__ import annotations

import socket

from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    Effect,
    Event,
    FrameRuns,
    GuestFrames,
    GuestLink,
    SendFrames,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpDataSent,
    TcpEof,
    TcpRecvCredit,
    TcpSend,
    TcpSent,
    Tick,
)
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.wire.ethernet import build_ethernet
from slirptrio.wire.framing import split_run
from slirptrio.wire.ipv4 import build_ipv4
from slirptrio.wire.tcp import ACK, FIN, PSH, SYN, build_tcp, parse_tcp
from tests import guestframes as gf
from tests.journals import recording

GUEST = socket.inet_aton("10.0.2.15")
HOST = socket.inet_aton("10.0.2.2")
GW_MAC = bytes.fromhex("52550a000202")
SEED = 11


def _tcp(seq: int, ack: int, flags: int, payload: bytes = b"", **opts: object) -> bytes:
    seg = build_tcp(
        GUEST, HOST, 41000, 80, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, 0xFFFF, payload,
        **opts,  # type: ignore[arg-type]
    )
    return build_ethernet(GW_MAC, gf.GUEST_MAC, 0x0800, build_ipv4(GUEST, HOST, 6, seg, ident=3))


def _run(frames: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def _frames(effects: list[Effect]) -> list[bytes]:
    return [bytes(f) for e in effects if isinstance(e, SendFrames) for f in split_run(e.data)]


def record(path: str) -> tuple[int, dict[str, int]]:
    """Record the session to the journal directory ``path``; returns the number of door steps
    and the counters."""
    config = parse_user_options("mtu=4000")
    with recording(path, config, SEED, stack=Stack(config, SEED)) as door:
        return _session(door)


def _session(door: Door) -> tuple[int, dict[str, int]]:
    now = 0
    credit = 0  # what the core lets the host side read

    def step(event: Event) -> list[Effect]:
        nonlocal now, credit
        now += 250_000
        effects = door.step(event, now)
        credit += sum(e.n for e in effects if isinstance(e, TcpRecvCredit))
        return effects

    step(FrameRuns(True))
    step(GuestLink(True))
    step(GuestFrames(_run([gf.dhcp(1), gf.arp_request("10.0.2.2")])))
    step(GuestFrames(_run([gf.dhcp(3, requested="10.0.2.15", server="10.0.2.2")])))
    step(GuestFrames(_run([gf.icmp_echo("10.0.2.2", seq=1, payload=bytes(range(200)))])))
    effects = step(GuestFrames(_run([_tcp(5000, 0, SYN, mss=3960, wscale=7)])))
    flow = next(e.flow for e in effects if isinstance(e, TcpConnect))
    effects = step(TcpConnected(flow))
    iss = parse_tcp(_frames(effects)[0][34:], HOST, GUEST).seq
    una = iss + 1
    step(GuestFrames(_run([_tcp(5001, una, ACK)])))
    # guest -> host: bursts of in-order segments, one odd one out of order, the host taking it
    seq = 5001
    blob = bytes((i * 7) & 0xFF for i in range(3960))
    for burst in range(12):
        frames = [_tcp(seq + i * 3960, una, ACK | PSH, blob) for i in range(8)]
        if burst == 5:
            frames[3], frames[4] = frames[4], frames[3]
        effects = step(GuestFrames(_run(frames)))
        seq += 8 * 3960
        sent = sum(len(e.data) for e in effects if isinstance(e, TcpSend))
        if sent:
            step(TcpSent(flow, sent))
    # one request/response: the guest's byte, its send reported with the host's answer
    effects = step(GuestFrames(_run([_tcp(seq, una, ACK | PSH, b"q")])))
    seq += 1
    sent = sum(len(e.data) for e in effects if isinstance(e, TcpSend))
    assert sent == 1 and credit > 0
    assert len(_frames(step(TcpDataSent(flow, sent, b"a")))) == 1  # the answer, to the guest
    credit -= 1
    # host -> guest: reads as credit allows; the guest acknowledges each read in one burst
    chunk = bytes((i * 13) & 0xFF for i in range(60000))
    rcv = una + 1
    for _ in range(10):
        n = min(credit, len(chunk))
        effects = step(TcpData(flow, chunk[:n])) if n else []
        credit -= n
        got = _frames(effects)
        rcv += sum(int.from_bytes(f[16:18], "big") - 40 for f in got)
        half = rcv - sum(int.from_bytes(f[16:18], "big") - 40 for f in got[len(got) // 2 :])
        step(GuestFrames(_run([_tcp(seq, half, ACK), _tcp(seq, rcv, ACK)])))
    step(TcpEof(flow))
    effects = step(GuestFrames(_run([_tcp(seq, rcv + 1, ACK | FIN)])))
    step(Tick())
    step(GuestLink(False))
    return door.seq, dict(door.stack.counters)

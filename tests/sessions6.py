"""The IPv6 twin of :mod:`tests.sessions`: a scripted session through the door, recorded as a
journal, bulk TCP both ways over IPv6 (bursts coalesced by the IPv6 fast path in, runs built by
``tcp_run`` out), with one segment out of order and one behind an extension header (the
general path). Used to check that a journal made on one fast path replays identical on the
other.

``python -c 'from tests.sessions6 import record; record("PATH")'`` records one with whatever
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
from slirptrio.wire.ipv6 import build_ipv6
from slirptrio.wire.tcp import ACK, FIN, PSH, SYN, build_tcp, parse_tcp
from tests import guestframes as gf
from tests.journals import recording

GUEST = socket.inet_pton(socket.AF_INET6, "fec0::5054:ff:fe12:3456")
HOST = socket.inet_pton(socket.AF_INET6, "fec0::2")
GW_MAC = bytes.fromhex("52550a000202")
SEED = 11
MSS = 3940  # mtu 4000 less the IPv6 and TCP headers


def _tcp(seq: int, ack: int, flags: int, payload: bytes = b"", hop_by_hop: bool = False,
         **opts: object) -> bytes:
    seg = build_tcp(
        GUEST, HOST, 41000, 80, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, 0xFFFF, payload,
        **opts,  # type: ignore[arg-type]
    )
    if hop_by_hop:  # an empty hop-by-hop options header: the general path takes it
        packet = build_ipv6(GUEST, HOST, 0, bytes([6, 0]) + bytes(6) + seg)
    else:
        packet = build_ipv6(GUEST, HOST, 6, seg)
    return build_ethernet(GW_MAC, gf.GUEST_MAC, 0x86DD, packet)


def _run(frames: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def _frames(effects: list[Effect]) -> list[bytes]:
    return [bytes(f) for e in effects if isinstance(e, SendFrames) for f in split_run(e.data)]


def _payload_len(frame: bytes) -> int:
    return int.from_bytes(frame[18:20], "big") - 20 if frame[20] == 6 else 0


def record(path: str) -> tuple[int, dict[str, int]]:
    """Record the session to the journal directory ``path``; returns the number of door steps
    and the counters."""
    config = parse_user_options("mtu=4000,ipv6=on")
    with recording(path, config, SEED, stack=Stack(config, SEED)) as door:
        return _session(door)


def _session(door: Door) -> tuple[int, dict[str, int]]:
    now = 0
    credit = 0

    def step(event: Event) -> list[Effect]:
        nonlocal now, credit
        now += 250_000
        effects = door.step(event, now)
        credit += sum(e.n for e in effects if isinstance(e, TcpRecvCredit))
        return effects

    step(FrameRuns(True))
    step(GuestLink(True))
    effects = step(GuestFrames(_run([_tcp(5000, 0, SYN, mss=MSS, wscale=7)])))
    flow = next(e.flow for e in effects if isinstance(e, TcpConnect))
    effects = step(TcpConnected(flow))
    (synack,) = [f for f in _frames(effects) if f[12:14] == b"\x86\xdd" and f[20] == 6]
    una = parse_tcp(synack[54:], HOST, GUEST).seq + 1
    step(GuestFrames(_run([_tcp(5001, una, ACK)])))
    seq = 5001
    blob = bytes((i * 7) & 0xFF for i in range(MSS))
    for burst in range(10):
        frames = [_tcp(seq + i * MSS, una, ACK | PSH, blob, hop_by_hop=burst == 7 and i == 2)
                  for i in range(8)]
        if burst == 4:
            frames[3], frames[4] = frames[4], frames[3]
        effects = step(GuestFrames(_run(frames)))
        seq += 8 * MSS
        sent = sum(len(e.data) for e in effects if isinstance(e, TcpSend))
        if sent:
            step(TcpSent(flow, sent))
    chunk = bytes((i * 13) & 0xFF for i in range(60000))
    rcv = una
    for _ in range(8):
        n = min(credit, len(chunk))
        effects = step(TcpData(flow, chunk[:n])) if n else []
        credit -= n
        got = _frames(effects)
        rcv += sum(_payload_len(f) for f in got)
        half = rcv - sum(_payload_len(f) for f in got[len(got) // 2 :])
        step(GuestFrames(_run([_tcp(seq, half, ACK), _tcp(seq, rcv, ACK)])))
    step(TcpEof(flow))
    step(GuestFrames(_run([_tcp(seq, rcv + 1, ACK | FIN)])))
    step(Tick())
    step(GuestLink(False))
    return door.seq, dict(door.stack.counters)

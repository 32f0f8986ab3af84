"""Python function calls per MB of bulk TCP through the core alone, IPv4 against IPv6.

``python -m benchmarks.core_counts [--mb N] [--mss N]`` drives one :class:`~slirptrio.core.stack.
Stack` (no shell, no sockets, no clock) with a scripted connection from the guest: guest→host
bursts of 8 full segments (one ``GuestFrames`` each, answered with ``TcpSent``), then host→guest
``TcpData`` reads, each acknowledged by the guest in one burst. It prints cProfile's count of
Python function calls per MB each way, per family, and the IPv6/IPv4 ratio. Counts do not
depend on the machine's load, so a change to either family's path shows here as a number.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import sys
from collections.abc import Callable

from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    Effect,
    Event,
    FrameRuns,
    GuestFrames,
    SendFrames,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpRecvCredit,
    TcpSend,
    TcpSent,
)
from slirptrio.core.stack import Stack
from slirptrio.wire import fast
from slirptrio.wire.ethernet import build_ethernet
from slirptrio.wire.framing import split_run
from slirptrio.wire.ipv4 import build_ipv4
from slirptrio.wire.ipv6 import build_ipv6
from slirptrio.wire.tcp import ACK, PSH, SYN, build_tcp, parse_tcp

GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("52550a000202")
ADDRS = {
    4: (socket.inet_aton("10.0.2.15"), socket.inet_aton("10.0.2.2")),
    6: (socket.inet_pton(socket.AF_INET6, "fec0::5054:ff:fe12:3456"),
        socket.inet_pton(socket.AF_INET6, "fec0::2")),
}


def _frame(family: int, seq: int, ack: int, flags: int, payload: bytes = b"",
           **opts: int) -> bytes:
    src, dst = ADDRS[family]
    seg = build_tcp(src, dst, 41000, 80, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, 0xFFFF,
                    payload, **opts)  # type: ignore[arg-type]
    if family == 6:
        return build_ethernet(GW_MAC, GUEST_MAC, 0x86DD, build_ipv6(src, dst, 6, seg))
    return build_ethernet(GW_MAC, GUEST_MAC, 0x0800, build_ipv4(src, dst, 6, seg))


def _run(frames: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def _tcp_frames(effects: list[Effect]) -> list[bytes]:
    out = []
    for e in effects:
        if isinstance(e, SendFrames):
            for view in split_run(e.data):
                f = bytes(view)
                if (f[12:14] == b"\x08\x00" and f[23] == 6) or (
                    f[12:14] == b"\x86\xdd" and f[20] == 6
                ):
                    out.append(f)
    return out


def _payload_len(f: bytes) -> int:
    if f[12:14] == b"\x86\xdd":
        return int.from_bytes(f[18:20], "big") - (f[66] >> 4) * 4
    return int.from_bytes(f[16:18], "big") - 20 - (f[46] >> 4) * 4


def measure(family: int, mb: int, mss: int) -> tuple[float, float]:
    """Function calls per MB guest→host and host→guest for ``family`` (4 or 6)."""
    stack = Stack(parse_user_options("ipv6=on"), 1)
    now = 0
    credit = 0

    def step(event: Event) -> list[Effect]:
        nonlocal now, credit
        now += 100_000
        effects = stack.handle(event, now)
        credit += sum(e.n for e in effects if isinstance(e, TcpRecvCredit))
        return effects

    step(FrameRuns(True))
    effects = step(GuestFrames(_run([_frame(family, 1000, 0, SYN, mss=mss, wscale=7)])))
    flow = next(e.flow for e in effects if isinstance(e, TcpConnect))
    synack = _tcp_frames(step(TcpConnected(flow)))[0]
    off = 54 if family == 6 else 34
    src, dst = ADDRS[family]
    una = parse_tcp(synack[off:], dst, src).seq + 1
    seq = 1001
    step(GuestFrames(_run([_frame(family, seq, una, ACK)])))
    blob = bytes(range(256)) * (mss // 256 + 1)
    up_frames = [[_frame(family, seq + (b * 8 + i) * mss, una, ACK | PSH, blob[:mss])
                  for i in range(8)] for b in range(mb * 1_000_000 // (8 * mss))]
    up_runs = [_run(fs) for fs in up_frames]  # built before counting: the guest's work

    def up() -> None:
        for run in up_runs:
            sent = sum(len(e.data) for e in step(GuestFrames(run)) if isinstance(e, TcpSend))
            if sent:
                step(TcpSent(flow, sent))

    up_calls = _calls(up)
    seq += len(up_runs) * 8 * mss
    chunk = bytes(65536)
    rcv = [una]

    def down() -> None:
        nonlocal credit
        moved = 0
        while moved < mb * 1_000_000:
            n = min(credit, len(chunk))
            if not n:
                raise RuntimeError("no credit from the core")
            credit -= n
            got = sum(_payload_len(f) for f in _tcp_frames(step(TcpData(flow, chunk[:n]))))
            rcv[0] += got
            moved += n
            step(GuestFrames(_run([_frame(family, seq, rcv[0], ACK)])))

    down_calls = _calls(down)
    return up_calls / mb, down_calls / mb


def _calls(fn: Callable[[], None]) -> int:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    return int(pstats.Stats(prof).total_calls)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.core_counts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=4, help="MB each way (default 4)")
    p.add_argument("--mss", type=int, default=1440, help="the guest's segment size")
    args = p.parse_args(argv)
    v4 = measure(4, args.mb, args.mss)
    v6 = measure(6, args.mb, args.mss)
    print(f"core only, fast={fast.IMPL}, MSS {args.mss}: Python function calls per MB")
    for name, a, b in (("guest→host", v4[0], v6[0]), ("host→guest", v4[1], v6[1])):
        print(f"  {name}: IPv4 {a:,.0f}  IPv6 {b:,.0f}  (IPv6/IPv4 {b / a:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

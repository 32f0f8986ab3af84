"""A fuzzer for the switch (issue 22): ports arriving and leaving, frames from several ports.

:func:`port_events` generates one session: ports 1..N come and go (``PortLink``), port 0 comes
and goes (``GuestLink``), and bursts from every port (``GuestFrames`` for port 0,
``PortFrames`` for the others) mix DHCP from each port's MACs, ARP, echo requests to the
gateway and to other guests, unicast to MACs learned on other ports, on the same port and
nowhere, broadcast and multicast, MACs that move between ports, short frames, empty frames and
cut-off tails. Host events answer what the core asked for (a TCP connect succeeds) so flows
exist to be reset by a departure. :func:`check` drives a stack with it and checks: nothing
escapes ``Stack.handle``, the switch stays within its bounds and only lists ports that are up,
a snapshot taken halfway restores to a stack that continues identically, and the session run
again (through the journal encoding) gives the same effects.

``tests/fuzz.py`` may import :func:`port_events` to mix these sessions into its own;
``python -m tests.fuzz_ports --sessions N`` runs N sessions.
"""

from __future__ import annotations

import argparse
import random
import sys
from typing import Any

from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Event,
    FrameRuns,
    GuestFrames,
    GuestLink,
    PortFrames,
    PortLink,
    TcpConnect,
    TcpConnected,
    Tick,
    decode_event,
    encode,
)
from slirptrio.core.stack import Stack
from slirptrio.core.switch import MAX_MACS, MAX_PORTS
from tests import guestframes as gf
from tests.snapshots import plain_roundtrip, restored

MS = 1_000_000
GW_MAC = bytes.fromhex("52550a000202")
MACS = [bytes.fromhex(f"5254000a00{i:02x}") for i in range(8)]
BCAST = b"\xff" * 6
MCAST = bytes.fromhex("01005e000001")


def _from(frame: bytes, mac: bytes) -> bytes:
    return frame[:6] + mac + frame[12:]


def _frame(rng: random.Random, mac: bytes, ip: str) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return _from(gf.dhcp(1, xid=rng.getrandbits(32), mac=mac), mac)
    if kind == 1:
        return _from(gf.dhcp(3, mac=mac, requested=ip, server="10.0.2.2"), mac)
    if kind == 2:
        return gf.arp_request(rng.choice(["10.0.2.2", "10.0.2.15", "10.0.2.16", "10.0.2.40"]),
                              sender=ip, mac=mac)
    if kind == 3:
        return _from(gf.icmp_echo("10.0.2.2", seq=rng.randrange(100), src=ip), mac)
    if kind == 4:  # to another guest, by its MAC
        dst = rng.choice(MACS)
        return _from(gf.icmp_echo(rng.choice(["10.0.2.15", "10.0.2.16"]), src=ip, dst_mac=dst),
                     mac)
    if kind == 5:
        dst = rng.choice([BCAST, MCAST, rng.choice(MACS), bytes(rng.randbytes(6))])
        return dst + mac + b"\x88\xb5" + rng.randbytes(rng.randrange(0, 80))
    if kind == 6:
        return rng.randbytes(rng.randrange(0, 14))  # too short for Ethernet
    if kind == 7:  # a TCP SYN to the host
        from tests.test_stations import syn

        return syn("10.0.2.2", rng.choice([80, 8080]), src=ip, src_mac=mac,
                   seq=rng.getrandbits(32))
    if kind == 8:  # a source MAC that is multicast: never learned
        return BCAST + MCAST + b"\x08\x06" + bytes(28)
    return b""  # an empty frame


def port_burst(rng: random.Random, port: int) -> bytes:
    """A run of one to three frames from guest MACs on ``port`` (for the other fuzzers)."""
    frames = []
    for _ in range(rng.randrange(1, 4)):
        mac = MACS[(port * 2 + rng.randrange(2)) % len(MACS)]
        frames.append(_frame(rng, mac, f"10.0.2.{15 + MACS.index(mac)}"))
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


def port_events(rng: random.Random, steps: int) -> list[tuple[int, Event]]:
    """One session of ``steps`` port events (arrivals, departures, bursts) with times."""
    t = MS
    events: list[tuple[int, Event]] = [(0, FrameRuns(True)), (0, DnsUpstreams("203.0.113.53:53"))]
    up: set[int] = set()
    mac_of: dict[int, list[bytes]] = {}
    for _ in range(steps):
        t += rng.randrange(1, 50) * MS
        roll = rng.random()
        if roll < 0.12 or not up:
            port = rng.randrange(0, 5)
            if port in up and rng.random() < 0.6:
                up.discard(port)
                events.append((t, PortLink(port, False, f"p{port}") if port
                               else GuestLink(False)))
            else:
                up.add(port)
                mac_of[port] = rng.sample(MACS, rng.randrange(1, 3))  # a MAC may move
                events.append((t, PortLink(port, True, f"p{port}") if port
                               else GuestLink(True)))
            continue
        if roll < 0.15:
            events.append((t, Tick()))
            continue
        port = rng.choice(sorted(up))
        frames = []
        for _ in range(rng.randrange(1, 6)):
            mac = rng.choice(mac_of[port])
            frames.append(_frame(rng, mac, f"10.0.2.{15 + MACS.index(mac)}"))
        run = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
        if rng.random() < 0.05:
            run += b"\x00\x00\x01"  # a cut-off tail
        events.append((t, PortFrames(port, run) if port else GuestFrames(run)))
    return events


def _answer(stack: Stack, effects: list[Any], t: int) -> list[Any]:
    """What the shell would do: a host connect succeeds."""
    out = []
    for e in effects:
        if isinstance(e, TcpConnect):
            out.append([encode(e), [encode(x) for x in stack.handle(TcpConnected(e.flow), t)]])
    return out


def _run(options: str, events: list[tuple[int, Event]], seed: int) -> list[Any]:
    stack = Stack(parse_user_options(options), seed)
    log: list[Any] = []
    for t, ev in events:
        effects = stack.handle(ev, t)
        log.append([encode(e) for e in effects])
        log.append(_answer(stack, effects, t))
        _check_bounds(stack)
        assert stack.poll_at() == stack.poll_at_fresh(), f"poll_at stale: {ev!r:.200}"
    return log


def _check_bounds(stack: Stack) -> None:
    sw = stack._switch
    assert len(sw.macs) <= MAX_MACS
    assert len(sw.ports) <= MAX_PORTS
    assert all(p in sw.ports for p in sw.macs.values()), "a MAC on a port that is gone"


def check(seed: int, steps: int = 300) -> dict[str, int]:
    """One fuzzed multi-port session, checked; returns the core's counters."""
    rng = random.Random(seed)
    options = rng.choice(["", "isolate=on", "dhcp-clients=4", "ipv6=off"])
    events = plain_roundtrip([[t, encode(ev)] for t, ev in port_events(rng, steps)])
    decoded = [(t, decode_event(raw)) for t, raw in events]
    first = _run(options, decoded, seed)
    assert _run(options, decoded, seed) == first, "the same session gave other effects"
    # A snapshot halfway continues as the original does.
    stack = Stack(parse_user_options(options), seed)
    half = len(decoded) // 2
    for t, ev in decoded[:half]:
        _answer(stack, stack.handle(ev, t), t)
    copy = restored(stack)
    for t, ev in decoded[half:]:
        a, b = stack.handle(ev, t), copy.handle(ev, t)
        assert a == b, f"restored stack diverged at {ev!r}"
        assert copy.poll_at() == stack.poll_at() == copy.poll_at_fresh()
        _answer(stack, a, t)
        _answer(copy, b, t)
    return dict(stack.counters)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_ports")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    totals: dict[str, int] = {}
    for i in range(args.sessions):
        for k, v in check(args.seed + i, args.steps).items():
            totals[k] = totals.get(k, 0) + v
    for k in sorted(totals):
        if k.startswith("switch_") or k.startswith("drop_"):
            print(f"{k:<32} {totals[k]:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a session's journal shows: the guest's packets the core consumed, the frames it sent
the guest, the hosts it asked the shell to reach. End-to-end tests use it to tell "the stack
refused" from "the guest never sent" or "the host refused"."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import dpkt

from slirptrio.core.events import (
    Event,
    IcmpEchoOpen,
    TcpConnect,
    UdpOpen,
    decode_effect,
    decode_event,
)
from slirptrio.journal import frames_of, open_journal


@dataclass(frozen=True)
class Packet:
    """An IP packet of the session: direction, addresses, protocol and the parsed packet."""

    to_guest: bool
    src: str
    dst: str
    proto: int  # 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6
    ip: dpkt.Packet


def _packet(frame: bytes, to_guest: bool) -> Packet | None:
    try:
        eth = dpkt.ethernet.Ethernet(frame)
    except (dpkt.UnpackError, ValueError):
        return None
    ip = eth.data
    if isinstance(ip, dpkt.ip.IP):
        return Packet(to_guest, str(ipaddress.IPv4Address(ip.src)),
                      str(ipaddress.IPv4Address(ip.dst)), ip.p, ip)
    if isinstance(ip, dpkt.ip6.IP6):
        return Packet(to_guest, str(ipaddress.IPv6Address(ip.src)),
                      str(ipaddress.IPv6Address(ip.dst)), ip.p, ip)
    return None


def packets(journal: Path) -> list[Packet]:
    """Every IP packet the guest sent (as the core consumed it) and the core sent the guest,
    in journal order. Large frames the journal keeps only as a digest are left out: the
    packets these tests look for (SYNs, resets, small datagrams, echo requests) are small."""
    out = []
    for rec in open_journal(journal).records:
        for direction, frame in frames_of(rec.event, rec.effects):
            if not isinstance(frame, bytes | memoryview):
                continue  # a digest of a large frame
            p = _packet(bytes(frame), direction == "out")
            if p is not None:
                out.append(p)
    return out


def events(journal: Path) -> list[Event]:
    """Every input the core consumed, decoded (records it cannot decode left out)."""
    out = []
    for rec in open_journal(journal).records:
        try:
            out.append(decode_event(rec.event))
        except (ValueError, TypeError):
            continue
    return out


def host_targets(journal: Path) -> list[tuple[str, str]]:
    """Every host address the core asked the shell to reach: (effect, host)."""
    out = []
    for rec in open_journal(journal).records:
        for raw in rec.effects:
            try:
                eff = decode_effect(raw)
            except (ValueError, TypeError):
                continue
            if isinstance(eff, TcpConnect | UdpOpen | IcmpEchoOpen):
                out.append((type(eff).__name__, eff.host))
    return out


def guest_sent(journal: Path, dst: str, proto: int) -> list[Packet]:
    """The guest's packets to ``dst`` of ``proto`` that the core consumed."""
    return [p for p in packets(journal) if not p.to_guest and p.dst == dst and p.proto == proto]


def tcp_resets_to_guest(journal: Path) -> list[Packet]:
    """The TCP segments with RST the core sent the guest."""
    return [p for p in packets(journal)
            if p.to_guest and p.proto == 6 and p.ip.data.flags & dpkt.tcp.TH_RST]


def assert_stack_refused(journal: Path, dst: str, protos: tuple[int, ...]) -> None:
    """The guest sent ``dst`` packets of every one of ``protos`` and the core consumed them,
    yet it never asked the shell to reach ``dst``: the refusal was the stack's own."""
    for proto in protos:
        assert guest_sent(journal, dst, proto), f"the guest sent no protocol {proto} to {dst}"
    reached = [t for t in host_targets(journal) if t[1] == dst]
    assert reached == [], reached

"""Human-readable one-line descriptions of journal events, effects and frames."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address
from typing import Any

import dpkt

from slirptrio.core.events import (
    GuestFrame,
    GuestFrames,
    SendFrame,
    SendFrames,
    decode_effect,
    decode_event,
)
from slirptrio.journal import is_digest
from slirptrio.syntax.address import bracket
from slirptrio.wire.dhcp import MESSAGE_NAMES
from slirptrio.wire.framing import split_run


def run(data: bytes) -> str:
    """A run of frames: how many, and the first and last of them."""
    frames = split_run(data)
    if not frames:
        return f"0 frames ({len(data)} bytes)"
    text = f"{len(frames)} frame{'s' if len(frames) > 1 else ''}: " + frame(bytes(frames[0]))
    if len(frames) > 1:
        text += " ... " + frame(bytes(frames[-1]))
    return text


def frame(data: bytes) -> str:
    """A tcpdump-like summary of one Ethernet frame (dpkt as an independent decoder)."""
    try:
        eth = dpkt.ethernet.Ethernet(data)
    except (dpkt.UnpackError, ValueError) as exc:
        return f"undecodable frame ({len(data)} bytes): {exc}"
    mac = ":".join(f"{b:02x}" for b in eth.src) + " > " + ":".join(f"{b:02x}" for b in eth.dst)
    ip = eth.data
    if isinstance(ip, dpkt.arp.ARP):
        op = {1: "request", 2: "reply"}.get(ip.op, str(ip.op))
        return (
            f"{mac} ARP {op} who-has {IPv4Address(ip.tpa)} tell {IPv4Address(ip.spa)}"
            f" (sender {':'.join(f'{b:02x}' for b in ip.sha)})"
        )
    if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
        return f"{mac} ethertype 0x{eth.type:04x} len {len(data)}"
    src, dst = _ep(ip_address(ip.src)), _ep(ip_address(ip.dst))
    plain = f"{ip_address(ip.src)} > {ip_address(ip.dst)}"
    l4 = ip.data
    if isinstance(l4, dpkt.tcp.TCP):
        flags = "".join(c for c, bit in zip("FSRPAU", (1, 2, 4, 8, 16, 32), strict=True)
                        if l4.flags & bit)
        return (
            f"{mac} {src}:{l4.sport} > {dst}:{l4.dport} TCP [{flags}] seq {l4.seq} ack {l4.ack}"
            f" win {l4.win} len {len(l4.data)}"
        )
    if isinstance(l4, dpkt.udp.UDP):
        extra = ""
        if 67 in (l4.sport, l4.dport):
            try:
                msg = dpkt.dhcp.DHCP(l4.data)
                kind = next((o[1][0] for o in msg.opts if o[0] == 53), None)
                name = MESSAGE_NAMES.get(kind or 0, kind)
                extra = f" DHCP {name} yiaddr {IPv4Address(msg.yiaddr)}"
            except (dpkt.UnpackError, ValueError, IndexError):
                extra = " DHCP (undecodable)"
        return f"{mac} {src}:{l4.sport} > {dst}:{l4.dport} UDP len {len(l4.data)}{extra}"
    if isinstance(l4, dpkt.icmp.ICMP):
        return f"{mac} {plain} ICMP type {l4.type} code {l4.code} len {len(ip.data)}"
    if isinstance(l4, dpkt.icmp6.ICMP6):
        return f"{mac} {plain} ICMPv6 type {l4.type} code {l4.code} len {len(bytes(l4))}"
    if isinstance(ip, dpkt.ip6.IP6):
        return f"{mac} {plain} next header {ip.nxt} len {ip.plen}"
    return f"{mac} {plain} proto {ip.p} len {ip.len}"


def _ep(addr: object) -> str:
    """An address as it goes before ``:port`` (IPv6 in brackets)."""
    return bracket(str(addr))


def event(raw: list[Any]) -> str:
    try:
        ev = decode_event(raw)
    except ValueError as exc:
        return f"undecodable event {raw!r:.60}: {exc}"
    if isinstance(ev, GuestFrame):
        return "guest frame: " + frame(ev.data)
    if isinstance(ev, GuestFrames):
        return "guest frames, " + run(ev.data)
    return repr(ev) if len(repr(ev)) < 200 else repr(ev)[:200] + "..."


def _digest(field: list[Any]) -> str:
    return f"<{field[1]} bytes, crc32 {field[2]:08x}>"


def effect(raw: list[Any]) -> str:
    if any(is_digest(f) for f in raw[1:]):
        # A journaled digest: describe the kept headers.
        if raw[0] == SendFrame.TAG:
            return f"frame to guest {_digest(raw[1])}: " + frame(raw[1][3])
        if raw[0] == SendFrames.TAG:  # the digest kept the run's start: its first frame's
            return f"frames to guest {_digest(raw[1])}, first: " + frame(raw[1][3][4:])
        shown = [_digest(f) if is_digest(f) else repr(f) for f in raw[1:]]
        return f"effect {raw[0]}({', '.join(shown)})"
    try:
        eff = decode_effect(raw)
    except ValueError as exc:
        return f"undecodable effect {raw!r:.60}: {exc}"
    if isinstance(eff, SendFrame):
        return "frame to guest: " + frame(eff.data)
    if isinstance(eff, SendFrames):
        return "frames to guest, " + run(eff.data)
    return repr(eff) if len(repr(eff)) < 200 else repr(eff)[:200] + "..."


def flow_of(raw_event: list[Any], raw_effects: list[list[Any]]) -> str:
    """The flow a record belongs to: a flow id, or the frame's addresses and ports."""
    try:
        ev = decode_event(raw_event)
    except ValueError:
        return "?"
    flow = getattr(ev, "flow", None)
    if flow is not None:
        return f"flow {flow}"
    data = ev.data if isinstance(ev, GuestFrame) else None
    if isinstance(ev, GuestFrames):
        frames = split_run(ev.data)
        data = bytes(frames[0]) if frames else None
    if data is None:
        for raw in raw_effects:
            if raw and raw[0] == SendFrame.TAG:
                data = raw[1][3] if is_digest(raw[1]) else raw[1]
                break
            if raw and raw[0] == SendFrames.TAG:
                data = raw[1][3][4:] if is_digest(raw[1]) else raw[1][4:]
                break
            if len(raw) > 1 and isinstance(raw[1], int):
                return f"flow {raw[1]}"
    if data is None:
        return "-"
    try:
        ip = dpkt.ethernet.Ethernet(data).data
        if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
            l4 = ip.data
            p = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
            proto = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}.get(p, str(p))
            sport = getattr(l4, "sport", None)
            dport = getattr(l4, "dport", None)
            src, dst = _ep(ip_address(ip.src)), _ep(ip_address(ip.dst))
            if sport is not None:
                return f"{proto} {src}:{sport} > {dst}:{dport}"
            return f"{proto} {ip_address(ip.src)} > {ip_address(ip.dst)}"
    except (dpkt.UnpackError, ValueError):
        pass
    return "-"

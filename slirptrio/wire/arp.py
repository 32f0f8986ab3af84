"""ARP for IPv4 over Ethernet (RFC 826)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from slirptrio.wire import MalformedFrame

ARP_REQUEST = 1
ARP_REPLY = 2
_FMT = struct.Struct("!HHBBH6s4s6s4s")
ARP_LEN = _FMT.size  # 28


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """An Ethernet/IPv4 ARP packet."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def parse_arp(data: bytes | memoryview) -> ArpPacket:
    """Parse an Ethernet/IPv4 ARP packet; anything else is malformed."""
    if len(data) < ARP_LEN:
        raise MalformedFrame("arp_short", f"{len(data)} bytes")
    htype, ptype, hlen, plen, op, smac, sip, tmac, tip = _FMT.unpack_from(data)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        raise MalformedFrame("arp_unsupported", f"htype {htype} ptype {ptype:#x}")
    return ArpPacket(op, smac, sip, tmac, tip)


def build_arp(pkt: ArpPacket) -> bytes:
    """Serialize an Ethernet/IPv4 ARP packet."""
    return _FMT.pack(
        1, 0x0800, 6, 4, pkt.op, pkt.sender_mac, pkt.sender_ip, pkt.target_mac, pkt.target_ip
    )

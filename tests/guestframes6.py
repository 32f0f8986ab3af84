"""IPv6 frames a guest would send, built with dpkt (independent of our codecs) where dpkt can;
NDP and DHCPv6 bodies, which dpkt has no classes for, are packed by hand here."""

from __future__ import annotations

import socket
import struct

import dpkt

from tests.guestframes import GUEST_MAC, eth

ROUTER_MAC = bytes.fromhex("525600000002")
GUEST_LL = "fe80::5054:ff:fe12:3456"
GUEST_IP = "fec0::5054:ff:fe12:3456"
ALL_ROUTERS = "ff02::2"
ALL_DHCP = "ff02::1:2"


def ip6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def mcast_mac(group: str) -> bytes:
    return b"\x33\x33" + ip6(group)[12:]


def packet(src: str, dst: str, nxt: int, l4: bytes | dpkt.Packet, hlim: int = 64,
           dst_mac: bytes = ROUTER_MAC, exthdrs: bytes = b"", first_nxt: int | None = None,
           ) -> bytes:
    """An IPv6 frame; ``exthdrs`` (raw, already chained to ``nxt``) go before ``l4``."""
    body = bytes(l4)
    if isinstance(l4, dpkt.Packet) and nxt in (6, 17, 58) and not exthdrs:
        ip = dpkt.ip6.IP6(src=ip6(src), dst=ip6(dst), nxt=nxt, hlim=hlim, data=l4)
        ip.plen = len(body)
        raw = bytes(ip)  # dpkt fills the upper-layer checksum
    else:
        head = struct.pack("!IHBB", 6 << 28, len(exthdrs) + len(body),
                           nxt if first_nxt is None else first_nxt, hlim)
        raw = head + ip6(src) + ip6(dst) + exthdrs + body
    return eth(dst_mac, raw, 0x86DD)


def icmp6(type_: int, code: int, body: bytes, src: str, dst: str) -> bytes:
    """An ICMPv6 message with its checksum (computed by dpkt through IP6)."""
    msg = dpkt.icmp6.ICMP6(type=type_, code=code, data=body)
    ip = dpkt.ip6.IP6(src=ip6(src), dst=ip6(dst), nxt=58, hlim=255, data=msg)
    ip.plen = len(bytes(msg))
    return bytes(ip)[40:]


def ndp(type_: int, body: bytes, src: str, dst: str, dst_mac: bytes) -> bytes:
    return packet(src, dst, 58, icmp6(type_, 0, body, src, dst), hlim=255, dst_mac=dst_mac)


def sll(mac: bytes = GUEST_MAC) -> bytes:
    return bytes((1, 1)) + mac


def neighbor_solicit(target: str, src: str = GUEST_LL, with_sll: bool = True) -> bytes:
    dad = src == "::"
    group = "ff02::1:ff" + ip6(target)[13:].hex()[:2] + ":" + ip6(target)[14:].hex()
    body = bytes(4) + ip6(target) + (sll() if with_sll and not dad else b"")
    return ndp(135, body, src, group, mcast_mac(group))


def router_solicit(src: str = GUEST_LL) -> bytes:
    body = bytes(4) + (sll() if src != "::" else b"")
    return ndp(133, body, src, ALL_ROUTERS, mcast_mac(ALL_ROUTERS))


def neighbor_advert(target: str, src: str | None = None) -> bytes:
    body = struct.pack("!I", 0x20000000) + ip6(target) + bytes((2, 1)) + GUEST_MAC
    return ndp(136, body, src or target, "ff02::1", mcast_mac("ff02::1"))


def echo6(dst: str, ident: int = 7, seq: int = 1, payload: bytes = b"ping6!" * 8,
          src: str = GUEST_IP) -> bytes:
    echo = dpkt.icmp6.ICMP6.Echo(id=ident, seq=seq, data=payload)
    return packet(src, dst, 58, dpkt.icmp6.ICMP6(type=128, code=0, data=echo))


def udp6(dst: str, dport: int, payload: bytes, sport: int = 40000, src: str = GUEST_IP,
         dst_mac: bytes = ROUTER_MAC) -> bytes:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    return packet(src, dst, 17, u, dst_mac=dst_mac)


def tcp_syn(dst: str, dport: int, sport: int = 40001, seq: int = 1000,
            src: str = GUEST_IP) -> bytes:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=dpkt.tcp.TH_SYN, win=64000,
                     opts=b"\x02\x04\x05\xa0")  # MSS 1440
    t.off = 6
    return packet(src, dst, 6, t)


def dhcpv6(msg_type: int, options: list[tuple[int, bytes]], xid: int = 0xABCDEF,
           src: str = GUEST_LL) -> bytes:
    body = bytes((msg_type,)) + xid.to_bytes(3, "big") + b"".join(
        struct.pack("!HH", c, len(v)) + v for c, v in options
    )
    return udp6(ALL_DHCP, 547, body, sport=546, src=src, dst_mac=mcast_mac(ALL_DHCP))


CLIENT_DUID = bytes.fromhex("00030001") + GUEST_MAC


def udp6_fragments(dst: str, dport: int, payload: bytes, size: int = 1232,
                   ident: int = 0x1234, sport: int = 40002, src: str = GUEST_IP) -> list[bytes]:
    """A UDP datagram cut into fragments of ``size`` bytes (a multiple of 8)."""
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    ip = dpkt.ip6.IP6(src=ip6(src), dst=ip6(dst), nxt=17, hlim=64, data=u)
    ip.plen = len(bytes(u))
    whole = bytes(ip)[40:]  # the UDP segment with dpkt's checksum
    frames = []
    for off in range(0, len(whole), size):
        more = off + size < len(whole)
        fh = struct.pack("!BBHI", 17, 0, off | (1 if more else 0), ident)
        frames.append(_frag(src, dst, fh, whole[off : off + size]))
    return frames


def _frag(src: str, dst: str, fh: bytes, chunk: bytes) -> bytes:
    head = struct.pack("!IHBB", 6 << 28, len(fh) + len(chunk), 44, 64)
    return eth(ROUTER_MAC, head + ip6(src) + ip6(dst) + fh + chunk, 0x86DD)


def parse(frame: bytes) -> dpkt.ethernet.Ethernet:
    return dpkt.ethernet.Ethernet(frame)


def mld_report(src: str = GUEST_LL) -> bytes:
    """An MLDv2 report with no records, to all MLDv2-capable routers (ff02::16)."""
    return packet(src, "ff02::16", 58, icmp6(143, 0, bytes(4), src, "ff02::16"), hlim=1,
                  dst_mac=mcast_mac("ff02::16"))

"""Frames a guest would send, built with dpkt (independent of our codecs)."""

from __future__ import annotations

import socket

import dpkt

GUEST_MAC = bytes.fromhex("525400123456")
BROADCAST = b"\xff" * 6


def ip4(text: str) -> bytes:
    return socket.inet_aton(text)


def eth(dst: bytes, payload: dpkt.Packet, ethertype: int, src: bytes = GUEST_MAC) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(dst=dst, src=src, type=ethertype, data=payload))


def arp_request(target: str, sender: str = "10.0.2.15", mac: bytes = GUEST_MAC) -> bytes:
    a = dpkt.arp.ARP(
        op=dpkt.arp.ARP_OP_REQUEST, sha=mac, spa=ip4(sender), tha=b"\x00" * 6, tpa=ip4(target)
    )
    return eth(BROADCAST, a, dpkt.ethernet.ETH_TYPE_ARP, mac)


def ipv4(src: str, dst: str, l4: dpkt.Packet, proto: int, dst_mac: bytes) -> bytes:
    body = bytes(l4)
    ip = dpkt.ip.IP(src=ip4(src), dst=ip4(dst), p=proto, ttl=64, id=1, data=body)
    ip.len = 20 + len(body)
    return eth(dst_mac, ip, dpkt.ethernet.ETH_TYPE_IP)


def icmp_echo(dst: str, ident: int = 7, seq: int = 1, payload: bytes = b"ping!" * 8,
              src: str = "10.0.2.15", dst_mac: bytes = bytes.fromhex("52550a000202")) -> bytes:
    echo = dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=payload)
    msg = dpkt.icmp.ICMP(type=8, code=0, data=echo)
    return ipv4(src, dst, msg, dpkt.ip.IP_PROTO_ICMP, dst_mac)


def dhcp(msgtype: int, xid: int = 0x1234, mac: bytes = GUEST_MAC, requested: str | None = None,
         ciaddr: str = "0.0.0.0", server: str | None = None) -> bytes:
    opts: list[tuple[int, bytes]] = [(dpkt.dhcp.DHCP_OPT_MSGTYPE, bytes([msgtype]))]
    if requested:
        opts.append((dpkt.dhcp.DHCP_OPT_REQ_IP, ip4(requested)))
    if server:
        opts.append((dpkt.dhcp.DHCP_OPT_SERVER_ID, ip4(server)))
    opts.append((dpkt.dhcp.DHCP_OPT_PARAM_REQ, bytes([1, 3, 6, 12, 15, 26, 28, 119])))
    msg = dpkt.dhcp.DHCP(
        op=dpkt.dhcp.DHCP_OP_REQUEST, xid=xid, chaddr=mac, ciaddr=int.from_bytes(ip4(ciaddr)),
        opts=opts,
    )
    body = bytes(msg)
    udp = dpkt.udp.UDP(sport=68, dport=67, data=body)
    udp.ulen = 8 + len(body)  # dpkt never computes ulen
    src = ciaddr
    dst = "255.255.255.255" if ciaddr == "0.0.0.0" else (server or "10.0.2.2")
    dst_mac = BROADCAST if dst == "255.255.255.255" else bytes.fromhex("52550a000202")
    return ipv4(src, dst, udp, dpkt.ip.IP_PROTO_UDP, dst_mac)


def parse(frame: bytes) -> dpkt.ethernet.Ethernet:
    return dpkt.ethernet.Ethernet(frame)


def dhcp_of(frame: bytes) -> dpkt.dhcp.DHCP:
    return dpkt.dhcp.DHCP(parse(frame).data.data.data)

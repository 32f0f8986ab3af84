"""Martian addresses: destinations (and sources) a guest's traffic never reaches the host with.

A real router forwards none of these (RFC 1812 5.3.7, RFC 6890), and for a user-mode stack
forwarding them would be worse than useless: a socket connected to 127.0.0.2 or 0.0.0.0 reaches
the host's own loopback services, whatever ``hostloopback`` says. One function classifies an
address; the Stack drops what it names (``drop_martian_<reason>``) before any protocol sees it,
and every place that turns a guest destination into a host one (``Stack.translate``, the UDP,
ICMP and TCP NATs) asks it again, so no path forwards a martian. What the stack serves itself
(DHCP to the limited broadcast) is let through by the Stack before this check.

Unicast-looking martians are answered with ICMP "communication administratively prohibited"
from the gateway, so a guest's connect() or ping fails at once; multicast and broadcast ones
never get an ICMP error (RFC 1812 4.3.2.7). An IPv6 classifier belongs beside this one.
"""

from __future__ import annotations

import ipaddress

THIS_NETWORK = "this_network"  # 0.0.0.0/8: "this host on this network" (Linux: local)
LOOPBACK = "loopback"  # 127.0.0.0/8
MULTICAST = "multicast"  # 224.0.0.0/4
RESERVED = "reserved"  # 240.0.0.0/4 except the limited broadcast
BROADCAST = "broadcast"  # 255.255.255.255

ANSWERED = frozenset({THIS_NETWORK, LOOPBACK, RESERVED})
"""Martian destinations a guest hears an ICMP error about (never multicast or broadcast)."""


def classify_ipv4(ip: bytes) -> str:
    """Why a guest's packet to (or from) the packed IPv4 address ``ip`` must stay inside the
    stack: one of the reasons above, or "" when the address may be forwarded."""
    a = ip[0]
    if a == 0:
        return THIS_NETWORK
    if a == 127:
        return LOOPBACK
    if a >= 224:
        if a < 240:
            return MULTICAST
        if ip == b"\xff\xff\xff\xff":
            return BROADCAST
        return RESERVED
    return ""


def is_loopback_host(host: str) -> bool:
    """Whether a host-side address literal leads to this host's own loopback services:
    127.0.0.0/8, 0.0.0.0/8 (Linux connects those to the local host), ::1, ::, and their
    IPv4-mapped forms. Anything that is not an address literal: False."""
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is None:
            return addr.is_loopback or addr.is_unspecified
        addr = addr.ipv4_mapped
    return addr.packed[0] in (0, 127)

"""IPv6 martians: destinations a guest's IPv6 traffic never reaches the host with.

A router forwards none of these (RFC 4291, RFC 6890), and a user-mode stack that did would hand
the guest the host's own services: a socket connected to ::1, ::, or an IPv4-mapped loopback
reaches them whatever ``hostloopback`` says. :func:`classify_ipv6` names the reason, or "" for
an address that may be forwarded. The stack's own link-local address and prefix are vetted by
``Stack.translate`` before this (they are virtual, never forwarded as they are); what it serves
on multicast groups (NDP, DHCPv6) is handled before any NAT sees the packet.
"""

from __future__ import annotations

UNSPECIFIED = "unspecified"  # ::
LOOPBACK = "loopback"  # ::1
IPV4_MAPPED = "ipv4_mapped"  # ::ffff:0:0/96 (would reach IPv4 hosts, loopback included)
IPV4_COMPATIBLE = "ipv4_compatible"  # ::/96, deprecated
MULTICAST = "multicast"  # ff00::/8
LINK_LOCAL = "link_local"  # fe80::/10: another link's addresses

_ZERO12 = bytes(12)
_MAPPED12 = bytes(10) + b"\xff\xff"


def classify_ipv6(ip: bytes) -> str:
    """Why a guest's packet to the packed IPv6 address ``ip`` must stay inside the stack: one
    of the reasons above, or ""."""
    a = ip[0]
    if a == 0xFF:
        return MULTICAST
    if a == 0xFE and ip[1] & 0xC0 == 0x80:
        return LINK_LOCAL
    if a == 0:
        head = ip[:12]
        if head == _ZERO12:
            if ip == bytes(16):
                return UNSPECIFIED
            if ip == bytes(15) + b"\x01":
                return LOOPBACK
            return IPV4_COMPATIBLE
        if head == _MAPPED12:
            return IPV4_MAPPED
    return ""

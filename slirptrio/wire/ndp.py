"""Neighbor Discovery messages (RFC 4861) and their options, after the ICMPv6 header.

Parsers take the ICMPv6 message body (what follows the checksum, as
:func:`slirptrio.wire.icmpv6.parse_icmpv6` returns it) and raise only :class:`MalformedFrame`:
an option of length 0, or one that runs past the message, invalidates the whole message (RFC
4861 4.6). Builders return a body for :func:`slirptrio.wire.icmpv6.build_icmpv6`.

Options built: source and target link-layer address, prefix information, MTU, recursive DNS
servers (RFC 8106) and the DNS search list (RFC 8106).
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field

from slirptrio.wire import MalformedFrame

OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
OPT_PREFIX_INFO = 3
OPT_MTU = 5
OPT_RDNSS = 25
OPT_DNSSL = 31

NA_ROUTER = 0x80000000
NA_SOLICITED = 0x40000000
NA_OVERRIDE = 0x20000000
RA_MANAGED = 0x80
RA_OTHER = 0x40
PREFIX_ONLINK = 0x80
PREFIX_AUTONOMOUS = 0x40
MAX_OPTIONS = 64

_RA = struct.Struct("!BBHII")
_PREFIX = struct.Struct("!BBIII16s")


@dataclass(frozen=True, slots=True)
class Prefix:
    """A Prefix Information option."""

    prefix: bytes
    length: int
    flags: int
    valid: int
    preferred: int


@dataclass(frozen=True, slots=True)
class RouterAdvert:
    """A parsed Router Advertisement (what a guest would learn from it)."""

    hop_limit: int
    flags: int
    lifetime: int
    reachable: int
    retrans: int
    source_lladdr: bytes | None = None
    mtu: int | None = None
    prefixes: list[Prefix] = field(default_factory=list)
    dns_servers: list[bytes] = field(default_factory=list)
    dns_lifetime: int = 0
    search: list[str] = field(default_factory=list)


def parse_options(data: bytes | memoryview) -> list[tuple[int, bytes]]:
    """The options as (type, value) with value the bytes after type and length."""
    mv = memoryview(data)
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(mv)
    while i < n:
        if i + 2 > n:
            raise MalformedFrame("ndp_bad_option", "truncated option header")
        size = mv[i + 1] * 8
        if size == 0:
            raise MalformedFrame("ndp_bad_option", "option of length 0")
        if i + size > n:
            raise MalformedFrame("ndp_bad_option", f"option {mv[i]} overruns the message")
        if len(out) >= MAX_OPTIONS:
            raise MalformedFrame("ndp_bad_option", f"more than {MAX_OPTIONS} options")
        out.append((mv[i], bytes(mv[i + 2 : i + size])))
        i += size
    return out


def lladdr(options: list[tuple[int, bytes]], kind: int) -> bytes | None:
    """The Ethernet address of the first link-layer address option of ``kind``."""
    for t, v in options:
        if t == kind and len(v) >= 6:
            return v[:6]
    return None


def parse_ns(body: bytes | memoryview) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Neighbor Solicitation: (target, options)."""
    if len(body) < 20:
        raise MalformedFrame("ndp_short", f"NS of {len(body)} bytes")
    target = bytes(body[4:20])
    if target[0] == 0xFF:
        raise MalformedFrame("ndp_bad_target", "multicast target")
    return target, parse_options(body[20:])


def parse_na(body: bytes | memoryview) -> tuple[int, bytes, list[tuple[int, bytes]]]:
    """Neighbor Advertisement: (flags, target, options)."""
    if len(body) < 20:
        raise MalformedFrame("ndp_short", f"NA of {len(body)} bytes")
    flags = int.from_bytes(body[0:4], "big")
    target = bytes(body[4:20])
    if target[0] == 0xFF:
        raise MalformedFrame("ndp_bad_target", "multicast target")
    return flags, target, parse_options(body[20:])


def parse_rs(body: bytes | memoryview) -> list[tuple[int, bytes]]:
    """Router Solicitation: its options."""
    if len(body) < 4:
        raise MalformedFrame("ndp_short", f"RS of {len(body)} bytes")
    return parse_options(body[4:])


def parse_ra(body: bytes | memoryview) -> RouterAdvert:
    """Router Advertisement, with the options slirptrio sends decoded."""
    if len(body) < _RA.size:
        raise MalformedFrame("ndp_short", f"RA of {len(body)} bytes")
    hop, flags, lifetime, reachable, retrans = _RA.unpack_from(body)
    ra = RouterAdvert(hop, flags, lifetime, reachable, retrans)
    for t, v in parse_options(body[_RA.size :]):
        if t == OPT_SOURCE_LLADDR and len(v) >= 6 and ra.source_lladdr is None:
            ra = dataclasses.replace(ra, source_lladdr=v[:6])
        elif t == OPT_MTU and len(v) == 6:
            ra = dataclasses.replace(ra, mtu=int.from_bytes(v[2:6], "big"))
        elif t == OPT_PREFIX_INFO and len(v) == 30:
            plen, pflags, valid, preferred, _res, prefix = _PREFIX.unpack(v)
            if plen > 128:
                raise MalformedFrame("ndp_bad_prefix", f"length {plen}")
            ra.prefixes.append(Prefix(prefix, plen, pflags, valid, preferred))
        elif t == OPT_RDNSS and len(v) >= 22 and (len(v) - 6) % 16 == 0:
            ra = dataclasses.replace(ra, dns_lifetime=int.from_bytes(v[2:6], "big"))
            ra.dns_servers.extend(v[i : i + 16] for i in range(6, len(v), 16))
        elif t == OPT_DNSSL and len(v) >= 6:
            ra.search.extend(decode_names(v[6:]))
    return ra


def option(kind: int, value: bytes) -> bytes:
    """One option: ``value`` padded so the whole is a multiple of 8 bytes."""
    size = (len(value) + 2 + 7) // 8 * 8
    if size > 255 * 8:
        raise ValueError(f"NDP option {kind} too long")
    return bytes((kind, size // 8)) + value + bytes(size - 2 - len(value))


def build_na(flags: int, target: bytes, target_mac: bytes) -> bytes:
    """Neighbor Advertisement body with a target link-layer address option."""
    return flags.to_bytes(4, "big") + target + option(OPT_TARGET_LLADDR, target_mac)


def build_ns(target: bytes, source_mac: bytes | None) -> bytes:
    """Neighbor Solicitation body (with a source link-layer address unless DAD)."""
    opts = option(OPT_SOURCE_LLADDR, source_mac) if source_mac is not None else b""
    return bytes(4) + target + opts


def build_rs(source_mac: bytes | None) -> bytes:
    """Router Solicitation body."""
    return bytes(4) + (option(OPT_SOURCE_LLADDR, source_mac) if source_mac else b"")


def build_ra(
    *,
    hop_limit: int,
    flags: int,
    lifetime: int,
    source_mac: bytes,
    mtu: int,
    prefixes: list[Prefix],
    dns_servers: list[bytes],
    dns_lifetime: int,
    search: list[str],
) -> bytes:
    """Router Advertisement body; the DNS options only when there is something to say."""
    out = bytearray(_RA.pack(hop_limit, flags, lifetime, 0, 0))
    out += option(OPT_SOURCE_LLADDR, source_mac)
    out += option(OPT_MTU, bytes(2) + mtu.to_bytes(4, "big"))
    for p in prefixes:
        out += option(
            OPT_PREFIX_INFO, _PREFIX.pack(p.length, p.flags, p.valid, p.preferred, 0, p.prefix)
        )
    if dns_servers:
        out += option(OPT_RDNSS, bytes(2) + dns_lifetime.to_bytes(4, "big") + b"".join(dns_servers))
    if search:
        out += option(OPT_DNSSL, bytes(2) + dns_lifetime.to_bytes(4, "big") + encode_names(search))
    return bytes(out)


def encode_names(domains: list[str] | tuple[str, ...]) -> bytes:
    """Domain names in DNS wire format, uncompressed (DNSSL, DHCPv6 domain list)."""
    out = bytearray()
    for domain in domains:
        for label in domain.strip(".").split("."):
            raw = label.encode()
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad DNS label in {domain!r}")
            out += bytes((len(raw),)) + raw
        out.append(0)
    return bytes(out)


def decode_names(data: bytes | memoryview) -> list[str]:
    """Uncompressed DNS names, as :func:`encode_names` writes them; trailing zero padding is
    allowed (DNSSL pads to 8 bytes)."""
    mv = memoryview(data)
    names: list[str] = []
    labels: list[str] = []
    i, n = 0, len(mv)
    while i < n:
        size = mv[i]
        if size == 0:
            if labels:
                names.append(".".join(labels))
                labels = []
            i += 1
            continue
        if size >= 64 or i + 1 + size > n:
            raise MalformedFrame("dns_name", "bad label in a name list")
        labels.append(bytes(mv[i + 1 : i + 1 + size]).decode("ascii", "replace"))
        i += 1 + size
    if labels:
        raise MalformedFrame("dns_name", "unterminated name in a name list")
    return names

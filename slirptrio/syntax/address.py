"""Addresses as the user writes them: ``addr:port`` and ``[addr6]:port``, transport addresses,
DNS upstreams and the endpoints of capture flow filters."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address
from typing import Literal, cast

from slirptrio.syntax.errors import AddressError, CaptureError

DNS_PORT = 53

TransportKind = Literal["unix", "tcp", "udp"]


def bracket(addr: str) -> str:
    """``addr`` as it goes before ``:port``: IPv6 in brackets."""
    return f"[{addr}]" if ":" in addr else addr


def hostport(addr: str, port: int) -> str:
    """``addr:port``, or ``[addr]:port`` for IPv6: the one way the project writes an endpoint."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def ip_port(ip: bytes, port: int) -> str:
    """:func:`hostport` of a packed IPv4 or IPv6 address."""
    return hostport(str(ip_address(ip)), port)


@dataclass(frozen=True)
class Address:
    """``unix:PATH``, ``tcp:HOST:PORT`` or ``udp:HOST:PORT``."""

    kind: TransportKind
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str, kinds: tuple[str, ...]) -> Address:
        """``text`` as one of ``kinds``; raises :class:`AddressError`."""
        head, sep, rest = text.partition(":")
        kind = cast(TransportKind, head)
        if not sep or kind not in kinds:
            raise AddressError(f"{text!r}: expected one of {', '.join(k + ':...' for k in kinds)}")
        if kind == "unix":
            if not rest:
                raise AddressError(f"{text!r}: empty unix socket path")
            return cls(kind, path=rest)
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise AddressError(f"{text!r}: expected {kind}:HOST:PORT")
        return cls(kind, host=host.strip("[]") or "127.0.0.1", port=int(port))

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"{self.kind}:{hostport(self.host, self.port)}"

    def qemu(self, prefix: str) -> str:
        """This address as QEMU SocketAddress options, e.g. ``addr.type=unix,addr.path=...``."""
        if self.kind == "unix":
            return f"{prefix}.type=unix,{prefix}.path={self.path}"
        return f"{prefix}.type=inet,{prefix}.host={self.host},{prefix}.port={self.port}"


def parse_upstream(text: str, default_port: int = DNS_PORT) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address; the host must be an IP."""
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
        if rest:
            port = _upstream_port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _upstream_port(text, p)
    try:
        ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return host, port


def _upstream_port(text: str, p: str) -> int:
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise ValueError(f"{text!r}: bad port {p!r}")
    return int(p)


@dataclass(frozen=True)
class Endpoint:
    """One end of a flow in a capture filter: a packed address and a port."""

    ip: bytes
    port: int


def parse_endpoint(text: str) -> Endpoint:
    """``ADDR:PORT`` or ``[ADDR6]:PORT``."""
    addr, sep, port = text.rpartition(":")
    if not sep or not port.isdecimal() or not 0 <= int(port) <= 65535:
        raise CaptureError(f"{text!r}: expected ADDR:PORT")
    try:
        ip = ip_address(addr.strip("[]"))
    except ValueError:
        raise CaptureError(f"{text!r}: {addr!r} is not an IP address") from None
    return Endpoint(ip.packed, int(port))


def parse_flow(text: str) -> tuple[Endpoint, Endpoint]:
    """``ADDR:PORT-ADDR:PORT`` (either order matches either direction)."""
    left, sep, right = text.partition("-")
    if not sep:
        raise CaptureError(f"{text!r}: expected ADDR:PORT-ADDR:PORT or a flow number")
    return parse_endpoint(left), parse_endpoint(right)

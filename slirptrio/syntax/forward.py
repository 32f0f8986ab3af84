"""QEMU's port-forwarding rule syntax, parsed (pure: no sockets).

``hostfwd=[tcp|udp|unix]:[hostaddr]:hostport-[guestaddr]:guestport`` and, for unix,
``unix:/path-[guestaddr]:guestport``; the protocol defaults to tcp, the host address to any
(QEMU binds every address; give ``127.0.0.1`` to keep a forward local), the guest address to the
first DHCP address. Host port 0 binds an ephemeral port (the bound port is reported).

``guestfwd=[tcp]:server:port-dev`` where dev is ``tcp:HOST:PORT``, ``unix:PATH`` or
``cmd:COMMAND`` (spawned once per connection, its stdin/stdout being the stream).

``hostfwd_remove``-style keys: ``[tcp|udp]:[hostaddr]:hostport`` (or ``unix:/path``).

IPv6 addresses go in brackets, anywhere an address goes (QEMU never merged this):
``hostfwd=tcp:[::1]:2222-:22``, ``hostfwd=tcp:[::]:2222-[fec0::15]:22``,
``guestfwd=tcp:[fec0::100]:80-tcp:[::1]:8080``. Addresses are kept without brackets.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv6Address
from typing import Any

from slirptrio.syntax.address import bracket
from slirptrio.syntax.errors import RuleError

__all__ = [
    "ForwardInfo", "GuestFwd", "HostFwd", "RuleError", "bracket", "fwd_key", "hostfwd_key",
    "parse_guestfwd", "parse_hostfwd",
]  # fmt: skip


@dataclass(frozen=True)
class HostFwd:
    """A host → guest forward."""

    proto: str  # "tcp" | "udp" | "unix"
    host_addr: str  # "" for any; unused for unix
    host_port: int  # 0: ephemeral; unused for unix
    path: str  # unix only
    guest_addr: str  # "" for the first DHCP address
    guest_port: int
    text: str

    @property
    def key(self) -> str:
        """What ``hostfwd-remove`` names this forward by."""
        if self.proto == "unix":
            return f"unix:{self.path}"
        return fwd_key(self.proto, self.host_addr, self.host_port)


@dataclass(frozen=True)
class GuestFwd:
    """A guest → host forward: guest TCP connections to ``addr:port`` go to ``target``."""

    addr: str
    port: int
    target: str  # "tcp:HOST:PORT" | "unix:PATH" | "cmd:COMMAND"
    text: str


@dataclass(frozen=True)
class ForwardInfo:
    """One active forward, for display (``ctl info``, :meth:`SlirpStack.forwards`).

    ``addr:port`` is where the forward listens: for a host forward, the host address and port
    its listener is bound to (the ephemeral port for port 0; ``0.0.0.0`` for every address;
    for unix, ``addr`` is the socket's path and ``port`` 0), and ``guest_addr:guest_port``
    where its connections go; for a guest forward, the address in the guest's network that
    it serves, and ``target`` where its connections go. ``static``: it came with the option
    string rather than being added at runtime. ``state``: a host forward listener's state
    ("listening", or "backing-off: EMFILE" while it waits for file descriptors).
    """

    kind: str  # "hostfwd" | "guestfwd"
    proto: str  # "tcp" | "udp" | "unix"
    rule: str
    addr: str
    port: int
    guest_addr: str
    guest_port: int
    target: str = ""
    static: bool = False
    state: str = ""
    id: int = 0  # guest forwards: the id remove_guestfwd takes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": self.kind, "rule": self.rule, "proto": self.proto,
            "addr": self.addr, "port": self.port,
            "guest_addr": self.guest_addr, "guest_port": self.guest_port,
            "target": self.target, "static": self.static, "state": self.state, "id": self.id,
        }


def _port(text: str, what: str, *, zero: bool) -> int:
    if not (text.isascii() and text.isdecimal()):
        raise RuleError(f"{what} {text!r} is not a port number")
    n = int(text)
    if not (0 if zero else 1) <= n <= 65535:
        raise RuleError(f"{what} {n} out of range")
    return n


def fwd_key(proto: str, addr: str, port: int) -> str:
    """The key a host forward is named by: ``proto:[addr]:port``."""
    return f"{proto}:{bracket(addr)}:{port}"


def _addr(text: str, what: str) -> str:
    """An IPv4 address, or an IPv6 one in brackets; returned normalized, without brackets."""
    if text.startswith("[") and text.endswith("]"):
        try:
            return str(IPv6Address(text[1:-1]))
        except AddressValueError:
            raise RuleError(f"{what} {text!r} is not an IPv6 address") from None
    try:
        return str(IPv4Address(text))
    except AddressValueError:
        raise RuleError(
            f"{what} {text!r} is not an IPv4 address (or an IPv6 one in brackets)"
        ) from None


def _guest_part(text: str) -> tuple[str, int]:
    addr, sep, port = text.rpartition(":")
    if not sep:
        raise RuleError(f"guest part {text!r}: expected [guestaddr]:guestport")
    return (_addr(addr, "guest address") if addr else ""), _port(port, "guest port", zero=False)


def parse_hostfwd(rule: str) -> HostFwd:
    """Parse one ``hostfwd=`` value."""
    proto = "tcp"
    rest = rule
    head, sep, tail = rule.partition(":")
    if sep and head in ("tcp", "udp", "unix"):
        proto, rest = head, tail
    elif sep and head == "":
        rest = tail
    if proto == "unix":
        path, sep, guest = rest.rpartition("-")
        if not sep or not path.startswith("/"):
            raise RuleError(f"{rule!r}: expected unix:/absolute/path-[guestaddr]:guestport")
        gaddr, gport = _guest_part(guest)
        return HostFwd("unix", "", 0, path, gaddr, gport, rule)
    host, sep, guest = rest.partition("-")
    if not sep:
        raise RuleError(f"{rule!r}: expected [hostaddr]:hostport-[guestaddr]:guestport")
    haddr, sep, hport = host.rpartition(":")
    if not sep:
        raise RuleError(f"{rule!r}: expected [hostaddr]:hostport before '-'")
    haddr = _addr(haddr, "host address") if haddr else ""
    gaddr, gport = _guest_part(guest)
    return HostFwd(proto, haddr, _port(hport, "host port", zero=True), "", gaddr, gport, rule)


def hostfwd_key(text: str) -> str:
    """Normalize a ``hostfwd-remove`` argument (a key or a whole rule) to a forward's key."""
    try:
        return parse_hostfwd(text).key
    except RuleError:
        pass
    if text.startswith("unix:"):
        if not text[5:].startswith("/"):
            raise RuleError(f"{text!r}: expected unix:/absolute/path")
        return text
    proto = "tcp"
    head, sep, tail = text.partition(":")
    rest = text
    if sep and head in ("tcp", "udp"):
        proto, rest = head, tail
    elif sep and head == "":
        rest = tail
    haddr, sep, hport = rest.rpartition(":")
    if not sep:
        raise RuleError(f"{text!r}: expected [tcp|udp]:[hostaddr]:hostport")
    haddr = _addr(haddr, "host address") if haddr else ""
    return fwd_key(proto, haddr, _port(hport, "host port", zero=True))


def parse_guestfwd(rule: str) -> GuestFwd:
    """Parse one ``guestfwd=`` value."""
    text = rule[4:] if rule.startswith("tcp:") else rule
    if text.startswith(":"):
        text = text[1:]
    server, sep, dev = text.partition("-")
    if not sep:
        raise RuleError(f"{rule!r}: expected [tcp]:server:port-dev")
    addr, sep, port = server.rpartition(":")
    if not sep or not addr:
        raise RuleError(f"{rule!r}: expected server:port before '-'")
    addr = _addr(addr, "guestfwd server")
    nport = _port(port, "guestfwd port", zero=False)
    if dev.startswith("cmd:"):
        if not dev[4:].strip():
            raise RuleError(f"{rule!r}: empty command")
    elif dev.startswith("unix:"):
        if not dev[5:]:
            raise RuleError(f"{rule!r}: empty unix socket path")
    elif dev.startswith("tcp:"):
        host, sep, tport = dev[4:].rpartition(":")
        if not sep:
            raise RuleError(f"{rule!r}: expected tcp:HOST:PORT")
        _addr(host, "guestfwd target")  # a literal address: no name lookups
        _port(tport, "guestfwd target port", zero=False)
    else:
        raise RuleError(f"{rule!r}: the device must be tcp:HOST:PORT, unix:PATH or cmd:COMMAND")
    return GuestFwd(addr, nport, dev, rule)

"""The ``-netdev user`` option string, parsed and validated as QEMU does, into a frozen Config.

``parse_user_options("net=192.168.76.0/24,dhcpstart=192.168.76.9,hostname=vm1")`` takes what
follows ``user,`` on QEMU's command line. Every option name QEMU knows is recognised and
honoured; an unknown one is refused with a :class:`ConfigError` naming it. Values follow QEMU's
rules: ``,,`` is a literal comma, booleans are on/off (yes/no, true/false, y/n), a network mask
is ``a.b.c.d`` or ``/bits`` (classful when absent), ``host``, ``dns`` and ``dhcpstart`` must lie
inside ``net`` and differ.

Boot and share: ``tftp=DIR`` (the TFTP root), ``tftp-server-name=`` (DHCP option 66) and
``bootfile=`` (BOOTP file field and option 67) are at most 255 bytes where QEMU bounds them;
``smb=DIR`` shares a directory through smbd at ``smbserver=`` (default x.x.x.4, inside ``net``,
not ``host`` or ``dns``). Directories are checked when the stack starts, not here.

Extensions to QEMU's syntax (absent from QEMU, so a QEMU option string never sets them):
``mtu=`` (68..65521, offered to the guest with DHCP option 26), ``hostloopback=on|off|ADDR``
(where the ``host`` address leads: the host's loopback 127.0.0.1 by default, as libslirp),
``udp-timeout=`` and ``dns-timeout=`` (seconds), ``max-flows=`` (TCP NAT entries, 8192),
``mem-budget=SIZE`` (bytes for TCP flow buffers and the queue toward the guest; a number with
an optional K, M, G or T suffix, powers of 1024 as in QEMU's sizes).

IPv6 (on by default, as QEMU): ``ipv6-net=PREFIX[/LEN]`` or the legacy ``ipv6-prefix`` and
``ipv6-prefixlen`` (default fec0::/64, length 0..126), ``ipv6-host`` (prefix + 2) and
``ipv6-dns`` (prefix + 3), both inside the prefix and distinct. ``ipv6=off`` with an IPv6
option given is an error, as is ``ipv4=off`` with an IPv4 one, and turning both families off.
Unlike QEMU, host bits in the prefix are cleared (QEMU keeps them and ORs the host number into
them). IPv6 needs a link MTU of at least 1280: with a smaller ``mtu=``, ``ipv6=on`` is an
error and the default becomes off.

Each option (its parser, default, journal form and help line) is one row of
:data:`slirptrio.syntax.options.OPTIONS`; this module is the face: :class:`Config` and
:func:`parse_user_options`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from slirptrio.syntax import options as _options
from slirptrio.syntax.errors import ConfigError as ConfigError
from slirptrio.syntax.keyval import split_options as split_options

# The journal header records this module's constants (slirptrio.core.constants): these stay
# named here, the option limits among them (their home is the option table).
from slirptrio.syntax.options import (
    DEFAULT_MEM_BUDGET,
    DEFAULT_MTU,
    IPV6_MIN_MTU,
    MAX_MEM_BUDGET,
    MAX_MTU,
    MIN_MEM_BUDGET,
    MIN_MTU,
)

__all__ = [
    "DEFAULT_MEM_BUDGET", "DEFAULT_MTU", "DHCP_LEASE_TIME", "GUEST_QUEUE_SHARE", "IPV6_MIN_MTU",
    "MAX_MEM_BUDGET", "MAX_MTU", "MIN_MEM_BUDGET", "MIN_MTU", "NUM_DHCP_CLIENTS", "Config",
    "ConfigError", "parse_user_options", "split_options",
]  # fmt: skip

NUM_DHCP_CLIENTS = 16
DHCP_LEASE_TIME = 86400
GUEST_QUEUE_SHARE = 8
"""The queue of frames toward the guest may hold 1/GUEST_QUEUE_SHARE of ``mem-budget``; the
TCP flow buffers share the rest."""

_D = _options.DEFAULTS


@dataclass(frozen=True)
class Config:
    """A validated ``-netdev user`` configuration (defaults as QEMU's)."""

    net: IPv4Network = _D["net"]
    host: IPv4Address = _D["host"]
    dns: IPv4Address = _D["dns"]
    dhcpstart: IPv4Address = _D["dhcpstart"]
    ipv4: bool = _D["ipv4"]
    ipv6: bool = _D["ipv6"]
    ipv6_net: IPv6Network = _D["ipv6_net"]
    ipv6_host: IPv6Address = _D["ipv6_host"]
    ipv6_dns: IPv6Address = _D["ipv6_dns"]
    restrict: bool = _D["restrict"]
    hostname: str = _D["hostname"]
    domainname: str = _D["domainname"]
    dnssearch: tuple[str, ...] = field(default_factory=tuple)
    mtu: int = _D["mtu"]
    hostloopback: str = _D["hostloopback"]  # "" when the host address leads nowhere
    udp_timeout: int = _D["udp_timeout"]
    dns_timeout: int = _D["dns_timeout"]
    max_flows: int = _D["max_flows"]
    mem_budget: int = _D["mem_budget"]
    id: str = _D["id"]
    hostfwd: tuple[str, ...] = field(default_factory=tuple)
    guestfwd: tuple[str, ...] = field(default_factory=tuple)
    tftp: str = _D["tftp"]  # the TFTP root ("" = no TFTP service)
    tftp_server_name: str = _D["tftp_server_name"]
    bootfile: str = _D["bootfile"]
    smb: str = _D["smb"]  # the directory shared over SMB ("" = none)
    smbserver: IPv4Address | None = _D["smbserver"]  # set whenever smb is
    isolate: bool = _D["isolate"]  # guests on the switch see only the router
    dhcp_clients: int = _D["dhcp_clients"]  # the DHCP pool's size (QEMU: 16)

    def guest_queue_bytes(self) -> int:
        """The bound, in bytes, of the shell's queue of frames toward the guest."""
        return self.mem_budget // GUEST_QUEUE_SHARE

    def tcp_mem_budget(self) -> int:
        """The bytes the TCP NAT's flows may commit together (the rest of ``mem_budget``)."""
        return self.mem_budget - self.guest_queue_bytes()

    def dhcp_pool(self) -> list[IPv4Address]:
        """The addresses DHCP hands out, in order."""
        return [self.dhcpstart + i for i in range(self.dhcp_clients)]

    def _values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """A msgpack-ready dict that :meth:`from_dict` turns back into an equal Config."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, IPv4Address | IPv4Network | IPv6Address | IPv6Network):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif value is None:
                value = ""
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Rebuild a Config from :meth:`to_dict` output (a journal header)."""
        try:
            return cls(**_options.from_plain(data))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("config", f"bad configuration in journal: {exc}") from None

    def to_options(self) -> str:
        """The option string that parses back into this Config."""
        return _options.to_text(self._values())


def parse_user_options(text: str) -> Config:
    """Parse and validate the text after ``user,`` in ``-netdev user,...``."""
    return Config(**_options.parse_fields(text))

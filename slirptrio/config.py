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
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from ipaddress import AddressValueError, IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from slirptrio.syntax.errors import ConfigError as ConfigError
from slirptrio.syntax.errors import RuleError
from slirptrio.syntax.forward import parse_guestfwd, parse_hostfwd
from slirptrio.syntax.keyval import split_options

NUM_DHCP_CLIENTS = 16
DHCP_LEASE_TIME = 86400
MIN_MTU = 68
MAX_MTU = 65521
DEFAULT_MTU = 1500
DEFAULT_MEM_BUDGET = 256 << 20
"""256 MiB: 512 TCP flows with full 256 KiB buffers both ways, or seconds of this stack's
throughput on a 2-core machine; small beside the RAM of a machine that runs a VM."""
MIN_MEM_BUDGET = 1 << 20
MAX_MEM_BUDGET = 1 << 40
GUEST_QUEUE_SHARE = 8
"""The queue of frames toward the guest may hold 1/GUEST_QUEUE_SHARE of ``mem-budget``; the
TCP flow buffers share the rest."""
_SIZE_SUFFIX = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
IPV6_MIN_MTU = 1280

_DEFAULT_NET = IPv4Network("10.0.2.0/24")
_DEFAULT_NET6 = IPv6Network("fec0::/64")
_IPV6_OPTIONS = ("ipv6-net", "ipv6-prefix", "ipv6-prefixlen", "ipv6-host", "ipv6-dns")
_IPV4_OPTIONS = ("net", "ip", "host", "dns", "dhcpstart")
_TRUE = {"on", "yes", "true", "y"}
_FALSE = {"off", "no", "false", "n"}


@dataclass(frozen=True)
class Config:
    """A validated ``-netdev user`` configuration (defaults as QEMU's)."""

    net: IPv4Network = _DEFAULT_NET
    host: IPv4Address = _DEFAULT_NET[2]
    dns: IPv4Address = _DEFAULT_NET[3]
    dhcpstart: IPv4Address = _DEFAULT_NET[15]
    ipv4: bool = True
    ipv6: bool = True
    ipv6_net: IPv6Network = _DEFAULT_NET6
    ipv6_host: IPv6Address = _DEFAULT_NET6[2]
    ipv6_dns: IPv6Address = _DEFAULT_NET6[3]
    restrict: bool = False
    hostname: str = ""
    domainname: str = ""
    dnssearch: tuple[str, ...] = field(default_factory=tuple)
    mtu: int = DEFAULT_MTU
    hostloopback: str = "127.0.0.1"  # "" when the host address leads nowhere
    udp_timeout: int = 240
    dns_timeout: int = 10
    max_flows: int = 8192
    mem_budget: int = DEFAULT_MEM_BUDGET
    id: str = ""
    hostfwd: tuple[str, ...] = field(default_factory=tuple)
    guestfwd: tuple[str, ...] = field(default_factory=tuple)
    tftp: str = ""  # the TFTP root ("" = no TFTP service)
    tftp_server_name: str = ""
    bootfile: str = ""
    smb: str = ""  # the directory shared over SMB ("" = none)
    smbserver: IPv4Address | None = None  # set whenever smb is

    def guest_queue_bytes(self) -> int:
        """The bound, in bytes, of the shell's queue of frames toward the guest."""
        return self.mem_budget // GUEST_QUEUE_SHARE

    def tcp_mem_budget(self) -> int:
        """The bytes the TCP NAT's flows may commit together (the rest of ``mem_budget``)."""
        return self.mem_budget - self.guest_queue_bytes()

    def dhcp_pool(self) -> list[IPv4Address]:
        """The addresses DHCP hands out, in order."""
        return [self.dhcpstart + i for i in range(NUM_DHCP_CLIENTS)]

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
            return cls(
                net=IPv4Network(data["net"]),
                host=IPv4Address(data["host"]),
                dns=IPv4Address(data["dns"]),
                dhcpstart=IPv4Address(data["dhcpstart"]),
                ipv4=bool(data["ipv4"]),
                ipv6=bool(data["ipv6"]),
                ipv6_net=IPv6Network(data.get("ipv6_net", str(_DEFAULT_NET6))),
                ipv6_host=IPv6Address(data.get("ipv6_host", str(_DEFAULT_NET6[2]))),
                ipv6_dns=IPv6Address(data.get("ipv6_dns", str(_DEFAULT_NET6[3]))),
                restrict=bool(data["restrict"]),
                hostname=str(data["hostname"]),
                domainname=str(data["domainname"]),
                dnssearch=tuple(str(s) for s in data["dnssearch"]),
                mtu=int(data["mtu"]),
                hostloopback=str(data.get("hostloopback", "127.0.0.1")),
                udp_timeout=int(data.get("udp_timeout", 240)),
                dns_timeout=int(data.get("dns_timeout", 10)),
                max_flows=int(data.get("max_flows", 8192)),
                mem_budget=int(data.get("mem_budget", DEFAULT_MEM_BUDGET)),
                id=str(data.get("id", "")),
                hostfwd=tuple(str(s) for s in data.get("hostfwd", ())),
                guestfwd=tuple(str(s) for s in data.get("guestfwd", ())),
                tftp=str(data.get("tftp", "")),
                tftp_server_name=str(data.get("tftp_server_name", "")),
                bootfile=str(data.get("bootfile", "")),
                smb=str(data.get("smb", "")),
                smbserver=IPv4Address(data["smbserver"]) if data.get("smbserver") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("config", f"bad configuration in journal: {exc}") from None

    def to_options(self) -> str:
        """The option string that parses back into this Config."""
        parts = [
            f"net={self.net}",
            f"host={self.host}",
            f"dns={self.dns}",
            f"dhcpstart={self.dhcpstart}",
        ]
        if not self.ipv4:
            parts = ["ipv4=off"]
        if self.ipv6:
            parts += [
                f"ipv6-net={self.ipv6_net}",
                f"ipv6-host={self.ipv6_host}",
                f"ipv6-dns={self.ipv6_dns}",
            ]
        else:
            parts.append("ipv6=off")
        if self.restrict:
            parts.append("restrict=on")
        if self.hostname:
            parts.append("hostname=" + self.hostname.replace(",", ",,"))
        if self.domainname:
            parts.append("domainname=" + self.domainname.replace(",", ",,"))
        parts += ["dnssearch=" + s.replace(",", ",,") for s in self.dnssearch]
        if self.mtu != DEFAULT_MTU:
            parts.append(f"mtu={self.mtu}")
        if self.hostloopback != "127.0.0.1":
            parts.append("hostloopback=" + (self.hostloopback or "off"))
        if self.max_flows != 8192:
            parts.append(f"max-flows={self.max_flows}")
        if self.mem_budget != DEFAULT_MEM_BUDGET:
            parts.append(f"mem-budget={self.mem_budget}")
        if self.id:
            parts.append("id=" + self.id.replace(",", ",,"))
        parts += ["hostfwd=" + s.replace(",", ",,") for s in self.hostfwd]
        parts += ["guestfwd=" + s.replace(",", ",,") for s in self.guestfwd]
        if self.udp_timeout != 240:
            parts.append(f"udp-timeout={self.udp_timeout}")
        if self.dns_timeout != 10:
            parts.append(f"dns-timeout={self.dns_timeout}")
        for key, value in (
            ("tftp", self.tftp), ("tftp-server-name", self.tftp_server_name),
            ("bootfile", self.bootfile), ("smb", self.smb),
        ):
            if value:
                parts.append(f"{key}=" + value.replace(",", ",,"))
        if self.smbserver is not None:
            parts.append(f"smbserver={self.smbserver}")
        return ",".join(parts)


def _bool(key: str, value: str) -> bool:
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(key, f"expects on or off, not '{value}'")


def _addr(key: str, value: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except AddressValueError:
        raise ConfigError(key, f"'{value}' is not an IPv4 address") from None


def _classful(addr: IPv4Address) -> int:
    first = int(addr) >> 24
    return 8 if first < 128 else 16 if first < 192 else 24


def _network(key: str, value: str) -> IPv4Network:
    addr_text, slash, mask_text = value.partition("/")
    addr = _addr(key, addr_text)
    if not slash:
        bits = _classful(addr)
    elif mask_text.isascii() and mask_text.isdecimal():
        bits = int(mask_text)
        if not 4 <= bits <= 32:
            raise ConfigError(key, f"prefix length {bits} outside 4..32")
    else:
        try:
            mask = IPv4Address(mask_text)
        except AddressValueError:
            raise ConfigError(key, f"'{mask_text}' is not a netmask") from None
        inverted = ~int(mask) & 0xFFFFFFFF
        if inverted & (inverted + 1):  # the ones must be contiguous from the top
            raise ConfigError(key, f"'{mask_text}' is not a netmask")
        bits = 32 - inverted.bit_length()
        if bits < 4:
            raise ConfigError(key, f"netmask '{mask_text}' shorter than /4")
    return IPv4Network(f"{addr}/{bits}", strict=False)


def _int(key: str, value: str, lo: int, hi: int) -> int:
    if not (value.isascii() and value.isdecimal()):
        raise ConfigError(key, f"'{value}' is not a number")
    n = int(value, 10)
    if not lo <= n <= hi:
        raise ConfigError(key, f"{n} outside {lo}..{hi}")
    return n


def _size(key: str, value: str, lo: int, hi: int) -> int:
    """A byte count: digits and an optional K, M, G or T (powers of 1024), as QEMU's sizes."""
    text = value.strip().lower()
    if text.endswith("b"):
        text = text[:-1]
    digits = text.rstrip("kmgt")
    suffix = text[len(digits):]
    if not (digits.isascii() and digits.isdecimal()) or suffix not in _SIZE_SUFFIX:
        raise ConfigError(key, f"'{value}' is not a size (a number, optionally K, M, G or T)")
    n = int(digits, 10) << _SIZE_SUFFIX[suffix]
    if not lo <= n <= hi:
        raise ConfigError(key, f"{value} outside {lo >> 20}M..{hi >> 40}T")
    return n


def _name(key: str, value: str, *, allow_empty: bool) -> str:
    if not value and not allow_empty:
        raise ConfigError(key, "must not be empty")
    if len(value.encode()) > 255:
        raise ConfigError(key, "longer than 255 bytes")
    return value


def _path(key: str, value: str) -> str:
    if not value:
        raise ConfigError(key, "expects a directory")
    if "\x00" in value:
        raise ConfigError(key, "contains a NUL character")
    return value


def _domain(key: str, value: str) -> str:
    name = _name(key, value, allow_empty=False)
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    for label in labels:
        if not 0 < len(label.encode()) < 64:
            raise ConfigError(key, f"'{value}' is not a domain name (bad label '{label}')")
    return name


def _addr6(key: str, value: str) -> IPv6Address:
    try:
        return IPv6Address(value)
    except AddressValueError:
        raise ConfigError(key, f"'{value}' is not an IPv6 address") from None


def _ipv6_addresses(seen: dict[str, str]) -> tuple[IPv6Network, IPv6Address, IPv6Address]:
    """QEMU's IPv6 addressing: ``ipv6-net=ADDR[/LEN]`` (or ``ipv6-prefix`` and
    ``ipv6-prefixlen``), then ``ipv6-host`` and ``ipv6-dns`` inside it."""
    if "ipv6-net" in seen and ("ipv6-prefix" in seen or "ipv6-prefixlen" in seen):
        raise ConfigError("ipv6-net", "give either ipv6-net= or ipv6-prefix/ipv6-prefixlen")
    if "ipv6-net" in seen:
        prefix_text, slash, len_text = seen["ipv6-net"].partition("/")
        key_len = "ipv6-net"
        if not slash:
            len_text = "64"
        key_prefix = "ipv6-net"
    else:
        prefix_text = seen.get("ipv6-prefix", str(_DEFAULT_NET6.network_address))
        len_text = seen.get("ipv6-prefixlen", "64")
        key_prefix, key_len = "ipv6-prefix", "ipv6-prefixlen"
    prefix = _addr6(key_prefix, prefix_text)
    length = _int(key_len, len_text, 0, 126)
    net = IPv6Network(f"{prefix}/{length}", strict=False)
    base = int(net.network_address)

    def inside(key: str, default_host: int) -> IPv6Address:
        addr = _addr6(key, seen[key]) if key in seen else IPv6Address(base | default_host)
        if addr not in net:
            raise ConfigError(key, f"{addr} is not inside {net}")
        if addr == net.network_address:
            raise ConfigError(key, f"{addr} is the subnet-router anycast address of {net}")
        if addr.is_multicast:
            raise ConfigError(key, f"{addr} is a multicast address")
        return addr

    host = inside("ipv6-host", 2)
    dns = inside("ipv6-dns", 3)
    if dns == host:
        raise ConfigError("ipv6-dns", f"{dns} must differ from ipv6-host")
    return net, host, dns


def parse_user_options(text: str) -> Config:
    """Parse and validate the text after ``user,`` in ``-netdev user,...``."""
    seen: dict[str, str] = {}
    dnssearch: list[str] = []
    fwds: dict[str, list[str]] = {"hostfwd": [], "guestfwd": []}
    # Whitespace-only means no options; otherwise spaces belong to the values, as in QEMU.
    for key, value in split_options(text if text.strip() else ""):
        if key == "dnssearch":
            dnssearch.append(_domain(key, value))
            continue
        if key in fwds:
            fwds[key].append(value)
            continue
        if key not in _KNOWN:
            raise ConfigError(key, "unknown option")
        if key in seen:
            raise ConfigError(key, "given twice")
        seen[key] = value

    ipv4 = _bool("ipv4", seen["ipv4"]) if "ipv4" in seen else True
    mtu = _int("mtu", seen["mtu"], MIN_MTU, MAX_MTU) if "mtu" in seen else DEFAULT_MTU
    if "ipv6" in seen:
        ipv6 = _bool("ipv6", seen["ipv6"])
        if ipv6 and mtu < IPV6_MIN_MTU:
            raise ConfigError("ipv6", f"IPv6 needs mtu of at least {IPV6_MIN_MTU}, not {mtu}")
    else:
        ipv6 = mtu >= IPV6_MIN_MTU
    if not ipv4 and not ipv6:
        raise ConfigError("ipv4", "IPv4 and IPv6 are both off")
    if not ipv4:
        for key in _IPV4_OPTIONS:
            if key in seen:
                raise ConfigError(key, "IPv4 is off (ipv4=off) but an IPv4 address is given")
    if not ipv6:
        for key in _IPV6_OPTIONS:
            if key in seen:
                raise ConfigError(key, "IPv6 is off but an IPv6 option is given")
    net6, host6, dns6 = _ipv6_addresses(seen)
    if "ip" in seen and "net" in seen:
        raise ConfigError("ip", "give either ip= (legacy) or net=, not both")
    if "ip" in seen:
        net = _network("ip", seen["ip"].partition("/")[0] + "/24")
    else:
        net = _network("net", seen["net"]) if "net" in seen else Config.net
    base = int(net.network_address)

    def inside(key: str, default_host: int) -> IPv4Address:
        addr = _addr(key, seen[key]) if key in seen else IPv4Address(base | default_host)
        if addr not in net:
            raise ConfigError(key, f"{addr} is not inside net {net}")
        if addr in (net.network_address, net.broadcast_address) and net.prefixlen < 31:
            raise ConfigError(key, f"{addr} is the network or broadcast address of {net}")
        return addr

    host = inside("host", 2)
    dns = inside("dns", 3)
    dhcpstart = inside("dhcpstart", 15)
    if dns == host:
        raise ConfigError("dns", f"{dns} must differ from host")
    if dhcpstart in (host, dns):
        raise ConfigError("dhcpstart", f"{dhcpstart} must differ from host and dns")

    for rule in fwds["hostfwd"]:
        try:
            hf = parse_hostfwd(rule)
        except RuleError as exc:
            raise ConfigError("hostfwd", str(exc)) from None
        if ":" in hf.guest_addr:
            if not ipv6 or IPv6Address(hf.guest_addr) not in net6:
                raise ConfigError(
                    "hostfwd", f"guest address {hf.guest_addr} is not inside {net6}"
                )
        elif hf.guest_addr and IPv4Address(hf.guest_addr) not in net:
            raise ConfigError("hostfwd", f"guest address {hf.guest_addr} is not inside {net}")
        elif not hf.guest_addr and not ipv4:
            raise ConfigError("hostfwd", "ipv4=off: give the guest's IPv6 address")
    for rule in fwds["guestfwd"]:
        try:
            gf = parse_guestfwd(rule)
        except RuleError as exc:
            raise ConfigError("guestfwd", str(exc)) from None
        if ":" in gf.addr:
            gaddr6 = IPv6Address(gf.addr)
            if not ipv6 or gaddr6 not in net6 or gaddr6 in (host6, dns6):
                raise ConfigError(
                    "guestfwd",
                    f"{gaddr6} must be inside {net6} and differ from ipv6-host and ipv6-dns",
                )
            continue
        gaddr = IPv4Address(gf.addr)
        if gaddr not in net or gaddr in (host, dns):
            raise ConfigError(
                "guestfwd", f"{gaddr} must be inside {net} and differ from host and dns"
            )

    smbserver = None
    if "smbserver" in seen or "smb" in seen:
        smbserver = inside("smbserver", 4)
        if smbserver in (host, dns):
            raise ConfigError("smbserver", f"{smbserver} must differ from host and dns")

    loop = seen.get("hostloopback", "on")
    if loop.lower() in _TRUE:
        hostloopback = "127.0.0.1"
    elif loop.lower() in _FALSE:
        hostloopback = ""
    else:
        hostloopback = str(_addr("hostloopback", loop))

    return Config(
        net=net,
        host=host,
        dns=dns,
        dhcpstart=dhcpstart,
        ipv4=ipv4,
        ipv6=ipv6,
        ipv6_net=net6,
        ipv6_host=host6,
        ipv6_dns=dns6,
        restrict=_bool("restrict", seen["restrict"]) if "restrict" in seen else False,
        hostname=_name("hostname", seen.get("hostname", ""), allow_empty=True),
        domainname=(
            _name("domainname", seen["domainname"], allow_empty=False) if "domainname" in seen
            else ""
        ),
        dnssearch=tuple(dnssearch),
        mtu=mtu,
        hostloopback=hostloopback,
        udp_timeout=(
            _int("udp-timeout", seen["udp-timeout"], 1, 86400) if "udp-timeout" in seen else 240
        ),
        dns_timeout=(
            _int("dns-timeout", seen["dns-timeout"], 1, 3600) if "dns-timeout" in seen else 10
        ),
        max_flows=(
            _int("max-flows", seen["max-flows"], 1, 1 << 20) if "max-flows" in seen else 8192
        ),
        mem_budget=(
            _size("mem-budget", seen["mem-budget"], MIN_MEM_BUDGET, MAX_MEM_BUDGET)
            if "mem-budget" in seen else DEFAULT_MEM_BUDGET
        ),
        id=seen.get("id", ""),
        hostfwd=tuple(fwds["hostfwd"]),
        guestfwd=tuple(fwds["guestfwd"]),
        tftp=_path("tftp", seen["tftp"]) if "tftp" in seen else "",
        tftp_server_name=(
            _name("tftp-server-name", seen["tftp-server-name"], allow_empty=False)
            if "tftp-server-name" in seen else ""
        ),
        bootfile=(
            _name("bootfile", seen["bootfile"], allow_empty=False) if "bootfile" in seen else ""
        ),
        smb=_path("smb", seen["smb"]) if "smb" in seen else "",
        smbserver=smbserver,
    )


_KNOWN = {
    "id",
    "ipv4",
    "ipv6",
    "ipv6-net",
    "ipv6-prefix",
    "ipv6-prefixlen",
    "ipv6-host",
    "ipv6-dns",
    "net",
    "ip",
    "host",
    "restrict",
    "hostname",
    "dhcpstart",
    "dns",
    "domainname",
    "mtu",
    "hostloopback",
    "udp-timeout",
    "dns-timeout",
    "max-flows",
    "mem-budget",
    "tftp",
    "tftp-server-name",
    "bootfile",
    "smb",
    "smbserver",
}

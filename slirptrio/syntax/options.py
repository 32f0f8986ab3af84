"""The ``-netdev user`` options as data: :data:`OPTIONS` holds, once each, an option's name, the
:class:`~slirptrio.config.Config` field it sets, its default, its journal form and its help line.

Parsing (:func:`parse_fields`), the defaults (:data:`DEFAULTS`), the journal form
(:func:`from_plain`), the option string back (:func:`to_text`) and the help (:func:`help_text`)
are all driven by the table. An option with a ``parse`` function is parsed on its own; the
others (addresses inside ``net``, the IP families, MTU and IPv6, forwards, ``smbserver``,
``hostloopback``) depend on each other and are worked out together in :func:`parse_fields`.
:mod:`slirptrio.config` describes the syntax in full.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, Literal

from slirptrio.syntax.errors import ConfigError, RuleError
from slirptrio.syntax.forward import parse_guestfwd, parse_hostfwd
from slirptrio.syntax.keyval import escape, split_options

MIN_MTU = 68
MAX_MTU = 65521
DEFAULT_MTU = 1500
DEFAULT_MEM_BUDGET = 256 << 20
"""256 MiB: 512 TCP flows with full 256 KiB buffers both ways, or seconds of this stack's
throughput on a 2-core machine; small beside the RAM of a machine that runs a VM."""
MIN_MEM_BUDGET = 1 << 20
MAX_MEM_BUDGET = 1 << 40
IPV6_MIN_MTU = 1280

_SIZE_SUFFIX = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
_DEFAULT_NET = IPv4Network("10.0.2.0/24")
_DEFAULT_NET6 = IPv6Network("fec0::/64")
_TRUE = {"on", "yes", "true", "y"}
_FALSE = {"off", "no", "false", "n"}

Kind = Literal["addr4", "addr4?", "net4", "addr6", "net6", "bool", "int", "str", "strs"]
"""How a field is written in the journal (:func:`from_plain`) and the option string."""

Family = Literal["ipv4", "ipv6", ""]


# ------------------------------------------------------------------------ value parsers


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


def _ranged(lo: int, hi: int) -> Callable[[str, str], int]:
    return lambda key, value: _int(key, value, lo, hi)


# ---------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Option:
    """One option of the ``-netdev user`` string."""

    name: str
    """As written: ``udp-timeout``."""
    field: str
    """The :class:`~slirptrio.config.Config` field it sets ("" for a legacy spelling that
    sets another option's field)."""
    kind: Kind
    default: Any
    help: str
    parse: Callable[[str, str], Any] | None = None
    """``parse(name, value)``, for an option parsed on its own; None: worked out together
    with others in :func:`parse_fields`."""
    repeat: bool = False
    """Given any number of times; the field holds every value in order."""
    family: Family = ""
    """The IP family the option belongs to (given while that family is off: an error)."""
    qemu: bool = True
    """QEMU has it (False: slirptrio's extension)."""
    always: bool = False
    """Always written back by :func:`to_text` (its default depends on other options)."""
    journal_since_v1: bool = False
    """A journal's config always holds it (:func:`from_plain` refuses one without it)."""


OPTIONS: tuple[Option, ...] = (
    Option("ipv4", "ipv4", "bool", True, "on|off: IPv4 (on)", journal_since_v1=True),
    Option("mtu", "mtu", "int", DEFAULT_MTU,
           f"{MIN_MTU}..{MAX_MTU}: the link MTU, DHCP option 26 ({DEFAULT_MTU})", qemu=False,
           journal_since_v1=True),
    Option("ipv6", "ipv6", "bool", True, "on|off: IPv6 (on with an MTU of 1280 or more)",
           journal_since_v1=True),
    Option("ipv6-net", "ipv6_net", "net6", _DEFAULT_NET6,
           f"PREFIX[/LEN]: the IPv6 prefix ({_DEFAULT_NET6})", family="ipv6", always=True),
    Option("ipv6-prefix", "", "addr6", None, "PREFIX: legacy form of ipv6-net",
           family="ipv6"),
    Option("ipv6-prefixlen", "", "int", None, "0..126: legacy form of ipv6-net",
           family="ipv6"),
    Option("ipv6-host", "ipv6_host", "addr6", _DEFAULT_NET6[2],
           "ADDR6: the host's address in the prefix (prefix + 2)", family="ipv6", always=True),
    Option("ipv6-dns", "ipv6_dns", "addr6", _DEFAULT_NET6[3],
           "ADDR6: the DNS relay's address in the prefix (prefix + 3)", family="ipv6",
           always=True),
    Option("net", "net", "net4", _DEFAULT_NET, f"ADDR[/MASK]: the guest network ({_DEFAULT_NET})",
           family="ipv4", always=True, journal_since_v1=True),
    Option("ip", "", "net4", None, "ADDR: legacy form of net (a /24)", family="ipv4"),
    Option("host", "host", "addr4", _DEFAULT_NET[2],
           "ADDR: the host's address in net (x.x.x.2)", family="ipv4", always=True,
           journal_since_v1=True),
    Option("dns", "dns", "addr4", _DEFAULT_NET[3],
           "ADDR: the DNS relay's address in net (x.x.x.3)", family="ipv4", always=True,
           journal_since_v1=True),
    Option("dhcpstart", "dhcpstart", "addr4", _DEFAULT_NET[15],
           "ADDR: the first address DHCP hands out (x.x.x.15)", family="ipv4", always=True,
           journal_since_v1=True),
    Option("hostfwd", "hostfwd", "strs", (),
           "[tcp|udp|unix]:[hostaddr]:hostport-[guestaddr]:guestport: a host forward",
           repeat=True),
    Option("guestfwd", "guestfwd", "strs", (), "[tcp]:server:port-dev: a guest forward",
           repeat=True),
    Option("smbserver", "smbserver", "addr4?", None, "ADDR: the SMB server's address (x.x.x.4)"),
    Option("hostloopback", "hostloopback", "str", "127.0.0.1",
           "on|off|ADDR: where the host address leads (on: 127.0.0.1)", qemu=False),
    Option("restrict", "restrict", "bool", False, "on|off: isolate the guest (off)",
           parse=_bool, journal_since_v1=True),
    Option("hostname", "hostname", "str", "", "NAME: the guest's name, DHCP option 12",
           parse=lambda k, v: _name(k, v, allow_empty=True), journal_since_v1=True),
    Option("domainname", "domainname", "str", "", "NAME: DHCP option 15",
           parse=lambda k, v: _name(k, v, allow_empty=False), journal_since_v1=True),
    Option("dnssearch", "dnssearch", "strs", (), "DOMAIN: a search domain, DHCP option 119",
           parse=_domain, repeat=True, journal_since_v1=True),
    Option("udp-timeout", "udp_timeout", "int", 240,
           "1..86400: seconds an idle UDP flow lives (240)", parse=_ranged(1, 86400),
           qemu=False),
    Option("dns-timeout", "dns_timeout", "int", 10,
           "1..3600: seconds a DNS query waits for its upstream (10)", parse=_ranged(1, 3600),
           qemu=False),
    Option("max-flows", "max_flows", "int", 8192, "N: TCP NAT entries (8192)",
           parse=_ranged(1, 1 << 20), qemu=False),
    Option("mem-budget", "mem_budget", "int", DEFAULT_MEM_BUDGET,
           "SIZE[K|M|G|T]: bytes for flow buffers and the guest queue (256M)",
           parse=lambda k, v: _size(k, v, MIN_MEM_BUDGET, MAX_MEM_BUDGET), qemu=False),
    Option("id", "id", "str", "", "NAME: the netdev's id", parse=lambda k, v: v),
    Option("tftp", "tftp", "str", "", "DIR: the TFTP root", parse=_path),
    Option("tftp-server-name", "tftp_server_name", "str", "", "NAME: DHCP option 66",
           parse=lambda k, v: _name(k, v, allow_empty=False)),
    Option("bootfile", "bootfile", "str", "", "FILE: the boot file, DHCP option 67",
           parse=lambda k, v: _name(k, v, allow_empty=False)),
    Option("smb", "smb", "str", "", "DIR: a directory shared over SMB", parse=_path),
    # Several guests on one stack (issue 22): slirptrio's extensions.
    Option("isolate", "isolate", "bool", False,
           "on|off: guests on the switch reach only the router, not each other (off)",
           parse=_bool, qemu=False),
    Option("dhcp-clients", "dhcp_clients", "int", 16,
           "1..1024: addresses DHCP hands out from dhcpstart, one per MAC (16, as QEMU)",
           parse=_ranged(1, 1024), qemu=False),
)  # fmt: skip

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
DEFAULTS: dict[str, Any] = {o.field: o.default for o in OPTIONS if o.field}
"""Every :class:`~slirptrio.config.Config` field's default, by field name."""


# ------------------------------------------------------------------------------ parsing


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


def parse_fields(text: str) -> dict[str, Any]:
    """The :class:`~slirptrio.config.Config` fields ``text`` (what follows ``user,``) sets,
    every field present; raises :class:`ConfigError` naming the first bad option."""
    seen: dict[str, str] = {}
    repeated: dict[str, list[Any]] = {o.name: [] for o in OPTIONS if o.repeat}
    # Whitespace-only means no options; otherwise spaces belong to the values, as in QEMU.
    for key, value in split_options(text if text.strip() else ""):
        opt = BY_NAME.get(key)
        if opt is not None and opt.repeat:
            repeated[key].append(opt.parse(key, value) if opt.parse else value)
            continue
        if opt is None:
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
    for family, on, why in (
        ("ipv4", ipv4, "IPv4 is off (ipv4=off) but an IPv4 address is given"),
        ("ipv6", ipv6, "IPv6 is off but an IPv6 option is given"),
    ):
        for opt in OPTIONS:
            if not on and opt.family == family and opt.name in seen:
                raise ConfigError(opt.name, why)
    net6, host6, dns6 = _ipv6_addresses(seen)
    if "ip" in seen and "net" in seen:
        raise ConfigError("ip", "give either ip= (legacy) or net=, not both")
    if "ip" in seen:
        net = _network("ip", seen["ip"].partition("/")[0] + "/24")
    else:
        net = _network("net", seen["net"]) if "net" in seen else DEFAULTS["net"]
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

    for rule in repeated["hostfwd"]:
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
    for rule in repeated["guestfwd"]:
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

    out: dict[str, Any] = {
        "net": net, "host": host, "dns": dns, "dhcpstart": dhcpstart, "ipv4": ipv4,
        "ipv6": ipv6, "ipv6_net": net6, "ipv6_host": host6, "ipv6_dns": dns6, "mtu": mtu,
        "hostloopback": hostloopback, "smbserver": smbserver,
    }  # fmt: skip
    for opt in OPTIONS:
        if opt.repeat:
            out[opt.field] = tuple(repeated[opt.name])
        elif opt.parse is not None:
            out[opt.field] = opt.parse(opt.name, seen[opt.name]) if opt.name in seen else (
                opt.default
            )
    return out


# ----------------------------------------------------------------- journal and text forms


def _from_plain(kind: Kind, value: Any) -> Any:
    if kind == "net4":
        return IPv4Network(value)
    if kind == "addr4":
        return IPv4Address(value)
    if kind == "addr4?":
        return IPv4Address(value) if value else None
    if kind == "net6":
        return IPv6Network(value)
    if kind == "addr6":
        return IPv6Address(value)
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "strs":
        return tuple(str(s) for s in value)
    return str(value)


def from_plain(data: dict[str, Any]) -> dict[str, Any]:
    """The Config fields a journal's config dict holds (``Config.to_dict`` output); a field
    newer than the journal gets its default. Raises KeyError, TypeError or ValueError."""
    out: dict[str, Any] = {}
    for opt in OPTIONS:
        if not opt.field:
            continue
        if opt.journal_since_v1 or opt.field in data:
            raw = data[opt.field]
        else:
            out[opt.field] = opt.default
            continue
        out[opt.field] = _from_plain(opt.kind, raw)
    return out


def _show(opt: Option, value: Any) -> list[str]:
    if opt.repeat:
        return [f"{opt.name}={escape(str(v))}" for v in value]
    if opt.kind == "bool":
        return [f"{opt.name}={'on' if value else 'off'}"]
    if opt.name == "hostloopback":
        return [f"{opt.name}={value or 'off'}"]
    return [f"{opt.name}={escape(str(value))}"]


def to_text(values: dict[str, Any]) -> str:
    """The option string that parses back into the Config whose fields are ``values``."""
    parts: list[str] = []
    for opt in OPTIONS:
        if not opt.field:
            continue
        value = values[opt.field]
        if opt.family and not values[opt.family]:
            continue
        if value == opt.default and not opt.always:
            continue
        parts += _show(opt, value)
    return ",".join(parts)


def help_text(width: int = 92) -> str:
    """One line per option (QEMU's first, then slirptrio's own), for ``--help``."""
    lines = []
    for qemu in (True, False):
        for opt in OPTIONS:
            if opt.qemu is qemu:
                lines.append(f"  {opt.name + '=':<18}{opt.help}"[:width])
    return "\n".join(lines)

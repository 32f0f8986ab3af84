"""``-netdev user`` option parsing: QEMU's rules, slirptrio's refusals, round trips, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slirptrio.config import (
    DEFAULT_MTU,
    MAX_MTU,
    MIN_MTU,
    NUM_DHCP_CLIENTS,
    Config,
    ConfigError,
    parse_user_options,
)

REPO = Path(__file__).resolve().parent.parent


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_user_options(text)
    return info.value


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


def addr(text: str) -> IPv4Address:
    return IPv4Address(text)


# ------------------------------------------------------------------------------ defaults


def test_defaults() -> None:
    c = parse_user_options("")
    assert c.net == net("10.0.2.0/24")
    assert c.host == addr("10.0.2.2")
    assert c.dns == addr("10.0.2.3")
    assert c.dhcpstart == addr("10.0.2.15")
    assert c.mtu == DEFAULT_MTU == 1500
    assert (c.ipv4, c.ipv6, c.restrict) == (True, True, False)
    assert (c.ipv6_net, c.ipv6_host, c.ipv6_dns) == (
        IPv6Network("fec0::/64"), IPv6Address("fec0::2"), IPv6Address("fec0::3")
    )
    assert (c.hostname, c.domainname, c.dnssearch) == ("", "", ())
    assert c.hostloopback == "127.0.0.1"
    assert c == Config()
    assert parse_user_options("  ") == Config()


def test_dhcp_pool() -> None:
    pool = parse_user_options("dhcpstart=10.0.2.100").dhcp_pool()
    assert len(pool) == NUM_DHCP_CLIENTS == 16
    assert pool[0] == addr("10.0.2.100") and pool[-1] == addr("10.0.2.115")
    assert len(set(pool)) == 16


def test_brief_example() -> None:
    c = parse_user_options("net=192.168.76.0/24,dhcpstart=192.168.76.9,hostname=vm1")
    assert c.net == net("192.168.76.0/24")
    assert c.host == addr("192.168.76.2")
    assert c.dns == addr("192.168.76.3")
    assert c.dhcpstart == addr("192.168.76.9")
    assert c.hostname == "vm1"


def test_explicit_addresses() -> None:
    c = parse_user_options("net=172.20.0.0/16,host=172.20.1.1,dns=172.20.1.53,dhcpstart=172.20.9.0")
    assert (c.host, c.dns, c.dhcpstart) == (
        addr("172.20.1.1"), addr("172.20.1.53"), addr("172.20.9.0"),
    )


# ------------------------------------------------------------------------------ masks


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.2.0/24", "10.0.2.0/24"),
        ("192.168.0.0/255.255.0.0", "192.168.0.0/16"),
        ("10.0.0.0/255.255.255.0", "10.0.0.0/24"),
        ("10.9.0.0/4", "0.0.0.0/4"),
        ("10.0.2.77/24", "10.0.2.0/24"),  # host bits are masked off, as QEMU does
        ("10.0.0.0/240.0.0.0", "0.0.0.0/4"),
        # Classful defaults without a mask.
        ("10.1.2.0", "10.0.0.0/8"),
        ("172.16.5.0", "172.16.0.0/16"),
        ("192.168.76.0", "192.168.76.0/24"),
    ],
)
def test_net_masks(value: str, expected: str) -> None:
    c = parse_user_options(f"net={value}")
    assert c.net == net(expected)
    base = int(c.net.network_address)
    assert (c.host, c.dns, c.dhcpstart) == (
        IPv4Address(base + 2), IPv4Address(base + 3), IPv4Address(base + 15),
    )


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.0/255.0.255.0",  # non-contiguous
        "10.0.0.0/255.255.255.1",
        "10.0.0.0/3",
        "10.0.0.0/33",
        "10.0.0.0/0",
        "10.0.0.0/0.0.0.0",
        "10.0.0.0/nonsense",
        "10.0.0.0/",
        "10.0.0/24",
        "10.0.0.256/24",
        "example.com",
        "",
    ],
)
def test_bad_net(value: str) -> None:
    assert refused(f"net={value}").option == "net"


def test_hostmask_is_not_a_netmask() -> None:
    assert refused("net=10.0.0.0/0.0.255.255").option == "net"


def test_unicode_digit_prefix_is_a_config_error() -> None:
    try:
        parse_user_options("net=10.0.0.0/\u00b2")
    except ConfigError as exc:
        assert exc.option == "net"
    except ValueError as exc:
        pytest.fail(f"plain ValueError escaped: {exc!r}")
    else:
        pytest.fail("accepted")


def test_legacy_ip() -> None:
    c = parse_user_options("ip=192.168.1.7")
    assert c.net == net("192.168.1.0/24")
    assert c.host == addr("192.168.1.2")
    # Legacy ip= always means /24, whatever mask it carries.
    assert parse_user_options("ip=10.1.2.3/8").net == net("10.1.2.0/24")
    assert refused("ip=10.0.2.0,net=10.0.2.0/24").option == "ip"
    assert refused("ip=bogus").option == "ip"


# ------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("host=10.0.3.2", "host"),
        ("dns=192.168.1.1", "dns"),
        ("dhcpstart=10.0.3.15", "dhcpstart"),
        ("net=192.168.76.0/24,host=10.0.2.2", "host"),
        ("net=192.168.76.0/24,dhcpstart=10.0.2.15", "dhcpstart"),
        # The network and broadcast addresses are not host addresses.
        ("host=10.0.2.0", "host"),
        ("dns=10.0.2.255", "dns"),
        ("dhcpstart=10.0.2.255", "dhcpstart"),
        ("host=bogus", "host"),
        ("dns=10.0.2", "dns"),
        ("dhcpstart=", "dhcpstart"),
        # Equal addresses.
        ("dns=10.0.2.2", "dns"),
        ("host=10.0.2.3", "dns"),
        ("dhcpstart=10.0.2.2", "dhcpstart"),
        ("dhcpstart=10.0.2.3", "dhcpstart"),
        ("host=10.0.2.15", "dhcpstart"),
        # A net too small for the default addresses names the first that does not fit.
        ("net=10.0.2.0/31", "host"),
        ("net=10.0.2.0/30", "dns"),
        ("net=10.0.2.0/29", "dhcpstart"),
    ],
)
def test_bad_addresses(text: str, option: str) -> None:
    err = refused(text)
    assert err.option == option
    assert f"'{option}'" in str(err)


# ------------------------------------------------------------------------------ values


@pytest.mark.parametrize("word", ["on", "yes", "true", "y", "ON", "Yes"])
def test_true_booleans(word: str) -> None:
    assert parse_user_options(f"restrict={word}").restrict is True
    assert parse_user_options(f"ipv4={word}").ipv4 is True


@pytest.mark.parametrize("word", ["off", "no", "false", "n"])
def test_false_booleans(word: str) -> None:
    assert parse_user_options(f"restrict={word}").restrict is False
    assert parse_user_options(f"ipv6={word}").ipv6 is False


@pytest.mark.parametrize("option", ["restrict", "ipv4", "ipv6"])
@pytest.mark.parametrize("word", ["", "1", "0", "maybe", "onn", "of"])
def test_bad_booleans(option: str, word: str) -> None:
    assert refused(f"{option}={word}").option == option


def test_family_switches() -> None:
    # Both off is an error, as in QEMU; either alone is fine.
    assert refused("ipv4=off,ipv6=off").option == "ipv4"
    c = parse_user_options("ipv4=off")
    assert (c.ipv4, c.ipv6) == (False, True)
    assert parse_user_options("ipv4=off,ipv6=on") == c
    assert parse_user_options("ipv6=off").ipv6 is False
    # An address of a family that is off is an error (QEMU: "... disabled but ... specified").
    assert refused("ipv4=off,net=10.0.3.0/24").option == "net"
    assert refused("ipv4=off,dns=10.0.2.9").option == "dns"
    assert refused("ipv6=off,ipv6-host=fec0::9").option == "ipv6-host"
    assert refused("ipv6=off,ipv6-net=fd00::/64").option == "ipv6-net"


def test_ipv6_addressing() -> None:
    c = parse_user_options("ipv6-net=fd00:1:2:3::/64")
    assert c.ipv6_net == IPv6Network("fd00:1:2:3::/64")
    assert (c.ipv6_host, c.ipv6_dns) == (IPv6Address("fd00:1:2:3::2"), IPv6Address("fd00:1:2:3::3"))
    # The legacy pair, and a length of its own; host bits of the prefix are cleared.
    c = parse_user_options("ipv6-prefix=fd00::1,ipv6-prefixlen=48")
    assert c.ipv6_net == IPv6Network("fd00::/48")
    assert parse_user_options("ipv6-net=fd00::").ipv6_net == IPv6Network("fd00::/64")
    c = parse_user_options("ipv6-net=fd00::/64,ipv6-host=fd00::99,ipv6-dns=fd00::53")
    assert (c.ipv6_host, c.ipv6_dns) == (IPv6Address("fd00::99"), IPv6Address("fd00::53"))


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("ipv6-net=fec0::/127", "ipv6-net"),
        ("ipv6-net=fec0::/x", "ipv6-net"),
        ("ipv6-net=10.0.2.0/24", "ipv6-net"),
        ("ipv6-prefixlen=127", "ipv6-prefixlen"),
        ("ipv6-prefix=nonsense", "ipv6-prefix"),
        ("ipv6-net=fec0::/64,ipv6-prefix=fec0::", "ipv6-net"),
        ("ipv6-host=fec1::2", "ipv6-host"),
        ("ipv6-dns=2001:db8::3", "ipv6-dns"),
        ("ipv6-dns=fec0::2", "ipv6-dns"),
        ("ipv6-host=fec0::", "ipv6-host"),
        ("ipv6-host=10.0.2.2", "ipv6-host"),
        ("mtu=1000,ipv6=on", "ipv6"),
        ("hostfwd=tcp::2222-[fec1::15]:22", "hostfwd"),
        ("guestfwd=tcp:[fec0::2]:80-cmd:cat", "guestfwd"),
        ("guestfwd=tcp:[2001:db8::1]:80-cmd:cat", "guestfwd"),
        ("ipv6=off,hostfwd=tcp::2222-[fec0::15]:22", "hostfwd"),
    ],
)
def test_ipv6_refusals(text: str, option: str) -> None:
    assert refused(text).option == option


def test_small_mtu_turns_ipv6_off_by_default() -> None:
    assert parse_user_options("mtu=1000").ipv6 is False
    assert parse_user_options("mtu=1280").ipv6 is True


def test_ipv6_forward_rules() -> None:
    c = parse_user_options(
        "hostfwd=tcp:[::1]:2222-:22,hostfwd=tcp:[::]:2223-[fec0::15]:22,"
        "guestfwd=tcp:[fec0::100]:80-tcp:[::1]:8080"
    )
    assert len(c.hostfwd) == 2 and len(c.guestfwd) == 1


def test_comma_escaping() -> None:
    c = parse_user_options("hostname=a,,b,,,,c,domainname=x,,y,dnssearch=p,,q")
    assert (c.hostname, c.domainname, c.dnssearch) == ("a,b,,c", "x,y", ("p,q",))
    assert parse_user_options("hostname=end,,").hostname == "end,"
    assert parse_user_options("hostname=a=b").hostname == "a=b"


def test_forward_rules() -> None:
    c = parse_user_options("hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:0-10.0.2.15:53,"
                           "guestfwd=tcp:10.0.2.100:80-cmd:cat")
    assert c.hostfwd == ("tcp::2222-:22", "udp:127.0.0.1:0-10.0.2.15:53")
    assert c.guestfwd == ("tcp:10.0.2.100:80-cmd:cat",)
    assert refused("hostfwd=tcp::2222").option == "hostfwd"
    assert refused("hostfwd=tcp::2222-192.168.1.5:22").option == "hostfwd"
    assert refused("hostfwd=tcp::99999-:22").option == "hostfwd"
    assert refused("guestfwd=tcp:10.0.2.2:80-cmd:cat").option == "guestfwd"
    assert refused("guestfwd=tcp:10.0.2.100:80-bogus:x").option == "guestfwd"
    assert refused("guestfwd=tcp:10.0.2.100:80-tcp:example.com:80").option == "guestfwd"


def test_repeated_dnssearch_keeps_order() -> None:
    c = parse_user_options("dnssearch=example.com,hostname=h,dnssearch=b.org,dnssearch=a.net")
    assert c.dnssearch == ("example.com", "b.org", "a.net")
    assert refused("dnssearch=").option == "dnssearch"
    assert refused("dnssearch=" + "a" * 256).option == "dnssearch"


@pytest.mark.parametrize("bad", ["a..b", "x" * 64 + ".com", ".", ".."])
def test_dnssearch_must_be_valid_dns_names(bad: str) -> None:
    assert refused(f"dnssearch={bad}").option == "dnssearch"


def test_names() -> None:
    assert parse_user_options("hostname=" + "h" * 255).hostname == "h" * 255
    assert refused("hostname=" + "h" * 256).option == "hostname"
    assert refused("hostname=" + "\u00e9" * 128).option == "hostname"  # 256 UTF-8 bytes
    assert parse_user_options("hostname=").hostname == ""
    assert parse_user_options("domainname=example.org").domainname == "example.org"
    assert refused("domainname=").option == "domainname"
    assert refused("domainname=" + "d" * 256).option == "domainname"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (str(MIN_MTU), True), (str(MAX_MTU), True), ("9000", True), ("1500", True),
        (str(MIN_MTU - 1), False), (str(MAX_MTU + 1), False), ("0", False), ("-1", False),
        ("", False), ("big", False), ("1500.0", False), ("0x5dc", False),
    ],
)
def test_mtu_bounds(value: str, ok: bool) -> None:
    assert (MIN_MTU, MAX_MTU) == (68, 65521)
    if ok:
        assert parse_user_options(f"mtu={value}").mtu == int(value)
    else:
        assert refused(f"mtu={value}").option == "mtu"


def test_timeouts_and_hostloopback() -> None:
    c = parse_user_options("udp-timeout=1,dns-timeout=3600,hostloopback=off")
    assert (c.udp_timeout, c.dns_timeout, c.hostloopback) == (1, 3600, "")
    assert parse_user_options("hostloopback=on").hostloopback == "127.0.0.1"
    assert parse_user_options("hostloopback=127.0.0.53").hostloopback == "127.0.0.53"
    assert refused("hostloopback=nowhere").option == "hostloopback"
    assert refused("udp-timeout=0").option == "udp-timeout"
    assert refused("udp-timeout=86401").option == "udp-timeout"
    assert refused("dns-timeout=3601").option == "dns-timeout"
    assert parse_user_options("id=n0").id == "n0"


# ------------------------------------------------------------------------------ refusals


def test_unknown_option() -> None:
    err = refused("bogus=1")
    assert err.option == "bogus"
    assert "'bogus'" in str(err)
    assert refused("net=10.0.2.0/24,Net=10.0.3.0/24").option == "Net"


def test_boot_and_share_options() -> None:
    c = parse_user_options(
        "tftp=/srv/tft,,p,tftp-server-name=boot.example,bootfile=pxelinux.0,smb=/srv/share"
    )
    assert (c.tftp, c.tftp_server_name, c.bootfile, c.smb) == (
        "/srv/tft,p", "boot.example", "pxelinux.0", "/srv/share"
    )
    assert c.smbserver == addr("10.0.2.4")  # x.x.x.4 by default, as QEMU
    assert parse_user_options(c.to_options()) == c
    assert Config.from_dict(c.to_dict()) == c
    c = parse_user_options("net=192.168.5.0/24,smb=/s,smbserver=192.168.5.40")
    assert c.smbserver == addr("192.168.5.40")
    assert parse_user_options("net=192.168.5.0/24,smb=/s").smbserver == addr("192.168.5.4")
    plain = parse_user_options("")
    assert (plain.tftp, plain.bootfile, plain.smb, plain.smbserver) == ("", "", "", None)
    assert Config.from_dict(plain.to_dict()) == plain
    # A journal written before these options existed still loads.
    old = plain.to_dict()
    for key in ("tftp", "tftp_server_name", "bootfile", "smb", "smbserver"):
        del old[key]
    assert Config.from_dict(old) == plain


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("tftp=", "tftp"),
        ("smb=", "smb"),
        ("bootfile=", "bootfile"),
        ("bootfile=" + "b" * 256, "bootfile"),
        ("tftp-server-name=", "tftp-server-name"),
        ("tftp-server-name=" + "n" * 256, "tftp-server-name"),
        ("smb=/s,smbserver=10.0.3.4", "smbserver"),
        ("smb=/s,smbserver=10.0.2.2", "smbserver"),
        ("smb=/s,smbserver=10.0.2.3", "smbserver"),
        ("smb=/s,smbserver=10.0.2.255", "smbserver"),
        ("smb=/s,smbserver=nonsense", "smbserver"),
        ("tftp=/a,tftp=/b", "tftp"),
    ],
)
def test_boot_and_share_refusals(text: str, option: str) -> None:
    assert refused(text).option == option


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("hostname=a,hostname=b", "hostname"),
        ("net=10.0.2.0/24,net=10.0.2.0/24", "net"),
        ("mtu=1500,restrict=on,mtu=1500", "mtu"),
        ("restrict", "restrict"),  # QEMU's bare-flag form is not accepted
    ],
)
def test_duplicates_and_syntax(text: str, option: str) -> None:
    assert refused(text).option == option


def test_stray_comma() -> None:
    assert refused(",hostname=a").option == ""
    assert refused(",").option == ""
    # A trailing comma is harmless, as in QEMU.
    assert parse_user_options("hostname=a,").hostname == "a"


# ------------------------------------------------------------------------------ round trips


@st.composite
def valid_option_strings(draw: st.DrawFn) -> str:
    prefix = draw(st.integers(8, 27))
    network = IPv4Network((draw(st.integers(0, 2**32 - 1)) >> (32 - prefix) << (32 - prefix),
                           prefix))
    size = network.num_addresses
    host, dns, start = draw(
        st.lists(st.integers(1, size - 2), min_size=3, max_size=3, unique=True)
    )
    base = int(network.network_address)
    parts = [
        f"net={network}",
        f"host={IPv4Address(base + host)}",
        f"dns={IPv4Address(base + dns)}",
        f"dhcpstart={IPv4Address(base + start)}",
    ]
    names = st.text(
        st.characters(codec="utf-8", exclude_categories=("Cs", "Zs", "Zl", "Zp", "Cc")),
        min_size=1, max_size=20,
    )
    if draw(st.booleans()):
        parts.append("restrict=" + draw(st.sampled_from(["on", "off", "yes", "n"])))
    if draw(st.booleans()):
        parts.append("hostname=" + draw(names).replace(",", ",,"))
    if draw(st.booleans()):
        parts.append("domainname=" + draw(names).replace(",", ",,"))
    labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
    for s in draw(st.lists(st.lists(labels, min_size=1, max_size=3), max_size=3)):
        parts.append("dnssearch=" + ".".join(s))
    if draw(st.booleans()):
        parts.append(f"hostfwd=tcp:127.0.0.1:{draw(st.integers(0, 65535))}-:22")
    if draw(st.booleans()):
        spot = draw(st.integers(1, size - 2).filter(lambda n: n not in (host, dns)))
        where = IPv4Address(base + spot)
        parts.append(f"guestfwd=tcp:{where}:80-cmd:cat ,, tac")
    if draw(st.booleans()):
        parts.append(f"mtu={draw(st.integers(MIN_MTU, MAX_MTU))}")
    if draw(st.booleans()):
        parts.append("hostloopback=" + draw(st.sampled_from(["on", "off", "127.0.0.9"])))
    if draw(st.booleans()):
        parts.append(f"udp-timeout={draw(st.integers(1, 86400))}")
    if draw(st.booleans()):
        parts.append(f"dns-timeout={draw(st.integers(1, 3600))}")
    if draw(st.booleans()):
        parts.append(f"mem-budget={draw(st.integers(1, 1024))}" + draw(st.sampled_from("MmGg")))
    return ",".join(draw(st.permutations(parts)))


@settings(max_examples=150, deadline=None)
@given(valid_option_strings())
def test_round_trips(text: str) -> None:
    config = parse_user_options(text)
    assert Config.from_dict(config.to_dict()) == config
    assert parse_user_options(config.to_options()) == config
    d = config.to_dict()
    assert all(isinstance(v, str | int | bool | list) for v in d.values())


def test_round_trip_of_defaults_and_example() -> None:
    for text in ("", "net=192.168.76.0/24,dhcpstart=192.168.76.9,hostname=vm1,mtu=9000"):
        c = parse_user_options(text)
        assert parse_user_options(c.to_options()) == c
        assert Config.from_dict(c.to_dict()) == c


def test_to_options_keeps_id() -> None:
    c = parse_user_options("id=n0")
    assert parse_user_options(c.to_options()) == c


def test_to_options_keeps_trailing_space() -> None:
    c = parse_user_options("hostname=vm1 ,mtu=1500")
    assert c.hostname == "vm1 "
    assert parse_user_options(c.to_options()) == c


def test_from_dict_rejects_garbage() -> None:
    good = Config().to_dict()
    for key, value in [("net", "nonsense"), ("mtu", "x"), ("host", None)]:
        bad = dict(good)
        bad[key] = value
        with pytest.raises(ConfigError) as info:
            Config.from_dict(bad)
        assert info.value.option == "config"
    missing = dict(good)
    del missing["dns"]
    with pytest.raises(ConfigError):
        Config.from_dict(missing)


# ------------------------------------------------------------------------------ CLI


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path))
    return subprocess.run(
        [sys.executable, "-m", "slirptrio", "run", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=False,
    )


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_cli_rejects_bad_option(tmp_path: Path) -> None:
    sock = f"unix:{tmp_path / 'x'}"
    r = run_cli(tmp_path, "--listen", sock, "bogus=1")
    assert r.returncode == 2
    assert "bogus" in one_line(r.stderr)
    assert r.stdout == ""
    r = run_cli(tmp_path, "--listen", sock, "tftp=/srv/tftp")
    assert r.returncode == 2
    assert "tftp" in one_line(r.stderr)
    r = run_cli(tmp_path, "--listen", sock, "hostfwd=tcp::22")
    assert r.returncode == 2
    assert "hostfwd" in one_line(r.stderr)
    assert not (tmp_path / "x").exists()


def test_cli_rejects_bad_listen(tmp_path: Path) -> None:
    r = run_cli(tmp_path, "--listen", "nonsense:x")
    assert r.returncode == 2
    assert "--listen" in one_line(r.stderr)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1M", 1 << 20), ("1m", 1 << 20), ("512M", 512 << 20), ("2G", 2 << 30), ("1T", 1 << 40),
     ("1048576", 1 << 20), ("64MB", 64 << 20), ("3g", 3 << 30)],
)
def test_mem_budget_sizes(text: str, size: int) -> None:
    c = parse_user_options(f"mem-budget={text}")
    assert c.mem_budget == size
    assert c.guest_queue_bytes() + c.tcp_mem_budget() == size
    assert c.guest_queue_bytes() == size // 8


@pytest.mark.parametrize("text", ["", "1.5G", "-1M", "1P", "1048575", "2T", "M", "1 M", "0x10M"])
def test_mem_budget_refused(text: str) -> None:
    assert refused(f"mem-budget={text}").option == "mem-budget"


def test_mem_budget_default() -> None:
    assert parse_user_options("").mem_budget == 256 << 20

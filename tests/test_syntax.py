"""The user-syntax package: the option table agrees with Config, one split, one formatter."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slirptrio.config import Config, ConfigError, parse_user_options
from slirptrio.syntax import options
from slirptrio.syntax.address import bracket, hostport, ip_port
from slirptrio.syntax.keyval import escape, split_keyval, split_options


def test_every_config_field_is_one_option_with_the_config_default() -> None:
    fields = [f.name for f in dataclasses.fields(Config)]
    rows = [o.field for o in options.OPTIONS if o.field]
    assert sorted(rows) == sorted(fields)
    plain = Config()
    for o in options.OPTIONS:
        if o.field:
            assert getattr(plain, o.field) == o.default, o.name
    assert parse_user_options("") == plain


def test_help_names_every_option_once() -> None:
    text = options.help_text()
    for o in options.OPTIONS:
        assert text.count(f"  {o.name}=") == 1, o.name


def test_a_non_default_value_of_every_option_survives_text_and_journal() -> None:
    text = (
        "net=192.168.7.0/24,host=192.168.7.9,dns=192.168.7.8,dhcpstart=192.168.7.100,"
        "ipv6-net=fd00:1::/64,ipv6-host=fd00:1::9,ipv6-dns=fd00:1::8,restrict=on,"
        "hostname=h,,1,domainname=d.example,dnssearch=a.example,dnssearch=b.example,mtu=9000,"
        "hostloopback=127.0.0.9,udp-timeout=7,dns-timeout=8,max-flows=9,mem-budget=2M,id=n,"
        "hostfwd=tcp::2222-:22,guestfwd=tcp:192.168.7.50:80-tcp:127.0.0.1:80,tftp=/t,"
        "tftp-server-name=ts,bootfile=b,smb=/s,smbserver=192.168.7.44,isolate=on,"
        "dhcp-clients=40"
    )
    c = parse_user_options(text)
    changed = [o.field for o in options.OPTIONS if o.field and getattr(c, o.field) != o.default]
    assert sorted(changed) == sorted(
        o.field for o in options.OPTIONS if o.field and o.field not in ("ipv4", "ipv6")
    )
    assert parse_user_options(c.to_options()) == c
    assert Config.from_dict(c.to_dict()) == c


@given(st.text(alphabet="ab=,", max_size=12))
def test_one_comma_split_for_options_and_qemu_arguments(text: str) -> None:
    items = split_keyval(text)
    assert split_keyval(",".join(escape(i) for i in items)) == items
    try:
        pairs = split_options(text)
    except ConfigError:
        return
    if items[-1] == "":
        items.pop()
    assert pairs == [tuple(i.partition("=")[::2]) for i in items]


@pytest.mark.parametrize(
    ("addr", "port", "text"),
    [("10.0.2.2", 80, "10.0.2.2:80"), ("fec0::2", 53, "[fec0::2]:53"), ("host", 1, "host:1")],
)
def test_hostport(addr: str, port: int, text: str) -> None:
    assert hostport(addr, port) == text
    assert bracket(addr) + f":{port}" == text


def test_ip_port_of_packed_addresses() -> None:
    assert ip_port(bytes([10, 0, 2, 15]), 40000) == "10.0.2.15:40000"
    assert ip_port(bytes.fromhex("fec0" + "00" * 13 + "15"), 22) == "[fec0::15]:22"

"""The DHCP server, driven by client messages built with dpkt and replies parsed with dpkt."""

from __future__ import annotations

from ipaddress import IPv4Address

import dpkt
import pytest

from slirptrio.config import Config, ConfigError, parse_user_options
from slirptrio.core.dhcp import DhcpReply, DhcpServer
from slirptrio.wire import MalformedFrame

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
SEC = 1_000_000_000
LEASE = 86400 * SEC
T0 = 1_000 * SEC
BCAST_IP = b"\xff\xff\xff\xff"
BCAST_MAC = b"\xff" * 6
ZERO = bytes(4)


def ip(text: str) -> bytes:
    return IPv4Address(text).packed


def ip_int(text: str) -> int:
    return int(IPv4Address(text))


def mac(n: int) -> bytes:
    return bytes((0x52, 0x54, 0, 0x12, 0x34, n))


HOST = ip("10.0.2.2")
DNS = ip("10.0.2.3")
POOL = [IPv4Address("10.0.2.15") + i for i in range(16)]


def client(
    kind: int | None,
    chaddr: bytes,
    *,
    opts: list[tuple[int, bytes]] | None = None,
    ciaddr: str = "0.0.0.0",
    flags: int = 0,
    xid: int = 0x1234ABCD,
    op: int = 1,
) -> bytes:
    """A client message built by dpkt, independent of our codec."""
    options = [] if kind is None else [(53, bytes((kind,)))]
    options += opts or []
    options.append((55, bytes((1, 3, 6, 12, 15, 26, 28, 119))))
    msg = dpkt.dhcp.DHCP(
        op=op, xid=xid, flags=flags, ciaddr=ip_int(ciaddr), chaddr=chaddr, opts=options
    )
    return bytes(msg)


def parse(reply: DhcpReply) -> tuple[dpkt.dhcp.DHCP, dict[int, bytes]]:
    assert len(reply.payload) >= 300
    d = dpkt.dhcp.DHCP(reply.payload)
    assert d.op == 2 and d.magic == dpkt.dhcp.DHCP_MAGIC
    opts = dict(d.opts)
    assert len(opts) == len(d.opts), "an option is repeated"
    assert opts[53] == bytes((reply.msg_type,))
    return d, opts


def yiaddr(reply: DhcpReply) -> bytes:
    return int(dpkt.dhcp.DHCP(reply.payload).yiaddr).to_bytes(4, "big")


def discover(
    srv: DhcpServer,
    m: bytes,
    now: int = T0,
    *,
    opts: list[tuple[int, bytes]] | None = None,
    flags: int = 0,
    xid: int = 0x1234ABCD,
) -> DhcpReply | None:
    return srv.handle(client(DISCOVER, m, opts=opts, flags=flags, xid=xid), m, now)


def acquire(srv: DhcpServer, m: bytes, now: int = T0) -> bytes:
    """DISCOVER then REQUEST (selecting); the bound address."""
    offer = discover(srv, m, now)
    assert offer is not None and offer.msg_type == OFFER
    addr = yiaddr(offer)
    ack = srv.handle(client(REQUEST, m, opts=[(50, addr), (54, HOST)]), m, now)
    assert ack is not None and ack.msg_type == ACK
    assert yiaddr(ack) == addr
    return addr


def server(options: str = "") -> DhcpServer:
    return DhcpServer(parse_user_options(options))


# ------------------------------------------------------------------------------ offer / ack


def test_discover_gets_offer_with_all_options() -> None:
    srv = server()
    reply = discover(srv, mac(1), xid=0xDEADBEEF)
    assert reply is not None and reply.msg_type == OFFER
    d, opts = parse(reply)
    assert d.xid == 0xDEADBEEF
    assert (d.yiaddr, d.siaddr, d.ciaddr, d.giaddr) == (ip_int("10.0.2.15"), ip_int("10.0.2.2"),
                                                        0, 0)
    assert d.chaddr == mac(1)
    assert [code for code, _ in d.opts] == [53, 54, 51, 1, 3, 6, 26, 28]
    assert opts[54] == HOST
    assert int.from_bytes(opts[51], "big") == 86400
    assert opts[1] == ip("255.255.255.0")
    assert opts[3] == HOST
    assert opts[6] == DNS
    assert int.from_bytes(opts[26], "big") == 1500
    assert opts[28] == ip("10.0.2.255")
    # No broadcast flag: unicast to the offered address at the client's MAC (RFC 2131 4.1).
    assert (reply.dst_ip, reply.dst_mac) == (ip("10.0.2.15"), mac(1))
    # Offering binds nothing.
    assert srv.leases(T0) == []


def test_discover_with_broadcast_flag() -> None:
    reply = discover(server(), mac(1), flags=0x8000)
    assert reply is not None
    assert (reply.dst_ip, reply.dst_mac) == (BCAST_IP, BCAST_MAC)
    assert dpkt.dhcp.DHCP(reply.payload).flags == 0x8000


def test_request_selecting_gets_ack_and_binds() -> None:
    srv = server()
    offer = discover(srv, mac(1))
    assert offer is not None
    ack = srv.handle(client(REQUEST, mac(1), opts=[(50, ip("10.0.2.15")), (54, HOST)]), mac(1), T0)
    assert ack is not None and ack.msg_type == ACK
    d, _ = parse(ack)
    assert d.yiaddr == ip_int("10.0.2.15")
    assert [code for code, _ in d.opts] == [53, 54, 51, 1, 3, 6, 26, 28]
    assert (ack.dst_ip, ack.dst_mac) == (ip("10.0.2.15"), mac(1))
    [lease] = srv.leases(T0)
    assert (lease.ip, lease.mac, lease.expires_ns) == (ip("10.0.2.15"), mac(1), T0 + LEASE)


def test_request_for_another_server_is_ignored() -> None:
    srv = server()
    discover(srv, mac(1))
    msg = client(REQUEST, mac(1), opts=[(50, ip("10.0.2.15")), (54, ip("10.0.2.99"))])
    assert srv.handle(msg, mac(1), T0) is None
    assert srv.leases(T0) == []
    assert srv.counters.get("dhcp_other_server") == 1


def assert_nak(reply: DhcpReply | None) -> None:
    assert reply is not None and reply.msg_type == NAK
    d, opts = parse(reply)
    assert (d.yiaddr, d.siaddr, d.ciaddr) == (0, 0, 0)
    assert opts[54] == HOST
    assert 51 not in opts and 1 not in opts
    assert (reply.dst_ip, reply.dst_mac) == (BCAST_IP, BCAST_MAC)


@pytest.mark.parametrize("wanted", ["10.0.2.14", "10.0.2.31", "10.0.2.2", "192.168.1.15"])
def test_request_outside_pool_is_nak(wanted: str) -> None:
    srv = server()
    reply = srv.handle(client(REQUEST, mac(1), opts=[(50, ip(wanted))]), mac(1), T0)
    assert_nak(reply)
    assert srv.leases(T0) == []


def test_request_for_address_held_by_another_mac_is_nak() -> None:
    srv = server()
    addr = acquire(srv, mac(1))
    assert_nak(srv.handle(client(REQUEST, mac(2), opts=[(50, addr), (54, HOST)]), mac(2), T0))
    # INIT-REBOOT (no server id) and renewing (ciaddr) forms alike.
    assert_nak(srv.handle(client(REQUEST, mac(2), opts=[(50, addr)]), mac(2), T0))
    assert_nak(srv.handle(client(REQUEST, mac(2), ciaddr="10.0.2.15"), mac(2), T0 + SEC))
    assert [lease.mac for lease in srv.leases(T0)] == [mac(1)]


def test_request_with_nothing_to_go_on_is_nak() -> None:
    assert_nak(server().handle(client(REQUEST, mac(1)), mac(1), T0))


def test_request_init_reboot_for_own_address() -> None:
    srv = server()
    addr = acquire(srv, mac(1))
    ack = srv.handle(client(REQUEST, mac(1), opts=[(50, addr)]), mac(1), T0 + SEC)
    assert ack is not None and ack.msg_type == ACK and yiaddr(ack) == addr


# ------------------------------------------------------------------------------ the pool


def test_sixteen_macs_sixteen_addresses_then_exhausted() -> None:
    srv = server()
    got = [acquire(srv, mac(i)) for i in range(16)]
    assert got == [a.packed for a in POOL]
    assert len(set(got)) == 16
    assert [lease.mac for lease in srv.leases(T0)] == [mac(i) for i in range(16)]
    assert discover(srv, mac(16)) is None
    assert srv.counters.get("dhcp_pool_exhausted") == 1
    for addr in got[:3]:
        assert_nak(srv.handle(client(REQUEST, mac(16), opts=[(50, addr)]), mac(16), T0))
    # Everyone already in keeps their address.
    again = discover(srv, mac(7))
    assert again is not None and yiaddr(again) == got[7]


def test_same_mac_same_address() -> None:
    srv = server()
    first = discover(srv, mac(1))
    assert first is not None
    second = discover(srv, mac(1), xid=99)
    assert second is not None and yiaddr(second) == yiaddr(first)
    addr = acquire(srv, mac(1))
    acquire(srv, mac(2))
    acquire(srv, mac(3))
    for t in (T0, T0 + SEC, T0 + 2 * LEASE):  # even long after the lease ran out
        offer = discover(srv, mac(1), t)
        assert offer is not None and yiaddr(offer) == addr


def test_discover_honours_requested_address_when_free() -> None:
    srv = server()
    offer = discover(srv, mac(1), opts=[(50, ip("10.0.2.20"))])
    assert offer is not None and yiaddr(offer) == ip("10.0.2.20")
    ack = srv.handle(client(REQUEST, mac(1), opts=[(50, ip("10.0.2.20"))]), mac(1), T0)
    assert ack is not None and ack.msg_type == ACK
    # Held by mac 1: mac 2 asking for it gets the first free one instead.
    offer = discover(srv, mac(2), opts=[(50, ip("10.0.2.20"))])
    assert offer is not None and yiaddr(offer) == ip("10.0.2.15")
    # Outside the pool: ignored, first free one.
    offer = discover(srv, mac(3), opts=[(50, ip("10.0.2.100"))])
    assert offer is not None and yiaddr(offer) == ip("10.0.2.15")


def test_release_frees_the_address() -> None:
    srv = server()
    a = acquire(srv, mac(1))
    b = acquire(srv, mac(2))
    # A RELEASE from another MAC for mac 1's address changes nothing.
    assert srv.handle(client(RELEASE, mac(2), ciaddr="10.0.2.15"), mac(2), T0) is None
    assert [lease.ip for lease in srv.leases(T0)] == [a, b]
    assert srv.handle(client(RELEASE, mac(1), ciaddr="10.0.2.15"), mac(1), T0) is None
    assert [lease.ip for lease in srv.leases(T0)] == [b]
    assert srv.counters.get("dhcp_released") == 1
    # A new client gets a never-used address first; the releasing one gets its own back.
    assert acquire(srv, mac(3)) == ip("10.0.2.17")
    offer = discover(srv, mac(1))
    assert offer is not None and yiaddr(offer) == a


def test_release_then_same_mac_gets_it_back_when_still_free() -> None:
    srv = server()
    a = acquire(srv, mac(1))
    srv.handle(client(RELEASE, mac(1), ciaddr="10.0.2.15"), mac(1), T0)
    assert srv.leases(T0) == []
    assert acquire(srv, mac(1), T0 + SEC) == a


def test_renew_is_unicast_ack_and_extends_the_lease() -> None:
    srv = server()
    addr = acquire(srv, mac(1))
    later = T0 + LEASE // 2
    ack = srv.handle(client(REQUEST, mac(1), ciaddr="10.0.2.15"), mac(1), later)
    assert ack is not None and ack.msg_type == ACK
    d, opts = parse(ack)
    assert (d.ciaddr, d.yiaddr) == (ip_int("10.0.2.15"), ip_int("10.0.2.15"))
    assert 51 in opts
    assert (ack.dst_ip, ack.dst_mac) == (addr, mac(1))
    # Still held past the first lease's end: the renewal restarted the clock.
    assert [lease.ip for lease in srv.leases(T0 + LEASE + SEC)] == [addr]
    assert srv.leases(later + LEASE) == []


def test_inform_gets_options_without_address_or_lease() -> None:
    srv = server()
    reply = srv.handle(client(INFORM, mac(1), ciaddr="10.0.2.77"), mac(1), T0)
    assert reply is not None and reply.msg_type == ACK
    d, opts = parse(reply)
    assert d.yiaddr == 0
    assert d.ciaddr == ip_int("10.0.2.77")
    assert 51 not in opts
    assert [code for code, _ in d.opts] == [53, 54, 1, 3, 6, 26, 28]
    assert (opts[1], opts[3], opts[6]) == (ip("255.255.255.0"), HOST, DNS)
    assert (reply.dst_ip, reply.dst_mac) == (ip("10.0.2.77"), mac(1))
    assert srv.leases(T0) == []


def test_decline_blocks_the_address_for_a_lease_time() -> None:
    srv = server()
    a = acquire(srv, mac(1))
    assert srv.handle(client(DECLINE, mac(1), opts=[(50, a), (54, HOST)]), mac(1), T0) is None
    assert srv.leases(T0) == []  # a declined address is held by no client
    for m in (mac(1), mac(2)):
        offer = discover(srv, m, T0 + SEC)
        assert offer is not None and yiaddr(offer) == ip("10.0.2.16")
    assert_nak(srv.handle(client(REQUEST, mac(2), opts=[(50, a)]), mac(2), T0 + SEC))
    ack = srv.handle(client(REQUEST, mac(2), opts=[(50, a)]), mac(2), T0 + LEASE)
    assert ack is not None and ack.msg_type == ACK and yiaddr(ack) == a


def test_expiry_frees_the_address_for_another_mac() -> None:
    srv = server()
    got = [acquire(srv, mac(i)) for i in range(16)]
    assert len(srv.leases(T0 + LEASE - 1)) == 16
    assert discover(srv, mac(99), T0 + LEASE - 1) is None
    assert srv.leases(T0 + LEASE) == []
    assert acquire(srv, mac(99), T0 + LEASE) == got[0]
    [lease] = srv.leases(T0 + LEASE)
    assert (lease.ip, lease.mac, lease.expires_ns) == (got[0], mac(99), T0 + 2 * LEASE)
    # The old holder lost it: it is offered the next expired address.
    offer = discover(srv, mac(0), T0 + LEASE)
    assert offer is not None and yiaddr(offer) == got[1]


# ------------------------------------------------------------------------------ config


def test_restrict_omits_router_and_dns() -> None:
    reply = discover(server("restrict=on"), mac(1))
    assert reply is not None
    d, _ = parse(reply)
    assert [code for code, _ in d.opts] == [53, 54, 51, 1, 26, 28]


def decode_names(value: bytes) -> list[str]:
    names, off = [], 0
    while off < len(value):
        name, off = dpkt.dns.unpack_name(value, off)
        names.append(name)
    return names


def test_names_mtu_and_search_list() -> None:
    srv = server(
        "net=192.168.76.0/24,dhcpstart=192.168.76.9,hostname=vm1,domainname=example.org,"
        "dnssearch=example.org,dnssearch=corp.example.com,mtu=9000"
    )
    reply = discover(srv, mac(1))
    assert reply is not None
    d, opts = parse(reply)
    assert d.yiaddr == ip_int("192.168.76.9")
    assert d.siaddr == ip_int("192.168.76.2")
    assert [code for code, _ in d.opts] == [53, 54, 51, 1, 3, 6, 12, 15, 26, 28, 119]
    assert opts[12] == b"vm1"
    assert opts[15] == b"example.org"
    assert int.from_bytes(opts[26], "big") == 9000
    assert opts[28] == ip("192.168.76.255")
    assert (opts[3], opts[6]) == (ip("192.168.76.2"), ip("192.168.76.3"))
    assert decode_names(opts[119]) == ["example.org", "corp.example.com"]


def test_boot_fields() -> None:
    srv = server("tftp=/srv/tftp,bootfile=pxelinux.0,tftp-server-name=boot.example")
    for reply in (discover(srv, mac(1)), srv.handle(
        client(REQUEST, mac(1), opts=[(50, ip("10.0.2.15")), (54, HOST)]), mac(1), T0
    )):
        assert reply is not None
        d, opts = parse(reply)
        assert d.file.rstrip(b"\x00") == b"pxelinux.0"
        assert d.siaddr == ip_int("10.0.2.2")  # the next server: our TFTP
        assert opts[66] == b"boot.example" and opts[67] == b"pxelinux.0"
        assert 60 not in opts
        assert [code for code, _ in d.opts] == [53, 54, 51, 1, 3, 6, 66, 67, 26, 28]
    # Without boot options: an empty file field, no 66/67.
    plain = discover(server(), mac(2))
    assert plain is not None
    d, opts = parse(plain)
    assert d.file.rstrip(b"\x00") == b"" and 66 not in opts and 67 not in opts


def test_http_bootfile_sets_httpclient_and_ip_server_name_sets_siaddr() -> None:
    url = "http://10.0.2.2:8080/boot.efi"
    srv = server(f"bootfile={url},tftp-server-name=10.0.2.9")
    reply = discover(srv, mac(1))
    assert reply is not None
    d, opts = parse(reply)
    assert opts[60] == b"HTTPClient" and opts[67] == url.encode()
    assert d.file.rstrip(b"\x00") == url.encode()
    assert d.siaddr == ip_int("10.0.2.9")


def test_bootfile_too_long_for_the_file_field_goes_in_option_67_only() -> None:
    name = "d/" * 70 + "f"
    reply = discover(server(f"bootfile={name}"), mac(1))
    assert reply is not None
    d, opts = parse(reply)
    assert d.file.rstrip(b"\x00") == b"" and opts[67] == name.encode()


def test_wide_net_mask_and_broadcast() -> None:
    reply = discover(server("net=10.0.0.0/8"), mac(1))
    assert reply is not None
    _, opts = parse(reply)
    assert (opts[1], opts[28]) == (ip("255.0.0.0"), ip("10.255.255.255"))


def test_long_search_list_is_split_across_options() -> None:
    domains = [f"d{i:02}.{'x' * 50}.example" for i in range(8)]  # well over 255 bytes
    srv = DhcpServer(Config(dnssearch=tuple(domains)))
    reply = discover(srv, mac(1))
    assert reply is not None
    d = dpkt.dhcp.DHCP(reply.payload)
    parts = [v for code, v in d.opts if code == 119]
    assert len(parts) > 1 and all(len(p) <= 255 for p in parts)
    assert decode_names(b"".join(parts)) == domains


@pytest.mark.parametrize(
    ("bad", "why"),
    [("a..b", "bad label ''"), ("x" * 64 + ".com", "bad label 'xxxx"),
     ("a" * 300, "longer than 255 bytes")],
)
def test_dnssearch_names_dhcp_cannot_carry_are_refused_up_front(bad: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_user_options(f"dnssearch={bad}")
    assert "'dnssearch'" in str(info.value) and why in str(info.value)


def test_dnssearch_at_the_limits_reaches_the_guest() -> None:
    # The longest label DNS allows (63 bytes) and a name of many labels: accepted, and the
    # offer carries them in option 119 exactly.
    names = ["x" * 63 + ".com", ".".join(["l"] * 100)]
    config = parse_user_options(",".join(f"dnssearch={n}" for n in names))
    reply = DhcpServer(config).handle(client(DISCOVER, mac(1)), mac(1), T0)
    assert reply is not None
    d = dpkt.dhcp.DHCP(reply.payload)
    assert decode_names(b"".join(v for code, v in d.opts if code == 119)) == names


# ------------------------------------------------------------------------------ odd input


def test_replies_echo_relay_and_xid_and_are_deterministic() -> None:
    msgs = [
        client(DISCOVER, mac(1), xid=1),
        client(REQUEST, mac(1), opts=[(50, ip("10.0.2.15"))], xid=1),
        client(DISCOVER, mac(2), xid=2, flags=0x8000),
        client(INFORM, mac(3), ciaddr="10.0.2.200", xid=3),
        client(REQUEST, mac(4), opts=[(50, ip("10.0.2.15"))], xid=4),
    ]
    runs = []
    for _ in range(2):
        srv = server()
        runs.append([srv.handle(m, b"\x00" * 6, T0 + i * SEC) for i, m in enumerate(msgs)])
    assert runs[0] == runs[1]
    assert [dpkt.dhcp.DHCP(r.payload).xid for r in runs[0] if r] == [1, 1, 2, 3, 4]


def test_not_a_request_or_unknown_type_is_ignored() -> None:
    srv = server()
    assert srv.handle(client(DISCOVER, mac(1), op=2), mac(1), T0) is None
    assert srv.counters.get("dhcp_not_request") == 1
    assert srv.handle(client(OFFER, mac(1)), mac(1), T0) is None
    assert srv.handle(client(9, mac(1)), mac(1), T0) is None
    assert srv.leases(T0) == []


def test_malformed_messages_raise_malformed_frame() -> None:
    srv = server()
    good = client(DISCOVER, mac(1))
    cases = {
        "dhcp_short": good[:200],
        "dhcp_bad_cookie": good[:236] + b"\x00\x00\x00\x00" + good[240:],
        "dhcp_bad_option": good[:240] + b"\x35\x01\x01\x0c\x09short",
        "dhcp_not_ethernet": good[:1] + b"\x06" + good[2:],
    }
    for reason, data in cases.items():
        with pytest.raises(MalformedFrame) as info:
            srv.handle(data, mac(1), T0)
        assert info.value.reason == reason
    assert srv.leases(T0) == []

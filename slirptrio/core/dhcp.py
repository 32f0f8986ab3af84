"""The DHCP server: a pool of 16 addresses from ``dhcpstart``, one per MAC, as libslirp.

Theory of operation
-------------------
Leases are keyed by the client's hardware address (``chaddr``), as libslirp does, so a guest
gets the same address back, including after a disconnect, for as long as its lease holds (a
RELEASE gives the address up; it is reused only once the addresses never leased run out).
The pool is ``dhcp-clients`` addresses (``NUM_DHCP_CLIENTS``, 16, unless that extension
raises it for several guests); a free address is the first one never leased, or
whose lease expired or was released. An exhausted pool answers nothing (the client retries).

* DISCOVER → OFFER of the client's address (its requested address when that is free);
* REQUEST  → ACK when the requested address (option 50, else ``ciaddr``) is the client's own or
  free, NAK otherwise; a REQUEST naming another server's id is not for us and is ignored;
* RELEASE frees the lease; DECLINE blocks the address for a lease time (someone else uses it);
* INFORM   → ACK with the options and no address or lease time.

Bounded bookkeeping: leases exist only for pool addresses, and the memory of each MAC's last
address keeps the ``MAX_REMEMBERED_MACS`` most recently bound MACs. After an ACK,
``last_bound`` tells the Stack which address was bound to which MAC and who held it before,
so the flows of a guest whose address went to another MAC can be reset.

Options (in this order): 53 type, 54 server id, 51 lease time, 1 mask, 3 router, 6 DNS,
12 hostname, 15 domain, 66 TFTP server name, 67 boot file, 60 "HTTPClient" (an ``http://``
boot file: UEFI HTTP boot, as libslirp), 26 MTU, 28 broadcast, 119 search list. Under
``restrict=on`` router and DNS are left out, as QEMU does.

Boot: ``siaddr`` (the "next server" PXE firmware fetches the boot file from) is the host
address, where TFTP is served — or ``tftp-server-name`` when that is an IPv4 literal. The boot
file also goes in the BOOTP ``file`` field when it fits (127 bytes).

Replies go to ``ciaddr`` when the client has one, to the broadcast address when it asks (flag)
or is refused, and otherwise unicast to the offered address at the client's MAC (RFC 2131
§4.1).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, ClassVar

from slirptrio.config import DHCP_LEASE_TIME, NUM_DHCP_CLIENTS, Config
from slirptrio.core import snapshot as snap
from slirptrio.wire import dhcp as wd

log = logging.getLogger("slirptrio.core.dhcp")

_BROADCAST_IP = b"\xff\xff\xff\xff"
_BROADCAST_MAC = b"\xff" * 6
_ZERO = b"\x00\x00\x00\x00"
_NS = 1_000_000_000
_DECLINED = b""
MAX_REMEMBERED_MACS = 4 * NUM_DHCP_CLIENTS
"""MACs whose last address is remembered (to give it back); the least recently bound go first."""


@dataclass(frozen=True, slots=True)
class DhcpReply:
    """A reply to send from the server port: the DHCP payload and where it goes."""

    payload: bytes
    dst_ip: bytes
    dst_mac: bytes
    msg_type: int


@dataclass(slots=True)
class Lease:
    """An address held by a MAC until ``expires_ns``."""

    ip: bytes
    mac: bytes
    expires_ns: int


class DhcpServer:
    """Answers DHCP client messages for one virtual network."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._server_id = config.host.packed
        self._next_server = config.host.packed
        with contextlib.suppress(ValueError):  # a name: only option 66 carries it
            self._next_server = IPv4Address(config.tftp_server_name).packed
        boot = config.bootfile.encode()
        self._file = boot if len(boot) <= 127 else b""
        # Never hand out the virtual addresses or anything outside the network (libslirp does).
        reserved = {config.host, config.dns, config.net.network_address,
                    config.net.broadcast_address}
        self._pool = [
            a.packed for a in config.dhcp_pool() if a in config.net and a not in reserved
        ]
        self._leases: dict[bytes, Lease] = {}  # by address
        self._ever: set[bytes] = set()  # addresses ever bound (membership tests only)
        self._last: dict[bytes, bytes] = {}  # each MAC's last address, least recent first
        self.counters: dict[str, int] = {}
        # (address, MAC, previous holder's MAC or None) of the latest bind; the Stack takes it.
        self.last_bound: tuple[bytes, bytes, bytes | None] | None = None

    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset(
        {"_config", "_server_id", "_pool", "_next_server", "_file"}
    )
    # The report of the latest bind: set and taken by the Stack within one message.
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"last_bound"})

    def snapshot_state(self) -> dict[str, Any]:
        """Leases (declined addresses included), addresses ever bound, each MAC's last one."""
        return {
            "_leases": [snap.dump_slots(lease) for lease in self._leases.values()],
            "_ever": sorted(self._ever),
            "_last": [[mac, ip] for mac, ip in self._last.items()],
            "counters": dict(self.counters),
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        leases = [snap.load_slots(Lease, raw) for raw in state["_leases"]]
        self._leases = {lease.ip: lease for lease in leases}
        self._ever = set(state["_ever"])
        self._last = {mac: ip for mac, ip in state["_last"]}
        self.counters = dict(state["counters"])
        self.last_bound = None

    def leases(self, now_ns: int) -> list[Lease]:
        """Leases held by a client and not expired, in pool order."""
        return [
            lease for ip in self._pool
            if (lease := self._leases.get(ip)) is not None
            and lease.mac != _DECLINED and lease.expires_ns > now_ns
        ]

    def holds(self, ip: bytes) -> bool:
        """Whether ``ip`` has a lease entry, held, expired or declined (declined: another
        station was found using it): an address of some guest's, never the host's."""
        return ip in self._leases

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    # ---------------------------------------------------------------------------- leases

    def _held_by(self, mac: bytes, now_ns: int) -> bytes | None:
        for ip in self._pool:
            lease = self._leases.get(ip)
            if lease is not None and lease.mac == mac:
                return ip
        return None

    def _usable_by(self, ip: bytes, mac: bytes, now_ns: int) -> bool:
        if ip not in self._pool:
            return False
        lease = self._leases.get(ip)
        return lease is None or lease.mac == mac or lease.expires_ns <= now_ns

    def _free(self, mac: bytes, now_ns: int) -> bytes | None:
        last = self._last.get(mac)
        if last is not None and self._usable_by(last, mac, now_ns):
            return last
        fresh = [ip for ip in self._pool if ip not in self._ever]
        for ip in fresh + self._pool:
            if self._usable_by(ip, mac, now_ns):
                return ip
        return None

    def _bind(self, ip: bytes, mac: bytes, now_ns: int) -> None:
        for other, lease in list(self._leases.items()):
            if lease.mac == mac and other != ip:
                del self._leases[other]
        old = self._leases.get(ip)
        previous = old.mac if old is not None and old.mac != _DECLINED else None
        self.last_bound = (ip, mac, previous)
        self._leases[ip] = Lease(ip, mac, now_ns + DHCP_LEASE_TIME * _NS)
        self._ever.add(ip)
        self._last.pop(mac, None)
        self._last[mac] = ip
        if len(self._last) > max(MAX_REMEMBERED_MACS, 4 * len(self._pool)):
            del self._last[next(iter(self._last))]

    # --------------------------------------------------------------------------- messages

    def handle(self, data: bytes | memoryview, src_mac: bytes, now_ns: int) -> DhcpReply | None:
        """Answer one client message, or return None (nothing to send).

        Raises MalformedFrame for a message that cannot be parsed.
        """
        msg = wd.parse_dhcp(data)
        if msg.op != wd.BOOTREQUEST:
            self._count("dhcp_not_request")
            return None
        kind = msg.msg_type
        mac = msg.chaddr
        server = msg.address_option(wd.OPT_SERVER_ID)
        if kind == wd.DISCOVER:
            ip = self._held_by(mac, now_ns)
            wanted = msg.address_option(wd.OPT_REQUESTED_IP)
            if ip is None and wanted is not None and self._usable_by(wanted, mac, now_ns):
                ip = wanted
            if ip is None:
                ip = self._free(mac, now_ns)
            if ip is None:
                self._count("dhcp_pool_exhausted")
                log.warning("DHCP pool exhausted; no offer for %s", mac.hex(":"))
                return None
            return self._reply(msg, wd.OFFER, ip)
        if kind == wd.REQUEST:
            if server is not None and server != self._server_id:
                self._count("dhcp_other_server")
                return None
            wanted = msg.address_option(wd.OPT_REQUESTED_IP)
            if wanted is None and msg.ciaddr != _ZERO:
                wanted = msg.ciaddr
            if wanted is None:
                wanted = self._held_by(mac, now_ns)
            if wanted is None or not self._usable_by(wanted, mac, now_ns):
                self._count("dhcp_nak")
                return self._nak(msg)
            self._bind(wanted, mac, now_ns)
            return self._reply(msg, wd.ACK, wanted)
        if kind == wd.RELEASE:
            lease = self._leases.get(msg.ciaddr)
            if lease is not None and lease.mac == mac:
                del self._leases[msg.ciaddr]
                self._count("dhcp_released")
            return None
        if kind == wd.DECLINE:
            wanted = msg.address_option(wd.OPT_REQUESTED_IP)
            # Only the client the address was offered to may decline it.
            if wanted is not None and self._usable_by(wanted, mac, now_ns):
                self._leases[wanted] = Lease(wanted, _DECLINED, now_ns + DHCP_LEASE_TIME * _NS)
                self._count("dhcp_declined")
            return None
        if kind == wd.INFORM:
            return self._reply(msg, wd.ACK, None)
        self._count("dhcp_unknown_type")
        return None

    def _options(self, kind: int, with_lease: bool) -> list[tuple[int, bytes]]:
        c = self._config
        opts: list[tuple[int, bytes]] = [
            (wd.OPT_MSG_TYPE, bytes((kind,))),
            (wd.OPT_SERVER_ID, self._server_id),
        ]
        if with_lease:
            opts.append((wd.OPT_LEASE_TIME, DHCP_LEASE_TIME.to_bytes(4, "big")))
        opts.append((wd.OPT_SUBNET_MASK, c.net.netmask.packed))
        if not c.restrict:
            opts.append((wd.OPT_ROUTER, c.host.packed))
            opts.append((wd.OPT_DNS, c.dns.packed))
        if c.hostname:
            opts.append((wd.OPT_HOSTNAME, c.hostname.encode()))
        if c.domainname:
            opts.append((wd.OPT_DOMAIN, c.domainname.encode()))
        if c.tftp_server_name:
            opts.append((wd.OPT_TFTP_SERVER, c.tftp_server_name.encode()))
        if c.bootfile:
            opts.append((wd.OPT_BOOTFILE, c.bootfile.encode()))
            if c.bootfile.startswith("http://"):
                opts.append((wd.OPT_VENDOR_CLASS, b"HTTPClient"))
        opts.append((wd.OPT_MTU, c.mtu.to_bytes(2, "big")))
        opts.append((wd.OPT_BROADCAST, c.net.broadcast_address.packed))
        if c.dnssearch:
            opts.append((wd.OPT_SEARCH, wd.encode_search_list(c.dnssearch)))
        return opts

    def _reply(self, msg: wd.DhcpMessage, kind: int, ip: bytes | None) -> DhcpReply:
        self._count("dhcp_offer" if kind == wd.OFFER else "dhcp_ack")
        payload = wd.build_reply(
            msg,
            yiaddr=ip if ip is not None else _ZERO,
            siaddr=self._next_server,
            ciaddr=msg.ciaddr,
            options=self._options(kind, ip is not None),
            file=self._file,
        )
        if msg.ciaddr != _ZERO:
            return DhcpReply(payload, msg.ciaddr, msg.chaddr, kind)
        if msg.flags & wd.FLAG_BROADCAST or ip is None:
            return DhcpReply(payload, _BROADCAST_IP, _BROADCAST_MAC, kind)
        return DhcpReply(payload, ip, msg.chaddr, kind)

    def _nak(self, msg: wd.DhcpMessage) -> DhcpReply:
        payload = wd.build_reply(
            msg,
            yiaddr=_ZERO,
            siaddr=_ZERO,
            options=[
                (wd.OPT_MSG_TYPE, bytes((wd.NAK,))),
                (wd.OPT_SERVER_ID, self._server_id),
                (wd.OPT_MESSAGE, b"requested address not available"),
            ],
        )
        return DhcpReply(payload, _BROADCAST_IP, _BROADCAST_MAC, wd.NAK)


__all__ = ["NUM_DHCP_CLIENTS", "DhcpReply", "DhcpServer", "Lease"]

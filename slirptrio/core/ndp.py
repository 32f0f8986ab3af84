"""Neighbor Discovery for the virtual IPv6 link: neighbor answers, router advertisements, and
what the stack knows of the guest's IPv6 addresses.

Theory of operation
-------------------
The stack is the guest's only neighbor and its router. Its addresses on the link are the
virtual ones (``ipv6-host``, ``ipv6-dns``, guest-forward addresses) and its link-local
address, fe80:: plus the interface identifier of ``ipv6-host`` (fe80::2 by default, as
libslirp). A Neighbor Solicitation for one of them is answered with a Neighbor Advertisement
carrying that address's MAC (52:56 + its last four bytes, as libslirp derives it); one for any
other target is ignored, so the guest's duplicate address detection (a solicitation from ::)
always succeeds for its own addresses and the stack never claims an address it does not own.

The guest's addresses are learned from the source of every IPv6 packet it sends (link-local,
SLAAC, temporary: any unicast source), from the source link-layer option of its
solicitations and from its advertisements; never from a DAD probe. At most
``MAX_NEIGHBORS`` are kept, the least recently seen giving way; an address not in the table
is reached at the guest's last known MAC, as IPv4 does.

Router advertisements: the prefix (on-link; autonomous when it is a /64, so SLAAC works), the
link MTU, RDNSS and DNSSL (RFC 8106) naming ``ipv6-dns`` and ``dnssearch``, a router lifetime
of ``ROUTER_LIFETIME_S`` and the O flag (other configuration: stateless DHCPv6). Under
restrict=on the router lifetime is 0 and no DNS is announced (the IPv4 side offers no router
or DNS either). An advertisement answers every Router Solicitation at once (unicast to a
solicitor with an address, multicast, at most every ``MIN_DELAY_BETWEEN_RAS_NS``, to one
without). Unsolicited ones start once the guest has shown a link-local address (the source
of a packet it sends: its link-local address has passed duplicate address detection): three at
``INITIAL_RA_INTERVAL_NS``, then one every 200..600 s (RFC 4861's defaults, drawn from the
stack's PRNG so replay sees the same times). Not earlier: a guest that hears of the prefix and
a default route while all its addresses are still tentative has no usable source for a global
destination and sends from ``::1`` (seen with Linux); its connections then hang until they
time out, where without a route they fail at once and fall back to IPv4.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from slirptrio.config import Config
from slirptrio.core.prng import Prng
from slirptrio.wire import icmpv6 as wicmp6
from slirptrio.wire import ipv6 as wip6
from slirptrio.wire import ndp as wndp

log = logging.getLogger("slirptrio.core.ndp")

MAX_NEIGHBORS = 64
ROUTER_LIFETIME_S = 1800
PREFIX_VALID_S = 86400
PREFIX_PREFERRED_S = 14400
DNS_LIFETIME_S = 1800
INITIAL_RAS = 3
INITIAL_RA_INTERVAL_NS = 16_000_000_000
MIN_RA_INTERVAL_NS = 200_000_000_000
MAX_RA_INTERVAL_NS = 600_000_000_000
MIN_DELAY_BETWEEN_RAS_NS = 3_000_000_000
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
UNSPECIFIED = bytes(16)

SendNdp = Callable[[bytes, bytes, bytes, bytes], None]
"""send(src_ip, dst_ip, dst_mac, icmpv6_message): one NDP message, hop limit 255."""


def virtual_mac6(addr: bytes) -> bytes:
    """The MAC of one of the stack's IPv6 addresses: 52:56 + its last four bytes."""
    return b"\x52\x56" + addr[12:]


def link_local(addr: bytes) -> bytes:
    """fe80:: with the interface identifier (last 8 bytes) of ``addr``."""
    return b"\xfe\x80" + bytes(6) + addr[8:]


class Ndp:
    """Neighbor Discovery for one guest.

    Args:
      config: the stack's configuration (prefix, addresses, MTU, DNS, restrict).
      send: sends one NDP message to the guest (see :data:`SendNdp`).
      owned_mac: ``owned_mac(addr)`` is the MAC to advertise for one of the stack's IPv6
        addresses, None for any other address.
      rng: the stack's PRNG (advertisement intervals).
      counters: where ``ndp_*`` counts go.
    """

    # Set from the arguments and never changed (the snapshot convention's "wiring").
    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "_send", "_owned_mac", "_rng", "counters", "router_ip", "router_mac", "_prefix",
        "_prefix_len", "_mtu", "_restrict", "_dns", "_search",
    })  # fmt: skip

    def __init__(
        self,
        *,
        config: Config,
        send: SendNdp,
        owned_mac: Callable[[bytes], bytes | None],
        rng: Prng,
        counters: collections.Counter[str],
    ) -> None:
        self._send = send
        self._owned_mac = owned_mac
        self._rng = rng
        self.counters = counters
        self.router_ip = link_local(config.ipv6_host.packed)
        self.router_mac = virtual_mac6(config.ipv6_host.packed)
        self._prefix = config.ipv6_net.network_address.packed
        self._prefix_len = config.ipv6_net.prefixlen
        self._mtu = config.mtu
        self._restrict = config.restrict
        self._dns = [] if config.restrict else [config.ipv6_dns.packed]
        self._search = [] if config.restrict else list(config.dnssearch)
        self.neighbors: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self.next_ra_ns: int | None = None
        self.initial_left = 0
        self.last_multicast_ra_ns: int | None = None

    # ------------------------------------------------------------------------ public face

    def learn(self, addr: bytes, mac: bytes, now_ns: int) -> None:
        """The guest used ``addr`` from ``mac``; its first link-local address starts the
        unsolicited advertisements."""
        if addr == UNSPECIFIED or addr[0] == 0xFF or mac[0] & 1:
            return
        if self.next_ra_ns is None and self.initial_left == 0 and wip6.is_link_local(addr):
            self.initial_left = INITIAL_RAS
            self.next_ra_ns = now_ns
        table = self.neighbors
        if table.get(addr) == mac:
            table.move_to_end(addr)
            return
        if addr not in table:
            self.counters["ndp_guest_addresses"] += 1
            while len(table) >= MAX_NEIGHBORS:
                table.popitem(last=False)
                self.counters["ndp_neighbors_evicted"] += 1
        table[addr] = mac
        table.move_to_end(addr)

    def mac_for(self, addr: bytes) -> bytes | None:
        """The guest MAC learned for ``addr``, or None."""
        return self.neighbors.get(addr)

    def guest_message(
        self, type_: int, hdr: wip6.Ipv6Header, body: memoryview, src_mac: bytes, now_ns: int
    ) -> None:
        """An NDP message (RS, NS, NA) from the guest, checksum already verified."""
        c = self.counters
        if hdr.ttl != 255:  # RFC 4861: only on-link senders may use NDP
            c["ndp_bad_hop_limit"] += 1
            return
        if type_ == wicmp6.NEIGHBOR_SOLICIT:
            self._solicit(hdr, body, src_mac, now_ns)
        elif type_ == wicmp6.ROUTER_SOLICIT:
            opts = wndp.parse_rs(body)
            c["ndp_rs"] += 1
            mac = wndp.lladdr(opts, wndp.OPT_SOURCE_LLADDR) or src_mac
            if hdr.src == UNSPECIFIED:
                if (
                    self.last_multicast_ra_ns is not None
                    and now_ns - self.last_multicast_ra_ns < MIN_DELAY_BETWEEN_RAS_NS
                ):
                    c["ndp_rs_rate_limited"] += 1
                    return
                self._advertise(ALL_NODES, wip6.multicast_mac(ALL_NODES), now_ns)
            else:
                self.learn(hdr.src, mac, now_ns)
                self._advertise(hdr.src, mac, now_ns)
                if self.next_ra_ns == now_ns:
                    # Started by this very solicitation, just answered: the first unsolicited
                    # one would repeat the answer at once.
                    self.next_ra_ns = now_ns + INITIAL_RA_INTERVAL_NS
        elif type_ == wicmp6.NEIGHBOR_ADVERT:
            _flags, target, opts = wndp.parse_na(body)
            c["ndp_na"] += 1
            tll = wndp.lladdr(opts, wndp.OPT_TARGET_LLADDR)
            if tll is not None and self._owned_mac(target) is None:
                self.learn(target, tll, now_ns)
        else:
            c["ndp_ignored"] += 1

    def poll_at(self) -> int | None:
        """When the next unsolicited advertisement is due."""
        return self.next_ra_ns

    def tick(self, now_ns: int) -> None:
        """Send the unsolicited advertisement if it is due."""
        if self.next_ra_ns is None or self.next_ra_ns > now_ns:
            return
        self._advertise(ALL_NODES, wip6.multicast_mac(ALL_NODES), now_ns)
        self.counters["ndp_ra_unsolicited"] += 1
        if self.initial_left > 1:
            self.initial_left -= 1
            self.next_ra_ns = now_ns + INITIAL_RA_INTERVAL_NS
        else:
            self.initial_left = 0
            span = MAX_RA_INTERVAL_NS - MIN_RA_INTERVAL_NS
            self.next_ra_ns = now_ns + MIN_RA_INTERVAL_NS + self._rng.below(span)

    def router_advert(self) -> bytes:
        """The advertisement body the stack sends."""
        # SLAAC forms addresses from a /64 only; another length is announced on-link alone.
        flags = wndp.PREFIX_ONLINK | (wndp.PREFIX_AUTONOMOUS if self._prefix_len == 64 else 0)
        prefixes = [
            wndp.Prefix(self._prefix, self._prefix_len, flags, PREFIX_VALID_S, PREFIX_PREFERRED_S)
        ]
        return wndp.build_ra(
            hop_limit=wip6.DEFAULT_HOP_LIMIT,
            flags=wndp.RA_OTHER,
            lifetime=0 if self._restrict else ROUTER_LIFETIME_S,
            source_mac=self.router_mac,
            mtu=self._mtu,
            prefixes=prefixes,
            dns_servers=self._dns,
            dns_lifetime=DNS_LIFETIME_S,
            search=self._search,
        )

    # ------------------------------------------------------------------------- snapshots

    def snapshot_state(self) -> dict[str, Any]:
        """Plain data that :meth:`restore_state` turns back into this state."""
        return {
            "neighbors": [[a, m] for a, m in self.neighbors.items()],
            "next_ra_ns": self.next_ra_ns,
            "initial_left": self.initial_left,
            "last_multicast_ra_ns": self.last_multicast_ra_ns,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take over a state from :meth:`snapshot_state` (same config and wiring)."""
        self.neighbors = collections.OrderedDict(
            (bytes(a), bytes(m)) for a, m in state["neighbors"]
        )
        self.next_ra_ns = state["next_ra_ns"]
        self.initial_left = int(state["initial_left"])
        self.last_multicast_ra_ns = state["last_multicast_ra_ns"]

    # ---------------------------------------------------------------------------- helpers

    def _solicit(
        self, hdr: wip6.Ipv6Header, body: memoryview, src_mac: bytes, now_ns: int
    ) -> None:
        c = self.counters
        target, opts = wndp.parse_ns(body)
        c["ndp_ns"] += 1
        dad = hdr.src == UNSPECIFIED
        sll = wndp.lladdr(opts, wndp.OPT_SOURCE_LLADDR)
        if dad and sll is not None:
            c["ndp_bad_dad"] += 1  # RFC 4861 7.1.1: a DAD probe carries no address option
            return
        if not dad:
            self.learn(hdr.src, sll or src_mac, now_ns)
        mac = self._owned_mac(target)
        if mac is None:
            c["ndp_ns_ignored"] += 1
            return
        c["ndp_na_sent"] += 1
        if dad:  # someone probes an address of ours: tell every node it is taken
            flags = wndp.NA_ROUTER | wndp.NA_OVERRIDE
            dst, dst_mac = ALL_NODES, wip6.multicast_mac(ALL_NODES)
        else:
            flags = wndp.NA_ROUTER | wndp.NA_SOLICITED | wndp.NA_OVERRIDE
            dst, dst_mac = hdr.src, sll or src_mac
        msg = wicmp6.build_icmpv6(
            target, dst, wicmp6.NEIGHBOR_ADVERT, 0, wndp.build_na(flags, target, mac)
        )
        self._send(target, dst, dst_mac, msg)

    def _advertise(self, dst: bytes, dst_mac: bytes, now_ns: int) -> None:
        if dst == ALL_NODES:
            self.last_multicast_ra_ns = now_ns
        self.counters["ndp_ra_sent"] += 1
        msg = wicmp6.build_icmpv6(
            self.router_ip, dst, wicmp6.ROUTER_ADVERT, 0, self.router_advert()
        )
        self._send(self.router_ip, dst, dst_mac, msg)

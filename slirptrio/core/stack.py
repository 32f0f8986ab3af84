"""The core: one guest, one virtual network, driven by events.

Theory of operation
-------------------
``Stack.handle(event, now_ns)`` is the only way anything happens. A guest frame is parsed
(Ethernet → ARP | IPv4 → ICMP | UDP | TCP), answered or translated, and whatever must happen as a
result comes back as a list of effects: frames for the guest (:class:`SendFrame`) and actions for
the shell's host sockets. The stack's own services come before the NAT: DHCP, and TFTP on the
host address port 69, IPv4 or IPv6 (:mod:`slirptrio.core.tftp`). Host socket results come back
in as events naming a flow. ``poll_at()`` tells the shell when the next timer is due; the shell
then delivers :class:`Tick`.

The stack owns the virtual addresses (``host``: gateway and NAT source, ``dns``) and answers ARP
for them with a MAC derived from the address (52:55:a.b.c.d, as libslirp). It learns the guest's
MAC from its frames. A malformed frame raises :class:`MalformedFrame` inside the parsers; it is
counted under its reason, logged at debug level and dropped here — never raised to the caller.

Several stations may share the link (guests behind one QEMU hub). The stack reads only frames
addressed to it (:meth:`Stack.frame_for_us`: its MACs, broadcast, the multicast groups it
serves) and leaves the rest alone; an address a guest holds (:meth:`Stack.guest_holds`) is
never an alias of the host, never answered for. A packet from a source no node sends from
(loopback, multicast, "this network" but DHCP's 0.0.0.0; IPv6 ::1, multicast, IPv4-mapped,
:: but for DAD, RS and MLD) is dropped before anything learns from it (``drop_martian_src``).

IPv6 (``ipv6=on``, the default) runs beside IPv4 on the same link: Ethernet → IPv6 (extension
headers walked, fragments reassembled) → ICMPv6 | UDP | TCP. Neighbor Discovery and router
advertisements are :class:`~slirptrio.core.ndp.Ndp`'s, stateless DHCPv6 is
:class:`~slirptrio.core.dhcpv6.Dhcpv6Server`'s; UDP, TCP and echo flows are the same NAT
machines as IPv4's, fed 16-byte addresses, and :meth:`Stack.translate` decides for both
families where a flow goes. IPv6 frames leave from the router MAC (52:56 + the last four bytes
of ``ipv6-host``), fragmented with a Fragment header when larger than the MTU.

Nothing here reads a clock or draws randomness except through ``now_ns`` and the seeded PRNG, so
the same events at the same times give the same effects, byte for byte.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, ClassVar

from slirptrio.config import Config
from slirptrio.core import icmp, ipfrag, tcp, udp
from slirptrio.core import snapshot as snap
from slirptrio.core.dhcp import DhcpServer, Lease
from slirptrio.core.dhcpv6 import Dhcpv6Server
from slirptrio.core.events import (
    CoreError,
    DnsUpstreams,
    Effect,
    Event,
    FaultAdd,
    FaultRemove,
    FrameRuns,
    GuestFrame,
    GuestFrames,
    GuestFwdAdd,
    GuestFwdRemove,
    GuestLink,
    HostFwdChange,
    IcmpEchoError,
    IcmpEchoReply,
    IcmpUnavailable,
    PortFrames,
    PortLink,
    PortSendFrames,
    SendFrame,
    SendFrames,
    TcpClose,
    TcpConnected,
    TcpConnectFailed,
    TcpData,
    TcpDataSent,
    TcpEof,
    TcpInbound,
    TcpReset,
    TcpSent,
    TftpChunk,
    TftpOpened,
    Tick,
    UdpError,
    UdpInbound,
    UdpReceived,
    error_message,
)
from slirptrio.core.faults import IN, OUT, Faults, RuleInfo
from slirptrio.core.icmp import IcmpEcho
from slirptrio.core.info import FlowInfo
from slirptrio.core.ipfrag import Reassembler, fragment
from slirptrio.core.martian import ANSWERED, classify_ipv4
from slirptrio.core.martian6 import classify_ipv6
from slirptrio.core.ndp import Ndp, link_local, virtual_mac6
from slirptrio.core.prng import Prng
from slirptrio.core.switch import PortInfo, Switch
from slirptrio.core.tcp import TcpNat
from slirptrio.core.tftp import TFTP_PORT, TftpServer, TftpSessionInfo
from slirptrio.core.udp import UdpNat
from slirptrio.core.wiring import Wiring
from slirptrio.wire import MalformedFrame
from slirptrio.wire import arp as warp
from slirptrio.wire import dhcpv6 as wdhcp6
from slirptrio.wire import ethernet as weth
from slirptrio.wire import fast as wfast
from slirptrio.wire import icmp as wicmp
from slirptrio.wire import icmpv6 as wicmp6
from slirptrio.wire import ipv4 as wip
from slirptrio.wire import ipv6 as wip6
from slirptrio.wire import udp as wudp
from slirptrio.wire.framing import frame_spans, split_run
from slirptrio.wire.tcp import TcpSegment, build_tcp

log = logging.getLogger("slirptrio.core")

DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
_LIMITED_BROADCAST = b"\xff\xff\xff\xff"
_ZERO_IP = b"\x00\x00\x00\x00"
_UNSPECIFIED6 = bytes(16)
# Ethernet type and the IPv6 header up to the addresses, as _send_ip6 builds it for TCP: version
# 6, no traffic class or flow label, the payload length (filled per segment), TCP, hop limit 64.
_IP6_TCP_HEAD = bytes((0x86, 0xDD, 0x60, 0, 0, 0, 0, 0, 6, 64))
_IP6_IDENT_SALT = 0x1D6F_7A3B_55C2_0E49  # a PRNG of its own: IPv6 must not shift IPv4's draws
_MLD = (wicmp6.MLD_QUERY, wicmp6.MLD_REPORT, wicmp6.MLD_DONE, wicmp6.MLD2_REPORT)
# What a node may send from :: (RFC 4291 2.5.2, RFC 4862 5.4.2, RFC 4861 6.3.7, RFC 3810
# 5.2.13): duplicate address detection, a router solicitation before it has an address, MLD.
_FROM_UNSPECIFIED = frozenset((wicmp6.NEIGHBOR_SOLICIT, wicmp6.ROUTER_SOLICIT, *_MLD))
# The IPv6 multicast groups the stack listens to besides its solicited-node groups: all nodes,
# all routers, all MLDv2-capable routers, all DHCPv6 servers and relays.
_SERVED_GROUPS6 = tuple(bytes.fromhex(g) for g in (
    "ff020000000000000000000000000001", "ff020000000000000000000000000002",
    "ff020000000000000000000000000016", "ff020000000000000000000000010002",
))  # fmt: skip
_ECONNRESET = 104  # what a fault rule's reset reports, as a host reset would
GUEST_GONE_TIMEOUT_NS = 60 * 1_000_000_000
"""A guest whose link has been down this long without a frame is gone: its flows are reset."""
ARP_TABLE_MAX = 256
"""Guest addresses whose MAC is remembered (one guest uses one or a few)."""


def virtual_mac(ip: bytes) -> bytes:
    """The MAC the stack uses for one of its virtual addresses (52:55 + the address)."""
    return b"\x52\x55" + ip


class Stack:
    """The sans-I/O network stack for one guest.

    Args:
      config: the validated ``-netdev user`` configuration.
      seed: seeds the PRNG for IP ids, ISNs and ports; stored in the journal header.
    """

    def __init__(self, config: Config, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.counters: collections.Counter[str] = collections.Counter()
        self._rng = Prng(seed)
        self._host_ip = config.host.packed
        self._dns_ip = config.dns.packed
        self._net = int(config.net.network_address)
        self._netmask = int(config.net.netmask)
        self._net_broadcast = config.net.broadcast_address.packed
        self._our_mac = virtual_mac(self._host_ip)
        self._virtual_ips = {self._host_ip, self._dns_ip}
        self._dhcp = DhcpServer(config)
        self.guest_mac: bytes | None = None
        self._arp_table: dict[bytes, bytes] = {}  # guest address -> MAC, first seen first
        self._link_down_at: int | None = None  # since when the guest's link is down
        self._ip_id = self._rng.next_u32() & 0xFFFF
        self._out: list[Effect] = []
        self._frames = bytearray()  # frames to the guest not yet turned into effects (a run)
        self._parts: list[bytes] = []  # runs made before the frames in _frames (tcp_frames)
        self._runs = False  # FrameRuns: one SendFrames per group of frames, else SendFrame each
        self._next_flow = 0
        self._loopback = config.hostloopback
        self._mtu = config.mtu
        self._ip4_tcp_head = _ip4_tcp_head()
        self._guestfwd: dict[tuple[bytes, int], int] = {}
        # Limits and timeouts are read from the modules' constants here, not bound as default
        # arguments, so that replay can build a core with a journal's recorded values
        # (slirptrio.core.constants).
        self._reasm = Reassembler(
            max_datagrams=ipfrag.MAX_DATAGRAMS,
            max_total_bytes=ipfrag.MAX_TOTAL_BYTES,
            timeout_ns=ipfrag.TIMEOUT_NS,
            max_fragments=ipfrag.MAX_FRAGMENTS,
            counters=self.counters,
        )
        wiring = Wiring(
            rng=self._rng,
            counters=self.counters,
            alloc_flow=self.alloc_flow,
            send_ip=self.send_ip,
            translate=self.translate,
        )
        tcp_wiring = wiring.copy()
        tcp_wiring["translate"] = self._tcp_translate
        self.udp = UdpNat(
            **wiring,
            host_ip=self._host_ip,
            dns_ip=self._dns_ip,
            net_broadcast=self._net_broadcast,
            restrict=config.restrict,
            loopback_ok=bool(config.hostloopback),
            idle_timeout_ns=config.udp_timeout * 1_000_000_000,
            dns_idle_timeout_ns=config.dns_timeout * 1_000_000_000,
            dns_timeout_ns=udp.DNS_QUERY_TIMEOUT_NS,
            max_flows=udp.MAX_FLOWS,
            max_dns_pending=udp.MAX_DNS_PENDING,
        )
        self.tcp = TcpNat(
            **tcp_wiring,
            send_tcp=self.send_tcp,
            emit=self._emit,
            mtu=config.mtu,
            max_flows=config.max_flows,
            mem_budget=config.tcp_mem_budget(),
            max_half_open=tcp.MAX_HALF_OPEN,
            buffer_size=tcp.BUFFER_SIZE,
            rto_min_ns=tcp.RTO_MIN_NS,
            delack_ns=tcp.DELACK_NS,
            give_up_ns=tcp.GIVE_UP_NS,
            syn_give_up_ns=tcp.SYN_GIVE_UP_NS,
            fin_give_up_ns=tcp.FIN_GIVE_UP_NS,
            time_wait_ns=tcp.TIME_WAIT_NS,
            connect_timeout_ns=tcp.CONNECT_TIMEOUT_NS,
            drain_timeout_ns=tcp.DRAIN_TIMEOUT_NS,
            max_ooo_segments=tcp.MAX_OOO_SEGMENTS,
        )
        self.tftp = TftpServer(
            send_udp=self.udp.send_udp,
            alloc_flow=self.alloc_flow,
            counters=self.counters,
            host_ip=self._host_ip,
            mtu=config.mtu,
            enabled=bool(config.tftp),
            host_ip6=config.ipv6_host.packed if config.ipv6 else b"",
        )
        self.echo = IcmpEcho(
            **wiring,
            restrict=config.restrict,
            idle_timeout_ns=icmp.ECHO_IDLE_TIMEOUT_NS,
            max_flows=icmp.MAX_ECHO_FLOWS,
        )
        # IPv6: the prefix, the virtual addresses and the router's link-local address.
        self._ipv4_on = config.ipv4
        self._ipv6_on = config.ipv6
        self._host6 = config.ipv6_host.packed
        self._dns6 = config.ipv6_dns.packed
        self._ll6 = link_local(self._host6)
        self._net6 = int(config.ipv6_net.network_address)
        self._shift6 = 128 - config.ipv6_net.prefixlen
        self._virtual6 = {self._host6, self._dns6, self._ll6}
        self._ip6_ident = Prng(seed ^ _IP6_IDENT_SALT).next_u32()
        self._ndp = Ndp(
            config=config,
            send=self._send_ndp,
            owned_mac=self._owned_mac6,
            rng=self._rng,
            counters=self.counters,
        )
        self._mac6 = self._ndp.router_mac
        self._dhcp6 = Dhcpv6Server(config, self._mac6, self.counters)
        if config.ipv6:
            self.udp.dns_ip6 = self._dns6
        self._our_macs: frozenset[bytes] = frozenset()
        self._update_our_macs()
        # Fault rules (issue 23): they see every frame on the guest's link when any is in force.
        self._now_ns = 0
        self._faults = Faults(seed, self.counters, self.send_ip, self.tcp.flow_of,
                              self._fault_reset)
        # Several guests (issue 22): off until a second port appears (see core/switch.py).
        self._switch = Switch(config.isolate, self.counters)
        self._others_at: int | None = None
        self._others_ok = False

    # --------------------------------------------------------------------------- snapshots

    # The components with state of their own, each snapshotted under its attribute name.
    # A new protocol module adds its attribute here (one line) and the method pair to its class.
    _SNAPSHOT_COMPONENTS: ClassVar[tuple[str, ...]] = (
        "_rng", "_dhcp", "_reasm", "udp", "tcp", "echo", "_ndp", "tftp",
    )  # fmt: skip
    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "config", "seed", "_host_ip", "_dns_ip", "_net", "_netmask", "_net_broadcast",
        "_our_mac", "_virtual_ips", "_loopback", "_mtu", "_ip4_tcp_head",
        "_ipv4_on", "_ipv6_on", "_host6", "_dns6", "_ll6", "_net6", "_shift6", "_virtual6",
        "_mac6", "_dhcp6",  # stateless DHCPv6: only wiring
    })  # fmt: skip
    # The effects list of the event being handled and the frames not yet in it: replaced or
    # emptied at the start of every handle().
    # The MACs the stack takes frames for: built from the config and the guest forwards.
    # The earliest deadline of the components TCP's steps never touch (see poll_at): a cache,
    # dropped by every step that may have changed it and by restore_state.
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset(
        {"_out", "_frames", "_parts", "_our_macs", "_now_ns", "_others_at", "_others_ok"})

    def snapshot_state(self) -> dict[str, Any]:
        """The whole core's state as plain data (see :mod:`slirptrio.core.snapshot`)."""
        state: dict[str, Any] = {
            "counters": dict(self.counters),
            "guest_mac": self.guest_mac,
            "_arp_table": [[ip, mac] for ip, mac in self._arp_table.items()],
            "_ip_id": self._ip_id,
            "_ip6_ident": self._ip6_ident,
            "_next_flow": self._next_flow,
            "_guestfwd": [[ip, port, fid] for (ip, port), fid in self._guestfwd.items()],
            "_runs": self._runs,
            "_link_down_at": self._link_down_at,
        }
        for name in self._SNAPSHOT_COMPONENTS:
            state[name] = getattr(self, name).snapshot_state()
        state["_faults"] = self._faults.snapshot_state()
        state["_switch"] = self._switch.snapshot_state()
        return state

    def restore_state(self, state: dict[str, Any]) -> None:
        # The counters object is shared with every component: refill it, never replace it.
        self.counters.clear()
        self.counters.update(state["counters"])
        self.guest_mac = state["guest_mac"]
        self._arp_table = {ip: mac for ip, mac in state["_arp_table"]}
        self._ip_id = state["_ip_id"]
        self._ip6_ident = state["_ip6_ident"]
        self._next_flow = state["_next_flow"]
        self._guestfwd = {(ip, port): fid for ip, port, fid in state["_guestfwd"]}
        self._runs = state.get("_runs", False)  # snapshots from before runs: one frame each
        self._link_down_at = state["_link_down_at"]
        self._others_ok = False
        for name in self._SNAPSHOT_COMPONENTS:
            getattr(self, name).restore_state(state[name])
        self._update_our_macs()
        if "_faults" in state:  # snapshots from before fault rules have none in force
            self._faults.restore_state(state["_faults"])
        if "_switch" in state:  # snapshots from before ports: one guest, no switching
            self._switch.restore_state(state["_switch"])

    def snapshot(self) -> dict[str, Any]:
        """A snapshot of this stack that :meth:`from_snapshot` turns back into one."""
        return {"version": snap.SNAPSHOT_VERSION, "seed": self.seed, "state": self.snapshot_state()}

    @classmethod
    def from_snapshot(cls, config: Config, snapshot: dict[str, Any]) -> Stack:
        """A stack built with ``config`` that behaves as the one :meth:`snapshot` was taken of
        (which must have had the same config)."""
        if snapshot.get("version") != snap.SNAPSHOT_VERSION:
            raise ValueError(f"unknown snapshot version {snapshot.get('version')!r}")
        stack = cls(config, snapshot["seed"])
        stack.restore_state(snapshot["state"])
        return stack

    # ------------------------------------------------------------------------ public face

    def handle(self, event: Event, now_ns: int) -> list[Effect]:
        """Consume one input at time ``now_ns`` and return the effects it produced."""
        out: list[Effect] = []
        self._out = out
        self._frames.clear()
        self._parts.clear()
        self._now_ns = now_ns
        t = type(event)
        # Only a TCP host event and a run taken whole by the GRO path (which says otherwise
        # when it takes a frame the general way) leave the other components' timers alone.
        if t is GuestFrames and not self._switch.active:
            self._link_down_at = None
            if self._faults.active:
                self._guest_frames(bytes(self._faults.filter_run(event.data, OUT, now_ns)),  # type: ignore[attr-defined]
                                   now_ns)
            else:
                self._guest_frames(event.data, now_ns)  # type: ignore[attr-defined]
        elif t in _TCP_EVENTS:
            self.tcp.host_event(event, now_ns)
        else:
            self._others_ok = False
            self._handle_other(t, event, now_ns)
        if self._parts or self._frames:
            self._flush_frames()
        return out

    def _handle_other(self, t: type[Event], event: Event, now_ns: int) -> None:
        """:meth:`handle` for every event but a TCP host event and a plain GuestFrames."""
        if t is GuestFrames:
            self._port_frames(0, event.data, now_ns)  # type: ignore[attr-defined]
        elif t is GuestFrame:
            self._link_down_at = None
            if self._faults.active:
                for f in self._faults.filter(event.data, OUT, now_ns):  # type: ignore[attr-defined]
                    self._guest_frame(f, now_ns)
            else:
                self._guest_frame(event.data, now_ns)  # type: ignore[attr-defined]
        elif t in _FWD_EVENTS:
            self._forward_event(event, now_ns)
        elif t in _UDP_EVENTS:
            self._emit_all(self.udp.host_event(event, now_ns))
        elif t in _ICMP_EVENTS:
            self._emit_all(self.echo.host_event(event, now_ns))
        elif t in _TFTP_EVENTS:
            self._emit_all(self.tftp.host_event(event, now_ns))
        elif t is Tick:
            self.counters["ticks"] += 1
            if self._faults.active:
                self._fault_release(now_ns)
            if self._link_down_at is not None and (
                now_ns >= self._link_down_at + GUEST_GONE_TIMEOUT_NS
            ):
                self._link_down_at = None
                self._forget_guest(None, "the guest's link has been down too long")
            self._reasm.expire(now_ns)
            self._ndp.tick(now_ns)
            self.tcp.tick(now_ns)
            self._emit_all(self.udp.tick(now_ns))
            self._emit_all(self.echo.tick(now_ns))
            self._emit_all(self.tftp.tick(now_ns))
        elif t is PortFrames:
            assert isinstance(event, PortFrames)
            if event.port > 0:
                self._switch_on()
                self._port_frames(event.port, event.data, now_ns)
            else:
                self.counters["bad_port_event"] += 1
        elif t is PortLink:
            assert isinstance(event, PortLink)
            if event.port > 0:
                self._port_link(event.port, event.up, event.peer)
            else:
                self.counters["bad_port_event"] += 1
        elif t is GuestLink:
            assert isinstance(event, GuestLink)
            self.counters["guest_link_up" if event.up else "guest_link_down"] += 1
            if self._switch.active:
                self._port_link(0, event.up, "guest")
            elif event.up:
                self._switch.ports[0] = PortInfo(0, "guest")  # uncounted: nothing switches
                self._link_down_at = None
            else:
                self._switch.ports.pop(0, None)
                if self._link_down_at is None:
                    self._link_down_at = now_ns
        elif t is FrameRuns:
            self._runs = event.on  # type: ignore[attr-defined]
        elif t is FaultAdd or t is FaultRemove:
            self._fault_event(event, now_ns)
        else:
            self.counters["unknown_event"] += 1
            log.warning("unhandled event %r", event)

    def poll_at(self) -> int | None:
        """The next time (ns) the core wants a :class:`Tick`, or None.

        Runs after every burst, so it does not ask the components a TCP step cannot touch
        (fragment reassembly, UDP and DNS, ICMP echo, TFTP) again after such steps: their
        earliest deadline is kept from the last time it was asked (:meth:`poll_at_fresh` asks
        every time; the tests hold the two equal)."""
        d = self.tcp.poll_at()
        if self._others_ok:
            t = self._others_at
        else:
            t = self._others_at = self._others_poll_at()
            self._others_ok = True
        if t is not None and (d is None or t < d):
            d = t
        t = self._ndp.next_ra_ns
        if t is not None and (d is None or t < d):
            d = t
        if self._link_down_at is not None:
            t = self._link_down_at + GUEST_GONE_TIMEOUT_NS
            if d is None or t < d:
                d = t
        if self._faults.active:
            t = self._faults.poll_at()
            if t is not None and (d is None or t < d):
                d = t
        return d

    def _others_poll_at(self) -> int | None:
        d = None
        for t in (self._reasm.poll_at(), self.udp.poll_at(), self.echo.poll_at(),
                  self.tftp.poll_at()):
            if t is not None and (d is None or t < d):
                d = t
        return d

    def poll_at_fresh(self) -> int | None:
        """:meth:`poll_at` asking every component (the reference its cache is tested against)."""
        d = self.tcp.poll_at()
        gone_at = None
        if self._link_down_at is not None:
            gone_at = self._link_down_at + GUEST_GONE_TIMEOUT_NS
        for t in (
            self._reasm.poll_at(), self.udp.poll_at(), self.echo.poll_at(), self._ndp.poll_at(),
            self.tftp.poll_at(), gone_at, self._faults.poll_at() if self._faults.active else None,
        ):
            if t is not None and (d is None or t < d):
                d = t
        return d

    def frame_for_us(self, dst_mac: bytes) -> bool:
        """Whether a guest frame sent to ``dst_mac`` is the stack's business.

        It is when sent to one of the stack's own MACs (those its ARP and NDP answers hand
        out: ``host``'s, ``dns``'s and each guest forward's address, SMB's included, and the
        IPv6 router's), to broadcast, or to a multicast group it serves (IPv6 all-nodes,
        all-routers, all-MLDv2-routers, DHCPv6 servers, the solicited-node groups of its
        addresses). Any other frame belongs to another station on the link (guests behind one
        hub): the stack leaves it alone (``drop_not_for_us``). One set lookup, since it runs
        for every frame; the one place that decides it, for the general and the fast path and
        for a switch in front of the core alike.
        """
        return dst_mac in self._our_macs

    def own_mac(self, mac: bytes) -> bool:
        """Whether the stack sends from ``mac`` (its unicast MACs): a frame from it that
        comes back (a multicast bus loops our frames back) is our own."""
        return not mac[0] & 1 and mac in self._our_macs

    def _update_our_macs(self) -> None:
        """Rebuild the set :meth:`frame_for_us` looks in (the config and the guest forwards)."""
        v4 = [self._host_ip, self._dns_ip]
        v6 = [self._host6, self._dns6, self._ll6]
        for ip, _port in self._guestfwd:
            (v6 if len(ip) == 16 else v4).append(ip)
        # Both families' MACs even with one turned off: a frame for us in a family that is
        # off is counted as such (drop_ipv6_disabled), not as another station's.
        macs = {weth.BROADCAST_MAC, self._mac6}
        macs.update(virtual_mac(ip) for ip in v4)
        macs.update(virtual_mac6(ip) for ip in v6)
        macs.update(wip6.multicast_mac(g) for g in _SERVED_GROUPS6)
        macs.update(wip6.multicast_mac(wip6.solicited_node(ip)) for ip in v6)
        self._our_macs = frozenset(macs)

    def guest_holds(self, ip: bytes) -> bool:
        """Whether the packed address ``ip`` is a guest's, never an alias of the host: leased
        by DHCP (held, expired or declined) or seen as a guest's ARP sender or IPv4 source;
        for IPv6, seen as a guest's source or in its neighbor messages. The stack's own
        addresses are never a guest's."""
        if len(ip) == 16:
            return ip in self._ndp.neighbors and ip not in self._virtual6
        return ip in self._arp_table or self._dhcp.holds(ip)

    def alloc_flow(self) -> int:
        """A new flow id, unique among all host-side flows of this stack."""
        self._next_flow += 1
        return self._next_flow

    def _tcp_translate(self, ip: bytes, port: int) -> tuple[str, int] | None:
        fid = self._guestfwd.get((ip, port))
        if fid is not None:  # guest forwards work even under restrict=on, as in QEMU
            return f"guestfwd:{fid}", port
        return self.translate(ip, port)

    def _forward_event(self, event: Event, now_ns: int) -> None:
        if type(event) is TcpInbound:
            src, guest = self._inbound_addrs(event.peer_ip, event.guest_ip)
            if guest is None:
                self.counters["fwd_bad_guest_address"] += 1
                self._emit(TcpClose(event.flow, True))
                return
            self.tcp.open_to_guest(
                event.flow, src, event.peer_port, guest, event.guest_port, event.peer_ip,
                event.peer_port, now_ns,
            )
        elif type(event) is UdpInbound:
            src, guest = self._inbound_addrs(event.peer_ip, event.guest_ip)
            if guest is None:
                self.counters["fwd_bad_guest_address"] += 1
                return
            self._emit_all(self.udp.inbound(
                event.fid, src, guest, event.guest_port, event.peer_ip, event.peer_port,
                event.data, now_ns,
            ))
        elif type(event) is GuestFwdAdd:
            try:
                ip = ip_address(event.ip).packed
            except ValueError:
                self.counters["fwd_bad_guestfwd"] += 1
                return
            self._guestfwd[(ip, event.port)] = event.fid
            self._update_our_macs()
        elif type(event) is GuestFwdRemove:
            for key, fid in list(self._guestfwd.items()):
                if fid == event.fid:
                    del self._guestfwd[key]
            self._update_our_macs()
        elif type(event) is HostFwdChange:
            # The shell owns the listener; the core only has the change on record.
            self.counters["hostfwd_added" if event.added else "hostfwd_removed"] += 1

    def _inbound_addrs(self, peer_ip: str, guest_ip: str) -> tuple[bytes, bytes | None]:
        """The source a forwarded host peer has in the guest's eyes (libslirp: the host
        address for local peers or peers of the other family, else the peer's own), and the
        guest address (None if it is no guest address)."""
        try:
            gaddr = ip_address(guest_ip)
        except ValueError:
            return self._host_ip, None
        try:
            peer: IPv4Address | IPv6Address | None = ip_address(peer_ip)
        except ValueError:
            peer = None  # not an IP peer: it comes from the host address
        if isinstance(peer, IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        if isinstance(gaddr, IPv6Address):
            guest6 = gaddr.packed
            if not self._ipv6_on or not self._in_net6(guest6) or guest6 in self._virtual6:
                return self._host6, None
            if (
                isinstance(peer, IPv6Address) and not peer.is_loopback and not peer.is_unspecified
                and not peer.is_link_local and not self._in_net6(peer.packed)
            ):
                return peer.packed, guest6
            return self._host6, guest6
        guest = gaddr.packed
        if not self._ipv4_on or not self._in_net(guest) or guest in self._virtual_ips:
            return self._host_ip, None
        if not isinstance(peer, IPv4Address):
            return self._host_ip, guest
        if peer.is_loopback or peer.is_unspecified or self._in_net(peer.packed):
            return self._host_ip, guest
        return peer.packed, guest

    def translate(self, ip: bytes, port: int) -> tuple[str, int] | None:
        """Where a guest's connection to ``ip:port`` goes on the host, or None if nowhere.

        Addresses inside the virtual network are aliases of the host (libslirp): they lead to
        ``hostloopback`` (127.0.0.1), or nowhere with ``hostloopback=off``; TCP to ``dns:53``
        goes to the DNS upstream. A guest's address (:meth:`guest_holds`) is no alias: it
        leads nowhere. Martian addresses (:mod:`slirptrio.core.martian`) lead
        nowhere: no guest destination reaches the host's loopback except through the aliases.
        IPv6: see :meth:`_translate6`.
        """
        if self.config.restrict:
            return None
        if len(ip) == 16:
            return self._translate6(ip, port)
        if self._in_net(ip):
            if ip == self._net_broadcast or self.guest_holds(ip):
                return None
            if ip == self._dns_ip and port == 53:
                return self.udp.dns.tcp_upstream()
            if not self._loopback:
                return None
            return self._loopback, port
        if classify_ipv4(ip):
            return None  # never the host's loopback, "this host", multicast or broadcast
        return address_str(ip), port

    def _translate6(self, ip: bytes, port: int) -> tuple[str, int] | None:
        """IPv6: ``ipv6-host`` (and ``ipv6-dns`` and the router's link-local address, its
        aliases) lead to the host's ::1 (``hostloopback``), TCP to ``ipv6-dns`` port 53 to the
        DNS upstream; other addresses of the prefix lead nowhere. Martians never leave:
        unspecified, loopback, IPv4-compatible and IPv4-mapped, multicast, link-local."""
        if self._in_net6(ip) or ip == self._ll6:
            if ip not in self._virtual6:
                return None
            if ip == self._dns6 and port == 53:
                return self.udp.dns.tcp_upstream()
            loop = self._loopback
            if not loop:
                return None
            return ("::1" if loop == "127.0.0.1" else loop), port
        reason = classify_ipv6(ip)
        if reason:
            self.counters["martian6_" + reason] += 1
            return None
        return str(IPv6Address(ip)), port

    def leases(self, now_ns: int) -> list[Lease]:
        """The DHCP leases currently held."""
        return self._dhcp.leases(now_ns)

    def flows(self, now_ns: int) -> list[FlowInfo]:
        """Every NAT entry, TCP first, for display (``info``)."""
        return [*self.tcp.flows(now_ns), *self.udp.flows(now_ns), *self.echo.flows(now_ns)]

    def tftp_sessions(self, now_ns: int) -> list[TftpSessionInfo]:
        """The TFTP transfers in progress, for display (``info``)."""
        return self.tftp.sessions(now_ns)

    # ------------------------------------------------------------------ fault rules (#23)

    def fault_rules(self, now_ns: int) -> list[RuleInfo]:
        """The fault rules in force and what each has done."""
        return self._faults.rules(now_ns)

    def _fault_event(self, event: Event, now_ns: int) -> None:
        if isinstance(event, FaultAdd):
            if self._faults.add(event.rule, event.text, now_ns):
                log.info("fault rule %d in force: %s", event.rule, event.text)
            else:
                log.warning("fault rule %d refused: %s", event.rule, event.text)
        elif isinstance(event, FaultRemove):
            self._faults.remove(event.rule)

    def _fault_release(self, now_ns: int) -> None:
        """Frames the rules held that are due: the guest's on through the stack, the ones
        toward the guest out as they are (they were filtered when they were made)."""
        out, inn = self._faults.release(now_ns)
        for frame in out:
            if self._switch.active:
                # Several guests: a held frame goes on through the switch, from the port
                # its sender is on now (a sender gone meanwhile: nowhere).
                port = self._switch.macs.get(bytes(frame[6:12])) if len(frame) >= 12 else None
                if port is None or port not in self._switch.ports:
                    self.counters["switch_no_port"] += 1
                    continue
                self._port_frames(port, len(frame).to_bytes(4, "big") + bytes(frame), now_ns,
                                  filtered=True)
            else:
                self._guest_frame(frame, now_ns)
        if not inn:
            return
        if self._parts or self._frames:
            self._flush_frames()
        if self._switch.active:
            self._emit_port_runs(self._route_out(
                b"".join(len(f).to_bytes(4, "big") + f for f in inn)))
        elif self._runs:
            self._out.append(SendFrames(b"".join(len(f).to_bytes(4, "big") + f for f in inn)))
        else:
            self._out.extend(SendFrame(f) for f in inn)

    def _fault_reset(self, flow: int, now_ns: int) -> bool:
        """Reset TCP ``flow`` as a host reset would (RST to the guest, host socket closed)."""
        if flow < 0 or not self.tcp.owns(flow):
            return False
        self.tcp.host_event(TcpReset(flow, _ECONNRESET), now_ns)
        return True

    # ------------------------------------------------------------------ switch ports (#22)

    def ports(self) -> list[dict[str, Any]]:
        """The switch's ports that are up: number, peer, MACs, the addresses those MACs
        hold (DHCP, ARP, NDP), frames in and out, frames forwarded to other ports and dropped."""
        sw = self._switch
        out = []
        for n in sorted(sw.ports):
            info = sw.ports[n]
            macs = set(sw.macs_of(n)) if sw.active else (
                {self.guest_mac} if self.guest_mac is not None else set())
            held = [lease.ip for lease in self._dhcp.leases(self._now_ns) if lease.mac in macs]
            held += [ip for ip, mac in self._arp_table.items() if mac in macs and ip not in held]
            addrs = [address_str(ip) for ip in held]
            addrs += [address_str(ip) for ip, mac in self._ndp.neighbors.items()
                      if mac in macs and ip not in self._virtual6]
            out.append({
                "port": n, "peer": info.peer, "macs": sorted(m.hex(":") for m in macs),
                "addresses": addrs, "frames_in": info.frames_in, "frames_out": info.frames_out,
                "forwarded": info.forwarded, "drops": info.drops,
            })
        return out

    def _switch_on(self) -> None:
        """A second port appeared: switch from now on. What the stack knew of guests came
        from port 0, so their MACs are learned there; a port 0 whose guest left meanwhile is
        gone at once (the minute's grace is the single guest's rule)."""
        sw = self._switch
        if sw.active:
            return
        sw.active = True
        self.counters["switch_on"] += 1
        # Frames a fault rule holds back came from port 0 too (the only one until now).
        for mac in [*self._arp_table.values(), *self._ndp.neighbors.values(), self.guest_mac,
                    *self._faults.held_senders()]:
            if mac is not None:
                sw.learn(mac, 0)
        if 0 not in sw.ports and self._link_down_at is None and sw.macs:
            # A guest sent on port 0 with no link event before it (an embedder's stream, an
            # older journal): it is there all the same.
            sw.ports[0] = PortInfo(0, "guest")
        if 0 not in sw.ports and self._link_down_at is not None:
            self._link_down_at = None
            self._port_gone(0)

    def _port_link(self, port: int, up: bool, peer: str) -> None:
        if up:
            self._switch_on()
            self._switch.arrive(port, peer)
            log.info("guest port %d up: %s", port, peer)
        elif self._switch.active:
            self._port_gone(port)
            log.info("guest port %d down", port)

    def _port_gone(self, port: int) -> None:
        """Port ``port`` went away: its MACs go, and the flows of the addresses they held
        are reset (the guest is not there to hear of it). Leases stay: a guest that comes
        back with its MAC gets its address again."""
        gone = self._switch.leave(port)
        if not gone:
            return
        ips = [ip for ip, mac in self._arp_table.items() if mac in gone]
        ips += [ip for ip, mac in self._ndp.neighbors.items()
                if mac in gone and ip not in self._virtual6]
        for ip in ips:
            self._forget_guest(ip, f"port {port} left")

    def _port_frames(self, port: int, run: bytes, now_ns: int, filtered: bool = False) -> None:
        """A burst from switch port ``port``: learn, switch what is for other ports, and hand
        the stack its share (one run, through the GRO path). Frames to other ports leave
        before anything the stack answers."""
        if port == 0:
            self._link_down_at = None
        if self._faults.active and not filtered:
            run = bytes(self._faults.filter_run(run, OUT, now_ns))
        sw = self._switch
        info = sw.port(port)
        macs = self._our_macs
        mv = memoryview(run)
        ours = bytearray()
        outs: dict[int, bytearray] = {}
        off = 0
        for start, off in frame_spans(mv):
            frame = mv[start:off]
            info.frames_in += 1
            if off - start < weth.HEADER_LEN:
                ours += mv[start - 4 : off]  # the stack counts it malformed
                continue
            dst = bytes(frame[:6])
            sw.learn(bytes(frame[6:12]), port)
            if dst in macs and not dst[0] & 1:
                ours += mv[start - 4 : off]
                continue
            targets = sw.targets(port, dst, now_ns)
            if targets is None:
                continue  # a flood past the port's budget
            if dst in macs:
                ours += mv[start - 4 : off]
            if targets:
                info.forwarded += 1
                for q in targets:
                    buf = outs.get(q)
                    if buf is None:
                        buf = outs[q] = bytearray()
                    buf += mv[start - 4 : off]
        if off < len(mv):
            ours += mv[off:]  # a truncated tail: the stack counts it
        if outs:
            self._emit_port_runs(outs)
        if ours:
            self._guest_frames(bytes(ours), now_ns)

    def _route_out(self, frames: bytes | bytearray) -> dict[int, bytearray]:
        """The stack's frames (a run) by the ports they go to."""
        sw = self._switch
        mv = memoryview(frames)
        outs: dict[int, bytearray] = {}
        for start, end in frame_spans(mv):
            targets = sw.out_targets(bytes(mv[start : start + 6]))
            if not targets:
                self.counters["switch_no_port"] += 1
            for q in targets:
                buf = outs.get(q)
                if buf is None:
                    buf = outs[q] = bytearray()
                buf += mv[start - 4 : end]
        return outs

    def _emit_port_runs(self, outs: dict[int, bytearray]) -> None:
        """One frame effect per port, in port order: port 0's as the single guest's always
        were, the others' naming their port."""
        ports = self._switch.ports
        for q in sorted(outs):
            run = bytes(outs[q])
            info = ports.get(q)
            if info is not None:
                info.frames_out += len(split_run(run))
            if q:
                self._out.append(PortSendFrames(q, run))
            elif self._runs:
                self._out.append(SendFrames(run))
            else:
                self._out.extend([SendFrame(bytes(f)) for f in split_run(run)])

    # ----------------------------------------------------------------------------- output
    #
    # Frames to the guest gather in ``_parts`` (runs made as bytes: a TCP run, built in place)
    # and then ``_frames`` (a run being built); they become effects before any other effect is
    # added and at the end of ``handle``, so frames and host actions keep the order in which
    # they were made: one SendFrames per group under FrameRuns, else one SendFrame each,
    # exactly as journals made before runs existed recorded them. A group of one TCP run (a
    # host read's segments, the bulk case) goes out as the very bytes tcp_frames made.

    def _flush_frames(self) -> None:
        frames = self._frames
        parts = self._parts
        if parts:
            if frames:
                parts.append(bytes(frames))
                frames.clear()
            run = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
        else:
            run = bytes(frames)
            frames.clear()
        if self._faults.active:
            kept = self._faults.filter_run(run, IN, self._now_ns)
            if not kept:
                return
            run = bytes(kept)
        if self._switch.active:
            self._emit_port_runs(self._route_out(run))
        elif self._runs:
            self._out.append(SendFrames(run))
        else:
            self._out.extend([SendFrame(bytes(f)) for f in split_run(run)])

    def _emit(self, effect: Effect) -> None:
        if self._parts or self._frames:
            self._flush_frames()
        self._out.append(effect)

    def _emit_all(self, effects: list[Effect]) -> None:
        if effects:
            if self._parts or self._frames:
                self._flush_frames()
            self._out.extend(effects)

    def send_ip(self, src: bytes, dst: bytes, proto: int, payload: bytes) -> None:
        """Queue one IPv4 datagram (or IPv6 packet, for 16-byte addresses) from a virtual or
        NATed address to the guest."""
        if len(dst) == 16:
            self._send_ip6(src, dst, proto, payload)
            return
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        mac = self._mac_for(dst)
        if len(payload) + wip.MIN_HEADER <= self._mtu:
            packet = wip.build_ipv4(src, dst, proto, payload, ident=self._ip_id)
            self._send_eth(mac, weth.ETH_P_IP, packet)
            return
        self.counters["ipv4_fragmented"] += 1
        for offset, more, chunk in fragment(payload, self._mtu):
            packet = wip.build_ipv4(
                src, dst, proto, chunk, ident=self._ip_id, mf=more, frag_offset=offset
            )
            self._send_eth(mac, weth.ETH_P_IP, packet)

    def send_tcp(
        self,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        window: int,
        payload: bytes | bytearray | memoryview,
        start: int,
        length: int,
        mss: int,
        flags: int,
        last_flags: int,
    ) -> None:
        """Queue the TCP segments (no options) carrying ``payload[start:start + length]`` to
        the guest, at most ``mss`` bytes each; the last has ``last_flags``, the others
        ``flags``. Built in place as one run (:func:`slirptrio.wire.fast.tcp_frames`); over IPv6
        (16-byte addresses) only when no segment needs fragmenting, else one segment at a time
        by the codecs (which fragment as :meth:`_send_ip6` does)."""
        if len(dst) == 16:
            if wip6.HEADER_LEN + 20 + min(mss, length) <= self._mtu:
                # _mac6_for, its common case (a neighbour's unicast address) inline
                mac = self._ndp.neighbors.get(dst) if dst[0] != 0xFF else None
                head = b"".join((
                    self._mac6_for(dst) if mac is None else mac, self._mac6, _IP6_TCP_HEAD, src,
                    dst,
                ))
                if self._frames:
                    self._parts.append(bytes(self._frames))
                    self._frames.clear()
                self._parts.append(wfast.tcp_frames(
                    head, 0, sport, dport, seq, ack, window, payload, start, length, mss, flags,
                    last_flags,
                ))
                self.counters["frames_out"] += -(-length // mss) if length else 1
                return
            view = memoryview(payload)
            end = start + length
            pos = start
            while True:
                n = min(mss, end - pos)
                last = pos + n >= end
                seg = build_tcp(
                    src, dst, sport, dport, seq, ack, last_flags if last else flags, window,
                    view[pos : pos + n],
                )
                self.send_ip(src, dst, wip.IPPROTO_TCP, seg)
                if last:
                    return
                pos += n
                seq = (seq + n) & 0xFFFFFFFF
        head = b"".join((
            self._mac_for(dst), self._our_mac, self._ip4_tcp_head, src, dst,
        ))
        if self._frames:
            self._parts.append(bytes(self._frames))
            self._frames.clear()
        self._parts.append(wfast.tcp_frames(
            head, (self._ip_id + 1) & 0xFFFF, sport, dport, seq, ack, window, payload, start,
            length, mss, flags, last_flags,
        ))
        n = -(-length // mss) if length else 1
        self._ip_id = (self._ip_id + n) & 0xFFFF
        self.counters["frames_out"] += n

    def _send_eth(
        self, dst_mac: bytes, ethertype: int, payload: bytes, src_mac: bytes | None = None
    ) -> None:
        self.counters["frames_out"] += 1
        frame = weth.build_ethernet(
            dst_mac, self._our_mac if src_mac is None else src_mac, ethertype, payload
        )
        frames = self._frames
        frames += len(frame).to_bytes(4, "big")
        frames += frame

    def _send_ip6(
        self, src: bytes, dst: bytes, proto: int, payload: bytes, hop_limit: int = 64
    ) -> None:
        mac = self._mac6_for(dst)
        if wip6.HEADER_LEN + len(payload) <= self._mtu:
            packet = wip6.build_ipv6(src, dst, proto, payload, hop_limit=hop_limit)
            self._send_eth(mac, weth.ETH_P_IPV6, packet, self._mac6)
            return
        # Fragment (RFC 8200 4.5): every piece but the last a multiple of 8 bytes.
        self.counters["ipv6_fragmented"] += 1
        self._ip6_ident = (self._ip6_ident + 1) & 0xFFFFFFFF
        step = (self._mtu - wip6.HEADER_LEN - wip6.FRAG_HEADER_LEN) & ~7
        view = memoryview(payload)
        for off in range(0, len(view), step):
            more = off + step < len(view)
            chunk = wip6.fragment_header(proto, off, more, self._ip6_ident) + bytes(
                view[off : off + step]
            )
            packet = wip6.build_ipv6(src, dst, wip6.IPPROTO_FRAGMENT, chunk, hop_limit=hop_limit)
            self._send_eth(mac, weth.ETH_P_IPV6, packet, self._mac6)

    def _send_ndp(self, src: bytes, dst: bytes, dst_mac: bytes, msg: bytes) -> None:
        packet = wip6.build_ipv6(src, dst, wip6.IPPROTO_ICMPV6, msg, hop_limit=255)
        self._send_eth(dst_mac, weth.ETH_P_IPV6, packet, self._mac6)

    def _mac6_for(self, ip: bytes) -> bytes:
        if ip[0] == 0xFF:
            return wip6.multicast_mac(ip)
        mac = self._ndp.mac_for(ip)
        if mac is not None:
            return mac
        return self.guest_mac if self.guest_mac is not None else weth.BROADCAST_MAC

    def _owned_mac6(self, ip: bytes) -> bytes | None:
        """The MAC the stack answers for its IPv6 address ``ip``; None if not its own."""
        if ip in self._virtual6:
            return virtual_mac6(ip)
        if any(a == ip for a, _port in self._guestfwd) and ip not in self._ndp.neighbors:
            return virtual_mac6(ip)  # a guest forward, unless a guest has the address
        return None

    def _mac_for(self, ip: bytes) -> bytes:
        mac = self._arp_table.get(ip)
        if mac is not None:
            return mac
        # One guest per stack: its last known MAC is the best answer for any address of ours.
        return self.guest_mac if self.guest_mac is not None else weth.BROADCAST_MAC

    # ------------------------------------------------------------------------------ input

    def _drop(self, reason: str, detail: str = "") -> None:
        self.counters["drop_" + reason] += 1
        log.debug("dropped frame: %s %s", reason, detail)

    def _guest_frames(self, run: bytes, now_ns: int) -> None:
        """A burst of guest frames (a run), each TCP flow's segments coalesced (GRO).

        :func:`~slirptrio.wire.fast.gro_scan` parses and checks every frame in one go and
        gathers each flow's in-order data segments into one segment carrying all their bytes
        (and a row of advancing pure ACKs into its last one), so a burst costs one TCP step,
        one ACK decision and one host send per flow. Other frames take the general path, in
        their place. All of it depends only on the run, so replay decides the same.

        Frames to another station's MAC are counted and left, as the general path does. The
        general path's checks before TCP (IPv4 enabled, martian source or destination, the
        network's broadcast, a guest's address as destination) hold for a whole item only
        when its addresses pass them; a run with any TCP item of ours whose addresses do not
        is taken frame by frame, as without GRO.
        """
        items = wfast.gro_scan(run)
        macs = self._our_macs
        sources6: set[bytes] | None = None
        for item in items:
            if item[0] == wfast.KIND_TCP and item[13] in macs:
                if len(item[2]) == 16:
                    if sources6 is None:
                        sources6 = ({item[2]} if len(items) == 1 else
                                    {i[2] for i in items if i[0] == wfast.KIND_TCP})
                    plain = self._tcp6_addresses_plain(item[2], item[3], sources6)
                else:
                    plain = self._tcp_addresses_plain(item[2], item[3])
                if not plain:
                    self.counters["gro_runs_declined"] += 1
                    self._others_ok = False
                    self._frames_one_by_one(run, now_ns)
                    return
        counters = self.counters
        fast_frames = 0
        mv: memoryview | None = None
        for item in items:
            kind = item[0]
            try:
                if kind == wfast.KIND_TCP:
                    count = item[11]
                    fast_frames += count
                    if item[13] not in macs:  # as _guest_frame: another station's frames
                        counters["drop_not_for_us"] += count
                        continue
                    if count > 1:
                        counters["tcp_gro_merged"] += count - 1
                        if item[10]:
                            counters["tcp_gro_segments"] += count
                    if len(item[2]) == 16:
                        self.guest_mac = item[1]  # as _ipv6 learns
                        self._ndp.learn(item[2], item[1], now_ns)
                    else:
                        if self._arp_table.get(item[2]) == item[1]:
                            self.guest_mac = item[1]  # _learn, for a known neighbour
                        else:
                            self._learn(item[1], item[2])
                    self.tcp.segment(
                        (item[2], item[4], item[3], item[5]),
                        TcpSegment(item[4], item[5], item[6], item[7], item[8], item[9],
                                   payload=item[10]),
                        now_ns,
                        item[12],
                    )
                elif kind == wfast.KIND_TRUNCATED:
                    self._drop("run_truncated", f"{item[2] - item[1]} bytes")
                else:
                    if mv is None:
                        mv = memoryview(run)
                        self._others_ok = False  # the general path: any component's timers
                    self._guest_frame(mv[item[1] : item[2]], now_ns)
            except Exception as exc:
                # A bug, as the door would say, but the burst's other frames go on: their
                # effects are kept, this frame's is a CoreError in its place.
                counters["core_exceptions"] += 1
                log.error("core raised %s on a frame of a burst (GuestFrames)",
                          type(exc).__name__, exc_info=True)
                self._emit(CoreError(type(exc).__name__, error_message(exc)))
        counters["frames_in"] += fast_frames

    def _tcp_addresses_plain(self, src: bytes, dst: bytes) -> bool:
        """Whether :meth:`_ipv4` hands a TCP segment from ``src`` to ``dst`` to the TCP NAT
        without a word (so the GRO path may too)."""
        return (
            self._ipv4_on
            and (_FORWARDABLE4[src[0]] or not classify_ipv4(src) or self._in_net(src))
            and (_FORWARDABLE4[dst[0]] or not classify_ipv4(dst) or self._in_net(dst))
            and dst != self._net_broadcast
            and dst not in self._arp_table
            and not self._dhcp.holds(dst)
        )

    def _tcp6_addresses_plain(self, src: bytes, dst: bytes, sources: set[bytes]) -> bool:
        """Whether :meth:`_ipv6` hands a TCP segment from ``src`` to ``dst`` to the TCP NAT
        without a word (so the GRO path may too). ``sources``: every TCP source of the run,
        which the run's own frames may make neighbors before a segment to them comes."""
        return (
            self._ipv6_on
            and src[0] != 0xFF
            and src != _UNSPECIFIED6
            and not (src[0] == 0 and classify_ipv6(src))
            and (dst in self._virtual6 or (dst not in self._ndp.neighbors and dst not in sources))
        )

    def _frames_one_by_one(self, run: bytes, now_ns: int) -> None:
        """Each frame of a run through the general path (a core exception is that frame's
        CoreError, as in :meth:`_guest_frames`)."""
        mv = memoryview(run)
        n = len(mv)
        off = 0
        for start, off in frame_spans(mv):
            if off > start:
                try:
                    self._guest_frame(mv[start:off], now_ns)
                except Exception as exc:
                    self.counters["core_exceptions"] += 1
                    log.error("core raised %s on a frame of a burst (GuestFrames)",
                              type(exc).__name__, exc_info=True)
                    self._emit(CoreError(type(exc).__name__, error_message(exc)))
        if off < n:
            self._drop("run_truncated", f"{n - off} bytes")

    def _guest_frame(self, frame: bytes | memoryview, now_ns: int) -> None:
        self.counters["frames_in"] += 1
        try:
            dst, src, ethertype, payload = weth.parse_ethernet(frame)
            if dst not in self._our_macs:  # frame_for_us, inlined: this runs per frame
                self.counters["drop_not_for_us"] += 1
                return
            if src[0] & 1:
                self._drop("eth_multicast_source")
                return
            if ethertype == weth.ETH_P_IP:
                if self._ipv4_on:
                    self._ipv4(src, payload, now_ns)
                else:
                    self._drop("ipv4_disabled")
            elif ethertype == weth.ETH_P_ARP:
                if self._ipv4_on:
                    self._arp(src, payload)
                else:
                    self._drop("ipv4_disabled")
            elif ethertype == weth.ETH_P_IPV6:
                if self._ipv6_on:
                    self._ipv6(src, payload, now_ns)
                else:
                    self._drop("ipv6_disabled")
            else:
                self._drop("unknown_ethertype", hex(ethertype))
        except MalformedFrame as exc:
            self._drop(exc.reason, str(exc))

    def _in_net(self, ip: bytes) -> bool:
        return (int.from_bytes(ip, "big") & self._netmask) == self._net

    def _learn(self, mac: bytes, ip: bytes) -> None:
        self.guest_mac = mac
        if self._arp_table.get(ip) == mac:
            return  # known already (the common case: every frame of a flow)
        if ip != _ZERO_IP and self._in_net(ip) and ip not in self._virtual_ips:
            table = self._arp_table
            if ip not in table and len(table) >= ARP_TABLE_MAX:
                del table[next(iter(table))]
                self.counters["arp_table_evicted"] += 1
            table[ip] = mac

    def _forget_guest(self, ip: bytes | None, why: str) -> None:
        """Reset and free every flow of the guest at ``ip`` (None: all flows)."""
        n = self.tcp.forget_guest(ip)
        closes = self.udp.forget_guest(ip) + self.echo.forget_guest(ip)
        self._emit_all(closes)
        if n or closes:
            log.info(
                "%s: reset %d TCP and closed %d other flows of %s", why, n, len(closes),
                "the guest" if ip is None else address_str(ip),
            )

    def _arp(self, src_mac: bytes, payload: memoryview) -> None:
        pkt = warp.parse_arp(payload)
        self._learn(pkt.sender_mac, pkt.sender_ip)
        if pkt.op != warp.ARP_REQUEST:
            self.counters["arp_other"] += 1
            return
        target = pkt.target_ip
        if target not in self._virtual_ips:
            if self.guest_holds(target):
                # A guest's (even if a guest forward names it): that guest answers, not us.
                self.counters["arp_guest_address"] += 1
                return
            if not any(ip == target for ip, _port in self._guestfwd):
                # Never answer for other addresses: the guest probes its own (DAD) this way.
                self.counters["arp_ignored"] += 1
                return
        self.counters["arp_replies"] += 1
        reply = warp.ArpPacket(
            op=warp.ARP_REPLY,
            sender_mac=virtual_mac(pkt.target_ip),
            sender_ip=pkt.target_ip,
            target_mac=pkt.sender_mac,
            target_ip=pkt.sender_ip,
        )
        self._send_eth(src_mac, weth.ETH_P_ARP, warp.build_arp(reply))

    def _ipv4(self, src_mac: bytes, payload: memoryview, now_ns: int) -> None:
        hdr, body = wip.parse_ipv4(payload)
        src, dst = hdr.src, hdr.dst
        if classify_ipv4(src) and not self._in_net(src) and not (
            src == _ZERO_IP and self._to_dhcp_server(hdr, body)
        ):
            # No node sends from these (RFC 1122 3.2.1.3, RFC 1812 5.3.7); 0.0.0.0 only a
            # DHCP client without an address. Never NATed, never answered.
            self._drop("martian_src", address_str(src))
            return
        self._learn(src_mac, src)
        if dst in self._arp_table or self._dhcp.holds(dst):  # guest_holds, inlined
            # Another guest's, reached through us only by a stale or forged neighbor entry:
            # never an alias of the host, and the other guest is not ours to answer for.
            self._drop("guest_address", address_str(dst))
            return
        reason = classify_ipv4(dst)
        if reason and not self._in_net(dst) and not self._serves(hdr, body):
            self._martian(hdr, body, reason)
            return
        if hdr.mf or hdr.frag_offset:
            whole = self._reasm.add(hdr, body, now_ns)
            if whole is None:
                return
            self.counters["ipv4_reassembled"] += 1
            body = memoryview(whole)
        proto = hdr.proto
        if proto == wip.IPPROTO_UDP:
            self._udp(src_mac, hdr, body, now_ns)
        elif proto == wip.IPPROTO_ICMP:
            self._icmp(hdr, body, now_ns)
        elif proto == wip.IPPROTO_TCP:
            if hdr.dst == self._net_broadcast:
                self._drop("tcp_broadcast")  # no connection to a broadcast, and no RST from one
                return
            self.tcp.guest_segment(hdr.src, hdr.dst, body, now_ns)
        else:
            self._drop("ipv4_unknown_protocol", str(proto))

    def _serves(self, hdr: wip.Ipv4Header, body: memoryview) -> bool:
        """Whether a datagram to a martian address is for the stack itself: DHCP to the
        limited broadcast (unfragmented; the UDP parser checks the rest)."""
        return hdr.dst == _LIMITED_BROADCAST and self._to_dhcp_server(hdr, body)

    @staticmethod
    def _to_dhcp_server(hdr: wip.Ipv4Header, body: memoryview) -> bool:
        """Whether a datagram is UDP to the DHCP server port (unfragmented)."""
        return (
            hdr.proto == wip.IPPROTO_UDP
            and not (hdr.mf or hdr.frag_offset)
            and len(body) >= 4
            and (body[2] << 8 | body[3]) == DHCP_SERVER_PORT
        )

    def _martian(self, hdr: wip.Ipv4Header, body: memoryview, reason: str) -> None:
        """Drop a datagram to a martian destination; answer "administratively prohibited"
        where the guest expects an answer (unicast-looking destinations; not for fragments
        past the first, ICMP other than echo requests, RSTs or a source of 0.0.0.0)."""
        self._drop("martian_" + reason, address_str(hdr.dst))
        if reason not in ANSWERED or hdr.frag_offset or hdr.src == _ZERO_IP:
            return
        proto = hdr.proto
        if proto == wip.IPPROTO_ICMP and (not body or body[0] != wicmp.ECHO_REQUEST):
            return
        if proto == wip.IPPROTO_TCP and len(body) >= 14 and body[13] & 0x04:
            return
        self.counters["icmp_martian_unreachable"] += 1
        quoted = icmp.quote(hdr, len(body), body)
        msg = icmp.error_message(icmp.DEST_UNREACH, icmp.UNREACH_ADMIN, quoted)
        self.send_ip(self._host_ip, hdr.src, wip.IPPROTO_ICMP, msg)

    def _udp(self, src_mac: bytes, hdr: wip.Ipv4Header, body: memoryview, now_ns: int) -> None:
        sport, dport, data = wudp.parse_udp(body, hdr.src, hdr.dst)
        if dport == DHCP_SERVER_PORT and (
            hdr.dst in (_LIMITED_BROADCAST, self._net_broadcast, self._host_ip)
        ):
            self._dhcp_request(src_mac, data, now_ns)
            return
        if dport in (DHCP_SERVER_PORT, DHCP_CLIENT_PORT):
            self._drop("udp_dhcp_elsewhere")
            return
        if dport == TFTP_PORT and hdr.dst == self._host_ip:
            # Served here, as libslirp, restrict=on or not; never NATed to the host.
            self._emit_all(self.tftp.guest_datagram(hdr.src, sport, data, now_ns))
            return
        self._emit_all(self.udp.guest_datagram(hdr, sport, dport, data, body, now_ns))

    def _dhcp_request(self, src_mac: bytes, data: memoryview, now_ns: int) -> None:
        self._dhcp.last_bound = None
        reply = self._dhcp.handle(data, src_mac, now_ns)
        bound = self._dhcp.last_bound
        if bound is not None:
            self._dhcp.last_bound = None
            ip, mac, previous = bound
            if previous is None:
                previous = self._arp_table.get(ip)
            if previous is not None and previous != mac:
                self.counters["dhcp_address_moved"] += 1
                self._forget_guest(ip, f"{address_str(ip)} leased to {mac.hex(':')}")
                self._arp_table.pop(ip, None)
        if reply is None:
            self.counters["dhcp_no_reply"] += 1
            return
        udp = wudp.build_udp(
            self._host_ip, reply.dst_ip, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, reply.payload
        )
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        packet = wip.build_ipv4(
            self._host_ip, reply.dst_ip, wip.IPPROTO_UDP, udp, ident=self._ip_id
        )
        self._send_eth(reply.dst_mac, weth.ETH_P_IP, packet)

    def _icmp(self, hdr: wip.Ipv4Header, body: memoryview, now_ns: int) -> None:
        type_, _code, rest, data = wicmp.parse_icmp(body)
        if type_ != wicmp.ECHO_REQUEST:
            self._drop("icmp_not_supported", f"type {type_}")
            return
        if hdr.dst not in self._virtual_ips:
            if self._in_net(hdr.dst) and self._loopback == "":
                self._drop("icmp_echo_no_host")
                return
            ident = int.from_bytes(rest[:2], "big")
            seq = int.from_bytes(rest[2:], "big")
            self._emit_all(self.echo.guest_echo(hdr, ident, seq, data, body, now_ns))
            return
        self.counters["icmp_echo_replies"] += 1
        reply = wicmp.build_icmp(wicmp.ECHO_REPLY, 0, rest, bytes(data))
        self.send_ip(hdr.dst, hdr.src, wip.IPPROTO_ICMP, reply)

    # ------------------------------------------------------------------------------- IPv6

    def _in_net6(self, ip: bytes) -> bool:
        return (int.from_bytes(ip, "big") >> self._shift6) == (self._net6 >> self._shift6)

    def _ipv6(self, src_mac: bytes, payload: memoryview, now_ns: int) -> None:
        hdr, body = wip6.parse_ipv6(payload)
        src = hdr.src
        if src[0] == 0xFF or (src[0] == 0 and src != _UNSPECIFIED6 and classify_ipv6(src)):
            # Multicast, ::1, IPv4-mapped or -compatible: no node sends from these (RFC 4291
            # 2.5.3, 2.7; RFC 6890). :: is vetted below, once the message type is known.
            self._drop("martian_src", address_str(src))
            return
        if hdr.dst in self._ndp.neighbors and hdr.dst not in self._virtual6:  # guest_holds
            self._drop("guest_address", address_str(hdr.dst))
            return
        self.guest_mac = src_mac
        self._ndp.learn(src, src_mac, now_ns)
        if hdr.fragment:
            if hdr.mf or hdr.frag_offset:
                # The reassembled payload may be at most 65535 less the unfragmentable
                # extension headers (RFC 8200 4.5).
                unfrag = hdr.header_len - wip6.HEADER_LEN - wip6.FRAG_HEADER_LEN
                whole = self._reasm.add(hdr, body, now_ns, max_end=0xFFFF - unfrag)
                if whole is None:
                    return
                self.counters["ipv6_reassembled"] += 1
                body = memoryview(whole)
            else:
                self.counters["ipv6_atomic_fragment"] += 1
            proto, off = wip6.walk_extensions(hdr.proto, body)
            body = body[off:]
            hdr = dataclasses.replace(hdr, proto=proto)
        proto = hdr.proto
        if proto == wip6.IPPROTO_ICMPV6:
            self._icmpv6(src_mac, hdr, body, now_ns)
        elif hdr.src == _UNSPECIFIED6:  # only NDP and MLD may come from ::
            self._drop("martian_src", "::")
        elif proto == wip6.IPPROTO_UDP:
            self._udp6(src_mac, hdr, body, now_ns)
        elif proto == wip6.IPPROTO_TCP:
            self.tcp.guest_segment(hdr.src, hdr.dst, body, now_ns)
        elif proto == wip6.IPPROTO_NONE:
            self.counters["ipv6_no_next_header"] += 1
        else:
            self._drop("ipv6_unknown_protocol", str(proto))

    def _udp6(self, src_mac: bytes, hdr: wip6.Ipv6Header, body: memoryview, now_ns: int) -> None:
        sport, dport, data = wudp.parse_udp(body, hdr.src, hdr.dst)
        if dport == wdhcp6.SERVER_PORT and hdr.dst in (wdhcp6.ALL_SERVERS, self._ll6):
            reply = self._dhcp6.handle(data)
            if reply is None:
                return
            udp = wudp.build_udp(self._ll6, hdr.src, wdhcp6.SERVER_PORT, sport, reply)
            self._send_ip6(self._ll6, hdr.src, wip6.IPPROTO_UDP, udp)
            return
        if dport in (wdhcp6.SERVER_PORT, wdhcp6.CLIENT_PORT):
            self._drop("udp_dhcpv6_elsewhere")
            return
        if dport == TFTP_PORT and hdr.dst == self._host6:
            self._emit_all(self.tftp.guest_datagram(hdr.src, sport, data, now_ns))
            return
        self._emit_all(self.udp.guest_datagram(hdr, sport, dport, data, body, now_ns))

    def _icmpv6(self, src_mac: bytes, hdr: wip6.Ipv6Header, body: memoryview, now_ns: int) -> None:
        type_, _code, msg = wicmp6.parse_icmpv6(body, hdr.src, hdr.dst)
        if hdr.src == _UNSPECIFIED6 and type_ not in _FROM_UNSPECIFIED:
            self._drop("martian_src", f":: (ICMPv6 type {type_})")  # an echo from :: too
            return
        if wicmp6.ROUTER_SOLICIT <= type_ <= wicmp6.REDIRECT:
            if type_ in (wicmp6.ROUTER_ADVERT, wicmp6.REDIRECT):
                self._drop("icmpv6_not_from_guest", f"type {type_}")
                return
            self._ndp.guest_message(type_, hdr, msg, src_mac, now_ns)
            return
        if type_ in _MLD:
            self.counters["icmpv6_mld"] += 1  # one router on the link: nothing to listen for
            return
        if type_ != wicmp6.ECHO_REQUEST:
            self._drop("icmpv6_not_supported", f"type {type_}")
            return
        dst = hdr.dst
        if self._owned_mac6(dst) is not None:
            self.counters["icmpv6_echo_replies"] += 1
            reply = wicmp6.build_icmpv6(dst, hdr.src, wicmp6.ECHO_REPLY, 0, msg)
            self._send_ip6(dst, hdr.src, wip6.IPPROTO_ICMPV6, reply)
            return
        if len(msg) < 4:
            self._drop("icmpv6_short_echo")
            return
        if dst[0] == 0xFF or self._in_net6(dst) or wip6.is_link_local(dst):
            self._drop("icmpv6_echo_no_host")
            return
        ident = int.from_bytes(msg[:2], "big")
        seq = int.from_bytes(msg[2:4], "big")
        self._emit_all(self.echo.guest_echo(hdr, ident, seq, msg[4:], body, now_ns))



def _ip4_tcp_head() -> bytes:
    """An IPv4 header template without options (protocol 6) up to the addresses, after the
    Ethernet addresses: ethertype, version/IHL, TOS, length, id, flags/offset, TTL, protocol,
    sum. Built per stack: the TTL is read when the stack is built, as replay sets it."""
    return bytes((0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, wip.DEFAULT_TTL, 6, 0, 0))

_FWD_EVENTS = (TcpInbound, UdpInbound, GuestFwdAdd, GuestFwdRemove, HostFwdChange)
# First bytes whose every IPv4 address classify_ipv4 lets through (so the GRO path's check
# asks it only for the others; tests/test_stack.py holds the table to the function).
_FORWARDABLE4 = tuple(
    all(not classify_ipv4(bytes((a, b, c, d))) for b, c, d in ((0, 0, 0), (255, 255, 255),
                                                               (0, 0, 1), (1, 2, 3)))
    for a in range(256)
)
_TCP_EVENTS = (
    TcpConnected, TcpConnectFailed, TcpData, TcpDataSent, TcpSent, TcpEof, TcpReset,
)
_UDP_EVENTS = (UdpReceived, UdpError, DnsUpstreams)
_ICMP_EVENTS = (IcmpEchoReply, IcmpEchoError, IcmpUnavailable)
_TFTP_EVENTS = (TftpOpened, TftpChunk)


def address_str(ip: bytes) -> str:
    """Text of a packed IPv4 or IPv6 address."""
    return str(ip_address(ip))

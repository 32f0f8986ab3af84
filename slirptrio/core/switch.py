"""The switch in front of the stack: several guests as ports of one core (issue 22).

Theory of operation
-------------------
Every guest transport is a port. Port 0 is the guest of old (its frames enter as
:class:`~slirptrio.core.events.GuestFrames` and leave as ``SendFrames``); ports 1 and up arrive
with :class:`~slirptrio.core.events.PortLink` and carry their number on every frame both ways.
The switch stays off until a second port appears, so a session with one guest is switched
exactly as before (nothing learned, nothing flooded).

Once on, it is a learning bridge, decided here from the frames alone:

* a frame's unicast source MAC is learned on the port it came from (a MAC seen on another port
  moves there; at most :data:`MAX_MACS`, the least recently learned go first);
* a frame for the stack (:meth:`~slirptrio.core.stack.Stack.frame_for_us`) goes to the stack,
  which is router, NAT, DHCP and DNS for every port; broadcast and multicast go to the stack
  (when it serves them) and are flooded to every other port;
* unicast to a MAC learned on another port is forwarded to that port alone, as it is (no NAT:
  the guests share one L2 segment); to a MAC learned on the port it came from it is dropped
  (``switch_same_port``: a hub behind that port delivered it already); to an unknown MAC it is
  flooded to every other port;
* ``isolate=on``: nothing goes from a guest port to another (``switch_isolated``); each guest
  sees only the router.

Frames the stack sends go to the port their destination MAC was learned on, or to every port
(broadcast, multicast, unknown). A port that goes away takes its MACs with it; the stack resets
the flows of the addresses those MACs held (see ``Stack._port_gone``).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, ClassVar

from slirptrio.core import snapshot as snap

MAX_MACS = 1024
"""MACs the switch remembers, all ports together."""
MAX_PORTS = 64
"""Ports that may be up at once (the shell refuses more connections; each further port's
queue toward its guest is 1/8 of port 0's, so all of them together hold at most 8 times it)."""
FLOOD_WINDOW_NS = 100_000_000
FLOOD_PER_WINDOW = 1000
"""Frames one port may flood (broadcast, multicast, unknown unicast) to the others per
``FLOOD_WINDOW_NS``: a guest that floods fills the other guests' queues only so far (about
10,000 frames/s); past it its floods are dropped (``switch_flood_limited``), broadcasts to the
stack included, while its unicast to the stack and to known guests still goes."""


@dataclass(slots=True)
class PortInfo:
    """One port that is up, and what crossed it."""

    port: int
    peer: str
    frames_in: int = 0
    frames_out: int = 0
    forwarded: int = 0  # frames from this port switched to other ports
    drops: int = 0  # frames from this port dropped by the switch (same port, isolate, floods)
    flood_window_ns: int = 0  # when the current flood budget window began
    flooded: int = 0  # frames flooded in that window


class Switch:
    """MAC learning and the forwarding decision for every port."""

    def __init__(self, isolate: bool, counters: collections.Counter[str]) -> None:
        self.isolate = isolate
        self.counters = counters
        self.active = False
        self.ports: dict[int, PortInfo] = {}
        self.macs: dict[bytes, int] = {}  # MAC -> port, least recently learned first

    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({"isolate", "counters"})

    def snapshot_state(self) -> dict[str, Any]:
        """Whether switching is on, the ports up and the MAC table, in order."""
        return {
            "active": self.active,
            "ports": [snap.dump_slots(p) for p in self.ports.values()],
            "macs": [[mac, port] for mac, port in self.macs.items()],
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self.active = state["active"]
        infos = [snap.load_slots(PortInfo, raw) for raw in state["ports"]]
        self.ports = {p.port: p for p in infos}
        self.macs = {mac: port for mac, port in state["macs"]}

    # --------------------------------------------------------------------------- ports

    def arrive(self, port: int, peer: str) -> PortInfo:
        """Port ``port`` is up (again: its figures start over)."""
        info = PortInfo(port, peer)
        self.ports[port] = info
        self.counters["switch_port_up"] += 1
        return info

    def port(self, port: int) -> PortInfo:
        """The port's record; a port that sends without having arrived is up from now."""
        info = self.ports.get(port)
        if info is None:
            info = self.arrive(port, "")
        return info

    def leave(self, port: int) -> set[bytes]:
        """Port ``port`` is gone: forget it and the MACs learned on it (returned)."""
        if self.ports.pop(port, None) is not None:
            self.counters["switch_port_down"] += 1
        gone = {mac for mac, p in self.macs.items() if p == port}
        for mac in gone:
            del self.macs[mac]
        return gone

    def macs_of(self, port: int) -> list[bytes]:
        """The MACs learned on ``port``, in learning order."""
        return [mac for mac, p in self.macs.items() if p == port]

    # ------------------------------------------------------------------------ decisions

    def learn(self, mac: bytes, port: int) -> None:
        """``mac`` sent from ``port`` (multicast sources are never learned)."""
        if mac[0] & 1:
            return
        table = self.macs
        old = table.get(mac)
        if old == port:
            return
        if old is not None:
            del table[mac]  # moved: it goes to the end, as newly learned
            self.counters["switch_mac_moved"] += 1
        elif len(table) >= MAX_MACS:
            del table[next(iter(table))]
            self.counters["switch_mac_evicted"] += 1
        table[mac] = port

    def targets(self, port: int, dst: bytes, now_ns: int = 0) -> list[int] | None:
        """The ports a guest frame from ``port`` to ``dst`` is switched to at ``now_ns`` (the
        stack's share is decided by the stack); counts what it drops. None: a flood past the
        port's budget, which goes nowhere (not even to the stack: a flooding guest slows
        itself, not the stack's work for the others)."""
        if dst[0] & 1:
            q = None  # broadcast and multicast: flooded
        else:
            q = self.macs.get(dst)
            if q == port:
                self.counters["switch_same_port"] += 1
                self.ports[port].drops += 1
                return []
        if q is None:
            info = self.ports[port]
            if now_ns - info.flood_window_ns >= FLOOD_WINDOW_NS:
                info.flood_window_ns = now_ns
                info.flooded = 0
            if info.flooded >= FLOOD_PER_WINDOW:
                self.counters["switch_flood_limited"] += 1
                info.drops += 1
                return None
            info.flooded += 1
        others = [p for p in self.ports if p != port]
        if not others:
            return []
        if self.isolate:
            self.counters["switch_isolated"] += 1
            self.ports[port].drops += 1
            return []
        if q is None:
            self.counters["switch_flooded"] += 1
            return sorted(others)
        self.counters["switch_forwarded"] += 1
        return [q] if q in self.ports else []

    def out_targets(self, dst: bytes) -> list[int]:
        """The ports a frame the stack sends to ``dst`` goes to."""
        if not dst[0] & 1:
            q = self.macs.get(dst)
            if q is not None and q in self.ports:
                return [q]
        return sorted(self.ports)


__all__ = ["FLOOD_PER_WINDOW", "FLOOD_WINDOW_NS", "MAX_MACS", "MAX_PORTS", "PortInfo", "Switch"]

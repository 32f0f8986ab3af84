"""Live capture: the running session's frames, as a pcap stream, to control-socket clients.

Theory of operation
-------------------
``slirptrio capture CONTROL_SOCKET`` sends ``{"cmd": "capture", ...filters}`` on the control
socket. The answer line (``{"ok": true, "capture": ID}``) is followed, on the same connection,
by messages of one type byte, a 4-byte big-endian length and a payload:

* ``H``: the pcap global header (nanosecond pcap, Ethernet, snaplen 262144), first;
* ``P``: one pcap record (16-byte record header and the frame);
* ``S``: JSON ``{"frames": N, "lost": M}`` whenever the count of lost frames changed;
* ``E``: JSON as ``S``, last, when the stack stops.

The door loop feeds every capture through a *tap* (:attr:`Runtime.taps`): for each frame in or
out of the step it checks the capture's filter and appends the record to the capture's buffer,
never awaiting. Each capture has its own task that sends what is buffered. The buffer is
bounded (:data:`CAPTURE_BUFFER_BYTES`): while the reader does not keep up, frames that do not
fit are lost and counted — the guest never waits for a capture. A capture ends when its
client closes the connection (or the stack stops); at most :data:`MAX_CAPTURES` run at once.

Timestamps are the journal's: the session's wall-clock origin plus the door's time, so a live
capture and the session's pcap file agree frame for frame.

Filters (all given ones must match; within one kind, any value): ``proto`` (tcp, udp, icmp,
arp, dhcp, dns, ipv4, ipv6), ``port`` (either side, TCP or UDP), ``host`` (either address),
``flow`` (two endpoints, either direction).
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import trio

from slirptrio.core.events import Effect, Event, PortFrames, PortSendFrames
from slirptrio.journal.format import frames_of
from slirptrio.syntax.address import Endpoint as Endpoint
from slirptrio.syntax.address import ip_port
from slirptrio.syntax.address import parse_endpoint as parse_endpoint
from slirptrio.syntax.address import parse_flow as parse_flow
from slirptrio.syntax.errors import CaptureError as CaptureError
from slirptrio.wire.framing import split_run
from slirptrio.wire.pcap import LINKTYPE_ETHERNET, MAGIC_NS, SNAPLEN

log = logging.getLogger("slirptrio.capture")

MAX_CAPTURES = 16
CAPTURE_BUFFER_BYTES = 4 << 20
"""Per capture: bytes of frames waiting for a slow reader; beyond, frames are lost."""
FINAL_SEND_TIMEOUT_S = 0.5
"""How long a stopping stack tries to hand a capture its last frames and the final count."""

PROTOCOLS = ("tcp", "udp", "icmp", "arp", "dhcp", "dns", "ipv4", "ipv6")
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
_MSG = struct.Struct(">cI")


# --------------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class FrameFilter:
    """Which frames a capture wants; the empty filter takes every frame."""

    protos: frozenset[str] = frozenset()
    ports: frozenset[int] = frozenset()
    hosts: frozenset[bytes] = frozenset()
    flows: tuple[tuple[Endpoint, Endpoint], ...] = ()
    guests: frozenset[int] = frozenset()
    """Switch ports whose frames (in from that guest, out to it) are wanted; empty: all."""

    def __post_init__(self) -> None:
        # matches() runs for every frame of the session while a capture is attached.
        object.__setattr__(self, "everything",
                           not (self.protos or self.ports or self.hosts or self.flows))
        object.__setattr__(self, "_need_addrs", bool(self.hosts or self.flows))
        object.__setattr__(self, "_need_ports", bool(self.ports or self.flows or
                                                     {"dns", "dhcp"} & self.protos))
        p = self.protos
        etypes = {0x0806} if "arp" in p else set()
        etypes |= {0x0800} if "ipv4" in p else set()
        etypes |= {0x86DD} if "ipv6" in p else set()
        ipprotos = {6} if "tcp" in p else set()
        ipprotos |= {17} if "udp" in p else set()
        ipprotos |= {1, 58} if "icmp" in p else set()
        object.__setattr__(self, "_etypes", frozenset(etypes))
        object.__setattr__(self, "_ipprotos", frozenset(ipprotos))
        object.__setattr__(self, "_dns", "dns" in p)
        object.__setattr__(self, "_dhcp", "dhcp" in p)

    everything: bool = field(init=False, repr=False, compare=False)
    _need_addrs: bool = field(init=False, repr=False, compare=False)
    _need_ports: bool = field(init=False, repr=False, compare=False)
    _etypes: frozenset[int] = field(init=False, repr=False, compare=False)
    _ipprotos: frozenset[int] = field(init=False, repr=False, compare=False)
    _dns: bool = field(init=False, repr=False, compare=False)
    _dhcp: bool = field(init=False, repr=False, compare=False)

    def matches(self, frame: bytes | memoryview) -> bool:
        """Whether ``frame`` (an Ethernet frame) passes; short or odd frames pass only an
        empty filter."""
        if self.everything:
            return True
        n = len(frame)
        if n < 14:
            return False
        etype = (frame[12] << 8) | frame[13]
        proto = -1
        l4 = 0
        first = False
        if etype == 0x0800 and n >= 34:
            proto = frame[23]
            l4 = 14 + (frame[14] & 15) * 4
            first = not (((frame[20] & 0x1F) << 8) | frame[21])
        elif etype == 0x86DD and n >= 54:
            proto = frame[20]
            l4 = 54
            first = True
        sport = dport = -1
        if self._need_ports and first and proto in (6, 17) and n >= l4 + 4:
            sport = (frame[l4] << 8) | frame[l4 + 1]
            dport = (frame[l4 + 2] << 8) | frame[l4 + 3]
        if self.protos and not self._proto_ok(etype, proto, sport, dport):
            return False
        if self.ports and sport not in self.ports and dport not in self.ports:
            return False
        if self._need_addrs:
            if etype == 0x0800 and n >= 34:
                src, dst = bytes(frame[26:30]), bytes(frame[30:34])
            elif etype == 0x86DD and n >= 54:
                src, dst = bytes(frame[22:38]), bytes(frame[38:54])
            elif etype == 0x0806 and n >= 42:
                src, dst = bytes(frame[28:32]), bytes(frame[38:42])
            else:
                return False
            if self.hosts and src not in self.hosts and dst not in self.hosts:
                return False
            if self.flows:
                a, b = Endpoint(src, sport), Endpoint(dst, dport)
                if not any((a, b) in ((x, y), (y, x)) for x, y in self.flows):
                    return False
        return True

    def _proto_ok(self, etype: int, proto: int, sport: int, dport: int) -> bool:
        if etype in self._etypes or proto in self._ipprotos:
            return True
        if proto != 6 and proto != 17:
            return False
        if self._dns and (sport == 53 or dport == 53):
            return True
        return self._dhcp and proto == 17 and (sport in (67, 68) or dport in (67, 68))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "proto": sorted(self.protos),
            "port": sorted(self.ports),
            "host": sorted(str(ip_address(h)) for h in self.hosts),
            "flow": [f"{ip_port(a.ip, a.port)}-{ip_port(b.ip, b.port)}" for a, b in self.flows],
        }
        if self.guests:
            out["guest"] = sorted(self.guests)
        return out


def filter_from_request(
    req: dict[str, Any], flow_endpoints: Callable[[int], tuple[Endpoint, Endpoint] | None]
) -> FrameFilter:
    """The filter of a ``capture`` request; ``flow_endpoints(id)`` resolves flow numbers
    (as ``ctl info`` shows them) to the endpoints the guest sees."""

    def strings(key: str) -> list[Any]:
        v = req.get(key, [])
        if not isinstance(v, list):
            raise CaptureError(f"{key!r} must be a list")
        return v

    protos = set()
    for p in strings("proto"):
        if p not in PROTOCOLS:
            raise CaptureError(f"unknown protocol {p!r} (known: {', '.join(PROTOCOLS)})")
        protos.add(p)
    ports = set()
    for p in strings("port"):
        if not isinstance(p, int) or isinstance(p, bool) or not 0 <= p <= 65535:
            raise CaptureError(f"bad port {p!r}")
        ports.add(p)
    hosts = set()
    for h in strings("host"):
        try:
            hosts.add(ip_address(str(h)).packed)
        except ValueError:
            raise CaptureError(f"bad host address {h!r}") from None
    flows = []
    for f in strings("flow"):
        number = type(f) is int or (isinstance(f, str) and f.isdecimal())
        if number:
            pair = flow_endpoints(int(f))
            if pair is None:
                raise CaptureError(f"no flow {f} (see ctl info)")
            flows.append(pair)
        elif isinstance(f, str):
            flows.append(parse_flow(f))
        else:
            raise CaptureError(f"bad flow {f!r}")
    guests = set()
    for g in strings("guest"):
        if not isinstance(g, int) or isinstance(g, bool) or g < 0:
            raise CaptureError(f"bad guest port {g!r}")
        guests.add(g)
    return FrameFilter(frozenset(protos), frozenset(ports), frozenset(hosts), tuple(flows),
                       frozenset(guests))


# -------------------------------------------------------------------------------- captures


def pcap_header() -> bytes:
    return _GLOBAL.pack(MAGIC_NS, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


def message(kind: bytes, payload: bytes) -> bytes:
    return _MSG.pack(kind, len(payload)) + payload


@dataclass
class Capture:
    """One client's capture: its filter, its bounded buffer and its counts."""

    id: int
    filter: FrameFilter
    limit: int = CAPTURE_BUFFER_BYTES
    frames: int = 0  # handed to the sender
    lost: int = 0  # did not fit in the buffer
    buffered: int = 0
    queue: collections.deque[bytes | memoryview] = field(default_factory=collections.deque)
    wake: trio.Event = field(default_factory=trio.Event)

    def offer(self, ts_ns: int, frame: bytes | memoryview, port: int = 0) -> None:
        """Buffer one frame that crossed switch port ``port`` (never blocks); count it lost
        when the buffer is full."""
        if self.filter.guests and port not in self.filter.guests:
            return
        if not self.filter.matches(frame):
            return
        n = len(frame)
        if self.buffered + n + 21 > self.limit:
            self.lost += 1
            return
        sec, ns = divmod(ts_ns, 1_000_000_000)
        cap = min(n, SNAPLEN)
        head = _MSG.pack(b"P", 16 + cap) + _RECORD.pack(sec, ns, cap, n)
        self.queue.append(head)
        if type(frame) is memoryview:
            # A frame of a run: a copy, so a slow reader holds its frames, not whole runs.
            self.queue.append(bytes(frame[:cap]))
        else:
            self.queue.append(frame if cap == n else frame[:cap])
        self.buffered += n + 21
        self.frames += 1
        self.wake.set()

    def take(self, max_bytes: int = 1 << 20) -> list[bytes | memoryview]:
        """Buffered messages, up to about ``max_bytes``."""
        out: list[bytes | memoryview] = []
        size = 0
        q = self.queue
        while q and size < max_bytes:
            head, frame = q.popleft(), q.popleft()
            out += (head, frame)
            size += len(head) + len(frame)
        self.buffered -= size
        if not q:
            self.wake = trio.Event()
        return out

    def stats(self) -> dict[str, Any]:
        return {"id": self.id, "frames": self.frames, "lost": self.lost,
                "filter": self.filter.describe()}


class Captures:
    """The stack's live captures; :meth:`tap` is the door loop's hook."""

    def __init__(self, origin_ns: int, taps: list[Callable[[int, Event, list[Effect]], None]]):
        self._origin_ns = origin_ns
        self._taps = taps
        self._ids = itertools.count(1)
        self.active: dict[int, Capture] = {}

    def tap(self, t_ns: int, event: Event, effects: list[Effect]) -> None:
        """Offer the step's frames to every capture (called by the door loop)."""
        ts = self._origin_ns + t_ns
        caps = self.active.values()
        if type(event) is PortFrames or any(type(e) is PortSendFrames for e in effects):
            for port, pframe in _frames_by_port(event, effects):  # several guests
                for c in caps:
                    c.offer(ts, pframe, port)
            return
        # frames_of knows every way a step carries frames (single frames, runs of them).
        for _direction, frame in frames_of(event, effects):
            for c in caps:
                c.offer(ts, frame)

    def open(self, flt: FrameFilter, limit: int = CAPTURE_BUFFER_BYTES) -> Capture:
        if len(self.active) >= MAX_CAPTURES:
            raise CaptureError(f"too many captures at once (at most {MAX_CAPTURES})")
        cap = Capture(next(self._ids), flt, limit)
        if not self.active:
            self._taps.append(self.tap)
        self.active[cap.id] = cap
        return cap

    def close(self, cap: Capture) -> None:
        if self.active.pop(cap.id, None) is not None and not self.active:
            self._taps.remove(self.tap)

    async def serve(self, cap: Capture, stream: trio.abc.Stream) -> None:
        """Send ``cap``'s frames on ``stream`` until the client goes away or we are
        cancelled (then the last frames and the final count, briefly)."""
        reported = 0
        try:
            await stream.send_all(message(b"H", pcap_header()))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_closed, stream, nursery.cancel_scope)
                while True:
                    await cap.wake.wait()
                    batch = cap.take()
                    if cap.lost != reported:
                        reported = cap.lost
                        batch.append(message(b"S", _counts(cap)))
                    await stream.send_all(b"".join(batch))
            log.debug("capture %d: client went away", cap.id)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("capture %d: client gone: %r", cap.id, exc)
        finally:
            self.close(cap)
            with trio.CancelScope(shield=True), trio.move_on_after(FINAL_SEND_TIMEOUT_S):
                try:
                    rest = b"".join(cap.take(CAPTURE_BUFFER_BYTES))
                    await stream.send_all(rest + message(b"E", _counts(cap)))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            log.info("capture %d ended: %d frames, %d lost", cap.id, cap.frames, cap.lost)


def _frames_by_port(event: Event, effects: list[Effect]) -> list[tuple[int, memoryview]]:
    """A step's frames with the switch port each crossed (0: the single guest's)."""
    out: list[tuple[int, memoryview]] = []
    if isinstance(event, PortFrames):
        out += [(event.port, f) for f in split_run(event.data)]
    else:
        out += [(0, memoryview(f)) for _d, f in frames_of(event, [])]
    for e in effects:
        if isinstance(e, PortSendFrames):
            out += [(e.port, f) for f in split_run(e.data)]
        else:
            out += [(0, memoryview(f)) for _d, f in frames_of([], [e])]
    return out


def _counts(cap: Capture) -> bytes:
    return json.dumps({"frames": cap.frames, "lost": cap.lost}).encode()


async def _until_closed(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """Wait for the client to close its end (it sends nothing after its request)."""
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    scope.cancel()

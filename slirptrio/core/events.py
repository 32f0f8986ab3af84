"""Inputs to the core (events) and outputs from it (effects), with their journal encoding.

Every nondeterministic input enters :meth:`slirptrio.core.stack.Stack.handle` as one of the
events below; everything the core wants done comes back as effects. Both are frozen, slotted
dataclasses with a unique integer ``TAG``; :func:`encode` turns one into a msgpack-ready list
``[TAG, field, ...]`` and :func:`decode_event` / :func:`decode_effect` reverse it. Tags are part
of the journal format: never renumber one, only add.

Flow ids are small integers the core allocates deterministically; the shell uses them to name
the host-side socket a host event came from or an effect goes to.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

# ---------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Event:
    TAG: ClassVar[int] = -1


@dataclass(frozen=True, slots=True)
class GuestFrame(Event):
    """One Ethernet frame from the guest, exactly as the transport delivered it."""

    TAG: ClassVar[int] = 0
    data: bytes


@dataclass(frozen=True, slots=True)
class Tick(Event):
    """The deadline the core asked for with ``poll_at()`` has passed."""

    TAG: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class GuestLink(Event):
    """The guest's transport connected (``up``) or went away."""

    TAG: ClassVar[int] = 2
    up: bool


@dataclass(frozen=True, slots=True)
class TcpConnected(Event):
    """The host-side connect of ``flow`` succeeded."""

    TAG: ClassVar[int] = 10
    flow: int


@dataclass(frozen=True, slots=True)
class TcpConnectFailed(Event):
    """The host-side connect of ``flow`` failed with ``errno`` (an errno number)."""

    TAG: ClassVar[int] = 11
    flow: int
    errno: int


@dataclass(frozen=True, slots=True)
class TcpData(Event):
    """Bytes read from the host socket of ``flow``, with the exact read boundaries."""

    TAG: ClassVar[int] = 12
    flow: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TcpSent(Event):
    """The host socket of ``flow`` accepted ``n`` more bytes of what the core asked to send."""

    TAG: ClassVar[int] = 13
    flow: int
    n: int


@dataclass(frozen=True, slots=True)
class TcpDataSent(Event):
    """``TcpSent(flow, sent)`` then ``TcpData(flow, data)`` in one step: the host socket of
    ``flow`` accepted ``sent`` more bytes earlier (the shell held the report back, see
    :meth:`slirptrio.core.tcp.TcpNat.sent_can_wait`), then ``data`` was read from it."""

    TAG: ClassVar[int] = 16
    flow: int
    sent: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TcpEof(Event):
    """The host peer of ``flow`` shut down its sending side (recv returned b"")."""

    TAG: ClassVar[int] = 14
    flow: int


@dataclass(frozen=True, slots=True)
class TcpReset(Event):
    """The host socket of ``flow`` failed (reset or other error ``errno``); it is gone."""

    TAG: ClassVar[int] = 15
    flow: int
    errno: int


# --------------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Effect:
    TAG: ClassVar[int] = -1


@dataclass(frozen=True, slots=True)
class SendFrame(Effect):
    """Send one Ethernet frame to the guest (already padded to 60 bytes)."""

    TAG: ClassVar[int] = 0
    data: bytes


@dataclass(frozen=True, slots=True)
class TcpConnect(Effect):
    """Open a host TCP socket for ``flow`` and connect it to ``host``:``port``."""

    TAG: ClassVar[int] = 10
    flow: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TcpSend(Effect):
    """Queue ``data`` for the host socket of ``flow``; progress comes back as TcpSent."""

    TAG: ClassVar[int] = 11
    flow: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TcpRecvCredit(Effect):
    """Allow ``n`` more bytes to be read from the host socket of ``flow``."""

    TAG: ClassVar[int] = 12
    flow: int
    n: int


@dataclass(frozen=True, slots=True)
class TcpShutdown(Effect):
    """Shut down the sending side of ``flow``'s host socket once queued data is sent."""

    TAG: ClassVar[int] = 13
    flow: int


@dataclass(frozen=True, slots=True)
class TcpClose(Effect):
    """Close ``flow``'s host socket and end its tasks; ``abort`` resets instead of closing."""

    TAG: ClassVar[int] = 14
    flow: int
    abort: bool


# ---- UDP, DNS, ICMP (tags 20-39)
#
# Host ICMP errors arrive as the fields of Linux's ``sock_extended_err`` (IP_RECVERR): ``origin``
# is SO_EE_ORIGIN_* (0: the send itself failed with ``errno``, no ICMP; 1: local; 2: ICMP;
# 3: ICMPv6), ``icmp_type``/``icmp_code``/``info`` as the kernel reported them, ``offender`` the
# address that sent the ICMP error ("" when unknown).


@dataclass(frozen=True, slots=True)
class UdpReceived(Event):
    """One datagram read from the host UDP socket of ``flow`` (from its connected peer)."""

    TAG: ClassVar[int] = 20
    flow: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UdpError(Event):
    """The host UDP socket of ``flow`` reported an error (IP_RECVERR, or a failed send)."""

    TAG: ClassVar[int] = 21
    flow: int
    errno: int
    origin: int
    icmp_type: int
    icmp_code: int
    info: int
    offender: str


@dataclass(frozen=True, slots=True)
class IcmpEchoReply(Event):
    """An echo reply to ``flow``'s echo request number ``seq``, with its data."""

    TAG: ClassVar[int] = 22
    flow: int
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IcmpEchoError(Event):
    """The host ICMP socket of ``flow`` reported an error (fields as :class:`UdpError`)."""

    TAG: ClassVar[int] = 23
    flow: int
    errno: int
    origin: int
    icmp_type: int
    icmp_code: int
    info: int
    offender: str


@dataclass(frozen=True, slots=True)
class IcmpUnavailable(Event):
    """Neither a ping socket nor a raw socket could be opened for ``flow`` (``errno``)."""

    TAG: ClassVar[int] = 24
    flow: int
    errno: int


@dataclass(frozen=True, slots=True)
class DnsUpstreams(Event):
    """The upstream resolvers now in force: "HOST:PORT" entries separated by spaces, IPv6
    hosts in brackets ("" = none). Sent at start and whenever the list changes."""

    TAG: ClassVar[int] = 25
    servers: str


@dataclass(frozen=True, slots=True)
class UdpOpen(Effect):
    """Open a host UDP socket for ``flow``, connected to ``host``:``port`` (a literal IP)."""

    TAG: ClassVar[int] = 20
    flow: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class UdpSend(Effect):
    """Send one datagram on ``flow``'s host UDP socket."""

    TAG: ClassVar[int] = 21
    flow: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UdpClose(Effect):
    """Close ``flow``'s host UDP socket and end its tasks."""

    TAG: ClassVar[int] = 22
    flow: int


@dataclass(frozen=True, slots=True)
class IcmpEchoOpen(Effect):
    """Open a host ICMP socket (ping socket, else raw) for ``flow``, toward ``host``."""

    TAG: ClassVar[int] = 23
    flow: int
    host: str


@dataclass(frozen=True, slots=True)
class IcmpEchoSend(Effect):
    """Send an echo request on ``flow`` (``ident`` is used by raw sockets only: a ping
    socket's kernel sets its own)."""

    TAG: ClassVar[int] = 24
    flow: int
    ident: int
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IcmpEchoClose(Effect):
    """Close ``flow``'s host ICMP socket and end its tasks."""

    TAG: ClassVar[int] = 25
    flow: int


# ---- forwarding (tags 40-59)
#
# Flows the shell starts (an accepted hostfwd connection, ``connect_to_guest``) carry ids the
# shell chose from its own range (>= 2**32), so they never collide with the core's.


@dataclass(frozen=True, slots=True)
class TcpInbound(Event):
    """A host-side connection (already open as ``flow``) is to be carried into the guest, to
    ``guest_ip:guest_port``; ``peer_ip:peer_port`` is where it came from on the host."""

    TAG: ClassVar[int] = 40
    flow: int
    guest_ip: str
    guest_port: int
    peer_ip: str
    peer_port: int


@dataclass(frozen=True, slots=True)
class UdpInbound(Event):
    """A datagram from ``peer_ip:peer_port`` arrived on UDP forward ``fid``'s host socket,
    for ``guest_ip:guest_port``."""

    TAG: ClassVar[int] = 41
    fid: int
    guest_ip: str
    guest_port: int
    peer_ip: str
    peer_port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class GuestFwdAdd(Event):
    """Guest TCP connections to ``ip:port`` go to the shell's guest forward ``fid``."""

    TAG: ClassVar[int] = 42
    fid: int
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class GuestFwdRemove(Event):
    """Guest forward ``fid`` is gone (existing connections keep running)."""

    TAG: ClassVar[int] = 43
    fid: int


@dataclass(frozen=True, slots=True)
class HostFwdChange(Event):
    """A host forward was added (bound to host ``port``) or removed: recorded for ``info``
    and the journal; the shell owns the listening socket."""

    TAG: ClassVar[int] = 44
    rule: str
    port: int
    added: bool


@dataclass(frozen=True, slots=True)
class UdpFwdSend(Effect):
    """Send ``data`` from UDP forward ``fid``'s host socket to ``peer_ip:peer_port``."""

    TAG: ClassVar[int] = 40
    fid: int
    peer_ip: str
    peer_port: int
    data: bytes


# ---- recorder (tags 60-69)


@dataclass(frozen=True, slots=True)
class CoreError(Effect):
    """The core raised ``type``: ``message`` while handling the event (a bug). It stands in
    for the event's effects, which are lost (for a burst of guest frames: the effects of the
    frame that raised, in its place); replay must raise the same at the same record."""

    TAG: ClassVar[int] = 60
    type: str
    message: str


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def error_message(exc: BaseException) -> str:
    """An exception's message as journaled: object addresses blanked (they differ in replay),
    at most 500 characters."""
    return _ADDRESS.sub("0x?", str(exc))[:500]


# ---- fault rules (tags 70-79): see slirptrio.core.faults


@dataclass(frozen=True, slots=True)
class FaultAdd(Event):
    """Put fault rule ``rule`` (an id the shell chose) in force; ``text`` is the rule in the
    syntax of :mod:`slirptrio.core.faults`. A rule of the same id is replaced."""

    TAG: ClassVar[int] = 70
    rule: int
    text: str


@dataclass(frozen=True, slots=True)
class FaultRemove(Event):
    """Take fault rule ``rule`` out of force (-1: every rule)."""

    TAG: ClassVar[int] = 71
    rule: int


# ---- TFTP (tags 100-119)
#
# The file a TFTP session serves is a host input like any socket's bytes: the core asks the
# shell to open and read it (effects) and the answers come back as events, so a boot replays
# from the journal whether or not the files are still there.


@dataclass(frozen=True, slots=True)
class TftpOpened(Event):
    """The shell's answer to :class:`TftpOpen`: ``errno`` 0 and the file's ``size``, or the
    errno of the failure (ENOENT, EACCES for anything the jail refuses, ...)."""

    TAG: ClassVar[int] = 100
    session: int
    errno: int
    size: int


@dataclass(frozen=True, slots=True)
class TftpChunk(Event):
    """Bytes read at ``offset`` for a :class:`TftpRead`: fewer than asked means the file
    ends there; ``errno`` non-zero means the read failed (``data`` is then empty)."""

    TAG: ClassVar[int] = 101
    session: int
    offset: int
    data: bytes
    errno: int


@dataclass(frozen=True, slots=True)
class TftpOpen(Effect):
    """Open ``path`` (components joined by "/", already checked by the core) beneath the TFTP
    root for ``session``; answer with :class:`TftpOpened`."""

    TAG: ClassVar[int] = 100
    session: int
    path: str


@dataclass(frozen=True, slots=True)
class TftpRead(Effect):
    """Read up to ``size`` bytes at ``offset`` from ``session``'s file; answer with
    :class:`TftpChunk`. At most one read per session is outstanding."""

    TAG: ClassVar[int] = 101
    session: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class TftpClose(Effect):
    """``session`` is over: close its file."""

    TAG: ClassVar[int] = 102
    session: int


# ---- runs of frames (tags 130-139)
#
# A *run* is frames each preceded by its 4-byte big-endian length: QEMU's ``-netdev stream``
# framing (see :mod:`slirptrio.wire.fast`). A burst of guest frames enters as one event, and the
# frames toward the guest leave as one effect per group, which keeps the journal at one record
# per burst and lets the core coalesce a flow's segments (GRO) and build its output in one go.


@dataclass(frozen=True, slots=True)
class GuestFrames(Event):
    """A burst of Ethernet frames from the guest, as a run, exactly as the transport got them."""

    TAG: ClassVar[int] = 130
    data: bytes


@dataclass(frozen=True, slots=True)
class FrameRuns(Event):
    """From now on frames to the guest come as :class:`SendFrames` (``on``) rather than one
    :class:`SendFrame` each. A live session sends it first; journals made before runs
    existed lack it, so they replay with the effects they recorded."""

    TAG: ClassVar[int] = 131
    on: bool


@dataclass(frozen=True, slots=True)
class SendFrames(Effect):
    """Send the frames of a run to the guest, in order (each already padded to 60 bytes)."""

    TAG: ClassVar[int] = 132
    data: bytes


# ---- switch ports (tags 140-149)
#
# Several guests are ports of one core's switch (issue 22). Port 0 is the single guest of old:
# its frames stay :class:`GuestFrames`/:class:`GuestLink` in and :class:`SendFrames` (or
# :class:`SendFrame`) out, so journals from before ports replay unchanged. Other ports' frames
# carry their port number both ways.


@dataclass(frozen=True, slots=True)
class PortFrames(Event):
    """A burst of Ethernet frames (a run) from the guest on switch ``port`` (>= 1)."""

    TAG: ClassVar[int] = 140
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PortLink(Event):
    """A guest arrived on switch ``port`` (>= 1, ``up``) or left it; ``peer`` names its
    transport's peer (for ``info``)."""

    TAG: ClassVar[int] = 141
    port: int
    up: bool
    peer: str


@dataclass(frozen=True, slots=True)
class PortSendFrames(Effect):
    """Send the frames of a run to the guest on switch ``port`` (>= 1), in order."""

    TAG: ClassVar[int] = 140
    port: int
    data: bytes


# -------------------------------------------------------------------------------- encoding

_EVENTS: dict[int, type[Event]] = {}
_EFFECTS: dict[int, type[Effect]] = {}
_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _register() -> None:
    # Walk names, not __subclasses__(): slots=True replaces each class, leaving stale ones.
    pairs: tuple[tuple[type[Any], dict[int, Any]], ...] = ((Event, _EVENTS), (Effect, _EFFECTS))
    for obj in list(globals().values()):
        if not isinstance(obj, type) or obj in (Event, Effect):
            continue
        for base, table in pairs:
            if issubclass(obj, base):
                tag: int = getattr(obj, "TAG")  # noqa: B009 - obj is only known as a type here
                if tag in table and table[tag] is not obj:
                    raise AssertionError(f"duplicate tag {tag} for {obj.__name__}")
                table[tag] = obj
                _FIELDS[obj] = tuple(f.name for f in fields(obj))
                _ENCODERS[obj] = _encoder(tag, _FIELDS[obj])
                if _FIELDS[obj]:
                    _GETTERS[obj] = operator.attrgetter("TAG", *_FIELDS[obj])


# encode() runs for every step of a journaled session: one attrgetter per class, not a
# getattr per field.
_ENCODERS: dict[type[Any], Callable[[Any], list[Any]]] = {}
# For a class with fields: (TAG, field, ...) in one C call, no Python function of its own.
_GETTERS: dict[type[Any], Callable[[Any], tuple[Any, ...]]] = {}


def _encoder(tag: int, names: tuple[str, ...]) -> Callable[[Any], list[Any]]:
    if not names:
        return lambda _item: [tag]
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda item: [tag, one(item)]
    many = operator.attrgetter(*names)
    return lambda item: [tag, *many(item)]


def encode(item: Event | Effect) -> list[Any]:
    """Return ``[TAG, field, ...]`` for an event or effect."""
    get = _GETTERS.get(type(item))
    if get is not None:
        return [*get(item)]
    enc = _ENCODERS.get(type(item))
    if enc is not None:
        return enc(item)
    return [item.TAG, *(getattr(item, name) for name in _FIELDS[type(item)])]


def _decode(table: dict[int, type[Any]], raw: list[Any]) -> Any:
    if not isinstance(raw, list | tuple) or not raw:
        raise ValueError(f"bad encoded item {raw!r}")
    cls = table.get(raw[0])
    if cls is None:
        raise ValueError(f"unknown tag {raw[0]!r}")
    names = _FIELDS[cls]
    if len(raw) - 1 != len(names):
        raise ValueError(f"{cls.__name__} takes {len(names)} fields, got {len(raw) - 1}")
    return cls(*raw[1:])


def decode_event(raw: list[Any]) -> Event:
    """Rebuild an event from :func:`encode`'s output."""
    ev: Event = _decode(_EVENTS, raw)
    return ev


def decode_effect(raw: list[Any]) -> Effect:
    """Rebuild an effect from :func:`encode`'s output."""
    eff: Effect = _decode(_EFFECTS, raw)
    return eff


_register()

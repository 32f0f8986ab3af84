"""Guard: every piece of core state is covered by a snapshot.

Other work adds state to the core all the time (TCP options, IPv6 neighbours, TFTP transfers).
These tests fail when a core object has an attribute that is neither in its class's snapshot
nor declared as wiring or derived (see :mod:`slirptrio.core.snapshot`), when wiring changes
after construction, or when a restored core's object graph differs from the original's.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import pkgutil
import types
from typing import Any

import pytest

import slirptrio.core
from slirptrio.core.events import Effect, Event
from slirptrio.core.stack import Stack
from slirptrio.wire.ipv6 import Ipv6Header
from tests import streams
from tests.snapshots import (
    attributes,
    core_bytes,
    core_objects,
    plain_roundtrip,
    restored,
    run,
    shape,
)

SEC = streams.SEC

# One session that leaves something in every table, over both families: leases, ARP and NDP
# neighbours, fragments of both families in flight, UDP and echo flows of both families (their
# parsed IPv4 and IPv6 headers kept for ICMP errors), DNS queries in flight on open upstreams
# (over UDP from both families, and over TCP), TCP entries of both families in several phases
# with buffered and out-of-order data, TFTP reads of both families, forwards and guest forwards.
RICH: list[streams.Action] = [
    ("dhcp", 1, 0, False), ("dhcp", 3, 0, True), ("dhcp", 3, 1, True), ("dhcp", 4, 2, False),
    ("arp", "10.0.2.2"),
    ("fault", 0, 1), ("fault", 1, 8), ("fault", 2, 4),
    ("ndp", 0), ("ndp", 1), ("ndp", 2), ("ndp", 3), ("ndp", 4), ("dhcpv6", 0), ("dhcpv6", 1),
    ("fwd", 0, 1), ("fwd", 3, 1),
    ("ping", 0, 1, 1), ("echo_reply", 0, 1), ("ping", 1, 2, 1),
    ("ping6", 0, 3, 1), ("ping6", 1, 4, 2), ("echo_reply", 2, 1), ("echo_error6", 3),
    ("udp", 0, 1, 100), ("udp_recv", 0, 10), ("udp", 1, 2, 7),
    ("udp6", 0, 1, 100), ("udp6", 1, 2, 7), ("udp_recv", 2, 10), ("udp_error", 3, 3),
    ("upstreams", 1), ("dnsq", 1, 1), ("dnsq", 2, 2), ("dnsq6", 3, 0), ("udp_error", 0, 0),
    ("frag", 9, [2, 0, 1], 1), ("frag6", 9, [2, 0, 1], 1), ("frag6", 2, [0, 1, 2], 3),
    ("syn", 0, 0, True), ("connected", 0), ("seg", 0, "ack", 0),
    ("seg", 0, "data", 100), ("seg", 0, "ooo", 50), ("host_data", 0, 3000),
    ("syn", 1, 1, False), ("connected", 1), ("seg", 1, "ack", 0), ("host_eof", 1),
    ("syn", 2, 0, True),
    ("syn", 3, 3, True), ("connected", 3), ("seg", 3, "ack", 0), ("seg", 3, "data", 30),
    ("syn6", 4, 0, True), ("connected", 4), ("seg", 4, "ack", 0),
    ("seg", 4, "data", 100), ("seg", 4, "ooo", 50), ("host_data", 4, 3000),
    ("syn6", 5, 3, False), ("connected", 5), ("seg", 5, "ack", 0), ("host_eof", 5),
    ("syn6", 6, 1, True),
    ("tftp_rrq", False, 0), ("tftp_opened", 0, 0), ("tftp_chunk", 0), ("tftp_ack", 0, 0),
    ("tftp_rrq", True, 1), ("tftp_opened", 1, 0), ("tftp_chunk", 1), ("tftp_ack", 1, 0),
    ("tftp_chunk", 1), ("tftp_rrq", True, 2),
    ("fwd", 2, 0), ("fwd", 5, 2), ("fwd", 6, 1), ("fwd", 7, 2),
    ("port_link", 1, True), ("port_frames", 1, 1), ("port_frames", 1, 2),
    ("port_link", 2, True), ("port_frames", 2, 3), ("port_link", 2, False),
    ("time", 300 * streams.MS), ("tick_due",),
]
RICH_OPTIONS = "hostname=vm1,tftp=/nonexistent-guard-root"


def rich_stack() -> Stack:
    session = streams.drive(RICH, RICH_OPTIONS, 5)
    stack = Stack(session.config, session.seed)
    run(stack, session.events)
    return stack


def uncovered(stack: Stack) -> list[str]:
    """Attributes of core objects that no snapshot covers, as readable complaints."""
    problems = []
    for path, obj in core_objects(stack, derived=False):
        cls = type(obj)
        attrs = set(attributes(obj))
        if hasattr(obj, "snapshot_state"):
            keys = set(obj.snapshot_state())
            wiring: frozenset[str] = getattr(cls, "_SNAPSHOT_WIRING", frozenset())
            derived: frozenset[str] = getattr(cls, "_SNAPSHOT_DERIVED", frozenset())
            if keys & (wiring | derived) or wiring & derived:
                problems.append(f"{path}: an attribute is declared twice")
            for name in sorted(attrs - keys - wiring - derived):
                problems.append(
                    f"{path} ({cls.__name__}).{name} is not in its snapshot: add it to "
                    "snapshot_state/restore_state, or to _SNAPSHOT_WIRING if only the "
                    "constructor sets it, or to _SNAPSHOT_DERIVED if restore_state rebuilds it"
                )
            for name in sorted((keys | wiring | derived) - attrs):
                problems.append(f"{path} ({cls.__name__}) declares {name}, which it lacks")
        elif getattr(cls, "_SNAPSHOT_TRANSIENT", False):
            problems.append(f"{path} ({cls.__name__}) is a per-call value, held in state")
        elif attrs <= cls.__dict__.get("_SNAPSHOT_WIRING", frozenset()) | getattr(
            cls, "_SNAPSHOT_DERIVED", frozenset()
        ) and attrs:
            continue  # declared stateless: nothing but wiring
        elif hasattr(obj, "__dict__") or not cls.__dict__.get("__slots__"):
            problems.append(
                f"{path} ({cls.__name__}) has no snapshot method pair and no __slots__: "
                "give it the pair, or slots so that its owner can dump it with dump_slots"
            )
    return problems


def test_rich_session_reaches_every_kind_of_state() -> None:
    stack = rich_stack()
    names = {type(obj).__name__ for _path, obj in core_objects(stack)}
    assert names >= {
        "Stack", "Prng", "DhcpServer", "Lease", "Reassembler", "_Datagram", "UdpNat", "_Flow",
        "DnsRelay", "_Pending", "_Upstream", "IcmpEcho", "_EchoFlow", "TcpNat", "_Conn",
        "Ndp", "TftpServer", "_Session", "Dhcpv6Server",
    }
    # both families in every table that has them
    assert {len(f.hdr.src) for f in stack.udp._by_id.values() if f.hdr is not None} == {4, 16}
    assert {len(f.hdr.src) for f in stack.echo._lru.values()} == {4, 16}
    assert {len(c.guest_ip) for c in stack.tcp._by_flow.values()} == {4, 16}
    assert {len(s.ip) for s in stack.tftp._sessions.values()} == {4, 16}
    assert {len(key[0]) for key in stack._reasm._queues} == {4, 16}
    assert len(stack._ndp.neighbors) >= 2
    assert {len(ip) for ip, _port in stack._guestfwd} == {4, 16}
    inbound = [c for c in stack.tcp._by_flow.values() if c.flow >= 1 << 32]
    assert {len(c.guest_ip) for c in inbound} == {4, 16}
    c = stack.counters
    assert c["dhcpv6_information_request"] and c["dhcpv6_solicit"], dict(c)
    assert c["tftp_sessions"] >= 3 and c["dns_forwarded"] >= 3, dict(c)
    assert {c.dst_port for c in stack.tcp._by_flow.values() if len(c.dst_ip) == 4} >= {53, 80}
    assert {c.dst_port for c in stack.tcp._by_flow.values() if len(c.dst_ip) == 16} >= {53, 80}


def test_every_attribute_of_every_core_object_is_covered() -> None:
    assert uncovered(rich_stack()) == []


def test_guard_catches_a_missed_attribute() -> None:
    stack = rich_stack()
    stack.tcp.sack_blocks = []  # type: ignore[attr-defined]
    stack.udp.dns.cookie = 1  # type: ignore[attr-defined]
    problems = uncovered(stack)
    assert any("stack.tcp (TcpNat).sack_blocks is not in its snapshot" in p for p in problems)
    assert any("(DnsRelay).cookie is not in its snapshot" in p for p in problems)


def test_guard_catches_an_unslotted_record() -> None:
    class Transfer:
        def __init__(self) -> None:
            self.block = 1

    Transfer.__module__ = "slirptrio.core.tftp"
    stack = rich_stack()
    stack.nfs = {2049: Transfer()}  # type: ignore[attr-defined]
    problems = uncovered(stack)
    assert any("stack (Stack).nfs is not in its snapshot" in p for p in problems)
    assert any("(Transfer) has no snapshot method pair" in p for p in problems)


_VALUES = (bool, int, float, str, bytes, tuple, frozenset, set, type(None))


def _wiring(obj: object) -> dict[str, Any]:
    """Wiring attributes in a comparable form: values, or what kind of thing they refer to."""
    out: dict[str, Any] = {}
    for name in sorted(getattr(type(obj), "_SNAPSHOT_WIRING", ())):
        value = getattr(obj, name)
        if isinstance(value, types.MethodType):
            out[name] = ("method", value.__func__.__qualname__)
        elif isinstance(value, _VALUES) or dataclasses.is_dataclass(value):
            out[name] = value
        else:
            out[name] = ("object", type(value).__name__)
    return out


def test_wiring_never_changes_after_construction() -> None:
    exercised = rich_stack()
    fresh = Stack(exercised.config, exercised.seed)
    before = {p: _wiring(o) for p, o in core_objects(fresh) if hasattr(o, "snapshot_state")}
    after = {p: _wiring(o) for p, o in core_objects(exercised) if hasattr(o, "snapshot_state")}
    assert before == after


def test_restored_rich_stack_is_the_same_graph() -> None:
    stack = rich_stack()
    copy = restored(stack)
    assert shape(copy) == shape(stack)
    # and it stays the same under more input
    more = streams.drive(
        [("seg", 0, "data", 10), ("tick_due",), ("time", 100 * SEC), ("tick_due",)],
        RICH_OPTIONS, 5,
    ).events[1:]
    t0 = stack.tcp._now
    events = [(t + t0, ev) for t, ev in more]
    assert run(copy, events) == run(stack, events)
    assert shape(copy) == shape(stack)


@pytest.mark.parametrize("component", Stack._SNAPSHOT_COMPONENTS)
def test_each_component_round_trips_alone(component: str) -> None:
    stack = rich_stack()
    fresh = Stack(stack.config, stack.seed)
    part = getattr(stack, component)
    state = part.snapshot_state()
    assert plain_roundtrip(state) == state, "a snapshot must be plain data (no tuples, sets)"
    getattr(fresh, component).restore_state(state)
    assert getattr(fresh, component).snapshot_state() == state


def typed(value: Any, depth: int = 0) -> Any:
    """``value`` with the type of every part spelled out: scalars, byte strings (a memoryview
    is not bytes), containers (a tuple is not a list), dataclasses frozen or not and slotted
    records field by field, enums; callables as what they call."""
    assert depth < 50, "a cycle in core state"
    t = type(value)
    if isinstance(value, bool | int | float | str | type(None) | enum.Enum):
        return (t.__qualname__, value)
    if isinstance(value, bytes | bytearray | memoryview):
        return (t.__qualname__, bytes(value))
    if core_bytes(value):
        return (t.__qualname__, bytes(value))
    if isinstance(value, list | tuple):
        return (t.__qualname__, [typed(v, depth + 1) for v in value])
    if isinstance(value, dict):
        return (t.__qualname__, [(typed(k, depth + 1), typed(v, depth + 1))
                                 for k, v in value.items()])
    if isinstance(value, set | frozenset):
        return (t.__qualname__, sorted(repr(typed(v, depth + 1)) for v in value))
    if isinstance(value, types.MethodType):
        return ("method", value.__func__.__qualname__, type(value.__self__).__qualname__)
    if callable(value) and not hasattr(value, "__dict__") and not hasattr(t, "__slots__"):
        return ("callable", getattr(value, "__qualname__", t.__qualname__))
    if isinstance(value, types.FunctionType):
        return ("function", value.__qualname__)
    if t.__module__.startswith("slirptrio.core.") and hasattr(value, "snapshot_state"):
        return ("component", t.__qualname__)  # compared on its own, as a core object
    if dataclasses.is_dataclass(value):
        return (t.__qualname__, {f.name: typed(getattr(value, f.name), depth + 1)
                                 for f in dataclasses.fields(value)})
    derived: frozenset[str] = getattr(t, "_SNAPSHOT_DERIVED", frozenset())
    attrs = attributes(value)
    assert attrs or t is object, f"no way to compare a {t.__qualname__}"
    return (t.__qualname__, {n: typed(v, depth + 1) for n, v in sorted(attrs.items())
                             if n not in derived})


def differences(original: Stack, copy: Stack) -> list[str]:
    """Every slot of every core object whose value (type by type) differs between
    ``original`` and ``copy``, or whose object is missing from one of them."""
    ours = dict(core_objects(original, derived=False))
    theirs = dict(core_objects(copy, derived=False))
    problems = [f"{p} only in the original" for p in sorted(ours.keys() - theirs.keys())]
    problems += [f"{p} only in the restored copy" for p in sorted(theirs.keys() - ours.keys())]
    for path in sorted(ours.keys() & theirs.keys()):
        a, b = ours[path], theirs[path]
        if type(a) is not type(b):
            problems.append(f"{path}: {type(a).__qualname__} restored as {type(b).__qualname__}")
            continue
        derived: frozenset[str] = getattr(type(a), "_SNAPSHOT_DERIVED", frozenset())
        attrs_a, attrs_b = attributes(a), attributes(b)
        for name in sorted((attrs_a.keys() | attrs_b.keys()) - derived):
            if name not in attrs_a or name not in attrs_b:
                problems.append(f"{path}.{name} set on one side only")
            elif typed(attrs_a[name]) != typed(attrs_b[name]):
                problems.append(
                    f"{path}.{name}: {typed(attrs_a[name])!r:.300} restored as "
                    f"{typed(attrs_b[name])!r:.300}"
                )
    return problems


def test_every_slot_round_trips_type_by_type() -> None:
    stack = rich_stack()
    state = stack.snapshot()
    assert plain_roundtrip(state) == state, "a snapshot must be plain data (no tuples, sets)"
    copy = restored(stack)
    assert plain_roundtrip(copy.snapshot()) == state
    assert differences(stack, copy) == []


def test_type_aware_guard_catches_a_changed_type() -> None:
    stack = rich_stack()
    copy = restored(stack)
    flow = next(f for f in copy.udp._by_id.values() if isinstance(f.hdr, Ipv6Header))
    assert isinstance(flow.hdr, Ipv6Header)
    flow.hdr = dataclasses.replace(flow.hdr, src=bytearray(flow.hdr.src))  # type: ignore[arg-type]
    conn = next(iter(copy.tcp._by_flow.values()))
    conn.guest_ip = memoryview(conn.guest_ip)  # type: ignore[assignment]
    problems = differences(stack, copy)
    assert any(".hdr:" in p and "bytearray" in p for p in problems), problems
    assert any(".guest_ip:" in p and "memoryview" in p for p in problems), problems


def test_every_core_object_round_trips_after_every_step() -> None:
    # the rich session's every prefix, so that states in passing are checked too
    session = streams.drive(RICH, RICH_OPTIONS, 5)
    stack = Stack(session.config, session.seed)
    for k in range(len(session.events)):
        run(stack, session.events[k : k + 1])
        copy = restored(stack)
        assert differences(stack, copy) == [], f"after event {k}"
        assert plain_roundtrip(copy.snapshot()) == plain_roundtrip(stack.snapshot())


def test_rich_session_populates_every_core_class_with_state() -> None:
    """Every core class with a snapshot method pair is reached by the rich session, and so is
    every mutable slotted record class of those modules (the guard checks what it reaches)."""
    reached = {type(obj) for _path, obj in core_objects(rich_stack())}
    missing = []
    for info in pkgutil.iter_modules(slirptrio.core.__path__):
        module = importlib.import_module(f"slirptrio.core.{info.name}")
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            frozen = dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
            record = "__slots__" in cls.__dict__ and not frozen and not issubclass(
                cls, Event | Effect)
            if getattr(cls, "_SNAPSHOT_TRANSIENT", False):
                continue  # a per-call value (a parsed frame), never held: nothing to reach
            if (hasattr(cls, "snapshot_state") or record) and cls not in reached:
                missing.append(f"{module.__name__}.{cls.__qualname__}")
    assert missing == []

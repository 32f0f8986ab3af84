"""Guard: every piece of core state is covered by a snapshot.

Other work adds state to the core all the time (TCP options, IPv6 neighbours, TFTP transfers).
These tests fail when a core object has an attribute that is neither in its class's snapshot
nor declared as wiring or derived (see :mod:`slirptrio.core.snapshot`), when wiring changes
after construction, or when a restored core's object graph differs from the original's.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

import pytest

from slirptrio.core.stack import Stack
from tests import streams
from tests.snapshots import attributes, core_objects, plain_roundtrip, restored, run, shape

SEC = streams.SEC

# One session that leaves something in every table: leases, ARP, a fragment in flight, UDP and
# echo flows, DNS queries in flight on open upstreams, TCP entries in several phases with
# buffered and out-of-order data, guest forwards.
RICH: list[streams.Action] = [
    ("dhcp", 1, 0, False), ("dhcp", 3, 0, True), ("dhcp", 3, 1, True), ("dhcp", 4, 2, False),
    ("arp", "10.0.2.2"),
    ("fwd", 0, 1), ("fwd", 3, 1),
    ("ping", 0, 1, 1), ("echo_reply", 0, 1), ("ping", 1, 2, 1),
    ("udp", 0, 1, 100), ("udp_recv", 0, 10), ("udp", 1, 2, 7),
    ("upstreams", 1), ("dnsq", 1, 1), ("dnsq", 2, 2), ("udp_error", 0, 0),
    ("frag", 9, [2, 0, 1], 1),
    ("syn", 0, 0, True), ("connected", 0), ("seg", 0, "ack", 0),
    ("seg", 0, "data", 100), ("seg", 0, "ooo", 50), ("host_data", 0, 3000),
    ("syn", 1, 1, False), ("connected", 1), ("seg", 1, "ack", 0), ("host_eof", 1),
    ("syn", 2, 0, True),
    ("fwd", 2, 0),
    ("time", 300 * streams.MS), ("tick_due",),
]


def rich_stack() -> Stack:
    session = streams.drive(RICH, "hostname=vm1", 5)
    stack = Stack(session.config, session.seed)
    run(stack, session.events)
    return stack


def uncovered(stack: Stack) -> list[str]:
    """Attributes of core objects that no snapshot covers, as readable complaints."""
    problems = []
    for path, obj in core_objects(stack):
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
        elif dataclasses.is_dataclass(obj) and cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            continue  # an immutable value (a parsed header, the config)
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
    names = {type(obj).__name__ for _path, obj in core_objects(rich_stack())}
    assert names >= {
        "Stack", "Prng", "DhcpServer", "Lease", "Reassembler", "_Datagram", "UdpNat", "_Flow",
        "DnsRelay", "_Pending", "_Upstream", "IcmpEcho", "_EchoFlow", "TcpNat", "_Conn",
    }


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
        "hostname=vm1", 5,
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

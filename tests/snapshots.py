"""Helpers for snapshot tests: a structural picture of an object graph, restores, replays."""

from __future__ import annotations

import enum
import os
import types
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import msgpack

from slirptrio.config import Config
from slirptrio.core.events import Event, decode_event, encode
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import Record, SegmentStart, compact, open_journal

_SCALARS = (bool, int, float, str, type(None))


def plain_roundtrip(data: Any) -> Any:
    """``data`` through msgpack and back, as the journal stores it (fails on non-plain data)."""
    return msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False)


def restored(stack: Stack) -> Stack:
    """A fresh stack restored from ``stack``'s snapshot, through msgpack."""
    return Stack.from_snapshot(stack.config, plain_roundtrip(stack.snapshot()))


def attributes(obj: object) -> dict[str, Any]:
    """An object's instance attributes: its ``__dict__`` and every slot that is set."""
    out = dict(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                out[name] = getattr(obj, name)
    return out


def shape(root: object) -> Any:
    """A structural picture of everything reachable from ``root``: types, values, container
    order, and which objects are shared (a second reference shows as the path of the first).
    Attributes a class lists in ``_SNAPSHOT_DERIVED`` are left out; a memoryview counts as the
    bytes it shows (restores keep bytes)."""
    seen: dict[int, str] = {}
    keep: list[object] = []  # ids stay unique while the walk runs

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, _SCALARS):
            return (type(obj).__name__, obj)
        if isinstance(obj, bytes | memoryview):
            return ("bytes", bytes(obj))
        if core_bytes(obj):
            return (type(obj).__name__, bytes(obj))
        if isinstance(obj, IPv4Address | IPv4Network | IPv6Address | IPv6Network):
            return (type(obj).__name__, str(obj))
        if isinstance(obj, tuple | frozenset):
            items = sorted(obj, key=repr) if isinstance(obj, frozenset) else obj
            return (type(obj).__name__, [walk(x, f"{path}[{i}]") for i, x in enumerate(items)])
        if isinstance(obj, types.FunctionType | types.BuiltinFunctionType):
            return ("function", obj.__qualname__)
        if id(obj) in seen:
            return ("ref", seen[id(obj)])
        seen[id(obj)] = path
        keep.append(obj)
        if isinstance(obj, types.MethodType):
            return ("method", obj.__func__.__qualname__, walk(obj.__self__, path + ".__self__"))
        if isinstance(obj, bytearray):
            return ("bytearray", bytes(obj))
        if isinstance(obj, list):
            return ("list", [walk(x, f"{path}[{i}]") for i, x in enumerate(obj)])
        if isinstance(obj, dict):
            return (type(obj).__name__,
                    [(walk(k, f"{path}.key"), walk(v, f"{path}[{k!r}]")) for k, v in obj.items()])
        if isinstance(obj, set):
            return ("set", sorted(repr(walk(x, path + ".item")) for x in obj))
        derived: frozenset[str] = getattr(type(obj), "_SNAPSHOT_DERIVED", frozenset())
        attrs = attributes(obj)
        return (type(obj).__qualname__,
                {n: walk(attrs[n], f"{path}.{n}") for n in sorted(attrs) if n not in derived})

    return walk(root, "root")


def core_bytes(obj: object) -> bool:
    """Whether ``obj`` is a byte string of the core's own (a TCP send buffer): a value whose
    bytes are its state, however it splits them."""
    t = type(obj)
    return t.__module__.startswith("slirptrio.core.") and hasattr(t, "__bytes__")


def core_objects(root: object, derived: bool = True) -> Iterable[tuple[str, object]]:
    """(path, object) for every object of a ``slirptrio.core`` class reachable from ``root``
    (enum members are values, not objects; without ``derived``, attributes a class lists in
    ``_SNAPSHOT_DERIVED`` are not followed)."""
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("stack", root)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, (*_SCALARS, bytes, bytearray, memoryview, enum.Enum)) or id(obj) in seen:
            continue
        if core_bytes(obj):
            continue  # a value, compared by its bytes
        seen.add(id(obj))
        if isinstance(obj, types.MethodType | types.FunctionType | types.BuiltinFunctionType):
            continue
        if isinstance(obj, dict):
            stack += [(f"{path}[{k!r}]", v) for k, v in obj.items()]
            stack += [(f"{path}.key", k) for k in obj]
        elif isinstance(obj, list | tuple | set | frozenset):
            stack += [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
        elif type(obj).__module__.startswith("slirptrio."):
            if type(obj).__module__.startswith("slirptrio.core."):
                yield path, obj
            skip: frozenset[str] = (
                frozenset() if derived else getattr(type(obj), "_SNAPSHOT_DERIVED", frozenset())
            )
            stack += [(f"{path}.{n}", v) for n, v in attributes(obj).items() if n not in skip]


def run(stack: Stack, events: Iterable[tuple[int, Event]]) -> list[Any]:
    """Each event's effects (encoded whole). An exception from the core is a bug, never a
    behaviour two cores may share: it propagates, naming the event."""
    out: list[Any] = []
    for i, (t, event) in enumerate(events):
        try:
            effects = stack.handle(event, t)
        except Exception as exc:
            raise AssertionError(f"the core raised on event {i} ({event!r:.200}) at t={t}") from exc
        out.append([encode(e) for e in effects])
    return out


def fresh(config: Config, seed: int) -> Stack:
    return Stack(config, seed)


def check_journal_restores(
    path: str | os.PathLike[str], window: int = 32, to_end_every: int = 200
) -> int:
    """The snapshot property on a recorded session: after every record k, the replaying core's
    snapshot (through msgpack) restored into a fresh core gives the journal's effects for the
    next ``window`` records, and every ``to_end_every`` records for all the rest. Returns the
    number of records checked; raises AssertionError on the first difference."""
    journal = open_journal(path)
    first: dict[str, Any] | None = None
    records: list[Record] = []
    for item in journal.entries():
        if isinstance(item, SegmentStart):
            assert item.gap is None, "a journal with gaps"
            if first is None:
                first = item.snapshot
        else:
            records.append(item)
    assert first is not None, "a journal without snapshots"
    config = Config.from_dict(journal.header.config)
    events = [decode_event(r.event) for r in records]
    expected = [[compact(list(e)) for e in r.effects] for r in records]
    original = Door.from_snapshot(config, first)
    for k in range(len(records)):
        copy = Door.from_snapshot(config, plain_roundtrip(original.snapshot()))
        end = len(records) if k % to_end_every == 0 else min(len(records), k + window)
        for j in range(k, end):
            copy.seq = records[j].seq
            got = [compact(encode(e)) for e in copy.step(events[j], records[j].t_ns)]
            assert got == expected[j], f"restored after record {k}: record {j} differs"
        original.seq = records[k].seq
        original.step(events[k], records[k].t_ns)
    return len(records)

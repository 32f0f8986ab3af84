"""Snapshots of the core's state: the convention and the helpers every owner of state shares.

Convention
----------
Every core class that owns mutable state has::

    snapshot_state(self) -> dict[str, Any]      # plain msgpack-able data
    restore_state(self, state: dict[str, Any]) -> None

``restore_state``, called on an instance freshly built with the same config and wiring, makes it
behave identically to the original for every later input. "Plain" means int, bool, None, str,
bytes, float, list, and dict with str keys: what msgpack round-trips unchanged (tuples come back
as lists, so restore turns them back into tuples where the code compares or hashes them).

The keys of a component's snapshot are its attribute names. Two class attributes name the
attributes it leaves out, and ``tests/test_snapshot_guard.py`` checks that every attribute of
every reachable core object is one of the three kinds:

* ``_SNAPSHOT_WIRING``: set by the constructor from its arguments (callbacks, the shared
  counters and PRNG, limits from the config) and never changed afterwards;
* ``_SNAPSHOT_DERIVED``: rebuilt by ``restore_state`` from the rest (an index of a table, the
  TCP timer heap).

Small record classes inside a component (a TCP entry, a UDP flow) have ``__slots__`` and are
dumped slot by slot (:func:`dump_slots`), so a new slot is covered without a change here; a
slot whose value is not plain needs an entry in the dumping class's codecs, and the round-trip
tests fail until it has one.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from slirptrio.wire.ipv4 import Ipv4Header
from slirptrio.wire.ipv6 import Ipv6Header

T = TypeVar("T")

Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]
"""(to plain, from plain) for one attribute."""

SNAPSHOT_VERSION = 1
"""Bumped when a snapshot's layout changes incompatibly."""


def slot_names(cls: type) -> tuple[str, ...]:
    """Every slot of ``cls`` and its bases, sorted."""
    names: set[str] = set()
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.update((slots,) if isinstance(slots, str) else slots)
    names.discard("__weakref__")
    names.discard("__dict__")
    return tuple(sorted(names))


_Plan = tuple[tuple[str, ...], Callable[[Any], Any], tuple[tuple[int, Callable[[Any], Any]], ...]]
_PLANS: dict[tuple[type, int, frozenset[str]], _Plan] = {}


def _plan(cls: type, codecs: dict[str, Codec], skip: frozenset[str]) -> _Plan:
    # Per class: the slot names, one attrgetter for all of them, and where codecs apply.
    key = (cls, id(codecs), skip)
    plan = _PLANS.get(key)
    if plan is None:
        names = tuple(n for n in slot_names(cls) if n not in skip)
        conv = tuple((i, codecs[n][0]) for i, n in enumerate(names) if n in codecs)
        get = operator.attrgetter(*names) if len(names) > 1 else (
            lambda o, n=names[0]: (getattr(o, n),)
        )
        plan = _PLANS[key] = (names, get, conv)
    return plan


_NO_CODECS: dict[str, Codec] = {}


def dump_slots(
    obj: object, codecs: dict[str, Codec] | None = None, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """Every slot of ``obj`` (but ``skip``) as plain data; ``codecs`` convert the others.

    ``codecs`` should be a module-level dict (plans are cached by its identity)."""
    names, get, conv = _plan(type(obj), codecs or _NO_CODECS, frozenset(skip))
    values = list(get(obj))
    for i, to_plain in conv:
        values[i] = to_plain(values[i])
    return dict(zip(names, values, strict=True))


def load_slots(cls: type[T], state: dict[str, Any], codecs: dict[str, Codec] | None = None) -> T:
    """A new ``cls`` (its ``__init__`` not run) with its slots set from :func:`dump_slots`."""
    codecs = codecs or {}
    obj = cls.__new__(cls)
    for name, value in state.items():
        codec = codecs.get(name)
        object.__setattr__(obj, name, codec[1](value) if codec is not None else value)
    return obj


# ---------------------------------------------------------------------------------- codecs

# Every parsed header type the core keeps in its state (a UDP or echo flow quotes the guest's
# header in ICMP errors): frozen dataclasses of plain fields, stored as [type name, *fields].
_HEADERS: dict[str, type[Any]] = {cls.__name__: cls for cls in (Ipv4Header, Ipv6Header)}


def dump_header(hdr: Any) -> Any:
    """A parsed header kept by the core (e.g. to quote it in an ICMP error), as plain data."""
    if hdr is None:
        return None
    if not is_dataclass(hdr) or _HEADERS.get(type(hdr).__name__) is not type(hdr):
        raise TypeError(f"cannot snapshot a header of type {type(hdr).__name__}")
    return [type(hdr).__name__, *(bytes(v) if isinstance(v, memoryview) else v
                                  for v in (getattr(hdr, f.name) for f in fields(hdr)))]


def load_header(raw: Any) -> Any:
    if raw is None:
        return None
    return _HEADERS[raw[0]](*raw[1:])


def as_bytes(value: Any) -> bytes:
    return bytes(value)


def as_tuple(value: Any) -> Any:
    return None if value is None else tuple(value)


def as_list(value: Any) -> Any:
    return None if value is None else list(value)


BYTES: Codec = (as_bytes, as_bytes)
TUPLE: Codec = (as_list, as_tuple)
HEADER: Codec = (dump_header, load_header)
BYTEARRAY: Codec = (as_bytes, bytearray)

"""Every constant that shapes the core's behaviour, gathered for the journal header.

A core constant is a module-level UPPER_CASE name of a plain value (int, float, bool, str,
bytes, or a tuple of those) in :mod:`slirptrio.config` or in any module of
:mod:`slirptrio.core` or :mod:`slirptrio.wire`. :func:`gather` collects them all, keyed
``"core.tcp.RTO_MAX_NS"``; a new module's constants are included without any change here.

The journal header records them. Replay compares them with this build's (:func:`compare`) and,
where they differ, runs with the journal's values (:func:`applied`): it sets the module
attributes for the duration of the replay and builds the core afterwards. A constant takes
effect that way when the code reads it at run time or when the :class:`~slirptrio.core.stack.Stack`
is built (which is why the Stack passes its components' limits explicitly instead of relying
on default arguments, which Python binds once at import).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_PLAIN = (int, float, str, bytes)
_PACKAGES = ("slirptrio.core", "slirptrio.wire")
_MODULES = ("slirptrio.config",)
_SKIP = {"slirptrio.core.constants", "slirptrio.wire._native", "slirptrio.wire._accel"}
# Which fast path runs is no behaviour: native and pure give the same bytes (a journal made on
# one replays on the other), so it is not a constant a journal's core depends on.
_SKIP_CONSTANTS = {"wire.fast.IMPL", "wire.fast.REASON"}


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):  # bool is an int
        return True
    return isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)


def modules() -> list[ModuleType]:
    """The modules whose constants count, imported, in a stable order."""
    names = list(_MODULES)
    for pkg_name in _PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            names.append(f"{pkg_name}.{info.name}")
    return [importlib.import_module(n) for n in sorted(names) if n not in _SKIP]


def _key(module: ModuleType, name: str) -> str:
    return module.__name__.removeprefix("slirptrio.") + "." + name


def gather() -> dict[str, Any]:
    """Every core constant, ``"module.NAME" -> value`` (tuples as lists, as msgpack has them)."""
    out: dict[str, Any] = {}
    for module in modules():
        for name, value in vars(module).items():
            if _NAME.match(name) and _plain(value):
                key = _key(module, name)
                if key not in _SKIP_CONSTANTS:
                    out[key] = list(value) if isinstance(value, tuple) else value
    return out


@dataclass
class Comparison:
    """How a journal's recorded constants stand against this build's."""

    differ: list[tuple[str, Any, Any]] = field(default_factory=list)
    """(name, recorded, this build's) for constants both know with different values."""
    missing: list[str] = field(default_factory=list)
    """Recorded constants this build does not have (renamed or removed)."""
    new: list[str] = field(default_factory=list)
    """This build's constants the journal does not record (added since)."""

    @property
    def same(self) -> bool:
        return not (self.differ or self.missing or self.new)

    @property
    def conflict(self) -> bool:
        """Constants the journal recorded that this build has otherwise, or not at all.
        (Constants new in this build are no conflict: the journal's core had no such thing.)"""
        return bool(self.differ or self.missing)

    def describe(self) -> list[str]:
        """One line per conflicting constant, for the replay report."""
        lines = [f"{n}: journal {r!r}, this build {c!r}" for n, r, c in self.differ]
        lines += [f"{n}: recorded by the journal, unknown to this build" for n in self.missing]
        return lines


def compare(recorded: dict[str, Any]) -> Comparison:
    """Compare a journal's constants with this build's."""
    current = gather()
    result = Comparison()
    for name, value in recorded.items():
        if name not in current:
            result.missing.append(name)
        elif current[name] != value or type(current[name]) is not type(value):
            result.differ.append((name, value, current[name]))
    result.new = [n for n in current if n not in recorded]
    return result


@contextlib.contextmanager
def applied(recorded: dict[str, Any]) -> Iterator[list[str]]:
    """Run the body with the journal's values of the constants this build also has.

    Yields the names set. The previous values come back on exit. This changes module
    attributes for the whole process: no live stack should be built meanwhile.
    """
    mods = {m.__name__.removeprefix("slirptrio."): m for m in modules()}
    saved: list[tuple[ModuleType, str, Any]] = []
    names: list[str] = []
    try:
        for key, value in recorded.items():
            mod_name, _, name = key.rpartition(".")
            module = mods.get(mod_name)
            if module is None or not hasattr(module, name):
                continue
            old = getattr(module, name)
            if not _plain(old):
                continue
            new = tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value
            if type(new) is not type(old) or new == old:
                continue
            saved.append((module, name, old))
            setattr(module, name, new)
            names.append(key)
        yield names
    finally:
        for module, name, old in reversed(saved):
            setattr(module, name, old)

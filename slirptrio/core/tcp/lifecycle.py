"""An entry's lifecycle: its phases, what moves it between them, and the one function that does.

:data:`TRANSITIONS` is the whole lifecycle; :func:`move` is the only place an entry's phase
changes after it is made (:data:`START` names the phase it is made in). The diagram in the
package docstring is :func:`diagram`'s output (a test keeps them equal).

A transition the table lacks is a bug in :mod:`slirptrio.core.tcp.nat`. Under tests
(:data:`strict` set by ``tests/conftest.py``) it raises; in a live session it is counted
(``tcp_bad_transition``), logged, and refused: the entry keeps its phase.
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("slirptrio.core.tcp")


class Phase(enum.IntEnum):
    """Where an entry stands. The values are what snapshots hold: never renumber them."""

    SYN_SENT = -1  # our SYN to the guest is out (a forwarded host connection)
    SYN_PENDING = 0  # the guest's SYN seen, the host connect running
    SYN_RECEIVED = 1  # SYN-ACK sent
    SYNCED = 2  # handshake done: established or closing (the RFC state: state_name)
    TIME_WAIT = 3
    DRAINING = 4  # guest side closed, the host socket still sending what the guest sent
    CLOSED = 5  # out of every table


class Trigger(enum.Enum):
    """What moves an entry; the values are the diagram's arrow labels."""

    GUEST_SYN = "guest SYN"
    FORWARD = "forwarded connection, our SYN"
    CONNECTED = "TcpConnected, our SYN-ACK"
    GUEST_ACK = "guest ACK"
    GUEST_SYN_ACK = "guest SYN-ACK"
    ACTIVE_CLOSE_DONE = "both FINs acked, ours first"
    DRAIN = "guest side over, host bytes unsent"
    CLOSE = "closed (TcpClose)"
    ABORT = "reset, refused or given up (TcpClose abort)"


START: dict[Trigger, Phase] = {
    Trigger.GUEST_SYN: Phase.SYN_PENDING,
    Trigger.FORWARD: Phase.SYN_SENT,
}
"""The phase a new entry is made in, by what made it."""

TRANSITIONS: dict[tuple[Phase, Trigger], Phase] = {
    (Phase.SYN_PENDING, Trigger.CONNECTED): Phase.SYN_RECEIVED,
    (Phase.SYN_RECEIVED, Trigger.GUEST_ACK): Phase.SYNCED,
    (Phase.SYN_SENT, Trigger.GUEST_SYN_ACK): Phase.SYNCED,
    (Phase.SYNCED, Trigger.ACTIVE_CLOSE_DONE): Phase.TIME_WAIT,
    (Phase.SYNCED, Trigger.DRAIN): Phase.DRAINING,
    (Phase.TIME_WAIT, Trigger.DRAIN): Phase.DRAINING,
    (Phase.SYNCED, Trigger.CLOSE): Phase.CLOSED,
    (Phase.TIME_WAIT, Trigger.CLOSE): Phase.CLOSED,
    (Phase.DRAINING, Trigger.CLOSE): Phase.CLOSED,
    (Phase.SYN_PENDING, Trigger.ABORT): Phase.CLOSED,
    (Phase.SYN_RECEIVED, Trigger.ABORT): Phase.CLOSED,
    (Phase.SYN_SENT, Trigger.ABORT): Phase.CLOSED,
    (Phase.SYNCED, Trigger.ABORT): Phase.CLOSED,
    (Phase.TIME_WAIT, Trigger.ABORT): Phase.CLOSED,
    (Phase.DRAINING, Trigger.ABORT): Phase.CLOSED,
}

HALF_OPEN = frozenset({Phase.SYN_SENT, Phase.SYN_PENDING, Phase.SYN_RECEIVED})
"""The phases counted against ``max_half_open``."""

strict = False
"""Raise on a transition the table lacks (tests) instead of counting and refusing it."""

observer: Callable[[Phase, Trigger, Phase], None] | None = None
"""Called with every transition taken (tests record the lifecycle's coverage with it)."""


class _Entry(Protocol):
    phase: Phase
    flow: int


def move(c: _Entry, trigger: Trigger, counters: collections.Counter[str]) -> bool:
    """Move ``c`` along ``trigger``; False (and ``c`` unchanged) if the table has no such
    transition."""
    old = c.phase
    new = TRANSITIONS.get((old, trigger))
    if new is None:
        if strict:
            raise AssertionError(f"tcp: no transition from {old.name} on {trigger.name}")
        counters["tcp_bad_transition"] += 1
        log.error("flow %d: no transition from %s on %s", c.flow, old.name, trigger.name)
        return False
    c.phase = new
    if observer is not None:
        observer(old, trigger, new)
    return True


def diagram() -> str:
    """The lifecycle as the package docstring shows it: one arrow per transition, grouped by
    the phase it leaves (new entries first)."""
    lines = [f"    new entry ──{t.value}──> {p.name}" for t, p in START.items()]
    for phase in Phase:
        for (src, t), dst in TRANSITIONS.items():
            if src is phase:
                lines.append(f"    {src.name} ──{t.value}──> {dst.name}")
    return "\n".join(lines)

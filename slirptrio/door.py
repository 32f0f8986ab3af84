"""The door: the single point where inputs enter the core and are journaled.

Both the live runtime and replay call :meth:`Door.step`, so replay goes through exactly the code
the session went through. The door stamps every input with a sequence number and the time the
core was given, runs the core, and hands the record to a sink (the journal writer live, a
comparator in replay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from slirptrio.core.events import Effect, Event
from slirptrio.core.stack import Stack

log = logging.getLogger("slirptrio.door")

Sink = Callable[[int, int, Event, list[Effect]], None]


class Door:
    """Feeds events to a :class:`Stack`, one at a time, and reports each step to ``sink``."""

    def __init__(self, stack: Stack, sink: Sink | None = None) -> None:
        self.stack = stack
        self.sink = sink
        self.seq = 0
        self.now_ns = 0

    def step(self, event: Event, now_ns: int) -> list[Effect]:
        """Run one event through the core at ``now_ns`` (never earlier than the last step)."""
        if now_ns < self.now_ns:
            now_ns = self.now_ns
        self.now_ns = now_ns
        try:
            effects = self.stack.handle(event, now_ns)
        except Exception:
            # A core bug must not stop the stack; replay reproduces it identically.
            self.stack.counters["core_exceptions"] += 1
            log.exception("core raised on event %d (%s)", self.seq, type(event).__name__)
            effects = []
        if self.sink is not None:
            self.sink(self.seq, now_ns, event, effects)
        self.seq += 1
        return effects

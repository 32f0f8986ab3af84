"""The door: the single point where inputs enter the core and are journaled.

Both the live runtime and replay call :meth:`Door.step`, so replay goes through exactly the code
the session went through. The door stamps every input with a sequence number and the time the
core was given, runs the core, and hands the record to a sink (the journal live, a comparator
in replay).

The sink is an observer: an exception from it is logged and counted (``sink_failures``) and
the step's effects go out all the same. (The journal's recorder contains its own failures first:
it ends the segment with a named gap, see :mod:`slirptrio.journal.writer`.)

An exception raised by the core is a bug, but must not stop the stack: the door logs it with its
traceback, counts it (``core_exceptions``) and returns a single :class:`CoreError` effect in
place of the event's effects. The journal keeps that effect like any other, so replay reports
the exception at the same record and compares it: a journal that recorded one and replays
without it, or the reverse, diverges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slirptrio.config import Config
from slirptrio.core.events import CoreError, Effect, Event, error_message

__all__ = ["Door", "Sink", "error_message"]
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
        self.sink_failures = 0

    def step(self, event: Event, now_ns: int) -> list[Effect]:
        """Run one event through the core at ``now_ns`` (never earlier than the last step)."""
        if now_ns < self.now_ns:
            now_ns = self.now_ns
        self.now_ns = now_ns
        try:
            effects = self.stack.handle(event, now_ns)
        except Exception as exc:
            # A core bug must not stop the stack; the journal keeps it, replay reproduces it.
            self.stack.counters["core_exceptions"] += 1
            log.error("core raised %s on record %d (%s)", type(exc).__name__, self.seq,
                      type(event).__name__, exc_info=True)
            effects = [CoreError(type(exc).__name__, error_message(exc))]
        if self.sink is not None:
            try:
                self.sink(self.seq, now_ns, event, effects)
            except Exception:
                # The recorder is an observer: its failure is its own (counted, logged, a gap in
                # the journal, see the journal writer), never the network's.
                self.sink_failures += 1
                log.error("the recorder raised on record %d; the network goes on", self.seq,
                          exc_info=True)
        self.seq += 1
        return effects

    def snapshot(self) -> dict[str, Any]:
        """The door's state (next sequence number, clock) and its core's, as plain data."""
        return {"seq": self.seq, "now_ns": self.now_ns, "stack": self.stack.snapshot()}

    @classmethod
    def from_snapshot(cls, config: Config, snapshot: dict[str, Any], sink: Sink | None = None
                      ) -> Door:
        """A door over a core restored from :meth:`snapshot` (taken with the same config)."""
        door = cls(Stack.from_snapshot(config, snapshot["stack"]), sink)
        door.seq = snapshot["seq"]
        door.now_ns = snapshot["now_ns"]
        return door

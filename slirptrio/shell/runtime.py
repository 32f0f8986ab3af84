"""The runtime: the door loop, the clock, and dispatch of effects to transports and flows.

One task runs the door: it takes the next input from the inbox (or a :class:`Tick` when the core's
deadline passes), stamps it with the clock, steps the core through the :class:`Door`, journals
the step and dispatches the effects without blocking. It takes a burst of up to 256 inputs per
wakeup without a checkpoint; after the burst it writes the frames for a stream guest itself
(:meth:`GuestPort.kick`), runs the ``after_burst`` hooks (host sockets' pending data), and hands
the burst's journal records and pcap frames to the writer thread (:mod:`slirptrio.journal.writer`);
under the lossless journal policy it then takes no input while the writer is behind its budget.
Everything else — the transport, each flow's socket tasks —
only ever puts events into the bounded inbox; a full inbox makes producers wait, which is the
backpressure toward a guest or host peer that sends faster than we process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from slirptrio.core.events import CoreError, Effect, Event, SendFrame, Tick
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal.writer import Recorder
from slirptrio.shell.transport import GuestPort

__all__ = ["INBOX_SIZE", "Recorder", "Runtime"]

log = logging.getLogger("slirptrio.runtime")

INBOX_SIZE = 1024
_BATCH = 256


class Runtime:
    """Runs a :class:`Stack` against the real world (or a test's fake one).

    ``dispatch`` handlers receive the non-frame effects (host socket actions); frames go to
    ``port``. Use :meth:`run` inside a nursery; ``inbox`` is where producers send events.
    """

    def __init__(
        self,
        stack: Stack,
        port: GuestPort,
        recorder: Recorder | None = None,
        inbox_size: int = INBOX_SIZE,
    ) -> None:
        self.stack = stack
        self.port = port
        self.recorder = recorder
        self.door = Door(stack, recorder)
        if recorder is not None:
            recorder.attach(self.door.snapshot)
        self.inbox, self._receive = trio.open_memory_channel[Event](inbox_size)
        # The door has logged a core exception already; there is nothing to do for it.
        self.handlers: dict[type[Effect], Callable[[Any], None]] = {CoreError: lambda _e: None}
        self.after_burst: list[Callable[[], None]] = []  # called after each burst of steps
        # Called with (t_ns, event, effects) after every step (live captures); must not block.
        self.taps: list[Callable[[int, Event, list[Effect]], None]] = []
        self._t0 = trio.current_time()

    def now_ns(self) -> int:
        return int((trio.current_time() - self._t0) * 1e9)

    def _trio_time(self, t_ns: int) -> float:
        return self._t0 + t_ns / 1e9

    def _step(self, event: Event) -> None:
        effects = self.door.step(event, self.now_ns())
        for tap in self.taps:
            tap(self.door.now_ns, event, effects)
        for effect in effects:
            if type(effect) is SendFrame:
                self.port.put(effect.data)
            else:
                handler = self.handlers.get(type(effect))
                if handler is None:
                    log.error("no handler for effect %r", effect)
                else:
                    handler(effect)

    def _due(self) -> bool:
        deadline = self.stack.poll_at()
        return deadline is not None and deadline <= self.now_ns()

    async def run(self) -> None:
        """Run the door loop forever (until cancelled)."""
        receive = self._receive
        while True:
            deadline = self.stack.poll_at()
            event: Event | None = None
            if deadline is None or deadline > self.now_ns():
                try:
                    event = receive.receive_nowait()
                    await trio.lowlevel.checkpoint()  # stay fair to the other tasks
                except trio.WouldBlock:
                    if deadline is None:
                        event = await receive.receive()
                    else:
                        with trio.move_on_at(self._trio_time(deadline)):
                            event = await receive.receive()
            else:
                await trio.lowlevel.checkpoint()
            if event is None:
                self._step(Tick())
            else:
                self._step(event)
            # A burst is taken without checkpoints; timers are checked once per burst.
            for _ in range(_BATCH):
                try:
                    event = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                self._step(event)
            if self._due():
                self._step(Tick())
            self.port.kick()
            for hook in self.after_burst:
                hook()
            recorder = self.recorder
            if recorder is not None:
                recorder.flush()
                if recorder.backlogged:
                    # Lossless journal behind its budget: take no input until it catches up.
                    await trio.to_thread.run_sync(recorder.wait_writable, abandon_on_cancel=True)

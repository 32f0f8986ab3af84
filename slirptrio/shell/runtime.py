"""The runtime: the door, the clock, and dispatch of effects to transports and flows.

The task that has an input steps the door itself: the transport with a run of guest frames, a
flow's task with what its socket read, the timer task with a :class:`Tick`. ``inbox.send`` (or
``send_nowait``) stamps the event with the clock, steps the core through the :class:`Door`,
journals the step and dispatches the effects, all without waiting; an event handed over while a
step is in progress (a handler reporting ``TcpSent`` at once) is queued and stepped right after
it, so steps never interleave and the journal's order is the order in which the core consumed
them. After the last queued step the frames for a stream guest are written at once
(:meth:`GuestPort.kick`), the ``after_burst`` hooks run (host sockets' pending data) and the
burst's journal records and pcap frames go to the writer thread
(:mod:`slirptrio.journal.writer`).

There is no queue and no door task to wake: an input costs its producer's own wakeup and
nothing more. Backpressure is the producers' own pace: each steps what it read before it reads
again; under the lossless journal policy ``await inbox.send`` also waits while the writer is
behind its budget, so the guest and the host sockets wait for the disk. A handler or hook that
raises is logged and counted (``dispatch_errors``); it never stops the door or the task that
happened to step it.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from typing import Any

import trio

from slirptrio.core.events import (
    CoreError,
    Effect,
    Event,
    FrameRuns,
    PortSendFrames,
    SendFrame,
    SendFrames,
    Tick,
)
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal.writer import Recorder
from slirptrio.shell.inbox import Inbox
from slirptrio.shell.transport import GuestPort

__all__ = ["Recorder", "Runtime"]

log = logging.getLogger("slirptrio.runtime")

_MAX_DRAIN = 4096  # steps in one go before the pending queue is left to the timer task


class _Inbox:
    """The runtime's inbox: handing over an event steps the door at once."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def send_nowait(self, event: Event, /) -> None:
        self._runtime.submit(event)

    async def send(self, event: Event, /) -> None:
        runtime = self._runtime
        runtime.submit(event)
        recorder = runtime.recorder
        if recorder is not None and recorder.backlogged:
            # Lossless journal behind its budget: this producer reads no more until it catches up.
            await trio.to_thread.run_sync(recorder.wait_writable, abandon_on_cancel=True)
            return
        # A cancellation point, as a channel's send is; no schedule point: the caller's next
        # await (its socket read) is one.
        await trio.lowlevel.checkpoint_if_cancelled()


class Runtime:
    """Runs a :class:`Stack` against the real world (or a test's fake one).

    ``dispatch`` handlers receive the non-frame effects (host socket actions); frames go to
    ``port``. ``inbox`` is where producers hand over events (stepped at once); :meth:`run`
    (in a nursery) delivers the core's timers.
    """

    def __init__(self, stack: Stack, port: GuestPort, recorder: Recorder | None = None) -> None:
        self.stack = stack
        self.port = port
        # Switch ports 1 and up (several guests, issue 22): the transport task of each adds
        # its queue here while its guest is attached.
        self.ports: dict[int, GuestPort] = {}
        self.recorder = recorder
        self.door = Door(stack, recorder)
        if recorder is not None:
            recorder.attach(self.door.snapshot)
        self.inbox: Inbox = _Inbox(self)
        # The door has logged a core exception already; there is nothing to do for it.
        self.handlers: dict[type[Effect], Callable[[Any], None]] = {CoreError: lambda _e: None}
        self.after_burst: list[Callable[[], None]] = []  # called after each burst of steps
        self.dispatch_errors = 0
        # Called with (t_ns, event, effects) after every step (live captures); must not block.
        self.taps: list[Callable[[int, Event, list[Effect]], None]] = []
        self._pending: collections.deque[Event] = collections.deque()
        self._stepping = False
        self._timer: trio.CancelScope | None = None
        self._clock = trio.lowlevel.current_clock()  # what trio.current_time() asks
        self._t0 = self._clock.current_time()
        self.submit(FrameRuns(True))  # frames to the guest leave as runs

    def now_ns(self) -> int:
        return int((self._clock.current_time() - self._t0) * 1e9)

    def _trio_time(self, t_ns: int) -> float:
        return self._t0 + t_ns / 1e9

    # ---------------------------------------------------------------------------- stepping

    def submit(self, event: Event | None = None) -> None:
        """Step ``event`` through the door now, or right after the step in progress (None:
        step what is pending)."""
        if event is not None:
            self._pending.append(event)
        if self._stepping:
            return
        self._stepping = True
        try:
            # One function for the whole burst (the step, the dispatch, the hooks and the timers
            # inline): it runs for every wakeup, so every call saved here is saved per input.
            pending = self._pending
            steps = 0
            deadline = None
            now = int((self._clock.current_time() - self._t0) * 1e9)  # one timestamp per burst
            ticked = False
            recorder = self.recorder
            step = self.door.step
            door = self.door
            taps = self.taps
            port = self.port
            handlers = self.handlers
            while pending and steps < _MAX_DRAIN:
                while pending and steps < _MAX_DRAIN:
                    event = pending.popleft()
                    effects = step(event, now)
                    steps += 1
                    for tap in taps:
                        try:
                            tap(door.now_ns, event, effects)
                        except Exception:
                            self.dispatch_errors += 1
                            log.exception("tap %r failed", tap)
                    for effect in effects:
                        t = type(effect)
                        if t is SendFrames:
                            port.put_run(effect.data)  # type: ignore[attr-defined]
                        elif t is SendFrame:
                            port.put(effect.data)  # type: ignore[attr-defined]
                        elif t is PortSendFrames:
                            extra = self.ports.get(effect.port)  # type: ignore[attr-defined]
                            if extra is not None:  # a port that just left: its frames are lost
                                extra.put_run(effect.data)  # type: ignore[attr-defined]
                        else:
                            handler = handlers.get(t)
                            if handler is None:
                                log.error("no handler for effect %r", effect)
                                continue
                            try:
                                handler(effect)
                            except Exception:
                                self.dispatch_errors += 1
                                log.exception("handler for %r failed", effect)
                    if recorder is not None and recorder.flush_due:
                        recorder.flush()  # a segment's worth already: between two steps
                if port._queue:  # kick()'s own test, inline: most bursts leave nothing for it
                    port.kick()
                if self.ports:
                    for extra in self.ports.values():
                        extra.kick()
                # The after-burst hooks (host sockets' pending data) may hand over more events
                # (TcpSent): stepped in this loop.
                for hook in self.after_burst:
                    try:
                        hook()
                    except Exception:
                        self.dispatch_errors += 1
                        log.exception("after-burst hook %r failed", hook)
                if pending and steps < _MAX_DRAIN:
                    continue
                # Timers once per drain, when the burst and what it set off are done (the core asks
                # for no more; every step of the drain has the same clock): one poll_at, and a
                # second only after a Tick.
                deadline = self.stack.poll_at()
                if not ticked and deadline is not None and deadline <= now:
                    ticked = True
                    pending.append(Tick())
            if recorder is not None:
                recorder.flush()  # to the writer thread; never fails here
            # Bring the timer task's wakeup forward to the core's next deadline (at once, for
            # steps left pending).
            scope = self._timer
            if scope is not None:
                if pending:
                    scope.deadline = -math.inf
                elif deadline is not None:
                    at = self._t0 + deadline / 1e9
                    if at < scope.deadline:
                        scope.deadline = at
        finally:
            self._stepping = False

    def _due(self) -> bool:
        deadline = self.stack.poll_at()
        return deadline is not None and deadline <= self.now_ns()

    # ------------------------------------------------------------------------------ timers

    async def run(self) -> None:
        """Deliver the core's timers (a :class:`Tick` whenever its deadline passes), forever
        (until cancelled). Inputs need no task: producers step them (see :meth:`submit`)."""
        while True:
            with trio.CancelScope() as scope:
                deadline = self.stack.poll_at()
                scope.deadline = math.inf if deadline is None else self._trio_time(deadline)
                self._timer = scope
                await trio.sleep_forever()
            self._timer = None
            if self._due():
                self.submit(Tick())
            elif self._pending and not self._stepping:
                self.submit()
            else:
                # A deadline the core has since dropped (an ACK came before the timer): back
                # to sleep at once; the sleep is the checkpoint.
                continue
            await trio.lowlevel.checkpoint()

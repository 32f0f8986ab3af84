"""The runtime: the door, the clock, and dispatch of effects to transports and flows.

The task that has an input steps the door itself: the transport with a run of guest frames, a
flow's task with what its socket read, the timer task with a :class:`Tick`. ``inbox.send`` (or
``send_nowait``) stamps the event with the clock, steps the core through the :class:`Door`,
journals the step and dispatches the effects, all without waiting; an event handed over while a
step is in progress (a handler reporting ``TcpSent`` at once) is queued and stepped right after
it, so steps never interleave and the journal's order is the order in which the core consumed
them. After the last queued step the frames for a stream guest are written at once
(:meth:`GuestPort.kick`), the ``after_burst`` hooks run (host sockets' pending data) and the
journal and pcap go to the kernel.

There is no queue and no door task to wake: an input costs its producer's own wakeup and
nothing more. Backpressure is the producers' own pace: each steps what it read before it reads
again. A handler or hook that raises is logged and counted (``dispatch_errors``); it never
stops the door or the task that happened to step it.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Callable
from typing import IO, Any

import trio

from slirptrio.core.events import (
    Effect,
    Event,
    FrameRuns,
    GuestFrame,
    GuestFrames,
    SendFrame,
    SendFrames,
    Tick,
)
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import JournalWriter
from slirptrio.shell.inbox import Inbox
from slirptrio.shell.transport import GuestPort
from slirptrio.wire.pcap import PcapWriter

log = logging.getLogger("slirptrio.runtime")

_MAX_DRAIN = 4096  # steps in one go before the pending queue is left to the timer task


_IOV_MAX = 1024


def _writev_to(fd: int) -> Callable[[list[bytes]], None]:
    """Write buffers to ``fd`` with writev: straight from the frames, no joined copy."""

    def write_parts(parts: list[bytes]) -> None:
        for i in range(0, len(parts), _IOV_MAX):
            chunk = parts[i : i + _IOV_MAX]
            n = os.writev(fd, chunk)
            total = sum(len(p) for p in chunk)
            if n < total:  # a short write (rare): finish it the plain way
                rest = memoryview(b"".join(chunk))[n:]
                while rest:
                    rest = rest[os.write(fd, rest) :]

    return write_parts


class Recorder:
    """The door's sink: journal records and the pcap view of every frame in and out."""

    def __init__(
        self, journal: JournalWriter | None, pcap: IO[bytes] | None, origin_ns: int
    ) -> None:
        self.journal = journal
        self._pcap_file = pcap
        self._pcap: PcapWriter | None = None
        if pcap is not None:
            try:
                write_parts: Callable[[list[bytes]], None] | None = _writev_to(pcap.fileno())
            except (OSError, ValueError):  # not a real file (a test's BytesIO)
                write_parts = None
            self._pcap = PcapWriter(pcap, write_parts=write_parts)
        self._origin_ns = origin_ns

    def __call__(self, seq: int, t_ns: int, event: Event, effects: list[Effect]) -> None:
        if self.journal is not None:
            self.journal.record(seq, t_ns, event, effects)
        pcap = self._pcap
        if pcap is not None:
            ts = self._origin_ns + t_ns
            if type(event) is GuestFrame:
                pcap.write(ts, event.data)
            for eff in effects:
                if type(eff) is SendFrame:
                    pcap.write(ts, eff.data)

    def flush(self) -> None:
        if self.journal is not None:
            self.journal.flush()
        if self._pcap is not None:
            self._pcap.flush()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        if self._pcap is not None:
            self._pcap.flush()
        if self._pcap_file is not None:
            self._pcap_file.close()


def recording_sink(recorder: Recorder) -> Callable[[int, int, Event, list[Effect]], None]:
    """The door's sink: ``recorder``, and the pcap view of runs, which the recorder only knows
    as single frames (interim, until the flight recorder's writer takes runs)."""
    pcap: PcapWriter | None = getattr(recorder, "_pcap", None)
    origin: int = getattr(recorder, "_origin_ns", 0)
    if pcap is None:
        return recorder

    def record(seq: int, t_ns: int, event: Event, effects: list[Effect]) -> None:
        recorder(seq, t_ns, event, effects)
        assert pcap is not None
        ts = origin + t_ns
        if type(event) is GuestFrames:
            pcap.write_run(ts, event.data)
        for eff in effects:
            if type(eff) is SendFrames:
                pcap.write_run(ts, eff.data)

    return record


class _Inbox:
    """The runtime's inbox: handing over an event steps the door at once."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def send_nowait(self, event: Event, /) -> None:
        self._runtime.submit(event)

    async def send(self, event: Event, /) -> None:
        self._runtime.submit(event)
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
        self.recorder = recorder
        self.door = Door(stack, None if recorder is None else recording_sink(recorder))
        self.inbox: Inbox = _Inbox(self)
        self.handlers: dict[type[Effect], Callable[[Any], None]] = {}
        self.after_burst: list[Callable[[], None]] = []  # called after each burst of steps
        self.dispatch_errors = 0
        self._pending: collections.deque[Event] = collections.deque()
        self._stepping = False
        self._timer: trio.CancelScope | None = None
        self._t0 = trio.current_time()
        self.submit(FrameRuns(True))  # frames to the guest leave as runs

    def now_ns(self) -> int:
        return int((trio.current_time() - self._t0) * 1e9)

    def _trio_time(self, t_ns: int) -> float:
        return self._t0 + t_ns / 1e9

    # ---------------------------------------------------------------------------- stepping

    def submit(self, event: Event) -> None:
        """Step ``event`` through the door now, or right after the step in progress."""
        self._pending.append(event)
        if self._stepping:
            return
        self._stepping = True
        try:
            self._drain()
        finally:
            self._stepping = False

    def _drain(self) -> None:
        pending = self._pending
        steps = 0
        deadline = None
        now = self.now_ns()  # one timestamp per burst
        while pending and steps < _MAX_DRAIN:
            while pending and steps < _MAX_DRAIN:
                self._step(pending.popleft(), now)
                steps += 1
            # Timers are checked once per burst, as the core asks for no more.
            deadline = self.stack.poll_at()
            if deadline is not None and deadline <= now:
                self._step(Tick(), now)
                deadline = self.stack.poll_at()
            self.port.kick()
            for hook in self.after_burst:
                try:
                    hook()  # may hand over more events (TcpSent): stepped in this loop
                except Exception:
                    self.dispatch_errors += 1
                    log.exception("after-burst hook %r failed", hook)
        if self.recorder is not None:
            try:
                self.recorder.flush()
            except OSError:
                # Whichever task stepped the burst must not pay for the disk (the guest's
                # connection, a flow): the journal stays incomplete, as the log says.
                self.dispatch_errors += 1
                log.exception("writing the journal or pcap failed")
        self._arm_timer(deadline, bool(pending))

    def _step(self, event: Event, now: int) -> None:
        for effect in self.door.step(event, now):
            t = type(effect)
            if t is SendFrames:
                self.port.put_run(effect.data)  # type: ignore[attr-defined]
            elif t is SendFrame:
                self.port.put(effect.data)  # type: ignore[attr-defined]
            else:
                handler = self.handlers.get(t)
                if handler is None:
                    log.error("no handler for effect %r", effect)
                    continue
                try:
                    handler(effect)
                except Exception:
                    self.dispatch_errors += 1
                    log.exception("handler for %r failed", effect)

    def _due(self) -> bool:
        deadline = self.stack.poll_at()
        return deadline is not None and deadline <= self.now_ns()

    # ------------------------------------------------------------------------------ timers

    def _arm_timer(self, deadline: int | None, now: bool = False) -> None:
        """Bring the timer task's wakeup forward to the core's next ``deadline`` (``now``: at
        once, for steps left pending)."""
        scope = self._timer
        if scope is None:
            return
        if now:
            scope.deadline = -math.inf
            return
        if deadline is not None:
            at = self._trio_time(deadline)
            if at < scope.deadline:
                scope.deadline = at

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
                self._stepping = True
                try:
                    self._drain()
                finally:
                    self._stepping = False
            await trio.lowlevel.checkpoint()

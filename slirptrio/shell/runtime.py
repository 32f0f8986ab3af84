"""The runtime: the door loop, the clock, and dispatch of effects to transports and flows.

One task runs the door: it takes the next input from the inbox (or a :class:`Tick` when the core's
deadline passes), stamps it with the clock, steps the core through the :class:`Door`, journals
the step and dispatches the effects without blocking. It takes a burst of up to 256 inputs per
wakeup without a checkpoint; after the burst it writes the frames for a stream guest itself
(:meth:`GuestPort.kick`), runs the ``after_burst`` hooks (host sockets' pending data), and hands
the journal and pcap to the kernel. Everything else — the transport, each flow's socket tasks —
only ever puts events into the bounded inbox; a full inbox makes producers wait, which is the
backpressure toward a guest or host peer that sends faster than we process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import IO, Any

import trio

from slirptrio.core.events import Effect, Event, GuestFrame, SendFrame, Tick
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import JournalWriter
from slirptrio.shell.transport import GuestPort
from slirptrio.wire.pcap import PcapWriter

log = logging.getLogger("slirptrio.runtime")

INBOX_SIZE = 1024
_BATCH = 256


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
        self.inbox, self._receive = trio.open_memory_channel[Event](inbox_size)
        self.handlers: dict[type[Effect], Callable[[Any], None]] = {}
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
            if self.recorder is not None:
                self.recorder.flush()

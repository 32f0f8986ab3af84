"""Where the shell's tasks hand their events to the door (see :class:`~slirptrio.shell.runtime.
Runtime`): anything with ``send_nowait(event)`` and ``await send(event)``, as a trio memory
channel has (tests use one)."""

from __future__ import annotations

from typing import Protocol

from slirptrio.core.events import Event


class Inbox(Protocol):
    def send_nowait(self, event: Event, /) -> None:
        """Hand over ``event`` without waiting."""
        ...

    async def send(self, event: Event, /) -> None:
        """Hand over ``event``; may wait (backpressure)."""
        ...

"""Progress for long replays: one self-rewriting line on a terminal, nothing otherwise.

::

    with Progress("replaying", total=os.path.getsize(path)) as progress:
        for rec in records:
            ...
            progress.update(f.tell())

``total`` and ``update()`` are in any unit that grows (bytes read is the usual one: a journal's
record count is not known in advance). The line is drawn at most every ``interval`` seconds
and only after ``delay`` seconds, so a short replay prints nothing; it is erased on exit.
When ``stream`` is not a terminal (a pipe, a file, a test), nothing is ever written.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO

DELAY_S = 1.0
INTERVAL_S = 0.25


class Progress:
    """A progress line on ``stream`` (default stderr) while it is a terminal."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: IO[str] | None = None,
        enabled: bool | None = None,
        delay: float = DELAY_S,
        interval: float = INTERVAL_S,
    ) -> None:
        self.label = label
        self.total = total
        self._stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self._stream, "isatty", None)
            enabled = bool(isatty is not None and isatty())
        self.enabled = enabled
        self._start = time.monotonic()
        self._next = self._start + delay
        self._interval = interval
        self._drawn = 0  # width of the line on screen

    def update(self, done: int, note: str = "") -> None:
        """Report ``done`` units so far (cheap: call it as often as you like)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        elapsed = now - self._start
        if self.total:
            frac = min(1.0, done / self.total)
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            text = f"{self.label}: {frac:6.1%}, {elapsed:.0f} s, about {eta:.0f} s left"
        else:
            text = f"{self.label}: {done}, {elapsed:.0f} s"
        if note:
            text += f" ({note})"
        self._write(text)

    def _write(self, text: str) -> None:
        pad = max(0, self._drawn - len(text))
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()
        self._drawn = len(text)

    def close(self) -> None:
        """Erase the line (if one was drawn)."""
        if self._drawn:
            self._stream.write("\r" + " " * self._drawn + "\r")
            self._stream.flush()
            self._drawn = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

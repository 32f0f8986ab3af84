"""Reading a non-blocking socket with one scheduling hop per wakeup, not two.

``await trio_sock.recv(n)`` yields to the scheduler before returning even when the data was
there (a second pass of the run loop per read), and waits with a fresh epoll registration only
after a failed attempt. :class:`TryFirst` reads at once and waits only when the socket is
empty; so that a socket that always has data cannot starve the other tasks, every
``STREAK``-th read in a row without a wait yields first (as trio's own read would). A read
that got less than it asked for has emptied the socket: the next one waits first, sparing a
read that would fail (a syscall and an exception per wakeup).
"""

from __future__ import annotations

import os

import trio

STREAK = 16


class TryFirst:
    """Reads from one trio socket (stream sockets: ``os.read`` semantics, b"" at EOF)."""

    __slots__ = ("_empty", "_sock", "_streak")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._streak = 0
        # The last read took all there was. A fresh socket (just connected) usually has nothing
        # yet either: wait first (a socket that has data is reported readable at once).
        self._empty = True

    # (The wait before the read is spelled out in both methods, not a shared coroutine: one
    # coroutine less per wakeup.)

    async def recv(self, max_bytes: int) -> bytes:
        """At most ``max_bytes`` bytes, at least one; b"" at EOF. Raises OSError."""
        sock = self._sock
        if self._empty:
            self._empty = False
            self._streak = 0
            await trio.lowlevel.wait_readable(sock)
        elif self._streak >= STREAK:
            self._streak = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = os.read(sock.fileno(), max_bytes)
            except BlockingIOError:
                self._streak = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            self._streak += 1
            self._empty = len(data) < max_bytes
            return data

    async def recv_into(self, view: memoryview) -> int:
        """Read into ``view`` (non-empty); the count, 0 at EOF. Raises OSError."""
        sock = self._sock
        if self._empty:
            self._empty = False
            self._streak = 0
            await trio.lowlevel.wait_readable(sock)
        elif self._streak >= STREAK:
            self._streak = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                n = os.readv(sock.fileno(), [view])
            except BlockingIOError:
                self._streak = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            self._streak += 1
            self._empty = n < len(view)
            return n

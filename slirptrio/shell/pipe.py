"""An in-process, bounded, bidirectional byte pipe between application code and a TCP flow.

:func:`pipe_pair` returns two ends of one connection:

* :class:`PipeStream`, a :class:`trio.abc.HalfCloseableStream` for application code (a trio
  handler serving a guest connection in-process);
* :class:`PipeEnd`, the flow side, which :class:`slirptrio.shell.flows.TcpFlows` drives like a host
  socket (it has the ``HostEnd`` shape: ``recv``/``send``/``shutdown_write``/``abort``/``close``).

Each direction buffers at most ``limit`` bytes. A writer facing a full buffer waits, so a slow
reader slows the writer down: the application is paced by the guest's TCP window and the flow
by the application's reads. Nothing else is buffered.

Ends of the connection, as seen from the other side:

============================  ==============================================================
flow side                     application side sees
============================  ==============================================================
``shutdown_write()``          ``receive_some`` returns b"" once the buffer is drained
``close()``                   the same; ``send_all`` raises :exc:`trio.BrokenResourceError`
``abort()``                   every call raises :exc:`trio.BrokenResourceError`, buffers dropped
============================  ==============================================================

============================  ==============================================================
application side              flow side sees
============================  ==============================================================
``send_eof()``                ``recv`` returns b"" once the buffer is drained
``aclose()``                  the same; ``send`` raises :exc:`BrokenPipeError` (EPIPE)
``abort()``                   every call raises :exc:`ConnectionResetError` (ECONNRESET)
============================  ==============================================================

Cancellation: every async method is a checkpoint. A cancelled ``receive_some``/``recv`` or
``send`` has consumed or accepted nothing. A cancelled ``send_all`` may have put a prefix of its
data in the buffer (as with trio's own streams, the amount is not reported). ``aclose`` and
``close`` close first and checkpoint afterwards, so they take effect even when cancelled.
"""

from __future__ import annotations

import errno as _errno
import operator
from types import TracebackType

import trio

PIPE_LIMIT = 256 * 1024
"""Default bound of each direction's buffer, in bytes."""


class _Guard:
    """Raises :exc:`trio.BusyResourceError` when a second task enters a one-task operation."""

    __slots__ = ("_busy", "_what")

    def __init__(self, what: str) -> None:
        self._busy = False
        self._what = what

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(f"another task is already {self._what}")
        self._busy = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._busy = False


class _Pipe:
    """State shared by the two ends; every change wakes every waiter (there are at most four)."""

    __slots__ = (
        "app_closed",
        "app_eof",
        "app_reset",
        "flow_closed",
        "flow_eof",
        "flow_reset",
        "limit",
        "lot",
        "to_app",
        "to_flow",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.to_flow = bytearray()
        self.to_app = bytearray()
        self.app_eof = False  # the app will send no more: to_flow ends after its bytes
        self.flow_eof = False
        self.app_closed = False
        self.flow_closed = False
        self.app_reset = False  # the app aborted: the flow side sees ECONNRESET
        self.flow_reset = False  # the flow aborted: the app side sees BrokenResourceError
        self.lot = trio.lowlevel.ParkingLot()

    def changed(self) -> None:
        self.lot.unpark_all()


def _take(buf: bytearray, max_bytes: int) -> bytes:
    data = bytes(buf[:max_bytes])
    del buf[:max_bytes]
    return data


def _as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


class PipeStream(trio.abc.HalfCloseableStream):
    """The application's side of a :func:`pipe_pair`.

    Calls after the flow side aborted raise :exc:`trio.BrokenResourceError`; calls after
    :meth:`aclose` or :meth:`abort` raise :exc:`trio.ClosedResourceError`. Two tasks sending (or
    two receiving) at once get :exc:`trio.BusyResourceError`.
    """

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._send_guard = _Guard("sending on this PipeStream")
        self._recv_guard = _Guard("receiving on this PipeStream")

    def _check_send(self) -> None:
        p = self._pipe
        if p.app_closed:
            raise trio.ClosedResourceError("PipeStream is closed")
        if p.app_eof:
            raise trio.ClosedResourceError("send_eof() was called on this PipeStream")
        if p.flow_reset:
            raise trio.BrokenResourceError("the flow side aborted the connection")
        if p.flow_closed:
            raise trio.BrokenResourceError("the flow side closed the connection")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Put all of ``data`` in the buffer toward the flow, waiting while it is full.

        If cancelled, a prefix of ``data`` may already be buffered (and will be delivered).
        """
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            p = self._pipe
            view = _as_bytes_view(data)
            self._check_send()
            while view:
                free = p.limit - len(p.to_flow)
                if free > 0:
                    p.to_flow += view[:free]
                    view = view[free:]
                    p.changed()
                    continue
                await p.lot.park()
                self._check_send()
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the buffer toward the flow has room (or a send would fail at once)."""
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            p = self._pipe
            while True:
                if p.app_closed:
                    raise trio.ClosedResourceError("PipeStream is closed")
                if (
                    len(p.to_flow) < p.limit
                    or p.app_eof
                    or p.flow_reset
                    or p.flow_closed
                ):
                    break
                await p.lot.park()
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` (default: all buffered) bytes from the flow, waiting for some;
        b"" once the flow side has shut down its writing and everything was read.

        If cancelled, nothing was consumed.
        """
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._recv_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            p = self._pipe
            while True:
                if p.app_closed:
                    raise trio.ClosedResourceError("PipeStream is closed")
                if p.flow_reset:
                    raise trio.BrokenResourceError("the flow side aborted the connection")
                if p.to_app:
                    data = _take(p.to_app, max_bytes or len(p.to_app))
                    p.changed()
                    break
                if p.flow_eof or p.flow_closed:
                    data = b""
                    break
                await p.lot.park()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def send_eof(self) -> None:
        """Tell the flow side no more data follows (it reads b"" after the buffered bytes).

        A second call does nothing. If cancelled, no EOF was sent.
        """
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            p = self._pipe
            if p.app_closed:
                raise trio.ClosedResourceError("PipeStream is closed")
            if p.flow_reset:
                raise trio.BrokenResourceError("the flow side aborted the connection")
            if not p.app_eof:
                p.app_eof = True
                p.changed()
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def aclose(self) -> None:
        """Close both directions: bytes already sent still reach the flow, then EOF; unread
        bytes from the flow are dropped. Takes effect even if cancelled."""
        p = self._pipe
        if not p.app_closed:
            p.app_closed = True
            p.to_app.clear()
            p.changed()
        await trio.lowlevel.checkpoint()

    def abort(self) -> None:
        """Reset the connection: buffers are dropped and the flow side sees ECONNRESET.

        Does nothing once this stream is closed (the connection already ended normally).
        """
        p = self._pipe
        if p.app_closed:
            return
        p.app_closed = True
        p.app_reset = True
        p.to_app.clear()
        p.to_flow.clear()
        p.changed()


class PipeEnd:
    """The flow's side of a :func:`pipe_pair`, in the ``HostEnd`` shape :mod:`flows` drives.

    After the application aborted, calls raise :exc:`ConnectionResetError`; after this end's own
    :meth:`close` or :meth:`abort` they raise :exc:`trio.ClosedResourceError`.
    """

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._send_guard = _Guard("sending on this PipeEnd")
        self._recv_guard = _Guard("receiving on this PipeEnd")

    def _check_open(self) -> None:
        p = self._pipe
        if p.flow_closed:
            raise trio.ClosedResourceError("PipeEnd is closed")
        if p.app_reset:
            raise ConnectionResetError(_errno.ECONNRESET, "the application reset the pipe")

    async def recv(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes from the application, waiting for some; b"" at its EOF.

        If cancelled, nothing was consumed.
        """
        if operator.index(max_bytes) < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._recv_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            p = self._pipe
            while True:
                self._check_open()
                if p.to_flow:
                    data = _take(p.to_flow, max_bytes)
                    p.changed()
                    break
                if p.app_eof or p.app_closed:
                    data = b""
                    break
                await p.lot.park()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def send(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer as much of ``data`` as fits (at least one byte, waiting while the buffer is
        full) and return how much; 0 only for empty ``data``.

        If cancelled, nothing was accepted.
        """
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            p = self._pipe
            view = _as_bytes_view(data)
            while True:
                self._check_open()
                if p.flow_eof:
                    raise trio.ClosedResourceError("shutdown_write() was called on this PipeEnd")
                if p.app_closed:
                    raise BrokenPipeError(_errno.EPIPE, "the application closed the pipe")
                free = p.limit - len(p.to_app)
                if free > 0 or not view:
                    n = min(free, len(view))
                    if n:
                        p.to_app += view[:n]
                        p.changed()
                    break
                await p.lot.park()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return n

    async def shutdown_write(self) -> None:
        """Send EOF to the application after the buffered bytes. If cancelled, no EOF."""
        with self._send_guard:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check_open()
            p = self._pipe
            if not p.flow_eof:
                p.flow_eof = True
                p.changed()
            await trio.lowlevel.cancel_shielded_checkpoint()

    def abort(self) -> None:
        """Reset the connection: buffers are dropped, the application gets
        :exc:`trio.BrokenResourceError` from every call. Idempotent."""
        p = self._pipe
        if p.flow_reset:
            return
        p.flow_reset = True
        p.flow_closed = True
        p.to_app.clear()
        p.to_flow.clear()
        p.changed()

    async def close(self) -> None:
        """Close both directions: bytes already sent still reach the application, then EOF.
        Takes effect even if cancelled."""
        p = self._pipe
        if not p.flow_closed:
            p.flow_closed = True
            p.to_flow.clear()
            p.changed()
        await trio.lowlevel.checkpoint()


def pipe_pair(limit: int = PIPE_LIMIT) -> tuple[PipeStream, PipeEnd]:
    """A connected pair: the application's stream and the flow's end, each direction
    buffering at most ``limit`` bytes."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    pipe = _Pipe(limit)
    return PipeStream(pipe), PipeEnd(pipe)

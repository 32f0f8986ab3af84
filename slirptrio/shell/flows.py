"""Host-side TCP connections, one supervised task group per NAT flow.

The core decides; this module only does what the core's effects say and reports what the host
side did as events:

* ``TcpConnect`` starts the flow's task group: open the host end, then one reader and one writer
  task. The result comes back as ``TcpConnected`` or ``TcpConnectFailed(errno)``. ``host`` is
  either a name given to :meth:`TcpFlows.register_target` (the opener registered for it makes
  the end; the port is ignored) or an IP address literal (a TCP socket is connected). Anything
  else fails with EINVAL without any name lookup.
* :meth:`TcpFlows.adopt` starts the group for an end that is already connected (an accepted host
  connection, an in-process pipe); no ``TcpConnected`` is reported for it.
* ``TcpRecvCredit(n)`` lets the reader take ``n`` more bytes from the end; every read is
  reported as ``TcpData`` with its exact bytes. Without credit the reader does not read, so the
  host peer is slowed by the kernel's TCP window (or the pipe's bound): backpressure from the
  guest's window.
* ``TcpSend`` queues bytes; the writer reports each partial ``send`` as ``TcpSent(n)``. The queue
  is bounded by the core, which never has more than its window outstanding. With
  ``batched=True`` (the runtime's setting) a socket whose writer is idle gets the burst's bytes
  from :meth:`TcpFlows.kick` instead, in one non-blocking ``send`` at the end of the burst, and
  ``TcpSent`` goes straight into the inbox: no task switch on the common path. When the socket
  took all of it and the core's read-only check ``sent_can_wait`` says the report changes
  nothing the guest sees yet, the report is held and rides on the flow's next read as
  ``TcpDataSent`` (no step of its own: a request/response round trip is two steps); a shutdown,
  EOF, a later partial send or a send that would reopen the window reports it as ``TcpSent``.
* ``TcpShutdown`` shuts the write side once queued data is out; ``TcpClose`` ends the group
  (``abort``: the peer sees a reset — SO_LINGER 0 on a TCP socket, SIGKILL for a command).
* EOF from the peer is ``TcpEof``; an error is ``TcpReset(errno)``, aborts the end and ends the
  group.

The host side of a flow is a :class:`HostEnd`: :class:`SocketEnd` (TCP or unix stream socket),
:class:`StreamEnd` (any trio stream), :class:`ProcessEnd` (a spawned command's stdin/stdout, as
QEMU's ``guestfwd=...-cmd:COMMAND``) or :class:`slirptrio.shell.pipe.PipeEnd` (an in-process trio
handler). :func:`tcp_opener`, :func:`unix_opener`, :func:`cmd_opener` and :func:`handler_opener`
make openers for :meth:`TcpFlows.register_target`.

A failing flow never disturbs another: every task's exceptions end at its group, turning into a
``TcpReset`` event and a log line. An end is always closed when its group ends, within a bounded
time, shielded from cancellation.
"""

from __future__ import annotations

import collections
import contextlib
import errno as _errno
import functools
import ipaddress
import logging
import os
import select
import signal
import socket as _socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from slirptrio.core.events import (
    Event,
    TcpClose,
    TcpConnect,
    TcpConnected,
    TcpConnectFailed,
    TcpData,
    TcpDataSent,
    TcpEof,
    TcpRecvCredit,
    TcpReset,
    TcpSend,
    TcpSent,
    TcpShutdown,
)
from slirptrio.shell.inbox import Inbox
from slirptrio.shell.nbio import TryFirst
from slirptrio.shell.pipe import PIPE_LIMIT, PipeStream, pipe_pair

log = logging.getLogger("slirptrio.flows")

CONNECT_TIMEOUT_S = 20.0
"""Bound on a connect or an opener; past it the flow fails with ETIMEDOUT."""
CLOSE_TIMEOUT_S = 10.0
"""Bound on closing an end when its flow ends."""
PROCESS_GRACE_S = 0.5
"""How long a command may take to exit by itself after its pipes are closed."""
PROCESS_KILL_WAIT_S = 5.0
"""How long to wait for a SIGKILLed command to be reaped."""
KEEPALIVE_IDLE_S = 60
"""Host TCP sockets probe an idle peer after this long (SO_KEEPALIVE, TCP_KEEPIDLE)..."""
KEEPALIVE_INTERVAL_S = 15
"""...then every this many seconds (TCP_KEEPINTVL)..."""
KEEPALIVE_COUNT = 4
"""...and give up after this many unanswered probes (TCP_KEEPCNT): a dead host peer is noticed
after about two minutes and reported as ``TcpReset(ETIMEDOUT)``, so the guest gets RST and the
entry is freed instead of living forever."""
_READ_MAX = 1 << 18
_WRITE_MAX = 1 << 18
_IOV_MAX = 1024
_STREAM_CHUNK = 1 << 16


class HostEnd(Protocol):
    """The host side of one flow: a connected, bidirectional byte stream.

    ``recv`` and ``send`` are called by one task each, ``shutdown_write`` by the sending task;
    ``abort`` from anywhere (synchronous, must not raise, idempotent); ``close`` once, last,
    after ``abort`` if the flow is aborted. Errors are :exc:`OSError` with an errno (reported to
    the core as ``TcpReset(errno)``); anything else counts as EIO.
    """

    async def recv(self, max_bytes: int) -> bytes:
        """At most ``max_bytes`` (>= 1) bytes, at least one; b"" at EOF."""
        ...

    async def send(self, data: bytes | bytearray | memoryview) -> int:
        """Send a prefix of non-empty ``data``, at least one byte; return its length."""
        ...

    async def shutdown_write(self) -> None:
        """Signal EOF to the peer after everything sent so far."""
        ...

    def abort(self) -> None:
        """End abruptly (now, or at the coming :meth:`close`): the peer sees a reset or an
        abrupt end; calls still running or made later may fail."""
        ...

    async def close(self) -> None:
        """Release the end (graceful unless :meth:`abort` was called)."""
        ...


Opener = Callable[[], Awaitable[HostEnd]]
"""Makes a connected :class:`HostEnd`; raises :exc:`OSError` if it cannot."""


# ------------------------------------------------------------------------------- host ends


def _reset_error(exc: trio.BrokenResourceError) -> OSError:
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno:
        return OSError(cause.errno, cause.strerror)
    return ConnectionResetError(_errno.ECONNRESET, str(exc) or "connection reset")


def set_keepalive(sock: trio.socket.SocketType | _socket.socket) -> None:
    """Turn on TCP keepalive probes for ``sock`` with the KEEPALIVE_* settings of this module
    (best effort: options this OS lacks are skipped)."""
    # (try/except, not contextlib.suppress: this runs for every outbound connection)
    try:  # noqa: SIM105 - suppress() costs three calls
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1)
    except OSError:
        pass
    values = (KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    for opt, value in zip(_KEEPALIVE_OPTIONS, values, strict=True):
        if opt is not None:
            try:  # noqa: SIM105 - suppress() costs three calls
                sock.setsockopt(_socket.IPPROTO_TCP, opt, value)
            except OSError:
                pass


_KEEPALIVE_OPTIONS: tuple[int | None, ...] = tuple(
    getattr(_socket, name, None) for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT")
)  # None: an option this OS lacks

LISTENER_OPTIONS_INHERITED = sys.platform.startswith("linux")
"""Whether a socket accepted from a listener has the listener's TCP_NODELAY and keepalive
options (Linux copies them), so :func:`set_stream_options` is needed once per listener."""


def set_stream_options(sock: trio.socket.SocketType | _socket.socket) -> None:
    """TCP_NODELAY and keepalive probes (best effort), as every host TCP socket has them."""
    try:  # noqa: SIM105 - suppress() costs three calls
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    except OSError:
        pass
    set_keepalive(sock)


class SocketEnd:
    """A connected trio stream socket (TCP with TCP_NODELAY and keepalive probes, or AF_UNIX).

    ``abort`` sets SO_LINGER 0, so closing a TCP socket sends RST. A unix socket has no reset:
    its peer sees ECONNRESET only if it left bytes unread, EOF otherwise. ``options_set``: the
    socket has its TCP options already (accepted from a listener that has them, see
    :data:`LISTENER_OPTIONS_INHERITED`), so none are set here.
    """

    def __init__(self, sock: trio.socket.SocketType, options_set: bool = False) -> None:
        self.sock = sock
        if not options_set and sock.family in (_socket.AF_INET, _socket.AF_INET6):
            set_stream_options(sock)
        self.reader = TryFirst(sock)

    async def recv(self, max_bytes: int) -> bytes:
        return await self.reader.recv(max_bytes)

    async def send(self, data: bytes | bytearray | memoryview) -> int:
        return await self.sock.send(data)

    def try_sendv(self, parts: list[bytes | memoryview]) -> int:
        """Send what the socket takes of ``parts`` right now, one ``writev``, without waiting
        (0 if nothing)."""
        try:
            return os.writev(self.sock.fileno(), parts)
        except BlockingIOError:
            return 0

    async def sendv(self, parts: list[bytes | memoryview]) -> int:
        """Send a prefix of ``parts`` (at least one byte), waiting until the socket takes some."""
        while True:
            n = self.try_sendv(parts)
            if n:
                return n
            await trio.lowlevel.wait_writable(self.sock)

    async def shutdown_write(self) -> None:
        await trio.lowlevel.checkpoint()
        self.sock.shutdown(_socket.SHUT_WR)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def close(self) -> None:
        self.sock.close()
        await trio.lowlevel.checkpoint()


class StreamEnd:
    """Any trio stream. ``send`` writes a chunk of at most 64 KiB with ``send_all``.

    ``shutdown_write`` is ``send_eof`` on a :class:`trio.abc.HalfCloseableStream` and does
    nothing on other streams (their peer learns of the end at ``close``). ``abort`` closes with
    :func:`trio.aclose_forcefully`, after SO_LINGER 0 on a :class:`trio.SocketStream`.
    :exc:`trio.BrokenResourceError` becomes the :exc:`OSError` that caused it (ECONNRESET if
    none did).
    """

    def __init__(self, stream: trio.abc.HalfCloseableStream | trio.abc.Stream) -> None:
        self.stream = stream
        self._aborted = False

    async def recv(self, max_bytes: int) -> bytes:
        try:
            return bytes(await self.stream.receive_some(max_bytes))
        except trio.BrokenResourceError as exc:
            raise _reset_error(exc) from exc

    async def send(self, data: bytes | bytearray | memoryview) -> int:
        chunk = data[:_STREAM_CHUNK]
        try:
            await self.stream.send_all(chunk)
        except trio.BrokenResourceError as exc:
            raise _reset_error(exc) from exc
        return len(chunk)

    async def shutdown_write(self) -> None:
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            try:
                await self.stream.send_eof()
            except trio.BrokenResourceError as exc:
                raise _reset_error(exc) from exc
        else:
            await trio.lowlevel.checkpoint()

    def abort(self) -> None:
        self._aborted = True
        if isinstance(self.stream, trio.SocketStream):
            with contextlib.suppress(OSError):
                self.stream.socket.setsockopt(
                    _socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0)
                )

    async def close(self) -> None:
        if self._aborted:
            await trio.aclose_forcefully(self.stream)
        else:
            await self.stream.aclose()


class ProcessEnd:
    """A command's stdout (what we read) and stdin (what we write), one process per flow.

    :meth:`spawn` runs ``/bin/sh -c COMMAND`` in a new session (so it is its own process group
    and a terminal's Ctrl-C does not reach it) with stdin and stdout on pipes and stderr
    inherited, so a failing command can say why where the user sees it. ``shutdown_write``
    closes stdin. ``close`` closes both pipes and gives the command ``grace_s`` to exit by
    itself, then SIGKILLs its process group; ``abort`` SIGKILLs at once. Either way the process
    is reaped before ``close`` returns (waiting at most ``PROCESS_KILL_WAIT_S`` after the kill).
    ``close`` is shielded from cancellation.
    """

    def __init__(self, process: trio.Process, *, grace_s: float = PROCESS_GRACE_S) -> None:
        if process.stdin is None or process.stdout is None:
            raise ValueError("the process needs stdin and stdout pipes")
        self.process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._io = StreamEnd(trio.StapledStream(process.stdin, process.stdout))
        self._grace_s = grace_s
        self._aborted = False

    @classmethod
    async def spawn(cls, command: str, *, grace_s: float = PROCESS_GRACE_S) -> ProcessEnd:
        """Start ``/bin/sh -c command``; :exc:`OSError` if it cannot be started."""
        process = await trio.lowlevel.open_process(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            start_new_session=True,
        )
        return cls(process, grace_s=grace_s)

    async def recv(self, max_bytes: int) -> bytes:
        return await self._io.recv(max_bytes)

    async def send(self, data: bytes | bytearray | memoryview) -> int:
        return await self._io.send(data)

    async def shutdown_write(self) -> None:
        await self._io.shutdown_write()  # StapledStream.send_eof closes stdin

    def _kill(self) -> None:
        # The group id is the leader's pid, which cannot be reused while the leader is
        # unreaped; returncode reaps, so kill only while it says the leader is there.
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def abort(self) -> None:
        self._aborted = True
        self._kill()

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stdin)
            await trio.aclose_forcefully(self._stdout)
            if not self._aborted:
                with trio.move_on_after(self._grace_s):
                    await self.process.wait()
            self._kill()
            with trio.move_on_after(PROCESS_KILL_WAIT_S):
                await self.process.wait()
            if self.process.returncode is None:
                log.warning("command pid %d did not exit after SIGKILL", self.process.pid)


# --------------------------------------------------------------------------------- openers


@functools.lru_cache(maxsize=256)
def _literal_family(host: str) -> int | None:
    """AF_INET or AF_INET6 for an IP address literal, None for anything else (cached: a
    connection rate goes to few hosts)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    return _socket.AF_INET6 if addr.version == 6 else _socket.AF_INET


def _begin_tcp(host: str, port: int) -> tuple[_socket.socket, SocketEnd, bool]:
    """Start connecting a TCP socket to ``host`` (an IP address literal) and ``port``, without
    waiting: the socket, its end and whether it is connected already. Raises OSError (the
    socket closed) when it failed at once."""
    # Only literals: a guest must never make us resolve names (or hang on a resolver).
    family = _literal_family(host)
    if family is None:
        raise OSError(_errno.EINVAL, f"not an IP address: {host!r}")
    if not 0 <= port <= 0xFFFF:
        raise OSError(_errno.EINVAL, f"bad port {port}")
    # A plain non-blocking connect: the address is a literal already, so trio's connect (which
    # resolves it again and takes two more trips through the scheduler) has nothing to add.
    raw = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock = trio.socket.from_stdlib_socket(raw)  # makes it non-blocking (one ioctl, not two)
        end = SocketEnd(sock)
        err = raw.connect_ex((host, port))
        if err == _errno.EINPROGRESS:
            # To a local peer the handshake is often done by now: a zero-timeout poll spares
            # the wait's trip through the scheduler.
            poller = select.poll()  # no syscall until poll()
            poller.register(raw.fileno(), select.POLLOUT)
            if not poller.poll(0):
                return raw, end, False
            err = raw.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        raw.close()
        raise
    return raw, end, True


async def _finish_tcp(raw: _socket.socket, end: SocketEnd) -> SocketEnd:
    """Wait for :func:`_begin_tcp`'s connect to finish; raises OSError (the socket closed) if
    it failed, and closes the socket when cancelled."""
    try:
        await trio.lowlevel.wait_writable(raw)
        err = raw.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        raw.close()
        raise
    return end


async def _open_tcp(host: str, port: int) -> SocketEnd:
    await trio.lowlevel.checkpoint_if_cancelled()
    raw, end, done = _begin_tcp(host, port)
    return end if done else await _finish_tcp(raw, end)


def tcp_opener(host: str, port: int) -> Opener:
    """Connect a TCP socket to ``host`` (an IP address literal, never a name) and ``port``."""

    async def open_tcp() -> HostEnd:
        return await _open_tcp(host, port)

    return open_tcp


def unix_opener(path: str | os.PathLike[str]) -> Opener:
    """Connect a unix stream socket to ``path``."""
    target = os.fspath(path)

    async def open_unix() -> HostEnd:
        sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            await sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return SocketEnd(sock)

    return open_unix


def cmd_opener(command: str, *, grace_s: float = PROCESS_GRACE_S) -> Opener:
    """Spawn ``/bin/sh -c command`` per connection (see :class:`ProcessEnd`)."""

    async def open_cmd() -> HostEnd:
        return await ProcessEnd.spawn(command, grace_s=grace_s)

    return open_cmd


def handler_opener(
    nursery: trio.Nursery,
    handler: Callable[[PipeStream], Awaitable[None]],
    *,
    limit: int = PIPE_LIMIT,
) -> Opener:
    """Serve each connection in-process: ``handler(stream)`` runs in ``nursery`` with the
    application side of a new :func:`pipe_pair`, the flow gets the other side.

    When the handler returns, its stream is closed (``aclose``); when it raises, the exception
    is logged and the connection reset (the flow sees ECONNRESET), never passed to ``nursery``.
    A closed ``nursery`` refuses connections (ECONNREFUSED). The handler task belongs to
    ``nursery``, not to the flow: when the flow ends, the handler's blocked calls return EOF or
    raise :exc:`trio.BrokenResourceError`, and it is expected to return then.
    """

    async def open_handler() -> HostEnd:
        # Checkpoint before the pair exists: a cancellation after it would leak the handler.
        await trio.lowlevel.checkpoint()
        app, end = pipe_pair(limit)
        try:
            nursery.start_soon(_run_handler, handler, app)
        except RuntimeError:
            app.abort()
            raise ConnectionRefusedError(_errno.ECONNREFUSED, "handler nursery is closed") from None
        return end

    return open_handler


async def _run_handler(handler: Callable[[PipeStream], Awaitable[None]], app: PipeStream) -> None:
    ok = False
    try:
        await handler(app)
        ok = True
    except Exception:
        log.exception("forward handler %r failed", handler)
    finally:
        if ok:
            await app.aclose()
        else:
            app.abort()


# ----------------------------------------------------------------------------------- flows


class _OutQueue:
    """Bytes waiting for a host end: the core's ``TcpSend`` data as it came, never copied or
    joined; sent with ``writev`` (a list of buffers) or a chunk at a time."""

    __slots__ = ("_chunks", "size")

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes | memoryview] = collections.deque()
        self.size = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self.size += len(data)

    def views(self, max_bytes: int) -> list[bytes | memoryview]:
        """The first chunks, up to about ``max_bytes`` (at least one), as they are."""
        out: list[bytes | memoryview] = []
        size = 0
        for chunk in self._chunks:
            out.append(chunk)
            size += len(chunk)
            if size >= max_bytes or len(out) >= _IOV_MAX:
                break
        return out

    def first(self, max_bytes: int) -> bytes | memoryview:
        """The first chunk, cut to ``max_bytes``."""
        chunk = self._chunks[0]
        return chunk if len(chunk) <= max_bytes else memoryview(chunk)[:max_bytes]

    def consume(self, n: int) -> None:
        """Forget the first ``n`` bytes (they were sent)."""
        chunks = self._chunks
        self.size -= n
        while n:
            k = len(chunks[0])
            if n < k:
                chunks[0] = memoryview(chunks[0])[n:]
                return
            chunks.popleft()
            n -= k


class _TcpFlow:
    def __init__(self, flow: int) -> None:
        self.flow = flow
        self.scope = trio.CancelScope()
        self.end: HostEnd | None = None
        self.credit = 0
        # Made afresh for each wait (None until the first): a set() with no waiter is a no-op.
        self.credit_changed: trio.Event | None = None
        self.outbuf = _OutQueue()
        self.unreported = 0  # bytes sent directly whose TcpSent the writer must still report
        # Bytes sent directly whose report rides on the flow's next TcpDataSent (the core said
        # it may wait: TcpNat.sent_can_wait); reported as TcpSent before anything else.
        self.held = 0
        self.writing = False  # the writer task has a send in flight
        self.shutdown = False
        # The write side runs in a task only while there is something to wait for (a socket
        # that did not take everything, a non-socket end, a shutdown after queued data).
        self.nursery: trio.Nursery | None = None  # the flow's own, while it is being served
        self.writer_running = False
        self.write_done = False  # shut down for writing: the flow ends once the peer's EOF is in
        self.write_done_changed: trio.Event | None = None
        self.failure: list[OSError] = []
        self.closed = False
        self.finished = False  # the flow's task is done with its end (closed it)
        self.aborting = False
        self._aborted = False

    def poke_reader(self) -> None:
        if self.credit_changed is not None:
            self.credit_changed.set()

    def done_writing(self) -> None:
        self.write_done = True
        if self.write_done_changed is not None:
            self.write_done_changed.set()

    def abort_end(self) -> None:
        """Abort the end now, or as soon as there is one."""
        self.aborting = True
        if self.end is not None and not self._aborted:
            self._aborted = True
            try:
                self.end.abort()
            except Exception:
                log.exception("flow %d: abort failed", self.flow)


class TcpFlows:
    """Executes TCP effects for all flows; start it with ``await nursery.start(flows.run)``."""

    def __init__(self, inbox: Inbox, *, batched: bool = False) -> None:
        """``batched``: data for idle sockets waits for :meth:`kick`, which the owner calls
        after every burst of effects (the runtime does); otherwise writer tasks send it."""
        self._inbox = inbox
        self.batched = batched
        self._flows: dict[int, _TcpFlow] = {}
        self._targets: dict[str, Opener] = {}
        self._dirty: dict[int, _TcpFlow] = {}
        self._nursery: trio.Nursery | None = None
        self.failures = 0
        # The core's read-only check whether a send's report may wait for the flow's next read
        # (TcpNat.sent_can_wait); None: every send is reported at once, as TcpSent.
        self.sent_can_wait: Callable[[int, int], bool] | None = None

    def handlers(self) -> dict[type[Any], Any]:
        return {
            TcpConnect: self.connect,
            TcpSend: self.send,
            TcpRecvCredit: self.credit,
            TcpShutdown: self.shutdown,
            TcpClose: self.close,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ``await nursery.start(flows.run)`` returns once effects may
        be handled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def __len__(self) -> int:
        return len(self._flows)

    # ------------------------------------------------------------------- targets, adopt

    def register_target(self, name: str, opener: Opener) -> None:
        """Let ``TcpConnect(host=name)`` open its end with ``opener`` (any port). Replaces an
        earlier opener of that name; flows already open are not affected."""
        self._targets[name] = opener

    def unregister_target(self, name: str) -> None:
        """Forget ``name`` (no error if unknown); flows already open are not affected."""
        self._targets.pop(name, None)

    def adopt(self, flow: int, end: HostEnd) -> None:
        """Run ``flow`` on ``end``, already connected; effects for it work as after
        ``TcpConnected``, which is not reported. The flow owns ``end`` from now on."""
        state = self._new_flow(flow)
        state.end = end
        assert self._nursery is not None
        self._nursery.start_soon(self._adopted_main, state, end)

    # ------------------------------------------------------------------ effect handlers

    def connect(self, eff: TcpConnect) -> None:
        opener = self._targets.get(eff.host)
        state = self._new_flow(eff.flow)
        assert self._nursery is not None
        if opener is None:
            # An address: the connect starts in the step that asked for it. To a local peer it
            # is usually done at once: TcpConnected is then stepped right after this step (no
            # task switch, no drain of its own) and the flow's task starts to read.
            try:
                raw, end, done = _begin_tcp(eff.host, eff.port)
            except OSError as exc:
                self._connect_failed_now(state, exc.errno or _errno.ECONNREFUSED)
                return
            except Exception:
                log.exception("flow %d: connect failed", state.flow)
                self._connect_failed_now(state, _errno.EIO)
                return
            if done:
                state.end = end
                self._report_now(TcpConnected(state.flow))
                self._nursery.start_soon(self._adopted_main, state, end)
                return

            async def finish() -> HostEnd:
                return await _finish_tcp(raw, end)

            opener = finish
        self._nursery.start_soon(self._connect_main, state, opener)

    def _connect_failed_now(self, state: _TcpFlow, err: int) -> None:
        if self._flows.get(state.flow) is state:
            del self._flows[state.flow]
        self._report_now(TcpConnectFailed(state.flow, err))

    def _report_now(self, event: Event) -> None:
        """Hand ``event`` over now (stepped right after the step in progress), or from a
        task when the inbox has no room."""
        try:
            self._inbox.send_nowait(event)
        except trio.WouldBlock:
            assert self._nursery is not None
            self._nursery.start_soon(self._inbox.send, event)

    def send(self, eff: TcpSend) -> None:
        state = self._flows.get(eff.flow)
        if state is None:
            return
        state.outbuf.append(eff.data)
        if self.batched and isinstance(state.end, SocketEnd) and not state.writer_running:
            self._dirty[eff.flow] = state  # written by kick() at the end of the burst
        else:
            self._wake_writer(state)

    def kick(self) -> None:
        """Write the burst's data straight to idle sockets (one ``send`` per flow, no task
        switch); what a socket does not take at once is left to the flow's writer task."""
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = {}
        for state in dirty.values():
            end = state.end
            out = state.outbuf
            if (
                state.writer_running or state.closed or not out.size
                or not isinstance(end, SocketEnd)
            ):
                self._wake_writer(state)
                continue
            chunks = out._chunks  # one chunk (a round trip's request): no views() to build
            try:
                n = end.try_sendv([chunks[0]] if len(chunks) == 1 else out.views(_WRITE_MAX))
            except OSError:
                n = 0  # the writer meets the error and reports it
            if n:
                if n == out.size:
                    chunks.clear()  # consume(), all of it
                    out.size = 0
                else:
                    out.consume(n)
                n += state.held
                state.held = 0
                can_wait = self.sent_can_wait
                if (
                    can_wait is not None and not out.size and not state.unreported
                    and can_wait(state.flow, n)
                ):
                    state.held = n  # reported with the flow's next read: no step of its own
                    continue
                try:
                    self._inbox.send_nowait(TcpSent(state.flow, n))
                except trio.WouldBlock:
                    state.unreported += n
            if out.size or state.unreported:
                self._wake_writer(state)

    def credit(self, eff: TcpRecvCredit) -> None:
        state = self._flows.get(eff.flow)
        if state is not None:
            state.credit += eff.n
            state.poke_reader()

    def _release_held(self, state: _TcpFlow) -> None:
        """Report the held sends now (as TcpSent, stepped after the current step)."""
        n, state.held = state.held, 0
        if n:
            try:
                self._inbox.send_nowait(TcpSent(state.flow, n))
            except trio.WouldBlock:
                state.unreported += n
                self._wake_writer(state)

    def shutdown(self, eff: TcpShutdown) -> None:
        state = self._flows.get(eff.flow)
        if state is None:
            return
        # The core drains on what it was told the socket took: it must know all of it.
        self._release_held(state)
        state.shutdown = True
        end = state.end
        if (
            isinstance(end, SocketEnd) and not state.outbuf.size and not state.unreported
            and not state.writer_running and not state.write_done and not state.closed
        ):
            # Nothing queued: shut down now, no writer task needed.
            try:
                end.sock.shutdown(_socket.SHUT_WR)
            except OSError:
                pass  # the writer task meets the error again and reports it
            else:
                state.done_writing()
                return
        self._wake_writer(state)

    def _wake_writer(self, state: _TcpFlow) -> None:
        """Make the flow's write side look at its queue: start its task if none runs (a running
        one sees new data after its current send). Before the flow is served (connecting), its
        task does this once it starts."""
        end = state.end
        if state.writer_running or state.nursery is None or end is None or state.write_done:
            return
        state.writer_running = True
        state.nursery.start_soon(self._guarded, self._writer, state, end, state.failure,
                                 state.nursery)

    def close(self, eff: TcpClose) -> None:
        state = self._flows.pop(eff.flow, None)
        if state is None:
            return
        state.closed = True
        if eff.abort:
            state.abort_end()
        if not state.finished:  # (a finished flow's scope has nothing left to cancel)
            state.scope.cancel()

    # --------------------------------------------------------------------------- tasks

    def _new_flow(self, flow: int) -> _TcpFlow:
        assert self._nursery is not None, "TcpFlows.run() is not running"
        old = self._flows.pop(flow, None)
        if old is not None:
            # A reused id means the core forgot the old flow: end it quietly.
            log.warning("flow %d: started again while open; aborting the old one", flow)
            old.closed = True
            old.abort_end()
            old.scope.cancel()
        state = _TcpFlow(flow)
        self._flows[flow] = state
        return state

    async def _report(self, event: Event) -> None:
        await self._inbox.send(event)

    async def _connect_main(self, state: _TcpFlow, opener: Opener) -> None:
        with state.scope:
            err = 0
            end: HostEnd | None = None
            try:
                with trio.move_on_after(CONNECT_TIMEOUT_S):
                    end = await opener()
            except OSError as exc:
                err = exc.errno or _errno.ECONNREFUSED
            except Exception:
                log.exception("flow %d: opener failed", state.flow)
                err = _errno.EIO
            if end is None:
                if self._flows.get(state.flow) is state:
                    del self._flows[state.flow]
                await self._report(TcpConnectFailed(state.flow, err or _errno.ETIMEDOUT))
                return
            # No checkpoint between the opener's return and _serve's try: the end is closed.
            state.end = end
            await self._serve(state, end, report_connected=True)

    async def _adopted_main(self, state: _TcpFlow, end: HostEnd) -> None:
        with state.scope:
            await self._serve(state, end, report_connected=False)

    async def _serve(self, state: _TcpFlow, end: HostEnd, *, report_connected: bool) -> None:
        try:
            if state.aborting:
                state.abort_end()
            if report_connected:
                await self._report(TcpConnected(state.flow))
            # One task per flow: this one reads; the write side gets a task only when it has
            # to wait (see _wake_writer), and errors of either end the flow as one OSError.
            failure = state.failure
            async with trio.open_nursery() as nursery:
                state.nursery = nursery
                try:
                    if state.outbuf.size or state.shutdown or state.unreported:
                        self._wake_writer(state)
                    await self._reader(state, end)
                    while not state.write_done:  # the peer is done: wait for our side
                        changed = state.write_done_changed = trio.Event()
                        await changed.wait()
                except OSError as exc:
                    failure.append(exc)
                    nursery.cancel_scope.cancel()
                finally:
                    # Past this point the nursery takes no new task, and none is needed: the
                    # flow is done writing, failing or closed.
                    state.nursery = None
            if failure:
                raise failure[0]
        except OSError as exc:
            self.failures += 1
            log.info("flow %d: %s", state.flow, exc)
            state.abort_end()
            if not state.closed:
                await self._report(TcpReset(state.flow, exc.errno or _errno.EIO))
        except Exception:
            self.failures += 1
            log.exception("flow %d failed", state.flow)
            state.abort_end()
            if not state.closed:
                await self._report(TcpReset(state.flow, _errno.EIO))
        finally:
            if type(end) is SocketEnd:
                # A socket closes at once: no shielded, deadlined scope and no checkpoint.
                try:
                    end.sock.close()
                except Exception:
                    log.exception("flow %d: close failed", state.flow)
            else:
                with trio.CancelScope(shield=True) as cs:
                    cs.deadline = trio.current_time() + CLOSE_TIMEOUT_S
                    try:
                        await end.close()
                    except Exception:
                        log.exception("flow %d: close failed", state.flow)
                if cs.cancelled_caught:
                    log.warning("flow %d: close took over %.0f s", state.flow, CLOSE_TIMEOUT_S)
            state.finished = True  # no await from here to the task's end
            if self._flows.get(state.flow) is state and state.closed:
                self._flows.pop(state.flow, None)

    async def _guarded(
        self,
        task: Any,
        state: _TcpFlow,
        end: HostEnd,
        failure: list[OSError],
        nursery: trio.Nursery,
    ) -> None:
        # Host errors end the flow's group as one plain error, not an ExceptionGroup.
        try:
            await task(state, end)
        except OSError as exc:
            failure.append(exc)
            nursery.cancel_scope.cancel()

    async def _reader(self, state: _TcpFlow, end: HostEnd) -> None:
        # A socket's reads straight from its TryFirst, the reports straight to the inbox: one
        # coroutine each per read, not two (this runs for every wakeup toward the guest).
        recv = end.reader.recv if type(end) is SocketEnd else end.recv
        report = self._inbox.send
        flow = state.flow
        while True:
            while state.credit <= 0:
                changed = state.credit_changed = trio.Event()
                await changed.wait()
            data = await recv(min(state.credit, _READ_MAX))
            held, state.held = state.held, 0
            if not data:
                if held:
                    await report(TcpSent(flow, held))
                await report(TcpEof(flow))
                return
            if len(data) > state.credit:
                raise RuntimeError(f"recv returned {len(data)} bytes, more than asked")
            state.credit -= len(data)
            if held:
                await report(TcpDataSent(flow, held, data))
            else:
                await report(TcpData(flow, data))

    async def _writer(self, state: _TcpFlow, end: HostEnd) -> None:
        """Write the queue out, report progress, shut down when asked; return when there is
        nothing left to wait for (started again by _wake_writer)."""
        try:
            await self._write_queue(state, end)
        finally:
            state.writer_running = False

    async def _write_queue(self, state: _TcpFlow, end: HostEnd) -> None:
        while True:
            if state.unreported or state.held:
                n = state.unreported + state.held
                state.unreported = state.held = 0
                await self._report(TcpSent(state.flow, n))
                continue
            if state.outbuf:
                # The queue only grows at its end while the send waits: no copy needed.
                state.writing = True
                if isinstance(end, SocketEnd):
                    parts = state.outbuf.views(_WRITE_MAX)
                    size = sum(len(p) for p in parts)
                    n = await end.sendv(parts)
                else:
                    chunk = state.outbuf.first(_WRITE_MAX)
                    size = len(chunk)
                    n = await end.send(chunk)
                state.writing = False
                if not 0 < n <= size:
                    raise RuntimeError(f"send returned {n} for {size} bytes")
                state.outbuf.consume(n)
                n += state.held
                state.held = 0
                await self._report(TcpSent(state.flow, n))
                continue
            if state.shutdown and not state.write_done:
                await end.shutdown_write()
                state.done_writing()
            return

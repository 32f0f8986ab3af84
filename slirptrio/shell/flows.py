"""Host-side TCP sockets, one supervised task group per NAT flow.

The core decides; this module only does what the core's effects say and reports what the
sockets did as events:

* ``TcpConnect`` starts the flow's task group: connect, then one reader and one writer task.
  The result comes back as ``TcpConnected`` or ``TcpConnectFailed(errno)``.
* ``TcpRecvCredit(n)`` lets the reader take ``n`` more bytes from the socket; every read is
  reported as ``TcpData`` with its exact bytes. Without credit the reader does not read, so the
  host peer is slowed by the kernel's TCP window: backpressure from the guest's window.
* ``TcpSend`` queues bytes; the writer reports each partial ``send`` as ``TcpSent(n)``.
* ``TcpShutdown`` shuts the write side once queued data is out; ``TcpClose`` ends the group
  (``abort`` with SO_LINGER 0, so the peer sees RST).
* EOF from the peer is ``TcpEof``; an error is ``TcpReset(errno)`` and ends the group.

A failing flow never disturbs another: every task's exceptions end at its group, turning into a
``TcpReset`` event and a log line.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import socket as _socket
import struct
from typing import Any

import trio

from slirptrio.core.events import (
    Event,
    TcpClose,
    TcpConnect,
    TcpConnected,
    TcpConnectFailed,
    TcpData,
    TcpEof,
    TcpRecvCredit,
    TcpReset,
    TcpSend,
    TcpSent,
    TcpShutdown,
)

log = logging.getLogger("slirptrio.flows")

CONNECT_TIMEOUT_S = 20.0
_READ_MAX = 1 << 18
_WRITE_MAX = 1 << 18


class _TcpFlow:
    def __init__(self, flow: int) -> None:
        self.flow = flow
        self.scope = trio.CancelScope()
        self.sock: trio.socket.SocketType | None = None
        self.credit = 0
        self.credit_changed = trio.Event()
        self.outbuf = bytearray()
        self.out_changed = trio.Event()
        self.shutdown = False
        self.closed = False

    def poke_reader(self) -> None:
        self.credit_changed.set()

    def poke_writer(self) -> None:
        self.out_changed.set()


class TcpFlows:
    """Executes TCP effects for all flows; start it with ``nursery.start_soon(flows.run)``."""

    def __init__(self, inbox: trio.MemorySendChannel[Event]) -> None:
        self._inbox = inbox
        self._flows: dict[int, _TcpFlow] = {}
        self._nursery: trio.Nursery | None = None
        self.failures = 0

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

    # ------------------------------------------------------------------ effect handlers

    def connect(self, eff: TcpConnect) -> None:
        assert self._nursery is not None, "TcpFlows.run() is not running"
        state = _TcpFlow(eff.flow)
        self._flows[eff.flow] = state
        self._nursery.start_soon(self._flow_main, state, eff.host, eff.port)

    def send(self, eff: TcpSend) -> None:
        state = self._flows.get(eff.flow)
        if state is not None:
            state.outbuf += eff.data
            state.poke_writer()

    def credit(self, eff: TcpRecvCredit) -> None:
        state = self._flows.get(eff.flow)
        if state is not None:
            state.credit += eff.n
            state.poke_reader()

    def shutdown(self, eff: TcpShutdown) -> None:
        state = self._flows.get(eff.flow)
        if state is not None:
            state.shutdown = True
            state.poke_writer()

    def close(self, eff: TcpClose) -> None:
        state = self._flows.pop(eff.flow, None)
        if state is None:
            return
        state.closed = True
        if eff.abort and state.sock is not None:
            with contextlib.suppress(OSError):
                state.sock.setsockopt(
                    _socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        state.scope.cancel()

    # --------------------------------------------------------------------------- tasks

    async def _report(self, event: Event) -> None:
        await self._inbox.send(event)

    async def _flow_main(self, state: _TcpFlow, host: str, port: int) -> None:
        with state.scope:
            try:
                family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
                sock = trio.socket.socket(family, _socket.SOCK_STREAM)
                state.sock = sock
                with sock:
                    sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                    err = 0
                    with trio.move_on_after(CONNECT_TIMEOUT_S) as timeout:
                        try:
                            await sock.connect((host, port))
                        except OSError as exc:
                            err = exc.errno or _errno.ECONNREFUSED
                    if timeout.cancelled_caught:
                        err = _errno.ETIMEDOUT
                    if err:
                        await self._report(TcpConnectFailed(state.flow, err))
                        self._flows.pop(state.flow, None)
                        return
                    await self._report(TcpConnected(state.flow))
                    failure: list[OSError] = []
                    async with trio.open_nursery() as nursery:
                        for task in (self._reader, self._writer):
                            nursery.start_soon(self._guarded, task, state, sock, failure, nursery)
                    if failure:
                        raise failure[0]
            except OSError as exc:
                self.failures += 1
                log.info("flow %d: %s", state.flow, exc)
                if not state.closed:
                    await self._report(TcpReset(state.flow, exc.errno or _errno.EIO))
            except Exception:
                self.failures += 1
                log.exception("flow %d failed", state.flow)
                if not state.closed:
                    await self._report(TcpReset(state.flow, _errno.EIO))
            finally:
                if self._flows.get(state.flow) is state and state.closed:
                    self._flows.pop(state.flow, None)

    async def _guarded(
        self,
        task: Any,
        state: _TcpFlow,
        sock: trio.socket.SocketType,
        failure: list[OSError],
        nursery: trio.Nursery,
    ) -> None:
        # Socket errors end the flow's group as one plain error, not an ExceptionGroup.
        try:
            await task(state, sock)
        except OSError as exc:
            failure.append(exc)
            nursery.cancel_scope.cancel()

    async def _reader(self, state: _TcpFlow, sock: trio.socket.SocketType) -> None:
        while True:
            while state.credit <= 0:
                state.credit_changed = trio.Event()
                await state.credit_changed.wait()
            data = await sock.recv(min(state.credit, _READ_MAX))
            if not data:
                await self._report(TcpEof(state.flow))
                return
            state.credit -= len(data)
            await self._report(TcpData(state.flow, data))

    async def _writer(self, state: _TcpFlow, sock: trio.socket.SocketType) -> None:
        while True:
            while not state.outbuf and not state.shutdown:
                state.out_changed = trio.Event()
                await state.out_changed.wait()
            if state.outbuf:
                # A copy, not a memoryview: outbuf may grow while the send waits.
                n = await sock.send(state.outbuf[:_WRITE_MAX])
                del state.outbuf[:n]
                await self._report(TcpSent(state.flow, n))
                continue
            sock.shutdown(_socket.SHUT_WR)
            return

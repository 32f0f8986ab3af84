"""Host-side TCP flow tasks against real loopback sockets."""

from __future__ import annotations

import errno
import socket

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
from slirptrio.shell.flows import TcpFlows


async def next_event(recv: trio.MemoryReceiveChannel[Event]) -> Event:
    with trio.fail_after(5):
        return await recv.receive()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


async def test_refused_connect_reports_errno() -> None:
    send, recv = trio.open_memory_channel[Event](16)
    flows = TcpFlows(send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flows.run)
        await trio.testing.wait_all_tasks_blocked()
        flows.connect(TcpConnect(1, "127.0.0.1", free_port()))
        ev = await next_event(recv)
        assert ev == TcpConnectFailed(1, errno.ECONNREFUSED)
        nursery.cancel_scope.cancel()


async def test_data_both_ways_credit_shutdown_and_eof() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    flows = TcpFlows(send)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got_from_flow = bytearray()
    server_done = trio.Event()

    async def server(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hello from host")
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            got_from_flow.extend(data)
        await stream.aclose()
        server_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flows.run)
        nursery.start_soon(trio.serve_listeners, server, listeners)
        await trio.testing.wait_all_tasks_blocked()
        flows.connect(TcpConnect(5, "127.0.0.1", port))
        assert await next_event(recv) == TcpConnected(5)
        # no credit yet: nothing may be read
        await trio.sleep(0.05)
        assert recv.statistics().current_buffer_used == 0
        flows.credit(TcpRecvCredit(5, 5))
        assert await next_event(recv) == TcpData(5, b"hello")
        flows.credit(TcpRecvCredit(5, 100))
        assert await next_event(recv) == TcpData(5, b" from host")
        payload = b"x" * 300_000
        flows.send(TcpSend(5, payload))
        flows.shutdown(TcpShutdown(5))
        sent = 0
        while sent < len(payload):
            ev = await next_event(recv)
            assert isinstance(ev, TcpSent) and ev.flow == 5
            sent += ev.n
        assert sent == len(payload)
        with trio.fail_after(5):
            await server_done.wait()
        assert bytes(got_from_flow) == payload
        assert await next_event(recv) == TcpEof(5)
        flows.close(TcpClose(5, abort=False))
        nursery.cancel_scope.cancel()


async def test_abort_resets_peer_and_other_flows_survive() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    flows = TcpFlows(send)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    outcomes: list[str] = []

    async def server(stream: trio.SocketStream) -> None:
        try:
            data = await stream.receive_some(100)
            outcomes.append("eof" if not data else "data")
        except trio.BrokenResourceError:
            outcomes.append("reset")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flows.run)
        nursery.start_soon(trio.serve_listeners, server, listeners)
        await trio.testing.wait_all_tasks_blocked()
        flows.connect(TcpConnect(1, "127.0.0.1", port))
        flows.connect(TcpConnect(2, "127.0.0.1", port))
        assert {await next_event(recv), await next_event(recv)} == {
            TcpConnected(1),
            TcpConnected(2),
        }
        flows.close(TcpClose(1, abort=True))
        with trio.fail_after(5):
            while not outcomes:
                await trio.sleep(0.01)
        assert outcomes == ["reset"]
        assert len(flows) == 1
        flows.send(TcpSend(2, b"ok"))
        ev = await next_event(recv)
        assert ev == TcpSent(2, 2)
        nursery.cancel_scope.cancel()


async def test_peer_reset_reports_tcpreset() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    flows = TcpFlows(send)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def server(stream: trio.SocketStream) -> None:
        import struct

        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flows.run)
        nursery.start_soon(trio.serve_listeners, server, listeners)
        await trio.testing.wait_all_tasks_blocked()
        flows.connect(TcpConnect(3, "127.0.0.1", port))
        assert await next_event(recv) == TcpConnected(3)
        flows.credit(TcpRecvCredit(3, 1000))
        ev = await next_event(recv)
        assert ev == TcpReset(3, errno.ECONNRESET)
        nursery.cancel_scope.cancel()

"""Host-side TCP flow tasks against real loopback sockets."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NoReturn

import pytest
import trio
import trio.testing

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
from slirptrio.shell import flows as flows_mod
from slirptrio.shell.flows import (
    HostEnd,
    Opener,
    ProcessEnd,
    SocketEnd,
    StreamEnd,
    TcpFlows,
    cmd_opener,
    handler_opener,
    tcp_opener,
    unix_opener,
)
from slirptrio.shell.pipe import PipeStream, pipe_pair


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


# ------------------------------------------------------------------ pluggable host ends


class Events:
    """The inbox, read per flow (flows running at once interleave their events)."""

    def __init__(self, recv: trio.MemoryReceiveChannel[Event]) -> None:
        self.recv = recv
        self.pending: list[Event] = []

    async def next(self, flow: int) -> Event:
        for i, ev in enumerate(self.pending):
            if getattr(ev, "flow", None) == flow:
                return self.pending.pop(i)
        with trio.fail_after(5):
            while True:
                ev = await self.recv.receive()
                if getattr(ev, "flow", None) == flow:
                    return ev
                self.pending.append(ev)

    async def exchange(self, flow: int, *, data: int, sent: int) -> bytes:
        """Collect ``data`` bytes of TcpData and ``sent`` bytes of TcpSent, nothing else."""
        got = bytearray()
        n_sent = 0
        while len(got) < data or n_sent < sent:
            ev = await self.next(flow)
            if isinstance(ev, TcpData):
                got += ev.data
            elif isinstance(ev, TcpSent):
                n_sent += ev.n
            else:
                raise AssertionError(f"unexpected {ev!r}")
        assert n_sent == sent
        return bytes(got)


@asynccontextmanager
async def running_flows() -> AsyncIterator[tuple[TcpFlows, Events, trio.Nursery]]:
    send, recv = trio.open_memory_channel[Event](256)
    flows = TcpFlows(send)
    async with trio.open_nursery() as nursery:
        await nursery.start(flows.run)
        yield flows, Events(recv), nursery
        nursery.cancel_scope.cancel()


async def wait_reaped(pid: int) -> None:
    # An unreaped child stays in /proc as a zombie, so this waits forever for a leak.
    with trio.fail_after(5):
        while os.path.exists(f"/proc/{pid}"):
            await trio.sleep(0.01)


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


async def wait_exited(pid: int) -> None:
    """Wait until ``pid`` is a zombie or gone, without reaping it."""
    with trio.fail_after(5):
        while proc_state(pid) not in (None, "Z"):
            await trio.sleep(0.01)


async def echo_until_eof(stream: trio.abc.HalfCloseableStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
        await stream.send_eof()
    except trio.BrokenResourceError:
        pass  # the flow was aborted (a reset): this peer's end as well


async def test_adopt_socketpair_runs_without_connected_event() -> None:
    a, b = trio.socket.socketpair()
    with b:
        async with running_flows() as (flows, events, _):
            flows.adopt(7, SocketEnd(a))
            await b.send(b"from host")
            flows.credit(TcpRecvCredit(7, 100))
            # the first event is data: no TcpConnected for an adopted end
            assert await events.next(7) == TcpData(7, b"from host")
            flows.send(TcpSend(7, b"to host"))
            assert await events.next(7) == TcpSent(7, 7)
            assert await b.recv(100) == b"to host"
            flows.shutdown(TcpShutdown(7))
            with trio.fail_after(5):
                assert await b.recv(100) == b""
            b.shutdown(socket.SHUT_WR)
            assert await events.next(7) == TcpEof(7)
            assert len(flows) == 1
            flows.close(TcpClose(7, abort=False))
            assert len(flows) == 0
            await trio.testing.wait_all_tasks_blocked()
            assert a.fileno() == -1


async def test_adopt_stream_end_and_abort_closes_it_forcefully() -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    async with running_flows() as (flows, events, _):
        flows.adopt(3, StreamEnd(ours))
        await theirs.send_all(b"abc")
        flows.credit(TcpRecvCredit(3, 2))
        assert await events.next(3) == TcpData(3, b"ab")
        flows.credit(TcpRecvCredit(3, 10))
        assert await events.next(3) == TcpData(3, b"c")
        flows.send(TcpSend(3, b"xyz"))
        assert await events.next(3) == TcpSent(3, 3)
        assert await theirs.receive_some(10) == b"xyz"
        flows.shutdown(TcpShutdown(3))
        with trio.fail_after(5):
            assert await theirs.receive_some(10) == b""
        flows.close(TcpClose(3, abort=True))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BrokenResourceError):
            await theirs.send_all(b"late")


async def test_adopt_pipe_both_ways_then_abort_breaks_the_app_side() -> None:
    app, end = pipe_pair(limit=8)
    async with running_flows() as (flows, events, _):
        flows.adopt(4, end)
        flows.send(TcpSend(4, b"0123456789"))  # more than the pipe holds
        assert await events.next(4) == TcpSent(4, 8)
        assert await app.receive_some(100) == b"01234567"
        assert await events.next(4) == TcpSent(4, 2)
        assert await app.receive_some(100) == b"89"
        await app.send_all(b"reply")
        flows.credit(TcpRecvCredit(4, 100))
        assert await events.next(4) == TcpData(4, b"reply")
        await app.send_eof()
        assert await events.next(4) == TcpEof(4)
        flows.close(TcpClose(4, abort=True))
        with pytest.raises(trio.BrokenResourceError), trio.fail_after(5):
            await app.receive_some(10)


async def test_registered_unix_target_then_unregistered(tmp_path: Path) -> None:
    path = str(tmp_path / "fwd.sock")
    lsock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await lsock.bind(path)
    lsock.listen()
    async with running_flows() as (flows, events, nursery):
        nursery.start_soon(trio.serve_listeners, echo_until_eof, [trio.SocketListener(lsock)])
        flows.register_target("guestfwd:3", unix_opener(path))
        flows.connect(TcpConnect(1, "guestfwd:3", 4321))
        assert await events.next(1) == TcpConnected(1)
        flows.credit(TcpRecvCredit(1, 1 << 20))
        payload = os.urandom(200_000)
        flows.send(TcpSend(1, payload))
        assert await events.exchange(1, data=len(payload), sent=len(payload)) == payload
        flows.shutdown(TcpShutdown(1))
        assert await events.next(1) == TcpEof(1)
        flows.close(TcpClose(1, abort=False))
        # a target whose socket is missing fails the connect with its errno
        flows.register_target("guestfwd:4", unix_opener(tmp_path / "missing.sock"))
        flows.connect(TcpConnect(2, "guestfwd:4", 1))
        assert await events.next(2) == TcpConnectFailed(2, errno.ENOENT)
        assert len(flows) == 0
        flows.unregister_target("guestfwd:3")
        flows.unregister_target("never-registered")
        flows.connect(TcpConnect(3, "guestfwd:3", 4321))
        assert await events.next(3) == TcpConnectFailed(3, errno.EINVAL)


class RecordingResolver(trio.abc.HostnameResolver):
    def __init__(self) -> None:
        self.calls: list[object] = []

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> NoReturn:
        self.calls.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "no lookups in this test")

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> NoReturn:
        self.calls.append(sockaddr)
        raise socket.gaierror(socket.EAI_NONAME, "no lookups in this test")


async def test_names_are_refused_with_einval_without_any_lookup() -> None:
    resolver = RecordingResolver()
    previous = trio.socket.set_custom_hostname_resolver(resolver)
    try:
        async with running_flows() as (flows, events, _):
            for flow, host in enumerate(["guestfwd:9", "localhost", "example.com", ""], 1):
                flows.connect(TcpConnect(flow, host, 80))
                assert await events.next(flow) == TcpConnectFailed(flow, errno.EINVAL)
            assert len(flows) == 0
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
    assert resolver.calls == []


async def test_opener_timeout_and_opener_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows_mod, "CONNECT_TIMEOUT_S", 0.05)

    async def hangs() -> HostEnd:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def buggy() -> HostEnd:
        await trio.lowlevel.checkpoint()
        raise KeyError("bug")

    async with running_flows() as (flows, events, _):
        flows.register_target("hangs", hangs)
        flows.register_target("buggy", buggy)
        flows.connect(TcpConnect(1, "hangs", 0))
        flows.connect(TcpConnect(2, "buggy", 0))
        assert await events.next(1) == TcpConnectFailed(1, errno.ETIMEDOUT)
        assert await events.next(2) == TcpConnectFailed(2, errno.EIO)
        assert len(flows) == 0


def recording(opener: Opener, ends: list[HostEnd]) -> Opener:
    async def open_and_record() -> HostEnd:
        end = await opener()
        ends.append(end)
        return end

    return open_and_record


def pid_of(end: HostEnd) -> int:
    assert isinstance(end, ProcessEnd)
    return end.process.pid


async def test_cmd_cat_echoes_then_eof_and_is_reaped() -> None:
    ends: list[HostEnd] = []
    async with running_flows() as (flows, events, _):
        flows.register_target("guestfwd:1", recording(cmd_opener("cat"), ends))
        flows.connect(TcpConnect(5, "guestfwd:1", 0))
        assert await events.next(5) == TcpConnected(5)
        flows.credit(TcpRecvCredit(5, 1 << 20))
        payload = os.urandom(300_000)
        flows.send(TcpSend(5, payload))
        assert await events.exchange(5, data=len(payload), sent=len(payload)) == payload
        flows.shutdown(TcpShutdown(5))
        assert await events.next(5) == TcpEof(5)
        flows.close(TcpClose(5, abort=False))
        await wait_reaped(pid_of(ends[0]))
        assert isinstance(ends[0], ProcessEnd)
        assert ends[0].process.returncode == 0


async def test_cmd_that_exits_at_once() -> None:
    ends: list[HostEnd] = []
    async with running_flows() as (flows, events, _):
        flows.register_target("quick", recording(cmd_opener("echo bye; exit 3"), ends))
        flows.connect(TcpConnect(6, "quick", 0))
        assert await events.next(6) == TcpConnected(6)
        flows.credit(TcpRecvCredit(6, 100))
        assert await events.next(6) == TcpData(6, b"bye\n")
        assert await events.next(6) == TcpEof(6)
        await wait_exited(pid_of(ends[0]))  # so its stdin is surely closed
        flows.send(TcpSend(6, b"nobody reads this"))
        assert await events.next(6) == TcpReset(6, errno.EPIPE)
        flows.close(TcpClose(6, abort=True))
        await wait_reaped(pid_of(ends[0]))


async def test_cmd_abort_kills_the_whole_process_group() -> None:
    ends: list[HostEnd] = []
    async with running_flows() as (flows, events, _):
        # the shell stays (no exec) and prints its background child's pid
        cmd = "sleep 100 & echo $!; wait"
        flows.register_target("slow", recording(cmd_opener(cmd), ends))
        flows.connect(TcpConnect(8, "slow", 0))
        assert await events.next(8) == TcpConnected(8)
        flows.credit(TcpRecvCredit(8, 100))
        ev = await events.next(8)
        assert isinstance(ev, TcpData)
        child = int(ev.data)
        with trio.fail_after(2):
            flows.close(TcpClose(8, abort=True))
            await wait_reaped(pid_of(ends[0]))
        assert isinstance(ends[0], ProcessEnd)
        assert ends[0].process.returncode == -signal.SIGKILL
        await wait_exited(child)  # killed too (a zombie until init reaps it)


async def test_process_end_close_gives_grace_then_kills() -> None:
    polite = await ProcessEnd.spawn("cat", grace_s=5)
    with trio.fail_after(4):
        await polite.close()  # cat exits at EOF: no kill needed
    assert polite.process.returncode == 0
    stubborn = await ProcessEnd.spawn("trap '' PIPE; exec sleep 100", grace_s=0.1)
    start = trio.current_time()
    with trio.fail_after(4):
        await stubborn.close()
    assert trio.current_time() - start >= 0.1
    assert stubborn.process.returncode == -signal.SIGKILL


async def test_unstartable_command_fails_the_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_spawn(*args: object, **kwargs: object) -> trio.Process:
        await trio.lowlevel.checkpoint()
        raise FileNotFoundError(errno.ENOENT, "no /bin/sh")

    monkeypatch.setattr(trio.lowlevel, "open_process", no_spawn)
    async with running_flows() as (flows, events, _):
        flows.register_target("cmd", cmd_opener("true"))
        flows.connect(TcpConnect(1, "cmd", 0))
        assert await events.next(1) == TcpConnectFailed(1, errno.ENOENT)


async def test_handler_echo_and_a_failing_handler_ends_only_its_flow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def echo(stream: PipeStream) -> None:
        await echo_until_eof(stream)

    async def boom(stream: PipeStream) -> None:
        await stream.receive_some(10)
        raise ValueError("handler bug")

    async with running_flows() as (flows, events, _):
        async with trio.open_nursery() as handlers:
            flows.register_target("echo", handler_opener(handlers, echo))
            flows.register_target("boom", handler_opener(handlers, boom))
            flows.connect(TcpConnect(1, "echo", 0))
            flows.connect(TcpConnect(2, "boom", 0))
            assert await events.next(1) == TcpConnected(1)
            assert await events.next(2) == TcpConnected(2)
            flows.credit(TcpRecvCredit(1, 1 << 20))
            flows.credit(TcpRecvCredit(2, 100))
            flows.send(TcpSend(2, b"trigger"))
            assert await events.next(2) == TcpSent(2, 7)
            assert await events.next(2) == TcpReset(2, errno.ECONNRESET)
            assert any(
                r.exc_info is not None and isinstance(r.exc_info[1], ValueError)
                for r in caplog.records
            )
            flows.close(TcpClose(2, abort=True))
            # the other connection and the handler nursery carry on
            payload = os.urandom(600_000)  # more than the pipe holds both ways
            flows.send(TcpSend(1, payload))
            assert await events.exchange(1, data=len(payload), sent=len(payload)) == payload
            flows.shutdown(TcpShutdown(1))
            assert await events.next(1) == TcpEof(1)
            flows.close(TcpClose(1, abort=False))
            flows.connect(TcpConnect(3, "echo", 0))
            assert await events.next(3) == TcpConnected(3)
            flows.close(TcpClose(3, abort=False))
            await trio.testing.wait_all_tasks_blocked()
            assert not handlers.cancel_scope.cancel_called
            assert len(handlers.child_tasks) == 0  # every handler ended with its flow
        # a closed handler nursery refuses new connections
        flows.connect(TcpConnect(4, "echo", 0))
        assert await events.next(4) == TcpConnectFailed(4, errno.ECONNREFUSED)


async def test_tcp_opener_target_and_ipv4_literal_default() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with running_flows() as (flows, events, nursery):
        nursery.start_soon(trio.serve_listeners, echo_until_eof, listeners)
        flows.register_target("svc", tcp_opener("127.0.0.1", port))
        flows.connect(TcpConnect(1, "svc", 9))
        flows.connect(TcpConnect(2, "127.0.0.1", port))
        for flow in (1, 2):
            assert await events.next(flow) == TcpConnected(flow)
            flows.credit(TcpRecvCredit(flow, 100))
            flows.send(TcpSend(flow, b"hi %d" % flow))
            assert await events.exchange(flow, data=4, sent=4) == b"hi %d" % flow
            flows.close(TcpClose(flow, abort=True))


async def test_batched_sends_go_out_at_kick_in_one_write() -> None:
    send, recv = trio.open_memory_channel[Event](64)
    flows = TcpFlows(send, batched=True)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    got = bytearray()

    async def server(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(100):
            got.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flows.run)
        nursery.start_soon(trio.serve_listeners, server, listeners)
        await trio.testing.wait_all_tasks_blocked()
        flows.connect(TcpConnect(1, "127.0.0.1", port))
        assert await next_event(recv) == TcpConnected(1)
        await trio.testing.wait_all_tasks_blocked()  # the flow's writer is idle
        flows.send(TcpSend(1, b"one "))
        flows.send(TcpSend(1, b"two"))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            recv.receive_nowait()  # nothing is sent before the burst ends
        flows.kick()
        assert recv.receive_nowait() == TcpSent(1, 7)  # reported without a task switch
        with trio.fail_after(5):
            while bytes(got) != b"one two":
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_held_send_report_rides_on_the_next_read() -> None:
    """kick: a send the core's check lets wait is not reported by itself; the flow's next read
    carries it (TcpDataSent). A send it refuses is reported at once, with what was held."""
    send, recv = trio.open_memory_channel[Event](64)
    flows = TcpFlows(send, batched=True)
    asked: list[tuple[int, int]] = []
    allow = [True]

    def can_wait(flow: int, n: int) -> bool:
        asked.append((flow, n))
        return allow[0]

    flows.sent_can_wait = can_wait
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    peers: list[trio.SocketStream] = []
    got = bytearray()

    async def server(stream: trio.SocketStream) -> None:
        peers.append(stream)
        while data := await stream.receive_some(100):
            got.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flows.run)
        nursery.start_soon(trio.serve_listeners, server, listeners)
        await trio.testing.wait_all_tasks_blocked()
        flows.connect(TcpConnect(1, "127.0.0.1", port))
        assert await next_event(recv) == TcpConnected(1)
        flows.credit(TcpRecvCredit(1, 100))
        await trio.testing.wait_all_tasks_blocked()
        flows.send(TcpSend(1, b"q"))
        flows.kick()
        assert asked == [(1, 1)]
        with trio.fail_after(5):
            while bytes(got) != b"q":
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            recv.receive_nowait()  # held: no event of its own
        await peers[0].send_all(b"answer")
        assert await next_event(recv) == TcpDataSent(1, 1, b"answer")
        # held again, then a send the check refuses: one TcpSent for both
        flows.send(TcpSend(1, b"r"))
        flows.kick()
        allow[0] = False
        flows.send(TcpSend(1, b"st"))
        flows.kick()
        assert asked[-2:] == [(1, 1), (1, 3)]
        assert recv.receive_nowait() == TcpSent(1, 3)
        # held, then the core shuts the write side: the report goes first, at once
        allow[0] = True
        flows.send(TcpSend(1, b"u"))
        flows.kick()
        flows.shutdown(TcpShutdown(1))
        assert recv.receive_nowait() == TcpSent(1, 1)
        await peers[0].send_all(b"more")
        assert await next_event(recv) == TcpData(1, b"more")
        with trio.fail_after(5):
            while bytes(got) != b"qrstu":
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_held_send_report_goes_before_the_peers_eof() -> None:
    """The peer closes instead of answering: what was held is reported (TcpSent), then EOF."""
    send, recv = trio.open_memory_channel[Event](64)
    flows = TcpFlows(send, batched=True)
    flows.sent_can_wait = lambda flow, n: True
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def server(stream: trio.SocketStream) -> None:
        assert await stream.receive_some(100) == b"bye"
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flows.run)
        nursery.start_soon(trio.serve_listeners, server, listeners)
        await trio.testing.wait_all_tasks_blocked()
        flows.connect(TcpConnect(1, "127.0.0.1", port))
        assert await next_event(recv) == TcpConnected(1)
        flows.credit(TcpRecvCredit(1, 100))
        await trio.testing.wait_all_tasks_blocked()
        flows.send(TcpSend(1, b"bye"))
        flows.kick()
        assert await next_event(recv) == TcpSent(1, 3)
        assert await next_event(recv) == TcpEof(1)
        nursery.cancel_scope.cancel()


class _FailingEnd(SocketEnd):
    """A socket end whose reads fail (ECONNRESET) when told to."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        super().__init__(sock)
        self.fail = trio.Event()

    async def recv(self, max_bytes: int) -> bytes:
        await self.fail.wait()
        raise ConnectionResetError(errno.ECONNRESET, "reset")


async def test_data_for_a_flow_that_just_failed_is_dropped_quietly() -> None:
    """Between a host socket failing and the core hearing of it (TcpReset), the core may still
    send data, at any moment of the flow's teardown (here while its writer task, blocked on a
    full socket, is being cancelled): it must not disturb anything."""
    send, recv = trio.open_memory_channel[Event](1 << 16)
    flows = TcpFlows(send, batched=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(flows.run)
        for flow in range(1, 41):
            a, b = trio.socket.socketpair()
            end = _FailingEnd(a)
            flows.adopt(flow, end)
            flows.credit(TcpRecvCredit(flow, 1000))
            for _ in range(16):  # more than the socket buffers take: the writer waits
                flows.send(TcpSend(flow, bytes(1 << 16)))
            flows.kick()
            await trio.testing.wait_all_tasks_blocked()
            end.fail.set()
            while True:
                flows.send(TcpSend(flow, b"late"))
                flows.kick()
                await trio.sleep(0)
                events = []
                with contextlib.suppress(trio.WouldBlock):
                    while True:
                        events.append(recv.receive_nowait())
                if any(isinstance(ev, TcpReset) for ev in events):
                    break
            flows.close(TcpClose(flow, True))
            b.close()
        await trio.testing.wait_all_tasks_blocked()
        assert len(flows) == 0
        nursery.cancel_scope.cancel()


async def test_a_local_connect_is_reported_by_the_handler_itself() -> None:
    """To a loopback peer the connect is done within the TcpConnect handler: TcpConnected (or
    TcpConnectFailed) is handed over before any task has run, and data and EOF flow as on the
    task path."""
    send, recv = trio.open_memory_channel[Event](16)
    flows = TcpFlows(send)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(flows.run)
        flows.connect(TcpConnect(1, "127.0.0.1", port))
        assert recv.receive_nowait() == TcpConnected(1)
        flows.connect(TcpConnect(2, "127.0.0.1", free_port()))
        assert recv.receive_nowait() == TcpConnectFailed(2, errno.ECONNREFUSED)
        flows.connect(TcpConnect(3, "not-an-address", 80))
        assert recv.receive_nowait() == TcpConnectFailed(3, errno.EINVAL)
        peer, _ = listener.accept()  # queued by the kernel already: no wait
        peer.setblocking(False)
        flows.credit(TcpRecvCredit(1, 100))
        flows.send(TcpSend(1, b"ping"))
        got = b""
        with trio.fail_after(5):
            while got != b"ping":
                await trio.sleep(0.01)
                with contextlib.suppress(BlockingIOError):
                    got += peer.recv(4)
        assert await next_event(recv) == TcpSent(1, 4)
        peer.sendall(b"pong")
        assert await next_event(recv) == TcpData(1, b"pong")
        peer.close()
        assert await next_event(recv) == TcpEof(1)
        assert len(flows) == 1  # flow 1 only: the failed ones are gone
        nursery.cancel_scope.cancel()
    listener.close()

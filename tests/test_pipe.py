"""The in-process pipe between a trio handler and a TCP flow."""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from slirptrio.shell.pipe import PipeEnd, PipeStream, pipe_pair


class EndAsStream(trio.abc.HalfCloseableStream):
    """The flow side dressed as a trio stream, so trio's own stream checks can drive a pair."""

    def __init__(self, end: PipeEnd) -> None:
        self.end = end
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            if not view:
                await self.end.send(b"")
            while view:
                view = view[await self.end.send(view) :]
        except OSError as exc:
            raise trio.BrokenResourceError from exc

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            return await self.end.recv(65536 if max_bytes is None else max_bytes)
        except OSError as exc:
            raise trio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        await self.end.shutdown_write()

    async def aclose(self) -> None:
        self.closed = True
        await self.end.close()


async def make_pair() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
    app, end = pipe_pair()
    return app, EndAsStream(end)


async def make_clogged_pair() -> tuple[trio.abc.SendStream, trio.abc.ReceiveStream]:
    app, end = pipe_pair(limit=1)
    await app.send_all(b"\0")  # full: every further send_all waits for the flow to read
    return app, EndAsStream(end)


async def test_trio_half_closeable_stream_checks_both_ways() -> None:
    # trio's own conformance checks, run in both directions (the flow side via the adapter);
    # a broken pipe tends to hang them, hence the bound
    with trio.fail_after(10):
        await trio.testing.check_half_closeable_stream(make_pair, None)


async def test_trio_send_side_checks_with_a_full_buffer() -> None:
    with trio.fail_after(10):
        await trio.testing.check_one_way_stream(make_pair, make_clogged_pair)


async def test_data_both_ways_with_boundaries() -> None:
    app, end = pipe_pair()
    await app.send_all(b"hello ")
    await app.send_all(bytearray(b"world"))
    assert await end.recv(3) == b"hel"
    assert await end.recv(100) == b"lo world"
    assert await end.send(b"back") == 4
    assert await end.send(memoryview(b"!!")) == 2
    assert await app.receive_some(2) == b"ba"
    assert await app.receive_some() == b"ck!!"


async def test_eof_each_way_keeps_the_other_direction_open() -> None:
    app, end = pipe_pair()
    await app.send_all(b"last")
    await app.send_eof()
    assert await end.recv(100) == b"last"
    assert await end.recv(100) == b""
    assert await end.recv(100) == b""
    # the flow may still answer
    assert await end.send(b"reply") == 5
    await end.shutdown_write()
    assert await app.receive_some(100) == b"reply"
    assert await app.receive_some(100) == b""
    with pytest.raises(trio.ClosedResourceError):
        await app.send_all(b"more")
    with pytest.raises(trio.ClosedResourceError):
        await end.send(b"more")


async def test_app_send_all_blocks_while_full_and_resumes_after_reads() -> None:
    app, end = pipe_pair(limit=10)
    payload = bytes(range(25))
    done = trio.Event()

    async def sender() -> None:
        await app.send_all(payload)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert await end.recv(100) == payload[:10]
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert await end.recv(4) == payload[10:14]
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # one byte still waits for room
        assert await end.recv(100) == payload[14:24]
        await trio.testing.wait_all_tasks_blocked()
        assert done.is_set()
        assert await end.recv(100) == payload[24:]


async def test_flow_send_is_partial_up_to_free_space_then_waits() -> None:
    app, end = pipe_pair(limit=10)
    assert await end.send(b"a" * 15) == 10
    got: list[int] = []

    async def sender() -> None:
        got.append(await end.send(b"b" * 8))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert await app.receive_some(3) == b"aaa"
        await trio.testing.wait_all_tasks_blocked()
    assert got == [3]
    assert await app.receive_some() == b"a" * 7 + b"bbb"


async def test_wait_send_all_might_not_block_waits_for_room() -> None:
    app, end = pipe_pair(limit=4)
    await app.send_all(b"full")
    woke = trio.Event()

    async def waiter() -> None:
        await app.wait_send_all_might_not_block()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()
        await end.recv(1)
        with trio.fail_after(5):
            await woke.wait()


async def test_flow_abort_breaks_every_app_call_and_wakes_waiters() -> None:
    app, end = pipe_pair(limit=4)
    await app.send_all(b"full")
    assert await end.send(b"unread") == 4
    outcomes: list[str] = []

    async def blocked_sender() -> None:
        try:
            await app.send_all(b"more")
        except trio.BrokenResourceError:
            outcomes.append("send broken")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_sender)
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == []
        end.abort()
    assert outcomes == ["send broken"]
    # buffered bytes are dropped, as a TCP reset drops them
    with pytest.raises(trio.BrokenResourceError):
        await app.receive_some(10)
    with pytest.raises(trio.BrokenResourceError):
        await app.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        await end.recv(10)
    end.abort()
    await end.close()
    await app.aclose()


async def test_app_abort_resets_the_flow_side() -> None:
    app, end = pipe_pair()
    await app.send_all(b"dropped")
    result: list[OSError] = []

    async def blocked_recv() -> None:
        await end.recv(10)  # takes "dropped"
        try:
            await end.recv(10)
        except OSError as exc:
            result.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_recv)
        await trio.testing.wait_all_tasks_blocked()
        app.abort()
    assert [e.errno for e in result] == [errno.ECONNRESET]
    with pytest.raises(ConnectionResetError):
        await end.send(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await app.receive_some(1)


async def test_graceful_closes() -> None:
    # app closes: its bytes still arrive, then EOF; the flow's sends fail with EPIPE
    app, end = pipe_pair()
    await app.send_all(b"bye")
    await app.aclose()
    assert await end.recv(10) == b"bye"
    assert await end.recv(10) == b""
    with pytest.raises(BrokenPipeError):
        await end.send(b"x")
    app.abort()  # after a clean close there is nothing left to reset
    assert await end.recv(10) == b""
    # flow closes: its bytes still arrive, then EOF; the app's sends are broken
    app, end = pipe_pair()
    assert await end.send(b"bye") == 3
    await end.close()
    assert await app.receive_some(10) == b"bye"
    assert await app.receive_some(10) == b""
    with pytest.raises(trio.BrokenResourceError):
        await app.send_all(b"x")


async def test_every_async_call_checkpoints_even_without_blocking() -> None:
    app, end = pipe_pair()
    with trio.testing.assert_checkpoints():
        await app.send_all(b"abc")
    with trio.testing.assert_checkpoints():
        await app.wait_send_all_might_not_block()
    with trio.testing.assert_checkpoints():
        assert await end.recv(10) == b"abc"
    with trio.testing.assert_checkpoints():
        assert await end.send(b"xyz") == 3
    with trio.testing.assert_checkpoints():
        assert await end.send(b"") == 0
    with trio.testing.assert_checkpoints():
        assert await app.receive_some(10) == b"xyz"
    with trio.testing.assert_checkpoints():
        await end.shutdown_write()
    with trio.testing.assert_checkpoints():
        assert await app.receive_some(10) == b""
    with trio.testing.assert_checkpoints():
        await app.send_eof()
    with trio.testing.assert_checkpoints():
        assert await end.recv(10) == b""
    with trio.testing.assert_checkpoints():
        await app.aclose()
    with trio.testing.assert_checkpoints():
        await end.close()


async def test_cancelled_calls_take_and_give_nothing() -> None:
    app, end = pipe_pair(limit=4)
    await app.send_all(b"data")
    assert await end.send(b"back") == 4
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await end.recv(10)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await app.receive_some(10)
    with trio.move_on_after(0.01):
        await end.send(b"more")  # full: waits, then is cancelled
    assert await end.recv(10) == b"data"
    assert await app.receive_some(10) == b"back"
    assert await end.send(b"next") == 4
    assert await app.receive_some(10) == b"next"


async def test_concurrent_calls_are_busy() -> None:
    app, end = pipe_pair(limit=1)
    await app.send_all(b"x")
    assert await end.send(b"y") == 1
    # both directions full, nothing to read: every one of these blocks
    pairs: list[tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[object]]]] = [
        (lambda: app.send_all(b"z"), lambda: app.send_all(b"z")),
        (lambda: app.send_all(b"z"), app.send_eof),
        (lambda: app.send_all(b"z"), app.wait_send_all_might_not_block),
        (lambda: end.send(b"z"), lambda: end.send(b"z")),
        (lambda: end.send(b"z"), end.shutdown_write),
    ]
    for blocked, second in pairs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError), trio.fail_after(5):
                await second()
            nursery.cancel_scope.cancel()
    assert await end.recv(10) == b"x"
    assert await app.receive_some(10) == b"y"
    receivers: list[Callable[[], Awaitable[object]]] = [
        lambda: end.recv(1),
        lambda: app.receive_some(1),
    ]
    for receive in receivers:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError), trio.fail_after(5):
                await receive()
            nursery.cancel_scope.cancel()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        pipe_pair(limit=0)


async def test_pipe_stream_is_a_trio_half_closeable_stream() -> None:
    app, _ = pipe_pair()
    assert isinstance(app, PipeStream)
    assert isinstance(app, trio.abc.HalfCloseableStream)
    stapled_peer: trio.abc.HalfCloseableStream = app
    with pytest.raises(ValueError):
        await stapled_peer.receive_some(0)

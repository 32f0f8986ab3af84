"""The runtime's door loop and the stream transport, with a fake guest on memory streams."""

from __future__ import annotations

import os
import pathlib
import socket

import trio
import trio.testing

from replay.engine import replay_journal
from slirptrio.config import parse_user_options
from slirptrio.core.events import Effect, Event, GuestFrames
from slirptrio.core.stack import Stack
from slirptrio.journal.writer import Recorder
from slirptrio.shell.runtime import Runtime
from slirptrio.shell.transport import Address, GuestPort, open_dgram, run_dgram, serve_stream
from slirptrio.wire.framing import StreamDecoder, encode_frame
from slirptrio.wire.pcap import read_pcap
from tests import guestframes as gf
from tests.journals import header_for


async def test_fake_guest_dhcp_and_ping_then_replay(tmp_path: pathlib.Path) -> None:
    config = parse_user_options("")
    stack = Stack(config, 99)
    jpath = tmp_path / "j.journal"
    ppath = tmp_path / "j.pcap"
    recorder = Recorder.open(header_for(config, 99), journal_dir=str(jpath), pcap_path=str(ppath))
    port = GuestPort()
    runtime = Runtime(stack, port, recorder)
    guest, ours = trio.testing.memory_stream_pair()
    decoder = StreamDecoder()

    async def expect_frames(n: int) -> list[bytes]:
        got: list[bytes] = []
        with trio.fail_after(5):
            while len(got) < n:
                got.extend(decoder.feed(await guest.receive_some()))
        return got

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run)
        nursery.start_soon(serve_stream, ours, runtime.inbox, port, "fake")
        # two frames in one write, and one split across writes
        await guest.send_all(encode_frame(gf.dhcp(1)) + encode_frame(gf.arp_request("10.0.2.2")))
        offer, arp = await expect_frames(2)
        assert dict(gf.dhcp_of(offer).opts)[53] == b"\x02"
        assert gf.parse(arp).data.op == 2
        ping = encode_frame(gf.icmp_echo("10.0.2.3"))
        await guest.send_all(ping[:7])
        await guest.send_all(ping[7:])
        (reply,) = await expect_frames(1)
        assert gf.parse(reply).data.data.type == 0
        await guest.aclose()
        with trio.fail_after(5):
            while port.attached:
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    recorder.close()
    assert os.path.getsize(ppath) > 24
    result = replay_journal(jpath)
    assert result.identical
    # FrameRuns, GuestLink up, the runs, GuestLink down; all 6 frames
    assert result.records >= 5 and result.frames == 6
    with ppath.open("rb") as f:
        captured = [frame for _ts, frame in read_pcap(f)]
    # the pcap view has every frame of the runs, in and out
    assert captured == [gf.dhcp(1), gf.arp_request("10.0.2.2"), offer, arp,
                        gf.icmp_echo("10.0.2.3"), reply]


async def test_oversized_length_drops_connection_not_stack() -> None:
    config = parse_user_options("")
    stack = Stack(config, 1)
    port = GuestPort()
    runtime = Runtime(stack, port)
    guest, ours = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run)
        nursery.start_soon(serve_stream, ours, runtime.inbox, port, "fake")
        await guest.send_all((70_000).to_bytes(4, "big") + b"x" * 100)
        with trio.fail_after(5):
            assert await guest.receive_some() == b""  # we closed it
        # the stack still answers a new guest
        guest2, ours2 = trio.testing.memory_stream_pair()
        nursery.start_soon(serve_stream, ours2, runtime.inbox, port, "fake2")
        await guest2.send_all(encode_frame(gf.arp_request("10.0.2.2")))
        with trio.fail_after(5):
            data = await guest2.receive_some()
        assert StreamDecoder().feed(data)
        nursery.cancel_scope.cancel()


async def test_frames_toward_absent_guest_are_dropped_not_queued() -> None:
    port = GuestPort(max_frames=2)
    port.put(b"a" * 60)
    assert port.dropped == 1
    port.attach()
    for _ in range(3):
        port.put(b"b" * 60)
    assert port.dropped == 2
    assert port.take_batch(1 << 20) == [b"b" * 60] * 2


def _run(*frames: bytes) -> bytes:
    return b"".join(encode_frame(f) for f in frames)


async def test_runs_and_frames_share_the_queue() -> None:
    port = GuestPort()
    port.attach()
    port.put(b"a" * 60)
    port.put_run(_run(b"b" * 60, b"c" * 70))
    assert port.take_batch(1 << 20) == [b"a" * 60, b"b" * 60, b"c" * 70]
    port.put_run(_run(b"d" * 60))
    port.put(b"e" * 61)
    assert port.take_stream(1 << 20) == _run(b"d" * 60, b"e" * 61)
    assert port.queued_bytes == 0


async def test_dropped_runs_count_their_frames() -> None:
    port = GuestPort(max_bytes=200)
    port.put_run(_run(b"x" * 60, b"y" * 60))  # not attached
    port.attach()
    port.put_run(_run(b"x" * 60, b"y" * 60, b"z" * 60, b"w" * 60))  # too big
    assert port.dropped == 6


async def test_direct_writes_resume_after_a_partial_write() -> None:
    """A socket that takes only part of a burst: the rest leaves later, in order, whole."""
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    port = GuestPort()
    port.attach(a.fileno())
    frames = [bytes([i]) * (1000 + i) for i in range(200)]
    for i in range(0, 200, 10):
        port.put_run(_run(*frames[i : i + 5]))
        for f in frames[i + 5 : i + 10]:
            port.put(f)
    port.kick()
    assert port.queued_bytes > 0  # the socket was full
    got = bytearray()
    decoder = StreamDecoder()
    out: list[bytes] = []
    with trio.fail_after(5):
        while len(out) < 200:
            got = bytearray(b.recv(1 << 16))
            out += decoder.feed(got)
            while port.write_some():
                pass
    assert out == frames
    a.close()
    b.close()


async def test_stream_reads_become_runs_of_whole_frames() -> None:
    config = parse_user_options("")
    stack = Stack(config, 3)
    port = GuestPort()
    runtime = Runtime(stack, port)
    guest, ours = trio.testing.memory_stream_pair()
    seen: list[Event] = []
    door_step = runtime.door.step

    def spy(event: Event, now_ns: int) -> list[Effect]:
        seen.append(event)
        return door_step(event, now_ns)

    runtime.door.step = spy  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run)
        nursery.start_soon(serve_stream, ours, runtime.inbox, port, "fake")
        arp = encode_frame(gf.arp_request("10.0.2.2"))
        await guest.send_all(arp + arp[:10])
        with trio.fail_after(5):
            while stack.counters["arp_replies"] < 1:
                await trio.sleep(0.01)
        await guest.send_all(arp[10:] + b"\x00\x00\x00\x00")  # an empty frame is skipped
        with trio.fail_after(5):
            while stack.counters["arp_replies"] < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    runs = [e for e in seen if isinstance(e, GuestFrames)]
    assert [r.data for r in runs] == [arp, arp + b"\x00\x00\x00\x00"]
    assert runtime.door.seq == len(seen) + 1  # FrameRuns, stepped as the runtime was made
    assert stack._runs


async def test_dgram_bursts_become_runs(tmp_path: pathlib.Path) -> None:
    config = parse_user_options("")
    stack = Stack(config, 4)
    port = GuestPort()
    runtime = Runtime(stack, port)
    ours = await open_dgram(Address("unix", path=str(tmp_path / "st")))
    qemu = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    qemu.bind(str(tmp_path / "qemu"))
    qemu.settimeout(5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runtime.run)
        arp = gf.arp_request("10.0.2.2")
        for _ in range(5):
            qemu.sendto(arp, str(tmp_path / "st"))
        nursery.start_soon(
            run_dgram, ours, Address("unix", path=str(tmp_path / "qemu")), runtime.inbox, port
        )
        replies = [await trio.to_thread.run_sync(qemu.recv, 2048) for _ in range(5)]
        nursery.cancel_scope.cancel()
    assert all(gf.parse(r).data.op == 2 for r in replies)
    assert stack.counters["frames_in"] == 5
    qemu.close()


async def test_datagrams_resume_after_a_full_socket(tmp_path: pathlib.Path) -> None:
    """A dgram socket that stops taking frames mid-run: the rest of the run leaves later, in
    order, one datagram per frame."""
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.bind(str(tmp_path / "qemu"))
    a.setblocking(False)
    b.setblocking(False)
    port = GuestPort()
    port.attach()
    port.dgram = (a, str(tmp_path / "qemu"))
    frames = [bytes([i % 256]) * (200 + i) for i in range(300)]
    for i in range(0, 300, 30):
        port.put_run(_run(*frames[i : i + 20]))
        for f in frames[i + 20 : i + 30]:
            port.put(f)
    got: list[bytes] = []
    full = 0
    for _ in range(1000):
        if port.send_datagrams() and not port.queued_bytes:
            break
        full += 1
        while True:
            try:
                got.append(b.recv(4096))
            except BlockingIOError:
                break
    while True:
        try:
            got.append(b.recv(4096))
        except BlockingIOError:
            break
    assert port.dropped == 0 and not port.dgram_errors
    assert got == frames
    assert full > 0  # the socket did fill up (a unix datagram queue holds a few frames)
    assert port.queued_bytes == 0
    a.close()
    b.close()


async def test_guest_queue_is_bounded_in_bytes() -> None:
    port = GuestPort(max_bytes=1000)
    port.attach()
    for _ in range(3):
        port.put(b"c" * 400)
    assert port.dropped == 1 and port.queued_bytes == 800
    port.put(b"d" * 200)  # still fits
    assert port.queued_bytes == 1000
    assert len(port.take_batch(500)) == 2
    assert port.queued_bytes == 200
    port.put(b"e" * 800)
    assert port.dropped == 1
    port.detach()
    assert port.queued_bytes == 0 and port.dropped == 3

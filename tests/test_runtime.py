"""The runtime's door loop and the stream transport, with a fake guest on memory streams."""

from __future__ import annotations

import os
import pathlib

import trio
import trio.testing

from replay.engine import replay_journal
from slirptrio.config import parse_user_options
from slirptrio.core.stack import Stack
from slirptrio.journal.writer import Recorder
from slirptrio.shell.runtime import Runtime
from slirptrio.shell.transport import GuestPort, serve_stream
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
    # GuestLink up, 3 frames, GuestLink down
    assert result.records == 5
    with ppath.open("rb") as f:
        assert len(list(read_pcap(f))) == 6  # three frames each way


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

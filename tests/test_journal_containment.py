"""The recorder is an observer: a snapshot that raises in the middle of a transfer ends the
journal's segment with a named gap, is logged and counted, and the transfer completes; the
next segment is tried again and, once the snapshot works, names the gap in its header."""

from __future__ import annotations

import logging
import pathlib
import struct
from typing import Any

import dpkt
import pytest
import trio

import slirptrio
from replay.engine import replay_journal
from slirptrio.core.stack import Stack
from slirptrio.journal import open_journal
from slirptrio.journal import writer as jw
from slirptrio.wire.framing import encode_frame
from tests import guestframes as gf

HOST_MAC = bytes.fromhex("52550a000202")
DATAGRAMS = 300
SIZE = 1200


def udp_to_host(port: int, payload: bytes, sport: int = 40000) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=port, data=payload)
    udp.ulen = 8 + len(payload)
    return gf.ipv4("10.0.2.15", "10.0.2.2", udp, dpkt.ip.IP_PROTO_UDP, HOST_MAC)


async def echo_server(sock: trio.socket.SocketType) -> None:
    while True:
        data, peer = await sock.recvfrom(65536)
        await sock.sendto(data, peer)


class GuestReader:
    """The guest's end of the stream transport: collects the UDP payloads it receives."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.payloads: list[bytes] = []
        self.changed = trio.Event()

    async def run(self) -> None:
        buf = b""
        while True:
            try:
                chunk = await self.stream.receive_some(65536)
            except trio.ClosedResourceError:
                return  # the test closed the guest's end
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 4:
                (n,) = struct.unpack("!I", buf[:4])
                if len(buf) < 4 + n:
                    break
                frame, buf = buf[4 : 4 + n], buf[4 + n :]
                eth = gf.parse(frame)
                if isinstance(eth.data, dpkt.ip.IP) and isinstance(eth.data.data, dpkt.udp.UDP):
                    self.payloads.append(bytes(eth.data.data.data))
                    self.changed.set()
                    self.changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(30):
            while len(self.payloads) < count:
                await self.changed.wait()


def failing_snapshots(monkeypatch: pytest.MonkeyPatch, fail: set[int]) -> list[int]:
    """Make the core's snapshot raise on its calls numbered in ``fail`` (1-based)."""
    original = Stack.snapshot
    calls: list[int] = []

    def snapshot(self: Stack) -> dict[str, Any]:
        calls.append(len(calls) + 1)
        if len(calls) in fail:
            raise TypeError("injected: cannot snapshot a header of type Ipv6Header")
        return original(self)

    monkeypatch.setattr(Stack, "snapshot", snapshot)
    return calls


async def transfer(tmp_path: pathlib.Path, journal: pathlib.Path, wait_out: int
                   ) -> tuple[Any, GuestReader]:
    """Send DATAGRAMS datagrams to a loopback echo server through the stack, each one after
    the echo of the one before; return the stack's statistics and what the guest got. The
    first ``wait_out`` recorder failures are given the time for the journal's retry."""
    server = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    sock = str(tmp_path / "vm.sock")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo_server, server)
        async with slirptrio.open_stack(
            "", journal=journal, pcap=None, seed=5, dns_upstreams=["127.0.0.1:9"],
            journal_max=16 * jw.MIN_SEGMENT_BYTES,  # 64 KiB segments: a dozen in the transfer
        ) as stack:
            await stack.listen_qemu(f"unix:{sock}")
            guest = await trio.open_unix_socket(sock)
            reader = GuestReader(guest)
            nursery.start_soon(reader.run)
            await guest.send_all(encode_frame(gf.arp_request("10.0.2.2")))
            failures = 0
            for i in range(DATAGRAMS):
                payload = i.to_bytes(4, "big") * (SIZE // 4)
                await guest.send_all(encode_frame(udp_to_host(port, payload)))
                await reader.wait_for(i + 1)
                if failures < wait_out and stack.statistics().recorder_failures > failures:
                    failures = stack.statistics().recorder_failures
                    # the journal tries a new segment RETRY_S after a failure: let it come
                    # within the transfer (the transfer itself never waits for it)
                    await trio.sleep(1.5 * jw.RETRY_S)
            stats = stack.statistics()
            await guest.aclose()
        nursery.cancel_scope.cancel()
    server.close()
    return stats, reader


async def test_snapshot_failure_mid_transfer_is_a_named_gap(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "slirptrio.journal")
    monkeypatch.setattr(jw, "RETRY_S", 0.2)
    # segment 1 and 2 start; the third snapshot raises, and so does the first retry
    calls = failing_snapshots(monkeypatch, {3, 4})
    journal = tmp_path / "s.journal"
    stats, reader = await transfer(tmp_path, journal, wait_out=2)

    # the transfer completed, byte for byte, in order
    assert reader.payloads == [i.to_bytes(4, "big") * (SIZE // 4) for i in range(DATAGRAMS)]
    assert len(calls) >= 5  # later segments were tried again, and started
    assert stats.recorder_failures == 2
    assert stats.recorder_last_failure is not None
    assert stats.recorder_last_failure.startswith("snapshot failed: TypeError: injected")
    assert stats.journal_lost_records > 0
    logged = [r for r in caplog.records if "snapshot failed: TypeError" in r.getMessage()]
    assert len(logged) == 2 and logged[0].exc_info is not None

    monkeypatch.undo()  # replay takes snapshots too
    opened = open_journal(journal)
    assert len(opened.segments) >= 3
    result = await trio.to_thread.run_sync(replay_journal, journal)
    assert result.identical, result.divergence
    # segment 2 ended early with a note naming the failure; the next one names the gap
    (ended,) = _ended(journal)
    assert ended.segment == 2 and ended.reason.startswith("snapshot failed: TypeError")
    (gap,) = result.gaps
    assert gap.reason.startswith("snapshot failed: TypeError: injected")
    assert gap.lost == stats.journal_lost_records


def _ended(journal: pathlib.Path) -> list[Any]:
    opened = open_journal(journal)
    for _ in opened.entries():
        pass
    return opened.ended


async def test_snapshot_that_always_fails_leaves_the_note_in_the_last_segment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jw, "RETRY_S", 0.2)
    failing_snapshots(monkeypatch, set(range(2, 10_000)))
    journal = tmp_path / "s.journal"
    stats, reader = await transfer(tmp_path, journal, wait_out=1)
    assert len(reader.payloads) == DATAGRAMS
    assert stats.recorder_failures >= 2
    ended = _ended(journal)
    assert [e.segment for e in ended] == [1]
    assert ended[0].reason.startswith("snapshot failed: TypeError: injected")
    monkeypatch.undo()  # replay takes snapshots too
    result = await trio.to_thread.run_sync(replay_journal, journal)
    assert result.identical and result.last is not None
    assert ended[0].after_seq == result.last.seq


def test_a_sink_that_raises_never_stops_a_step(caplog: pytest.LogCaptureFixture) -> None:
    """The door's last line: whatever the sink raises, the step's effects go out, counted."""
    from slirptrio.config import parse_user_options
    from slirptrio.core.events import GuestFrame
    from slirptrio.door import Door

    def sink(*_args: Any) -> None:
        raise RuntimeError("injected: the sink broke")

    caplog.set_level(logging.ERROR, "slirptrio.door")
    door = Door(Stack(parse_user_options(""), 1), sink)
    effects = door.step(GuestFrame(gf.arp_request("10.0.2.2")), 0)
    assert len(effects) == 1 and door.seq == 1  # the ARP reply, and the door moved on
    assert door.sink_failures == 1
    assert "the recorder raised on record 0" in caplog.text

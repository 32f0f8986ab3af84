"""Several guests through the shell (issue 22): ``listen_qemu`` takes many QEMU connections at
once, ``add_guest`` plugs in a scripted guest, ``ctl info`` lists the ports, a port that stops
reading is dropped without holding back the others, and the journal of it replays identical."""

from __future__ import annotations

import pathlib
import socket
import struct

import trio

import slirptrio
from replay import pcapng
from replay.engine import ReplayResult, replay_journal
from replay.summary import format_summary, summarize_journal
from slirptrio.shell import transport as tp
from slirptrio.shell.control import request
from slirptrio.wire.framing import StreamDecoder, encode_frame
from tests import guestframes as gf

MACS = [bytes.fromhex(f"5254000000{i:02x}") for i in range(4)]


class Guest:
    """A scripted guest on a stream: sends frames, collects what comes back."""

    def __init__(self, stream: trio.abc.Stream, mac: bytes) -> None:
        self.stream = stream
        self.mac = mac
        self._decoder = StreamDecoder()
        self.got: list[bytes] = []

    async def send(self, frame: bytes) -> None:
        await self.stream.send_all(encode_frame(frame[:6] + self.mac + frame[12:]))

    async def expect(self, pred: object) -> bytes:
        """The first frame received (kept ones included) for which ``pred`` holds."""
        assert callable(pred)
        with trio.fail_after(10):
            while True:
                for i, f in enumerate(self.got):
                    if pred(f):
                        return self.got.pop(i)
                self.got += self._decoder.feed(await self.stream.receive_some(65536))

    async def lease(self) -> str:
        await self.send(gf.dhcp(1, mac=self.mac))
        offer = await self.expect(lambda f: _dhcp_type(f) == 2)
        ip = socket.inet_ntoa(gf.dhcp_of(offer).yiaddr.to_bytes(4, "big"))
        await self.send(gf.dhcp(3, mac=self.mac, requested=ip, server="10.0.2.2"))
        await self.expect(lambda f: _dhcp_type(f) == 5)
        return ip


def _pcapng_blocks(data: bytes) -> tuple[list[str], list[tuple[int, int, bytes]]]:
    """Interface names, and (interface, direction flags, frame) per packet, read back by hand
    (independent of the writer)."""
    names: list[str] = []
    frames: list[tuple[int, int, bytes]] = []
    off = 0
    while off < len(data):
        kind, size = struct.unpack_from("<II", data, off)
        body = data[off + 8 : off + size - 4]
        opts = b""
        if kind == 1:
            opts = body[8:]
        elif kind == 6:
            iface, _hi, _lo, caplen, _len = struct.unpack_from("<IIIII", body)
            frame = body[20 : 20 + caplen]
            opts = body[20 + caplen + (-caplen % 4):]
        flags = 0
        o = 0
        while o + 4 <= len(opts):
            code, n = struct.unpack_from("<HH", opts, o)
            value = opts[o + 4 : o + 4 + n]
            if kind == 1 and code == 2:
                names.append(value.decode())
            if kind == 6 and code == 2:
                flags = struct.unpack("<I", value)[0] & 3
            if code == 0:
                break
            o += 4 + n + (-n % 4)
        if kind == 6:
            frames.append((iface, flags, frame))
        off += size
    return names, frames


def _dhcp_type(frame: bytes) -> int:
    try:
        kind: bytes = dict(gf.dhcp_of(frame).opts).get(53, b"\0")
        return kind[0]
    except Exception:
        return 0


def _experimental(dst: bytes, tag: bytes) -> bytes:
    return dst + bytes(6) + b"\x88\xb5" + tag.ljust(46, b".")


async def test_three_guests_on_one_listener(tmp_path: pathlib.Path) -> None:
    sock = str(tmp_path / "vm.sock")
    ctl = str(tmp_path / "ctl.sock")
    journal = tmp_path / "s.journal"
    async with slirptrio.open_stack(
        "", journal=journal, seed=3, dns_upstreams=["127.0.0.1:9"]
    ) as stack:
        await stack.listen_qemu(f"unix:{sock}")
        await stack.serve_control(ctl)
        guests = []
        for mac in MACS[:2]:
            guests.append(Guest(await trio.open_unix_socket(sock), mac))
        # the third plugged in by the embedding program: one end of a socket pair
        mine, theirs = trio.socket.socketpair()
        assert stack.add_guest(trio.SocketStream(theirs), "scripted") >= 1
        guests.append(Guest(trio.SocketStream(mine), MACS[2]))
        leases = [await g.lease() for g in guests]
        assert sorted(leases) == ["10.0.2.15", "10.0.2.16", "10.0.2.17"]
        # guest 0 to guest 1: forwarded to guest 1 alone, as it was sent
        await guests[0].send(_experimental(MACS[1], b"hello 1"))
        got = await guests[1].expect(lambda f: b"hello 1" in f)
        assert got[6:12] == MACS[0]
        # a broadcast from guest 2 reaches both others
        await guests[2].send(_experimental(b"\xff" * 6, b"to all"))
        for g in guests[:2]:
            await g.expect(lambda f: b"to all" in f)
        info = await request(ctl, {"cmd": "info"})
        ports = info["ports"]
        assert len(ports) == 3
        assert {a for p in ports for a in p["addresses"]} == set(leases)
        assert any(p["peer"] == "scripted" for p in ports)
        # a guest that leaves and comes back (another connection) gets its address again
        await guests[1].stream.aclose()
        with trio.fail_after(10):
            while len(stack.ports()) != 2:
                await trio.sleep(0.01)
        again = Guest(await trio.open_unix_socket(sock), MACS[1])
        assert await again.lease() == leases[1]
        for g in (guests[0], guests[2], again):
            await g.stream.aclose()
    result: ReplayResult = await trio.to_thread.run_sync(replay_journal, journal)
    assert result.identical, result
    summary = await trio.to_thread.run_sync(summarize_journal, journal)
    assert sorted(summary.guests) == [0, 1, 2]
    assert summary.guests[1]["arrived_s"] and summary.guests[1]["left_s"]
    port_of = {mac: g["port"] for g in summary.guests.values() for mac in g["macs"]}
    a, b = port_of[MACS[0].hex(":")], port_of[MACS[1].hex(":")]
    assert summary.between[(a, b)][0] == 1, summary.between  # the "hello 1" frame
    text = format_summary(summary)
    assert "Guests (3 switch ports)" in text and f"port {a} -> port {b}: 1 frames" in text
    # pcapng: one interface per port, each frame on the port it crossed, its direction marked
    out = tmp_path / "s.pcapng"
    with open(out, "wb") as f:
        n = pcapng.export(journal, f)
    names, frames = _pcapng_blocks(out.read_bytes())
    assert sorted(names) == ["port 0", "port 1", "port 2"]
    assert len(frames) == n
    hello = [(names[i], flags) for i, flags, data in frames if b"hello 1" in data]
    assert hello == [(f"port {a}", 1), (f"port {b}", 2)]  # in from a, out to b


async def test_a_port_that_stops_reading_is_dropped(tmp_path: pathlib.Path) -> None:
    """Its queue fills (it never reads); past STALL_FRAMES frames in a row lost it is closed,
    while another guest keeps being served."""
    sock = str(tmp_path / "vm.sock")
    async with slirptrio.open_stack("mem-budget=1M", dns_upstreams=["127.0.0.1:9"]) as stack:
        await stack.listen_qemu(f"unix:{sock}")
        first = Guest(await trio.open_unix_socket(sock), MACS[0])
        stalled_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled_sock.connect(sock)
        stalled = Guest(trio.SocketStream(trio.socket.from_stdlib_socket(stalled_sock)), MACS[1])
        await stalled.send(_experimental(b"\xff" * 6, b"i am here"))
        await first.expect(lambda f: b"i am here" in f)
        # the first guest floods frames toward the stalled one, which never reads
        big = _experimental(MACS[1], b"x" * 1400)
        with trio.fail_after(60):
            while len(stack.ports()) == 2:
                await first.stream.send_all(encode_frame(big[:6] + MACS[0] + big[12:]) * 64)
                await trio.sleep(0)
        assert [p["port"] for p in stack.ports()] == [0]
        assert await first.lease() == "10.0.2.15"  # the other guest is served as ever
        assert tp.STALL_FRAMES > 0
        await first.stream.aclose()
        await stalled.stream.aclose()


def test_a_capture_follows_one_guest_port() -> None:
    from slirptrio.core.events import GuestFrames, PortFrames, PortSendFrames, SendFrames
    from slirptrio.shell.capture import Captures, filter_from_request

    def run(*frames: bytes) -> bytes:
        return b"".join(len(f).to_bytes(4, "big") + f for f in frames)

    taps: list[object] = []
    caps = Captures(0, taps)  # type: ignore[arg-type]
    only2 = caps.open(filter_from_request({"guest": [2]}, lambda _n: None))
    every = caps.open(filter_from_request({}, lambda _n: None))
    a, b, c = (_experimental(MACS[i], b"f%d" % i) for i in range(3))
    caps.tap(1, PortFrames(2, run(a, b)), [PortSendFrames(1, run(a)), SendFrames(run(c))])
    caps.tap(2, GuestFrames(run(c)), [PortSendFrames(2, run(c))])
    assert only2.frames == 3  # in from port 2 (two), out to port 2 (one)
    assert every.frames == 6
    assert only2.filter.describe()["guest"] == [2]

"""The stack's timers run on trio's clock: a shell test waits for them on a MockClock, in virtual
seconds, instead of sleeping real ones (and cannot be late on a loaded machine)."""

from __future__ import annotations

import contextlib
import pathlib
import socket
from collections.abc import AsyncIterator

import dpkt
import trio
from trio.testing import MockClock

import slirptrio
from slirptrio.wire.framing import StreamDecoder, encode_frame
from tests import guestframes as gf

GATEWAY_MAC = bytes.fromhex("52550a000202")
SEC = 1_000_000_000


async def exchange(guest: trio.SocketStream, decoder: StreamDecoder, frame: bytes) -> bytes:
    await guest.send_all(encode_frame(frame))
    with trio.fail_after(5):
        while True:
            got = decoder.feed(await guest.receive_some(65536))
            if got:
                (reply,) = got
                return reply


def udp_to_host(port: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=40000, dport=port, data=payload)
    udp.ulen = 8 + len(payload)
    return gf.ipv4("10.0.2.15", "10.0.2.2", udp, dpkt.ip.IP_PROTO_UDP, GATEWAY_MAC)


@contextlib.asynccontextmanager
async def udp_echo() -> AsyncIterator[int]:
    """A loopback UDP echo server for the test's lifetime; yields its port."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        await server.bind(("127.0.0.1", 0))

        async def echo() -> None:
            while True:
                data, peer = await server.recvfrom(2048)
                await server.sendto(data, peer)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            yield server.getsockname()[1]
            nursery.cancel_scope.cancel()


async def test_an_idle_udp_flow_expires_on_the_trio_clock(
    mock_clock: MockClock, tmp_path: pathlib.Path
) -> None:
    mock_clock.autojump_threshold = 0.05  # real seconds: loopback I/O settles before a jump
    sock = str(tmp_path / "vm.sock")
    async with (
        udp_echo() as port,
        slirptrio.open_stack("udp-timeout=30", seed=1, dns_upstreams=["127.0.0.1:9"]) as stack,
    ):
        await stack.listen_qemu(f"unix:{sock}")
        guest = await trio.open_unix_socket(sock)
        decoder = StreamDecoder()
        reply = gf.parse(await exchange(guest, decoder, udp_to_host(port, b"hello")))
        assert reply.data.data.data == b"hello" and reply.data.data.sport == port
        (flow,) = stack.flows()
        assert flow.proto == "udp"
        # Just before its deadline (the flow may have idled a little already) it is still
        # there; two virtual seconds later the stack's timer has closed it.
        await trio.sleep(30 - flow.idle_ns / SEC - 1)
        assert [f.flow for f in stack.flows()] == [flow.flow]
        await trio.sleep(2)
        assert stack.flows() == []
        assert stack.statistics().counters["udp_flows_expired"] == 1
        # A new datagram opens a new flow: the old one is really gone, not just hidden.
        reply = gf.parse(await exchange(guest, decoder, udp_to_host(port, b"again")))
        assert reply.data.data.data == b"again"
        (again,) = stack.flows()
        assert again.flow != flow.flow
        await guest.aclose()


async def test_a_departed_guest_loses_its_flows_after_a_virtual_minute(
    mock_clock: MockClock, tmp_path: pathlib.Path
) -> None:
    mock_clock.autojump_threshold = 0.05
    sock = str(tmp_path / "vm.sock")
    async with (
        udp_echo() as port,
        slirptrio.open_stack("", seed=1, dns_upstreams=["127.0.0.1:9"]) as stack,
    ):
        await stack.listen_qemu(f"unix:{sock}")
        guest = await trio.open_unix_socket(sock)
        await exchange(guest, StreamDecoder(), udp_to_host(port, b"hello"))
        (flow,) = stack.flows()
        await guest.aclose()  # the link goes down; the stack waits a minute for it to return
        with trio.fail_after(5):
            while stack.statistics().guest_attached:
                await trio.sleep(0.01)
        down_at = trio.current_time()
        await trio.sleep(59)
        assert [f.flow for f in stack.flows()] == [flow.flow]
        await trio.sleep(61 - (trio.current_time() - down_at))
        assert stack.flows() == []
        assert stack.statistics().counters["udp_guest_departed"] == 1

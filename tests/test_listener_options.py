"""Host TCP sockets a hostfwd listener accepts have TCP_NODELAY and the keepalive options, set
once on the listener (Linux copies them to every accepted socket) instead of per connection."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from slirptrio.config import parse_user_options
from slirptrio.core.events import Event, TcpInbound
from slirptrio.shell import flows as fl
from slirptrio.shell.flows import TcpFlows
from slirptrio.shell.forwards import Forwards

pytestmark = pytest.mark.skipif(
    not fl.LISTENER_OPTIONS_INHERITED, reason="accepted sockets inherit options on Linux only"
)


def _options(sock: Any) -> tuple[int, ...]:
    return (
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


async def test_accepted_sockets_have_the_options_without_a_setsockopt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send, receive = trio.open_memory_channel[Event](64)
    tcp = TcpFlows(send)
    fwd = Forwards(send, tcp, parse_user_options(""))
    adopted: list[fl.SocketEnd] = []
    adopt = tcp.adopt

    def spy(flow: int, end: Any) -> None:
        adopted.append(end)
        adopt(flow, end)

    monkeypatch.setattr(tcp, "adopt", spy)
    calls = []
    set_options = fl.set_stream_options

    def counted(sock: Any) -> None:
        calls.append(sock)
        set_options(sock)

    monkeypatch.setattr(fl, "set_stream_options", counted)
    async with trio.open_nursery() as nursery:
        await nursery.start(tcp.run)
        await nursery.start(fwd.run)
        port = await fwd.add_hostfwd("tcp:127.0.0.1:0-:22")
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        with trio.fail_after(10):
            inbound = 0
            while inbound < 3:
                if isinstance(await receive.receive(), TcpInbound):
                    inbound += 1
        assert len(calls) == 1  # the listener's, none per connection
        assert len(adopted) == 3
        want = (True, True, fl.KEEPALIVE_IDLE_S, fl.KEEPALIVE_INTERVAL_S, fl.KEEPALIVE_COUNT)
        for end in adopted:
            assert _options(end.sock) == want
        for c in clients:
            c.close()
        nursery.cancel_scope.cancel()

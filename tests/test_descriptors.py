"""Descriptor limits and exhaustion: sizing max-flows, listeners that back off instead of
dying, the spare descriptor, the control socket's uid check, private sockets and directories,
and the dgram transport's peer filter.

The exhaustion tests lower this process's soft RLIMIT_NOFILE for a moment and fill it with
/dev/null descriptors, so EMFILE is the kernel's own; the limit is restored afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from slirptrio.config import parse_user_options
from slirptrio.core.events import Event, GuestFrames, GuestLink, TcpConnect, TcpConnectFailed
from slirptrio.shell import control
from slirptrio.shell import descriptors as ds
from slirptrio.shell import transport as tp
from slirptrio.shell.datagrams import Datagrams
from slirptrio.shell.flows import TcpFlows
from slirptrio.shell.forwards import Forwards
from slirptrio.wire.framing import encode_frame


@contextlib.contextmanager
def exhausted_descriptors(spare_fds: int = 0) -> Iterator[list[int]]:
    """Lower the soft limit near what is open and fill it: the next open fails with EMFILE
    (after ``spare_fds`` more). Yields the filler descriptors; closing some frees room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 64, hard))
    fillers: list[int] = []
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        for _ in range(spare_fds):
            os.close(fillers.pop())
        yield fillers
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------------------ sizing


def test_flows_for_descriptors() -> None:
    assert ds.flows_for_descriptors(1 << 20) > 8192
    assert ds.flows_for_descriptors(1024) == (1024 - ds.FD_RESERVE) * 3 // 4
    assert ds.flows_for_descriptors(64) == ds.MIN_FLOWS
    assert ds.flows_for_descriptors(0) == ds.MIN_FLOWS


def test_fit_max_flows_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_user_options("")
    with caplog.at_level(logging.WARNING, "slirptrio.descriptors"):
        assert ds.fit_max_flows(cfg, nofile=1 << 20) is cfg
        assert not caplog.records
        small = ds.fit_max_flows(cfg, nofile=1024)
    assert small.max_flows == ds.flows_for_descriptors(1024) < cfg.max_flows
    assert len(caplog.records) == 1
    assert "max-flows=" in caplog.records[0].getMessage()
    assert "1024" in caplog.records[0].getMessage()


def test_raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        before, after = ds.raise_nofile_limit()
        assert before == min(256, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == after
        if hard != resource.RLIM_INFINITY:
            assert after == hard
        assert ds.raise_nofile_limit() == (after, after)  # nothing left to raise
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_open_stack_fits_max_flows(tmp_path: Path) -> None:
    import slirptrio

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        async with slirptrio.open_stack("max-flows=8192", dns_upstreams=["127.0.0.1:9"]) as st:
            assert st.config.max_flows == ds.flows_for_descriptors(512)
            assert st._runtime.stack.tcp.max_flows == st.config.max_flows
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------- accepting under EMFILE


async def _listener() -> tuple[trio.socket.SocketType, int]:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, int(sock.getsockname()[1])


async def test_accept_backs_off_and_recovers() -> None:
    sock, port = await _listener()
    client = socket.socket()
    client.setblocking(False)
    with sock, client:
        loop = ds.AcceptLoop(sock, "test listener")
        with contextlib.suppress(BlockingIOError):
            client.connect(("127.0.0.1", port))
        with exhausted_descriptors() as fillers:
            async with trio.open_nursery() as nursery:
                got: list[trio.socket.SocketType] = []

                async def accept() -> None:
                    conn, _ = await loop.accept()
                    got.append(conn)

                nursery.start_soon(accept)
                with trio.fail_after(5):
                    while loop.backoffs < 2:
                        await trio.sleep(0.01)
                assert loop.state == "backing-off: EMFILE"
                assert not got
                os.close(fillers.pop())  # one descriptor frees up
                with trio.fail_after(5):
                    while not got:
                        await trio.sleep(0.01)
        assert loop.state == "listening"
        got[0].close()


async def test_spare_descriptor_takes_the_connection_at_once() -> None:
    sock, port = await _listener()
    client = socket.socket()
    client.setblocking(False)
    with sock, client:
        spare = ds.Spare()
        assert spare.held
        loop = ds.AcceptLoop(sock, "test listener", spare)
        with exhausted_descriptors():
            with contextlib.suppress(BlockingIOError):
                client.connect(("127.0.0.1", port))
            with trio.fail_after(5):
                conn, _ = await loop.accept()
            assert not spare.held and loop.backoffs == 0
            conn.close()
            assert spare.take()  # the descriptor is back
        spare.close()
        assert not spare.held


async def test_accept_raises_for_a_closed_socket() -> None:
    sock, _port = await _listener()
    sock.close()
    with pytest.raises(OSError):
        await ds.AcceptLoop(sock, "closed").accept()


async def test_tcp_flow_fails_alone_under_emfile() -> None:
    # A flow whose socket cannot be made fails with EMFILE (the core answers RST); the stack
    # goes on and the next flow, once a descriptor is free, connects.
    send, receive = trio.open_memory_channel[Event](16)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    flows = TcpFlows(send)
    with server:
        async with trio.open_nursery() as nursery:
            await nursery.start(flows.run)
            with exhausted_descriptors():
                flows.connect(TcpConnect(1, "127.0.0.1", port))
                with trio.fail_after(5):
                    ev = await receive.receive()
            assert ev == TcpConnectFailed(1, errno.EMFILE)
            flows.connect(TcpConnect(2, "127.0.0.1", port))
            with trio.fail_after(5):
                ev = await receive.receive()
            assert type(ev).__name__ == "TcpConnected"
            nursery.cancel_scope.cancel()


async def test_hostfwd_listener_state_in_listeners(tmp_path: Path) -> None:
    send, _receive = trio.open_memory_channel[Event](64)
    tcp = TcpFlows(send)
    fwd = Forwards(send, tcp, parse_user_options(""))
    async with trio.open_nursery() as nursery:
        await nursery.start(tcp.run)
        await nursery.start(fwd.run)
        port = await fwd.add_hostfwd("tcp:127.0.0.1:0-:22")
        await fwd.add_hostfwd(f"unix:{tmp_path}/f.sock-:22")
        (tcp_info, unix_info) = fwd.listeners()
        assert tcp_info == {"rule": "tcp:127.0.0.1:0-:22", "proto": "tcp", "addr": "127.0.0.1",
                            "port": port, "state": "listening"}
        assert unix_info["addr"] == f"{tmp_path}/f.sock" and unix_info["state"] == "listening"
        client = socket.socket()
        client.setblocking(False)
        with client, exhausted_descriptors():
            with contextlib.suppress(BlockingIOError):
                client.connect(("127.0.0.1", port))
            with trio.fail_after(5):
                while fwd.listeners()[0]["state"] == "listening":
                    await trio.sleep(0.01)
            assert fwd.listeners()[0]["state"] == "backing-off: EMFILE"
        with trio.fail_after(5):
            while fwd.listeners()[0]["state"] != "listening":
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------- control socket


async def test_control_refuses_other_uids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def info(_req: dict[str, object]) -> dict[str, object]:
        return {"flows": []}

    path = str(tmp_path / "c.sock")
    listener = await tp.open_listener(tp.Address("unix", path=path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve_control, listener, {"info": info})
        assert (await control.request(path, {"cmd": "info"}))["ok"]
        # Pretend we are somebody else: our own uid is then a stranger's.
        nursery.cancel_scope.cancel()
    monkeypatch.setattr(control, "allowed_uids", lambda: frozenset({os.geteuid() + 4242}))
    listener = await tp.open_listener(tp.Address("unix", path=path))
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve_control, listener, {"info": info})
        with caplog.at_level(logging.WARNING, "slirptrio.control"):
            answer = await control.request(path, {"cmd": "info"})
        assert answer == {
            "ok": False, "error": f"permission denied: uid {os.geteuid()} may not control this "
            "stack"
        }
        assert any("refused a client of uid" in r.getMessage() for r in caplog.records)
        nursery.cancel_scope.cancel()


async def test_control_answers_under_emfile(tmp_path: Path) -> None:
    async def info(_req: dict[str, object]) -> dict[str, object]:
        return {"flows": []}

    path = str(tmp_path / "c.sock")
    listener = await tp.open_listener(tp.Address("unix", path=path))
    clients = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        await nursery.start(control.serve_control, listener, {"info": info})
        with exhausted_descriptors():
            # One after the other: each closed client's descriptor becomes the spare again.
            for client in clients:
                with client:
                    client.connect(path)
                    client.sendall(b'{"cmd": "info"}\n')
                    client.settimeout(5)
                    answer = json.loads(await trio.to_thread.run_sync(client.recv, 1000))
                    assert answer == {"ok": True, "flows": []}
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ sockets and directories


async def test_unix_sockets_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        listener = await tp.open_listener(tp.Address("unix", path=str(tmp_path / "g.sock")))
        dgram = await tp.open_dgram(tp.Address("unix", path=str(tmp_path / "d.sock")))
    finally:
        os.umask(old)
    with listener.socket, dgram:
        for name in ("g.sock", "d.sock"):
            assert stat.S_IMODE(os.lstat(tmp_path / name).st_mode) == 0o600


async def test_live_socket_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "g.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(str(path))
        with pytest.raises(OSError, match="in use by another program"):
            await tp.open_dgram(tp.Address("unix", path=str(path)))
    # Its owner is gone now (a stale file): replaced.
    sock = await tp.open_dgram(tp.Address("unix", path=str(path)))
    sock.close()


def test_private_dir(tmp_path: Path) -> None:
    d = tmp_path / "p"
    assert tp.private_dir(str(d)) == str(d)
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    tp.private_dir(str(d))  # an existing private directory of ours is fine
    d.chmod(0o750)
    with pytest.raises(OSError, match="0750 lets others in"):
        tp.private_dir(str(d))
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(OSError, match="not a directory"):
        tp.private_dir(str(link))
    if os.geteuid() == 0:
        os.chown(d, 65534, 65534)
        d.chmod(0o700)
        with pytest.raises(OSError, match="owned by uid 65534"):
            tp.private_dir(str(d))


# ------------------------------------------------------------------------- dgram transport


async def test_dgram_takes_frames_only_from_its_peer(tmp_path: Path) -> None:
    local, remote = tmp_path / "st.dgram", tmp_path / "qemu.dgram"
    sock = await tp.open_dgram(tp.Address("unix", path=str(local)))
    send, receive = trio.open_memory_channel[Event](16)
    port = tp.GuestPort()
    qemu = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    qemu.bind(str(remote))
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stranger.bind(str(tmp_path / "x.dgram"))
    anonymous = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with qemu, stranger, anonymous:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tp.run_dgram, sock, tp.Address("unix", path=str(remote)), send,
                               port)
            with trio.fail_after(5):
                assert await receive.receive() == GuestLink(True)
            stranger.sendto(b"from a stranger", str(local))
            anonymous.sendto(b"from nobody", str(local))
            qemu.sendto(b"from qemu", str(local))
            with trio.fail_after(5):
                ev = await receive.receive()
            assert ev == GuestFrames(encode_frame(b"from qemu"))  # a run of one frame
            assert port.foreign == 2
            nursery.cancel_scope.cancel()


async def test_dgram_udp_peer_filter() -> None:
    peer = await tp.PeerFilter.resolve(tp.Address("udp", host="localhost", port=5000))
    assert peer.accepts(("127.0.0.1", 5000))
    assert not peer.accepts(("127.0.0.1", 5001))
    assert not peer.accepts(("127.0.0.2", 5000))
    unix = tp.PeerFilter(tp.Address("unix", path="/nonexistent/q"))
    assert unix.accepts("/nonexistent/q")
    assert not unix.accepts("") and not unix.accepts(None) and not unix.accepts("/other")


# ---------------------------------------------------------------- resolv.conf under EMFILE


async def test_resolv_conf_unread_under_emfile_keeps_the_upstream(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    send, receive = trio.open_memory_channel[Event](16)
    dg = Datagrams(send, resolv_conf=str(conf), resolv_check_s=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(dg.run)
        with trio.fail_after(5):
            first = await receive.receive()
        assert "192.0.2.53" in str(first)
        with exhausted_descriptors() as fillers:
            # Borrow one descriptor to write the file, and take it back at once (no
            # checkpoint in between: the watcher cannot read meanwhile).
            os.close(fillers.pop())
            conf.write_text("nameserver 192.0.2.54\n")
            fillers.append(os.open(os.devnull, os.O_RDONLY))
            await trio.sleep(0.2)
            with pytest.raises(trio.WouldBlock):
                receive.receive_nowait()  # no fallback to 127.0.0.1 meanwhile
        with trio.fail_after(5):
            second = await receive.receive()
        assert "192.0.2.54" in str(second)
        nursery.cancel_scope.cancel()

"""Transports to QEMU: ``-netdev stream``/``socket`` framing and ``-netdev dgram`` datagrams.

A transport turns the guest's byte stream or datagrams into :class:`GuestFrame` events on the
inbox, and writes the core's frames back. Frames toward the guest go through :class:`GuestPort`,
a bounded queue that never blocks the door: when the guest is not draining (QEMU's NIC queue is
full, or no guest is attached) frames past the bound are dropped and counted, as libslirp's
``send_packet`` contract allows ("TCP will then handle retransmissions").

QEMU's stream server and client accept one peer at a time; so do we. When the guest goes away
the stack keeps its state and the transport waits for (listen) or retries (connect) the next one.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import socket as _socket
import stat
from dataclasses import dataclass

import trio

from slirptrio.core.events import Event, GuestFrame, GuestLink
from slirptrio.shell.descriptors import AcceptLoop, Spare
from slirptrio.wire import MalformedFrame
from slirptrio.wire.framing import StreamDecoder, encode_frame

log = logging.getLogger("slirptrio.transport")

_RECV_SIZE = 1 << 18
_WRITE_BATCH_BYTES = 1 << 18


class AddressError(ValueError):
    """A transport address that cannot be parsed."""


@dataclass(frozen=True)
class Address:
    """``unix:PATH``, ``tcp:HOST:PORT`` or ``udp:HOST:PORT``."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str, kinds: tuple[str, ...]) -> Address:
        kind, sep, rest = text.partition(":")
        if not sep or kind not in kinds:
            raise AddressError(f"{text!r}: expected one of {', '.join(k + ':...' for k in kinds)}")
        if kind == "unix":
            if not rest:
                raise AddressError(f"{text!r}: empty unix socket path")
            return cls(kind, path=rest)
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise AddressError(f"{text!r}: expected {kind}:HOST:PORT")
        return cls(kind, host=host.strip("[]") or "127.0.0.1", port=int(port))

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind}:{host}:{self.port}"

    def qemu(self, prefix: str) -> str:
        """This address as QEMU SocketAddress options, e.g. ``addr.type=unix,addr.path=...``."""
        if self.kind == "unix":
            return f"{prefix}.type=unix,{prefix}.path={self.path}"
        return f"{prefix}.type=inet,{prefix}.host={self.host},{prefix}.port={self.port}"


class GuestPort:
    """Frames on their way to the guest: bounded in frames and in bytes (``max_bytes``, from
    the ``mem-budget`` option), never blocking the producer.

    On a stream socket the door loop writes each burst's frames itself (:meth:`kick`, one
    non-blocking write, no task switch); the writer task only finishes what the socket did not
    take at once. Other transports always go through their writer task.
    """

    def __init__(self, max_frames: int = 8192, max_bytes: int = 32 << 20) -> None:
        self._queue: collections.deque[bytes] = collections.deque()
        self._max = max_frames
        self._max_bytes = max_bytes
        self.queued_bytes = 0
        self._wakeup = trio.Event()
        self.attached = False
        self.dropped = 0
        self.sent = 0
        self.foreign = 0  # datagrams from a sender other than the dgram transport's peer
        self.direct_fd = -1  # a stream socket the door loop may write to directly
        self.partial = b""  # bytes of a direct write the socket did not take
        self.writer_busy = False

    def put(self, frame: bytes) -> None:
        if (
            not self.attached
            or len(self._queue) >= self._max
            or self.queued_bytes + len(frame) > self._max_bytes
        ):
            self.dropped += 1
            return
        self._queue.append(frame)
        self.queued_bytes += len(frame)
        if self.direct_fd < 0:
            self._wakeup.set()

    def kick(self) -> None:
        """Write what is queued straight to the socket (stream transports), else wake the
        writer task."""
        if not self._queue:
            return
        if self.direct_fd < 0 or self.writer_busy or self.partial:
            self._wakeup.set()
            return
        batch = self.take_batch(_WRITE_BATCH_BYTES)
        self.sent += len(batch)
        data = b"".join([encode_frame(f) for f in batch])
        try:
            n = os.write(self.direct_fd, data)
        except OSError:  # full (EAGAIN), or broken: the writer task waits or meets the error
            n = 0
        if n < len(data):
            self.partial = data[n:]
            self._wakeup.set()
        elif self._queue:
            self._wakeup.set()

    def take_batch(self, max_bytes: int) -> list[bytes]:
        batch: list[bytes] = []
        size = 0
        q = self._queue
        while q and size < max_bytes:
            frame = q.popleft()
            batch.append(frame)
            size += len(frame)
        self.queued_bytes -= size
        return batch

    async def wait(self) -> None:
        while not self._queue and not self.partial:
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def attach(self, direct_fd: int = -1) -> None:
        self._queue.clear()
        self.queued_bytes = 0
        self.partial = b""
        self.writer_busy = False
        self.direct_fd = direct_fd
        self.attached = True

    def detach(self) -> None:
        self.attached = False
        self.direct_fd = -1
        self.partial = b""
        self.dropped += len(self._queue)
        self._queue.clear()
        self.queued_bytes = 0


async def _stream_writer(
    stream: trio.abc.SendStream, port: GuestPort, peer: str, done: trio.CancelScope
) -> None:
    try:
        while True:
            await port.wait()
            port.writer_busy = True
            if port.partial:
                data, port.partial = port.partial, b""
            else:
                batch = port.take_batch(_WRITE_BATCH_BYTES)
                port.sent += len(batch)
                data = b"".join([encode_frame(f) for f in batch])
            await stream.send_all(data)
            port.writer_busy = False
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.info("guest connection %s lost while writing: %s", peer, exc)
        done.cancel()


async def serve_stream(
    stream: trio.abc.Stream, inbox: trio.MemorySendChannel[Event], port: GuestPort, peer: str
) -> None:
    """Carry frames between one connected QEMU stream peer and the stack until it goes away."""
    decoder = StreamDecoder()
    port.attach(stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1)
    log.info("guest attached: %s", peer)
    await inbox.send(GuestLink(True))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stream_writer, stream, port, peer, nursery.cancel_scope)
            try:
                while True:
                    data = await stream.receive_some(_RECV_SIZE)
                    if not data:
                        log.info("guest closed the connection: %s", peer)
                        break
                    for frame in decoder.feed(data):
                        # No checkpoint per frame: the door loop takes a burst in one go.
                        event = GuestFrame(frame)
                        try:
                            inbox.send_nowait(event)
                        except trio.WouldBlock:
                            await inbox.send(event)
            except MalformedFrame as exc:
                log.error("dropping guest connection %s: %s", peer, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.info("guest connection %s lost: %s", peer, exc)
            nursery.cancel_scope.cancel()
    finally:
        port.detach()
        with trio.CancelScope(shield=True):
            await stream.aclose()
            await inbox.send(GuestLink(False))


def _remove_stale_socket(path: str, kind: int) -> None:
    """Remove a socket file nobody listens on any more; refuse one that is in use."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a socket", path)
    probe = _socket.socket(_socket.AF_UNIX, kind)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: nobody listens there any more
    except BlockingIOError:
        raise OSError(errno.EADDRINUSE, "in use by another program", path) from None
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    else:
        raise OSError(errno.EADDRINUSE, "in use by another program", path)
    finally:
        probe.close()
    os.unlink(path)


PRIVATE_MODE = 0o600
"""Mode of every unix socket the stack creates (guest, control, hostfwd): owner only."""


async def bind_unix(path: str, kind: int) -> trio.socket.SocketType:
    """A unix socket of ``kind`` bound at ``path``, mode 0600 whatever the umask.

    A stale socket file is replaced; a live one (another stack's) is an EADDRINUSE error. The
    mode is set on the socket before ``bind`` (Linux creates the file with the socket inode's
    mode less the umask), so there is no moment at which others may connect; a chmod after
    ``bind`` covers systems that ignore it.
    """
    _remove_stale_socket(path, kind)
    sock = trio.socket.socket(_socket.AF_UNIX, kind)
    try:
        with contextlib.suppress(OSError):  # if unsupported, the chmod below still applies
            os.fchmod(sock.fileno(), PRIVATE_MODE)
        await sock.bind(path)
        os.chmod(path, PRIVATE_MODE)
    except BaseException:
        sock.close()
        raise
    return sock


def private_dir(path: str) -> str:
    """Make sure ``path`` is a directory of ours that nobody else may enter (0700): create it
    if missing, refuse one that another user owns, that others may enter, or a symlink."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "exists and is not a directory", path)
    if st.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"owned by uid {st.st_uid}, not by us", path)
    if st.st_mode & 0o077:
        raise OSError(
            errno.EPERM, f"mode {stat.S_IMODE(st.st_mode):04o} lets others in (want 0700)", path
        )
    return path


def _context(exc: OSError, what: str, path: str = "") -> OSError:
    """``exc`` with ``what`` in its message (the errno kept); for a unix socket ``path``
    whose directory is missing, the message says so."""
    reason = exc.strerror or str(exc)
    parent = os.path.dirname(os.path.abspath(path)) if path else ""
    if exc.errno == errno.ENOENT and parent and not os.path.isdir(parent):
        reason = f"no such directory {parent}"
    elif exc.filename and exc.filename not in what:
        reason = f"{exc.filename}: {reason}"
    return OSError(exc.errno, f"{what}: {reason}")


async def open_listener(addr: Address) -> trio.SocketListener:
    """Bind and listen on ``addr`` (a stale unix socket file is replaced; a unix socket is
    created 0600). Raises OSError naming the address."""
    try:
        if addr.kind == "unix":
            sock = await bind_unix(addr.path, _socket.SOCK_STREAM)
            sock.listen(4)
            return trio.SocketListener(sock)
        listeners = await trio.open_tcp_listeners(addr.port, host=addr.host)
    except OSError as exc:
        raise _context(exc, f"cannot listen on {addr}", addr.path) from exc
    for extra in listeners[1:]:
        await extra.aclose()
    return listeners[0]


async def run_listen(
    listener: trio.SocketListener, inbox: trio.MemorySendChannel[Event], port: GuestPort
) -> None:
    """Accept QEMU stream clients, one at a time; a second concurrent client is refused.

    Running out of descriptors never ends this: a spare one is kept for the guest's
    connection, and past that the accept backs off and retries.
    """
    spare = Spare()
    acceptor = AcceptLoop(listener.socket, "guest listener", spare)
    async with trio.open_nursery() as nursery:
        busy = False

        async def handle(stream: trio.SocketStream) -> None:
            nonlocal busy
            try:
                await serve_stream(stream, inbox, port, _peer_name(stream))
            finally:
                busy = False
                spare.take()  # if the guest's connection had it: the next one may need it

        try:
            while True:
                conn, _addr = await acceptor.accept()
                stream = trio.SocketStream(conn)
                if busy:
                    log.warning("refusing a second guest connection while one is attached")
                    await stream.aclose()
                    continue
                busy = True
                nursery.start_soon(handle, stream)
        finally:
            spare.close()
            listener.socket.close()


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(name) if name else "unix peer"


async def run_connect(
    addr: Address, inbox: trio.MemorySendChannel[Event], port: GuestPort, retry_s: float = 0.5
) -> None:
    """Connect to a listening QEMU, retrying until it answers and after every disconnect."""
    warned = False
    while True:
        try:
            stream: trio.SocketStream
            if addr.kind == "unix":
                stream = await trio.open_unix_socket(addr.path)
            else:
                stream = await trio.open_tcp_stream(addr.host, addr.port)
        except OSError as exc:
            if not warned:
                log.warning("cannot connect to %s yet (%s); retrying", addr, exc)
                warned = True
            await trio.sleep(retry_s)
            continue
        warned = False
        await serve_stream(stream, inbox, port, str(addr))
        await trio.sleep(retry_s)


async def open_dgram(local: Address) -> trio.socket.SocketType:
    """Bind the local end of a ``-netdev dgram`` pair (a unix one 0600)."""
    try:
        if local.kind == "unix":
            sock = await bind_unix(local.path, _socket.SOCK_DGRAM)
        else:
            sock = trio.socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
            try:
                await sock.bind((local.host, local.port))
            except BaseException:
                sock.close()
                raise
    except OSError as exc:
        raise _context(exc, f"cannot bind {local}", local.path) from exc
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 1 << 22)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, 1 << 22)
    return sock


class PeerFilter:
    """Tells datagrams from the configured dgram peer from everybody else's.

    A unix peer is known by its bound path (the same path, or one naming the same socket
    file: QEMU may have been given it relative to another directory); a UDP peer by its
    address and port, the host name resolved once.
    """

    def __init__(self, remote: Address, udp_peer: tuple[str, int] | None = None) -> None:
        self.remote = remote
        self._udp_peer = udp_peer
        self._known: set[object] = set()

    @classmethod
    async def resolve(cls, remote: Address) -> PeerFilter:
        if remote.kind != "udp":
            return cls(remote)
        infos = await trio.socket.getaddrinfo(
            remote.host, remote.port, _socket.AF_INET, _socket.SOCK_DGRAM
        )
        ip = str(infos[0][4][0]) if infos else remote.host
        return cls(remote, (ip, remote.port))

    def accepts(self, sender: object) -> bool:
        if sender in self._known:
            return True
        if self.remote.kind == "udp":
            ok = isinstance(sender, tuple) and tuple(sender[:2]) == self._udp_peer
        else:
            ok = isinstance(sender, str) and bool(sender) and (
                sender == self.remote.path or _same_file(sender, self.remote.path)
            )
        if ok and len(self._known) < 4:
            self._known.add(sender)
        return ok


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


async def run_dgram(
    sock: trio.socket.SocketType,
    remote: Address,
    inbox: trio.MemorySendChannel[Event],
    port: GuestPort,
    peer: PeerFilter | None = None,
) -> None:
    """One frame per datagram, both ways (QEMU ``-netdev dgram``). Datagrams from anybody but
    ``remote`` (``peer``: its filter, made here if not given) are dropped and counted
    (``GuestPort.foreign``)."""
    target: str | tuple[str, int] = remote.path if remote.kind == "unix" else (
        remote.host,
        remote.port,
    )
    if peer is None:
        peer = await PeerFilter.resolve(remote)
    port.attach()
    await inbox.send(GuestLink(True))

    async def writer() -> None:
        warned = False
        while True:
            await port.wait()
            for frame in port.take_batch(_WRITE_BATCH_BYTES):
                try:
                    await sock.sendto(frame, target)
                    port.sent += 1
                except OSError as exc:
                    # QEMU not there (yet): the frame is lost, as on a cable with no peer.
                    port.dropped += 1
                    if not warned and exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                        log.warning("dgram peer %s not reachable: %s", remote, exc)
                        warned = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        while True:
            data, sender = await sock.recvfrom(1 << 17)
            if not peer.accepts(sender):
                if not port.foreign:
                    log.warning("dgram: dropping datagrams from %r (not the peer %s)",
                                sender, remote)
                else:
                    log.debug("dgram: dropping a datagram from %r", sender)
                port.foreign += 1
                continue
            if data:
                await inbox.send(GuestFrame(data))

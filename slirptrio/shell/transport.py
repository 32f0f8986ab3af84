"""Transports to QEMU: ``-netdev stream``/``socket`` framing and ``-netdev dgram`` datagrams.

A transport turns the guest's byte stream or datagrams into :class:`GuestFrames` events on the
inbox (whatever one read brings, as one run of frames), and writes the core's frames back.
Frames toward the guest go through :class:`GuestPort`, a bounded queue that never blocks the
door: when the guest is not draining (QEMU's NIC queue is full, or no guest is attached) frames
past the bound are dropped and counted, as libslirp's ``send_packet`` contract allows ("TCP will
then handle retransmissions").

QEMU's stream server and client accept one peer at a time; so does ``--connect``. ``--listen``
takes several at once (issue 22): the first is port 0, the single guest of old, every other
connection a switch port of its own (:class:`~slirptrio.core.events.PortFrames`), each with its
own bounded queue; a port whose QEMU stops reading while frames keep coming is dropped once
``STALL_FRAMES`` frames in a row found its queue full, so it never holds the others back.
When the guest goes away the stack keeps its state and the transport waits for (listen) or
retries (connect) the next one.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import socket as _socket
import stat
from collections.abc import Callable

import trio

from slirptrio.core.events import Event, GuestFrames, GuestLink, PortFrames, PortLink
from slirptrio.core.switch import MAX_PORTS
from slirptrio.shell.descriptors import AcceptLoop, Spare
from slirptrio.shell.inbox import Inbox
from slirptrio.shell.nbio import TryFirst
from slirptrio.syntax.address import Address as Address
from slirptrio.syntax.errors import AddressError as AddressError
from slirptrio.wire import MalformedFrame
from slirptrio.wire.fast import frames_end
from slirptrio.wire.framing import MAX_FRAME, frame_spans, split_run

log = logging.getLogger("slirptrio.transport")

_RECV_SIZE = 1 << 18
_WRITE_BATCH_BYTES = 1 << 20
_IOV_MAX = 1024
_DGRAM_BURST = 64  # datagrams gathered into one run at most
STALL_FRAMES = 4096
"""Frames in a row dropped at a full queue after which a switch port's connection is closed
(its QEMU stopped reading)."""


class GuestPort:
    """Frames on their way to the guest: bounded in items and in bytes (``max_bytes``, from the
    ``mem-budget`` option), never blocking the producer.

    Items are single frames (:meth:`put`) or runs (:meth:`put_run`: length-prefixed frames,
    which is the stream transport's own framing). On a stream socket the door loop writes each
    burst's items itself (:meth:`kick`: one non-blocking ``writev`` of the items as they are,
    no join, no task switch); the writer task only finishes what the socket did not take at
    once. Other transports always go through their writer task. ``dropped`` counts frames.
    """

    def __init__(self, max_frames: int = 8192, max_bytes: int = 32 << 20) -> None:
        # (data, raw): raw data is stream bytes (a run, or what is left of a partial write)
        self._queue: collections.deque[tuple[bytes | memoryview, bool]] = collections.deque()
        self._max = self.max_frames = max_frames
        self._max_bytes = self.max_bytes = max_bytes
        self.queued_bytes = 0
        self._wakeup = trio.Event()
        self.attached = False
        self.dropped = 0
        self.sent = 0  # bytes handed to the transport
        self.foreign = 0  # datagrams from a sender other than the dgram transport's peer
        self.own = 0  # our own frames a multicast bus looped back to us
        self.direct_fd = -1  # a stream socket the door loop and the writer write to directly
        # a datagram socket and its peer, written to directly (a frame per datagram)
        self.dgram: tuple[_socket.socket, str | tuple[str, int]] | None = None
        self.dgram_errors: list[OSError] = []  # sends that failed (the writer task logs them)
        self.stalled = 0  # frames dropped at a full queue since the guest last took any
        self.on_stall: trio.CancelScope | None = None  # cancelled past STALL_FRAMES (ports >= 1)

    def put(self, frame: bytes) -> None:
        """Queue one frame."""
        self.put_run(frame, False)

    def put_run(self, data: bytes, raw: bool = True) -> None:
        """Queue the frames of a run (whole runs are queued or dropped); ``raw=False``: one
        frame, as :meth:`put`."""
        if (
            not self.attached
            or len(self._queue) >= self._max
            or self.queued_bytes + len(data) > self._max_bytes
        ):
            n = len(split_run(data)) if raw else 1
            self.dropped += n
            if self.attached and self.on_stall is not None:
                self.stalled += n
                if self.stalled >= STALL_FRAMES:
                    self.on_stall.cancel()
            return
        self._queue.append((data, raw))
        self.queued_bytes += len(data)
        if self.direct_fd < 0 and self.dgram is None:
            self._wakeup.set()

    def kick(self) -> None:
        """Write what is queued straight to the socket (stream transports), else wake the
        writer task."""
        if not self._queue:
            return
        if self.direct_fd >= 0:
            # A broken socket: the writer task meets the error again and reports it.
            # (try/except: suppress() costs three calls, and this runs after every burst)
            try:  # noqa: SIM105
                self.write_some()
            except OSError:
                pass
            if not self._queue:
                return
        elif self.dgram is not None:
            self.send_datagrams()
            if not self._queue and not self.dgram_errors:
                return
        self._wakeup.set()

    def send_datagrams(self) -> bool:
        """Send queued frames, one datagram each, without waiting; False when the socket is
        full (the rest stays queued). A frame the peer cannot take (not there yet) is lost
        and counted, as on a cable with no peer."""
        assert self.dgram is not None
        sock, target = self.dgram
        q = self._queue
        while q:
            data, raw = q[0]
            if raw:
                mv = memoryview(data)
                for start, end in frame_spans(mv):
                    if end > start and not self._send_datagram(sock, mv[start:end], target):
                        off = start - 4
                        q[0] = (mv[off:], True)  # what is left of a run is a run too
                        self.queued_bytes -= off
                        return False
            elif not self._send_datagram(sock, data, target):
                return False
            q.popleft()
            self.queued_bytes -= len(data)
        return True

    def _send_datagram(
        self, sock: _socket.socket, frame: bytes | memoryview, target: str | tuple[str, int]
    ) -> bool:
        try:
            sock.sendto(frame, target)
        except BlockingIOError:
            return False
        except OSError as exc:
            self.dropped += 1
            if len(self.dgram_errors) < 8:
                self.dgram_errors.append(exc)
            return True
        self.sent += len(frame)
        return True

    def write_some(self) -> int:
        """One non-blocking ``writev`` of queued items to ``direct_fd``; returns the bytes
        written (0 when the socket is full). Raises OSError when the socket is broken."""
        iov: list[bytes | memoryview] = []
        size = items = 0
        for data, raw in self._queue:
            items += 1
            if not raw:
                iov.append(len(data).to_bytes(4, "big"))
                size += 4
            iov.append(data)
            size += len(data)
            if len(iov) >= _IOV_MAX - 1 or size >= _WRITE_BATCH_BYTES:
                break
        try:
            n = os.writev(self.direct_fd, iov)
        except BlockingIOError:
            return 0
        self.sent += n
        if n == size and items == len(self._queue):  # all of it: the common case
            self._queue.clear()
            self.queued_bytes = 0
            self.stalled = 0
        else:
            self._consume(n)
        return n

    def _consume(self, n: int) -> None:
        self.stalled = 0
        q = self._queue
        while n:
            data, raw = q[0]
            wire = len(data) if raw else len(data) + 4
            if n < wire:
                # What is left goes out as raw stream bytes.
                rest = memoryview(data if raw else len(data).to_bytes(4, "big") + data)[n:]
                q[0] = (rest, True)
                self.queued_bytes -= len(data) - len(rest)
                return
            q.popleft()
            self.queued_bytes -= len(data)
            n -= wire

    def take_stream(self, max_bytes: int) -> bytes:
        """Queued items as stream bytes (length-prefixed frames), about ``max_bytes``."""
        parts: list[bytes | memoryview] = []
        size = 0
        q = self._queue
        self.stalled = 0
        while q and size < max_bytes:
            data, raw = q.popleft()
            self.queued_bytes -= len(data)
            if not raw:
                parts.append(len(data).to_bytes(4, "big"))
            parts.append(data)
            size += len(data)
        self.sent += size
        return b"".join(parts)

    def take_batch(self, max_bytes: int) -> list[bytes | memoryview]:
        """Queued frames (runs taken apart), about ``max_bytes`` of them."""
        batch: list[bytes | memoryview] = []
        size = 0
        q = self._queue
        while q and size < max_bytes:
            data, raw = q.popleft()
            self.queued_bytes -= len(data)
            if raw:
                batch.extend(split_run(data))
            else:
                batch.append(data)
            size += len(data)
        return batch

    async def wait(self) -> None:
        while not self._queue:
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def wait_dgram(self) -> None:
        while not self._queue and not self.dgram_errors:
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def attach(self, direct_fd: int = -1) -> None:
        self._queue.clear()
        self.queued_bytes = 0
        self.direct_fd = direct_fd
        self.attached = True

    def detach(self) -> None:
        self.attached = False
        self.direct_fd = -1
        self.dgram = None
        self.dropped += sum(len(split_run(d)) if raw else 1 for d, raw in self._queue)
        self._queue.clear()
        self.queued_bytes = 0


async def _stream_writer(
    stream: trio.abc.SendStream, port: GuestPort, peer: str, done: trio.CancelScope
) -> None:
    try:
        while True:
            await port.wait()
            if port.direct_fd >= 0:
                await trio.lowlevel.wait_writable(port.direct_fd)
                port.write_some()
            else:
                await stream.send_all(port.take_stream(_WRITE_BATCH_BYTES))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.info("guest connection %s lost while writing: %s", peer, exc)
        done.cancel()


class _RunReader:
    """Reads a stream into a reusable buffer and cuts it after the last whole frame.

    Each :meth:`receive` returns the whole frames received so far as one run (one copy out of
    the buffer; what follows stays for the next call). A length field past ``MAX_FRAME`` means
    the stream is out of sync: the frames before it are returned first, then
    :class:`MalformedFrame` ("oversized_frame") is raised.
    """

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._sock = TryFirst(stream.socket) if isinstance(stream, trio.SocketStream) else None
        self._buf = bytearray(_RECV_SIZE + MAX_FRAME + 4)
        self._have = 0
        self._oversized = 0

    async def receive(self) -> bytes | None:
        """The next run of whole frames (possibly empty); None at the end of the stream."""
        if self._oversized:
            raise MalformedFrame("oversized_frame", f"length {self._oversized} > {MAX_FRAME}")
        buf, have = self._buf, self._have
        room = len(buf) - have
        if self._sock is not None:
            with memoryview(buf) as mv:
                n = await self._sock.recv_into(mv[have:])
        else:
            data = await self._stream.receive_some(room)
            n = len(data)
            buf[have : have + n] = data
        if not n:
            return None
        have += n
        end, _count, self._oversized = frames_end(buf, have, MAX_FRAME)
        if end:
            with memoryview(buf) as mv:
                run = bytes(mv[:end])  # one copy (bytes(buf[:end]) made two)
            buf[: have - end] = buf[end:have]  # same size: the buffer is never reallocated
            have -= end
        else:
            run = b""
        self._have = have
        return run


async def serve_stream(
    stream: trio.abc.Stream, inbox: Inbox, port: GuestPort, peer: str, number: int = 0
) -> None:
    """Carry frames between one connected QEMU stream peer and the stack until it goes away.

    Everything one read brings in goes to the door as one :class:`GuestFrames` run (switch
    port ``number`` > 0: :class:`PortFrames`; such a port is also dropped when its guest stops
    reading, see ``STALL_FRAMES``).
    """
    reader = _RunReader(stream)
    port.attach(stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1)
    log.info("guest attached: %s%s", peer, f" (port {number})" if number else "")
    link: Event = PortLink(number, True, peer) if number else GuestLink(True)
    await inbox.send(link)
    try:
        async with trio.open_nursery() as nursery:
            if number:
                port.on_stall = nursery.cancel_scope
            nursery.start_soon(_stream_writer, stream, port, peer, nursery.cancel_scope)
            try:
                while True:
                    run = await reader.receive()
                    if run is None:
                        log.info("guest closed the connection: %s", peer)
                        break
                    if run:
                        # No checkpoint when there is room: the door loop takes a burst.
                        event = PortFrames(number, run) if number else GuestFrames(run)
                        try:
                            inbox.send_nowait(event)
                        except trio.WouldBlock:
                            await inbox.send(event)
            except MalformedFrame as exc:
                log.error("dropping guest connection %s: %s", peer, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.info("guest connection %s lost: %s", peer, exc)
            nursery.cancel_scope.cancel()
        if port.stalled >= STALL_FRAMES:
            log.warning("dropping guest port %d (%s): it stopped reading", number, peer)
    finally:
        port.detach()
        port.on_stall = None
        port.stalled = 0
        with trio.CancelScope(shield=True):
            await stream.aclose()
            await inbox.send(PortLink(number, False, peer) if number else GuestLink(False))


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


def claim_port(ports: dict[int, GuestPort], template: GuestPort) -> tuple[int, GuestPort] | None:
    """The lowest free switch port number >= 1 and a queue for it (an eighth of
    ``template``'s bounds, port 0's: :data:`MAX_PORTS` of them hold at most 8 times port 0's
    bytes), registered in ``ports``; None when :data:`MAX_PORTS` are in use."""
    for n in range(1, MAX_PORTS):
        if n not in ports:
            gp = ports[n] = GuestPort(max(64, template.max_frames // 8),
                                      max(1 << 20, template.max_bytes // 8))
            return n, gp
    return None


async def run_listen(
    listener: trio.SocketListener,
    inbox: Inbox,
    port: GuestPort,
    ports: dict[int, GuestPort] | None = None,
) -> None:
    """Accept QEMU stream clients: the first is port 0 (``port``); while it is attached,
    others become switch ports 1, 2, ... (registered in ``ports``; None: refused, one guest
    at a time).

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

        async def handle_port(stream: trio.SocketStream, n: int, gp: GuestPort) -> None:
            assert ports is not None
            try:
                await serve_stream(stream, inbox, gp, _peer_name(stream), n)
            finally:
                ports.pop(n, None)

        try:
            while True:
                conn, _addr = await acceptor.accept()
                stream = trio.SocketStream(conn)
                if not busy:
                    busy = True
                    nursery.start_soon(handle, stream)
                    continue
                claimed = claim_port(ports, port) if ports is not None else None
                if claimed is None:
                    log.warning("refusing a guest connection: no free switch port")
                    await stream.aclose()
                    continue
                nursery.start_soon(handle_port, stream, *claimed)
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
    addr: Address, inbox: Inbox, port: GuestPort, retry_s: float = 0.5
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


class AnySender(PeerFilter):
    """Every member of a multicast bus is a peer (they all send from the bus's port)."""

    def accepts(self, sender: object) -> bool:
        return True


def parse_mcast(text: str) -> tuple[str, int]:
    """``GROUP:PORT`` (an IPv4 multicast group, as QEMU's ``socket,mcast=``); raises
    :class:`AddressError`."""
    import ipaddress

    group, sep, port = text.rpartition(":")
    try:
        addr = ipaddress.IPv4Address(group)
    except ValueError:
        addr = None
    if not sep or addr is None or not addr.is_multicast:
        raise AddressError(f"{text!r}: expected GROUP:PORT with an IPv4 multicast group")
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise AddressError(f"{text!r}: bad port")
    return group, int(port)


async def open_mcast(group: str, port: int) -> trio.socket.SocketType:
    """Join QEMU's multicast frame bus ``group``:``port`` on loopback only: membership on
    127.0.0.1, sent from the loopback interface with TTL 0 (never past this host), looped
    back so that the other members on this host hear us (and we hear ourselves: see
    :func:`run_dgram`'s ``own``)."""
    sock = trio.socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        await sock.bind((group, port))
        lo = _socket.inet_aton("127.0.0.1")
        sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_ADD_MEMBERSHIP,
                        _socket.inet_aton(group) + lo)
        sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_IF, lo)
        sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_TTL, 0)
        sock.setsockopt(_socket.IPPROTO_IP, _socket.IP_MULTICAST_LOOP, 1)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 1 << 22)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot join the multicast bus {group}:{port}: "
                      f"{exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def run_dgram(
    sock: trio.socket.SocketType,
    remote: Address,
    inbox: Inbox,
    port: GuestPort,
    peer: PeerFilter | None = None,
    own: Callable[[bytes], bool] | None = None,
) -> None:
    """One frame per datagram, both ways (QEMU ``-netdev dgram``). Datagrams from anybody but
    ``remote`` (``peer``: its filter, made here if not given) are dropped and counted
    (``GuestPort.foreign``).

    The datagrams waiting when the socket becomes readable (up to 64, or about 320 KiB) are
    read without blocking straight into one buffer, with length prefixes, and go to the door as
    one :class:`GuestFrames` run. ``own(src_mac)``: a frame from that MAC is one we sent
    (a multicast bus loops it back) and is left out, counted as ``GuestPort.own``.
    """
    target: str | tuple[str, int] = remote.path if remote.kind == "unix" else (
        remote.host,
        remote.port,
    )
    if peer is None:
        peer = await PeerFilter.resolve(remote)
    port.attach()
    await inbox.send(GuestLink(True))

    # A plain socket on a duplicate of the descriptor: non-blocking reads and writes without
    # trio's wrappers, straight from and into runs. The door loop sends each burst's frames
    # itself (GuestPort.kick); the writer task only finishes what a full socket left.
    raw = _socket.socket(fileno=os.dup(sock.fileno()))
    port.dgram = (raw, target)

    async def writer() -> None:
        warned = False
        while True:
            await port.wait_dgram()
            for exc in port.dgram_errors:
                # QEMU not there (yet): those frames were lost, as on a cable with no peer.
                if not warned and exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                    log.warning("dgram peer %s not reachable: %s", remote, exc)
                    warned = True
            port.dgram_errors.clear()
            if not port.send_datagrams():
                await trio.lowlevel.wait_writable(sock)
            await trio.lowlevel.checkpoint()
    slot = MAX_FRAME + 1  # a longer datagram would be cut: it shows as oversized
    buf = bytearray(_DGRAM_BURST * 4096 + slot + 4)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            while True:
                await trio.lowlevel.wait_readable(sock)
                pos = count = 0
                with memoryview(buf) as mv:
                    while count < _DGRAM_BURST and len(buf) - pos >= slot + 4:
                        try:
                            n, sender = raw.recvfrom_into(mv[pos + 4 : pos + 4 + slot], slot)
                        except (BlockingIOError, InterruptedError):
                            break
                        count += 1
                        if not peer.accepts(sender):
                            if not port.foreign:
                                log.warning("dgram: dropping datagrams from %r (not the peer %s)",
                                            sender, remote)
                            else:
                                log.debug("dgram: dropping a datagram from %r", sender)
                            port.foreign += 1
                            continue
                        if not n or n > MAX_FRAME:
                            continue  # QEMU sends neither empty nor oversized frames
                        if own is not None and n >= 12 and own(bytes(mv[pos + 10 : pos + 16])):
                            port.own += 1
                            continue
                        mv[pos : pos + 4] = n.to_bytes(4, "big")
                        pos += 4 + n
                    run = bytes(mv[:pos])
                if run:
                    await inbox.send(GuestFrames(run))
    finally:
        port.dgram = None
        raw.close()

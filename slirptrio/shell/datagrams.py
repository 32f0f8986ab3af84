"""Host-side UDP and ICMP sockets, one supervised task group per flow, and the DNS upstreams.

The core decides; this module does what its effects say and reports what the sockets did:

* ``UdpOpen`` creates a UDP socket connected to the flow's destination, with IP_RECVERR on,
  and starts the flow's tasks. ``UdpSend`` sends at once (non-blocking); a full socket buffer
  queues the datagram (bounded, then dropped and counted) for the flow's writer. Every datagram
  read becomes ``UdpReceived``; every entry of the socket's error queue (MSG_ERRQUEUE: ICMP
  errors such as port unreachable, with the kernel's ``sock_extended_err``) becomes
  ``UdpError``; a send that fails becomes ``UdpError`` with origin 0 and the errno.
* ``IcmpEchoOpen`` opens an unprivileged ping socket (SOCK_DGRAM, IPPROTO_ICMP or, for an IPv6
  destination, IPPROTO_ICMPV6; both allowed by ``net.ipv4.ping_group_range``) or, failing
  that, a raw socket (root or CAP_NET_RAW), connected to the destination. Echo replies become
  ``IcmpEchoReply`` (seq, data; a raw socket also checks the id), errors ``IcmpEchoError``;
  when neither socket kind may be opened the flow reports ``IcmpUnavailable`` and ends.
* ``UdpClose`` / ``IcmpEchoClose`` cancel the flow's task group and close its socket.
* The DNS upstream list — ``--dns-upstream`` values, or else the first ``nameserver`` of
  ``/etc/resolv.conf`` (127.0.0.1 when there is none, as libslirp), its signature (mtime, size,
  inode) checked once a second and the list re-reported when it changes — is reported as
  ``DnsUpstreams`` so that replay sees the same list.

A failing flow never disturbs another: every task's exceptions end at its group, turning into
an error event and a log line.
"""

from __future__ import annotations

import collections
import errno as _errno
import ipaddress
import logging
import os
import socket as _socket
import struct
from collections.abc import Callable
from typing import Any

import trio

from slirptrio.core.dns import format_upstreams
from slirptrio.core.events import (
    DnsUpstreams,
    Event,
    IcmpEchoClose,
    IcmpEchoError,
    IcmpEchoOpen,
    IcmpEchoReply,
    IcmpEchoSend,
    IcmpUnavailable,
    UdpClose,
    UdpError,
    UdpOpen,
    UdpReceived,
    UdpSend,
)
from slirptrio.shell.descriptors import exhausted
from slirptrio.shell.inbox import Inbox
from slirptrio.syntax.address import parse_upstream
from slirptrio.wire import icmp as wicmp

log = logging.getLogger("slirptrio.datagrams")

RESOLV_CONF = "/etc/resolv.conf"
RESOLV_CHECK_S = 1.0
FALLBACK_UPSTREAM = ("127.0.0.1", 53)

IP_RECVERR = getattr(_socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(_socket, "IPV6_RECVERR", 25)
MSG_ERRQUEUE = getattr(_socket, "MSG_ERRQUEUE", 0x2000)
SOL_IP = getattr(_socket, "SOL_IP", 0)
SOL_IPV6 = getattr(_socket, "SOL_IPV6", 41)
SOL_RAW = 255
ICMP_FILTER = 1
_IPPROTO_ICMPV6 = getattr(_socket, "IPPROTO_ICMPV6", 58)
ICMP6_FILTER = 1
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
# struct icmp6_filter: a bit set per type blocks it; all blocked but echo reply (129).
_ICMP6_ONLY_ECHO_REPLY = bytes(
    0xFF if i != ICMP6_ECHO_REPLY // 8 else 0xFF ^ (1 << (ICMP6_ECHO_REPLY % 8)) for i in range(32)
)

_EXTENDED_ERR = struct.Struct("=IBBBBII")
_SOCKADDR_FAMILY = struct.Struct("=H")
_CMSG_SPACE = _socket.CMSG_SPACE(_EXTENDED_ERR.size + 128)
_ECHO = struct.Struct(">BBHHH")
_RECV_MAX = 65536 + 64
_ERRQUEUE_DATA = 512
_BATCH = 64
_MAX_BACKLOG = 256
# Errors a recv()/send() returns for an ICMP error already waiting in the error queue.
_QUEUED_ERRNOS = frozenset(
    {_errno.ECONNREFUSED, _errno.EHOSTUNREACH, _errno.ENETUNREACH, _errno.EMSGSIZE}
)
_DENIED = frozenset({_errno.EACCES, _errno.EPERM})
_NO_PING = _DENIED | {_errno.EPROTONOSUPPORT, _errno.ESOCKTNOSUPPORT, _errno.EAFNOSUPPORT}


def parse_recverr(ancdata: list[tuple[int, int, bytes]]) -> tuple[int, int, int, int, int, str]:
    """(errno, origin, type, code, info, offender) from an error-queue message's ancillary
    data; ``offender`` is "" when the kernel gave none. ValueError if there is no such item."""
    for level, kind, data in ancdata:
        if (level, kind) not in ((SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)):
            continue
        if len(data) < _EXTENDED_ERR.size:
            break
        err, origin, type_, code, _pad, info, _data = _EXTENDED_ERR.unpack_from(data)
        return err, origin, type_, code, info, _offender(data[_EXTENDED_ERR.size :])
    raise ValueError("no IP_RECVERR item")


def _offender(sa: bytes) -> str:
    if len(sa) < 2:
        return ""
    (family,) = _SOCKADDR_FAMILY.unpack_from(sa)
    if family == _socket.AF_INET and len(sa) >= 8:
        return _socket.inet_ntop(_socket.AF_INET, sa[4:8])
    if family == _socket.AF_INET6 and len(sa) >= 24:
        return _socket.inet_ntop(_socket.AF_INET6, sa[8:24])
    return ""


def read_resolv_conf(path: str = RESOLV_CONF) -> list[tuple[str, int]]:
    """The first usable ``nameserver`` of a resolv.conf, or 127.0.0.1 (libslirp's fallback).

    Raises:
      OSError: out of file descriptors (EMFILE and the like): the file says nothing then.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        return [parse_upstream(words[1])]
                    except ValueError:
                        log.warning("%s: ignoring nameserver %r", path, words[1])
    except OSError as exc:
        if exhausted(exc):
            raise
        log.warning("cannot read %s: %s; using %s", path, exc, FALLBACK_UPSTREAM[0])
    return [FALLBACK_UPSTREAM]


def _file_signature(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class _Unavailable(Exception):
    def __init__(self, errno: int) -> None:
        super().__init__(errno)
        self.errno = errno


class _Flow:
    __slots__ = (
        "backlog",
        "errors",
        "flow",
        "icmp",
        "ident",
        "open_errno",
        "raw",
        "scope",
        "sock",
        "v6",
        "wake",
    )

    def __init__(self, flow: int, icmp: bool) -> None:
        self.flow = flow
        self.icmp = icmp
        self.raw = False
        self.v6 = False
        self.ident = -1
        self.scope = trio.CancelScope()
        self.sock: _socket.socket | None = None
        self.open_errno = 0
        self.backlog: collections.deque[bytes] = collections.deque()
        self.errors: collections.deque[int] = collections.deque()
        self.wake = trio.Event()

    def poke(self) -> None:
        self.wake.set()

    def error_event(self, err: int) -> Event:
        if self.icmp:
            return IcmpEchoError(self.flow, err, 0, 0, 0, 0, "")
        return UdpError(self.flow, err, 0, 0, 0, 0, "")


class Datagrams:
    """Executes UDP and ICMP effects; start it with ``await nursery.start(datagrams.run)``.

    Args:
      inbox: where events go.
      dns_upstreams: fixed upstream resolvers (``--dns-upstream``); None: follow
        ``resolv_conf``.
      resolv_conf: the file to follow.
      resolv_check_s: how often its signature is checked.
    """

    def __init__(
        self,
        inbox: Inbox,
        *,
        dns_upstreams: list[tuple[str, int]] | None = None,
        resolv_conf: str = RESOLV_CONF,
        resolv_check_s: float = RESOLV_CHECK_S,
    ) -> None:
        self._inbox = inbox
        self._fixed = dns_upstreams
        self._resolv_conf = resolv_conf
        self._resolv_check_s = resolv_check_s
        self._flows: dict[int, _Flow] = {}
        self._nursery: trio.Nursery | None = None
        self._ping_denied = False
        self.failures = 0
        self.dropped = 0
        self.stale = 0

    def handlers(self) -> dict[type[Any], Callable[[Any], None]]:
        return {
            UdpOpen: self.udp_open,
            UdpSend: self.udp_send,
            UdpClose: self.close,
            IcmpEchoOpen: self.icmp_open,
            IcmpEchoSend: self.icmp_send,
            IcmpEchoClose: self.close,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ``await nursery.start(datagrams.run)`` returns once effects
        may be handled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_upstreams)
            task_status.started()
            await trio.sleep_forever()

    def __len__(self) -> int:
        return len(self._flows)

    # ------------------------------------------------------------------ effect handlers

    def udp_open(self, eff: UdpOpen) -> None:
        st = _Flow(eff.flow, icmp=False)
        try:
            _require_ip(eff.host)
            family = _socket.AF_INET6 if ":" in eff.host else _socket.AF_INET
            sock = _socket.socket(family, _socket.SOCK_DGRAM)
            try:
                if family == _socket.AF_INET6:
                    sock.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
                else:
                    sock.setsockopt(SOL_IP, IP_RECVERR, 1)
                sock.setblocking(False)
                sock.connect((eff.host, eff.port))
            except OSError:
                sock.close()
                raise
            st.sock = sock
        except OSError as exc:
            log.info("udp flow %d to %s:%d: %s", eff.flow, eff.host, eff.port, exc)
            st.open_errno = exc.errno or _errno.EIO
        self._start(st)

    def udp_send(self, eff: UdpSend) -> None:
        self._send(eff.flow, eff.data)

    def icmp_open(self, eff: IcmpEchoOpen) -> None:
        st = _Flow(eff.flow, icmp=True)
        st.v6 = ":" in eff.host
        try:
            st.sock, st.raw = self._icmp_socket(eff.host)
        except _Unavailable as exc:
            st.open_errno = exc.errno
            st.errors.append(-1)  # report IcmpUnavailable, then end
        except OSError as exc:
            log.info("icmp flow %d to %s: %s", eff.flow, eff.host, exc)
            st.open_errno = exc.errno or _errno.EIO
        self._start(st)

    def icmp_send(self, eff: IcmpEchoSend) -> None:
        st = self._flows.get(eff.flow)
        if st is not None:
            st.ident = eff.ident
        if st is not None and st.v6:
            # The kernel fills in the ICMPv6 checksum (it covers the pseudo-header).
            msg = struct.pack(">BBHHH", ICMP6_ECHO_REQUEST, 0, 0, eff.ident, eff.seq) + eff.data
        else:
            msg = wicmp.build_icmp(
                wicmp.ECHO_REQUEST, 0, struct.pack(">HH", eff.ident, eff.seq), eff.data
            )
        self._send(eff.flow, msg)

    def close(self, eff: UdpClose | IcmpEchoClose) -> None:
        st = self._flows.pop(eff.flow, None)
        if st is not None:
            st.scope.cancel()

    # ------------------------------------------------------------------------- sockets

    def _icmp_socket(self, host: str) -> tuple[_socket.socket, bool]:
        _require_ip(host)
        v6 = ":" in host
        family = _socket.AF_INET6 if v6 else _socket.AF_INET
        proto = _IPPROTO_ICMPV6 if v6 else _socket.IPPROTO_ICMP
        sock: _socket.socket | None = None
        raw = False
        if not self._ping_denied:
            try:
                sock = _socket.socket(family, _socket.SOCK_DGRAM, proto)
            except OSError as exc:
                if exc.errno not in _NO_PING:
                    raise
                self._ping_denied = True
                log.info("ping sockets not permitted (%s); trying raw sockets", exc)
        if sock is None:
            try:
                sock = _socket.socket(family, _socket.SOCK_RAW, proto)
            except OSError as exc:
                if exc.errno in _DENIED:
                    raise _Unavailable(exc.errno) from exc
                raise
            raw = True
        try:
            if raw and not v6:
                # Only echo replies: the raw socket would see every ICMP message otherwise.
                sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("=I", 0xFFFFFFFF ^ 1))
            if raw and v6:
                sock.setsockopt(_IPPROTO_ICMPV6, ICMP6_FILTER, _ICMP6_ONLY_ECHO_REPLY)
            if v6:
                sock.setsockopt(SOL_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(SOL_IP, IP_RECVERR, 1)
            sock.setblocking(False)
            sock.connect((host, 0))
        except OSError:
            sock.close()
            raise
        return sock, raw

    def _start(self, st: _Flow) -> None:
        assert self._nursery is not None, "Datagrams.run() is not running"
        old = self._flows.pop(st.flow, None)
        if old is not None:
            old.scope.cancel()
        self._flows[st.flow] = st
        if st.errors:
            st.poke()
        self._nursery.start_soon(self._flow_main, st)

    def _send(self, flow: int, data: bytes) -> None:
        st = self._flows.get(flow)
        if st is None:
            self.stale += 1
            return
        if st.sock is None:
            if st.open_errno and not st.errors:
                st.errors.append(st.open_errno)
                st.poke()
            return
        if st.backlog:
            self._queue(st, data)
            return
        for attempt in (0, 1):
            try:
                st.sock.send(data)
                return
            except BlockingIOError:
                self._queue(st, data)
                return
            except OSError as exc:
                # An ICMP error waiting in the error queue fails the next send once; that
                # error is reported from the queue, and the datagram deserves its own try.
                if exc.errno == _errno.ECONNREFUSED and attempt == 0:
                    continue
                st.errors.append(exc.errno or _errno.EIO)
                st.poke()
                return

    def _queue(self, st: _Flow, data: bytes) -> None:
        if len(st.backlog) >= _MAX_BACKLOG:
            self.dropped += 1
            return
        st.backlog.append(data)
        st.poke()

    # --------------------------------------------------------------------------- tasks

    async def _report(self, event: Event) -> None:
        await self._inbox.send(event)

    async def _flow_main(self, st: _Flow) -> None:
        try:
            with st.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, st, nursery)
                    if st.sock is not None:
                        nursery.start_soon(self._reader, st)
        except Exception as exc:
            self.failures += 1
            log.exception("datagram flow %d failed", st.flow)
            if self._flows.get(st.flow) is st:
                await self._report(st.error_event(_errno_of(exc)))
        finally:
            if st.sock is not None:
                trio.lowlevel.notify_closing(st.sock)
                st.sock.close()
            if self._flows.get(st.flow) is st:
                # Its tasks are gone: later effects for this flow are counted as stale.
                del self._flows[st.flow]

    async def _writer(self, st: _Flow, nursery: trio.Nursery) -> None:
        while True:
            while not st.errors and not st.backlog:
                st.wake = trio.Event()
                await st.wake.wait()
            while st.errors:
                err = st.errors.popleft()
                if err == -1:
                    await self._report(IcmpUnavailable(st.flow, st.open_errno))
                    self._flows.pop(st.flow, None)
                    nursery.cancel_scope.cancel()
                    return
                await self._report(st.error_event(err))
            if st.backlog and st.sock is not None:
                await trio.lowlevel.wait_writable(st.sock)
                retried = False
                while st.backlog:
                    try:
                        st.sock.send(st.backlog[0])
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        # As in _send: one retry after an error the error queue reports.
                        if exc.errno == _errno.ECONNREFUSED and not retried:
                            retried = True
                            continue
                        st.backlog.popleft()
                        await self._report(st.error_event(exc.errno or _errno.EIO))
                        continue
                    retried = False
                    st.backlog.popleft()

    async def _reader(self, st: _Flow) -> None:
        sock = st.sock
        assert sock is not None
        while True:
            await trio.lowlevel.wait_readable(sock)
            await self._drain_errors(st, sock)
            for _ in range(_BATCH):
                try:
                    data = sock.recv(_RECV_MAX)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _QUEUED_ERRNOS:
                        continue
                    raise
                if st.icmp:
                    event = self._echo_reply(st, data)
                    if event is None:
                        continue
                else:
                    event = UdpReceived(st.flow, data)
                await self._report(event)

    def _echo_reply(self, st: _Flow, data: bytes) -> Event | None:
        if st.raw and not st.v6:  # raw ICMPv6 sockets deliver no IP header
            if len(data) < 20:
                return None
            data = data[(data[0] & 0x0F) * 4 :]
        if len(data) < _ECHO.size:
            return None
        type_, code, _sum, ident, seq = _ECHO.unpack_from(data)
        want = ICMP6_ECHO_REPLY if st.v6 else wicmp.ECHO_REPLY
        if type_ != want or code != 0 or (st.raw and ident != st.ident):
            return None
        return IcmpEchoReply(st.flow, seq, data[_ECHO.size :])

    async def _drain_errors(self, st: _Flow, sock: _socket.socket) -> None:
        while True:
            try:
                _data, anc, _flags, _addr = sock.recvmsg(_ERRQUEUE_DATA, _CMSG_SPACE, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            try:
                err, origin, type_, code, info, offender = parse_recverr(anc)
            except ValueError:
                continue
            cls = IcmpEchoError if st.icmp else UdpError
            await self._report(cls(st.flow, err, origin, type_, code, info, offender))

    async def _watch_upstreams(self) -> None:
        if self._fixed is not None:
            await self._report(DnsUpstreams(format_upstreams(self._fixed)))
            return
        signature: tuple[int, ...] | bool | None = False
        text: str | None = None
        while True:
            now = _file_signature(self._resolv_conf)
            if now != signature:
                try:
                    new = format_upstreams(read_resolv_conf(self._resolv_conf))
                except OSError as exc:  # no descriptors now: keep the upstream, look again
                    log.info("cannot read %s now: %s", self._resolv_conf, exc)
                    await trio.sleep(self._resolv_check_s)
                    continue
                signature = now
                if new != text:
                    text = new
                    log.info("DNS upstream from %s: %s", self._resolv_conf, new)
                    await self._report(DnsUpstreams(new))
            await trio.sleep(self._resolv_check_s)


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            return _errno_of(inner)
    return _errno.EIO


def _require_ip(host: str) -> None:
    # A name here would mean a blocking resolver call inside the event loop.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise OSError(_errno.EINVAL, f"not an IP address: {host!r}") from None

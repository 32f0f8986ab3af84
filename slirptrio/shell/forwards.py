"""Port forwards: host listeners into the guest (hostfwd) and guest forwards (guestfwd).

Host forwards: each rule owns a listening socket (TCP, unix, or a bound UDP socket) and the task
that serves it, in a cancel scope of its own, so ``remove`` closes just that listener (existing
connections keep running, as QEMU's ``hostfwd_remove``). An accepted connection becomes a flow
of :class:`~slirptrio.shell.flows.TcpFlows` at once (``adopt``) and the core hears of it as
:class:`TcpInbound`; a UDP datagram becomes :class:`UdpInbound`, and the core's
:class:`UdpFwdSend` goes back out of the same socket. Adding or removing a rule is journaled as
:class:`HostFwdChange`.

Guest forwards: the core learns the address (:class:`GuestFwdAdd`) and answers the guest's
connections there with ``TcpConnect(flow, "guestfwd:FID", port)``; the flows module opens the
registered target instead of a socket.

Flows started here take ids from ``2**32`` up, a range the core never allocates.

A host listener never ends by itself: when accepting fails (no descriptors left: EMFILE) it
backs off and retries, and :meth:`Forwards.listeners` reports its state truthfully
(``"listening"`` or ``"backing-off: EMFILE"``). A rule without a host address listens on every
address of the host, as in QEMU; that is said in one log line, since it exposes the guest's
port to the network. A unix socket forward is created 0600, like every socket of the stack.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket as _socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from slirptrio.config import Config
from slirptrio.core.events import (
    GuestFwdAdd,
    GuestFwdRemove,
    HostFwdChange,
    TcpInbound,
    UdpFwdSend,
    UdpInbound,
)
from slirptrio.shell import flows as fl
from slirptrio.shell.descriptors import AcceptLoop
from slirptrio.shell.inbox import Inbox
from slirptrio.shell.pipe import PipeStream, pipe_pair
from slirptrio.shell.transport import bind_unix
from slirptrio.syntax.forward import (
    ForwardInfo,
    GuestFwd,
    HostFwd,
    RuleError,
    fwd_key,
    hostfwd_key,
    parse_guestfwd,
    parse_hostfwd,
)

log = logging.getLogger("slirptrio.forwards")

SHELL_FLOW_BASE = 1 << 32
_UDP_RECV = 65536


class ForwardError(Exception):
    """A forward that cannot be added or removed (the message says why)."""


@dataclass
class _HostRule:
    rule: HostFwd
    port: int
    scope: trio.CancelScope
    raw: _socket.socket | None = None  # UDP rules: replies go out here, without waiting
    static: bool = False  # from the option string
    acceptor: AcceptLoop | None = None  # TCP and unix rules

    @property
    def state(self) -> str:
        return self.acceptor.state if self.acceptor is not None else "listening"

    def info(self) -> dict[str, Any]:
        rule = self.rule
        return {
            "rule": rule.text,
            "proto": rule.proto,
            "addr": rule.path if rule.proto == "unix" else rule.host_addr or "0.0.0.0",
            "port": self.port,
            "state": self.state,
        }


class Forwards:
    """Runs the stack's forwards; ``await nursery.start(forwards.run)`` first."""

    def __init__(
        self, inbox: Inbox, tcp: fl.TcpFlows, config: Config
    ) -> None:
        self._inbox = inbox
        self._tcp = tcp
        self._config = config
        self._nursery: trio.Nursery | None = None
        self._flow_ids = itertools.count(SHELL_FLOW_BASE)
        self._peer_ports = itertools.count(0)
        self._fids = itertools.count(1)
        self._host: dict[str, _HostRule] = {}
        self._udp_by_fid: dict[int, _HostRule] = {}
        self._guest: dict[int, GuestFwd] = {}
        self._static_guest: set[int] = set()

    def handlers(self) -> dict[type[Any], Callable[[Any], None]]:
        return {UdpFwdSend: self._udp_send}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def next_flow(self) -> int:
        """A flow id from the shell's range."""
        return next(self._flow_ids)

    def pseudo_port(self) -> int:
        """A source port for in-process and unix peers (49152-65535, cycling)."""
        return 49152 + next(self._peer_ports) % 16384

    def _guest_ip(self, rule: HostFwd) -> str:
        return rule.guest_addr or str(self._config.dhcpstart)

    # ---------------------------------------------------------------------- host forwards

    def host_rules(self) -> dict[str, int]:
        """Active host forwards: rule text → bound host port (0 for unix)."""
        return {r.rule.text: r.port for r in self._host.values()}

    def listeners(self) -> list[dict[str, Any]]:
        """Every host forward's listener: ``rule``, ``proto``, bound ``addr`` and ``port``,
        and ``state`` (``"listening"``, or ``"backing-off: EMFILE"`` while it cannot accept)."""
        return [r.info() for r in self._host.values()]

    def describe(self) -> list[ForwardInfo]:
        """Every active forward: host forwards with their bound address and port, then
        guest forwards."""
        out = []
        for e in self._host.values():
            r = e.rule
            out.append(ForwardInfo(
                "hostfwd", r.proto, r.text,
                r.path if r.proto == "unix" else r.host_addr or "0.0.0.0",
                e.port, self._guest_ip(r), r.guest_port, static=e.static, state=e.state,
            ))
        for fid, g in self._guest.items():
            out.append(ForwardInfo(
                "guestfwd", "tcp", g.text, g.addr, g.port, "", 0, target=g.target,
                static=fid in self._static_guest, id=fid,
            ))
        return out

    async def add_hostfwd(self, text: str, *, static: bool = False) -> int:
        """Bind and serve one ``hostfwd`` rule; return the bound host port (0 for unix).
        ``static``: the rule comes from the option string (shown as such by ``info``)."""
        assert self._nursery is not None, "Forwards.run() is not running"
        try:
            rule = parse_hostfwd(text)
        except RuleError as exc:
            raise ForwardError(str(exc)) from None
        key = rule.key
        if rule.host_port and key in self._host:
            raise ForwardError(f"{key} is already forwarded")
        # An IPv6 host address binds IPv6 only ("[::]" is every IPv6 address, "" every IPv4
        # one, as QEMU), so the two can forward the same port side by side.
        family = _socket.AF_INET6 if ":" in rule.host_addr else _socket.AF_INET
        try:
            raw: _socket.socket | None = None
            if rule.proto == "udp":
                raw = _socket.socket(family, _socket.SOCK_DGRAM)
                sock = trio.socket.from_stdlib_socket(raw)
                if family == _socket.AF_INET6:
                    sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
                await sock.bind((rule.host_addr or "0.0.0.0", rule.host_port))
                port = int(sock.getsockname()[1])
            elif rule.proto == "tcp":
                sock = trio.socket.socket(family, _socket.SOCK_STREAM)
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
                if family == _socket.AF_INET6:
                    sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
                await sock.bind((rule.host_addr or "0.0.0.0", rule.host_port))
                if fl.LISTENER_OPTIONS_INHERITED:
                    fl.set_stream_options(sock)  # once here, not per accepted connection
                sock.listen(128)
                port = int(sock.getsockname()[1])
            else:
                sock = await bind_unix(rule.path, _socket.SOCK_STREAM)
                sock.listen(128)
                port = 0
        except OSError as exc:
            raise ForwardError(f"cannot bind {key}: {exc.strerror or exc}") from None
        if rule.proto != "unix" and rule.host_addr in ("", "0.0.0.0", "::"):
            log.warning(
                "hostfwd %s: listening on every address of this host, so other machines can "
                "reach the guest's port %d (give %s as the host address to keep it local)",
                text, rule.guest_port, "[::1]" if rule.host_addr == "::" else "127.0.0.1",
            )
        key = fwd_key(rule.proto, rule.host_addr, port) if rule.proto != "unix" else key
        entry = _HostRule(rule, port, trio.CancelScope(), static=static)
        self._host[key] = entry
        if rule.proto == "udp":
            fid = next(self._fids)
            entry.raw = raw
            self._udp_by_fid[fid] = entry
            self._nursery.start_soon(self._serve_udp, entry, sock, fid)
        else:
            entry.acceptor = AcceptLoop(sock, f"hostfwd {text}")
            self._nursery.start_soon(self._serve_stream, entry, sock)
        await self._inbox.send(HostFwdChange(text, port, True))
        log.info("hostfwd %s: listening on %s", text, key)
        return port

    async def remove_hostfwd(self, text: str) -> None:
        """Close the listener of the forward named by ``text`` (a key or the whole rule)."""
        try:
            key = hostfwd_key(text)
        except RuleError as exc:
            raise ForwardError(str(exc)) from None
        entry = self._host.pop(key, None)
        if entry is None:
            raise ForwardError(f"no host forward {key}")
        entry.scope.cancel()
        for fid, e in list(self._udp_by_fid.items()):
            if e is entry:
                del self._udp_by_fid[fid]
        await self._inbox.send(HostFwdChange(entry.rule.text, entry.port, False))

    async def _serve_stream(self, entry: _HostRule, sock: trio.socket.SocketType) -> None:
        rule = entry.rule
        acceptor = entry.acceptor
        assert acceptor is not None
        with entry.scope, sock:
            try:
                while True:
                    conn, addr = await acceptor.accept()
                    if rule.proto == "tcp":
                        peer_ip, peer_port = addr[0], addr[1]
                    else:
                        peer_ip, peer_port = "127.0.0.1", self.pseudo_port()
                    flow = self.next_flow()
                    self._tcp.adopt(flow, fl.SocketEnd(conn, fl.LISTENER_OPTIONS_INHERITED))
                    await self._inbox.send(
                        TcpInbound(flow, self._guest_ip(rule), rule.guest_port, peer_ip, peer_port)
                    )
            except OSError as exc:  # the socket itself is broken (EBADF and the like)
                log.error("hostfwd %s: listener failed: %s", rule.text, exc)
                acceptor.state = f"failed: {exc.strerror or exc}"
            finally:
                if rule.proto == "unix":
                    with contextlib.suppress(OSError):
                        os.unlink(rule.path)

    async def _serve_udp(self, entry: _HostRule, sock: trio.socket.SocketType, fid: int) -> None:
        rule = entry.rule
        with entry.scope, sock:
            while True:
                try:
                    data, addr = await sock.recvfrom(_UDP_RECV)
                except OSError as exc:
                    # ICMP errors from earlier sends surface here; they end nothing.
                    log.debug("hostfwd %s: %s", rule.text, exc)
                    continue
                await self._inbox.send(
                    UdpInbound(fid, self._guest_ip(rule), rule.guest_port, addr[0], addr[1], data)
                )

    def _udp_send(self, eff: UdpFwdSend) -> None:
        entry = self._udp_by_fid.get(eff.fid)
        if entry is None or entry.raw is None:
            return
        try:
            entry.raw.sendto(eff.data, (eff.peer_ip, eff.peer_port))
        except OSError as exc:  # a full buffer drops the datagram, as UDP may
            log.debug("hostfwd %s: send to %s:%d failed: %s", entry.rule.text, eff.peer_ip,
                      eff.peer_port, exc)

    # --------------------------------------------------------------------- guest forwards

    async def add_guestfwd(
        self,
        text: str,
        opener: Callable[[], Awaitable[fl.HostEnd]] | None = None,
        *,
        static: bool = False,
    ) -> int:
        """Serve guest connections to a ``guestfwd`` rule's address; return its id.

        ``opener`` replaces the rule's device (used for in-process handlers, whose rule text
        is ``ADDR:PORT-handler``).
        """
        if opener is None:
            try:
                rule = parse_guestfwd(text)
            except RuleError as exc:
                raise ForwardError(str(exc)) from None
            opener = _device_opener(rule.target)
        else:
            addr, _, port = text.partition("-")[0].rpartition(":")
            rule = GuestFwd(addr.strip("[]"), int(port), "handler", text)
        fid = next(self._fids)
        self._guest[fid] = rule
        if static:
            self._static_guest.add(fid)
        self._tcp.register_target(f"guestfwd:{fid}", opener)
        await self._inbox.send(GuestFwdAdd(fid, rule.addr, rule.port))
        return fid

    async def remove_guestfwd(self, fid: int) -> None:
        """Stop serving guest forward ``fid`` (its open connections go on)."""
        if self._guest.pop(fid, None) is None:
            raise ForwardError(f"no guest forward {fid}")
        self._static_guest.discard(fid)
        self._tcp.unregister_target(f"guestfwd:{fid}")
        await self._inbox.send(GuestFwdRemove(fid))

    def handler_opener(
        self, handler: Callable[[PipeStream], Awaitable[None]]
    ) -> Callable[[], Awaitable[fl.HostEnd]]:
        """An opener that runs ``handler`` in-process for each guest connection."""
        assert self._nursery is not None, "Forwards.run() is not running"
        return fl.handler_opener(self._nursery, handler)

    async def connect_to_guest(self, flow: int, guest_ip: str, port: int) -> PipeStream:
        """Start in-process connection ``flow`` (from :meth:`next_flow`) into the guest;
        return the application's end of it."""
        app, end = pipe_pair()
        self._tcp.adopt(flow, end)
        await self._inbox.send(TcpInbound(flow, guest_ip, port, "127.0.0.1", self.pseudo_port()))
        return app


def _device_opener(target: str) -> Callable[[], Awaitable[fl.HostEnd]]:
    if target.startswith("cmd:"):
        return fl.cmd_opener(target[4:])
    if target.startswith("unix:"):
        return fl.unix_opener(target[5:])
    host, _, port = target[4:].rpartition(":")
    return fl.tcp_opener(host.strip("[]"), int(port))


__all__ = ["SHELL_FLOW_BASE", "ForwardError", "Forwards"]

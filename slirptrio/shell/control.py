"""The control socket: JSON lines over a unix socket (``slirptrio run --control PATH``).

Each request is one JSON object on one line, ``{"cmd": NAME, ...}``; each answer is one JSON
object on one line, ``{"ok": true, ...}`` or ``{"ok": false, "error": MESSAGE}``. Commands:

* ``info`` → ``forwards`` (kind, rule, proto, addr, port, guest_addr, guest_port, target,
  static, state, id: see :class:`slirptrio.syntax.forward.ForwardInfo`) and ``flows``, the NAT
  table (proto, state, guest, dest, host, recv_q, send_q, idle_s); ``hostfwd`` maps each host
  forward's rule to its bound port;
* ``leases`` → ``leases``: ip, mac, expires_in_s;
* ``stats`` → ``counters``, ``flows_by_state``, ``leases``, ``journal_bytes``, ...;
* ``hostfwd-add`` ``{"rule": "tcp::8022-:22"}`` → ``port`` (the bound host port);
* ``hostfwd-remove`` ``{"rule": ...}``;
* ``capture`` (filters) → ``capture``: the connection then carries the capture
  (:mod:`slirptrio.shell.capture`), not more answers;
* ``fault-add`` ``{"rule": "proto=tcp loss=2%"}`` → ``id``, ``rule`` (canonical);
  ``fault-remove`` ``{"id": N}``; ``fault-clear``; ``fault-list`` → ``faults`` (id, rule,
  added_s, active, stats): fault rules (:mod:`slirptrio.core.faults`), each change a
  journaled event.

A bad request gets an error answer and changes nothing; a line longer than 64 KiB closes the
connection. Several clients may be connected at once.

Who may connect: the socket file is created 0600, and every client's uid is checked
(SO_PEERCRED): only the stack's own user, and root, are served; anyone else gets one error
answer and is disconnected (root is allowed because it can reach the stack anyway). A spare
descriptor is kept so that a client is served even when the stack has run out of them.
"""

from __future__ import annotations

import json
import logging
import os
import socket as _socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from slirptrio.shell.descriptors import AcceptLoop, Spare

log = logging.getLogger("slirptrio.control")

MAX_LINE = 65536

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class Takeover:
    """Put in an answer under ``"_takeover"``: after the answer line, ``run(stream)`` owns the
    connection; ``abandon()`` is called instead if the answer cannot be sent."""

    run: Callable[[trio.abc.Stream], Awaitable[None]]
    abandon: Callable[[], None]


class ControlError(Exception):
    """A request the stack refuses; the message goes back to the client."""


async def _serve_client(stream: trio.SocketStream, handlers: dict[str, Handler]) -> None:
    buf = bytearray()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        buf += data
        while (nl := buf.find(b"\n")) >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            answer = await _answer(line, handlers)
            takeover = answer.pop("_takeover", None)
            if takeover is None:
                await stream.send_all(json.dumps(answer).encode() + b"\n")
                continue
            try:
                await stream.send_all(json.dumps(answer).encode() + b"\n")
            except BaseException:
                takeover.abandon()
                raise
            await takeover.run(stream)
            return
        if len(buf) > MAX_LINE:
            await stream.send_all(
                json.dumps({"ok": False, "error": "request line too long"}).encode() + b"\n"
            )
            return


async def _answer(line: bytes, handlers: dict[str, Handler]) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return {"ok": False, "error": f"bad JSON: {exc}"}
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return {"ok": False, "error": 'expected {"cmd": NAME, ...}'}
    handler = handlers.get(request["cmd"])
    if handler is None:
        return {
            "ok": False,
            "error": f"unknown command {request['cmd']!r} (known: {', '.join(handlers)})",
        }
    try:
        result = await handler(request)
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a bad request must never take the stack down
        log.exception("control command %r failed", request["cmd"])
        return {"ok": False, "error": f"internal error: {exc!r}"}
    return {"ok": True, **result}


def peer_uid(sock: trio.socket.SocketType) -> int | None:
    """The uid of a unix socket's peer (SO_PEERCRED), or None if the kernel does not say."""
    try:
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def allowed_uids() -> frozenset[int]:
    """The uids the control socket serves: ours and root's."""
    return frozenset({os.geteuid(), 0})


async def serve_control(
    listener: trio.SocketListener,
    handlers: dict[str, Handler],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept control clients on ``listener`` until cancelled (clients of another uid are
    refused)."""
    spare = Spare()
    acceptor = AcceptLoop(listener.socket, "control socket", spare)
    allowed = allowed_uids()
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                conn, _addr = await acceptor.accept()
                uid = peer_uid(conn)
                if uid not in allowed:
                    nursery.start_soon(_refuse, trio.SocketStream(conn), uid, spare)
                    continue
                nursery.start_soon(_guarded, trio.SocketStream(conn), handlers, spare)
    finally:
        spare.close()
        listener.socket.close()


async def _refuse(stream: trio.SocketStream, uid: int | None, spare: Spare) -> None:
    log.warning("control socket: refused a client of uid %s (only %d and root)", uid,
                os.geteuid())
    answer = {"ok": False, "error": f"permission denied: uid {uid} may not control this stack"}
    try:
        with trio.move_on_after(1.0):
            # Take the request first: closing on unread bytes would reset the connection and
            # the client would never see why.
            await stream.receive_some(MAX_LINE)
            await stream.send_all(json.dumps(answer).encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        _close(stream, spare)


async def _guarded(stream: trio.SocketStream, handlers: dict[str, Handler], spare: Spare) -> None:
    try:
        await _serve_client(stream, handlers)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("control client gone: %r", exc)
    finally:
        _close(stream, spare)


def _close(stream: trio.SocketStream, spare: Spare) -> None:
    # The spare takes the client's descriptor back at once, before any other task can.
    stream.socket.close()
    spare.take()


async def request(path: str, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the control socket at ``path`` and return the answer."""
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(json.dumps(message).encode() + b"\n")
            buf = bytearray()
            while b"\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    raise ControlError("control socket closed without an answer")
                buf += data
    answer = json.loads(buf[: buf.index(b"\n")])
    if not isinstance(answer, dict):
        raise ControlError("malformed answer")
    return answer

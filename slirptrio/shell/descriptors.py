"""File descriptors: the process limit, how many flows it allows, and riding out EMFILE.

Every host-side flow costs a descriptor, so the stack sizes itself to ``RLIMIT_NOFILE``: the
command line raises the soft limit to the hard one at start (:func:`raise_nofile_limit`), and
:func:`fit_max_flows` shrinks ``max-flows`` to what the limit allows, saying so in one line.

Running out anyway (UDP and ICMP flows, ``cmd:`` children, other code in an embedding program)
is a passing condition, never a reason to exit: EMFILE/ENFILE when a flow opens its socket fails
that flow only (the core answers the guest with RST or ICMP), and a listener that cannot accept
backs off and tries again (:class:`AcceptLoop`), telling the truth about its state meanwhile.
A listener that must never wait (the guest's, the control socket's) keeps a :class:`Spare`
descriptor and gives it up to take the one connection that matters.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import logging
import math
import os
import resource
from typing import Any

import trio

from slirptrio.config import Config

log = logging.getLogger("slirptrio.descriptors")

FD_RESERVE = 48
"""Descriptors kept for the stack itself: stdio, trio, journal, pcap, listeners, clients."""
TCP_SHARE_NUM, TCP_SHARE_DEN = 3, 4
"""TCP flows may use this share of the descriptors past the reserve; UDP/ICMP the rest."""
MIN_FLOWS = 16
"""``max-flows`` is never shrunk below this, however low the limit."""
BACKOFF_MIN_S = 0.05
"""First wait of a listener that ran out of descriptors; it doubles up to BACKOFF_MAX_S."""
BACKOFF_MAX_S = 2.0
SPARE_RETRY_S = 1.0
"""How often a listener that gave up its spare descriptor tries to take one back."""

EXHAUSTED = frozenset({_errno.EMFILE, _errno.ENFILE, _errno.ENOBUFS, _errno.ENOMEM})
"""Errnos that mean "no resources right now": wait and retry, never give up."""


def exhausted(exc: BaseException) -> bool:
    """True if ``exc`` is an OSError saying descriptors (or kernel memory) ran out."""
    return isinstance(exc, OSError) and exc.errno in EXHAUSTED


def nofile_limit() -> int:
    """The soft RLIMIT_NOFILE (a large number when unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # Linux refuses an infinite RLIMIT_NOFILE; nr_open is the real ceiling.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                hard = int(f.read())
        except (OSError, ValueError):
            hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.info("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
            return soft, soft
        return soft, hard
    return soft, soft


def flows_for_descriptors(nofile: int) -> int:
    """The largest ``max-flows`` that ``nofile`` descriptors carry with room to spare."""
    spare = max(0, nofile - FD_RESERVE)
    return max(MIN_FLOWS, spare * TCP_SHARE_NUM // TCP_SHARE_DEN)


def fit_max_flows(config: Config, nofile: int | None = None) -> Config:
    """``config`` with ``max_flows`` no larger than the descriptor limit allows (one log line
    at warning level when it had to shrink)."""
    limit = nofile_limit() if nofile is None else nofile
    fits = flows_for_descriptors(limit)
    if config.max_flows <= fits:
        return config
    log.warning(
        "max-flows %d needs more file descriptors than RLIMIT_NOFILE %d allows; using "
        "max-flows=%d", config.max_flows, limit, fits,
    )
    return dataclasses.replace(config, max_flows=fits)


class Spare:
    """One descriptor held in reserve (``/dev/null``), released to accept a connection that
    must not wait for descriptors to free up, and taken back when one is free again."""

    def __init__(self) -> None:
        self._fd = -1
        self.take()

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def take(self) -> bool:
        """Hold a descriptor again if there is none held; True if one is held now."""
        if self._fd < 0:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                log.debug("no spare descriptor yet: %s", exc)
        return self._fd >= 0

    def release(self) -> bool:
        """Give the descriptor back to the process; True if one was held."""
        if self._fd < 0:
            return False
        log.debug("releasing the spare descriptor %d", self._fd)
        os.close(self._fd)
        self._fd = -1
        return True

    def close(self) -> None:
        self.release()


class AcceptLoop:
    """Accepts on a listening trio socket, riding out descriptor exhaustion.

    ``state`` is ``"listening"`` or ``"backing-off: EMFILE"`` (the errno's name) while it
    waits after a failed accept; the wait doubles from BACKOFF_MIN_S to BACKOFF_MAX_S and the
    pending connection stays in the kernel's backlog meanwhile. With a :class:`Spare`, an
    accept that fails for want of a descriptor releases the spare and tries once more at once.
    Errors trio's own listeners ignore (ECONNABORTED and the like: the peer left) are retried
    at once; every other OSError backs off too, so the listener never ends by itself.
    """

    def __init__(self, sock: trio.socket.SocketType, name: str, spare: Spare | None = None):
        self.sock = sock
        self.name = name
        self.spare = spare
        self.state = "listening"
        self.backoffs = 0
        self._delay = BACKOFF_MIN_S

    async def accept(self) -> tuple[trio.socket.SocketType, Any]:
        """The next connection and its peer address."""
        while True:
            if self.sock.fileno() < 0:
                raise OSError(_errno.EBADF, "the listening socket is closed")
            retake = self.spare is not None and not self.spare.take()
            # Wait for a pending connection first: Linux fails accept() with EMFILE before it
            # looks at the queue, so only a readable socket says someone is waiting.
            # Without a spare, wake now and then to take one back once one is free.
            with trio.move_on_after(SPARE_RETRY_S if retake else math.inf) as waiting:
                await trio.lowlevel.wait_readable(self.sock)
            if waiting.cancelled_caught:
                continue
            try:
                conn, addr = await self.sock.accept()
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    continue
                if exc.errno in _BROKEN:
                    raise
                if exhausted(exc) and self.spare is not None and self.spare.release():
                    # No checkpoint between the release and this accept (trio tries the call
                    # before it waits): nobody else can take the descriptor first.
                    try:
                        conn, addr = await self.sock.accept()
                    except OSError as exc2:
                        exc = exc2
                    else:
                        log.warning("%s: out of file descriptors; used the spare one", self.name)
                        self._ok()
                        return conn, addr
                await self._back_off(exc)
                continue
            self._ok()
            return conn, addr

    def _ok(self) -> None:
        if self.state != "listening":
            log.warning("%s: accepting again", self.name)
        self.state = "listening"
        self._delay = BACKOFF_MIN_S

    async def _back_off(self, exc: OSError) -> None:
        name = _errno.errorcode.get(exc.errno or 0, str(exc.errno))
        state = f"backing-off: {name}"
        if self.state != state:
            log.warning("%s: cannot accept (%s); retrying", self.name, exc.strerror or exc)
        self.state = state
        self.backoffs += 1
        await trio.sleep(self._delay)
        self._delay = min(BACKOFF_MAX_S, self._delay * 2)


_BROKEN = frozenset({_errno.EBADF, _errno.EINVAL, _errno.ENOTSOCK})
_TRANSIENT = frozenset(
    getattr(_errno, name)
    for name in ("ECONNABORTED", "EPROTO", "ECONNRESET", "EPERM", "ETIMEDOUT", "EHOSTUNREACH",
                 "ENETUNREACH", "ENETDOWN", "EHOSTDOWN", "ENONET", "EOPNOTSUPP")
    if hasattr(_errno, name)
)

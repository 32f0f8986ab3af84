"""SMB shares for the guest (``smb=DIR``): Samba's smbd behind a guest forward, as QEMU does.

QEMU's ``smb=`` writes a private smb.conf (one share, ``qemu``, guest access mapped to the
user running QEMU, every Samba directory inside a private temporary directory) and adds exec
guest forwards on ``smbserver`` ports 139 and 445 that start ``smbd`` once per connection.
This does the same: :class:`SmbShare` owns the temporary directory and the configuration, and
its :meth:`SmbShare.opener` is registered as the guest forward's target.

Each guest connection runs one smbd in inetd mode, its stdin and stdout one end of a TCP
connection over the host's loopback whose other end is the flow's socket (smbd wants an IP peer
on its socket; libslirp's exec forwards use the same kind of pair). smbd runs in a session of
its own, so it and every helper it forks share one process group; when the flow ends the group
gets SIGTERM, then SIGKILL after a grace period, before the process is reaped.
:meth:`SmbShare.close` removes the temporary directory. Nothing listens anywhere: smbd is only
ever reached through the guest forward.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import pwd
import shutil
import signal
import socket as _socket
import tempfile

import trio

from slirptrio.shell.flows import PROCESS_GRACE_S, PROCESS_KILL_WAIT_S, HostEnd, Opener, SocketEnd

log = logging.getLogger("slirptrio.smb")

SMB_PORTS = (445, 139)
SMBD_PACKAGE = "samba"
_PAIR_TIMEOUT_S = 2.0


class SmbError(Exception):
    """The SMB share cannot be served (the message says why, in one line)."""


def find_smbd() -> str | None:
    """The smbd binary: on PATH, or in /usr/sbin or /sbin (where Debian puts it)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("smbd", path=path)


def check_share(directory: str) -> str:
    """The smbd to use for sharing ``directory``; raises :class:`SmbError` if it cannot be."""
    if not os.path.isdir(directory):
        raise SmbError(f"smb={directory}: not a directory")
    smbd = find_smbd()
    if smbd is None:
        raise SmbError(
            f"smb={directory}: smbd not found; install Samba (Debian package: {SMBD_PACKAGE})"
        )
    return smbd


def _conf(state: str, share: str, user: str) -> str:
    # Every directory Samba writes is under ``state``; nothing is bound or listened on.
    return f"""[global]
private dir={state}/private
interfaces=127.0.0.1
bind interfaces only=yes
pid directory={state}
lock directory={state}/lock
state directory={state}/state
cache directory={state}/cache
ncalrpc dir={state}/ncalrpc
log file={state}/log.smbd
smb passwd file={state}/smbpasswd
security = user
map to guest = Bad User
load printers = no
printing = bsd
disable spoolss = yes
usershare max shares = 0
[qemu]
path={share}
read only=no
guest ok=yes
force user={user}
"""


class SmbShare:
    """The private smbd configuration for sharing ``directory``; :meth:`close` removes it."""

    def __init__(self, directory: str, smbd: str) -> None:
        self.directory = os.path.abspath(directory)
        self.smbd = smbd
        self.dir = tempfile.mkdtemp(prefix="slirptrio-smb-")
        try:
            for sub in ("private", "lock", "state", "cache", "ncalrpc"):
                os.mkdir(os.path.join(self.dir, sub), 0o700)
            user = pwd.getpwuid(os.geteuid()).pw_name
            self.conf = os.path.join(self.dir, "smb.conf")
            with open(self.conf, "w", encoding="utf-8") as f:
                f.write(_conf(self.dir, self.directory, user))
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        log.info("smb: sharing %s as qemu; smbd configuration in %s", self.directory, self.dir)

    def argv(self) -> list[str]:
        return [self.smbd, "-l", self.dir, "-s", self.conf]

    def opener(self) -> Opener:
        """Start one smbd for one guest connection."""

        async def open_smbd() -> HostEnd:
            return await SmbdEnd.spawn(self.argv())

        return open_smbd

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _loopback_pair() -> tuple[_socket.socket, _socket.socket]:
    """A connected TCP pair over 127.0.0.1: (ours, theirs). Another local process racing to
    connect to the short-lived listener is told apart by its address and turned away."""
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(_PAIR_TIMEOUT_S)
        ours = _socket.create_connection(listener.getsockname(), timeout=_PAIR_TIMEOUT_S)
        try:
            want = ours.getsockname()
            for _ in range(8):
                theirs, peer = listener.accept()
                if peer == want:
                    ours.settimeout(None)
                    theirs.settimeout(None)
                    return ours, theirs
                theirs.close()
            raise ConnectionRefusedError(_errno.ECONNREFUSED, "could not pair with smbd")
        except BaseException:
            ours.close()
            raise
    finally:
        listener.close()


class SmbdEnd:
    """One smbd serving one connection; the flow talks to it over a loopback TCP pair."""

    def __init__(self, process: trio.Process, sock: trio.socket.SocketType) -> None:
        self.process = process
        self._end = SocketEnd(sock)
        self._aborted = False

    @classmethod
    async def spawn(cls, argv: list[str]) -> SmbdEnd:
        """Start smbd on a fresh pair; :exc:`OSError` if it cannot be started."""
        ours, theirs = await trio.to_thread.run_sync(_loopback_pair)
        try:
            process = await trio.lowlevel.open_process(
                argv, stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=None,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        log.info("smbd pid %d started for a guest connection", process.pid)
        return cls(process, trio.socket.from_stdlib_socket(ours))

    async def recv(self, max_bytes: int) -> bytes:
        return await self._end.recv(max_bytes)

    async def send(self, data: bytes | bytearray | memoryview) -> int:
        return await self._end.send(data)

    async def shutdown_write(self) -> None:
        await self._end.shutdown_write()

    def _signal(self, sig: signal.Signals) -> None:
        # Only while the leader is unreaped: until then its pid names this group and no other.
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def abort(self) -> None:
        self._aborted = True
        self._end.abort()
        self._signal(signal.SIGKILL)

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self._end.close()
            self._signal(signal.SIGKILL if self._aborted else signal.SIGTERM)
            with trio.move_on_after(PROCESS_GRACE_S):
                await self.process.wait()
            self._signal(signal.SIGKILL)
            with trio.move_on_after(PROCESS_KILL_WAIT_S):
                await self.process.wait()
            if self.process.returncode is None:
                log.warning("smbd pid %d did not exit after SIGKILL", self.process.pid)


__all__ = ["SMB_PORTS", "SmbError", "SmbShare", "check_share", "find_smbd"]

"""The TFTP root on the host: opens and reads files for the core's TFTP sessions.

The core decides what is served (:mod:`slirptrio.core.tftp`); this module only answers its
effects. ``TftpOpen(session, path)`` opens the file beneath the root and answers
``TftpOpened(session, errno, size)``; each ``TftpRead`` is answered by a ``TftpChunk`` with the
bytes read; ``TftpClose`` closes the file. Opening and reading run in a worker thread, off the
event loop, one task per session.

The jail (:func:`open_beneath`) is the second line behind the core's name check:

* the path is resolved beneath the root by the kernel — ``openat2(RESOLVE_BENEATH |
  RESOLVE_NO_MAGICLINKS)`` where the kernel has it (Linux 5.6), so a symlink that stays inside
  the root is followed and one that leads out (absolute, or through ``..``) fails with EXDEV;
  elsewhere one ``openat(O_NOFOLLOW)`` per component, and then no symlink is followed at all;
* only a regular file is served: the final component is first opened with ``O_PATH`` (which
  opens no device) and checked with ``fstat``; a directory, device, FIFO or socket is refused;
* a regular file with more than one hard link is refused: a hard link inside the root to a file
  outside it cannot be told from any other, so none is trusted;
* the file is then opened for reading (``O_NONBLOCK``, ``O_NOFOLLOW``) and must be the same
  inode that was checked.

A refusal is ``EACCES`` (``EXDEV``/``ELOOP`` from the kernel as they come), which the core
answers with TFTP error 2, "Access violation"; a missing file is ``ENOENT``, error 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import logging
import os
import stat
import sys
from typing import Any

import trio

from slirptrio.core.events import TftpChunk, TftpClose, TftpOpen, TftpOpened, TftpRead
from slirptrio.shell.inbox import Inbox

log = logging.getLogger("slirptrio.tftp")

_SYS_OPENAT2 = 437  # the same number on every Linux architecture since 5.1's unification
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_O_PATH = getattr(os, "O_PATH", 0)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_state: list[Any] = []  # [libc] once probed, [None] when the kernel lacks openat2


def _libc() -> Any:
    if not _openat2_state:
        lib: Any = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                lib = ctypes.CDLL(None, use_errno=True)
                lib.syscall.restype = ctypes.c_long
        _openat2_state.append(lib)
    return _openat2_state[0]


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    """``openat2(2)``; raises OSError, ENOSYS when unavailable."""
    lib = _libc()
    if lib is None:
        raise OSError(_errno.ENOSYS, "openat2 is not available")
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    # syscall(2) is variadic: every argument gets its exact C type (a size_t stays 64 bits).
    fd = int(lib.syscall(
        ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
    ))
    if fd < 0:
        err = ctypes.get_errno()
        if err == _errno.ENOSYS:
            _openat2_state[0] = None
        raise OSError(err, os.strerror(err), path)
    return fd


def _components(path: str) -> list[str]:
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise PermissionError(_errno.EACCES, "not a plain relative path", path)
    return parts


def _check_regular(fd: int, path: str) -> os.stat_result:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(_errno.EISDIR, "is a directory", path)
    if stat.S_ISLNK(st.st_mode):
        raise OSError(_errno.ELOOP, "is a symbolic link", path)
    if not stat.S_ISREG(st.st_mode):
        raise PermissionError(_errno.EACCES, "not a regular file", path)
    if st.st_nlink > 1:
        raise PermissionError(_errno.EACCES, "has more than one hard link", path)
    return st


def _open_checked(open_at: Any, path: str, nofollow: int) -> int:
    """Check with O_PATH, then open for reading; the two must be the same inode."""
    probe = open_at(_O_PATH | nofollow)
    try:
        st = _check_regular(probe, path)
    finally:
        os.close(probe)
    fd = int(open_at(os.O_RDONLY | os.O_NONBLOCK | nofollow))
    try:
        again = os.fstat(fd)
        if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
            raise PermissionError(_errno.EACCES, "changed while being opened", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(root_fd: int, path: str, *, use_openat2: bool | None = None) -> tuple[int, int]:
    """Open ``path`` (plain components joined by "/") for reading, beneath the directory
    ``root_fd``, under the rules in the module docstring. Returns (fd, size).

    ``use_openat2``: None tries openat2 and falls back to per-component ``openat``; True or
    False forces one way (tests).

    Raises:
      OSError: with the errno the core turns into a TFTP error.
    """
    parts = _components(path)
    if use_openat2 is not False and _libc() is not None:
        resolve = _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS
        try:
            fd = _open_checked(lambda flags: _openat2(root_fd, path, flags, resolve), path, 0)
        except OSError as exc:
            if exc.errno != _errno.ENOSYS or use_openat2:
                raise
        else:
            return fd, os.fstat(fd).st_size
    elif use_openat2:
        raise OSError(_errno.ENOSYS, "openat2 is not available")
    dir_fd = root_fd
    owned: list[int] = []
    try:
        for part in parts[:-1]:
            dir_fd = os.open(
                part, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
            owned.append(dir_fd)
        last, where = parts[-1], dir_fd
        fd = _open_checked(
            lambda flags: os.open(last, flags | os.O_CLOEXEC, dir_fd=where), path, os.O_NOFOLLOW
        )
        return fd, os.fstat(fd).st_size
    except NotADirectoryError as exc:
        # O_NOFOLLOW on a symlinked directory component reports ENOTDIR: it is a refusal.
        raise OSError(_errno.ELOOP, "a path component is not a plain directory", path) from exc
    finally:
        for d in owned:
            os.close(d)


def open_root(path: str) -> int:
    """Open the TFTP root directory; raises OSError if it is not one."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class TftpFiles:
    """Serves the core's TFTP file effects from ``root_fd`` (an open directory, or None when no
    TFTP root is configured: every open is refused). Run :meth:`run` in a nursery first; it
    closes the root when it ends."""

    def __init__(self, inbox: Inbox, root_fd: int | None) -> None:
        self._inbox = inbox
        self._root_fd = root_fd
        self._nursery: trio.Nursery | None = None
        self._sessions: dict[int, trio.MemorySendChannel[TftpRead]] = {}

    def set_root(self, root_fd: int) -> None:
        """Serve from ``root_fd`` (an open directory, owned from now on)."""
        if self._root_fd is not None:
            os.close(self._root_fd)
        self._root_fd = root_fd

    def handlers(self) -> dict[type[Any], Any]:
        return {TftpOpen: self.open, TftpRead: self.read, TftpClose: self.close}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; closes the root and every open file on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None

    def open(self, eff: TftpOpen) -> None:
        assert self._nursery is not None, "TftpFiles.run() is not running"
        send, receive = trio.open_memory_channel[TftpRead](2)
        old = self._sessions.pop(eff.session, None)
        if old is not None:
            old.close()
        self._sessions[eff.session] = send
        self._nursery.start_soon(self._serve, eff.session, eff.path, receive)

    def read(self, eff: TftpRead) -> None:
        send = self._sessions.get(eff.session)
        if send is None:
            log.error("tftp: read for unknown session %d", eff.session)
            return
        try:
            send.send_nowait(eff)
        except (trio.WouldBlock, trio.ClosedResourceError):
            log.error("tftp: session %d has a read outstanding already", eff.session)

    def close(self, eff: TftpClose) -> None:
        send = self._sessions.pop(eff.session, None)
        if send is not None:
            send.close()

    async def _serve(
        self, sid: int, path: str, requests: trio.MemoryReceiveChannel[TftpRead]
    ) -> None:
        with requests:
            await self._serve_file(sid, path, requests)

    async def _serve_file(
        self, sid: int, path: str, requests: trio.MemoryReceiveChannel[TftpRead]
    ) -> None:
        fd = -1
        try:
            root = self._root_fd
            try:
                if root is None:
                    raise PermissionError(_errno.EACCES, "no TFTP root", path)
                fd, size = await trio.to_thread.run_sync(open_beneath, root, path)
            except OSError as exc:
                err = exc.errno or _errno.EIO
                log.info("tftp: %s: %s", path, exc.strerror or exc)
                self._sessions.pop(sid, None)
                await self._inbox.send(TftpOpened(sid, err, 0))
                return
            await self._inbox.send(TftpOpened(sid, 0, size))
            async for req in requests:
                try:
                    data = await trio.to_thread.run_sync(os.pread, fd, req.size, req.offset)
                    err = 0
                except OSError as exc:
                    data, err = b"", exc.errno or _errno.EIO
                    log.warning("tftp: reading %s: %s", path, exc)
                await self._inbox.send(TftpChunk(sid, req.offset, data, err))
        finally:
            if fd >= 0:
                os.close(fd)


__all__ = ["TftpFiles", "open_beneath", "open_root"]

"""Private files: journal segments, pcaps and their directories, for the user alone.

A journal or pcap belongs to one session: the journal directory holds a lock file
(``LOCK_NAME``, empty, ``flock``-ed for as long as the session runs) and the pcap is
``flock``-ed itself, so a second stack naming either is refused (:class:`InUseError`) before it
touches anything. An earlier session's journal or pcap at the path is replaced only when asked
(``overwrite``); otherwise :class:`ExistsError` names ``--overwrite``. Parent directories are
never created here: a path in a missing directory is the user's mistake (the command line
creates its own default directory itself).

Everything is created 0600 (files) or 0700 (directories) whatever the umask: the modes are
set with ``fchmod`` after creation, since ``open``'s mode is only an upper bound. The last
component of a path is never followed if it is a symlink (``O_NOFOLLOW``), and files are
created with ``O_EXCL``, so neither a planted symlink nor a planted file (another user's, or
one with looser modes) is ever written through. A file of ours from an earlier run at the same
path is unlinked and created anew (when overwriting is allowed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

FILE_MODE = 0o600
DIR_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


LOCK_NAME = ".lock"


class UnsafePathError(OSError):
    """A path we would write through is a symlink or not what we expect there."""


class InUseError(OSError):
    """Another live session holds the journal or pcap at this path."""


class ExistsError(OSError):
    """An earlier session's journal or pcap is at this path (and overwriting was not asked)."""


def check_parent(path: str) -> None:
    """Raise FileNotFoundError (naming ``path``) when its directory does not exist."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(errno.ENOENT, f"directory {parent} does not exist", path)


def _lock(fd: int, path: str) -> None:
    """``flock`` ``fd`` for this session, or raise :class:`InUseError` naming the holder."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InUseError(errno.EBUSY, "in use by another running slirptrio", path) from None


def ensure_parent(path: str) -> None:
    """Create ``path``'s missing parent directories, each 0700."""
    parent = os.path.dirname(os.path.abspath(path))
    missing: list[str] = []
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, DIR_MODE)
        fd = os.open(d, _DIR_FLAGS)
        try:
            os.fchmod(fd, DIR_MODE)
        finally:
            os.close(fd)


def open_private_dir(path: str, *, owned_files: str, overwrite: bool = True,
                     lock: list[int] | None = None) -> int:
    """Create (or reuse) the directory ``path`` 0700 and return an fd for it.

    An existing directory is reused only if it holds nothing but files whose names end with
    ``owned_files`` (an earlier journal at the same path) and the lock file: those are removed
    if ``overwrite``, else :class:`ExistsError` is raised. A symlink or anything else at
    ``path`` raises :class:`UnsafePathError`. With ``lock`` (a list), the directory's lock file
    is taken first (:class:`InUseError` if another session holds it) and its fd appended to
    ``lock``: the caller holds it for the session.
    """
    check_parent(path)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
            raise UnsafePathError(errno.EEXIST, f"{path} exists and is {kind}") from None
    fd = os.open(path, _DIR_FLAGS)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafePathError(errno.EPERM, f"{path} belongs to another user")
        os.fchmod(fd, DIR_MODE)
        if lock is not None:
            lock_fd = _open_lock(fd, path)
            try:
                _lock(lock_fd, path)  # empty: it takes no block of the journal's bound
            except BaseException:
                os.close(lock_fd)
                raise
            lock.append(lock_fd)
        names = [n for n in os.listdir(fd) if n != LOCK_NAME]
        strangers = [n for n in names if not n.endswith(owned_files)]
        if strangers:
            raise UnsafePathError(
                errno.EEXIST, f"{path} exists and holds other files ({strangers[0]}, ...)"
            )
        if names and not overwrite:
            raise ExistsError(errno.EEXIST, "holds an earlier session's journal (give "
                              "--overwrite to replace it, or another path)", path)
        for name in names:
            os.unlink(name, dir_fd=fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_lock(dir_fd: int, path: str) -> int:
    try:
        fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:
        raise UnsafePathError(exc.errno, f"cannot open its lock file: {exc.strerror}",
                              path) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(errno.EEXIST, f"{path}/{LOCK_NAME} is not a regular file")
    return fd


def create_private_file(name: str, dir_fd: int | None = None, *, overwrite: bool = True,
                        lock: bool = False) -> int:
    """Create ``name`` (relative to ``dir_fd`` if given) 0600 for writing; return its fd.

    A regular file already there is replaced if ``overwrite`` (else :class:`ExistsError`); a
    symlink or other kind of file raises :class:`UnsafePathError`. With ``lock`` the file is
    ``flock``-ed (the pcap: the lock goes with its fd), and one another live session holds
    raises :class:`InUseError` before anything is replaced.
    """
    try:
        fd = os.open(name, _CREATE_FLAGS, FILE_MODE, dir_fd=dir_fd)
    except FileExistsError:
        st = os.lstat(name, dir_fd=dir_fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise UnsafePathError(errno.EEXIST, f"{name} exists and is {kind}") from None
        if lock:
            old = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _lock(old, name)
            finally:
                os.close(old)  # an flock goes with its file: released here
        if not overwrite:
            raise ExistsError(errno.EEXIST, "exists (an earlier session's; give --overwrite "
                              "to replace it, or another path)", name) from None
        os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, _CREATE_FLAGS, FILE_MODE, dir_fd=dir_fd)
    try:
        os.fchmod(fd, FILE_MODE)
        if lock:
            _lock(fd, name)
    except BaseException:
        os.close(fd)
        raise
    return fd

"""Private files: journal segments, pcaps and their directories, for the user alone.

Everything is created 0600 (files) or 0700 (directories) whatever the umask: the modes are
set with ``fchmod`` after creation, since ``open``'s mode is only an upper bound. The last
component of a path is never followed if it is a symlink (``O_NOFOLLOW``), and files are
created with ``O_EXCL``, so neither a planted symlink nor a planted file (another user's, or
one with looser modes) is ever written through. A file of ours from an earlier run at the same
path is unlinked and created anew.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

FILE_MODE = 0o600
DIR_MODE = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(OSError):
    """A path we would write through is a symlink or not what we expect there."""


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


def open_private_dir(path: str, *, owned_files: str) -> int:
    """Create (or reuse) the directory ``path`` 0700 and return an fd for it.

    An existing directory is reused only if it holds nothing but files whose names end with
    ``owned_files`` (an earlier journal at the same path): those are removed. A symlink or
    anything else at ``path`` raises :class:`UnsafePathError`.
    """
    ensure_parent(path)
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
        names = os.listdir(fd)
        strangers = [n for n in names if not n.endswith(owned_files)]
        if strangers:
            raise UnsafePathError(
                errno.EEXIST, f"{path} exists and holds other files ({strangers[0]}, ...)"
            )
        for name in names:
            os.unlink(name, dir_fd=fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private_file(name: str, dir_fd: int | None = None) -> int:
    """Create ``name`` (relative to ``dir_fd`` if given) 0600 for writing; return its fd.

    A regular file already there is replaced; a symlink or other kind of file raises
    :class:`UnsafePathError`.
    """
    try:
        fd = os.open(name, _CREATE_FLAGS, FILE_MODE, dir_fd=dir_fd)
    except FileExistsError:
        st = os.lstat(name, dir_fd=dir_fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise UnsafePathError(errno.EEXIST, f"{name} exists and is {kind}") from None
        os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, _CREATE_FLAGS, FILE_MODE, dir_fd=dir_fd)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd

"""The TFTP root as a jail: hostile names and hostile files placed in the root by the test.

Every case runs both ways the shell can resolve a path: ``openat2(RESOLVE_BENEATH)`` (in-root
symlinks followed, escapes refused) and the per-component ``O_NOFOLLOW`` fallback (no symlink
followed at all). What the guest would see is checked too: the core's TFTP error for the errno.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from slirptrio.core.events import Event, TftpChunk, TftpClose, TftpOpen, TftpOpened, TftpRead
from slirptrio.core.tftp import _open_error
from slirptrio.shell.tftp import TftpFiles, open_beneath, open_root
from slirptrio.wire import tftp as wt

OK = 0
SECRET = b"outside the root\n"


def _openat2_works() -> bool:
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        got, _ = open_beneath(fd, "etc/hostname", use_openat2=True)
        os.close(got)
        return True
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    finally:
        os.close(fd)


MODES = [
    pytest.param(True, id="openat2", marks=pytest.mark.skipif(
        not _openat2_works(), reason="the kernel has no openat2 (Linux < 5.6 or seccomp)")),
    pytest.param(False, id="openat"),
]


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A TFTP root full of traps, beside a secret file outside it."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    r = tmp_path / "root"
    (r / "sub" / "deeper").mkdir(parents=True)
    (r / "ok.txt").write_bytes(b"served\n")
    (r / "sub" / "inner.txt").write_bytes(b"inner\n")
    (r / "sub" / "deeper" / "leaf").write_bytes(b"leaf\n")
    (r / "empty").write_bytes(b"")
    os.symlink("ok.txt", r / "link_in")
    os.symlink("../ok.txt", r / "sub" / "link_up_in")
    os.symlink("/etc/passwd", r / "link_abs")
    os.symlink(str(tmp_path / "secret.txt"), r / "link_abs_secret")
    os.symlink("../secret.txt", r / "link_up")
    os.symlink("../../secret.txt", r / "sub" / "link_up2")
    os.symlink("/etc", r / "dirlink")
    os.symlink("..", r / "parent")
    os.symlink("sub", r / "sublink")
    os.symlink("loop_b", r / "loop_a")
    os.symlink("loop_a", r / "loop_b")
    os.symlink("/proc/self/root/etc/passwd", r / "magic")
    os.link(tmp_path / "secret.txt", r / "hard")
    os.mkfifo(r / "fifo")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(r / "sock"))
    with contextlib.suppress(PermissionError):
        os.mknod(r / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    yield r


# (name, expected errno with openat2, expected errno with the fallback); 0 means served.
CASES = [
    ("ok.txt", OK, OK),
    ("sub/inner.txt", OK, OK),
    ("sub/deeper/leaf", OK, OK),
    ("empty", OK, OK),
    ("link_in", OK, errno.ELOOP),
    ("sub/link_up_in", OK, errno.ELOOP),
    ("sublink/inner.txt", OK, errno.ELOOP),
    ("link_abs", errno.EXDEV, errno.ELOOP),
    ("link_abs_secret", errno.EXDEV, errno.ELOOP),
    ("link_up", errno.EXDEV, errno.ELOOP),
    ("sub/link_up2", errno.EXDEV, errno.ELOOP),
    ("dirlink/passwd", errno.EXDEV, errno.ELOOP),
    ("parent/secret.txt", errno.EXDEV, errno.ELOOP),
    ("loop_a", errno.ELOOP, errno.ELOOP),
    ("magic", errno.EXDEV, errno.ELOOP),
    ("hard", errno.EACCES, errno.EACCES),
    ("fifo", errno.EACCES, errno.EACCES),
    ("sock", errno.EACCES, errno.EACCES),
    ("sub", errno.EISDIR, errno.EISDIR),
    ("missing", errno.ENOENT, errno.ENOENT),
    ("sub/missing/x", errno.ENOENT, errno.ENOENT),
    ("ok.txt/x", errno.ENOTDIR, errno.ELOOP),
    # Names the core never lets through, refused here as well.
    ("../secret.txt", errno.EACCES, errno.EACCES),
    ("/etc/passwd", errno.EACCES, errno.EACCES),
    ("sub/../ok.txt", errno.EACCES, errno.EACCES),
    ("./ok.txt", errno.EACCES, errno.EACCES),
    ("sub//inner.txt", errno.EACCES, errno.EACCES),
    ("", errno.EACCES, errno.EACCES),
]


def _try(root: Path, name: str, use_openat2: bool) -> tuple[int, bytes]:
    rfd = open_root(str(root))
    try:
        fd, size = open_beneath(rfd, name, use_openat2=use_openat2)
    except OSError as exc:
        assert exc.errno is not None
        return exc.errno, b""
    finally:
        os.close(rfd)
    try:
        data = os.pread(fd, 1 << 16, 0)
        assert len(data) == size
        return OK, data
    finally:
        os.close(fd)


@pytest.mark.parametrize("use_openat2", MODES)
@pytest.mark.parametrize(("name", "with_openat2", "with_openat"), CASES,
                         ids=[c[0] or "empty-name" for c in CASES])
def test_jail(root: Path, use_openat2: bool, name: str, with_openat2: int,
              with_openat: int) -> None:
    expected = with_openat2 if use_openat2 else with_openat
    err, data = _try(root, name, use_openat2)
    assert err == expected, (name, errno.errorcode.get(err, err))
    assert SECRET not in data
    if err:
        code, _msg = _open_error(err)
        want = wt.ERR_NOT_FOUND if err in (errno.ENOENT, errno.ENOTDIR) else wt.ERR_ACCESS
        assert code == want


@pytest.mark.parametrize("use_openat2", MODES)
def test_device_files_are_refused(root: Path, use_openat2: bool) -> None:
    if not (root / "null").exists():
        pytest.skip("creating a device node needs CAP_MKNOD")
    assert _try(root, "null", use_openat2)[0] == errno.EACCES


@pytest.mark.parametrize("use_openat2", MODES)
def test_no_descriptor_leaks(root: Path, use_openat2: bool) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for name, *_ in CASES:
        _try(root, name, use_openat2)
    assert len(os.listdir("/proc/self/fd")) == before


async def test_shell_serves_the_core_effects(root: Path) -> None:
    body = os.urandom(200_000)
    (root / "big.bin").write_bytes(body)
    send, receive = trio.open_memory_channel[Event](16)
    files = TftpFiles(send, open_root(str(root)))
    handlers = files.handlers()
    async with trio.open_nursery() as nursery:
        await nursery.start(files.run)
        handlers[TftpOpen](TftpOpen(7, "big.bin"))
        assert await receive.receive() == TftpOpened(7, 0, len(body))
        got = bytearray()
        while True:
            handlers[TftpRead](TftpRead(7, len(got), 65536))
            chunk = await receive.receive()
            assert type(chunk) is TftpChunk and chunk.errno == 0 and chunk.offset == len(got)
            got += chunk.data
            if len(chunk.data) < 65536:
                break
        assert bytes(got) == body
        handlers[TftpClose](TftpClose(7))
        handlers[TftpOpen](TftpOpen(8, "link_up"))
        opened = await receive.receive()
        assert type(opened) is TftpOpened and opened.errno in (errno.EXDEV, errno.ELOOP)
        handlers[TftpOpen](TftpOpen(9, "nothing"))
        assert await receive.receive() == TftpOpened(9, errno.ENOENT, 0)
        # Closed while opening: the file is opened, answered, and closed again.
        handlers[TftpOpen](TftpOpen(10, "ok.txt"))
        handlers[TftpClose](TftpClose(10))
        assert await receive.receive() == TftpOpened(10, 0, 7)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


async def test_shell_without_root_refuses() -> None:
    send, receive = trio.open_memory_channel[Event](4)
    files = TftpFiles(send, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(files.run)
        files.open(TftpOpen(1, "x"))
        assert await receive.receive() == TftpOpened(1, errno.EACCES, 0)
        nursery.cancel_scope.cancel()

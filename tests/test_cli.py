"""The command line as a user meets it: each mistake is one line and exit status 2, sockets are
private whatever the umask, ``--version`` and ``--help`` are plain text.

Every case runs ``python -m slirptrio`` in a subprocess, on loopback and temporary paths only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SETPRIV = shutil.which("setpriv")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("XDG_RUNTIME_DIR", None)
    env.update(extra or {})
    return env


def slirptrio(
    args: Sequence[str], *, env: dict[str, str] | None = None, prefix: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "slirptrio", *args], capture_output=True, text=True,
        timeout=timeout, env=_env(env), cwd="/", stdin=subprocess.DEVNULL,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The single stderr line of a failed run, checked: exit 2, ``slirptrio: error:``."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("slirptrio: error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def without_dac_override() -> list[str]:
    """A prefix that makes file permissions apply: root loses CAP_DAC_OVERRIDE (others need
    nothing)."""
    if os.geteuid() != 0:
        return []
    if SETPRIV is None:
        pytest.skip("needs setpriv to make file permissions apply to root")
    return [SETPRIV, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


RUN = ["run", "--no-journal", "--no-pcap"]


def test_listen_in_missing_directory(tmp_path: Path) -> None:
    proc = slirptrio([*RUN, "--listen", f"unix:{tmp_path}/nope/g.sock"])
    one_line_error(proc, f"unix:{tmp_path}/nope/g.sock", f"no such directory {tmp_path}/nope")


def test_control_in_missing_directory(tmp_path: Path) -> None:
    proc = slirptrio([*RUN, "--listen", f"unix:{tmp_path}/g.sock",
                      "--control", f"{tmp_path}/nope/c.sock"])
    one_line_error(proc, "control socket", f"{tmp_path}/nope")
    assert not (tmp_path / "g.sock").exists()


def test_hostfwd_port_in_use(tmp_path: Path, busy_port: int) -> None:
    proc = slirptrio([*RUN, "--listen", f"unix:{tmp_path}/g.sock",
                      f"hostfwd=tcp:127.0.0.1:{busy_port}-:22"])
    one_line_error(proc, f"tcp:127.0.0.1:{busy_port}", "Address already in use")


def test_duplicate_hostfwd(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = slirptrio([*RUN, "--listen", f"unix:{tmp_path}/g.sock",
                      f"hostfwd=tcp:127.0.0.1:{port}-:22,hostfwd=tcp:127.0.0.1:{port}-:23"])
    one_line_error(proc, f"tcp:127.0.0.1:{port} is already forwarded")


def test_listen_socket_of_a_running_program(tmp_path: Path) -> None:
    path = tmp_path / "g.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        proc = slirptrio([*RUN, "--listen", f"unix:{path}"])
        one_line_error(proc, str(path), "in use by another program")
        assert path.exists()  # not stolen from the program using it


def test_listen_path_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    proc = slirptrio([*RUN, "--listen", f"unix:{tmp_path}/f"])
    one_line_error(proc, f"{tmp_path}/f", "not a socket")


def test_stale_socket_replaced(tmp_path: Path) -> None:
    # A socket file nobody listens on (a crashed run) is no mistake: it is replaced.
    path = tmp_path / "g.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "slirptrio", *RUN, "--listen", f"unix:{path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_ready(proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_permission_denied(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    proc = slirptrio([*RUN, "--listen", f"unix:{locked}/g.sock"], prefix=without_dac_override())
    one_line_error(proc, f"unix:{locked}/g.sock", "Permission denied")
    proc = slirptrio(["run", "--listen", f"unix:{tmp_path}/g.sock", "--journal",
                      f"{locked}/s.journal"], prefix=without_dac_override())
    one_line_error(proc, f"{locked}/s.journal", "Permission denied")
    secret = tmp_path / "secret.journal"
    secret.write_bytes(b"x")
    secret.chmod(0)
    proc = slirptrio(["replay", str(secret)], prefix=without_dac_override())
    one_line_error(proc, f"journal {secret}", "Permission denied")


def test_bad_option_strings(tmp_path: Path) -> None:
    listen = ["--listen", f"unix:{tmp_path}/g.sock"]
    one_line_error(slirptrio([*RUN, *listen, "net=10.0.2.0/24,bogus=1"]), "bogus")
    one_line_error(slirptrio([*RUN, *listen, "hostfwd=tcp::x-:22"]), "hostfwd", "'x'")
    one_line_error(slirptrio([*RUN, "--listen", "nonsense"]), "--listen")
    one_line_error(slirptrio([*RUN, "--dgram", "unix:/a"]), "--dgram")
    one_line_error(slirptrio([*RUN, *listen, "--dns-upstream", "no.such:53"]), "--dns-upstream")
    one_line_error(slirptrio([*RUN, *listen, "--seed", "x"]), "--seed")
    one_line_error(slirptrio(["frobnicate"]), "frobnicate")


def test_unreadable_journals(tmp_path: Path) -> None:
    one_line_error(slirptrio(["replay", str(tmp_path / "missing")]),
                   f"journal {tmp_path}/missing", "No such file")
    garbage = tmp_path / "garbage.journal"
    garbage.write_bytes(b"\x00" * 100)
    one_line_error(slirptrio(["replay", str(garbage)]), f"journal {garbage}", "not a")
    # a directory is a journal (format 3) only when it holds segments
    one_line_error(slirptrio(["replay", str(tmp_path)]), "no journal segments")


def test_ctl_mistakes(tmp_path: Path) -> None:
    one_line_error(slirptrio(["ctl", str(tmp_path / "nope.ctl"), "info"]),
                   f"control socket {tmp_path}/nope.ctl", "No such file")
    (tmp_path / "plain").write_text("")
    one_line_error(slirptrio(["ctl", str(tmp_path / "plain"), "info"]), "Connection refused")
    one_line_error(slirptrio(["ctl", str(tmp_path / "plain"), "launch"]), "unknown command")


def test_default_socket_dir_must_be_private(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "slirptrio").mkdir(parents=True)
    (run_dir / "slirptrio").chmod(0o755)
    proc = slirptrio(RUN, env={"XDG_RUNTIME_DIR": str(run_dir)})
    one_line_error(proc, f"{run_dir}/slirptrio", "0755", "XDG_RUNTIME_DIR")
    (run_dir / "slirptrio").rmdir()
    (run_dir / "slirptrio").symlink_to(tmp_path)
    one_line_error(slirptrio(RUN, env={"XDG_RUNTIME_DIR": str(run_dir)}), "not a directory")


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    proc = slirptrio([*RUN, "-v", "--listen", f"unix:{tmp_path}/nope/g.sock"])
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and len(proc.stderr.splitlines()) > 5
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("slirptrio: error: cannot listen on"), last


def test_version_and_help() -> None:
    from slirptrio import __version__

    version = slirptrio(["--version"])
    assert version.returncode == 0 and version.stdout.strip() == f"slirptrio {__version__}"
    for args in (["--help"], ["run", "--help"], ["ctl", "--help"], ["replay", "--help"]):
        out = slirptrio(args)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert "example" in text, text
        # Plain text: no reStructuredText roles or literals.
        assert "``" not in text and ":func:" not in text and ":class:" not in text, text
        body = text.split("\n\n", 1)[1]  # argparse's usage paragraph may run long
        assert max(len(line) for line in body.splitlines()) <= 100, text


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 20.0) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "slirptrio: ready" in line:
            return lines
    raise AssertionError("no ready line: " + "".join(lines))


def test_sockets_private_under_umask_000(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    ctl, fwd = tmp_path / "c.sock", tmp_path / "f.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "slirptrio", *RUN, "--control", str(ctl),
         f"hostfwd=unix:{fwd}-:22"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env=_env({"XDG_RUNTIME_DIR": str(run_dir)}), umask=0,
    )
    try:
        lines = _wait_ready(proc)
        guest = run_dir / "slirptrio" / "guest.sock"
        assert any(str(guest) in line for line in lines), lines
        assert stat.S_IMODE(os.lstat(run_dir / "slirptrio").st_mode) == 0o700
        for path in (guest, ctl, fwd):
            st = os.lstat(path)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, path
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert not guest.exists() and not ctl.exists()


def test_dgram_socket_private_under_umask_000(tmp_path: Path) -> None:
    local = tmp_path / "st.dgram"
    proc = subprocess.Popen(
        [sys.executable, "-m", "slirptrio", *RUN, "--dgram",
         f"unix:{local},unix:{tmp_path}/qemu.dgram"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        env=_env(), umask=0,
    )
    try:
        _wait_ready(proc)
        assert stat.S_IMODE(os.lstat(local).st_mode) == 0o600
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0

"""The state directory's sessions (issue #21): records, listing without replay, ids, and
retention (oldest first, never kept ones, never those in use, never the user's own paths)."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from slirptrio.cli import statedir
from slirptrio.cli._common import UserError
from tests.test_cli import slirptrio

DEAD_PID = 2**22 + 12345  # above the kernel's pid_max default: never a live process


@pytest.fixture
def state(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.delenv(statedir.ENV_MAX, raising=False)
    d = tmp_path / "slirptrio"
    d.mkdir()
    return d


def make(d: pathlib.Path, n: int, *, size: int = 10_000, pid: int = DEAD_PID,
         record: bool = True, name: str = "n0", **extra: object) -> str:
    """A fake closed session: a journal directory with one segment of ``size`` bytes, a
    pcap, and its record; the n-th minute of 2026-01-01."""
    stem = f"session-20260101-00{n // 60:02d}{n % 60:02d}-{pid}-{name}"
    j = d / f"{stem}.journal"
    j.mkdir()
    (j / "00000001.seg").write_bytes(os.urandom(size))
    (d / f"{stem}.pcap").write_bytes(b"p" * 100)
    if record:
        start = int(time.mktime(time.strptime(f"20260101-00{n // 60:02d}{n % 60:02d}",
                                              "%Y%m%d-%H%M%S")) * 1e9)
        statedir.write_record(str(j), {"start_wall_ns": start, "end_wall_ns": start + 3 * 10**9,
                                       "flows": n, "failures": 1, "netdev": name,
                                       "qemu_command": ["qemu-system-x86_64", "-m", "512"],
                                       "leases": [{"ip": "10.0.2.15", "mac": "52:54:00:12:34:56"}],
                                       **extra})
    return stem[len("session-"):]


def test_list_find_and_ids(state: pathlib.Path) -> None:
    ids = [make(state, i) for i in range(3)]
    found = statedir.sessions()
    assert [s.id for s in found] == ids
    assert found[0].files() == sorted(str(p) for p in state.iterdir()
                                      if p.name.startswith(f"session-{ids[0]}"))
    assert statedir.find("last").id == ids[2]
    assert statedir.find(ids[1]).id == ids[1]
    assert statedir.find("session-" + ids[1]).id == ids[1]
    with pytest.raises(UserError, match="ambiguous"):
        statedir.find("20260101")
    with pytest.raises(UserError, match="no session"):
        statedir.find("20991231")
    assert statedir.resolve_journal("last") == str(state / f"session-{ids[2]}.journal")
    assert statedir.resolve_journal("/some/path.journal") == "/some/path.journal"


def test_prune_removes_the_oldest_first_and_spares_kept_and_live(state: pathlib.Path) -> None:
    ids = [make(state, i, size=100_000) for i in range(6)]
    statedir.set_kept(statedir.find(ids[0]), True)
    live = make(state, 6, size=100_000, pid=os.getpid(), record=False)  # running, no lock file
    locked = make(state, 7, size=100_000)
    lock = state / f"session-{locked}.journal" / "lock"
    lock.write_bytes(b"")
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the journal writer holds it
    try:
        total = sum(s.size for s in statedir.sessions())
        gone = statedir.prune(total - 250_000)
    finally:
        os.close(fd)
    assert [s.id for s in gone] == ids[1:4]
    left = {s.id for s in statedir.sessions()}
    assert left == {ids[0], ids[4], ids[5], live, locked}
    assert not any(p.name.startswith(f"session-{ids[1]}") for p in state.iterdir())
    # With the lock released, the locked session is an ordinary closed one.
    assert not statedir.find(locked).in_use()
    assert statedir.find(live).in_use()


def test_bound_from_option_environment_and_free_space(state: pathlib.Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert statedir.bound("300M") == 300 << 20
    assert statedir.bound("0") is None
    monkeypatch.setenv(statedir.ENV_MAX, "5M")
    assert statedir.bound(None) == 5 << 20
    monkeypatch.setenv(statedir.ENV_MAX, "lots")
    with pytest.raises(ValueError, match=statedir.ENV_MAX):
        statedir.bound(None)
    monkeypatch.delenv(statedir.ENV_MAX)
    st = os.statvfs(state)
    assert statedir.bound(None) == min(statedir.DEFAULT_MAX, st.f_bavail * st.f_frsize // 10)


def test_paths_outside_the_state_directory_are_never_ours(state: pathlib.Path,
                                                         tmp_path: pathlib.Path) -> None:
    mine = tmp_path / "session-20260101-000000-1-n0.journal"
    mine.mkdir()
    assert statedir.in_state_dir(str(mine)) is None
    assert not statedir.remove_if_empty(str(mine), 0) and mine.exists()
    ours = state / "session-20260101-000000-1-n0.journal"
    ours.mkdir()
    assert statedir.in_state_dir(str(ours)) == "session-20260101-000000-1-n0"
    assert statedir.remove_if_empty(str(ours), 0) and not ours.exists()


def test_sessions_command_lists_keeps_removes_and_prunes(state: pathlib.Path) -> None:
    ids = [make(state, i, size=50_000) for i in range(100)]
    env = {"XDG_STATE_HOME": str(state.parent)}
    t = time.monotonic()
    listed = slirptrio(["sessions"], env=env)
    took = time.monotonic() - t
    print(f"\n'slirptrio sessions' with 100 sessions: {took:.2f} s (with interpreter start)")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "START", "DURATION", "SIZE"]
    row = next(ln for ln in lines if ln.startswith(ids[5]))
    assert "3.0s" in row and "52:54:00:12:34:56 10.0.2.15" in row and "qemu-system-x86_64 -m" \
        in row and " 5 " in row
    assert lines[-1].startswith("100 sessions")
    as_json = json.loads(slirptrio(["sessions", "--json"], env=env).stdout)
    assert [r["id"] for r in as_json] == ids and as_json[0]["failures"] == 1
    assert slirptrio(["sessions", "keep", ids[0]], env=env).returncode == 0
    assert json.loads(slirptrio(["sessions", "--json"], env=env).stdout)[0]["kept"] is True
    assert slirptrio(["sessions", "rm", ids[1], ids[2]], env=env).returncode == 0
    pruned = slirptrio(["sessions", "prune", "--state-max", "1M"], env=env)
    assert pruned.returncode == 0, pruned.stderr
    left = [r["id"] for r in json.loads(slirptrio(["sessions", "--json"], env=env).stdout)]
    assert left[0] == ids[0] and left[-1] == ids[-1] and ids[3] not in left
    assert sum(statedir.sessions()[i].size for i in range(len(left))) <= 1 << 20
    bad = slirptrio(["sessions", "show"], env=env)
    assert bad.returncode == 2 and "ID" in bad.stderr
    bad = slirptrio(["sessions", "rm", "nonesuch"], env=env)
    assert bad.returncode == 2 and "no session" in bad.stderr


def test_a_bad_state_max_is_one_line(state: pathlib.Path) -> None:
    proc = slirptrio(["qemu", "--state-max", "lots", "--", sys.executable, "-c", "pass"],
                     env={"XDG_STATE_HOME": str(state.parent)})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--state-max" in proc.stderr


def test_qemu_failing_at_once_leaves_nothing_and_keep_keeps_it(state: pathlib.Path) -> None:
    env = {"XDG_STATE_HOME": str(state.parent)}
    fake = [sys.executable, "-c", "import sys; sys.exit(3)", "-nic", "user"]
    proc = slirptrio(["qemu", "--", *fake], env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "nothing came from the guest" in proc.stderr
    assert list(state.iterdir()) == []
    proc = slirptrio(["qemu", "--keep", "--", *fake], env=env, timeout=120)
    assert proc.returncode == 3
    (kept,) = statedir.sessions()
    assert kept.kept and kept.record["exit_status"] == 3 and kept.record["frames_in"] == 0
    assert subprocess.run([sys.executable, "-m", "slirptrio", "sessions"], env={
        **os.environ, **env}, capture_output=True, text=True, check=True,
        timeout=60).stdout.count("kept") == 1

"""SMB: ``smb=DIR`` as QEMU, served by Samba's smbd through a guest forward on 10.0.2.4.

The guest namespace runs ``smbclient`` against ``//10.0.2.4/qemu``: it lists the share and
reads a file back byte-exact. An smbd still serving a connection when the stack stops is
killed, with its private configuration directory removed; without smbd the command line
says which package to install, in one line, and exits 2.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, Topology, pcap_problems, replay

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("smbclient") is None
        or shutil.which("smbd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None,
        reason="needs Samba's smbd and smbclient (apt install samba smbclient)",
    ),
]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def test_smbclient_reads_the_share(topo: Topology) -> None:
    share = topo.dir / "share"
    share.mkdir()
    body = os.urandom(1 << 20)
    (share / "data.bin").write_bytes(body)
    (share / "notes.txt").write_text("hello from the host\n")
    st, relay = topo.attach("listen", f"smb={share}")
    topo.udhcpc()
    local = topo.dir / "got.bin"
    r = topo.guest_run(
        ["smbclient", "//10.0.2.4/qemu", "-N", "-c", f"ls; get data.bin {local}"], 90
    )
    assert re.search(r"^\s+data\.bin\s+A?N?\s+1048576", r.stdout, re.M), r.stdout
    assert "notes.txt" in r.stdout, r.stdout
    assert local.read_bytes() == body

    # A connection still open when the stack stops: its smbd goes with the stack. (smbclient
    # tries ports 445 and 139 at once and keeps one: each run may start two smbds.)
    def smbd_pids() -> list[int]:
        return [int(m.group(1)) for ln in st.proc.lines("err")
                if (m := re.search(r"smbd pid (\d+) started", ln))]

    first = smbd_pids()
    assert first
    client = topo.guest_spawn(
        "smbclient", ["sh", "-c", "(echo ls; sleep 120) | smbclient //10.0.2.4/qemu -N"]
    )
    # smbclient's output to a pipe is buffered: watch for its smbd instead.
    live: list[int] = []
    deadline = time.monotonic() + 30
    while not live and time.monotonic() < deadline:
        time.sleep(0.5)
        live = [pid for pid in smbd_pids() if pid not in first and group_members(pid)]
    time.sleep(1.0)  # the loser of smbclient's 445/139 race ends; the winner serves on
    live = [pid for pid in live if group_members(pid)]
    assert live, st.proc.output()
    assert all(group_members(pid) == [] for pid in first)  # finished connections' smbds
    confdir = re.search(r"smbd configuration in (\S+)", st.proc.output())
    assert confdir is not None and Path(confdir.group(1)).is_dir()

    relay.stop()
    assert st.stop() == 0, st.proc.output()
    assert all(group_members(pid) == [] for pid in live)
    assert not Path(confdir.group(1)).exists()
    client.stop()
    assert pcap_problems(st.pcap) == []
    result = replay(st.journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


def test_missing_smbd_is_one_line_and_exit_2(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding smbd needs a private mount namespace (root)")
    share = tmp_path / "share"
    share.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PATH="/usr/bin:/bin")
    # In a private mount namespace an empty tmpfs hides /usr/sbin (and /sbin with it).
    script = 'mount -t tmpfs none /usr/sbin && [ ! -e /sbin/smbd ] && exec "$@"'
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
            sys.executable, "-m", "slirptrio", "run", "--no-journal",
            "--listen", f"unix:{tmp_path / 'st.sock'}", f"smb={share}"]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "smbd not found" in lines[0] and "samba" in lines[0], lines
    assert not (tmp_path / "st.sock").exists()

"""TFTP from a real Linux guest: busybox's client, and atftp for RFC 7440 windows and IPv6.

The guest fetches a multi-megabyte file lock-step with 512-byte blocks and with ``-b``, checks
its SHA-256, and is refused a traversal, a write and a missing file with TFTP errors. tshark
decodes the transfers in slirptrio's pcap, the control socket counts them, and the journal
replays identical after the served file was deleted: the file's bytes are in the journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.e2e.harness import (
    REPO_ROOT,
    Topology,
    pcap_fields,
    pcap_problems,
    pcap_protocols,
    replay,
)

pytestmark = pytest.mark.e2e

SIZE = 4 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ctl(topo: Topology, sock: str, cmd: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    argv = [sys.executable, "-m", "slirptrio", "ctl", sock, "--json", cmd]
    out = subprocess.run(
        topo.host_cmd(argv), capture_output=True, text=True, timeout=30, env=env, check=True
    ).stdout
    answer: dict[str, object] = json.loads(out)
    return answer


def test_busybox_tftp_fetch_refusals_and_replay(topo: Topology) -> None:
    root = topo.dir / "tftproot"
    (root / "images").mkdir(parents=True)
    body = os.urandom(SIZE)
    served = root / "images" / "big.bin"
    served.write_bytes(body)
    control = str(topo.dir / "ctl.sock")
    st, relay = topo.attach("listen", f"tftp={root}", extra_args=["--control", control])
    topo.udhcpc()

    for extra in ([], ["-b", "1432"]):
        local = topo.dir / f"got{len(extra)}.bin"
        r = topo.guest_run(
            ["busybox", "tftp", "-g", "-r", "images/big.bin", "-l", str(local), *extra,
             "10.0.2.2"], 120, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert sha(local.read_bytes()) == sha(body)

    def refused(argv: list[str]) -> str:
        r = topo.guest_run(["busybox", "tftp", *argv, "10.0.2.2"], 30, check=False)
        assert r.returncode != 0, r.stdout
        return r.stderr

    dump = str(topo.dir / "nothing")
    assert "(2) Access violation" in refused(["-g", "-r", "../../etc/passwd", "-l", dump])
    assert "(2) Access violation" in refused(["-g", "-r", "/etc/passwd", "-l", dump])
    assert "(1) File not found" in refused(["-g", "-r", "images/nope.bin", "-l", dump])
    assert "(2) Access violation" in refused(["-p", "-l", str(served), "-r", "up.bin"])
    assert not os.path.exists(dump) or os.path.getsize(dump) == 0
    assert not (root / "up.bin").exists()

    counters = ctl(topo, control, "stats")["counters"]
    assert isinstance(counters, dict)
    assert counters["tftp_completed"] == 2
    assert counters["tftp_bytes"] == 2 * SIZE
    assert counters["tftp_errors_sent"] == 4
    info = ctl(topo, control, "info")
    assert info["tftp"] == []  # nothing left running

    relay.stop()
    assert st.stop() == 0, st.proc.output()
    assert pcap_problems(st.pcap) == []
    assert "tftp" in pcap_protocols(st.pcap)
    errors = pcap_fields(st.pcap, "tftp.opcode == 5", ["tftp.error.code"])
    assert sorted(int(row[0]) for row in errors) == [1, 2, 2, 2]
    oack = pcap_fields(st.pcap, "tftp.opcode == 6", ["tftp.option.name", "tftp.option.value"])
    assert any("blksize" in row[0] and "1432" in row[1] for row in oack), oack
    blocks = pcap_fields(st.pcap, "tftp.opcode == 3", ["tftp.block.full"])
    assert max(int(row[0]) for row in blocks) == SIZE // 512 + 1  # with 512-byte blocks

    # The files are host inputs in the journal: replay needs none of them.
    shutil.rmtree(root)
    result = replay(st.journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("atftp") is None, reason="atftp (RFC 7440 client) not installed")
def test_atftp_windowsize(topo: Topology) -> None:
    root = topo.dir / "tftproot"
    root.mkdir()
    body = os.urandom(SIZE)
    (root / "big.bin").write_bytes(body)
    st, relay = topo.attach("listen", f"tftp={root}")
    topo.udhcpc()
    topo.slaac()
    for window, server in ((1, "10.0.2.2"), (16, "10.0.2.2"), (16, "fec0::2")):
        local = topo.dir / f"w{window}.bin"
        r = topo.guest_run(
            ["atftp", "--option", "blksize 1432", "--option", f"windowsize {window}",
             "--option", "tsize", "-g", "-r", "big.bin", "-l", str(local), server],
            120, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert sha(local.read_bytes()) == sha(body)
    relay.stop()
    assert st.stop() == 0, st.proc.output()
    sent = [ln for ln in st.proc.lines("err") if "tftp: sent big.bin" in ln]
    assert len(sent) == 3, sent
    assert "windowsize 1" in sent[0] and "windowsize 16" in sent[1], sent
    # Over IPv6 the block is the 1432 asked for too (the clamp there is MTU - 52 = 1448).
    assert "to [fec0:" in sent[2] and "blksize 1432, windowsize 16" in sent[2], sent
    oack = pcap_fields(st.pcap, "tftp.opcode == 6", ["tftp.option.name", "tftp.option.value"])
    assert any("windowsize" in row[0] and "16" in row[1] for row in oack), oack
    assert pcap_problems(st.pcap) == []
    result = replay(st.journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr

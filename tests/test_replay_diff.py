"""``replay --diff``: every recorded input through this build, every differing effect reported.

The oracle for "which frames change" is computed from the journal itself, independently of
the diff: lowering the IPv4 TTL must change exactly the IPv4 frames to the guest (and in each
only the TTL, the header checksum and, where the journal kept a digest, the frame's CRC).
"""

from __future__ import annotations

import collections
import pathlib
import shutil
import subprocess
import sys

import pytest

from replay import diff
from slirptrio.core.events import SendFrame, SendFrames
from slirptrio.journal import is_digest, open_journal
from slirptrio.wire import ipv4
from slirptrio.wire.framing import split_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "captures"
TCP_HTTP = CAPTURES / "tcp-http.journal"


def _ipv4_frames_to_guest(journal: pathlib.Path) -> collections.Counter[int]:
    """Record number -> IPv4 frames the journal says went to the guest in it."""
    out: collections.Counter[int] = collections.Counter()
    j = open_journal(journal)
    for rec in j.records:
        for eff in rec.effects:
            frames: list[bytes] = []
            if eff[0] == SendFrame.TAG:
                frames = [bytes(eff[1][3] if is_digest(eff[1]) else eff[1])]
            elif eff[0] == SendFrames.TAG and is_digest(eff[1]):
                # A run kept as a digest is one item to the diff: its head shows the first frame.
                frames = [bytes(eff[1][3])[4:]]
            elif eff[0] == SendFrames.TAG:
                frames = [bytes(f) for f in split_run(eff[1])]
            out[rec.seq] += sum(1 for f in frames if f[12:14] == b"\x08\x00")
    return +out


def test_captures_diff_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert diff.main(str(CAPTURES)) == 0
    lines = capsys.readouterr().out.splitlines()
    journals = diff.journals_in(CAPTURES)
    assert len(lines) == len(journals) >= 9  # one line each, format 2 ones included
    assert all(": identical, " in line for line in lines), lines


def test_lower_ttl_changes_exactly_the_ipv4_frames_to_the_guest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = _ipv4_frames_to_guest(TCP_HTTP)
    assert sum(expected.values()) >= 10
    monkeypatch.setattr(ipv4, "DEFAULT_TTL", 63)
    result = diff.diff_journal(TCP_HTTP)
    assert result.constants is not None
    assert [d[0] for d in result.constants.differ] == ["wire.ipv4.DEFAULT_TTL"]
    assert result.total == len(result.changes) == sum(expected.values())
    assert collections.Counter(c.seq for c in result.changes) == expected
    assert result.differing_records == len(expected)
    for c in result.changes:
        assert c.kind == "changed" and c.what in ("frame to guest", "run of frames to guest")
        names = {n for n, _a, _b in c.fields}
        assert {"ip.ttl", "ip.sum"} <= names <= {"ip.ttl", "ip.sum", "crc"}, c
        assert ("ip.ttl", 64, 63) in c.fields
        assert c.flow.startswith(("tcp 10.0.2.15:", "udp 10.0.2.15:68 <> 10.0.2.2:67"))
    report = "\n".join(diff.format_report(result, "J"))
    assert report.startswith("MISMATCH: the journal's core constants differ")
    assert "wire.ipv4.DEFAULT_TTL: journal 64, this build 63" in report
    assert f"DIFFERENT: {result.total} effects differ in {len(expected)} of" in report


def test_changed_window_is_decoded_field_by_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from slirptrio.core import tcp

    monkeypatch.setattr(tcp, "BUFFER_SIZE", 128 * 1024)
    result = diff.diff_journal(TCP_HTTP)
    assert not result.identical
    fields = {n for c in result.changes for n, _a, _b in c.fields}
    # the window scale option of each SYN-ACK (03 -> 02) and the windows that follow
    assert "tcp.opts" in fields and "tcp.win" in fields
    assert "ip.ttl" not in fields and "bytes" not in fields
    assert any(c.what == "TcpRecvCredit" for c in result.changes)


def test_budget_keeps_examples_counts_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ipv4, "DEFAULT_TTL", 1)
    result = diff.diff_journal(TCP_HTTP, budget=5)
    assert len(result.changes) == 5 and result.total > 5
    assert sum(result.groups.values()) == result.total


def test_folder_one_line_each_and_exit_status(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(CAPTURES / "dhcp-ping.journal", tmp_path / "a.journal")
    shutil.copytree(CAPTURES / "tcp-http.journal", tmp_path / "b.journal")
    (tmp_path / "broken.journal").write_bytes(b"not a journal")
    monkeypatch.setattr(ipv4, "DEFAULT_TTL", 63)
    assert diff.main(str(tmp_path)) == 2  # the worst: one unreadable
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{tmp_path}/a.journal: DIFFERENT, ")
    assert lines[1].startswith(f"{tmp_path}/b.journal: DIFFERENT, ")
    assert "(other constants)" in lines[1]
    assert lines[2].startswith(f"{tmp_path}/broken.journal: UNREADABLE")
    (tmp_path / "broken.journal").unlink()
    monkeypatch.setattr(ipv4, "DEFAULT_TTL", 64)
    assert diff.main(str(tmp_path)) == 0


def test_cli_flag() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "slirptrio", "replay", *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    ok = run("--diff", str(TCP_HTTP))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("identical: ")
    bad = run("--diff", "--pcap", "x.pcap", str(TCP_HTTP))
    assert bad.returncode == 2 and "--pcap: not with --diff" in bad.stderr

"""Journal writing, reading, replay, divergence reports and pcap export."""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Callable
from typing import Any

import dpkt
import pytest

from replay.engine import format_divergence, replay_journal
from replay.engine import main as replay_main
from slirptrio.config import parse_user_options
from slirptrio.core.events import GuestFrame, GuestLink, SendFrame, Tick
from slirptrio.journal import FORMAT_VERSION, JournalError, open_journal
from tests import guestframes as gf
from tests.journals import recording, rewrite, segments

SESSION = [
    GuestLink(True),
    GuestFrame(gf.dhcp(1)),
    GuestFrame(gf.dhcp(3, requested="10.0.2.15", server="10.0.2.2")),
    GuestFrame(gf.arp_request("10.0.2.2")),
    GuestFrame(gf.icmp_echo("10.0.2.2", seq=1)),
    Tick(),
    GuestFrame(gf.icmp_echo("10.0.2.3", seq=2)),
    GuestFrame(b"\x00garbage"),
    GuestLink(False),
]


def record(path: pathlib.Path, options: str = "hostname=vm1", seed: int = 7) -> int:
    config = parse_user_options(options)
    frames = 0
    with recording(path, config, seed) as door:
        for i, ev in enumerate(SESSION):
            frames += sum(isinstance(e, SendFrame) for e in door.step(ev, i * 1_000_000))
    return frames


def test_record_and_replay_identical(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.journal"
    assert record(path) >= 5
    result = replay_journal(path)
    assert result.identical
    assert result.records == len(SESSION)


def test_replay_cli_prints_identical(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.journal"
    record(path)
    assert replay_main(str(path)) == 0
    assert capsys.readouterr().out.startswith(f"identical: {len(SESSION)} records")


def _rewrite(path: pathlib.Path, change: Callable[[list[Any]], None]) -> None:
    """Change the objects of the journal's (only) segment: header, snapshot, records."""
    rewrite(path, lambda _seg, items: change(items))


def test_changed_input_is_reported_as_divergence(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.journal"
    record(path)

    def bump_ping_seq(items: list[Any]) -> None:
        rec = items[2 + 4]  # the first ping
        assert isinstance(rec, list)
        frame = bytearray(rec[2][1])
        frame[14 + 20 + 7] ^= 1  # ICMP sequence number; checksum now wrong -> dropped
        rec[2][1] = bytes(frame)

    _rewrite(path, bump_ping_seq)
    result = replay_journal(path)
    assert result.divergence is not None
    assert result.divergence.index == 4
    report = format_divergence(result)
    assert "DIVERGED at record 4" in report
    assert "icmp 10.0.2.15 > 10.0.2.2" in report
    assert "expected: frame to guest:" in report and "actual:   (nothing)" in report
    assert "context" in report


def test_changed_first_snapshot_is_a_state_divergence(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.journal"
    record(path)

    def change_ip_id(items: list[Any]) -> None:
        items[1]["stack"]["state"]["_ip_id"] += 1

    _rewrite(path, change_ip_id)
    result = replay_journal(path)
    # The session's first snapshot must be a fresh core's: replay checks it before record 0.
    assert result.divergence is not None and result.divergence.kind == "state"
    assert "_ip_id" in format_divergence(result)


def test_truncated_tail_is_tolerated(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.journal"
    record(path)
    (seg,) = segments(path)
    os.truncate(seg, seg.stat().st_size - 7)
    result = replay_journal(path)
    assert result.identical
    assert result.records == len(SESSION) - 1
    assert result.truncated_bytes > 0


def test_newer_format_refused(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.journal"
    record(path)

    def newer(items: list[Any]) -> None:
        header = items[0]
        assert isinstance(header, dict)
        header["format"] = FORMAT_VERSION + 1

    _rewrite(path, newer)
    with pytest.raises(JournalError, match="newer"):
        open_journal(path)
    assert replay_main(str(path)) == 2
    assert "newer than this slirptrio" in capsys.readouterr().err


def test_not_a_journal(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"hello world")
    with path.open("rb") as f, pytest.raises(JournalError):
        open_journal(f)


def test_pcap_export(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "s.journal"
    out_frames = record(path)
    pcap = io.BytesIO()
    result = replay_journal(path, pcap_out=pcap)
    assert result.identical
    pcap.seek(0)
    packets = list(dpkt.pcap.Reader(pcap))
    in_frames = sum(isinstance(e, GuestFrame) for e in SESSION)
    assert len(packets) == in_frames + out_frames == result.frames
    reader_snaplen = dpkt.pcap.Reader(io.BytesIO(pcap.getvalue())).snaplen
    assert reader_snaplen >= 65536 + 4096
    ts0 = packets[0][0]
    assert int(ts0) == 1_700_000_000  # origin + t, nanosecond resolution

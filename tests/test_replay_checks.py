"""Honest headers and honest replays: version and constants checked before any record, core
exceptions journaled and reproduced, recorded snapshots checked against the replayed core."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import pytest

from replay.engine import (
    EXIT_DIVERGED,
    EXIT_IDENTICAL,
    EXIT_MISMATCH,
    Target,
    format_divergence,
    main,
    parse_target,
    replay_journal,
)
from slirptrio import config as config_module
from slirptrio.cli._common import format_size, parse_size
from slirptrio.config import parse_user_options
from slirptrio.core import constants, dhcp
from slirptrio.core.events import CoreError, GuestFrame, GuestLink, Tick
from slirptrio.core.stack import Stack
from slirptrio.door import Door, error_message
from slirptrio.journal import writer as jw
from tests import guestframes as gf
from tests.journals import recording, rewrite, segments

CONFIG = parse_user_options("")
SESSION = [
    GuestLink(True),
    GuestFrame(gf.dhcp(1)),
    GuestFrame(gf.dhcp(3, requested="10.0.2.15", server="10.0.2.2")),
    GuestFrame(gf.icmp_echo("10.0.2.2", seq=1)),
    GuestFrame(gf.icmp_echo("10.0.2.2", seq=2)),
    GuestFrame(gf.icmp_echo("10.0.2.3", seq=3)),
    Tick(),
]


def record(path: pathlib.Path) -> None:
    with recording(path, CONFIG, 9) as door:
        for i, ev in enumerate(SESSION):
            door.step(ev, i * 1_000_000)


# ---------------------------------------------------------------------------- constants


def test_header_records_every_core_constant(tmp_path: pathlib.Path) -> None:
    record(tmp_path / "j")
    result = replay_journal(tmp_path / "j")
    assert result.header.constants is not None
    assert result.header.constants["core.tcp.RTO_MAX_NS"] == 60 * 10**9
    assert result.header.constants["core.dhcp.DHCP_LEASE_TIME"] == 86400
    assert result.constants is not None and result.constants.same


def test_gathering_finds_a_new_modules_constants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dhcp, "NEW_LIMIT", 7, raising=False)
    monkeypatch.setattr(dhcp, "_private", 7, raising=False)
    got = constants.gather()
    assert got["core.dhcp.NEW_LIMIT"] == 7 and "core.dhcp._private" not in got


def test_hand_changed_constant_is_a_mismatch_not_a_divergence(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j"
    record(path)

    def change(_seg: pathlib.Path, items: list[Any]) -> None:
        items[0]["constants"]["core.dhcp.DHCP_LEASE_TIME"] = 3600

    rewrite(path, change)
    assert main(str(path)) == EXIT_MISMATCH
    out = capsys.readouterr().out
    mismatch = out.index("MISMATCH: the journal's core constants differ")
    assert "core.dhcp.DHCP_LEASE_TIME: journal 3600, this build 86400" in out
    # said at once, before the divergence it explains
    assert mismatch < out.index("DIVERGED at record") < out.rindex("MISMATCH: this journal")
    assert vars(dhcp)["DHCP_LEASE_TIME"] == 86400, "the build's value is back after the replay"


def test_journal_of_another_build_replays_with_its_own_constants(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "j"
    with monkeypatch.context() as m:  # "an older build" leased for an hour
        m.setattr(dhcp, "DHCP_LEASE_TIME", 3600)
        m.setattr(config_module, "DHCP_LEASE_TIME", 3600)
        record(path)
    assert main(str(path)) == EXIT_IDENTICAL
    out = capsys.readouterr().out
    assert "core.dhcp.DHCP_LEASE_TIME: journal 3600, this build 86400" in out
    assert "replaying with the journal's values" in out and "identical:" in out


def test_unknown_constant_is_named(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
                                   ) -> None:
    path = tmp_path / "j"
    record(path)

    def change(_seg: pathlib.Path, items: list[Any]) -> None:
        items[0]["constants"]["core.tftp.BLOCK_SIZE"] = 512
        del items[0]["constants"]["core.tcp.DELACK_NS"]
        items[0]["version"] = "0.0.9"

    rewrite(path, change)
    assert main(str(path)) == EXIT_IDENTICAL
    out = capsys.readouterr().out
    assert "note: recorded by slirptrio 0.0.9" in out
    assert "core.tftp.BLOCK_SIZE: recorded by the journal, unknown to this build" in out
    assert "core constants are new in this build and not in the journal (core.tcp.DELACK_NS" in out


# ---------------------------------------------------------------------------- exceptions


class Boom(RuntimeError):
    pass


def _explode_on_ping(monkeypatch: pytest.MonkeyPatch, seq: int) -> None:
    original = Stack._icmp

    def icmp(self: Stack, hdr: Any, body: Any, now_ns: int) -> None:
        if int.from_bytes(bytes(body[6:8]), "big") == seq:
            raise Boom(f"injected at ping {seq} ({object()!r})")
        original(self, hdr, body, now_ns)

    monkeypatch.setattr(Stack, "_icmp", icmp)


def test_core_exception_is_journaled_and_replayed_at_the_same_record(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "j"
    caplog.set_level(logging.ERROR, "slirptrio.door")
    with monkeypatch.context() as m:
        _explode_on_ping(m, 2)
        record(path)
        live = [r for r in caplog.records if "core raised Boom on record 4" in r.getMessage()]
        assert len(live) == 1 and live[0].exc_info is not None  # logged with its traceback
        caplog.clear()
        result = replay_journal(path)
        assert result.identical
        assert result.exceptions == [(4, "Boom", "injected at ping 2 (<object object at 0x?>)")]
        # in replay too: the exception shows with its traceback
        assert any(r.exc_info for r in caplog.records if "core raised Boom" in r.getMessage())
        assert main(str(path)) == EXIT_IDENTICAL
        assert "core exception at record 4: Boom: injected at ping 2" in capsys.readouterr().out
    # The same journal replayed by a core without the bug: a divergence at that record.
    result = replay_journal(path)
    assert result.divergence is not None and result.divergence.record.seq == 4
    report = format_divergence(result)
    assert "expected: effect 60('Boom'" in report or "CoreError" in report, report


def test_exception_in_replay_only_is_a_divergence(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j"
    record(path)
    _explode_on_ping(monkeypatch, 3)
    result = replay_journal(path)
    assert result.divergence is not None and result.divergence.record.seq == 5
    assert "CoreError" in format_divergence(result)


def test_door_keeps_going_after_an_exception() -> None:
    stack = Stack(CONFIG, 1)
    door = Door(stack)

    def boom(*_a: Any) -> None:
        raise ValueError("bad")

    stack.handle = boom  # type: ignore[method-assign, assignment]
    assert door.step(Tick(), 5) == [CoreError("ValueError", "bad")]
    assert door.seq == 1 and stack.counters["core_exceptions"] == 1


def test_error_message_hides_addresses_and_is_bounded() -> None:
    assert error_message(ValueError(f"{object()!r}")) == "<object object at 0x?>"
    assert len(error_message(ValueError("x" * 5000))) == 500


# ------------------------------------------------------------------------ state checks


def test_tampered_later_snapshot_is_a_state_divergence(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    with recording(path, CONFIG, 9, journal_max=8 * jw.MIN_SEGMENT_BYTES) as door:
        for i in range(3000):
            door.step(GuestFrame(gf.icmp_echo("10.0.2.2", seq=i, payload=bytes(300))), i)
    segs = segments(path)
    assert len(segs) >= 3

    def change(seg: pathlib.Path, items: list[Any]) -> None:
        if seg == segs[2]:
            items[1]["stack"]["state"]["_ip_id"] ^= 1

    rewrite(path, change)
    result = replay_journal(path)
    assert result.divergence is not None and result.divergence.kind == "state"
    report = format_divergence(result)
    assert "state differs from the snapshot" in report and "_ip_id" in report, report


# ------------------------------------------------------------------------- CLI parsing


@pytest.mark.parametrize(
    ("text", "size"),
    [("64M", 64 << 20), ("1G", 1 << 30), ("512k", 512 << 10), ("1000", 1000),
     ("1.5G", 3 << 29), ("64MiB", 64 << 20), ("0", None), ("unlimited", None)],
)
def test_parse_size(text: str, size: int | None) -> None:
    assert parse_size(text) == size
    if size is not None and size % 1024 == 0:
        assert parse_size(format_size(size)) == size


@pytest.mark.parametrize("text", ["", "M", "-1M", "12X", "lots"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_target_forms() -> None:
    origin = 1_700_000_000 * 10**9
    assert parse_target("#12", origin) == Target(seq=12)
    assert parse_target("12", origin) == Target(seq=12)
    assert parse_target("1h2m3.5s", origin) == Target(t_ns=3_723_500_000_000)
    assert parse_target("250ms", origin) == Target(t_ns=250_000_000)
    import datetime

    later = datetime.datetime.fromtimestamp(1_700_000_090.25)
    wall = later.strftime("%Y-%m-%dT%H:%M:%S") + ".25"
    assert parse_target(wall, origin) == Target(t_ns=90_250_000_000)
    assert parse_target(later.strftime("%H:%M:%S"), origin) == Target(t_ns=90 * 10**9)
    with pytest.raises(ValueError):
        parse_target("soon", origin)


def test_replay_cli_window_and_pcap(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    from slirptrio.cli import main as cli_main

    path = tmp_path / "j"
    record(path)
    out = tmp_path / "w.pcap"
    assert cli_main(["replay", str(path), "--from", "#3", "--until", "5ms", "--pcap", str(out),
                     "--no-progress"]) == EXIT_IDENTICAL
    text = capsys.readouterr().out
    assert "window: records 3..4" in text, text
    from slirptrio.wire.pcap import read_pcap

    with out.open("rb") as f:
        assert len(list(read_pcap(f))) == 4  # two pings and their replies


def test_progress_is_reported(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    with recording(path, CONFIG, 9) as door:
        for i in range(5000):
            door.step(Tick(), i)
    seen: list[tuple[int, int, int]] = []
    result = replay_journal(path, progress=lambda *a: seen.append(a))
    assert result.identical and seen and seen[-1][2] <= 5000 and seen[0][1] > 0


def test_replay_exit_code_on_divergence(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "j"
    record(path)

    def change(_seg: pathlib.Path, items: list[Any]) -> None:
        items[2 + 3][2][1] = gf.icmp_echo("10.0.2.2", seq=9)

    rewrite(path, change)
    assert main(str(path)) == EXIT_DIVERGED

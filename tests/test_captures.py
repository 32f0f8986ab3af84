"""Every recorded real session in captures/ replays identical, and so do the journals of earlier
formats kept in captures/format3/ and captures/format2/ (old-format replay must keep working)."""

from __future__ import annotations

import pathlib

import pytest

from replay.engine import replay_journal
from slirptrio.journal import FORMAT_VERSION, open_journal

HERE = pathlib.Path(__file__).parent.parent / "captures"
CAPTURES = sorted(HERE.glob("*.journal"))
OLD = sorted((HERE / "format2").glob("*.journal"))
FORMAT3 = sorted((HERE / "format3").glob("*.journal"))


def test_there_are_recorded_sessions() -> None:
    assert len(CAPTURES) >= 4 and len(OLD) >= 1 and len(FORMAT3) >= 4


@pytest.mark.parametrize("journal", CAPTURES, ids=[p.stem for p in CAPTURES])
def test_capture_replays_identical(journal: pathlib.Path) -> None:
    assert open_journal(journal).format == FORMAT_VERSION
    result = replay_journal(journal)
    assert result.divergence is None, result
    assert result.identical and result.records > 5 and result.frames > 5
    # recorded by this build or an earlier one: no constant changed or went away
    assert result.constants is not None and not result.constants.conflict


@pytest.mark.parametrize("journal", OLD, ids=[p.stem for p in OLD])
def test_old_format_capture_replays_identical(journal: pathlib.Path) -> None:
    assert open_journal(journal).format == 2
    result = replay_journal(journal)
    assert result.identical and result.records > 5 and result.frames > 5
    assert result.constants is None  # format 2 recorded none


@pytest.mark.parametrize("journal", FORMAT3, ids=[p.stem for p in FORMAT3])
def test_format3_capture_replays_identical(journal: pathlib.Path) -> None:
    # recorded before record CRCs (format 4), by an earlier build of this issue round
    assert open_journal(journal).format == 3
    result = replay_journal(journal)
    assert result.identical and result.records > 5 and result.frames > 5
    assert result.constants is not None and not result.constants.conflict

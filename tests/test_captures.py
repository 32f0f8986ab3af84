"""Every recorded real session in captures/ replays identical, and so do the journals of the
previous format kept in captures/format2/ (old-format replay must keep working)."""

from __future__ import annotations

import pathlib

import pytest

from replay.engine import replay_journal
from slirptrio.journal import FORMAT_VERSION, open_journal

HERE = pathlib.Path(__file__).parent.parent / "captures"
CAPTURES = sorted(HERE.glob("*.journal"))
OLD = sorted((HERE / "format2").glob("*.journal"))


def test_there_are_recorded_sessions() -> None:
    assert len(CAPTURES) >= 4 and len(OLD) >= 1


@pytest.mark.parametrize("journal", CAPTURES, ids=[p.stem for p in CAPTURES])
def test_capture_replays_identical(journal: pathlib.Path) -> None:
    # Recorded in format 3 (before record CRCs) and kept so: they prove format 3 replays; the
    # current format is written and replayed by tests/test_journal_*.py.
    assert open_journal(journal).format in (3, FORMAT_VERSION)
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

"""Every recorded real session in captures/ replays identical."""

from __future__ import annotations

import pathlib

import pytest

from replay.engine import replay_journal

CAPTURES = sorted((pathlib.Path(__file__).parent.parent / "captures").glob("*.journal"))


def test_there_are_recorded_sessions() -> None:
    assert len(CAPTURES) >= 2


@pytest.mark.parametrize("journal", CAPTURES, ids=[p.stem for p in CAPTURES])
def test_capture_replays_identical(journal: pathlib.Path) -> None:
    with journal.open("rb") as f:
        result = replay_journal(f)
    assert result.divergence is None, result
    assert result.identical and result.records > 5 and result.frames > 5

"""The soak in CI: two minutes of the mixed workload (benchmarks/soak.py) with a journal that
rotates every few seconds; every step works, the stack's memory and descriptors stay bounded,
and the journal replays identical from every segment's snapshot."""

from __future__ import annotations

import io

import pytest

from benchmarks.soak import JOURNAL_MAX, soak, summary

pytestmark = pytest.mark.e2e


def test_soak_two_minutes(e2e_machine: None) -> None:
    log = io.StringIO()
    fig = soak(2.0, log, sample_s=5.0, check_s=40.0)
    text = "\n".join(summary(fig))
    print(text)
    assert not fig.failures, text + log.getvalue()[-5000:]
    assert fig.exit_code == 0, text
    assert fig.recorder_failures == 0 and fig.journal_gaps == 0, text
    # every kind of step ran, more than once
    assert fig.cycles >= 2 and fig.steps >= 2 * 15, text
    # the journal rotated many times within its bound, and every replay was identical
    assert fig.segments_rotated >= 10, text
    assert 0 < fig.disk_max <= JOURNAL_MAX, text
    assert fig.checks >= 3 and fig.replays >= fig.checks, text
    assert fig.replays == fig.replays_identical and not fig.replay_problems, text
    # bounded: no descriptor or memory growth out of proportion over two minutes
    assert fig.fds_max < 400 and fig.rss_kib_max < 400 * 1024, text

"""The switch fuzzer (tests/fuzz_ports.py), CI-sized: ports come and go, frames from all."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.fuzz_ports import check


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    logger = logging.getLogger("slirptrio")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def test_multi_port_sessions_hold_their_bounds_snapshot_and_replay() -> None:
    totals: dict[str, int] = {}
    for seed in range(12):
        for k, v in check(seed, 250).items():
            totals[k] = totals.get(k, 0) + v
    # proof the sessions reached what they are for
    for key in ("switch_flooded", "switch_forwarded", "switch_same_port", "switch_port_down",
                "switch_mac_moved", "switch_isolated", "arp_replies", "tcp_guest_departed"):
        assert totals.get(key, 0) > 0, (key, sorted(totals))

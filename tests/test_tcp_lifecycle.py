"""The TCP entry lifecycle: its table, its diagram, and that the tests walk all of it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import slirptrio.core.tcp as tcp
from slirptrio.core.tcp.lifecycle import START, TRANSITIONS, Phase, diagram

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The TCP unit tests and the recorded sessions: together they must take every transition.
WALKERS = [
    "tests/test_tcp_core.py",
    "tests/test_tcp_inbound.py",
    "tests/test_tcp_budgets.py",
    "tests/test_tcp_probes.py",
    "tests/test_tcp_lifecycle_paths.py",
    "tests/test_captures.py",
]


def test_docstring_diagram_is_the_table() -> None:
    doc = tcp.__doc__ or ""
    block = doc.split("to the table)::\n\n", 1)[1].split("\n\n", 1)[0]
    assert block == diagram()


def test_every_phase_is_reachable_and_can_end() -> None:
    reached = set(START.values())
    while True:
        more = {dst for (src, _), dst in TRANSITIONS.items() if src in reached} - reached
        if not more:
            break
        reached |= more
    assert reached == set(Phase)
    ending = {Phase.CLOSED}
    while True:
        more = {src for (src, _), dst in TRANSITIONS.items() if dst in ending} - ending
        if not more:
            break
        ending |= more
    assert ending == set(Phase)
    assert not any(src is Phase.CLOSED for src, _ in TRANSITIONS)


def test_the_tests_take_every_transition(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "taken"
    env = {**os.environ, "SLIRPTRIO_RECORD_TRANSITIONS": str(out)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *WALKERS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    taken = {tuple(line.split()) for line in out.read_text().splitlines()}
    table = {(p.name, t.name) for p, t in TRANSITIONS}
    assert taken <= table  # (strict mode raises first; this names the culprit)
    assert sorted(table - taken) == []


def test_a_transition_the_table_lacks_is_refused() -> None:
    import collections

    import pytest

    from slirptrio.core.tcp import lifecycle
    from slirptrio.core.tcp.conn import _Conn, state_name
    from slirptrio.core.tcp.lifecycle import Trigger

    c = _Conn(1, (b"\x0a\x00\x02\x0f", 1, b"\x01\x02\x03\x04", 2), "h", 2, Trigger.GUEST_SYN)
    counters: collections.Counter[str] = collections.Counter()
    with pytest.raises(AssertionError, match="no transition from SYN_PENDING on GUEST_ACK"):
        lifecycle.move(c, Trigger.GUEST_ACK, counters)
    lifecycle.strict = False
    try:
        assert not lifecycle.move(c, Trigger.GUEST_ACK, counters)
    finally:
        lifecycle.strict = True
    assert c.phase is Phase.SYN_PENDING
    assert counters == {"tcp_bad_transition": 1}
    assert lifecycle.move(c, Trigger.CONNECTED, counters)
    assert state_name(c) == "SYN_RECEIVED"

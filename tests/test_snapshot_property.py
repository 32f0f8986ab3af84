"""The heart of snapshots: after any record, a core restored from a snapshot behaves exactly
as the one it was taken from, for every later input.

For every recorded session in captures/ and for Hypothesis-generated sessions, the test takes a
snapshot after each record k (through msgpack, as the journal stores it), restores it into a
fresh core, and requires (1) the same object graph as the original (types, values, container
order, sharing; derived indexes aside), (2) the same snapshot, and (3) the same effects, byte
for byte, for every record after k to the end. End-to-end sessions get the same check in
tests/e2e/test_recorder.py.
"""

from __future__ import annotations

import collections
import pathlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slirptrio.config import Config
from slirptrio.core.events import Event, decode_event
from slirptrio.core.stack import Stack
from slirptrio.journal import compact, open_journal
from tests import streams
from tests.snapshots import plain_roundtrip, restored, run, shape

HERE = pathlib.Path(__file__).parent.parent / "captures"
CAPTURES = sorted([*HERE.glob("*.journal"), *(HERE / "format2").glob("*.journal")])


def check_every_prefix(
    config: Config, seed: int, events: list[tuple[int, Event]], expected: list[Any] | None = None,
    normalize: Any = None,
) -> None:
    """Snapshot after every k, restore, and compare with the original to the end."""
    if expected is None:
        expected = run(Stack(config, seed), events)
    norm = normalize or (lambda effects: effects)
    original = Stack(config, seed)
    for k in range(len(events) + 1):
        if k:
            run(original, events[k - 1 : k])
        copy = restored(original)
        assert shape(copy) == shape(original), f"restored graph differs after record {k}"
        assert plain_roundtrip(copy.snapshot()) == plain_roundtrip(original.snapshot())
        rest = run(copy, events[k:])
        for j, (got, want) in enumerate(zip(rest, expected[k:], strict=True)):
            assert norm(got) == want, f"snapshot after record {k}: record {k + j} differs"


@pytest.mark.parametrize("journal", CAPTURES, ids=[f"{p.parent.name}/{p.stem}" for p in CAPTURES])
def test_capture_every_prefix(journal: pathlib.Path) -> None:
    j = open_journal(journal)
    records = list(j.records)
    config = Config.from_dict(j.header.config)
    events = [(r.t_ns, decode_event(r.event)) for r in records]
    expected = [[compact(list(e)) for e in r.effects] for r in records]
    check_every_prefix(config, j.header.seed, events, expected,
                       normalize=lambda effs: [compact(e) for e in effs])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    acts=streams.actions(),
    options=st.sampled_from(streams.OPTIONS),
    seed=st.integers(0, 2**63 - 1),
)
def test_generated_session_every_prefix(
    acts: list[streams.Action], options: str, seed: int
) -> None:
    session = streams.drive(acts, options, seed)
    check_every_prefix(session.config, seed, session.events)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(acts=streams.actions(40, 60), seed=st.integers(0, 2**63 - 1))
def test_long_generated_session_every_prefix(acts: list[streams.Action], seed: int) -> None:
    session = streams.drive(acts, "", seed)
    check_every_prefix(session.config, seed, session.events)


def test_generated_sessions_hold_both_families_alike() -> None:
    """The generator feeds the property above IPv6 state as often as IPv4 state: flows of
    each kind left in the core, NDP neighbours, TFTP transfers."""
    held: collections.Counter[str] = collections.Counter()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(acts=streams.actions(), options=st.sampled_from(["", streams.OPTIONS[-1]]))
    def sample(acts: list[streams.Action], options: str) -> None:
        session = streams.drive(acts, options, 7)
        stack = Stack(session.config, 7)
        run(stack, session.events)
        kinds = {f"udp{len(f.hdr.src)}" for f in stack.udp._by_id.values() if f.hdr}
        kinds |= {f"echo{len(f.hdr.src)}" for f in stack.echo._lru.values()}
        kinds |= {f"tcp{len(c.guest_ip)}" for c in stack.tcp._by_flow.values()}
        kinds |= {f"tftp{len(s.ip)}" for s in stack.tftp._sessions.values()}
        kinds |= {f"frag{len(k[0])}" for k in stack._reasm._queues}
        kinds |= {"ndp"} if stack._ndp.neighbors else set()
        held.update(kinds)

    sample()
    for kind in ("udp", "echo", "tcp", "tftp", "frag"):  # comparable counts (random ones)
        assert held[f"{kind}16"] * 3 >= held[f"{kind}4"] and held[f"{kind}16"] > 0, held
    assert held["ndp"] > 0, held

"""The lean path for a host read toward the guest (TcpNat._lean_read) against the general
path it stands in for: the same segments, the same effects and the same core state
(snapshot), step by step, with the lean path taken often (request/response exchanges with
random sizes, windows, credit, held sends, memory pressure) and in whole generated sessions."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slirptrio.core.events import TcpConnected, TcpData, TcpDataSent, TcpEof, TcpSend, TcpSent
from slirptrio.core.stack import Stack
from slirptrio.core.tcp import TcpNat
from slirptrio.wire.tcp import ACK, FIN, PSH, SYN
from tests import streams
from tests.snapshots import plain_roundtrip
from tests.test_tcp_core import GISN, MS, Harness

Op = tuple[str, int, int]


class _Pair:
    """The same inputs to a lean and a general TcpNat; every output compared at once."""

    def __init__(self, **kw: Any) -> None:
        self.lean = Harness(**kw)
        self.general = Harness(**kw)
        self.general.nat.lean = False
        self.taken = 0
        original = self.lean.nat._lean_read

        def counted(*args: Any) -> bool:
            took = original(*args)
            self.taken += took
            return took

        self.lean.nat._lean_read = counted  # type: ignore[method-assign,assignment]

    def both(self, what: str, *args: Any, **kw: Any) -> None:
        for h in (self.lean, self.general):
            getattr(h, what)(*args, **kw)
        self.check()

    def check(self) -> None:
        assert self.lean.sent == self.general.sent
        assert self.lean.effects == self.general.effects
        assert self.lean.counters == self.general.counters
        assert plain_roundtrip(self.lean.nat.snapshot_state()) == plain_roundtrip(
            self.general.nat.snapshot_state()
        )

    @property
    def nat(self) -> TcpNat:
        return self.lean.nat


def exchange(ops: list[Op], budget: int | None) -> int:
    """Play ``ops`` on one connection; how many reads took the lean path."""
    p = _Pair(mem_budget=budget)
    p.both("send", SYN, GISN, mss=1460, wscale=7)
    flow = max(p.nat._by_flow)
    p.both("host", TcpConnected(flow))
    c = p.nat._by_flow[flow]
    p.both("send", ACK, GISN + 1, c.snd_nxt)
    gseq = GISN + 1
    unsent = 0  # bytes the core sent to the host whose report is still due
    for kind, a, b in ops:
        p.both("advance", (b % 4) * MS)  # inputs arrive spread out; timers fire on time
        c = p.nat._by_flow.get(flow)  # type: ignore[assignment]
        if c is None:
            break
        if kind == "guest":  # data (or a pure ACK) acking some or all of what we sent
            n = (0, 1, 100, 1460, 3000)[a % 5]
            acked = c.snd_una + (c.snd_nxt - c.snd_una) * (b % 3) // 2
            window = (0, 1, 200, 1460, 65535)[b % 5] if b % 7 == 0 else 65535
            p.both("send", ACK | PSH if n else ACK, gseq, acked, b"q" * n, window)
            gseq += n
            unsent += sum(len(e.data) for e in p.lean.effects if isinstance(e, TcpSend))
        elif kind in ("read", "readsent"):  # the host's answer, with the sends it reports
            n = 1 + (a % 3000 if a % 2 else a % 200)
            sent = min(unsent, b % 2000 + 1) if kind == "readsent" else 0
            unsent -= sent
            ev = TcpDataSent(flow, sent, b"r" * n) if sent else TcpData(flow, b"r" * n)
            p.both("host", ev)
        elif kind == "sent":
            sent = min(unsent, 1 + b % 3000)
            unsent -= sent
            if sent:
                p.both("host", TcpSent(flow, sent))
        elif kind == "eof":  # the host closes: no lean read after this
            p.both("host", TcpEof(flow))
        elif kind == "fin":
            p.both("send", ACK | FIN, gseq, c.snd_una)
            gseq += 1
        else:  # time passes; the timers that are due fire
            p.both("advance", (a % 400) * MS)
        p.lean.sent.clear()
        p.general.sent.clear()
        p.lean.effects.clear()
        p.general.effects.clear()
    return p.taken


OPS = st.lists(
    st.tuples(
        st.sampled_from(["guest", "guest", "read", "readsent", "readsent", "sent", "eof", "fin",
                         "wait"]),
        st.integers(0, 10**6),
        st.integers(0, 10**6),
    ),
    max_size=50,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, budget=st.sampled_from([None, 1 << 20, 20_000, 3000, 600]))
def test_the_lean_read_matches_the_general_path(ops: list[Op], budget: int | None) -> None:
    exchange(ops, budget)


def test_round_trips_take_the_lean_path() -> None:
    """A request/response exchange (the answer's report held, as the shell holds it) takes the
    lean path for every answer."""
    ops: list[Op] = []
    for i in range(20):
        ops += [("guest", 1, 2), ("readsent" if i else "read", 0, 0)]  # all acked
    assert exchange(ops, None) == 20


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(acts=streams.actions(), options=st.sampled_from(streams.OPTIONS),
       seed=st.integers(0, 2**63 - 1))
def test_generated_sessions_are_the_same_without_the_lean_path(
    acts: list[streams.Action], options: str, seed: int
) -> None:
    session = streams.drive(acts, options, seed)
    lean, general = Stack(session.config, seed), Stack(session.config, seed)
    general.tcp.lean = False
    for t, event in session.events:
        assert lean.handle(event, t) == general.handle(event, t), event
        if type(event) in (TcpData, TcpDataSent):
            assert plain_roundtrip(lean.snapshot()) == plain_roundtrip(general.snapshot())
    assert plain_roundtrip(lean.snapshot()) == plain_roundtrip(general.snapshot())


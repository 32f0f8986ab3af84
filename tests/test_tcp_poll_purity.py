"""Calling poll_at() (which the live runtime does and replay does not) never changes effects."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from slirptrio.core.events import TcpConnected, TcpData, TcpSent
from slirptrio.wire.tcp import ACK, PSH, SYN
from tests.test_tcp_core import GISN, MS, Harness

Op = tuple[str, int, int]


def run(ops: list[Op], poll_often: bool) -> list[bytes]:
    h = Harness()
    flows: dict[int, tuple[int, int]] = {}  # conn index -> (flow, our isn)
    gseq = {i: GISN + 1 for i in range(4)}
    out: list[bytes] = []

    def collect() -> None:
        out.extend(raw for _s, _d, _p, raw in h.sent)
        out.extend(repr(e).encode() for e in h.take())
        h.sent.clear()

    for i in range(4):
        h.send(SYN, GISN, sport=40000 + i, mss=1460, wscale=7)
        flow = max(h.nat._by_flow)
        h.host(TcpConnected(flow))
        synack = h.recv()[-1]
        h.send(ACK, GISN + 1, synack.seq + 1, sport=40000 + i)
        flows[i] = (flow, synack.seq)
        collect()
    for kind, idx, arg in ops:
        flow, isn = flows[idx % 4]
        h.now += (arg % 5) * MS  # inputs arrive spread out; timers fire only at "wait"
        if kind == "data":
            n = (1, 100, 1460, 2920)[arg % 4]
            h.send(ACK | PSH, gseq[idx % 4], isn + 1, b"d" * n, sport=40000 + idx % 4)
            gseq[idx % 4] += n
        elif kind == "sent":
            h.host(TcpSent(flow, 1 + arg % 2000))
        elif kind == "host":
            h.host(TcpData(flow, b"h" * (1 + arg % 5000)))
        else:  # time passes: tick at an explicit time, as the runtime's Tick would
            h.now += (arg % 300) * MS
            h.nat.tick(h.now)
        if poll_often:
            h.nat.poll_at()
        collect()
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["data", "sent", "host", "wait"]),
                          st.integers(0, 3), st.integers(0, 10**6)), max_size=60))
def test_poll_at_calls_do_not_change_effects(ops: list[Op]) -> None:
    assert run(ops, poll_often=True) == run(ops, poll_often=False)

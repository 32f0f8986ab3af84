"""An entry's timers: its next deadline, exponential backoff, and the RTO from RTT samples
(RFC 6298: Karn's rule is the callers', who take no sample from a retransmitted segment)."""

from __future__ import annotations

from slirptrio.core import tcp as params
from slirptrio.core.tcp.conn import _Conn

_MS = 1_000_000


def deadline(c: _Conn) -> int | None:
    """The earliest of ``c``'s armed timers (retransmission, persist, delayed ACK, close)."""
    d = c.rto_at
    for t in (c.persist_at, c.delack_at, c.close_at):
        if t is not None and (d is None or t < d):
            d = t
    return d


def backoff(rto: int, k: int) -> int:
    """``rto`` doubled ``k`` times, at most ``RTO_MAX_NS``."""
    return min(rto << min(k, 16), params.RTO_MAX_NS)


def rtt_sample(c: _Conn, r: int, rto_min_ns: int) -> None:
    """Fold the round trip ``r`` (ns) into ``c``'s estimate and set its RTO from it."""
    if r < 0:
        r = 0
    srtt = c.srtt
    if srtt is None:
        srtt = c.srtt = r
        rttvar = c.rttvar = r >> 1
    else:
        rttvar = c.rttvar = (3 * c.rttvar + abs(srtt - r)) >> 2
        srtt = c.srtt = (7 * srtt + r) >> 3
    # rto_from_estimate, inline (a sample comes with most ACKs)
    rto = srtt + (_MS if 4 * rttvar < _MS else 4 * rttvar)
    c.rto = min(max(rto, rto_min_ns), params.RTO_MAX_NS)


def rto_from_estimate(c: _Conn, rto_min_ns: int) -> int:
    """The RTO ``c``'s estimate gives, without backoff (the initial one without a sample)."""
    if c.srtt is None:
        return params.RTO_INITIAL_NS
    rto = c.srtt + max(_MS, 4 * c.rttvar)
    return min(max(rto, rto_min_ns), params.RTO_MAX_NS)

"""IPv4 reassembly: order, duplicates, overlaps, bounds, timeouts; and fragmentation."""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slirptrio.core.ipfrag import IP_MAX, Reassembler, fragment

SRC = bytes([10, 0, 2, 15])
DST = bytes([203, 0, 113, 1])
SEC = 1_000_000_000


@dataclass(frozen=True)
class Hdr:
    frag_offset: int
    mf: bool
    ident: int = 7
    proto: int = 17
    src: bytes = SRC
    dst: bytes = DST
    header_len: int = 20


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def frags(data: bytes, cuts: list[int], ident: int = 7) -> list[tuple[Hdr, bytes]]:
    """Fragments of ``data`` cut at ``cuts`` (multiples of 8)."""
    bounds = [0, *cuts, len(data)]
    return [(Hdr(a, b < len(data), ident), data[a:b]) for a, b in itertools.pairwise(bounds)]


def feed(r: Reassembler, pieces: list[tuple[Hdr, bytes]], now: int = 0) -> list[bytes]:
    out = []
    for hdr, data in pieces:
        whole = r.add(hdr, memoryview(data), now)
        if whole is not None:
            out.append(whole)
    return out


def test_in_order_completes_on_last_fragment() -> None:
    data = payload(3000)
    r = Reassembler()
    pieces = frags(data, [1480, 2960])
    assert r.add(pieces[0][0], pieces[0][1], 0) is None
    assert r.add(pieces[1][0], pieces[1][1], 0) is None
    assert r.add(pieces[2][0], pieces[2][1], 0) == data
    assert len(r) == 0 and r.total_bytes == 0
    assert r.counters["frag_reassembled"] == 1


def test_out_of_order_and_last_first() -> None:
    data = payload(5000, 3)
    pieces = frags(data, [1000, 2000, 3000, 4000])
    r = Reassembler()
    assert feed(r, [pieces[4], pieces[2], pieces[0], pieces[3], pieces[1]]) == [data]
    assert r.total_bytes == 0


def test_duplicates_are_ignored() -> None:
    data = payload(2000)
    pieces = frags(data, [1000])
    r = Reassembler()
    assert feed(r, [pieces[0], pieces[0], pieces[0], pieces[1]]) == [data]
    assert r.counters["frag_duplicate"] == 2


def test_consistent_overlap_with_other_cuts_is_trimmed() -> None:
    data = payload(4000, 9)
    r = Reassembler()
    seq = frags(data, [1000, 3000])[:2] + frags(data, [504, 2504])[1:]
    assert feed(r, seq) == [data]
    assert r.counters["frag_overlap_trimmed"] >= 1
    assert r.counters["frag_overlap_conflict"] == 0


def test_conflicting_overlap_drops_the_datagram() -> None:
    data = payload(3000)
    r = Reassembler()
    first, second, last = frags(data, [1000, 2000])
    forged = (Hdr(504, True), b"\xee" * 1000)  # overlaps both neighbours with other bytes
    assert feed(r, [first, forged]) == []
    assert r.counters["frag_overlap_conflict"] == 1
    assert len(r) == 0 and r.total_bytes == 0
    # What is left of the datagram cannot complete it any more: a fresh queue is started.
    assert feed(r, [second, last]) == []
    assert len(r) == 1


def test_overlap_conflict_cannot_rewrite_a_header_either_way() -> None:
    data = payload(2000)
    forged = (Hdr(0, True), b"\x00" * 16)
    for order in ([frags(data, [1000])[0], forged], [forged, frags(data, [1000])[0]]):
        r = Reassembler()
        assert feed(r, [*order, frags(data, [1000])[1]]) == []
        assert r.counters["frag_overlap_conflict"] == 1


def test_never_completed_datagram_times_out() -> None:
    data = payload(3000)
    r = Reassembler(timeout_ns=30 * SEC)
    feed(r, frags(data, [1000, 2000])[:2], now=5 * SEC)
    assert r.poll_at() == 35 * SEC
    assert r.expire(35 * SEC - 1) == 0 and len(r) == 1
    assert r.expire(35 * SEC) == 1
    assert len(r) == 0 and r.total_bytes == 0 and r.poll_at() is None
    assert r.counters["frag_timeout"] == 1
    # The missing fragment arriving late starts over and does not complete anything.
    assert feed(r, frags(data, [1000, 2000])[2:], now=36 * SEC) == []


def test_timeout_counts_from_the_first_fragment() -> None:
    r = Reassembler(timeout_ns=10 * SEC)
    r.add(Hdr(0, True), payload(8), 0)
    r.add(Hdr(16, True), payload(8), 9 * SEC)
    assert r.poll_at() == 10 * SEC


def test_oldest_datagram_evicted_when_too_many_in_flight() -> None:
    r = Reassembler(max_datagrams=2)
    for ident in (1, 2, 3):
        r.add(Hdr(0, True, ident), payload(8), ident)
    assert len(r) == 2
    assert r.counters["frag_evicted"] == 1
    # ident 1 was evicted: its last fragment alone does not complete it
    assert r.add(Hdr(8, False, 1), payload(8), 4) is None
    assert r.add(Hdr(8, False, 3), payload(8), 5) == payload(8) + payload(8)


def test_bytes_per_datagram_bound() -> None:
    r = Reassembler(max_bytes_per_datagram=4000)
    data = payload(4008)
    assert feed(r, frags(data, [2000])) == []
    assert r.counters["frag_too_big"] == 1
    assert len(r) == 0 and r.total_bytes == 0


def test_ping_of_death_is_capped_at_65535() -> None:
    r = Reassembler(max_bytes_per_datagram=10**6)
    assert r.add(Hdr(0, True), payload(8), 0) is None
    # offset 65512 + 8 bytes = 65520 > 65535 - 20
    assert r.add(Hdr(65512, False), payload(8), 0) is None
    assert r.counters["frag_too_big"] == 1
    assert len(r) == 0
    # exactly at the limit is fine
    r2 = Reassembler(max_bytes_per_datagram=10**6)
    data = payload(IP_MAX - 20)
    assert feed(r2, frags(data, list(range(1480, len(data), 1480)))) == [data]


def test_header_options_shrink_the_limit() -> None:
    r = Reassembler()
    assert r.add(Hdr(65504, False, header_len=60), payload(8), 0) is None
    assert r.counters["frag_too_big"] == 1


def test_total_bytes_bound_evicts_oldest_then_refuses() -> None:
    r = Reassembler(max_total_bytes=3000)
    r.add(Hdr(0, True, 1), payload(1600), 0)
    r.add(Hdr(0, True, 2), payload(1600), 1)
    assert r.counters["frag_evicted"] == 1
    assert r.total_bytes == 1600 and len(r) == 1
    # one datagram alone beyond the budget is dropped
    r.add(Hdr(1600, True, 2), payload(1600), 2)
    assert r.counters["frag_no_memory"] == 1
    assert len(r) == 0 and r.total_bytes == 0


def test_fragment_count_bound() -> None:
    r = Reassembler(max_fragments=4)
    for i in range(4):
        r.add(Hdr(i * 16, True), payload(8), 0)
    assert len(r) == 1
    r.add(Hdr(100 * 8, True), payload(8), 0)
    assert r.counters["frag_too_many"] == 1 and len(r) == 0


@pytest.mark.parametrize(
    ("hdr", "data"),
    [(Hdr(0, True), payload(12)), (Hdr(8, True), b""), (Hdr(8, False), b"")],
)
def test_bad_lengths_drop_the_fragment_only(hdr: Hdr, data: bytes) -> None:
    r = Reassembler()
    r.add(Hdr(1000, True, 7), payload(8), 0)
    assert r.add(hdr, data, 0) is None
    assert r.counters["frag_bad_length"] == 1
    assert len(r) == 1


def test_inconsistent_ends_drop_the_datagram() -> None:
    cases = [
        [(Hdr(8, False), payload(8)), (Hdr(16, False), payload(8))],  # two different totals
        [(Hdr(8, False), payload(8)), (Hdr(16, True), payload(8))],  # data past the end
        [(Hdr(64, True), payload(8)), (Hdr(8, False), payload(8))],  # end before data
    ]
    for seq in cases:
        r = Reassembler()
        feed(r, seq)
        assert r.counters["frag_inconsistent_end"] == 1, seq
        assert len(r) == 0 and r.total_bytes == 0


def test_keys_are_separate() -> None:
    data = payload(2000)
    a = frags(data, [1000], ident=1)
    b = [(Hdr(h.frag_offset, h.mf, ident=1, proto=6), d) for h, d in frags(data, [1000], 1)]
    r = Reassembler()
    assert feed(r, [a[0], b[1], b[0], a[1]]) == [data, data]


def test_bad_bounds_rejected() -> None:
    with pytest.raises(ValueError):
        Reassembler(max_datagrams=0)


# ---------------------------------------------------------------------------- fragment()


def test_fragment_fits() -> None:
    data = payload(1480)
    ((off, mf, chunk),) = fragment(data, 1500)
    assert (off, mf, bytes(chunk)) == (0, False, data)


def test_fragment_20000_at_1500() -> None:
    data = payload(20008)
    pieces = fragment(data, 1500)
    assert all(20 + len(c) <= 1500 for _, _, c in pieces)
    assert all(len(c) % 8 == 0 for _, mf, c in pieces if mf)
    assert [mf for _, mf, _ in pieces] == [True] * (len(pieces) - 1) + [False]
    assert b"".join(pieces_data(pieces)) == data
    r = Reassembler()
    assert feed(r, [(Hdr(o, mf), bytes(c)) for o, mf, c in reversed(pieces)]) == [data]


def pieces_data(pieces: list[tuple[int, bool, memoryview]]) -> list[bytes]:
    return [bytes(c) for _, _, c in pieces]


def test_fragment_rejects_silly_mtus() -> None:
    with pytest.raises(ValueError):
        fragment(payload(100), 27)
    with pytest.raises(ValueError):
        fragment(payload(IP_MAX), 1500)


@given(n=st.integers(1, 9000), mtu=st.integers(68, 9000))
def test_fragment_offsets_tile_the_payload(n: int, mtu: int) -> None:
    data = payload(n)
    pieces = fragment(data, mtu)
    pos = 0
    for off, mf, chunk in pieces:
        assert off == pos
        assert len(pieces) == 1 or 20 + len(chunk) <= mtu
        assert not mf or len(chunk) % 8 == 0
        pos += len(chunk)
    assert pos == n


# ---------------------------------------------------------------------------- properties

fragment_st = st.tuples(
    st.integers(0, 8200),  # offset in 8-byte units (beyond 65535 on purpose)
    st.integers(0, 300),  # length
    st.booleans(),  # mf
    st.integers(0, 3),  # ident
    st.integers(0, 255),  # fill byte
)


@settings(max_examples=300, deadline=None)
@given(st.lists(fragment_st, max_size=60), st.integers(1, 5), st.integers(8, 4000))
def test_random_fragments_never_raise_and_respect_bounds(
    seq: list[tuple[int, int, bool, int, int]], max_dgrams: int, max_total: int
) -> None:
    counters: collections.Counter[str] = collections.Counter()
    r = Reassembler(
        max_datagrams=max_dgrams,
        max_total_bytes=max_total,
        max_fragments=16,
        timeout_ns=10,
        counters=counters,
    )
    for t, (units, length, mf, ident, fill) in enumerate(seq):
        whole = r.add(Hdr(units * 8, mf, ident), bytes([fill]) * length, t)
        if whole is not None:
            assert 0 < len(whole) <= IP_MAX - 20
        assert len(r) <= max_dgrams
        assert 0 <= r.total_bytes <= max_total
        if t % 7 == 6:
            r.expire(t)
    r.expire(10**9)
    assert len(r) == 0 and r.total_bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_consistent_fragments_reassemble_to_the_original(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 3000))
    original = payload(n, data.draw(st.integers(0, 255)))
    units = (n + 7) // 8
    # Random intervals (in 8-byte units), possibly overlapping, plus a cover so it can finish.
    intervals = data.draw(
        st.lists(st.tuples(st.integers(0, units - 1), st.integers(1, units)), max_size=12)
    )
    cover_cuts = sorted(data.draw(st.sets(st.integers(1, max(1, units - 1)), max_size=6)))
    spans = [(a, min(units, a + b)) for a, b in intervals]
    bounds = [0, *[c for c in cover_cuts if c < units], units]
    spans += list(itertools.pairwise(bounds))
    spans = data.draw(st.permutations(spans))
    r = Reassembler()
    done: list[bytes] = []
    for a, b in spans:
        start, end = a * 8, min(b * 8, n)
        if start >= end:
            continue
        whole = r.add(Hdr(start, end < n), original[start:end], 0)
        if whole is not None:
            done.append(whole)
            break
    assert done == [original]
    assert r.counters["frag_overlap_conflict"] == 0

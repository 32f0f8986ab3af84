"""Replay's comparison of a step's effects with the journal's (:func:`same_effects`, fields
checked against the journal's digests in place) against the reference: both sides as the
journal keeps them, ``compact(encode(e))`` vs ``compact(recorded)``, compared as lists. The
recorded side comes from the journal's own encoding (msgpack round trip included), then is
damaged in every way a divergence or another build could: a byte in or past the digested
head, a length, a CRC, a tag, a field, an effect more or less, whole bytes for a digest."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.engine import same_effects
from slirptrio.core.events import (
    CoreError,
    Effect,
    IcmpEchoSend,
    SendFrame,
    SendFrames,
    TcpRecvCredit,
    TcpSend,
    Tick,
    UdpSend,
    encode,
)
from slirptrio.journal import compact, encode_record
from slirptrio.journal.format import DIGEST_OVER, HEAD_BYTES


def reference(actual: list[Effect], recorded: list[Any]) -> bool:
    """The comparison replay made before :func:`same_effects`."""
    got = [compact(encode(e)) for e in actual]
    expected = [compact([list(x) if isinstance(x, tuple) else x for x in r]) for r in recorded]
    return got == expected


def journaled(actual: list[Effect]) -> list[Any]:
    """The effects as a journal gives them back."""
    raw = encode_record(0, 0, Tick(), actual)[3]
    out: list[Any] = msgpack.unpackb(msgpack.packb(raw, use_bin_type=True), raw=False,
                                     strict_map_key=False)
    return out


sizes = st.one_of(st.integers(0, 8), st.integers(DIGEST_OVER - 2, DIGEST_OVER + 2),
                  st.integers(HEAD_BYTES - 1, HEAD_BYTES + 1), st.integers(300, 2000))
payload = st.builds(lambda n, seed: bytes((seed + i * 7) & 0xFF for i in range(n)), sizes,
                    st.integers(0, 255))


def _view(data: bytes) -> memoryview:
    return memoryview(data)


viewed = st.one_of(payload, payload.map(bytearray), payload.map(_view))

effects = st.one_of(
    st.builds(SendFrame, viewed),
    st.builds(SendFrames, viewed),
    st.builds(TcpSend, st.integers(0, 5), viewed),
    st.builds(TcpRecvCredit, st.integers(0, 5), st.integers(0, 1 << 20)),
    st.builds(UdpSend, st.integers(0, 5), payload),
    st.builds(IcmpEchoSend, st.integers(0, 5), st.integers(0, 65535), st.integers(0, 65535),
              viewed),
    st.builds(CoreError, st.just("ValueError"), st.text(max_size=5)),
)


def damage(recorded: list[Any], how: int, where: int, value: int) -> list[Any]:
    """``recorded`` changed in one way (how 0: unchanged)."""
    out = copy.deepcopy(recorded)
    if not out or how == 0:
        return out
    eff = out[where % len(out)]
    fields = [i for i in range(1, len(eff))]
    if how == 1:  # one effect fewer
        del out[where % len(out)]
    elif how == 2:  # one more
        out.append(copy.deepcopy(eff))
    elif how == 3:  # another tag
        eff[0] = (eff[0] + 1 + value % 3) % 200
    elif fields:
        i = fields[value % len(fields)]
        v = eff[i]
        if how == 4:  # another value of the field's kind
            if isinstance(v, bytes) and v:
                b = bytearray(v)
                b[where % len(b)] ^= 0x01
                eff[i] = bytes(b)
            elif isinstance(v, list) and len(v) == 4:  # a digest: length, CRC or head
                part = 1 + value % 3
                if part == 3:
                    head = bytearray(v[3])
                    if head:
                        head[where % len(head)] ^= 0x80
                    v[3] = bytes(head)
                else:
                    v[part] += 1
            elif isinstance(v, int):
                eff[i] = v + 1
            else:
                eff[i] = None
        elif how == 5:  # whole bytes where the journal has a digest, or the reverse
            if isinstance(v, list) and len(v) == 4:
                eff[i] = bytes(v[3]) + bytes(max(0, v[1] - len(v[3])))
            elif isinstance(v, bytes):
                eff[i] = compact([0, v + bytes(DIGEST_OVER)])[1]
        elif how == 6:  # a field more
            eff.append(value)
        elif how == 7:  # an old tool's tuple
            out[where % len(out)] = tuple(eff)
    return out


@settings(max_examples=600, deadline=None)
@given(st.lists(effects, max_size=4), st.integers(0, 7), st.integers(0, 1 << 16),
       st.integers(0, 1 << 16))
def test_same_effects_is_the_reference(actual: list[Effect], how: int, where: int,
                                       value: int) -> None:
    recorded = damage(journaled(actual), how, where, value)
    assert same_effects(actual, recorded) == reference(actual, recorded)
    if how == 0:
        assert same_effects(actual, recorded)


def test_whole_bytes_recorded_for_a_long_field() -> None:
    """An older journal kept a long field whole: equal bytes match, others do not."""
    data = bytes(range(256)) * 3
    assert same_effects([TcpSend(1, data)], [[TcpSend.TAG, 1, data]])
    assert not same_effects([TcpSend(1, data)], [[TcpSend.TAG, 1, data[:-1] + b"!"]])
    assert reference([TcpSend(1, data)], [[TcpSend.TAG, 1, data]])


def test_a_digest_differing_past_the_head_only_in_its_crc() -> None:
    """A byte past the journaled head changes nothing but the CRC: still a difference."""
    data = bytearray(1000)
    recorded = journaled([SendFrame(bytes(data))])
    data[900] = 1
    assert not same_effects([SendFrame(bytes(data))], recorded)
    assert not reference([SendFrame(bytes(data))], recorded)

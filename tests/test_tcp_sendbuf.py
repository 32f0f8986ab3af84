"""The TCP send buffer (:mod:`slirptrio.core.tcp.sendbuf`) against the bytearray it replaced."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slirptrio.core.tcp.sendbuf import SMALL, SendBuffer

# Reads of every size class: tiny (into the tail), around SMALL, and big (kept as chunks).
_sizes = st.one_of(st.integers(0, 40), st.integers(SMALL - 2, SMALL + 2), st.integers(0, 70_000))
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _sizes, st.sampled_from(["bytes", "bytearray", "memoryview"])),
        st.tuples(st.just("ack"), st.integers(-3, 80_000), st.just("")),
        st.tuples(st.just("span"), st.floats(0, 1), st.floats(0, 1)),
    ),
    max_size=40,
)


@given(_ops)
def test_same_bytes_as_a_bytearray(ops: list[tuple[str, object, object]]) -> None:
    model = bytearray()
    buf = SendBuffer()
    counter = 0
    for op, a, b in ops:
        if op == "add":
            assert isinstance(a, int)
            data = bytes((counter + i) & 0xFF for i in range(a))
            counter += a
            wrapped: bytes | bytearray | memoryview = (
                data if b == "bytes" else bytearray(data) if b == "bytearray" else memoryview(data)
            )
            model += data
            buf += wrapped
        elif op == "ack":
            assert isinstance(a, int)
            del model[: max(a, 0)]
            buf.consume(a)
        else:
            assert isinstance(a, float) and isinstance(b, float)
            off = int(a * len(model))
            n = int(b * (len(model) - off))
            chunk, start = buf.span(off, n)
            assert bytes(chunk[start : start + n]) == bytes(model[off : off + n])
        assert len(buf) == len(model)
        assert bool(buf) == bool(model)
        assert bytes(buf) == bytes(model)
    assert SendBuffer.from_bytes(bytes(buf)) == buf


def test_a_segment_inside_one_read_is_not_copied() -> None:
    read1, read2 = b"a" * 5000, b"b" * 5000
    buf = SendBuffer()
    buf += read1
    buf += read2
    del buf[:100]
    chunk, start = buf.span(200, 1000)
    assert chunk is read1 and start == 300
    chunk, start = buf.span(4800, 1000)  # straddles the two reads: joined
    assert bytes(chunk[start : start + 1000]) == b"a" * 100 + b"b" * 900


def test_tiny_reads_share_a_chunk() -> None:
    buf = SendBuffer()
    for i in range(10_000):
        buf += bytes([i & 0xFF])
    assert len(buf._chunks) <= 10_000 // (16 * SMALL) + 1


def test_only_the_front_can_be_deleted() -> None:
    buf = SendBuffer(b"x" * 10)
    with pytest.raises(TypeError):
        del buf[2:4]
    with pytest.raises(IndexError):
        buf.span(5, 6)

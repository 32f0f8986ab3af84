"""slirptrio.crc: the journal's CRC-32 is zlib's, whichever implementation computes it."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from slirptrio import crc


def test_the_fast_implementation_is_in_use() -> None:
    # zlib-ng is a dependency: without it every journaled byte costs ~5x more to sum.
    assert crc.IMPL == "zlib-ng"


@given(st.binary(max_size=70_000), st.integers(0, 0xFFFFFFFF), st.integers(0, 64))
def test_same_values_as_zlib(data: bytes, start: int, cut: int) -> None:
    assert crc.crc32(data) == zlib.crc32(data)
    assert crc.crc32(data, start) == zlib.crc32(data, start)
    view = memoryview(bytearray(data))[cut:]
    assert crc.crc32(view) == zlib.crc32(view)
    # Incremental over two parts, as the journal sums a batch's header and records.
    head, tail = data[:cut], data[cut:]
    assert crc.crc32(tail, crc.crc32(head)) == zlib.crc32(data)

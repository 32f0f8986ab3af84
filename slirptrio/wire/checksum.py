"""The Internet checksum (RFC 1071) and the IPv4 and IPv6 pseudo-header sums.

:func:`pure_ones_sum` is the reference; :func:`ones_sum` is the native one when the fast path
is native (:mod:`slirptrio.wire._accel`), with identical results.
"""

from __future__ import annotations

from typing import Protocol

from slirptrio.wire import _accel


class OnesSum(Protocol):
    def __call__(self, data: bytes | bytearray | memoryview, initial: int = 0, /) -> int: ...


def pure_ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The folded 16-bit one's-complement sum of ``data`` (odd length padded with a zero)."""
    mv = memoryview(data).cast("B")
    n = len(mv)
    # int.from_bytes over the whole buffer sums 16-bit words far faster than a Python loop:
    # the big integer is reduced modulo 0xffff, which is the end-around-carry sum.
    total = initial
    if n:
        even = n & ~1
        if even:
            big = int.from_bytes(mv[:even], "big")
            # Folding halves first (2^(16k) = 1 mod 0xffff) makes the final modulo cheap.
            bits = even * 8
            while bits > 512:
                half = (bits // 2 + 15) & ~15
                big = (big >> half) + (big & ((1 << half) - 1))
                bits = half + 1
            folded = big % 0xFFFF
            # A non-zero sum is never +0 in one's complement: it folds to 0xffff, not 0.
            total += folded if folded or not big else 0xFFFF
        if n & 1:
            total += mv[n - 1] << 8
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


ones_sum: OnesSum = _accel.native.ones_sum if _accel.native is not None else pure_ones_sum


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The checksum to store: the complement of :func:`ones_sum` (0 verifies a correct one)."""
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The one's-complement sum of the pseudo-header, for TCP, UDP and ICMPv6 checksums.

    With 16-byte addresses this is the IPv6 pseudo-header (RFC 8200 8.1): its 32-bit length
    and 24 zero bits sum the same as IPv4's zero byte and 16-bit length while ``length`` fits
    16 bits, which every non-jumbogram's does."""
    return ones_sum(src + dst + bytes((0, proto)) + length.to_bytes(2, "big"))

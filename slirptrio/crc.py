"""CRC-32 (zlib's polynomial) for the journal's batches and digests, as fast as this machine has.

Every journaled byte is summed once when written and once when read, and every output frame
of a bulk flow once when its digest is taken: zlib's ``crc32`` did ~2.8 GB/s here, zlib-ng's
(``pip install zlib-ng``, a dependency; folding with carry-less multiplication where the CPU has
it) ~14 GB/s. Both give the same values, so journals read and written with either are the same;
without zlib-ng the standard library's is used.
"""

from __future__ import annotations

__all__ = ["IMPL", "crc32"]

try:
    from zlib_ng.zlib_ng import crc32

    IMPL = "zlib-ng"
except ImportError:  # pragma: no cover - the dependency is missing: same values, slower
    from zlib import crc32

    IMPL = "zlib"

"""The allocator tuning of :mod:`slirptrio.heap`: big buffers stop costing page faults."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import resource, sys
from slirptrio.heap import keep_buffers_on_heap

def faults() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        # A burst's buffers (zero-filled: every page is touched), then all freed at once.
        burst = [bytes(256 << 10) for _ in range(8)]
        del burst
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()  # warm up (glibc adapts its threshold after the first free)
untuned = faults()
ok = keep_buffers_on_heap()
faults()  # the first tuned round may still grow the heap once
print(untuned, faults(), ok, keep_buffers_on_heap())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_big_buffers_are_reused_from_the_heap() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    untuned, tuned, ok, again = int(out[0]), int(out[1]), out[2], out[3]
    if ok != "True":
        pytest.skip("this libc has no glibc mallopt (musl?): nothing to tune")
    assert again == "True"  # idempotent
    # Untuned, glibc hands the freed burst back to the kernel (its heap top passes the trim
    # threshold) and faults its pages in again at the next burst; tuned, the heap keeps
    # them.
    assert untuned >= 100 * 128, untuned
    assert tuned < 100 * 16, tuned

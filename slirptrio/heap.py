"""Keep the bulk path's big buffers on the heap (glibc's allocator, Linux).

A bulk TCP flow at a large MTU allocates and frees buffers of 64 KiB to a few hundred KiB many
thousand times a second: host reads, frame bursts, the send buffer as it grows. glibc serves
blocks past its mmap threshold (128 KiB at first) with ``mmap`` and gives them back with
``munmap``, and trims the top of the heap past 128 KiB free: every such buffer then costs a
system call or two and a page fault per 4 KiB page touched, which the kernel zeroes first.
Measured at MTU 65520, host to guest, journal off: about 60% of the stack's CPU went to that
(the profile charges it to the core lines that allocate), and the throughput rose 1.6 to 1.9x
with the thresholds raised.

:func:`keep_buffers_on_heap` raises both thresholds for the whole process, so such blocks are
reused from the heap. The heap then keeps what it once held at its peak (bounded by the stack's
own buffer bounds) instead of returning it between bursts. The command line calls it before it
runs a stack or a replay; a program embedding slirptrio decides for its own process and may
call it too.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_buffers_on_heap"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 64 << 20

_done: bool | None = None


def keep_buffers_on_heap() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); False where there is no
    glibc ``mallopt`` (another libc, another system) or it refused the values."""
    global _done
    if _done is None:
        _done = _tune()
    return _done


def _tune() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl has mallopt as a stub; others may lack it
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The trim threshold first: setting either fixes both (glibc stops adapting them).
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    )

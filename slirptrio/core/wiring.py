"""What the stack hands every NAT protocol (UDP, TCP, ICMP echo): one value, spread into each
constructor as keywords, so a new shared hook is added in one place."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TypedDict

from slirptrio.core.prng import Prng


class Wiring(TypedDict):
    """The stack's PRNG, its counters, flow ids, the way out to the guest and the address
    translation (``translate(dst, port) -> (host, port) | None``; None: refused)."""

    rng: Prng
    counters: collections.Counter[str]
    alloc_flow: Callable[[], int]
    send_ip: Callable[[bytes, bytes, int, bytes], None]
    translate: Callable[[bytes, int], tuple[str, int] | None]

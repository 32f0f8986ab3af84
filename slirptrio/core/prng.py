"""The core's only source of randomness: a small PRNG seeded from the journal header.

xorshift-style generators are enough here: the values (ISNs, IP ids, ephemeral ports) must be
unpredictable to a guest only as much as libslirp's are, and must be exactly reproducible.
"""

from typing import Any, ClassVar

_MASK64 = (1 << 64) - 1


class Prng:
    """SplitMix64: a seeded, deterministic 64-bit generator."""

    __slots__ = ("_state",)
    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset()
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64

    def snapshot_state(self) -> dict[str, Any]:
        return {"_state": self._state}

    def restore_state(self, state: dict[str, Any]) -> None:
        self._state = int(state["_state"]) & _MASK64

    def next_u64(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def next_u32(self) -> int:
        return self.next_u64() >> 32

    def below(self, n: int) -> int:
        """A value in ``range(n)`` (n > 0); the tiny modulo bias does not matter here."""
        return self.next_u64() % n

"""IP fragments: bounded reassembly of the guest's fragments, fragmentation toward the guest.

Theory of operation
-------------------
A fragment belongs to the datagram named by (source, destination, protocol, identification);
IPv4 and IPv6 fragments (libslirp has no IPv6 reassembly) share one table and its bounds, told
apart by their address lengths. For IPv6 the reassembled payload is the fragmentable part
(any extension headers after the Fragment header, then the upper layer), which the caller walks
again; the "protocol" of the key is the Fragment header's next header, so fragments of one
packet that disagree on it (RFC 8200 lets them; no stack in use does) never complete.
Each datagram in flight keeps its received bytes as sorted, non-overlapping pieces
``(start, end, data)`` and, once the last fragment (MF=0) has arrived, its total length. It is
complete when the pieces cover ``[0, total)``; the joined payload is returned and the entry
freed.

Nothing a fragment says is trusted (libslirp's ``ip_reass`` had a heap overflow, CVE-2019-14378,
and two use-after-frees, CVE-2019-15890 and CVE-2020-1983, from trusting offsets and
re-linking buffers in place). Here offsets only index Python slices of immutable bytes, and:

* every fragment with MF=1 carries a non-zero multiple of 8 bytes; a fragment that is not so,
  or is empty, is dropped alone;
* a fragment ending past 65535 minus its header, or past ``max_bytes_per_datagram``, drops its
  datagram ("ping of death");
* an end beyond a known total, or a second different total, drops the datagram;
* overlaps are compared byte for byte: identical bytes (a duplicate or a retransmission cut
  differently) are trimmed away and only the gaps kept; *different* bytes drop the whole
  datagram, so the result never depends on arrival order (RFC 5722's rule, applied to IPv4);
* at most ``max_fragments`` pieces per datagram (bounding the work per fragment).

Bounds: ``max_datagrams`` in flight and ``max_total_bytes`` held across them; a new datagram or
new bytes beyond either evict the oldest datagrams first. A datagram not completed within
``timeout_ns`` of its first fragment is discarded by :meth:`Reassembler.expire` (the caller asks
:meth:`Reassembler.poll_at` when). Since every datagram gets the same timeout, insertion order is
deadline order and the oldest entry is always the next to expire. Every outcome is counted under
a ``frag_*`` key.

:func:`fragment` splits an outgoing payload for an MTU: every fragment but the last carries a
multiple of 8 bytes.
"""

from __future__ import annotations

import bisect
import collections
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from slirptrio.core import snapshot as snap

log = logging.getLogger("slirptrio.core.ipfrag")

IP_MAX = 65535
IPV4_MIN_HEADER = 20
MIN_MTU = 68
MAX_DATAGRAMS = 64
MAX_TOTAL_BYTES = 1 << 20
TIMEOUT_NS = 30_000_000_000
MAX_FRAGMENTS = 1024

_Key = tuple[bytes, bytes, int, int]


class FragmentHeader(Protocol):
    """The fields of a parsed IPv4 header that reassembly reads."""

    @property
    def header_len(self) -> int: ...
    @property
    def src(self) -> bytes: ...
    @property
    def dst(self) -> bytes: ...
    @property
    def proto(self) -> int: ...
    @property
    def ident(self) -> int: ...
    @property
    def mf(self) -> bool: ...
    @property
    def frag_offset(self) -> int: ...


@dataclass(slots=True)
class _Datagram:
    deadline_ns: int
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    datas: list[bytes] = field(default_factory=list)
    total: int | None = None
    held: int = 0


class Reassembler:
    """Reassembles IPv4 fragments within fixed bounds.

    Args:
      max_datagrams: datagrams in flight at once.
      max_bytes_per_datagram: largest reassembled payload (further capped at 65535 minus the
        header).
      max_total_bytes: payload bytes held across all datagrams in flight.
      timeout_ns: how long after its first fragment a datagram may take to complete.
      max_fragments: distinct pieces kept per datagram.
      counters: where ``frag_*`` counts go (a fresh Counter if None).
    """

    def __init__(
        self,
        max_datagrams: int = MAX_DATAGRAMS,
        max_bytes_per_datagram: int = IP_MAX,
        max_total_bytes: int = MAX_TOTAL_BYTES,
        timeout_ns: int = TIMEOUT_NS,
        *,
        max_fragments: int = MAX_FRAGMENTS,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        if min(max_datagrams, max_bytes_per_datagram, max_total_bytes, max_fragments) < 1:
            raise ValueError("reassembly bounds must be positive")
        self.max_datagrams = max_datagrams
        self.max_bytes_per_datagram = max_bytes_per_datagram
        self.max_total_bytes = max_total_bytes
        self.timeout_ns = timeout_ns
        self.max_fragments = max_fragments
        self.counters: collections.Counter[str] = (
            counters if counters is not None else collections.Counter()
        )
        self._queues: dict[_Key, _Datagram] = {}
        self.total_bytes = 0

    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "max_datagrams", "max_bytes_per_datagram", "max_total_bytes", "timeout_ns",
        "max_fragments", "counters",
    })  # fmt: skip
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset()

    def __len__(self) -> int:
        return len(self._queues)

    def snapshot_state(self) -> dict[str, Any]:
        """The datagrams in flight, oldest first, with their pieces."""
        return {
            "_queues": [[list(k), snap.dump_slots(d)] for k, d in self._queues.items()],
            "total_bytes": self.total_bytes,
        }

    def restore_state(self, state: dict[str, Any]) -> None:
        self._queues = {
            (k[0], k[1], k[2], k[3]): snap.load_slots(_Datagram, d) for k, d in state["_queues"]
        }
        self.total_bytes = state["total_bytes"]

    # ------------------------------------------------------------------------ public face

    def add(
        self,
        hdr: FragmentHeader,
        payload: bytes | memoryview,
        now_ns: int,
        *,
        max_end: int | None = None,
    ) -> bytes | None:
        """Take one fragment; return the whole payload when this one completes its datagram.

        ``max_end`` caps the reassembled length instead of IPv4's 65535 minus the header (an
        IPv6 caller passes 65535 minus its unfragmentable extension headers). IPv6 fragments
        (16-byte addresses, 32-bit identifications) share the tables and bounds."""
        c = self.counters
        c["frag_in"] += 1
        start = hdr.frag_offset
        length = len(payload)
        end = start + length
        if length == 0 or (hdr.mf and length & 7):
            c["frag_bad_length"] += 1
            return None
        key = (hdr.src, hdr.dst, hdr.proto, hdr.ident)
        if max_end is None:
            max_end = IP_MAX - max(hdr.header_len, IPV4_MIN_HEADER)
        limit = min(self.max_bytes_per_datagram, max_end)
        if end > limit:
            c["frag_too_big"] += 1
            self._discard(key)
            return None
        dgram = self._queues.get(key)
        if dgram is None:
            self._make_room_for_datagram()
            dgram = _Datagram(deadline_ns=now_ns + self.timeout_ns)
            self._queues[key] = dgram
        if not self._check_end(dgram, end, hdr.mf):
            c["frag_inconsistent_end"] += 1
            self._discard(key)
            return None
        gaps = self._gaps(dgram, start, end, payload)
        if gaps is None:
            c["frag_overlap_conflict"] += 1
            self._discard(key)
            return None
        if not gaps:
            c["frag_duplicate"] += 1
            return self._complete(key, dgram)
        if len(gaps) > 1 or gaps[0][0] != start or gaps[0][1] != end:
            c["frag_overlap_trimmed"] += 1
        if len(dgram.starts) + len(gaps) > self.max_fragments:
            c["frag_too_many"] += 1
            self._discard(key)
            return None
        added = sum(e - s for s, e in gaps)
        if not self._make_room_for_bytes(key, added):
            c["frag_no_memory"] += 1
            self._discard(key)
            return None
        for s, e in gaps:
            i = bisect.bisect_left(dgram.starts, s)
            dgram.starts.insert(i, s)
            dgram.ends.insert(i, e)
            dgram.datas.insert(i, bytes(payload[s - start : e - start]))
        dgram.held += added
        self.total_bytes += added
        return self._complete(key, dgram)

    def poll_at(self) -> int | None:
        """When the oldest datagram in flight times out, or None."""
        for dgram in self._queues.values():
            return dgram.deadline_ns
        return None

    def expire(self, now_ns: int) -> int:
        """Discard the datagrams whose time is up; return how many."""
        n = 0
        while self._queues:
            key, dgram = next(iter(self._queues.items()))
            if dgram.deadline_ns > now_ns:
                break
            self._discard(key)
            n += 1
        self.counters["frag_timeout"] += n
        return n

    # ---------------------------------------------------------------------------- helpers

    @staticmethod
    def _check_end(dgram: _Datagram, end: int, mf: bool) -> bool:
        last_end = dgram.ends[-1] if dgram.ends else 0
        if not mf:
            if dgram.total is not None:
                return end == dgram.total
            if last_end > end:
                return False
            dgram.total = end
            return True
        return dgram.total is None or end <= dgram.total

    @staticmethod
    def _gaps(
        dgram: _Datagram, start: int, end: int, payload: bytes | memoryview
    ) -> list[tuple[int, int]] | None:
        """The parts of ``[start, end)`` not yet held, or None if held bytes differ."""
        starts, ends, datas = dgram.starts, dgram.ends, dgram.datas
        i = bisect.bisect_right(starts, start) - 1
        if i < 0 or ends[i] <= start:
            i += 1
        gaps: list[tuple[int, int]] = []
        pos = start
        while i < len(starts) and starts[i] < end:
            s, e = starts[i], ends[i]
            if s > pos:
                gaps.append((pos, s))
            lo, hi = max(s, start), min(e, end)
            if payload[lo - start : hi - start] != datas[i][lo - s : hi - s]:
                return None
            pos = max(pos, hi)
            i += 1
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def _complete(self, key: _Key, dgram: _Datagram) -> bytes | None:
        if dgram.total is None or dgram.held != dgram.total:
            return None
        del self._queues[key]
        self.total_bytes -= dgram.held
        self.counters["frag_reassembled"] += 1
        return b"".join(dgram.datas)

    def _discard(self, key: _Key) -> None:
        dgram = self._queues.pop(key, None)
        if dgram is not None:
            self.total_bytes -= dgram.held
            self.counters["frag_discarded"] += 1

    def _make_room_for_datagram(self) -> None:
        while len(self._queues) >= self.max_datagrams:
            self._discard(next(iter(self._queues)))
            self.counters["frag_evicted"] += 1

    def _make_room_for_bytes(self, keep: _Key, added: int) -> bool:
        if self._queues[keep].held + added > self.max_total_bytes:
            return False
        while self.total_bytes + added > self.max_total_bytes:
            victim = next(k for k in self._queues if k != keep)
            self._discard(victim)
            self.counters["frag_evicted"] += 1
        return True


def fragment(
    payload: bytes | memoryview, mtu: int, header_len: int = IPV4_MIN_HEADER
) -> list[tuple[int, bool, memoryview]]:
    """Split an IP payload so each datagram fits ``mtu``: ``(offset, more_fragments, chunk)``.

    Offsets are in bytes; all chunks but the last hold a multiple of 8 bytes. A payload that
    fits comes back as one piece ``(0, False, payload)``.
    """
    view = memoryview(payload)
    if mtu < MIN_MTU or header_len + 8 > mtu:
        raise ValueError(f"MTU {mtu} too small for fragments with a {header_len}-byte header")
    if header_len + len(view) > IP_MAX:
        raise ValueError(f"payload of {len(view)} bytes does not fit an IPv4 datagram")
    if header_len + len(view) <= mtu:
        return [(0, False, view)]
    step = (mtu - header_len) & ~7
    out: list[tuple[int, bool, memoryview]] = []
    for off in range(0, len(view), step):
        chunk = view[off : off + step]
        out.append((off, off + step < len(view), chunk))
    return out

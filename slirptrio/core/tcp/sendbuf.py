"""A TCP entry's send buffer: host bytes not yet acknowledged by the guest.

It was a ``bytearray``: appending a host read after the guest's ACKs had cut its front made
CPython move the whole buffer to a new block (a bytearray whose start has advanced is copied,
not grown in place), so every byte toward the guest was copied several times over; at MTU
65520 that was a quarter of the stack's CPU. Here the buffer keeps the reads themselves (``bytes``,
which nobody changes) and an offset into the first; a segment is cut from the read it lies in
without a copy, and only a segment that straddles two reads is joined. Small reads go into a
``bytearray`` tail instead of a chunk each, so a host writing a byte at a time does not make a
chunk per byte.

The bytes it holds, and so every frame built from it, are the same as the bytearray's;
snapshots hold them as one ``bytes``, as before.
"""

from __future__ import annotations

import collections

__all__ = ["SMALL", "SendBuffer"]

SMALL = 2048  # reads shorter than this are copied into the tail rather than kept as a chunk


class SendBuffer:
    """The bytes of a send buffer, as a list of reads; ``len``, ``+=`` and ``del b[:k]`` as a
    bytearray's, :meth:`span` to cut a segment."""

    __slots__ = ("_chunks", "_head", "_len")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._chunks: collections.deque[bytes | bytearray] = collections.deque()
        self._head = 0  # bytes of the first chunk already acknowledged
        self._len = 0
        if data:
            self += data

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iadd__(self, data: bytes | bytearray | memoryview) -> SendBuffer:
        n = len(data)
        if not n:
            return self
        chunks = self._chunks
        if n < SMALL:
            last = chunks[-1] if chunks else None
            if type(last) is bytearray and len(last) < 16 * SMALL:
                last += data
            else:
                chunks.append(bytearray(data))
        else:
            chunks.append(data if type(data) is bytes else bytes(data))
        self._len += n
        return self

    def __delitem__(self, key: slice) -> None:
        """``del b[:k]``: the first ``k`` bytes are acknowledged (the only deletion TCP makes)."""
        if not (isinstance(key, slice) and key.start in (None, 0) and key.step is None
                and key.stop is not None):
            raise TypeError("only the front of a send buffer can be deleted")
        self.consume(key.stop)

    def consume(self, k: int) -> None:
        """Drop the first ``k`` bytes (all of them if ``k`` is larger)."""
        if k <= 0:
            return
        if k >= self._len:
            self._chunks.clear()
            self._head = 0
            self._len = 0
            return
        self._len -= k
        chunks = self._chunks
        k += self._head
        while k >= len(chunks[0]):
            k -= len(chunks.popleft())
        self._head = k

    def span(self, off: int, n: int) -> tuple[bytes | bytearray, int]:
        """``(buffer, start)`` such that ``buffer[start:start + n]`` are bytes ``off`` to
        ``off + n`` of the send buffer: a chunk itself when they lie in one, else a copy."""
        if off < 0 or n < 0 or off + n > self._len:
            raise IndexError("span outside the send buffer")
        pos = off + self._head
        for i, chunk in enumerate(self._chunks):
            size = len(chunk)
            if pos < size:
                if pos + n <= size:
                    return chunk, pos
                return self._join(i, pos, n), 0
            pos -= size
        return b"", 0  # n == 0 at the very end

    def _join(self, i: int, pos: int, n: int) -> bytes:
        parts = []
        chunks = self._chunks
        while n > 0:
            chunk = chunks[i]
            take = min(n, len(chunk) - pos)
            parts.append(memoryview(chunk)[pos : pos + take])
            n -= take
            pos = 0
            i += 1
        return b"".join(parts)

    def __getitem__(self, key: slice) -> bytes:
        """``b[i:j]`` as ``bytes`` (a copy; for inspection and tests, not the data path)."""
        start, stop, step = key.indices(self._len)
        if step != 1:
            raise ValueError("send buffer slices take no step")
        if stop <= start:
            return b""
        buf, at = self.span(start, stop - start)
        return bytes(buf[at : at + stop - start])

    def __bytes__(self) -> bytes:
        return self[:]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SendBuffer):
            return bytes(self) == bytes(other)
        if isinstance(other, (bytes, bytearray, memoryview)):
            return bytes(self) == bytes(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a bytearray

    def __repr__(self) -> str:
        return f"SendBuffer({bytes(self)!r})"

    @classmethod
    def from_bytes(cls, data: bytes) -> SendBuffer:
        """The buffer a snapshot's ``bytes`` describe."""
        return cls(data)

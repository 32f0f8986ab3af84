"""QEMU's ``-netdev stream`` / ``socket`` framing: a 4-byte big-endian length, then the frame."""

from __future__ import annotations

from collections.abc import Iterator

from slirptrio.wire import MalformedFrame

# QEMU's NET_BUFSIZE (4096 + 65536): no honest peer sends a longer frame.
MAX_FRAME = 69632


def encode_frame(frame: bytes) -> bytes:
    """Prefix one frame with its length."""
    return len(frame).to_bytes(4, "big") + frame


def frame_spans(run: bytes | bytearray | memoryview) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each frame of a run (length-prefixed frames), empty ones included,
    in order; its length field is at ``start - 4``. Stops before a truncated tail, which
    therefore begins where the last span ends (0 when there is none)."""
    n = len(run)
    off = 0
    while off + 4 <= n:
        start = off + 4
        end = start + int.from_bytes(run[off:start], "big")
        if end > n:
            return
        yield start, end
        off = end


def split_run(run: bytes | bytearray | memoryview) -> list[memoryview]:
    """The frames of a run (length-prefixed frames) as views; a truncated tail is left out
    and empty frames skipped."""
    mv = memoryview(run)
    return [mv[start:end] for start, end in frame_spans(mv) if end > start]


class StreamDecoder:
    """Splits a byte stream into frames; keeps any partial frame across :meth:`feed` calls."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return the frames now complete.

        Raises MalformedFrame("oversized_frame") for a length beyond ``max_frame``: the
        stream is then out of sync and the connection must be dropped.
        """
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            length = int.from_bytes(buf[pos : pos + 4], "big")
            if length > self._max:
                del buf[:pos]
                if frames:  # hand over the good frames first; the next feed raises
                    return frames
                raise MalformedFrame("oversized_frame", f"length {length} > {self._max}")
            if n - pos - 4 < length:
                break
            if length:  # QEMU never sends empty frames; tolerate them as keep-alives
                frames.append(bytes(buf[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buf)

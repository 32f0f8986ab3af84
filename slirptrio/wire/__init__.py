"""Pure codecs: bounds-checked parsing and building of the frames slirptrio speaks.

Nothing here awaits, reads a clock, draws randomness or touches a socket. Every parser raises
:class:`MalformedFrame` (and only that) on short, lying or otherwise bad input.
"""


class MalformedFrame(ValueError):
    """A frame or header that cannot be parsed; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason

"""events.encode: one C getter per class with fields, the same lists as before."""

from __future__ import annotations

from slirptrio.core import events


def test_encode_by_getter_is_the_encoder() -> None:
    """events.encode's one-call getter gives what each class's encoder gives."""
    classes = set(events._EVENTS.values()) | set(events._EFFECTS.values())
    for cls in classes:
        k = len(events._FIELDS[cls])
        item = cls(*range(100, 100 + k))
        assert events.encode(item) == events._ENCODERS[cls](item) == [cls.TAG, *range(100, 100 + k)]

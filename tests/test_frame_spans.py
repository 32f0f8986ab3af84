"""One walk over a run of length-prefixed frames (wire.framing.frame_spans) for every reader."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from slirptrio.wire.fast import KIND_TRUNCATED, pure_scan_frames
from slirptrio.wire.framing import encode_frame, frame_spans, split_run


@given(st.lists(st.binary(max_size=40), max_size=6), st.binary(max_size=7))
def test_spans_cover_the_frames_and_stop_at_the_truncated_tail(
    frames: list[bytes], tail: bytes
) -> None:
    body = b"".join(encode_frame(f) for f in frames)
    # A tail that is a length field promising more than follows (or less than one).
    cut = (len(tail) + 100).to_bytes(4, "big") + tail if len(tail) >= 4 else tail
    run = body + cut
    spans = list(frame_spans(run))
    assert [run[s:e] for s, e in spans] == frames
    assert all(int.from_bytes(run[s - 4 : s], "big") == e - s for s, e in spans)
    assert (spans[-1][1] if spans else 0) == len(body)
    assert [bytes(v) for v in split_run(run)] == [f for f in frames if f]
    records = pure_scan_frames(run)
    assert (bool(records) and records[-1][0] == KIND_TRUNCATED) == bool(cut)
    assert len(records) == sum(1 for f in frames if f) + bool(cut)

"""The recorder's zero-copy packing against the straightforward encoding, byte for byte.

Journal records reference their big payloads (:class:`RecordPacker`) and pcap records their
big frames (:func:`slirptrio.wire.pcap.pcap_parts`); the files written must be exactly what
``msgpack.packb(encode_record(...))`` framed by :func:`format.batch`, and
:func:`wpcap.record_parts` per frame, make: across segment rotation, the ring, pcap rotation,
the writer thread's merging, and for ``bytes`` and mutable payloads alike.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import tempfile
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from slirptrio.core import events as events_mod
from slirptrio.core.events import (
    Effect,
    Event,
    GuestFrame,
    GuestFrames,
    PortFrames,
    SendFrame,
    SendFrames,
    TcpData,
    TcpSend,
    Tick,
)
from slirptrio.crc import crc32
from slirptrio.journal import format as jf
from slirptrio.journal import writer as jw
from slirptrio.wire import _accel, fast
from slirptrio.wire import pcap as wpcap

ORIGIN_NS = 1_700_000_000_000_000_000

# Payload sizes around every boundary that matters: msgpack's bin8/bin16/bin32, the digest,
# the reference threshold, and frames bigger than a small snaplen.
_SIZES = st.sampled_from([0, 1, 60, 255, 256, 257, 1500, 4095, 4096, 4097, 65535, 65536,
                          70000])
_blobs = _SIZES.flatmap(lambda n: st.binary(min_size=n, max_size=n) if n < 300
                        else st.integers(0, 255).map(lambda b: bytes([b]) * n))
_mutable = st.sampled_from([bytes, bytearray, memoryview])


def _run(frames: list[bytes]) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in frames)


@st.composite
def _step(draw: st.DrawFn) -> tuple[Event, list[Effect]]:
    kind = draw(st.sampled_from(["frames", "frame", "data", "port", "tick"]))
    wrap = draw(_mutable)
    event: Event
    if kind == "frames":
        run = _run(draw(st.lists(_blobs, max_size=4)))
        if draw(st.booleans()):
            run += b"\x00\x00\x10"  # a truncated tail: left out of the pcap
        event = GuestFrames(wrap(run))
    elif kind == "frame":
        event = GuestFrame(wrap(draw(_blobs)))
    elif kind == "data":
        event = TcpData(draw(st.integers(0, 1 << 40)), wrap(draw(_blobs)))
    elif kind == "port":
        event = PortFrames(3, _run(draw(st.lists(_blobs, max_size=2))))
    else:
        event = Tick()
    effects: list[Effect] = []
    for e in draw(st.lists(st.sampled_from(["run", "one", "send"]), max_size=3)):
        if e == "run":
            effects.append(SendFrames(_run(draw(st.lists(_blobs, max_size=3)))))
        elif e == "one":
            effects.append(SendFrame(draw(_blobs)))
        else:
            effects.append(TcpSend(1, draw(_blobs)))
    return event, effects


_steps = st.lists(st.tuples(_step(), st.booleans()), min_size=1, max_size=25)


def _packb(seq: int, t_ns: int, event: Event, effects: list[Effect]) -> bytes:
    out: bytes = msgpack.packb(jf.encode_record(seq, t_ns, event, effects), use_bin_type=True)
    return out


@given(_steps)
@settings(max_examples=150, deadline=None)
def test_record_packer_is_packb_of_encode_record(
    steps: list[tuple[tuple[Event, list[Effect]], bool]],
) -> None:
    packer = jf.RecordPacker()
    got: list[bytes] = []
    want: list[bytes] = []
    pending: list[bytes] = []
    for seq, ((event, effects), take) in enumerate(steps):
        packer.pack(seq, seq * 1000, event, effects)
        pending.append(_packb(seq, seq * 1000, event, effects))
        assert packer.nbytes == sum(map(len, pending))
        if take or seq == len(steps) - 1:
            parts, n = packer.take()
            for p in parts:
                # Only immutable objects are kept by reference.
                assert type(p) is bytes
            joined = b"".join(parts)
            assert n == len(joined)
            got.append(joined)
            want.append(b"".join(pending))
            pending = []
            assert packer.nbytes == 0
    assert got == want


_ALL_EVENTS = sorted(events_mod._EVENTS.values(), key=lambda c: c.TAG)
_ALL_EFFECTS = sorted(events_mod._EFFECTS.values(), key=lambda c: c.TAG)
_INTS = st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, (1 << 32) - 1, 1 << 32,
                         (1 << 64) - 1, -1, -32, -33, -129, -(1 << 31) - 1, -(1 << 63)])


def _value(kind: str) -> st.SearchStrategy[Any]:
    if kind == "bytes":
        return st.tuples(_blobs, _mutable).map(lambda bw: bw[1](bw[0]))
    if kind == "int":
        return _INTS | st.integers(-(1 << 63), (1 << 64) - 1)
    if kind == "bool":
        return st.booleans()
    return st.text(max_size=40)


def _item(cls: type[Any]) -> st.SearchStrategy[Any]:
    fields = dataclasses.fields(cls)
    return st.tuples(*(_value(str(f.type)) for f in fields)).map(lambda a: cls(*a))


@given(st.lists(st.tuples(st.sampled_from(_ALL_EVENTS).flatmap(_item),
                          st.lists(st.sampled_from(_ALL_EFFECTS).flatmap(_item), max_size=4)),
                min_size=1, max_size=6))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_event_and_effect_packs_as_packb(steps: list[tuple[Event, list[Effect]]]) -> None:
    """The packer's per-class plans (fields in one getter, the compact() check only where a
    bytes field is) against the general encoding, for every class, every field type, and
    mutable payloads."""
    packer = jf.RecordPacker()
    want = b""
    for seq, (event, effects) in enumerate(steps):
        packer.pack(seq, -seq, event, effects)
        want += _packb(seq, -seq, event, effects)
    parts, n = packer.take()
    assert b"".join(parts) == want and n == len(want)


def test_a_record_that_cannot_be_encoded_is_a_gap(tmp_path: pathlib.Path) -> None:
    """An effect (or event) msgpack cannot pack costs its record and the segment (a named
    gap), never an exception into the door; the records before it are on disk."""
    header = jf.Header(seed=1, config={}, origin_ns=ORIGIN_NS, version="t", constants={})
    rec = jw.Recorder.open(header, journal_dir=str(tmp_path / "j"),
                           pcap_path=str(tmp_path / "p.pcap"), threaded=False)
    rec.attach(lambda: {"seq": 0, "now_ns": 0, "stack": {}})
    frame = _run([b"g" * 60])
    rec(0, 10, GuestFrames(frame), [TcpSend(1, b"x")])
    rec.flush()
    rec(1, 20, GuestFrames(frame), [TcpSend(object(), b"x")])  # type: ignore[arg-type]
    rec(2, 30, TcpData(object(), b"y"), [])  # type: ignore[arg-type]
    rec.flush()
    assert rec.journal is not None
    assert rec.failures == 1 and rec.journal.lost_records == 2 and not rec.journal.writing
    rec.close()
    items = list(msgpack.Unpacker(io.BytesIO(
        (tmp_path / "j" / jf.segment_name(1)).read_bytes()), raw=False))
    assert items[2][0] == 1 and items[2][2] == _packb(0, 10, GuestFrames(frame),
                                                      [TcpSend(1, b"x")])
    assert "encoding failed" in items[-1]["end"] and items[-1]["next_seq"] == 1
    # The pcap view does not depend on the journal: every frame is there.
    got = list(wpcap.read_pcap(io.BytesIO((tmp_path / "p.pcap").read_bytes())))
    assert [f for _, f in got] == [b"g" * 60, b"g" * 60]


def test_big_bytes_are_referenced_and_mutable_ones_copied() -> None:
    big = bytes(100_000)
    packer = jf.RecordPacker()
    packer.pack(1, 2, TcpData(7, big), [])
    parts, _ = packer.take()
    assert any(p is big for p in parts)
    buf = bytearray(100_000)
    packer.pack(1, 2, TcpData(7, buf), [])  # type: ignore[arg-type]
    parts, _ = packer.take()
    buf[0] = 1  # the transport reusing its buffer must not change what was packed
    assert b"".join(parts) == _packb(1, 2, TcpData(7, bytes(100_000)), [])


# ------------------------------------------------------------------------------ pcap_parts


_impls = [wpcap.pure_pcap_parts]
if _accel.native is not None:
    _impls.append(_accel.native.pcap_parts)


@pytest.mark.parametrize("impl", _impls)
@given(frames=st.lists(_blobs, max_size=6), tail=st.binary(max_size=6),
       ts_ns=st.integers(0, (1 << 32) * 1_000_000_000 - 1),
       snaplen=st.sampled_from([0, 1, 100, 4096, 65535, wpcap.SNAPLEN]),
       ref_over=st.sampled_from([0, 1, 4096, 1 << 40]), wrap=_mutable)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_pcap_parts_is_pcap_run(
    impl: Any, frames: list[bytes], tail: bytes, ts_ns: int, snaplen: int, ref_over: int,
    wrap: Any,
) -> None:
    run = _run(frames) + (len(tail) + 1).to_bytes(4, "big") + tail if tail else _run(frames)
    want = bytearray()
    count = fast.pure_pcap_run(want, run, ts_ns, snaplen)
    parts: list[Any] = []
    data = wrap(run)
    assert impl(parts, data, ts_ns, snaplen, ref_over) == (count, len(want))
    assert b"".join(parts) == want
    if type(data) is not bytes:
        assert all(type(p) is bytes for p in parts)  # nothing of a mutable run is kept
    # The pure and native paths cut the records into the same parts.
    other: list[Any] = []
    wpcap.pure_pcap_parts(other, data, ts_ns, snaplen, ref_over)
    assert [bytes(p) for p in parts] == [bytes(p) for p in other]


# -------------------------------------------------------------------- whole files on disk


def _expected_segment(data: bytes, records: dict[int, bytes]) -> bytes:
    """The segment as the straightforward encoding writes it: its start (header, snapshot)
    as found, then each batch rebuilt with :func:`format.batch` from the records it names."""
    unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False)
    header = unpacker.unpack()
    unpacker.unpack()  # [crc, snapshot]
    out = [data[: unpacker.tell()]]
    seq = header["segment"]["first_seq"]
    while True:
        start = unpacker.tell()
        try:
            item = unpacker.unpack()
        except msgpack.OutOfData:
            break
        if isinstance(item, dict):  # an end note
            out.append(data[start : unpacker.tell()])
            continue
        count = item[0]
        body = b"".join(records[s] for s in range(seq, seq + count))
        out.append(jf.batch(count, body))
        seq += count
    return b"".join(out)


def _pcap_expected(frames: list[tuple[int, bytes]]) -> tuple[bytes, set[int]]:
    out = bytearray()
    starts = {0}
    for ts, f in frames:
        head, cut = wpcap.record_parts(ts, f)
        out += head
        out += cut
        starts.add(len(out))
    return bytes(out), starts


def _frames_of(t_ns: int, event: Event, effects: list[Effect]) -> list[tuple[int, bytes]]:
    ts = ORIGIN_NS + t_ns
    return [(ts, bytes(f)) for _, f in jf.frames_of(event, effects)]


def _record_session(
    steps: list[tuple[tuple[Event, list[Effect]], bool]], threaded: bool, tmp: pathlib.Path,
    journal_max: int | None, pcap_max: int | None, policy: jw.Policy = "lossless",
) -> tuple[dict[int, bytes], list[tuple[int, bytes]]]:
    """Record ``steps`` (repeated to pass the bounds) with the real recorder; return the
    straightforward encoding of every record and every frame, in order."""
    header = jf.Header(seed=1, config={}, origin_ns=ORIGIN_NS, version="t", constants={})
    rec = jw.Recorder.open(header, journal_dir=str(tmp / "j"), pcap_path=str(tmp / "p.pcap"),
                           journal_max=journal_max, pcap_max=pcap_max, policy=policy,
                           threaded=threaded)
    state = {"seq": 0}
    rec.attach(lambda: {"seq": state["seq"], "now_ns": 0, "stack": {"x": 1}})
    records: dict[int, bytes] = {}
    frames: list[tuple[int, bytes]] = []
    # Bounded: on until the ring has dropped segments and the pcap has rotated.
    need = 0 if journal_max is None else 3 * journal_max
    rounds = 0
    while rounds == 0 or (sum(map(len, records.values())) < need and rounds < 2000):
        rounds += 1
        for (event, effects), flush in steps:
            seq = state["seq"]
            t_ns = seq * 1_000_003
            rec(seq, t_ns, event, effects)
            records[seq] = _packb(seq, t_ns, event, effects)
            frames += _frames_of(t_ns, event, effects)
            state["seq"] = seq + 1
            if flush or rec.flush_due:
                rec.flush()
                if rec.backlogged:
                    rec.wait_writable()
                elif policy == "lossy" and rec.writer.queued > rec.writer.budget // 2:
                    # Lossy drops what would pass the budget (by design): this test keeps the
                    # writer within it, so that every record and frame must reach the files.
                    rec.writer.wait_below(rec.writer.budget // 4)
        rec.flush()
    rec.close()
    assert rec.failures == 0 and rec.writer.lost_records == 0 and rec.writer.lost_frames == 0
    assert rec.pcap is not None and rec.pcap.lost_frames == 0
    assert rec.journal is not None and rec.journal.lost_records == 0
    return records, frames


_BIG_STEPS = [
    ((GuestFrames(_run([bytes([i]) * 65000 for i in range(3)])), [SendFrames(_run([b"a" * 60]))]),
     False),
    ((TcpData(1, b"d" * 70000), [SendFrames(_run([b"b" * 9000, b"c" * 100]))]), True),
    ((GuestFrame(b"e" * 5000), [SendFrame(b"f" * 70)]), False),
]


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("policy", ["lossless", "lossy"])  # lossy: the inline hand-over
@given(steps=_steps)
@example(steps=_BIG_STEPS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_files_are_the_straightforward_encoding(
    steps: list[tuple[tuple[Event, list[Effect]], bool]], threaded: bool, bounded: bool,
    policy: jw.Policy,
) -> None:
    big_steps = steps is _BIG_STEPS
    with tempfile.TemporaryDirectory() as name:
        tmp = pathlib.Path(name)
        journal_max = 8 * jw.MIN_SEGMENT_BYTES if bounded else None
        pcap_max = 256 << 10 if bounded else None
        records, frames = _record_session(steps, threaded, tmp, journal_max, pcap_max,
                                          policy)
        segs = sorted((tmp / "j").glob("*" + jf.SEGMENT_SUFFIX))
        assert segs
        for seg in segs:
            data = seg.read_bytes()
            assert data == _expected_segment(data, records), seg.name
        last = max(records)
        # The last segment ends with the last record: nothing was left out.
        tail = msgpack.Unpacker(io.BytesIO(segs[-1].read_bytes()), raw=False)
        items = list(tail)
        seq = items[0]["segment"]["first_seq"] + sum(i[0] for i in items[2:])
        assert seq == last + 1
        want, starts = _pcap_expected(frames)
        glob = wpcap.global_header()
        files = [tmp / "p.pcap.1", tmp / "p.pcap"]
        body = b""
        for f in files:
            if f.exists():
                raw = f.read_bytes()
                assert raw.startswith(glob)
                body += raw[len(glob) :]
        if bounded and sum(map(len, records.values())) >= 3 * (journal_max or 0):
            assert segs[0].name != jf.segment_name(1)  # the ring went round
            assert files[0].exists() or len(want) < jw.usable(pcap_max or 0) // 2
        if bounded:
            assert want.endswith(body) and len(want) - len(body) in starts
            if big_steps:
                assert files[0].exists() and segs[0].name != jf.segment_name(1)
        else:
            assert body == want
            assert not files[0].exists()
        if not bounded:
            got = list(wpcap.read_pcap(io.BytesIO((tmp / "p.pcap").read_bytes())))
            assert got == frames


def test_a_short_writev_is_finished_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.writev
    calls: list[int] = []

    def short(fd: int, parts: Any) -> int:
        calls.append(len(parts))
        total = sum(len(p) for p in parts)
        if total > 10:  # write a little less than asked, mid-part
            n = os.write(fd, b"".join(bytes(p) for p in parts)[: total // 2 + 1])
            return n
        return real(fd, parts)

    monkeypatch.setattr(jw, "_IOV_MAX", 3)
    monkeypatch.setattr(os, "writev", short)
    parts: list[Any] = [b"abc", memoryview(b"defgh"), b"", b"ijklmnop", b"q" * 20, b"rs", b"t"]
    r, w = os.pipe()
    try:
        jw._writev_all(w, parts)
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            assert f.read() == b"".join(bytes(p) for p in parts)
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    assert calls and max(calls) <= 3



@given(data=st.binary(max_size=3000), big=st.sampled_from([0, 1, 63, 64, 65, 4096, 70_001]),
       value=st.integers(0, 0xFFFFFFFF), offset=st.integers(0, 15))
@settings(max_examples=200, deadline=None)
def test_the_journals_crc32_is_zlibs(data: bytes, big: int, value: int, offset: int) -> None:
    buf = (data * (big // max(1, len(data)) + 1))[: len(data) + big] if data else bytes(big)
    view = memoryview(buf)[offset:]  # unaligned starts too
    assert crc32(view, value) == zlib.crc32(view, value)
    assert crc32(view, 0) == zlib.crc32(view)

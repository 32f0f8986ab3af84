from typing import Any

from _typeshed import ReadableBuffer

def ones_sum(data: ReadableBuffer, initial: int = 0, /) -> int: ...
def parse_frame(frame: ReadableBuffer, /) -> tuple[Any, ...]: ...
def scan_frames(run: ReadableBuffer, /) -> list[tuple[Any, ...]]: ...
def frames_end(buf: ReadableBuffer, n: int, max_frame: int, /) -> tuple[int, int, int]: ...
def tcp_run(
    out: bytearray,
    head: ReadableBuffer,
    ident: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    window: int,
    payload: ReadableBuffer,
    start: int,
    length: int,
    mss: int,
    flags: int,
    last_flags: int,
    /,
) -> int: ...
def tcp_frames(
    head: ReadableBuffer,
    ident: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    window: int,
    payload: ReadableBuffer,
    start: int,
    length: int,
    mss: int,
    flags: int,
    last_flags: int,
    /,
) -> bytes: ...
def pcap_run(out: bytearray, run: ReadableBuffer, ts_ns: int, snaplen: int, /) -> int: ...
def pcap_parts(
    parts: list[Any], run: ReadableBuffer, ts_ns: int, snaplen: int, ref_over: int, /
) -> tuple[int, int]: ...
def gro_scan(run: ReadableBuffer, /) -> list[tuple[Any, ...]]: ...

"""The fast path: the per-frame work of the data path, native when it can be.

Each function below exists twice: ``pure_*`` here, written with the codecs of this package (the
reference), and the same in C in :mod:`slirptrio.wire._native`. The exported names are the native
ones when the extension loaded (:data:`IMPL` says which, decided once at import; see
:mod:`slirptrio.wire._accel`), else the pure ones. Both give identical results and identical
bytes for every input (``tests/test_fast.py`` checks it with Hypothesis), so a journal recorded
on one path replays identical on the other.

Frames travel in *runs*: frames each preceded by its 4-byte big-endian length, which is exactly
QEMU's ``-netdev stream`` framing, so a run goes to a stream guest as it is.

Records: :func:`parse_frame` and :func:`scan_frames` describe a frame by a tuple whose first
three items are ``(kind, start, end)``, the frame's place in the buffer:

* ``(KIND_TCP, start, end, src_mac, src_ip, dst_ip, sport, dport, seq, ack, flags, window,
  tcp_header_len, payload_start, payload_end)`` — Ethernet II, unicast source, IPv4 without
  options and not a fragment, or IPv6 with TCP right after its 40-byte header (no extension
  headers; addresses are then 16 bytes), TCP, both checksums right (IPv6: over the 16-byte
  addresses' pseudo-header);
* ``(KIND_UDP, start, end, src_mac, src_ip, dst_ip, sport, dport, payload_start, payload_end)``
  — the same for UDP (a zero checksum means none over IPv4 and is refused over IPv6); the
  payload ends where the UDP length says;
* ``(KIND_OTHER, start, end)`` — anything else: the caller's general path parses it (and finds
  the precise reason when it is malformed);
* ``(KIND_TRUNCATED, start, end)`` — (runs only) bytes after the last whole frame.

Offsets are into the buffer given; addresses are ``bytes``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from slirptrio.wire import MalformedFrame, _accel
from slirptrio.wire.checksum import OnesSum
from slirptrio.wire.checksum import pure_ones_sum as pure_ones_sum
from slirptrio.wire.ethernet import build_ethernet
from slirptrio.wire.framing import frame_spans, split_run
from slirptrio.wire.ipv4 import build_ipv4, parse_ipv4
from slirptrio.wire.ipv6 import build_ipv6, parse_ipv6
from slirptrio.wire.tcp import build_tcp, parse_tcp
from slirptrio.wire.udp import parse_udp

_PCAP_RECORD = struct.Struct("<IIII")

KIND_TRUNCATED = -1
KIND_OTHER = 0
KIND_TCP = 6
KIND_UDP = 17

Record = tuple[Any, ...]
"""One frame's description; see the module docstring."""

IMPL = _accel.IMPL
"""``"native"`` or ``"pure"``."""
REASON = _accel.REASON
"""Why the pure path is in use ("" when native)."""


def pure_parse_frame(frame: bytes | bytearray | memoryview, base: int = 0) -> Record:
    """Describe one Ethernet frame (see the module docstring); ``base`` is added to offsets."""
    mv = memoryview(frame)
    n = len(mv)
    other: Record = (KIND_OTHER, base, base + n)
    if n < 14 or mv[6] & 1:
        return other
    try:
        if mv[12] == 0x08 and mv[13] == 0x00:
            hdr, body = parse_ipv4(mv[14:])
            if hdr.header_len != 20 or hdr.mf or hdr.frag_offset:
                return other
            src, dst, proto, l4 = hdr.src, hdr.dst, hdr.proto, base + 34
        elif mv[12] == 0x86 and mv[13] == 0xDD:
            hdr6, body = parse_ipv6(mv[14:])
            if hdr6.header_len != 40:  # extension headers or a fragment: the general path's
                return other
            src, dst, proto, l4 = hdr6.src, hdr6.dst, hdr6.proto, base + 54
        else:
            return other
        head = (bytes(mv[6:12]), src, dst)
        if proto == KIND_TCP:
            seg = parse_tcp(body, src, dst)
            thl = (body[12] >> 4) * 4
            return (
                KIND_TCP, base, base + n, *head, seg.sport, seg.dport, seg.seq, seg.ack,
                seg.flags, seg.window, thl, l4 + thl, l4 + len(body),
            )
        if proto == KIND_UDP:
            sport, dport, data = parse_udp(body, src, dst)
            return (KIND_UDP, base, base + n, *head, sport, dport, l4 + 8, l4 + 8 + len(data))
    except MalformedFrame:
        pass
    return other


def pure_scan_frames(run: bytes | bytearray | memoryview) -> list[Record]:
    """:func:`pure_parse_frame` for every frame of a run (empty frames are skipped)."""
    mv = memoryview(run)
    n = len(mv)
    out: list[Record] = []
    off = 0
    for start, off in frame_spans(mv):
        if off > start:
            out.append(pure_parse_frame(mv[start:off], start))
    if off < n:
        out.append((KIND_TRUNCATED, off, n))
    return out


ACK = 0x10
PSH = 0x08
_M = 0xFFFFFFFF
_HALF = 0x80000000


class _Batch:
    """One flow's segments gathered from a run (see :func:`pure_gro_scan`)."""

    __slots__ = (
        "ack", "count", "dst_mac", "first", "flags", "last_off", "mac", "next_seq", "parts", "seq",
        "window",
    )

    def __init__(self, r: Record, plen: int, dst_mac: bytes) -> None:
        self.first = r
        self.mac: bytes = r[3]
        self.dst_mac = dst_mac
        self.seq: int = r[8]
        self.next_seq = (r[8] + plen) & _M
        self.ack: int = r[9]
        self.flags: int = r[10]
        self.window: int = r[11]
        self.parts: list[tuple[int, int]] = [(r[13], r[14])] if plen else []
        self.count = 1
        self.last_off = 0  # where the last segment starts, from seq

    def takes(self, r: Record, plen: int, dst_mac: bytes) -> bool:
        """Add segment ``r`` (sent to ``dst_mac``) if it continues this batch (same kind, same
        MACs, in order)."""
        if r[3] != self.mac or dst_mac != self.dst_mac:
            return False
        flags = r[10]
        step = (r[9] - self.ack) & _M
        if self.parts:
            if not plen or flags & ~PSH != ACK or r[8] != self.next_seq or step >= _HALF:
                return False
            self.parts.append((r[13], r[14]))
            self.last_off = (r[8] - self.seq) & _M
            self.next_seq = (self.next_seq + plen) & _M
            self.flags |= flags
        elif plen or flags != ACK or r[8] != self.seq or not 0 < step < _HALF:
            return False
        self.ack = r[9]
        self.window = r[11]
        self.count += 1
        return True

    def item(self, mv: memoryview) -> Record:
        r, parts = self.first, self.parts
        if not parts:
            payload = b""
        elif len(parts) == 1:
            payload = bytes(mv[parts[0][0] : parts[0][1]])
        else:
            payload = b"".join([mv[s:e] for s, e in parts])
        return (
            KIND_TCP, self.mac, r[4], r[5], r[6], r[7], self.seq, self.ack, self.flags,
            self.window, payload, self.count, self.last_off, self.dst_mac,
        )


def pure_gro_scan(run: bytes | bytearray | memoryview) -> list[Record]:
    """The frames of a run as the stack takes them, each TCP flow's segments coalesced (GRO).

    Items, in the order to handle them:

    * ``(KIND_TCP, src_mac, src_ip, dst_ip, sport, dport, seq, ack, flags, window, payload,
      count, last_off, dst_mac)`` — one segment standing for ``count`` frames of one flow:
      in-order data segments (flags ACK or ACK|PSH, no TCP options, the acknowledgement never
      going back, one source MAC and one destination MAC ``dst_mac``) carry all their bytes,
      the last one's acknowledgement and window, and ``last_off``, where the last one started
      from ``seq``; a row of pure ACKs that each
      advance the acknowledgement is its last one. Any other segment without options (a FIN,
      a SYN, out of order) is an item of its own (``count`` 1), after what was gathered for its
      flow;
    * ``(KIND_OTHER, start, end)`` — any other frame (not IPv4 TCP, TCP with options, a bad
      checksum...), for the general path; everything gathered so far comes before it;
    * ``(KIND_TRUNCATED, start, end)`` — bytes after the last whole frame.

    Gathered segments are handed over in the order their first segment came; a flow's batch
    ends (and a new one may start) at any segment that does not continue it.
    """
    mv = memoryview(run)
    out: list[Record] = []
    batches: dict[tuple[bytes, int, bytes, int], _Batch] = {}
    for r in pure_scan_frames(run):
        kind = r[0]
        if kind != KIND_TCP or r[12] != 20:
            out.extend(b.item(mv) for b in batches.values())
            batches.clear()
            out.append((KIND_TRUNCATED if kind == KIND_TRUNCATED else KIND_OTHER, r[1], r[2]))
            continue
        key = (r[4], r[6], r[5], r[7])
        flags = r[10]
        plen = r[14] - r[13]
        dst_mac = bytes(mv[r[1] : r[1] + 6])
        b = batches.get(key)
        if b is not None:
            if b.takes(r, plen, dst_mac):
                continue
            del batches[key]
            out.append(b.item(mv))
        if flags == ACK or (plen and flags == ACK | PSH):
            batches[key] = _Batch(r, plen, dst_mac)
        else:
            out.append((
                KIND_TCP, r[3], r[4], r[5], r[6], r[7], r[8], r[9], flags, r[11],
                bytes(mv[r[13] : r[14]]), 1, 0, dst_mac,
            ))
    out.extend(b.item(mv) for b in batches.values())
    return out


def pure_frames_end(
    buf: bytes | bytearray | memoryview, n: int, max_frame: int
) -> tuple[int, int, int]:
    """Where the whole frames of the run in ``buf[:n]`` end: ``(end, count, oversized)``.

    ``count`` is how many non-empty frames lie before ``end``; ``oversized`` is the length
    field found at ``end`` when it exceeds ``max_frame`` (the stream is then out of sync),
    else 0.
    """
    if not 0 <= n <= len(buf):
        raise ValueError("n out of range")
    off = count = 0
    while off + 4 <= n:
        length = int.from_bytes(buf[off : off + 4], "big")
        if length > max_frame:
            return off, count, length
        if length > n - off - 4:
            break
        if length:
            count += 1
        off += 4 + length
    return off, count, 0


def pure_tcp_run(
    out: bytearray,
    head: bytes | bytearray | memoryview,
    ident: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    window: int,
    payload: bytes | bytearray | memoryview,
    start: int,
    length: int,
    mss: int,
    flags: int,
    last_flags: int,
) -> int:
    """Append the TCP segments carrying ``payload[start:start + length]`` to ``out`` as a
    run; return how many.

    ``head`` is a 34-byte template: the Ethernet header (destination, source, 0x0800) and an
    IPv4 header without options for protocol 6, whose length, identification and checksum
    are filled in per segment (identification ``ident``, ``ident + 1``, ... mod 2**16); or a
    54-byte one: the Ethernet header (0x86dd) and an IPv6 header with next header 6, whose
    payload length is filled in per segment (``ident`` is then unused). Segments
    carry at most ``mss`` bytes, sequence numbers from ``seq`` (mod 2**32), ``ack`` and
    ``window`` as given, no options, and ``flags`` — the last one ``last_flags``. An empty
    range gives one segment without data. Frames are padded to 60 bytes.
    """
    hv = memoryview(head)
    v6 = len(hv) == 54
    if (
        (hv[12] != 0x86 or hv[13] != 0xDD or hv[14] >> 4 != 6 or hv[20] != 6) if v6 else (
            len(hv) != 34 or hv[12] != 0x08 or hv[13] != 0x00 or hv[14] != 0x45 or hv[23] != 6
            or ((hv[20] << 8 | hv[21]) & 0xBFFF)
        )
    ):
        raise ValueError("head must be an Ethernet + IPv4 or IPv6 TCP header template")
    for name, value, top in (
        ("ident", ident, 0xFFFF), ("sport", sport, 0xFFFF), ("dport", dport, 0xFFFF),
        ("seq", seq, 0xFFFFFFFF), ("ack", ack, 0xFFFFFFFF), ("window", window, 0xFFFF),
        ("mss", mss, 0xFFFF), ("flags", flags, 0xFF), ("last_flags", last_flags, 0xFF),
    ):
        if not 0 <= value <= top or (name == "mss" and value == 0):
            raise ValueError(f"{name} out of range")
    pv = memoryview(payload)
    if start < 0 or length < 0 or start > len(pv) or length > len(pv) - start:
        raise ValueError("payload range out of bounds")
    if (20 if v6 else 40) + min(length, mss) > 0xFFFF:
        raise ValueError("IPv6 payload too long" if v6 else "IPv4 datagram too long")
    dst_mac, src_mac = bytes(hv[0:6]), bytes(hv[6:12])
    tos, ttl, df = hv[15], hv[22], bool(hv[20] & 0x40)
    src, dst = (bytes(hv[22:38]), bytes(hv[38:54])) if v6 else (bytes(hv[26:30]), bytes(hv[30:34]))
    vtf = int.from_bytes(hv[14:18], "big")
    count = -(-length // mss) if length else 1
    pos = start
    for i in range(count):
        n = min(mss, start + length - pos)
        seg = build_tcp(
            src, dst, sport, dport, seq, ack, last_flags if i == count - 1 else flags, window,
            pv[pos : pos + n],
        )
        if v6:
            packet = build_ipv6(src, dst, 6, seg, hop_limit=hv[21], tc=(vtf >> 20) & 0xFF,
                                flow_label=vtf & 0xFFFFF)
            frame = build_ethernet(dst_mac, src_mac, 0x86DD, packet)
        else:
            packet = build_ipv4(src, dst, 6, seg, ident=(ident + i) & 0xFFFF, ttl=ttl, tos=tos,
                                df=df)
            frame = build_ethernet(dst_mac, src_mac, 0x0800, packet)
        out += len(frame).to_bytes(4, "big")
        out += frame
        pos += n
        seq = (seq + n) & 0xFFFFFFFF
    return count


def pure_tcp_frames(
    head: bytes | bytearray | memoryview,
    ident: int,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    window: int,
    payload: bytes | bytearray | memoryview,
    start: int,
    length: int,
    mss: int,
    flags: int,
    last_flags: int,
) -> bytes:
    """The run :func:`tcp_run` would append to an empty bytearray, as ``bytes`` (natively
    built in place: the one copy of the payload, no bytearray to copy out of)."""
    out = bytearray()
    pure_tcp_run(
        out, head, ident, sport, dport, seq, ack, window, payload, start, length, mss, flags,
        last_flags,
    )
    return bytes(out)


def pure_pcap_run(
    out: bytearray, run: bytes | bytearray | memoryview, ts_ns: int, snaplen: int
) -> int:
    """Append a nanosecond pcap record (little-endian header: seconds, nanoseconds, captured
    length, length; then the frame cut to ``snaplen``) for every frame of ``run`` to ``out``;
    return how many. Empty frames and a truncated tail are left out (as :func:`split_run`)."""
    if not 0 <= ts_ns < (1 << 32) * 1_000_000_000:
        raise ValueError("ts_ns out of range")
    if not 0 <= snaplen <= 0xFFFFFFFF:
        raise ValueError("snaplen out of range")
    sec, ns = divmod(ts_ns, 1_000_000_000)
    frames = split_run(run)
    for frame in frames:
        cap = frame[:snaplen]
        out += _PCAP_RECORD.pack(sec, ns, len(cap), len(frame))
        out += cap
    return len(frames)


ones_sum: OnesSum
parse_frame: Callable[[bytes | bytearray | memoryview], Record]
scan_frames: Callable[[bytes | bytearray | memoryview], list[Record]]
frames_end: Callable[[bytes | bytearray | memoryview, int, int], tuple[int, int, int]]
tcp_run: Callable[..., int]
tcp_frames: Callable[..., bytes]
gro_scan: Callable[[bytes | bytearray | memoryview], list[Record]]
pcap_run: Callable[[bytearray, bytes | bytearray | memoryview, int, int], int]

if _accel.native is not None:
    _n = _accel.native
    ones_sum, parse_frame, scan_frames, frames_end, tcp_run, pcap_run = (
        _n.ones_sum, _n.parse_frame, _n.scan_frames, _n.frames_end, _n.tcp_run, _n.pcap_run
    )
    gro_scan, tcp_frames = _n.gro_scan, _n.tcp_frames
else:
    ones_sum = pure_ones_sum
    parse_frame, scan_frames, frames_end, tcp_run, pcap_run = (
        pure_parse_frame, pure_scan_frames, pure_frames_end, pure_tcp_run, pure_pcap_run
    )
    gro_scan, tcp_frames = pure_gro_scan, pure_tcp_frames

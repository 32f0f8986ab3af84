"""Flight recorder figures that need no network: snapshots, replay speed, replay start.

``python -m benchmarks.recorder [--quick] [--output FILE]`` measures, in this process:

* the journal's cost to the door loop: the loop thread's CPU time for a synthetic bulk download
  with no recording, the journal, and journal + pcap (the writer thread does the disk work);
* snapshot size and time for 10, 1,000 and 5,000 open TCP flows, idle (empty buffers) and busy
  (each with 16 KiB sent to the guest and not yet acknowledged, and 4 KiB out of order from
  it): ``Door.snapshot()``, its msgpack packing, and restoring a fresh core from it;
* replay speed in MB of journal per second, for a bulk TCP download at MTU 1500 and 65520
  (a synthetic session: the host sends 64 KiB reads, the guest acknowledges every segment);
* the time to start replaying at the last snapshot of a 1 GB journal (default bound, so
  segments of 128 MiB): open the journal, find the segment, read its header and snapshot,
  restore the core and replay the first record.

All figures are CPU-bound and local; on a shared machine run it when the machine is quiet.
Results go to stdout and to ``benchmarks/recorder-results.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from replay.engine import Target, replay_journal
from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    Effect,
    GuestFrame,
    SendFrame,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpSent,
)
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import open_journal
from slirptrio.journal import writer as jw
from slirptrio.wire import ethernet as weth
from slirptrio.wire import ipv4 as wip
from slirptrio.wire.tcp import ACK, SYN, build_tcp, parse_tcp
from tests.journals import header_for

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "recorder-results.md"
GUEST = bytes([10, 0, 2, 15])
REMOTE = bytes([203, 0, 113, 1])
GW_MAC = bytes.fromhex("52550a000202")
GUEST_MAC = bytes.fromhex("525400123456")
M = 0xFFFFFFFF


def _frame(sport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
           window: int = 65535, **kw: Any) -> GuestFrame:
    seg = build_tcp(GUEST, REMOTE, sport, 80, seq & M, ack & M, flags, window, payload, **kw)
    packet = wip.build_ipv4(GUEST, REMOTE, 6, seg)
    return GuestFrame(weth.build_ethernet(GW_MAC, GUEST_MAC, weth.ETH_P_IP, packet))


def _segments_to(effects: list[Effect], sport: int) -> list[Any]:
    out = []
    for e in effects:
        if isinstance(e, SendFrame):
            data = e.data
            ihl = (data[14] & 15) * 4
            tcp = parse_tcp(data[14 + ihl :], REMOTE, GUEST)
            if tcp.dport == sport:
                out.append(tcp)
    return out


class Guest:
    """Opens TCP connections through a door and plays the guest's side of them."""

    def __init__(self, door: Door, mtu: int) -> None:
        self.door = door
        self.t = 0
        self.mss = mtu - 40
        self.conns: dict[int, tuple[int, int]] = {}  # sport -> (flow, next seq to ack)

    def step(self, event: Any) -> list[Effect]:
        self.t += 20_000
        return self.door.step(event, self.t)

    def open(self, sport: int) -> int:
        effects = self.step(_frame(sport, 1000, 0, SYN, mss=self.mss, wscale=7))
        flow = next(e.flow for e in effects if isinstance(e, TcpConnect))
        (synack,) = _segments_to(self.step(TcpConnected(flow)), sport)
        self.step(_frame(sport, 1001, synack.seq + 1, ACK, window=65535))
        self.conns[sport] = (flow, synack.seq + 1)
        return flow

    def host_sends(self, sport: int, data: bytes, ack: bool = True) -> None:
        flow, _ = self.conns[sport]
        segs = _segments_to(self.step(TcpData(flow, data)), sport)
        if ack and segs:
            last = segs[-1]
            end = (last.seq + len(last.payload)) & M
            for s in segs:  # the guest acks each segment, as a Linux receiver does
                self.step(_frame(sport, 1001, s.seq + len(s.payload), ACK, window=65535))
            self.conns[sport] = (flow, end)


def stack_with_flows(n: int, busy: bool) -> Door:
    door = Door(Stack(parse_user_options("max-flows=10000"), 1))
    guest = Guest(door, 1500)
    for i in range(n):
        sport = 10000 + i
        flow = guest.open(sport)
        if busy:
            guest.host_sends(sport, bytes(16384), ack=False)
            _, nxt = guest.conns[sport]
            door.step(_frame(sport, 1001 + 1000, nxt, ACK, bytes(4096)), guest.t)
            door.step(TcpSent(flow, 0), guest.t)
    return door


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    best = float("inf")
    out: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_snapshots(counts: list[int]) -> list[str]:
    rows = ["| open flows | buffers | snapshot | pack | size | restore |",
            "|---|---|---|---|---|---|"]
    config = parse_user_options("max-flows=10000")
    for n in counts:
        for busy in (False, True):
            door = stack_with_flows(n, busy)
            t_snap, snap = timed(door.snapshot)

            def pack(s: dict[str, Any] = snap) -> bytes:
                return bytes(msgpack.packb(s, use_bin_type=True))

            t_pack, packed = timed(pack)
            plain = msgpack.unpackb(packed, raw=False, strict_map_key=False)

            def restore(p: dict[str, Any] = plain) -> Door:
                return Door.from_snapshot(config, p)

            t_rest, _ = timed(restore)
            kind = "16 KiB unacked + 4 KiB out of order each" if busy else "empty"
            rows.append(f"| {n:,} | {kind} | {t_snap * 1e3:,.1f} ms | {t_pack * 1e3:,.1f} ms | "
                        f"{len(packed) / 1024:,.0f} KiB | {t_rest * 1e3:,.1f} ms |")
            print(rows[-1], flush=True)
    return rows


def record_bulk(path: Path, mtu: int, nbytes: int, journal_max: int | None) -> int:
    """A journal of one bulk download of ``nbytes`` at ``mtu``; returns its size in bytes."""
    config = parse_user_options(f"mtu={mtu}" if mtu != 1500 else "")
    rec = jw.Recorder.open(header_for(config, 1), journal_dir=str(path), pcap_path=None,
                           journal_max=journal_max, pcap_max=None, threaded=True)
    door = Door(Stack(config, 1), rec)
    rec.attach(door.snapshot)
    guest = Guest(door, mtu)
    guest.open(40000)
    chunk = bytes(range(256)) * 256  # 64 KiB host reads
    sent = 0
    while sent < nbytes:
        guest.host_sends(40000, chunk)
        sent += len(chunk)
        rec.flush()  # a burst
    rec.close()
    return sum(s.size for s in open_journal(path).segments)


def _loop_seconds(tmp: Path, mtu: int, nbytes: int, mode: str) -> float:
    """CPU seconds of the door loop (this thread) for a bulk download, recorded per ``mode``."""
    config = parse_user_options(f"mtu={mtu}" if mtu != 1500 else "")
    rec = None
    if mode != "off":
        shutil.rmtree(tmp / "cost", ignore_errors=True)
        rec = jw.Recorder.open(header_for(config, 1), journal_dir=str(tmp / "cost" / "j"),
                               pcap_path=str(tmp / "cost" / "p.pcap") if mode == "pcap" else None,
                               journal_max=None, pcap_max=None)
    door = Door(Stack(config, 1), rec)
    if rec is not None:
        rec.attach(door.snapshot)
    guest = Guest(door, mtu)
    guest.open(40000)
    chunk = bytes(range(256)) * 256
    t0 = time.thread_time()
    for _ in range(nbytes // len(chunk)):
        guest.host_sends(40000, chunk)
        if rec is not None:
            rec.flush()
    spent = time.thread_time() - t0
    if rec is not None:
        rec.close()
    return spent


def bench_cost(tmp: Path, nbytes: int) -> list[str]:
    """The journal's cost in the door loop: CPU time of the loop thread, with the writer
    thread doing the disk work, against no recording at all."""
    rows = ["| bulk download, MTU | off | journal only | journal + pcap | cost: journal only "
            "| cost: journal + pcap |", "|---|---|---|---|---|---|"]
    for mtu in (1500, 65520):
        best = {m: min(_loop_seconds(tmp, mtu, nbytes, m) for _ in range(5))
                for m in ("off", "journal", "pcap")}
        off = best["off"]
        rows.append(f"| {nbytes >> 20} MiB, MTU {mtu} | {off:.2f} s | {best['journal']:.2f} s | "
                    f"{best['pcap']:.2f} s | {best['journal'] / off - 1:.0%} | "
                    f"{best['pcap'] / off - 1:.0%} |")
        print(rows[-1], flush=True)
    shutil.rmtree(tmp / "cost", ignore_errors=True)
    return rows


def bench_replay(tmp: Path, nbytes: int) -> list[str]:
    rows = ["| session | journal | replay | MB of journal/s | records/s |", "|---|---|---|---|---|"]
    for mtu in (1500, 65520):
        path = tmp / f"bulk-{mtu}"
        size = record_bulk(path, mtu, nbytes, None)
        t0 = time.perf_counter()
        result = replay_journal(path)
        dt = time.perf_counter() - t0
        assert result.identical
        rows.append(f"| download of {nbytes >> 20} MiB, MTU {mtu} | {size / 1e6:,.0f} MB | "
                    f"{dt:,.1f} s | {size / 1e6 / dt:,.1f} | {result.records / dt:,.0f} |")
        print(rows[-1], flush=True)
        shutil.rmtree(path)
    return rows


def bench_start(tmp: Path, nbytes: int) -> list[str]:
    path = tmp / "big"
    t0 = time.perf_counter()
    size = record_bulk(path, 1500, nbytes, jw.DEFAULT_JOURNAL_MAX)
    made = time.perf_counter() - t0
    journal = open_journal(path)
    last = journal.segments[-1]
    assert last.first_seq is not None
    first_seq = last.first_seq
    # The whole path of `slirptrio replay --from #N`, up to the first record replayed.
    t0 = time.perf_counter()
    result = replay_journal(path, start=Target(seq=first_seq), until=Target(seq=first_seq + 1))
    start = time.perf_counter() - t0
    assert result.identical and result.records == 1
    t0 = time.perf_counter()
    opened = open_journal(path)
    listing = time.perf_counter() - t0
    rows = [
        "| journal | segments | made in | open + list segments | start at the last snapshot "
        "(first record replayed) | target |",
        "|---|---|---|---|---|---|",
        f"| {size / 1e9:.2f} GB (bulk download, MTU 1500) | {len(opened.segments)} | "
        f"{made:.0f} s | {listing * 1e3:.0f} ms | {start:.2f} s | < 2 s |",
    ]
    print(rows[-1], flush=True)
    shutil.rmtree(path)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recorder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smaller sessions (a 64 MiB journal for the start time)")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="slirptrio-recorder-", dir="/tmp"))
    started = time.time()
    try:
        out = [
            "# Flight recorder figures",
            "",
            f"Run {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}; "
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f} at the start."
            " CPU-bound, in one process; best of 3 for the snapshot figures. On a shared machine"
            " (load above the CPU count) expect the times to be up to 2-4x too long.",
            "",
            "## Snapshots",
            "",
            *bench_snapshots([10, 1000, 5000]),
            "",
            "## The journal's cost in the door loop",
            "",
            "CPU time of the loop's thread (``time.thread_time``) for a synthetic bulk "
            "download through the core, best of 5; the writer thread does the disk work.",
            "",
            *bench_cost(tmp, (16 if args.quick else 64) << 20),
            "",
            "## Replay speed",
            "",
            *bench_replay(tmp, (32 if args.quick else 256) << 20),
            "",
            "## Starting a replay at the last snapshot",
            "",
            *bench_start(tmp, (64 << 20) if args.quick else (1 << 30)),
            "",
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(out)
    print(text)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

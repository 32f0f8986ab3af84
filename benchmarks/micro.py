"""CPU cost per segment of the core's data path, in a tight loop: no sockets, no trio.

``python -m benchmarks.micro [--direction up|down] [--segments N] [--mss N] [--per-frame]
[--no-journal] [--no-pcap]`` drives one TCP connection through the door (the code a live
session runs: :class:`~slirptrio.door.Door`, the journal writer and the pcap writer into
temporary files) and prints microseconds of CPU per guest-side segment. Unlike the
end-to-end benchmark it is not disturbed by other processes' load, so it is the figure to
compare while changing the data path.

* ``up`` (guest→host): the guest sends full segments in bursts of ``--burst``; each burst is
  one :class:`GuestFrames` event (``--per-frame``: one :class:`GuestFrame` per segment, as
  before batching), then one ``TcpSent`` for what the core handed over, as the shell reports.
* ``down`` (host→guest): the host side delivers 256 KiB reads (``TcpData``) as credit allows;
  the guest acknowledges every second segment, the acknowledgements of one read in one burst.

The journal and pcap go to a temporary directory through the flight recorder's writer thread
(the page cache; the thread's CPU time is in the figure, as process time). The fast path in use
(native or pure, ``SLIRPTRIO_PURE=1``) is printed, and the journal's counts: records, bytes
packed, and how many of those were referenced rather than copied on the loop. A first pass
drives the connection and keeps its inputs; the timed passes feed exactly those inputs through
fresh sessions, so the driver's own work is not in the figure.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from typing import Any

from slirptrio import __version__
from slirptrio.config import parse_user_options
from slirptrio.core import constants
from slirptrio.core import events as ev
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import Header
from slirptrio.journal.writer import Recorder

try:
    from slirptrio.wire import fast

    FAST = fast.IMPL
except ImportError:  # a version without the fast path
    FAST = "none"
from slirptrio.heap import keep_buffers_on_heap
from slirptrio.wire.ethernet import build_ethernet
from slirptrio.wire.ipv4 import build_ipv4
from slirptrio.wire.tcp import ACK, PSH, SYN, build_tcp, parse_tcp

GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("52550a000202")
GUEST = bytes([10, 0, 2, 15])
HOST = bytes([10, 0, 2, 2])
GPORT, HPORT = 40000, 5201

_GuestFrames: Any = getattr(ev, "GuestFrames", None)
_FrameRuns: Any = getattr(ev, "FrameRuns", None)
_SendFrames: Any = getattr(ev, "SendFrames", None)


def tcp_frame(seq: int, ack: int, flags: int, payload: bytes = b"", **opts: Any) -> bytes:
    seg = build_tcp(GUEST, HOST, GPORT, HPORT, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags,
                    0xFFFF, payload, **opts)
    return build_ethernet(GW_MAC, GUEST_MAC, 0x0800, build_ipv4(GUEST, HOST, 6, seg, ident=1))


def frames_out(effects: list[ev.Effect]) -> list[bytes]:
    out: list[bytes] = []
    for e in effects:
        if type(e) is ev.SendFrame:
            out.append(e.data)
        elif _SendFrames is not None and type(e) is _SendFrames:
            data: bytes = getattr(e, "data")  # noqa: B009 - not in every version's events
            off = 0
            while off < len(data):
                n = int.from_bytes(data[off : off + 4], "big")
                out.append(data[off + 4 : off + 4 + n])
                off += 4 + n
    return out


_numbers = itertools.count()


class Session:
    def __init__(self, journal: bool, pcap: bool, runs: bool, tmp: str, mss: int) -> None:
        self.mss = mss
        config = parse_user_options(f"mtu={mss + 40}" if mss + 40 != 1500 else "")
        self.stack = Stack(config, 1)
        n = next(_numbers)  # not id(self): a new session may reuse a freed one's
        header = Header(seed=1, config=config.to_dict(), origin_ns=0, version=__version__,
                        constants=constants.gather())
        self.recorder = Recorder.open(
            header,
            journal_dir=os.path.join(tmp, f"m{n}.journal") if journal else None,
            pcap_path=os.path.join(tmp, f"m{n}.pcap") if pcap else None,
            policy="lossless",  # nothing dropped: every byte's cost is in the figure
        )
        self.door = Door(self.stack, self.recorder)
        self.recorder.attach(self.door.snapshot)
        self.now = 0
        self.events: list[ev.Event] = []  # every input, to be timed again in one loop
        self.loop_start = 0  # index in events where the measured part starts
        self.runs = runs
        if runs:
            self.step(_FrameRuns(True))

    def step(self, event: ev.Event) -> list[ev.Effect]:
        self.now += 1000
        self.events.append(event)
        effects = self.door.step(event, self.now)
        self.flush()
        return effects

    def flush(self) -> None:
        """As the runtime after a burst: hand the records over; wait while the writer is
        behind its budget (the lossless policy's backpressure)."""
        self.recorder.flush()
        if self.recorder.backlogged:
            self.recorder.wait_writable()

    def guest(self, frames: list[bytes]) -> list[ev.Effect]:
        if self.runs:
            run = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
            return self.step(_GuestFrames(run))
        out: list[ev.Effect] = []
        for f in frames:
            out += self.step(ev.GuestFrame(f))
        return out

    def handshake(self) -> tuple[int, int, int, list[ev.Effect]]:
        """Open the connection; returns (flow, guest seq, guest ack, the effects so far)."""
        effects = self.guest([tcp_frame(1000, 0, SYN, mss=self.mss, wscale=7)])
        flow = next(e.flow for e in effects if type(e) is ev.TcpConnect)
        effects = self.step(ev.TcpConnected(flow))
        synack = parse_tcp(frames_out(effects)[0][34:], HOST, GUEST)
        effects += self.guest([tcp_frame(1001, synack.seq + 1, ACK)])
        return flow, 1001, synack.seq + 1, effects


def up(s: Session, segments: int, burst: int, mss: int) -> None:
    flow, seq, ack, _ = s.handshake()
    payload = bytes(range(256)) * (mss // 256 + 1)
    payload = payload[:mss]
    frames = [tcp_frame(seq + i * mss, ack, ACK | PSH, payload) for i in range(segments)]
    s.loop_start = len(s.events)
    for i in range(0, segments, burst):
        effects = s.guest(frames[i : i + burst])
        sent = sum(len(e.data) for e in effects if type(e) is ev.TcpSend)
        if sent:
            s.step(ev.TcpSent(flow, sent))


def down(s: Session, segments: int, mss: int) -> None:
    flow, seq, ack, effects = s.handshake()
    credit = 0
    chunk = bytes(range(256)) * 1024
    rcv = ack  # what the guest has received
    sent_segments = 0
    s.loop_start = len(s.events)
    while sent_segments < segments:
        credit += sum(e.n for e in effects if type(e) is ev.TcpRecvCredit)
        n = min(credit, len(chunk))
        effects = s.step(ev.TcpData(flow, chunk[:n])) if n else []
        credit -= n
        acks: list[bytes] = []
        got = frames_out(effects)
        for i, f in enumerate(got):
            rcv += int.from_bytes(f[16:18], "big") - 40
            if i % 2 == 1 or i == len(got) - 1:
                acks.append(tcp_frame(seq, rcv, ACK))
        sent_segments += len(got)
        more = s.guest(acks) if acks else []
        effects = effects + more
        if not got and not n:
            raise RuntimeError("stalled")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--direction", choices=["up", "down"], default="up")
    p.add_argument("--segments", type=int, default=20000)
    p.add_argument("--burst", type=int, default=32)
    p.add_argument("--mss", type=int, default=1460, help="the guest MTU is this + 40")
    p.add_argument("--per-frame", action="store_true", help="one event per guest frame")
    p.add_argument("--no-journal", action="store_true")
    p.add_argument("--no-pcap", action="store_true")
    p.add_argument("--repeat", type=int, default=5, help="report the best of N runs")
    args = p.parse_args(argv)
    keep_buffers_on_heap()  # as the command line does for a live stack
    runs = not args.per_frame and _GuestFrames is not None
    best = None
    counts = ""
    with tempfile.TemporaryDirectory(prefix="slirptrio-micro-") as tmp:
        # A first pass drives the connection and keeps its inputs; the timed passes run
        # just those inputs through fresh sessions (the core is deterministic).
        s = Session(False, False, runs, tmp, args.mss)
        if args.direction == "up":
            up(s, args.segments, args.burst, args.mss)
        else:
            down(s, args.segments, args.mss)
        setup = s.events[: s.loop_start]
        loop = s.events[s.loop_start :]
        if runs:
            setup = setup[1:]  # FrameRuns: a new session sends it itself
        for _ in range(args.repeat):
            t = Session(not args.no_journal, not args.no_pcap, runs, tmp, args.mss)
            for e in setup:
                t.step(e)
            t0 = time.process_time()
            for e in loop:
                t.now += 1000
                t.door.step(e, t.now)
                t.flush()
            t.recorder.close()  # the writer thread's work counts too
            us = int((time.process_time() - t0) * 1e6)
            best = us if best is None else min(best, us)
            journal = t.recorder.journal
            if journal is not None and hasattr(journal, "referenced_bytes"):
                counts = (f"; journal: {journal.records} records, {journal.record_bytes} bytes "
                          f"packed, {journal.referenced_bytes} of them referenced (not copied)")
    assert best is not None
    per = best / args.segments
    gbit = args.mss * 8 / (per * 1000) if per else 0.0
    print(
        f"{args.direction} mss={args.mss} {'bursts' if runs else 'per-frame'} "
        f"journal={'off' if args.no_journal else 'on'} pcap={'off' if args.no_pcap else 'on'} "
        f"fast={FAST}: {per:.2f} us/segment ({gbit:.2f} Gbit/s of payload if alone){counts}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A scripted session through the real core, journaled: a test plays both the guest (frames
with explicit times) and the host shell (events answering the core's effects).

Used to give the summary and the timeline sessions with known outcomes: connections that
close with FIN, are refused, time out, are reset by the host or the guest, retransmit; DNS
lookups; a UDP datagram answered with "port unreachable"; a DHCP lease.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import weakref
from typing import Any

import dpkt

from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    DnsUpstreams,
    Effect,
    Event,
    FrameRuns,
    GuestFrame,
    GuestFrames,
    GuestLink,
    SendFrame,
    SendFrames,
    TcpConnect,
    TcpConnected,
    TcpConnectFailed,
    TcpData,
    TcpDataSent,
    TcpEof,
    TcpReset,
    TcpSend,
    TcpSent,
    Tick,
    UdpError,
    UdpOpen,
    UdpReceived,
    UdpSend,
)
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal.writer import Recorder
from slirptrio.wire import ethernet as weth
from slirptrio.wire import ipv4 as wip
from slirptrio.wire import tcp as wtcp
from slirptrio.wire import udp as wudp
from slirptrio.wire.framing import encode_frame, split_run
from tests import guestframes as gf
from tests.journals import header_for

MS = 1_000_000
GUEST = socket.inet_aton("10.0.2.15")
HOST_MAC = bytes.fromhex("52550a000202")


class Session:
    """Drives a :class:`Stack` through a door that writes a real journal (format 3, a
    directory under ``path``, or a temporary one removed with the session). With ``runs``,
    as the runtime does: FrameRuns on, and the guest's frames arrive as runs (GuestFrames)."""

    def __init__(self, options: str = "", seed: int = 5, path: str | None = None,
                 journal_max: int | None = None, runs: bool = False) -> None:
        self.config = parse_user_options(options)
        self.stack = Stack(self.config, seed)
        if path is None:
            tmp = tempfile.mkdtemp(prefix="st-session-")
            weakref.finalize(self, shutil.rmtree, tmp, True)
            path = os.path.join(tmp, "session.journal")
        self.path = path
        self.recorder = Recorder.open(
            header_for(self.config, seed, 10**18), journal_dir=path, pcap_path=None,
            journal_max=journal_max, pcap_max=None, threaded=False,
        )
        self.door = Door(self.stack, self.recorder)
        self.recorder.attach(self.door.snapshot)
        self.now = 0
        self.out: list[Effect] = []
        self._ip_id = 1
        self.runs = runs
        if runs:
            self.step(FrameRuns(True), 0)

    # -- plumbing --------------------------------------------------------------------------

    def step(self, event: Event, dt_ms: float = 1.0) -> list[Effect]:
        self.now += int(dt_ms * MS)
        effects = self.door.step(event, self.now)
        self.recorder.flush()  # between steps, as the runtime does after a burst
        self.out = effects
        return effects

    def frames(self) -> list[dpkt.ethernet.Ethernet]:
        out = []
        for e in self.out:
            if isinstance(e, SendFrame):
                out.append(gf.parse(e.data))
            elif isinstance(e, SendFrames):
                out += [gf.parse(bytes(f)) for f in split_run(e.data)]
        return out

    def guest(self, frame: bytes, dt_ms: float = 1.0) -> list[Effect]:
        """One guest frame (a run of one under ``runs``)."""
        return self.step(GuestFrames(encode_frame(frame)) if self.runs else GuestFrame(frame),
                         dt_ms)

    def burst(self, frames: list[bytes], dt_ms: float = 1.0) -> list[Effect]:
        """Guest frames in one run (GuestFrames), as a transport's read brings them."""
        return self.step(GuestFrames(b"".join(encode_frame(f) for f in frames)), dt_ms)

    def journal(self) -> str:
        """The journal directory, with every step so far (the session can go on)."""
        self.recorder.flush()
        return self.path

    def tick_until(self, ms: float) -> None:
        """Deliver Ticks at the core's deadlines until ``ms`` later."""
        end = self.now + int(ms * MS)
        while True:
            due = self.stack.poll_at()
            if due is None or due > end:
                break
            self.now = max(self.now, due)
            self.out = self.door.step(Tick(), self.now)
            self.recorder.flush()
        self.now = end

    # -- the guest ---------------------------------------------------------------------------

    def _ip(self, dst: bytes, proto: int, l4: bytes) -> bytes:
        self._ip_id += 1
        packet = wip.build_ipv4(GUEST, dst, proto, l4, ident=self._ip_id)
        return weth.build_ethernet(HOST_MAC, gf.GUEST_MAC, weth.ETH_P_IP, packet)

    def tcp_frame(self, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
                  payload: bytes = b"") -> bytes:
        d = socket.inet_aton(dst)
        seg = wtcp.build_tcp(GUEST, d, sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                             flags, 65535, payload, mss=1460 if flags & wtcp.SYN else None)
        return self._ip(d, 6, seg)

    def tcp(self, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
            payload: bytes = b"", dt_ms: float = 1.0) -> list[Effect]:
        return self.guest(self.tcp_frame(dst, sport, dport, seq, ack, flags, payload), dt_ms)

    def udp(self, dst: str, sport: int, dport: int, payload: bytes,
            dt_ms: float = 1.0) -> list[Effect]:
        d = socket.inet_aton(dst)
        return self.guest(self._ip(d, 17, wudp.build_udp(GUEST, d, sport, dport, payload)),
                          dt_ms)

    def lease(self) -> None:
        self.step(GuestLink(True))
        self.step(DnsUpstreams("127.0.0.1:5353"))
        self.guest(gf.dhcp(1), 5)
        self.guest(gf.dhcp(3, requested="10.0.2.15"), 5)

    # -- scripted connections --------------------------------------------------------------

    def _syn(self, dst: str, sport: int, dport: int) -> tuple[int, int]:
        effects = self.tcp(dst, sport, dport, 1000, 0, wtcp.SYN)
        connect = next(e for e in effects if isinstance(e, TcpConnect))
        return connect.flow, 1001

    def _our_segments(self) -> list[Any]:
        return [f.data.data for f in self.frames()
                if isinstance(f.data, dpkt.ip.IP) and isinstance(f.data.data, dpkt.tcp.TCP)]

    def connection(self, dst: str, sport: int, dport: int, *, request: bytes = b"GET /\r\n",
                   response: bytes = b"HTTP/1.0 200 OK\r\n\r\nhello", retransmit: bool = False,
                   ending: str = "fin", folded: bool = False) -> int:
        """A guest connection that sends ``request`` and gets ``response``; ``ending`` is
        "fin" (both sides close), "host-reset" or "guest-reset"; ``folded``: the send's report
        rides on the response (``TcpDataSent``, as the live shell reports a round trip).
        Returns the flow id."""
        flow, gseq = self._syn(dst, sport, dport)
        self.step(TcpConnected(flow), 2)
        (synack,) = self._our_segments()
        ours = synack.seq + 1
        self.tcp(dst, sport, dport, gseq, ours, wtcp.ACK)
        effects = self.tcp(dst, sport, dport, gseq, ours, wtcp.ACK | wtcp.PSH, request)
        sent = sum(len(e.data) for e in effects if isinstance(e, TcpSend))
        folded = folded and ending != "host-reset"
        if not folded:
            self.step(TcpSent(flow, sent))
        if retransmit:  # the guest sends the same bytes again
            self.tcp(dst, sport, dport, gseq, ours, wtcp.ACK | wtcp.PSH, request, 200)
        gseq += len(request)
        if ending == "host-reset":
            self.step(TcpReset(flow, errno.ECONNRESET), 3)
            return flow
        self.step(TcpDataSent(flow, sent, response) if folded else TcpData(flow, response), 3)
        ours += len(response)
        self.tcp(dst, sport, dport, gseq, ours, wtcp.ACK)
        if ending == "guest-reset":
            self.tcp(dst, sport, dport, gseq, ours, wtcp.RST | wtcp.ACK)
            return flow
        self.step(TcpEof(flow), 1)
        ours += 1  # our FIN
        self.tcp(dst, sport, dport, gseq, ours, wtcp.ACK | wtcp.FIN)
        return flow

    def refused(self, dst: str, sport: int, dport: int,
                err: int = errno.ECONNREFUSED) -> int:
        flow, _ = self._syn(dst, sport, dport)
        self.step(TcpConnectFailed(flow, err), 1)
        return flow

    def dns(self, name: str, sport: int, answer: str | None, qid: int = 0x4242) -> None:
        """A guest A query for ``name`` through the relay; ``answer`` None: NXDOMAIN."""
        q = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=1, cls=1)])
        effects = self.udp("10.0.2.3", sport, 53, bytes(q))
        sends = [e for e in effects if isinstance(e, UdpSend)]
        assert sends, effects
        upstream = dpkt.dns.DNS(sends[-1].data)
        reply = dpkt.dns.DNS(id=upstream.id, qr=1, rd=1, ra=1, qd=upstream.qd)
        reply.op = 0x8180 if answer is not None else 0x8183
        if answer is not None:
            reply.an = [dpkt.dns.DNS.RR(name=name, type=1, cls=1, ttl=60,
                                        rdata=socket.inet_aton(answer))]
        self.step(UdpReceived(sends[-1].flow, bytes(reply)), 2)

    def udp_unreachable(self, dst: str, sport: int, dport: int) -> None:
        effects = self.udp(dst, sport, dport, b"hello?")
        opened = next(e for e in effects if isinstance(e, UdpOpen))
        self.step(UdpError(opened.flow, errno.ECONNREFUSED, 2, 3, 3, 0, dst), 1)


def tftp_get(s: Session, name: str, content: bytes | None, sport: int = 2000) -> None:
    """The guest reads ``name`` from the stack's TFTP server (``content`` None: the file is
    not there), acknowledging every block; the test plays the shell's file reads."""
    from slirptrio.core.events import TftpChunk, TftpClose, TftpOpen, TftpOpened, TftpRead

    effects = s.udp("10.0.2.2", sport, 69, b"\x00\x01" + name.encode() + b"\x00octet\x00")
    opened = [e for e in effects if isinstance(e, TftpOpen)]
    if not opened:
        return
    session = opened[0].session
    if content is None:
        s.step(TftpOpened(session, errno.ENOENT, 0))
        return
    effects = s.step(TftpOpened(session, 0, len(content)))
    for _ in range(10_000):
        reads = [e for e in effects if isinstance(e, TftpRead)]
        if reads:
            r = reads[0]
            effects = s.step(TftpChunk(session, r.offset, content[r.offset : r.offset + r.size],
                                       0))
        if any(isinstance(e, TftpClose) for e in effects):
            return
        blocks = [f.data.data for f in s.frames() if isinstance(f.data, dpkt.ip.IP)
                  and isinstance(f.data.data, dpkt.udp.UDP) and f.data.data.sport == 69]
        if not blocks and not reads:
            return
        for b in blocks:
            data = bytes(b.data)
            if data[:2] == b"\x00\x03":
                effects = s.udp("10.0.2.2", sport, 69, b"\x00\x04" + data[2:4])
                if any(isinstance(e, TftpClose) for e in effects):
                    return

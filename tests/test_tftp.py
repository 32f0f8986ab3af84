"""The TFTP codec and server state machine, driven packet by packet with explicit times.

A fake shell answers the server's file effects from an in-memory table, so every step is
visible: what the guest sends, what comes back, what the host is asked for.
"""

from __future__ import annotations

import collections
import errno
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slirptrio.config import parse_user_options
from slirptrio.core import tftp as ct
from slirptrio.core.events import (
    Effect,
    GuestFrame,
    SendFrame,
    TftpChunk,
    TftpClose,
    TftpOpen,
    TftpOpened,
    TftpRead,
    Tick,
    UdpOpen,
)
from slirptrio.core.stack import Stack
from slirptrio.core.tftp import TftpServer, check_path
from slirptrio.wire import MalformedFrame
from slirptrio.wire import tftp as wt
from tests import guestframes as gf

SEC = 1_000_000_000
T0 = 5 * SEC
GUEST = IPv4Address("10.0.2.15").packed
HOST = IPv4Address("10.0.2.2").packed


# ------------------------------------------------------------------------------ the codec


def test_codec_round_trips() -> None:
    req = wt.build_request(wt.RRQ, b"pxelinux.0", "octet", [("blksize", "1432"), ("tsize", "0")])
    assert wt.parse_tftp(req) == wt.Request(
        wt.RRQ, b"pxelinux.0", "octet", (("blksize", "1432"), ("tsize", "0"))
    )
    assert wt.parse_tftp(wt.build_data(65535, b"abc")) == wt.Data(65535, b"abc")
    assert wt.parse_tftp(wt.build_ack(7)) == wt.Ack(7)
    assert wt.parse_tftp(wt.build_error(2, "Access violation")) == wt.Error(2, "Access violation")
    assert wt.parse_tftp(wt.build_oack([("tsize", "12")])) == wt.Oack((("tsize", "12"),))
    # Mode and option names are case-insensitive; NUL padding after the options is tolerated.
    raw = b"\x00\x01f\x00OCTET\x00BlkSize\x00512\x00\x00\x00"
    assert wt.parse_tftp(raw) == wt.Request(wt.RRQ, b"f", "octet", (("blksize", "512"),))


def test_codec_matches_dpkt() -> None:
    # dpkt's TFTP dissector as an independent reader of what we build.
    d = dpkt.tftp.TFTP(wt.build_data(3, b"hello"))
    assert (d.opcode, d.block, d.data) == (wt.DATA, 3, b"hello")
    e = dpkt.tftp.TFTP(wt.build_error(1, "File not found"))
    assert (e.opcode, e.errcode, e.errmsg) == (wt.ERROR, 1, b"File not found")
    r = dpkt.tftp.TFTP(wt.build_request(wt.RRQ, b"a/b", "octet"))
    assert (r.opcode, r.filename, r.mode) == (wt.RRQ, b"a/b", b"octet")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "tftp_short"),
        (b"\x00\x01x", "tftp_short"),
        (b"\x00\x01file\x00octet", "tftp_unterminated"),
        (b"\x00\x01file\x00", "tftp_bad_request"),
        (b"\x00\x01file\x00octet\x00blksize\x00", "tftp_bad_option"),
        (b"\x00\x01" + b"f" * 513 + b"\x00octet\x00", "tftp_long_filename"),
        (b"\x00\x01f\x00oct\xffet\x00", "tftp_not_ascii"),
        (b"\x00\x01f\x00octet\x00" + b"a\x001\x00" * 17, "tftp_too_many_options"),
        (b"\x00\x09\x00\x00", "tftp_bad_opcode"),
        (b"\x00\x06tsize", "tftp_unterminated"),
    ],
)
def test_codec_refuses_malformed(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        wt.parse_tftp(raw)
    assert info.value.reason == reason


# ------------------------------------------------------------------------ the name jail


@pytest.mark.parametrize(
    ("name", "path"),
    [
        (b"pxelinux.0", "pxelinux.0"),
        (b"boot/grub/grub.cfg", "boot/grub/grub.cfg"),
        (b"./a//b/./c", "a/b/c"),
        (b"..x", "..x"),
        (b"x..", "x.."),
        (b"a\\..\\b", "a\\..\\b"),  # a backslash is a plain character on Linux
        ("caf\u00e9".encode(), "caf\u00e9"),
    ],
)
def test_check_path_accepts(name: bytes, path: str) -> None:
    assert check_path(name) == path


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"/etc/passwd",
        b"//etc/passwd",
        b"..",
        b"../etc/passwd",
        b"a/../../etc/passwd",
        b"a/..",
        b"a/../b",
        b"boot/",
        b".",
        b"./",
        b"a\x01b",
        b"a\nb",
        b"a\x7fb",
        b"\xff\xfe",
        b"x" * 256,
        b"/".join([b"d"] * 33),
    ],
)
def test_check_path_refuses(name: bytes) -> None:
    assert check_path(name) is None


# ----------------------------------------------------------------- server test harness


@dataclass
class Rig:
    """A server, the packets it sent to the guest and a fake shell serving ``files``."""

    files: dict[str, bytes]
    mtu: int = 1500
    enabled: bool = True
    auto: bool = True  # answer the server's file effects at once
    sent: list[tuple[int, wt.Packet]] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    open_errno: int = 0

    def __post_init__(self) -> None:
        ids = iter(range(1, 1000))
        self.srv = TftpServer(
            send_udp=self.send, alloc_flow=lambda: next(ids), counters=self.counters,
            host_ip=HOST, mtu=self.mtu, enabled=self.enabled,
        )
        self.paths: dict[int, str] = {}

    def send(self, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> None:
        assert (src, sport, dst) == (HOST, 69, GUEST)
        self.sent.append((dport, wt.parse_tftp(payload)))

    def _shell(self, effects: list[Effect], now: int) -> None:
        self.effects += effects
        queue = list(effects)
        while queue and self.auto:
            eff = queue.pop(0)
            if type(eff) is TftpOpen:
                self.paths[eff.session] = eff.path
                if self.open_errno:
                    ev: TftpOpened | TftpChunk = TftpOpened(eff.session, self.open_errno, 0)
                elif eff.path in self.files:
                    ev = TftpOpened(eff.session, 0, len(self.files[eff.path]))
                else:
                    ev = TftpOpened(eff.session, errno.ENOENT, 0)
            elif type(eff) is TftpRead:
                data = self.files[self.paths[eff.session]][eff.offset : eff.offset + eff.size]
                ev = TftpChunk(eff.session, eff.offset, data, 0)
            else:
                continue
            more = self.srv.host_event(ev, now)
            self.effects += more
            queue += more

    def guest(self, payload: bytes, now: int = T0, port: int = 2000) -> list[tuple[int, wt.Packet]]:
        """Send ``payload`` from the guest; return what came back."""
        before = len(self.sent)
        self._shell(self.srv.guest_datagram(GUEST, port, payload, now), now)
        return self.sent[before:]

    def rrq(self, name: bytes, opts: list[tuple[str, str]] | None = None, now: int = T0,
            port: int = 2000, mode: str = "octet") -> list[tuple[int, wt.Packet]]:
        return self.guest(wt.build_request(wt.RRQ, name, mode, opts or []), now, port)

    def ack(self, block: int, now: int = T0, port: int = 2000) -> list[tuple[int, wt.Packet]]:
        return self.guest(wt.build_ack(block), now, port)

    def tick(self, now: int) -> list[tuple[int, wt.Packet]]:
        before = len(self.sent)
        self._shell(self.srv.tick(now), now)
        return self.sent[before:]


def data_of(pkts: list[tuple[int, wt.Packet]]) -> list[wt.Data]:
    out = [p for _port, p in pkts]
    assert all(type(p) is wt.Data for p in out), out
    return out  # type: ignore[return-value]


def fetch_lockstep(rig: Rig, first: list[tuple[int, wt.Packet]], now: int = T0) -> bytes:
    """ACK every block as it comes (one in flight); return the file."""
    got = bytearray()
    pkts = first
    while pkts:
        (blk,) = data_of(pkts)
        got += blk.data
        pkts = rig.ack(blk.block, now)
    return bytes(got)


def payload(n: int) -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n))


# ----------------------------------------------------------------------------- transfers


def test_plain_read_lockstep() -> None:
    body = payload(512 * 5 + 100)
    rig = Rig({"boot/vmlinuz": body})
    first = rig.rrq(b"boot/vmlinuz")
    assert rig.effects[0] == TftpOpen(1, "boot/vmlinuz")
    assert [d.block for d in data_of(first)] == [1] and len(data_of(first)[0].data) == 512
    assert fetch_lockstep(rig, first) == body
    assert len(rig.srv) == 0
    assert rig.effects[-1] == TftpClose(1)
    assert rig.counters["tftp_completed"] == 1 and rig.counters["tftp_bytes"] == len(body)
    # Reads are large, not one per block.
    reads = [e for e in rig.effects if type(e) is TftpRead]
    assert len(reads) == 1 and reads[0].size >= ct.READ_CHUNK


@pytest.mark.parametrize("size", [0, 512, 1024])
def test_exact_multiple_ends_with_an_empty_block(size: int) -> None:
    rig = Rig({"f": payload(size)})
    first = rig.rrq(b"f")
    got = bytearray()
    blocks = []
    pkts = first
    while pkts:
        (blk,) = data_of(pkts)
        blocks.append(len(blk.data))
        got += blk.data
        pkts = rig.ack(blk.block)
    assert bytes(got) == payload(size)
    assert blocks[-1] == 0 and blocks[:-1] == [512] * (size // 512)
    assert rig.counters["tftp_completed"] == 1


def test_options_negotiated_in_client_order() -> None:
    rig = Rig({"f": payload(5000)})
    opts = [("tsize", "0"), ("timeout", "3"), ("foo", "1"), ("blksize", "1432"),
            ("windowsize", "8")]
    ((port, oack),) = rig.rrq(b"f", opts)
    assert port == 2000
    assert oack == wt.Oack(
        (("tsize", "5000"), ("timeout", "3"), ("blksize", "1432"), ("windowsize", "8"))
    )
    assert rig.counters["tftp_option_ignored"] == 1
    # ACK 0 starts the data: a whole window at once (5000 bytes: 4 blocks, the last short).
    blocks = data_of(rig.ack(0))
    assert [b.block for b in blocks] == [1, 2, 3, 4]
    assert [len(b.data) for b in blocks] == [1432, 1432, 1432, 5000 - 3 * 1432]
    assert rig.ack(4) == []
    assert rig.counters["tftp_completed"] == 1


@pytest.mark.parametrize(
    ("mtu", "asked", "granted"),
    [(1500, "65464", "1468"), (1500, "1468", "1468"), (9000, "65464", "8968"),
     (65521, "65464", "65464"), (576, "1432", "544"), (1500, "8", "8")],
)
def test_blksize_clamped_to_the_mtu(mtu: int, asked: str, granted: str) -> None:
    rig = Rig({"f": b"x"}, mtu=mtu)
    ((_, oack),) = rig.rrq(b"f", [("blksize", asked)])
    assert oack == wt.Oack((("blksize", granted),))


@pytest.mark.parametrize(
    "opts",
    [[("blksize", "7")], [("blksize", "x")], [("timeout", "0")], [("timeout", "300")],
     [("windowsize", "0")], [("tsize", "-1")], [("blksize", "99999999999999")]],
)
def test_invalid_options_are_left_out(opts: list[tuple[str, str]]) -> None:
    rig = Rig({"f": payload(600)})
    first = rig.rrq(b"f", opts)
    assert [d.block for d in data_of(first)] == [1]  # no OACK: plain RFC 1350 transfer
    assert len(data_of(first)[0].data) == 512


def test_windowsize_clamped_and_duplicate_option_ignored() -> None:
    rig = Rig({"f": payload(10)})
    ((_, oack),) = rig.rrq(b"f", [("windowsize", "1000"), ("windowsize", "2")])
    assert oack == wt.Oack((("windowsize", str(ct.MAX_WINDOWSIZE)),))


def test_block_numbers_wrap_past_65535() -> None:
    bs = 8
    n_blocks = 65536 + 20
    body = payload(bs * n_blocks - 3)
    rig = Rig({"big": body})
    ((_, oack),) = rig.rrq(b"big", [("blksize", str(bs)), ("windowsize", "4")])
    assert oack == wt.Oack((("blksize", "8"), ("windowsize", "4")))
    got = bytearray()
    wire: list[int] = []
    pkts = rig.ack(0)
    while pkts:
        blocks = data_of(pkts)
        for b in blocks:
            wire.append(b.block)
            got += b.data
        pkts = rig.ack(blocks[-1].block)
    assert bytes(got) == body
    assert len(wire) == n_blocks
    assert wire[65533:65538] == [65534, 65535, 0, 1, 2]
    assert rig.counters["tftp_completed"] == 1 and rig.counters["tftp_retransmits"] == 0


# ------------------------------------------------------------------ losses and timers


def test_duplicate_ack_is_not_answered() -> None:
    rig = Rig({"f": payload(2000)})
    rig.rrq(b"f")
    assert [d.block for d in data_of(rig.ack(1))] == [2]
    assert rig.ack(1) == []  # no Sorcerer's Apprentice: a duplicate sends nothing
    assert rig.ack(1) == []
    assert rig.counters["tftp_duplicate_ack"] == 2
    assert [d.block for d in data_of(rig.ack(2))] == [3]


def test_lost_block_is_resent_on_timeout_only() -> None:
    rig = Rig({"f": payload(2000)})
    rig.rrq(b"f")
    t = T0
    assert rig.srv.poll_at() == t + ct.RETRANSMIT_NS
    assert rig.tick(t + ct.RETRANSMIT_NS - 1) == []
    # The block (or its ACK) was lost: the timer sends it again.
    again = rig.tick(t + ct.RETRANSMIT_NS)
    assert [d.block for d in data_of(again)] == [1]
    assert rig.counters["tftp_retransmits"] == 1
    assert fetch_lockstep(rig, again, t + ct.RETRANSMIT_NS) == payload(2000)


def test_lost_acks_until_the_session_gives_up() -> None:
    rig = Rig({"f": payload(2000)})
    rig.rrq(b"f")
    t = T0
    for i in range(ct.MAX_RETRIES):
        t = rig.srv.poll_at() or 0
        assert [d.block for d in data_of(rig.tick(t))] == [1], i
    t = rig.srv.poll_at() or 0
    assert rig.tick(t) == []
    assert len(rig.srv) == 0 and rig.srv.poll_at() is None
    assert rig.counters["tftp_timeouts"] == 1
    assert rig.effects[-1] == TftpClose(1)


def test_timeout_option_sets_the_retransmission_timer() -> None:
    rig = Rig({"f": payload(100)})
    rig.rrq(b"f", [("timeout", "4")])
    assert rig.srv.poll_at() == T0 + 4 * SEC  # the OACK's timer
    ((_, oack),) = rig.tick(T0 + 4 * SEC)
    assert type(oack) is wt.Oack
    assert rig.counters["tftp_retransmits"] == 1


def test_window_lost_block_resumes_after_partial_ack() -> None:
    rig = Rig({"f": payload(512 * 20)})
    rig.rrq(b"f", [("windowsize", "4")])
    assert [b.block for b in data_of(rig.ack(0))] == [1, 2, 3, 4]
    # Block 3 was lost: the client acknowledges 2, the last it has in order (RFC 7440).
    assert [b.block for b in data_of(rig.ack(2))] == [3, 4, 5, 6]
    assert rig.counters["tftp_window_resumed"] == 1
    assert rig.ack(2) == []  # a repeat of that ACK changes nothing
    assert [b.block for b in data_of(rig.ack(6))] == [7, 8, 9, 10]
    # The whole window lost: the timer sends it again from the block after the last ACK.
    again = data_of(rig.tick(rig.srv.poll_at() or 0))
    assert [b.block for b in again] == [7, 8, 9, 10]
    assert rig.ack(70) == []  # outside the window: ignored
    assert rig.counters["tftp_unexpected_ack"] == 1


def test_full_windowed_transfer_with_losses() -> None:
    body = payload(512 * 50 + 1)
    rig = Rig({"f": body})
    rig.rrq(b"f", [("windowsize", "8")])
    have: dict[int, bytes] = {}
    pkts = rig.ack(0)
    rounds = 0
    now = T0
    while pkts and rounds < 200:
        rounds += 1
        blocks = data_of(pkts)
        # Drop every 5th packet the server sends.
        for i, b in enumerate(blocks):
            if (rounds + i) % 5:
                have.setdefault(b.block, b.data)
        n = 0
        while n + 1 in have:
            n += 1
        pkts = rig.ack(n, now)
        if not pkts and len(rig.srv):
            now = rig.srv.poll_at() or 0
            pkts = rig.tick(now)
    assert b"".join(have[k] for k in sorted(have)) == body
    assert rig.counters["tftp_completed"] == 1


def test_oack_lost_is_resent_and_ack0_starts_data() -> None:
    rig = Rig({"f": payload(100)})
    rig.rrq(b"f", [("tsize", "0")])
    ((_, oack),) = rig.tick(T0 + ct.RETRANSMIT_NS)
    assert oack == wt.Oack((("tsize", "100"),))
    assert rig.ack(5) == []  # not ACK 0
    (blk,) = data_of(rig.ack(0))
    assert blk.block == 1 and blk.data == payload(100)


def test_shell_that_never_answers_ends_the_session() -> None:
    rig = Rig({"f": payload(100)}, auto=False)
    rig.rrq(b"f")
    assert rig.effects == [TftpOpen(1, "f")]
    assert rig.srv.poll_at() == T0 + ct.SESSION_IDLE_NS
    assert rig.tick(T0 + ct.SESSION_IDLE_NS) == []
    assert len(rig.srv) == 0 and rig.effects[-1] == TftpClose(1)
    # A late answer is stale, not an error.
    assert rig.srv.host_event(TftpOpened(1, 0, 100), T0 + ct.SESSION_IDLE_NS + 1) == []
    assert rig.counters["tftp_stale_event"] == 1


def test_duplicate_rrq_while_opening_is_ignored() -> None:
    rig = Rig({"f": payload(100)}, auto=False)
    rig.rrq(b"f")
    rig.rrq(b"f")
    assert rig.effects == [TftpOpen(1, "f")]
    assert rig.counters["tftp_duplicate_request"] == 1


def test_new_rrq_from_the_same_port_replaces_the_session() -> None:
    rig = Rig({"a": payload(2000), "b": payload(10)})
    rig.rrq(b"a")
    (blk,) = data_of(rig.rrq(b"b"))
    assert blk.data == payload(10)
    assert TftpClose(1) in rig.effects and len(rig.srv) == 1


def test_client_error_ends_the_session() -> None:
    rig = Rig({"f": payload(2000)})
    rig.rrq(b"f")
    assert rig.guest(wt.build_error(0, "user abort")) == []
    assert len(rig.srv) == 0 and rig.effects[-1] == TftpClose(1)
    assert rig.counters["tftp_client_errors"] == 1
    assert rig.ack(1) == [] and rig.counters["tftp_stale_packet"] == 1


def test_read_error_is_a_tftp_error() -> None:
    rig = Rig({"f": payload(2000)}, auto=False)
    rig.rrq(b"f")
    rig.srv.host_event(TftpOpened(1, 0, 2000), T0)
    out = rig.srv.host_event(TftpChunk(1, 0, b"", errno.EIO), T0)
    assert rig.sent[-1] == (2000, wt.Error(0, "Read error"))
    assert out == [TftpClose(1)]


def test_sessions_are_bounded() -> None:
    rig = Rig({"f": payload(100_000)})
    for port in range(3000, 3000 + ct.MAX_SESSIONS):
        rig.rrq(b"f", port=port)
    assert len(rig.srv) == ct.MAX_SESSIONS
    assert rig.rrq(b"f", port=4000) == []  # dropped: the client will retry
    assert rig.counters["tftp_sessions_full"] == 1
    assert len(rig.srv) == ct.MAX_SESSIONS


# ----------------------------------------------------------------------------- refusals


def test_write_request_is_an_access_violation() -> None:
    rig = Rig({})
    assert rig.guest(wt.build_request(wt.WRQ, b"up", "octet")) == [
        (2000, wt.Error(2, "Access violation"))
    ]
    assert rig.effects == [] and rig.counters["tftp_write_refused"] == 1


@pytest.mark.parametrize("mode", ["netascii", "mail", "binary"])
def test_other_modes_are_refused(mode: str) -> None:
    rig = Rig({"f": b"x"})
    assert rig.rrq(b"f", mode=mode) == [(2000, wt.Error(4, "Unsupported transfer mode"))]
    assert rig.effects == []


@pytest.mark.parametrize("name", [b"../etc/passwd", b"/etc/passwd", b"a/../../x", b"d/"])
def test_traversal_is_refused_before_the_host_is_asked(name: bytes) -> None:
    rig = Rig({"f": b"x"})
    out = rig.rrq(name)
    assert out == [(2000, wt.Error(2, "Access violation"))]
    assert rig.effects == [] and rig.counters["tftp_access_violation"] == 1


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (errno.ENOENT, wt.Error(1, "File not found")),
        (errno.ENOTDIR, wt.Error(1, "File not found")),
        (errno.EACCES, wt.Error(2, "Access violation")),
        (errno.ELOOP, wt.Error(2, "Access violation")),
        (errno.EXDEV, wt.Error(2, "Access violation")),
        (errno.EISDIR, wt.Error(2, "Access violation")),
        (errno.EIO, wt.Error(0, f"Cannot open file (errno {errno.EIO})")),
    ],
)
def test_open_failures(err: int, expected: wt.Error) -> None:
    rig = Rig({"f": b"x"}, open_errno=err)
    assert rig.rrq(b"f") == [(2000, expected)]
    assert len(rig.srv) == 0
    assert TftpClose(1) not in rig.effects  # the shell keeps nothing for a failed open


def test_no_root_configured() -> None:
    rig = Rig({"f": b"x"}, enabled=False)
    assert rig.rrq(b"f") == [(2000, wt.Error(2, "Access violation"))]
    assert rig.effects == [] and rig.counters["tftp_no_root"] == 1


def test_malformed_and_stray_packets_are_counted() -> None:
    rig = Rig({"f": b"x"})
    assert rig.guest(b"\x00\x01") == []
    assert rig.counters["drop_tftp_short"] == 1
    assert rig.guest(wt.build_data(1, b"x")) == []  # to a port with no session
    assert rig.ack(3) == []
    assert rig.counters["tftp_stale_packet"] == 2


# ----------------------------------------------------------------------------- snapshot


def test_snapshot_round_trip_mid_transfer() -> None:
    import msgpack

    body = payload(512 * 300 + 5)
    a = Rig({"f": body})
    a.rrq(b"f", [("windowsize", "4"), ("tsize", "0")])
    data_of(a.ack(0))
    data_of(a.ack(4))
    state = a.srv.snapshot_state()
    # Plain msgpack-able data that survives the trip.
    state = msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False)
    b = Rig({"f": body})
    b.srv.restore_state(state)
    b.paths = dict(a.paths)
    assert b.srv.snapshot_state() == a.srv.snapshot_state()
    assert b.srv.poll_at() == a.srv.poll_at()
    for rig in (a, b):
        rig.sent.clear()
    for blk in (8, 8, 6, 10):
        assert a.ack(blk) == b.ack(blk)
    t = a.srv.poll_at() or 0
    assert a.tick(t) == b.tick(t)
    assert a.srv.snapshot_state() == b.srv.snapshot_state()


# ----------------------------------------------------------------- through the whole stack


def tftp_frame(payload_: bytes, sport: int = 2000, dst: str = "10.0.2.2") -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=69, data=payload_)
    udp.ulen = 8 + len(payload_)
    return gf.ipv4("10.0.2.15", dst, udp, dpkt.ip.IP_PROTO_UDP, bytes.fromhex("52550a000202"))


def udp_replies(effects: list[Effect]) -> list[tuple[str, int, int, bytes]]:
    out = []
    for eff in effects:
        if type(eff) is SendFrame:
            ip = dpkt.ethernet.Ethernet(eff.data).data
            assert isinstance(ip.data, dpkt.udp.UDP)
            out.append((str(IPv4Address(ip.src)), ip.data.sport, ip.data.dport, ip.data.data))
    return out


@pytest.mark.parametrize("restrict", ["off", "on"])
def test_stack_serves_tftp_on_the_host_address(restrict: str) -> None:
    stack = Stack(parse_user_options(f"tftp=/srv,restrict={restrict}"), seed=1)
    out = stack.handle(GuestFrame(tftp_frame(wt.build_request(wt.RRQ, b"f", "octet"))), T0)
    (opened,) = out
    assert type(opened) is TftpOpen and opened.path == "f"
    out = stack.handle(TftpOpened(opened.session, 0, 3), T0)
    (read,) = out
    assert type(read) is TftpRead
    out = stack.handle(TftpChunk(read.session, 0, b"abc", 0), T0)
    assert udp_replies(out) == [("10.0.2.2", 69, 2000, wt.build_data(1, b"abc"))]
    out = stack.handle(GuestFrame(tftp_frame(wt.build_ack(1))), T0)
    assert out == [TftpClose(opened.session)]
    assert stack.counters["tftp_completed"] == 1
    assert stack.poll_at() is None
    out = stack.handle(Tick(), T0)
    assert out == []


def test_stack_port_69_elsewhere_is_plain_udp_nat() -> None:
    stack = Stack(parse_user_options("tftp=/srv"), seed=1)
    out = stack.handle(GuestFrame(tftp_frame(wt.build_ack(1), dst="203.0.113.9")), T0)
    assert [type(e) for e in out][:1] == [UdpOpen]


def test_stack_without_tftp_root_refuses_as_libslirp() -> None:
    stack = Stack(parse_user_options(""), seed=1)
    out = stack.handle(GuestFrame(tftp_frame(wt.build_request(wt.RRQ, b"f", "octet"))), T0)
    assert udp_replies(out) == [("10.0.2.2", 69, 2000, wt.build_error(2, "Access violation"))]


# --------------------------------------------------------------- seeds, journal, replay


def test_fuzz_seeds_go_through_the_stack_without_raising() -> None:
    from tests.seeds_tftp import TFTP_SEED_OPTIONS, tftp_seed_frames, tftp_seed_sessions

    config = parse_user_options(TFTP_SEED_OPTIONS)
    stack = Stack(config, seed=3)
    for i, frame in enumerate(tftp_seed_frames()):
        stack.handle(GuestFrame(frame), T0 + i)
    assert stack.counters["drop_tftp_unterminated"] == 1
    assert stack.counters["tftp_access_violation"] >= 4
    for n, session in enumerate(tftp_seed_sessions()):
        stack = Stack(config, seed=3)
        sent = 0
        for i, ev in enumerate(session):
            out = stack.handle(ev, T0 + i * SEC)
            sent += sum(type(e) is SendFrame for e in out)
        assert sent >= 2, n
        assert stack.counters["core_exceptions"] == 0
    assert stack.counters["tftp_read_errors"] == 1


def test_journal_of_a_transfer_replays_identical(tmp_path: Path) -> None:
    import contextlib

    from replay.engine import replay_journal
    from tests.journals import recording

    config = parse_user_options("tftp=/gone")
    path = tmp_path / "tftp.journal"
    journal = contextlib.ExitStack()
    door = journal.enter_context(recording(path, config, 11))
    body = payload(512 * 40 + 17)
    now = T0
    request = wt.build_request(wt.RRQ, b"k", "octet", [("windowsize", "4"), ("tsize", "0")])
    pending = door.step(GuestFrame(tftp_frame(request)), now)
    got = bytearray()
    while pending:
        now += 1_000_000
        nxt: list[Effect] = []
        for eff in pending:
            if type(eff) is TftpOpen:
                nxt += door.step(TftpOpened(eff.session, 0, len(body)), now)
            elif type(eff) is TftpRead:
                data = body[eff.offset : eff.offset + eff.size]
                nxt += door.step(TftpChunk(eff.session, eff.offset, data, 0), now)
            elif type(eff) is SendFrame:
                pkt = wt.parse_tftp(dpkt.ethernet.Ethernet(eff.data).data.data.data)
                if type(pkt) is wt.Oack:
                    nxt += door.step(GuestFrame(tftp_frame(wt.build_ack(0))), now)
                elif type(pkt) is wt.Data:
                    got += pkt.data
                    if pkt.block % 4 == 0 or len(pkt.data) < 512:  # one ACK per window
                        nxt += door.step(GuestFrame(tftp_frame(wt.build_ack(pkt.block))), now)
        pending = nxt
    journal.close()
    assert bytes(got) == body
    result = replay_journal(path)
    assert result.identical, result.divergence
    assert result.records > 10 and result.frames > 40


def test_sessions_for_info_and_ctl() -> None:
    from slirptrio.cli.ctl import format_answer

    rig = Rig({"boot/vmlinuz": payload(5000)})
    rig.rrq(b"boot/vmlinuz", [("blksize", "1000"), ("tsize", "0")])
    rig.ack(0)
    rig.ack(1, now=T0 + 2 * SEC)
    (info,) = rig.srv.sessions(T0 + 3 * SEC)
    d = info.to_dict()
    assert d == {
        "session": 1, "guest": "10.0.2.15:2000", "path": "boot/vmlinuz", "state": "sending",
        "size": 5000, "acked_bytes": 1000, "blksize": 1000, "windowsize": 1, "idle_s": 1.0,
    }
    text = format_answer("info", {"ok": True, "flows": [], "tftp": [d]})
    assert "tftp[sending]" in text and "boot/vmlinuz" in text and "5000" in text
    assert "TFTP" not in format_answer("info", {"ok": True, "flows": [], "tftp": []})


# ------------------------------------------------------------------ a lossy client, fuzzed


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 3000),
    blksize=st.sampled_from([8, 13, 512]),
    window=st.sampled_from([1, 2, 3, 8]),
    drops=st.lists(st.booleans(), max_size=60),
    ack_drops=st.lists(st.booleans(), max_size=30),
    junk=st.lists(st.tuples(st.booleans(), st.integers(0, 60000)), max_size=10),
)
def test_lossy_client_gets_the_file_or_nothing(
    size: int, blksize: int, window: int, drops: list[bool], ack_drops: list[bool],
    junk: list[tuple[bool, int]],
) -> None:
    """A client that loses blocks and ACKs and repeats stale ACKs or sends ones from beyond the
    window: the server's timers always move forward, its buffer stays bounded, and the
    transfer ends either with the exact file or by timing out — never with a wrong file."""
    body = payload(size)
    rig = Rig({"f": body})
    pkts = rig.rrq(b"f", [("blksize", str(blksize)), ("windowsize", str(window))])
    assert pkts and type(pkts[0][1]) is wt.Oack
    have: dict[int, bytes] = {}  # absolute block -> data
    expect = 1  # the next block in order
    now = T0
    done_at: int | None = None
    pkts = rig.ack(0, now)
    for _ in range(5000):
        if not len(rig.srv):
            break
        for _port, p in pkts:
            assert type(p) is wt.Data
            if drops and drops.pop(0):
                continue
            n = expect + ((p.block - expect) & 0xFFFF)  # the nearest block with those bits
            if n - expect > 0x8000:
                n -= 0x10000
            if n >= expect:
                have.setdefault(n, p.data)
            while expect in have:
                if len(have[expect]) < blksize:
                    done_at = expect
                expect += 1
        s = rig.srv._by_id.get(1)
        if s is not None:
            assert len(s.buf) <= (s.window + 1) * s.blksize + 2 * ct.READ_CHUNK
            assert s.acked <= s.sent <= s.acked + s.window
            if junk:
                stale, k = junk.pop(0)
                bogus = s.acked - k % 4 if stale else s.sent + 1 + k
                rig.ack(bogus & 0xFFFF, now)
        if pkts and not (ack_drops and ack_drops.pop(0)):
            pkts = rig.ack((expect - 1) & 0xFFFF, now)
        else:
            pkts = []
        if not pkts and len(rig.srv):
            due = rig.srv.poll_at()
            assert due is not None and due > now
            now = due
            pkts = rig.tick(now)
    else:
        raise AssertionError("the transfer never ended")
    if rig.counters["tftp_completed"]:
        assert done_at is not None
        assert b"".join(have[k] for k in range(1, done_at + 1)) == body
    else:
        assert rig.counters["tftp_timeouts"] == 1


# ---------------------------------------------------------------------------------- IPv6


def test_tftp_over_ipv6_from_the_ipv6_host_address() -> None:
    from tests import guestframes6 as g6

    stack = Stack(parse_user_options("tftp=/srv,mtu=1500"), seed=1)
    # blksize over IPv6 is clamped 20 bytes lower: the IPv6 header is 40 bytes, not 20.
    rrq = wt.build_request(wt.RRQ, b"f", "octet", [("blksize", "65464")])
    (opened,) = stack.handle(GuestFrame(g6.udp6("fec0::2", 69, rrq, sport=3000)), T0)
    assert type(opened) is TftpOpen
    oack, read = stack.handle(TftpOpened(opened.session, 0, 2000), T0)
    assert type(oack) is SendFrame and type(read) is TftpRead
    assert wt.parse_tftp(g6.parse(oack.data).data.data.data) == wt.Oack((("blksize", "1448"),))
    out = stack.handle(TftpChunk(read.session, 0, payload(2000), 0), T0)
    assert out == []  # data waits for ACK 0
    (eth,) = [g6.parse(e.data) for e in stack.handle(
        GuestFrame(g6.udp6("fec0::2", 69, wt.build_ack(0), sport=3000)), T0
    ) if type(e) is SendFrame]
    ip = eth.data
    assert (ip.src, ip.dst) == (g6.ip6("fec0::2"), g6.ip6(g6.GUEST_IP))
    assert (ip.data.sport, ip.data.dport) == (69, 3000)
    blk = wt.parse_tftp(ip.data.data)
    assert blk == wt.Data(1, payload(1448))
    (info,) = stack.tftp_sessions(T0)
    assert info.to_dict()["guest"] == f"[{g6.GUEST_IP}]:3000"


def test_tftp_oack_over_ipv6_has_the_ipv6_clamp() -> None:
    sent: list[bytes] = []
    srv = TftpServer(
        send_udp=lambda s, sp, d, dp, p: sent.append(p), alloc_flow=lambda: 1,
        counters=collections.Counter(), host_ip=HOST, mtu=1500, enabled=True,
        host_ip6=IPv4Address("10.0.2.2").packed * 4,
    )
    srv.guest_datagram(b"\xfe\xc0" + bytes(14), 5, wt.build_request(
        wt.RRQ, b"f", "octet", [("blksize", "9000")]), T0)
    srv.host_event(TftpOpened(1, 0, 10), T0)
    assert wt.parse_tftp(sent[0]) == wt.Oack((("blksize", "1448"),))


def test_dhcpv6_boot_file_url() -> None:
    from slirptrio.core.dhcpv6 import boot_url
    from slirptrio.wire import dhcpv6 as w6
    from tests import guestframes6 as g6

    def ask(options: str, oro: bytes) -> bytes | None:
        stack = Stack(parse_user_options(options), seed=1)
        frame = g6.dhcpv6(w6.INFORMATION_REQUEST, [
            (w6.OPT_CLIENTID, g6.CLIENT_DUID), (w6.OPT_ORO, oro),
        ])
        (eth,) = [g6.parse(e.data) for e in stack.handle(GuestFrame(frame), 0)
                  if type(e) is SendFrame]
        return w6.parse_dhcpv6(eth.data.data.data).option(w6.OPT_BOOTFILE_URL)

    assert ask("tftp=/srv,bootfile=boot.ipxe", b"\x00\x17\x00\x3b") == b"tftp://[fec0::2]/boot.ipxe"
    assert ask("tftp=/srv,bootfile=boot.ipxe", b"\x00\x17") is None  # not asked for
    assert ask("", b"\x00\x3b") is None  # no boot file
    url = "http://[fec0::2]:8080/boot.efi"
    assert ask(f"bootfile={url}", b"\x00\x3b") == url.encode()
    assert boot_url(parse_user_options("bootfile=x,ipv6=off")) == ""
    assert boot_url(parse_user_options("ipv6-net=fd00:1::/64,bootfile=/a/b")) == (
        "tftp://[fd00:1::2]/a/b"
    )

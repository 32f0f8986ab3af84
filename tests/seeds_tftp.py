"""Seed inputs for fuzzing the TFTP server through the whole stack.

:func:`tftp_seed_frames` gives guest Ethernet frames (UDP to 10.0.2.2:69 from 10.0.2.15): valid
requests with and without options, every opcode, hostile names, and malformed packets.
:func:`tftp_seed_sessions` gives whole event sequences, including the shell's answers
(:class:`TftpOpened`, :class:`TftpChunk`), which take a session past the file open into the
transfer — a fuzzer that only sends frames never gets there. Use them with a stack built from
``TFTP_SEED_OPTIONS``. Session ids in the shell's answers assume a fresh stack whose first
flow id is 1 (the first request's session).
"""

from __future__ import annotations

import dpkt

from slirptrio.core.events import Event, GuestFrame, TftpChunk, TftpOpened, Tick
from slirptrio.wire import tftp as wt
from tests import guestframes as gf

TFTP_SEED_OPTIONS = "tftp=/srv/tftp,bootfile=pxelinux.0"
HOST_MAC = bytes.fromhex("52550a000202")


def tftp_frame(payload: bytes, sport: int = 2000) -> bytes:
    """A guest frame carrying ``payload`` to the TFTP server."""
    udp = dpkt.udp.UDP(sport=sport, dport=69, data=payload)
    udp.ulen = 8 + len(payload)
    return gf.ipv4("10.0.2.15", "10.0.2.2", udp, dpkt.ip.IP_PROTO_UDP, HOST_MAC)


def tftp_payloads() -> list[bytes]:
    """TFTP packets, valid and not, as the guest could send them."""
    rrq = wt.RRQ
    return [
        wt.build_request(rrq, b"pxelinux.0"),
        wt.build_request(rrq, b"boot/vmlinuz", "octet", [("blksize", "1432"), ("tsize", "0")]),
        wt.build_request(rrq, b"f", "OCTET", [("windowsize", "16"), ("timeout", "2")]),
        wt.build_request(rrq, b"f", "octet", [("blksize", "65464"), ("windowsize", "65535")]),
        wt.build_request(rrq, b"f", "octet", [("blksize", "7"), ("timeout", "0")]),
        wt.build_request(rrq, b"f", "netascii"),
        wt.build_request(wt.WRQ, b"up.bin"),
        wt.build_request(rrq, b"../../etc/passwd"),
        wt.build_request(rrq, b"/etc/passwd"),
        wt.build_request(rrq, b"a/../../b"),
        wt.build_request(rrq, b"dir/"),
        wt.build_request(rrq, b"\xff\xfe"),
        wt.build_request(rrq, b"x" * 512),
        wt.build_ack(0),
        wt.build_ack(1),
        wt.build_ack(65535),
        wt.build_data(1, b"data"),
        wt.build_error(0, "abort"),
        wt.build_oack([("tsize", "1")]),
        b"\x00\x01f\x00octet",  # unterminated
        b"\x00\x01f\x00octet\x00blksize\x00",  # an option without a value
        b"\x00\x07\x00\x00",  # unknown opcode
        b"\x00\x04",  # short
        b"",
    ]


def tftp_seed_frames() -> list[bytes]:
    """Every payload of :func:`tftp_payloads` as a guest Ethernet frame."""
    return [tftp_frame(p) for p in tftp_payloads()]


def tftp_seed_sessions() -> list[list[Event]]:
    """Event sequences that drive a session through its phases (times are the caller's)."""
    body = bytes(range(256)) * 5  # 1280 bytes: two full 512-byte blocks and a short one
    plain = [
        GuestFrame(tftp_frame(wt.build_request(wt.RRQ, b"f"))),
        TftpOpened(1, 0, len(body)),
        TftpChunk(1, 0, body, 0),
        GuestFrame(tftp_frame(wt.build_ack(1))),
        GuestFrame(tftp_frame(wt.build_ack(1))),
        GuestFrame(tftp_frame(wt.build_ack(2))),
        GuestFrame(tftp_frame(wt.build_ack(3))),
    ]
    windowed = [
        GuestFrame(tftp_frame(wt.build_request(
            wt.RRQ, b"f", "octet", [("tsize", "0"), ("windowsize", "4"), ("blksize", "256")]
        ))),
        TftpOpened(1, 0, len(body)),
        TftpChunk(1, 0, body, 0),
        GuestFrame(tftp_frame(wt.build_ack(0))),
        GuestFrame(tftp_frame(wt.build_ack(2))),
        Tick(),
        GuestFrame(tftp_frame(wt.build_ack(6))),
    ]
    failing = [
        GuestFrame(tftp_frame(wt.build_request(wt.RRQ, b"f"))),
        TftpOpened(1, 2, 0),
        GuestFrame(tftp_frame(wt.build_request(wt.RRQ, b"g"), sport=2001)),
        TftpOpened(2, 0, 10),
        TftpChunk(2, 0, b"", 5),
    ]
    return [plain, windowed, failing]


__all__ = [
    "TFTP_SEED_OPTIONS", "tftp_frame", "tftp_payloads", "tftp_seed_frames", "tftp_seed_sessions",
]  # fmt: skip

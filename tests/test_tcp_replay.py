"""A TCP session through the whole stack replays identical; changed host data is reported."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import dpkt
import msgpack

from replay.engine import format_divergence, replay_journal
from slirptrio.config import parse_user_options
from slirptrio.core.events import (
    Effect,
    Event,
    GuestFrame,
    SendFrame,
    TcpConnect,
    TcpConnected,
    TcpData,
    TcpEof,
    TcpSent,
    decode_event,
    encode,
)
from slirptrio.core.stack import Stack
from slirptrio.door import Door
from slirptrio.journal import is_digest, open_journal
from tests import guestframes as gf
from tests import journals
from tests.journals import recording

GW_MAC = bytes.fromhex("52550a000202")


def tcp_frame(flags: int, seq: int, ack: int, data: bytes = b"") -> bytes:
    seg = dpkt.tcp.TCP(sport=40000, dport=80, seq=seq, ack=ack, flags=flags, win=65535,
                       data=data)
    ip = dpkt.ip.IP(src=gf.ip4("10.0.2.15"), dst=gf.ip4("203.0.113.1"), p=dpkt.ip.IP_PROTO_TCP,
                    ttl=64, id=1, data=seg)
    ip.len = 20 + len(bytes(seg))
    return gf.eth(GW_MAC, ip, dpkt.ethernet.ETH_TYPE_IP)  # dpkt fills in the TCP checksum


def segments(effects: list[Effect]) -> list[dpkt.tcp.TCP]:
    return [gf.parse(e.data).data.data for e in effects if isinstance(e, SendFrame)]


def record_session(path: pathlib.Path, host_data: bytes = b"hello, guest") -> int:
    """Drive one HTTP-like exchange through the stack, journaling it; return the flow id."""
    config = parse_user_options("")
    with recording(path, config, 3) as door:
        return _session(door, host_data)


def _session(door: Door, host_data: bytes) -> int:
    t = 1_000_000

    def step(event: Event) -> list[Effect]:
        nonlocal t
        t += 1_000_000
        return door.step(event, t)

    (connect,) = [e for e in step(GuestFrame(tcp_frame(dpkt.tcp.TH_SYN, 1000, 0)))
                  if isinstance(e, TcpConnect)]
    assert (connect.host, connect.port) == ("203.0.113.1", 80)
    flow = connect.flow
    (synack,) = segments(step(TcpConnected(flow)))
    assert synack.flags & dpkt.tcp.TH_SYN and synack.ack == 1001
    isn = synack.seq
    step(GuestFrame(tcp_frame(dpkt.tcp.TH_ACK, 1001, isn + 1)))
    step(GuestFrame(tcp_frame(dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, 1001, isn + 1, b"GET /\r\n")))
    step(TcpSent(flow, 7))
    data = segments(step(TcpData(flow, host_data)))
    assert b"".join(d.data for d in data) == host_data
    step(GuestFrame(tcp_frame(dpkt.tcp.TH_ACK, 1008, isn + 1 + len(host_data))))
    fin = segments(step(TcpEof(flow)))[-1]
    assert fin.flags & dpkt.tcp.TH_FIN
    return flow


def rewrite(src: pathlib.Path, dst: pathlib.Path, replacement: bytes = b"HELLO, guest") -> int:
    """Copy a journal, changing the host's bytes in its TcpData record; return its seq."""
    shutil.copytree(src, dst)
    changed = -1

    def change(_seg: pathlib.Path, items: list[Any]) -> None:
        nonlocal changed
        for rec in items[2:]:
            event = decode_event(rec[2])
            if isinstance(event, TcpData):
                rec[2] = encode(TcpData(event.flow, replacement))
                changed = rec[0]

    journals.rewrite(dst, change)
    return changed


def test_tcp_session_replays_identical(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tcp.journal"
    record_session(path)
    result = replay_journal(path)
    assert result.identical and result.records == 8 and result.frames >= 7


def test_changed_host_data_names_flow_and_record(tmp_path: pathlib.Path) -> None:
    path, bad = tmp_path / "tcp.journal", tmp_path / "changed.journal"
    flow = record_session(path)
    index = rewrite(path, bad)
    assert index > 0
    result = replay_journal(bad)
    assert not result.identical and result.divergence is not None
    assert result.divergence.index == index
    report = format_divergence(result)
    assert f"record {index}" in report and f"flow {flow}" in report, report
    assert "first differing byte" in report, report


def test_bulk_output_is_journaled_as_digests(tmp_path: pathlib.Path) -> None:
    """Large output frames are kept as length + CRC + headers, and still compared exactly."""
    path, bad = tmp_path / "tcp.journal", tmp_path / "changed.journal"
    record_session(path, host_data=bytes(range(256)) * 8)
    journal = open_journal(path)
    digests = [e for r in journal.records for e in r.effects if is_digest(e[1])]
    assert digests and all(d[1][1] > 256 and len(d[1][3]) == 128 for d in digests)
    assert replay_journal(path).identical
    rewrite(path, bad, replacement=bytes(range(256)) * 7 + bytes(255) + b"!")
    result = replay_journal(bad)
    assert not result.identical
    report = format_divergence(result)
    assert "crc32" in report and "lengths" in report, report


def test_format_1_journal_with_whole_outputs_still_replays(tmp_path: pathlib.Path) -> None:
    """Version 1 kept effects whole; replay compares them by their digests all the same."""
    path, old = tmp_path / "tcp.journal", tmp_path / "v1.journal"
    record_session(path, host_data=bytes(range(256)) * 8)
    journal = open_journal(path)
    raw_header = dict(journal.header.to_raw(), format=1)
    del raw_header["constants"], raw_header["segment"]
    records = list(journal.records)
    # Re-run the inputs to get whole effects, as a version-1 writer stored them.
    config = parse_user_options("")
    door = Door(Stack(config, journal.header.seed))
    with old.open("wb") as out:
        out.write(msgpack.packb(raw_header, use_bin_type=True))
        for rec in records:
            effects = door.step(decode_event(rec.event), rec.t_ns)
            out.write(msgpack.packb(
                [rec.seq, rec.t_ns, rec.event, [encode(e) for e in effects]], use_bin_type=True
            ))
    with old.open("rb") as f:
        result = replay_journal(f)
    assert result.identical and result.records == len(records)

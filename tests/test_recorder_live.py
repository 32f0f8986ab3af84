"""The recorder in a running stack: an injected core exception shows as an error with its
traceback live, the network goes on, the journal keeps it and replay raises it again at the
same record; statistics count the journal."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import pytest
import trio

import slirptrio
from replay.engine import replay_journal
from slirptrio.core.stack import Stack
from slirptrio.wire.framing import encode_frame
from tests import guestframes as gf
from tests.test_api import _exchange


def _explode_on_arp_for(monkeypatch: pytest.MonkeyPatch, target: bytes) -> None:
    original = Stack._arp

    def arp(self: Stack, src_mac: bytes, payload: Any) -> None:
        if bytes(payload[24:28]) == target:
            raise KeyError("injected: no such neighbour")
        original(self, src_mac, payload)

    monkeypatch.setattr(Stack, "_arp", arp)


async def test_core_exception_live_then_replayed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "slirptrio.door")
    sock = str(tmp_path / "vm.sock")
    journal = tmp_path / "s.journal"
    _explode_on_arp_for(monkeypatch, gf.ip4("10.0.2.3"))
    async with slirptrio.open_stack("", journal=journal, pcap=None, seed=3,
                                    dns_upstreams=["127.0.0.1:9"]) as stack:
        await stack.listen_qemu(f"unix:{sock}")
        guest = await trio.open_unix_socket(sock)
        assert await _exchange(guest, gf.arp_request("10.0.2.2"))
        await guest.send_all(encode_frame(gf.arp_request("10.0.2.3")))
        # the stack goes on: the next frame is answered
        (reply,) = await _exchange(guest, gf.icmp_echo("10.0.2.2"))
        assert gf.parse(reply).data.data.type == 0
        stats = stack.statistics()
        assert stats.counters["core_exceptions"] == 1
        await guest.aclose()
    live = [r for r in caplog.records if "core raised KeyError" in r.getMessage()]
    assert len(live) == 1 and live[0].exc_info is not None
    assert "Traceback" in caplog.text and "injected: no such neighbour" in caplog.text
    result = await trio.to_thread.run_sync(replay_journal, journal)
    assert result.identical
    (seq, kind, message), = result.exceptions
    assert kind == "KeyError" and "injected" in message
    monkeypatch.undo()
    result = await trio.to_thread.run_sync(replay_journal, journal)
    assert result.divergence is not None and result.divergence.record.seq == seq


async def test_statistics_count_the_journal(tmp_path: pathlib.Path) -> None:
    sock = str(tmp_path / "vm.sock")
    async with slirptrio.open_stack("", journal=tmp_path / "j", pcap=tmp_path / "p.pcap",
                                    dns_upstreams=["127.0.0.1:9"]) as stack:
        await stack.listen_qemu(f"unix:{sock}")
        guest = await trio.open_unix_socket(sock)
        for _ in range(3):
            assert await _exchange(guest, gf.arp_request("10.0.2.2"))
        with trio.fail_after(5):
            while stack.statistics().journal_records < 3:
                await trio.sleep(0.01)
        stats = stack.statistics()
        assert stats.journal_bytes > 0 and stats.journal_gaps == 0
        assert stats.journal_lost_records == 0 and stats.pcap_lost_frames == 0
        await guest.aclose()

"""The trio embedding API and the control socket, with a fake guest on a unix socket."""

from __future__ import annotations

import json
import pathlib

import trio

import slirptrio
from replay.engine import ReplayResult, replay_journal
from slirptrio.shell.control import request
from slirptrio.wire import fast
from slirptrio.wire.framing import StreamDecoder, encode_frame
from tests import guestframes as gf


async def _exchange(stream: trio.SocketStream, frame: bytes) -> list[bytes]:
    await stream.send_all(encode_frame(frame))
    decoder = StreamDecoder()
    with trio.fail_after(5):
        while True:
            got = decoder.feed(await stream.receive_some(65536))
            if got:
                return got


async def test_open_stack_dhcp_control_and_replay(tmp_path: pathlib.Path) -> None:
    sock = str(tmp_path / "vm.sock")
    ctl = str(tmp_path / "ctl.sock")
    journal = tmp_path / "s.journal"
    async with slirptrio.open_stack(
        "hostname=vm1", journal=journal, pcap=tmp_path / "s.pcap", seed=5,
        dns_upstreams=["127.0.0.1:9"],
    ) as stack:
        qemu = await stack.listen_qemu(f"unix:{sock}")
        assert qemu == f"-netdev stream,id=n0,server=off,addr.type=unix,addr.path={sock}"
        await stack.serve_control(ctl)
        guest = await trio.open_unix_socket(sock)
        (offer,) = await _exchange(guest, gf.dhcp(1))
        assert gf.dhcp_of(offer).yiaddr == 0x0A00020F
        (ack,) = await _exchange(
            guest, gf.dhcp(3, requested="10.0.2.15", server="10.0.2.2")
        )
        assert dict(gf.dhcp_of(ack).opts)[12] == b"vm1"
        assert [lease.ip for lease in stack.leases()] == [gf.ip4("10.0.2.15")]
        stats = stack.statistics()
        assert stats.counters["frames_in"] == 2 and stats.counters["frames_out"] == 2
        assert stats.guest_attached and stats.leases == 1

        answer = await request(ctl, {"cmd": "leases"})
        assert answer["ok"] and answer["leases"][0]["ip"] == "10.0.2.15"
        assert answer["leases"][0]["mac"] == gf.GUEST_MAC.hex(":")
        answer = await request(ctl, {"cmd": "stats"})
        assert answer["counters"]["frames_in"] == 2
        assert answer["fast_path"] == stats.fast_path == fast.IMPL  # native or pure, as chosen
        info = await request(ctl, {"cmd": "info"})
        ports = info.pop("ports")
        assert info.pop("listen") == [f"unix:{sock}"]
        assert info == {"ok": True, "flows": [], "hostfwd": {}, "forwards": [], "tftp": [],
                        "dns_upstreams": [{"upstream": "127.0.0.1:9", "state": "unused"}]}
        assert [(p["port"], p["macs"], p["addresses"]) for p in ports] == [
            (0, [gf.GUEST_MAC.hex(":")], ["10.0.2.15"])]
        bad = await request(ctl, {"cmd": "nope"})
        assert not bad["ok"] and "unknown command" in bad["error"]
        # Garbage on the socket gets an error line and leaves the stack running.
        raw = await trio.open_unix_socket(ctl)
        await raw.send_all(b"{not json\n")
        line = await raw.receive_some(4096)
        assert json.loads(line)["ok"] is False
        await raw.aclose()
        assert (await _exchange(guest, gf.arp_request("10.0.2.2")))
        await guest.aclose()
    assert not pathlib.Path(sock).exists() and not pathlib.Path(ctl).exists()
    result = await trio.to_thread.run_sync(_replay, journal)
    assert result.identical and result.records >= 3


def _replay(path: pathlib.Path) -> ReplayResult:
    return replay_journal(path)


async def test_one_transport_per_stack(tmp_path: pathlib.Path) -> None:
    async with slirptrio.open_stack(dns_upstreams=["127.0.0.1:9"]) as stack:
        await stack.listen_qemu(f"unix:{tmp_path / 'a.sock'}")
        try:
            await stack.listen_qemu(f"unix:{tmp_path / 'b.sock'}")
        except RuntimeError as exc:
            assert "already" in str(exc)
        else:
            raise AssertionError("a second transport was accepted")

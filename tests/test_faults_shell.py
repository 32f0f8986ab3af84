"""Fault rules through the API, the control socket and the command line, with a fake guest
on a unix socket; the session's journal replays identical and holds every rule change."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import trio

import slirptrio
from replay.engine import ReplayResult, replay_journal
from slirptrio.core.events import FaultAdd, FaultRemove
from slirptrio.journal import open_journal
from slirptrio.shell.control import request
from slirptrio.wire.framing import StreamDecoder, encode_frame
from tests import guestframes as gf
from tests.test_faults import DNS, _dns_query, _udp

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Guest:
    """The guest's end of the stream: frames out, frames back in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = StreamDecoder()
        self.got: list[bytes] = []

    async def send(self, frame: bytes) -> None:
        await self.stream.send_all(encode_frame(frame))

    async def next(self) -> bytes:
        with trio.fail_after(10):
            while not self.got:
                self.got += self.decoder.feed(await self.stream.receive_some(65536))
        return self.got.pop(0)


def _kind(frame: bytes) -> str:
    eth = gf.parse(frame)
    if eth.type == 0x0806:
        return "arp"
    ip = eth.data
    if ip.p == 1:
        return "icmp"
    if ip.p == 17 and ip.data.sport == 53:
        return f"dns rcode {ip.data.data[3] & 15}"
    return "other"


async def test_rules_through_api_and_ctl_replay_identical(tmp_path: pathlib.Path) -> None:
    sock, ctl = str(tmp_path / "vm.sock"), str(tmp_path / "ctl.sock")
    journal = tmp_path / "s.journal"
    async with slirptrio.open_stack(
        "", journal=journal, seed=9, dns_upstreams=["127.0.0.1:9"],
        faults=["dir=in proto=icmp loss=100%"],
    ) as stack:
        await stack.listen_qemu(f"unix:{sock}")
        await stack.serve_control(ctl)
        guest = Guest(await trio.open_unix_socket(sock))
        # The echo reply is lost: the ARP reply asked for after it is the first frame back.
        await guest.send(gf.icmp_echo("10.0.2.2"))
        await guest.send(gf.arp_request("10.0.2.2"))
        assert _kind(await guest.next()) == "arp"
        listed = await request(ctl, {"cmd": "fault-list"})
        assert listed["ok"] and [(r["id"], r["rule"]) for r in listed["faults"]] == [
            (1, "dir=in proto=icmp loss=100%")
        ]
        assert listed["faults"][0]["stats"] == {"matched": 1, "dropped": 1}
        stats = await request(ctl, {"cmd": "stats"})
        assert stats["faults"][0]["stats"]["dropped"] == 1
        assert stats["counters"]["fault_dropped"] == 1
        # Removed through the socket: echoes come back.
        assert (await request(ctl, {"cmd": "fault-remove", "id": 1}))["ok"]
        await guest.send(gf.icmp_echo("10.0.2.2"))
        assert _kind(await guest.next()) == "icmp"
        # A DNS rule for the duration of a block (the API's context manager).
        async with stack.fault("name=*.example.com dns=nxdomain") as rid:
            assert rid == 2 and [r.id for r in stack.faults()] == [2]
            await guest.send(_udp(_dns_query("www.example.com"), dst=DNS, dport=53))
            assert _kind(await guest.next()) == "dns rcode 3"
        assert stack.faults() == []
        added = await request(ctl, {"cmd": "fault-add", "rule": "proto=dns dns=servfail"})
        assert added == {"ok": True, "id": 3, "rule": "proto=dns dns=servfail"}
        await guest.send(_udp(_dns_query("a.test"), dst=DNS, dport=53))
        assert _kind(await guest.next()) == "dns rcode 2"
        bad = await request(ctl, {"cmd": "fault-add", "rule": "loss=2"})
        assert not bad["ok"] and bad["error"].startswith("bad fault rule: loss=2: expected")
        missing = await request(ctl, {"cmd": "fault-remove", "id": 99})
        assert not missing["ok"] and missing["error"] == "no fault rule 99"
        assert (await request(ctl, {"cmd": "fault-clear"}))["ok"]
        assert stack.faults() == []
        await guest.stream.aclose()
    result: ReplayResult = await trio.to_thread.run_sync(replay_journal, journal)
    assert result.identical
    changes = [r.event for r in open_journal(journal).records
               if r.event[0] in (FaultAdd.TAG, FaultRemove.TAG)]
    assert changes == [
        [FaultAdd.TAG, 1, "dir=in proto=icmp loss=100%"], [FaultRemove.TAG, 1],
        [FaultAdd.TAG, 2, "proto=dns name=*.example.com dns=nxdomain"], [FaultRemove.TAG, 2],
        [FaultAdd.TAG, 3, "proto=dns dns=servfail"], [FaultRemove.TAG, -1],
    ]


def _cli(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slirptrio", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL)


def test_bad_faults_file_is_one_line_exit_2(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nloss = "2%"\n\n[[rule]]\nproto = "tcp"\nlos = "1%"\n')
    proc = _cli("run", "--faults", str(bad), "--no-journal", "--listen",
                f"unix:{tmp_path / 's'}")
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if "error" in x]
    assert f"argument --faults: {bad}: rule 2: los=1%: unknown key 'los'" in line
    proc = _cli("run", "--faults", str(tmp_path / "none.toml"), "--no-journal")
    assert proc.returncode == 2 and "argument --faults:" in proc.stderr


def test_ctl_fault_usage_is_exit_2(tmp_path: pathlib.Path) -> None:
    proc = _cli("ctl", str(tmp_path / "ctl"), "fault", "remove", "x")
    assert proc.returncode == 2 and "fault add RULE... | fault list" in proc.stderr

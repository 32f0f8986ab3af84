"""Live capture: filters, the pcap stream over the control socket, several captures at once,
a reader that stops reading (frames lost and counted, the guest unaffected), and the CLI."""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
from typing import Any

import dpkt
import pytest
import trio

import slirptrio
from slirptrio.shell.capture import (
    CaptureError,
    Endpoint,
    FrameFilter,
    filter_from_request,
    parse_flow,
)
from slirptrio.shell.control import request
from slirptrio.wire.framing import StreamDecoder, encode_frame
from slirptrio.wire.pcap import MAGIC_NS, read_pcap
from tests import guestframes as gf

REPO = pathlib.Path(__file__).resolve().parents[1]
HOST_MAC = bytes.fromhex("52550a000202")


def tcp_frame(sport: int, dport: int, dst: str = "10.0.2.2") -> bytes:
    seg = dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_SYN, seq=1)
    return gf.ipv4("10.0.2.15", dst, seg, dpkt.ip.IP_PROTO_TCP, HOST_MAC)


def udp_frame(sport: int, dport: int, dst: str = "10.0.2.3") -> bytes:
    dg = dpkt.udp.UDP(sport=sport, dport=dport, data=b"x" * 12)
    dg.ulen = 20
    return gf.ipv4("10.0.2.15", dst, dg, dpkt.ip.IP_PROTO_UDP, HOST_MAC)


def test_filters() -> None:
    ping = gf.icmp_echo("10.0.2.2")
    arp = gf.arp_request("10.0.2.2")
    dhcp = gf.dhcp(1)
    web = tcp_frame(40000, 80)
    dns = udp_frame(5000, 53)
    other = udp_frame(5000, 9999, "203.0.113.1")
    frames = {"ping": ping, "arp": arp, "dhcp": dhcp, "web": web, "dns": dns, "other": other}

    def passing(f: FrameFilter) -> set[str]:
        return {name for name, fr in frames.items() if f.matches(fr)}

    assert passing(FrameFilter()) == set(frames)
    assert passing(FrameFilter(protos=frozenset({"icmp"}))) == {"ping"}
    assert passing(FrameFilter(protos=frozenset({"arp", "dhcp"}))) == {"arp", "dhcp"}
    assert passing(FrameFilter(protos=frozenset({"udp"}))) == {"dhcp", "dns", "other"}
    assert passing(FrameFilter(protos=frozenset({"dns"}))) == {"dns"}
    assert passing(FrameFilter(protos=frozenset({"ipv4"}))) == set(frames) - {"arp"}
    assert passing(FrameFilter(ports=frozenset({80, 9999}))) == {"web", "other"}
    assert passing(FrameFilter(hosts=frozenset({gf.ip4("10.0.2.2")}))) == {"ping", "arp", "web"}
    assert passing(FrameFilter(flows=(parse_flow("10.0.2.2:80-10.0.2.15:40000"),))) == {"web"}
    assert passing(FrameFilter(protos=frozenset({"tcp"}), ports=frozenset({53}))) == set()
    assert not FrameFilter(protos=frozenset({"tcp"})).matches(b"\x00" * 10)


def test_filter_requests() -> None:
    def flows(n: int) -> tuple[Endpoint, Endpoint] | None:
        return (Endpoint(gf.ip4("10.0.2.15"), 1), Endpoint(gf.ip4("10.0.2.2"), 2)) if n == 7 \
            else None

    f = filter_from_request({"proto": ["tcp"], "port": [22], "host": ["10.0.2.2"],
                             "flow": [7, "10.0.2.15:5-10.0.2.3:53"]}, flows)
    assert f.describe() == {"proto": ["tcp"], "port": [22], "host": ["10.0.2.2"],
                            "flow": ["10.0.2.15:1-10.0.2.2:2", "10.0.2.15:5-10.0.2.3:53"]}
    for bad in ({"proto": ["sctp"]}, {"port": [70000]}, {"host": ["x"]}, {"flow": [8]},
                {"flow": ["10.0.2.15:5"]}, {"port": "22"}):
        with pytest.raises(CaptureError):
            filter_from_request(bad, flows)


async def read_messages(
    stream: trio.SocketStream, want_frames: int
) -> tuple[bytes, dict[str, Any]]:
    """Read a capture until ``want_frames`` frames arrived; return the pcap and last counts."""
    buf = bytearray()
    while b"\n" not in buf:
        buf += await stream.receive_some(65536)
    i = buf.index(b"\n")
    answer = json.loads(buf[:i])
    assert answer["ok"], answer
    del buf[: i + 1]
    pcap = bytearray()
    counts: dict[str, Any] = {}
    frames = 0
    while frames < want_frames:
        while len(buf) < 5 or len(buf) < 5 + struct.unpack_from(">I", buf, 1)[0]:
            data = await stream.receive_some(65536)
            assert data, "capture ended early"
            buf += data
        kind, n = bytes(buf[0:1]), struct.unpack_from(">I", buf, 1)[0]
        payload = bytes(buf[5 : 5 + n])
        del buf[: 5 + n]
        if kind in (b"H", b"P"):
            pcap += payload
            frames += kind == b"P"
        else:
            counts = json.loads(payload)
    return bytes(pcap), counts


async def exchange(guest: trio.SocketStream, decoder: StreamDecoder, frame: bytes,
                   replies: int = 1) -> list[bytes]:
    await guest.send_all(encode_frame(frame))
    got: list[bytes] = []
    with trio.fail_after(5):
        while len(got) < replies:
            got += decoder.feed(await guest.receive_some(65536))
    return got


async def test_two_captures_at_once(tmp_path: pathlib.Path) -> None:
    sock, ctl = str(tmp_path / "vm.sock"), str(tmp_path / "ctl.sock")
    async with slirptrio.open_stack("", seed=1, dns_upstreams=["127.0.0.1:9"],
                                    pcap=tmp_path / "s.pcap") as stack:
        await stack.listen_qemu(f"unix:{sock}")
        await stack.serve_control(ctl)
        guest = await trio.open_unix_socket(sock)
        decoder = StreamDecoder()
        await exchange(guest, decoder, gf.dhcp(1))  # before the captures: not seen
        everything = await trio.open_unix_socket(ctl)
        await everything.send_all(b'{"cmd": "capture"}\n')
        pings = await trio.open_unix_socket(ctl)
        await pings.send_all(b'{"cmd": "capture", "proto": ["icmp"]}\n')
        with trio.fail_after(5):
            while len(stack.statistics().captures) < 2:
                await trio.sleep(0.01)
        await exchange(guest, decoder, gf.arp_request("10.0.2.2"))
        for seq in range(3):
            await exchange(guest, decoder, gf.icmp_echo("10.0.2.2", seq=seq))
        with trio.fail_after(5):
            all_pcap, _ = await read_messages(everything, 8)
            icmp_pcap, _ = await read_messages(pings, 6)
        stats = stack.statistics().captures
        assert sorted(c["frames"] for c in stats) == [6, 8] and all(c["lost"] == 0
                                                                    for c in stats)
        await everything.aclose()
        await pings.aclose()
        with trio.fail_after(5):
            while stack.statistics().captures:
                await trio.sleep(0.01)
    assert struct.unpack_from("<I", all_pcap)[0] == MAGIC_NS
    frames = [f for _ts, f in read_pcap(io.BytesIO(all_pcap))]
    kinds = [type(gf.parse(f).data).__name__ for f in frames]
    assert kinds == ["ARP", "ARP"] + ["IP"] * 6
    icmp = [gf.parse(f).data.data.type for _ts, f in read_pcap(io.BytesIO(icmp_pcap))]
    assert icmp == [8, 0] * 3
    # The same frames, with the same timestamps, as the session's pcap file.
    with open(tmp_path / "s.pcap", "rb") as f:
        saved = list(read_pcap(f))
    assert list(read_pcap(io.BytesIO(all_pcap))) == saved[-8:]


async def test_a_reader_that_stops_reading_loses_frames_not_the_guest(
    tmp_path: pathlib.Path,
) -> None:
    sock, ctl = str(tmp_path / "vm.sock"), str(tmp_path / "ctl.sock")
    async with slirptrio.open_stack("", seed=1, dns_upstreams=["127.0.0.1:9"]) as stack:
        await stack.listen_qemu(f"unix:{sock}")
        await stack.serve_control(ctl)
        guest = await trio.open_unix_socket(sock)
        decoder = StreamDecoder()
        stalled = await trio.open_unix_socket(ctl)  # asks for a capture, never reads it
        await stalled.send_all(b'{"cmd": "capture"}\n')
        with trio.fail_after(5):
            while not stack.statistics().captures:
                await trio.sleep(0.01)
        n = 4000
        big = b"p" * 1400
        with trio.fail_after(60):
            for seq in range(n):
                (reply,) = await exchange(guest, decoder, gf.icmp_echo("10.0.2.2", seq=seq,
                                                                         payload=big))
                assert gf.parse(reply).data.data.type == 0
        (cap,) = stack.statistics().captures
        assert cap["lost"] > 0 and cap["frames"] + cap["lost"] == 2 * n
        assert stack.statistics().frames_dropped_toward_guest == 0
        # The capture gets the count when it reads again.
        with trio.fail_after(10):
            _, counts = await read_messages(stalled, cap["frames"])
        assert counts["lost"] == cap["lost"]


async def test_capture_errors(tmp_path: pathlib.Path) -> None:
    ctl = str(tmp_path / "ctl.sock")
    async with slirptrio.open_stack("", seed=1, dns_upstreams=["127.0.0.1:9"]) as stack:
        await stack.serve_control(ctl)
        answer = await request(ctl, {"cmd": "capture", "proto": ["sctp"]})
        assert not answer["ok"] and "unknown protocol" in answer["error"]
        answer = await request(ctl, {"cmd": "capture", "flow": [12]})
        assert not answer["ok"] and "no flow 12" in answer["error"]
        assert stack.statistics().captures == []


async def test_cli_capture_with_tshark(tmp_path: pathlib.Path) -> None:
    sock, ctl = str(tmp_path / "vm.sock"), str(tmp_path / "ctl.sock")
    out = tmp_path / "live.pcap"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    async with slirptrio.open_stack("", seed=1, dns_upstreams=["127.0.0.1:9"]) as stack:
        await stack.listen_qemu(f"unix:{sock}")
        await stack.serve_control(ctl)
        guest = await trio.open_unix_socket(sock)
        decoder = StreamDecoder()
        async with trio.open_nursery() as nursery:
            proc: list[subprocess.CompletedProcess[bytes]] = []

            async def cli() -> None:
                proc.append(await trio.run_process(
                    [sys.executable, "-m", "slirptrio", "capture", ctl, "-p", "icmp",
                     "-c", "4", "-w", str(out)], capture_stderr=True, env=env, check=False))

            nursery.start_soon(cli)
            with trio.fail_after(20):
                while not stack.statistics().captures:
                    await trio.sleep(0.02)
            for seq in range(2):
                await exchange(guest, decoder, gf.icmp_echo("10.0.2.2", seq=seq))
            await exchange(guest, decoder, gf.arp_request("10.0.2.2"))  # filtered out
    (done,) = proc
    assert done.returncode == 0, done.stderr
    assert b"slirptrio capture: 4 frames, 0 lost" in done.stderr
    with out.open("rb") as f:
        types = [gf.parse(fr).data.data.type for _ts, fr in read_pcap(f)]
    assert types == [8, 0, 8, 0]
    if shutil.which("tshark"):
        bad = subprocess.run(["tshark", "-n", "-r", str(out), "-Y", "_ws.malformed"],
                             capture_output=True, text=True, timeout=60, check=True)
        assert bad.stdout.strip() == ""


def test_cli_refuses_a_terminal_and_bad_filters(capsys: pytest.CaptureFixture[str]) -> None:
    from slirptrio.cli import main

    for argv, needle in (
        (["capture", "/nonexistent", "--flow", "a-b"], "argument --flow"),
        (["capture", "/nonexistent", "--host", "nope"], "argument --host"),
        (["capture", "/nonexistent", "--port", "70000"], "argument --port"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err
    assert main(["capture", "/nonexistent/ctl.sock", "-w", os.devnull, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slirptrio: error: control socket /nonexistent/ctl.sock: ")
    assert err.count("\n") == 1

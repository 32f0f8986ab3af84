"""Forward rules with IPv6 addresses (QEMU never merged these), in the parser and in a running
stack: hostfwd listening on [::1] and [::], guest IPv6 targets, guestfwd on a virtual IPv6
address served in-process, and the journal of it all replaying identical."""

from __future__ import annotations

import pathlib
import socket

import pytest
import trio

import slirptrio
from replay.describe import frame as describe
from replay.engine import ReplayResult, replay_journal
from slirptrio.forward import RuleError, hostfwd_key, parse_guestfwd, parse_hostfwd
from slirptrio.wire.framing import StreamDecoder, encode_frame
from tests import guestframes6 as g6


def test_hostfwd_rules_with_ipv6() -> None:
    r = parse_hostfwd("tcp:[::1]:2222-:22")
    assert (r.proto, r.host_addr, r.host_port, r.guest_addr, r.guest_port) == (
        "tcp", "::1", 2222, "", 22
    )
    assert r.key == "tcp:[::1]:2222"
    r = parse_hostfwd("udp:[::]:5353-[fec0::15]:53")
    assert (r.host_addr, r.guest_addr, r.key) == ("::", "fec0::15", "udp:[::]:5353")
    r = parse_hostfwd("[0:0::1]:80-[FEC0::0015]:8080")  # normalized
    assert (r.host_addr, r.guest_addr) == ("::1", "fec0::15")
    assert parse_hostfwd("unix:/tmp/x.sock-[fec0::15]:22").guest_addr == "fec0::15"
    assert hostfwd_key("tcp:[::1]:2222") == "tcp:[::1]:2222"
    assert hostfwd_key("tcp:[::1]:2222-[fec0::15]:22") == "tcp:[::1]:2222"


@pytest.mark.parametrize(
    "rule",
    ["tcp:::1:2222-:22", "tcp:[::1:2222-:22", "tcp:[10.0.2.2]:22-:22", "tcp::22-[nope]:22",
     "tcp::22-fec0::15:22"],
)
def test_bad_ipv6_rules(rule: str) -> None:
    with pytest.raises(RuleError):
        parse_hostfwd(rule)


def test_guestfwd_rules_with_ipv6() -> None:
    g = parse_guestfwd("tcp:[fec0::100]:80-tcp:[::1]:8080")
    assert (g.addr, g.port, g.target) == ("fec0::100", 80, "tcp:[::1]:8080")
    with pytest.raises(RuleError):
        parse_guestfwd("tcp:[fec0::100]:80-tcp:[::1:8080")


def test_describe_ipv6_frames() -> None:
    assert "[fec0::5054:ff:fe12:3456]:40001 > [fec0::2]:80 TCP [S]" in describe(
        g6.tcp_syn("fec0::2", 80)
    )
    assert "ICMPv6 type 133" in describe(g6.router_solicit())


async def _frames(stream: trio.SocketStream, decoder: StreamDecoder) -> list[bytes]:
    with trio.fail_after(5):
        while True:
            got = decoder.feed(await stream.receive_some(65536))
            if got:
                return got


async def test_hostfwd_on_ipv6_and_guestfwd_on_virtual_ipv6(tmp_path: pathlib.Path) -> None:
    sock = str(tmp_path / "vm.sock")
    journal = tmp_path / "s.journal"

    async def web(stream: trio.abc.HalfCloseableStream) -> None:
        await stream.send_all(b"hello over fec0::100")

    async with slirptrio.open_stack(
        "", journal=journal, pcap=tmp_path / "s.pcap", seed=3, dns_upstreams=["127.0.0.1:9"]
    ) as stack:
        await stack.listen_qemu(f"unix:{sock}")
        port = await stack.add_hostfwd("tcp:[::1]:0-[fec0::15]:22")
        any_port = await stack.add_hostfwd("tcp:[::]:0-:22")
        assert port and any_port
        assert set(stack.hostfwds()) == {"tcp:[::1]:0-[fec0::15]:22", "tcp:[::]:0-:22"}
        with pytest.raises(slirptrio.ForwardError):
            await stack.serve_guestfwd("[2001:db8::1]:80", web)
        await stack.serve_guestfwd("[fec0::100]:80", web)
        guest = await trio.open_unix_socket(sock)
        decoder = StreamDecoder()

        # A host client on ::1: the guest sees a SYN from fec0::2 to fec0::15:22.
        client = trio.socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        await client.connect(("::1", port))
        (syn,) = await _frames(guest, decoder)
        ip = g6.parse(syn).data
        assert (ip.src, ip.dst, ip.data.dport) == (g6.ip6("fec0::2"), g6.ip6("fec0::15"), 22)
        client.close()
        # [::] is IPv6 only: IPv4 clients are not taken on that port.
        v4 = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with pytest.raises(OSError):
            await v4.connect(("127.0.0.1", any_port))
        v4.close()

        # The guest connects to the in-process guest forward on fec0::100.
        await guest.send_all(encode_frame(g6.neighbor_solicit("fec0::100")))
        frames = await _frames(guest, decoder)
        assert any(g6.parse(f).data.src == g6.ip6("fec0::100") for f in frames)
        await guest.send_all(encode_frame(g6.tcp_syn("fec0::100", 80)))
        synack = None
        while synack is None:
            for f in await _frames(guest, decoder):
                ip = g6.parse(f).data
                seg = ip.data
                if getattr(seg, "dport", None) == 40001 and seg.flags & 0x12 == 0x12:
                    synack = ip
        assert synack.data.sport == 80 and synack.src == g6.ip6("fec0::100")
        # UDP: a datagram from a host socket on ::1 reaches the guest from fec0::2, and the
        # guest's answer goes back out of the forward's socket to that peer.
        uport = await stack.add_hostfwd("udp:[::1]:0-[fec0::15]:5353")
        peer = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        await peer.bind(("::1", 0))
        await peer.sendto(b"question", ("::1", uport))
        dgram = None
        while dgram is None:
            for f in await _frames(guest, decoder):
                ip = g6.parse(f).data
                if getattr(ip.data, "dport", None) == 5353:
                    dgram = ip
        assert dgram.src == g6.ip6("fec0::2") and dgram.dst == g6.ip6("fec0::15")
        assert dgram.data.data == b"question"
        await guest.send_all(encode_frame(g6.udp6(
            "fec0::2", dgram.data.sport, b"answer", sport=5353, src="fec0::15"
        )))
        with trio.fail_after(5):
            data, addr = await peer.recvfrom(100)
        assert data == b"answer" and addr[1] == uport
        peer.close()
        await guest.aclose()
        await stack.remove_hostfwd("tcp:[::1]:" + str(port))
        assert set(stack.hostfwds()) == {"tcp:[::]:0-:22", "udp:[::1]:0-[fec0::15]:5353"}
    result = await trio.to_thread.run_sync(_replay, journal)
    assert result.identical, result


def _replay(path: pathlib.Path) -> ReplayResult:
    return replay_journal(path)

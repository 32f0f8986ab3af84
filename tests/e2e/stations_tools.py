"""Helpers run inside the e2e namespaces for tests/e2e/test_stations.py
(``python tests/e2e/stations_tools.py CMD ...``).

* ``listen PORT ADDR...``: UDP and TCP on PORT at each ADDR; prints ``udp FROM DATA`` for
  each datagram and ``tcp FROM`` for each connection accepted (what reached the host).
* ``send-martians IFACE GUEST_IP PORT HOST4 HOST6``: from the guest's tap, raw frames with
  martian sources to the stack's MACs: TCP SYNs and UDP datagrams to HOST4/HOST6:PORT and echo
  requests to the gateway, from 127.0.0.1 and ::1; then a normal datagram ``control`` from
  GUEST_IP to HOST4:PORT through the kernel. Frames reach the stack in order, so once the
  listener prints ``control``, the martians have been handled. Prints how many it sent.
"""

from __future__ import annotations

import pathlib
import socket
import sys
import threading

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from slirptrio.wire import icmp as wicmp
from slirptrio.wire import icmpv6 as wicmp6
from slirptrio.wire import ipv4 as wip
from slirptrio.wire import ipv6 as wip6
from slirptrio.wire.ethernet import build_ethernet
from slirptrio.wire.tcp import SYN, build_tcp
from slirptrio.wire.udp import build_udp

GATEWAY_MAC = bytes.fromhex("52550a000202")
ROUTER_MAC = bytes.fromhex("525600000002")


def listen(port: int, addrs: list[str]) -> None:
    def udp(s: socket.socket) -> None:
        while True:
            data, peer = s.recvfrom(65536)
            print("udp", peer[0], data.decode(errors="replace"), flush=True)

    def tcp(s: socket.socket) -> None:
        while True:
            c, peer = s.accept()
            print("tcp", peer[0], flush=True)
            c.close()

    for addr in addrs:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.bind((addr, port))
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((addr, port))
        t.listen(16)
        for target, sock in ((udp, u), (tcp, t)):
            threading.Thread(target=target, args=(sock,), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def martian_frames(mac: bytes, port: int, host4: str, host6: str) -> list[bytes]:
    out = []
    src4, dst4 = socket.inet_aton("127.0.0.1"), socket.inet_aton(host4)
    gw4 = socket.inet_aton("10.0.2.2")
    for dst, l4, proto in (
        (dst4, build_tcp(src4, dst4, 40000, port, 1, 0, SYN, 64240, b""), wip.IPPROTO_TCP),
        (dst4, build_udp(src4, dst4, 40000, port, b"martian4"), wip.IPPROTO_UDP),
        (gw4, wicmp.build_icmp(wicmp.ECHO_REQUEST, 0, b"\x00\x01\x00\x01", b"martian"),
         wip.IPPROTO_ICMP),
    ):
        out.append(build_ethernet(GATEWAY_MAC, mac, 0x0800, wip.build_ipv4(src4, dst, proto, l4)))
    src6, dst6 = socket.inet_pton(socket.AF_INET6, "::1"), socket.inet_pton(socket.AF_INET6, host6)
    router6 = socket.inet_pton(socket.AF_INET6, "fec0::2")
    for dst, l4, proto in (
        (dst6, build_tcp(src6, dst6, 40000, port, 1, 0, SYN, 64240, b""), wip6.IPPROTO_TCP),
        (dst6, build_udp(src6, dst6, 40000, port, b"martian6"), wip6.IPPROTO_UDP),
        (router6, wicmp6.build_icmpv6(src6, router6, wicmp6.ECHO_REQUEST, 0,
                                      b"\x00\x01\x00\x01martian"), wip6.IPPROTO_ICMPV6),
    ):
        out.append(build_ethernet(ROUTER_MAC, mac, 0x86DD, wip6.build_ipv6(src6, dst, proto, l4)))
    return out


def send_martians(iface: str, guest_ip: str, port: int, host4: str, host6: str) -> None:
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    raw.bind((iface, 0))
    mac = raw.getsockname()[4]
    frames = martian_frames(mac, port, host4, host6)
    for frame in frames:
        raw.send(frame)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((guest_ip, 0))
        s.sendto(b"control", (host4, port))
    print("sent", len(frames), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "listen":
        listen(int(argv[1]), argv[2:])
    elif argv[0] == "send-martians":
        send_martians(argv[1], argv[2], int(argv[3]), argv[4], argv[5])
    else:
        raise SystemExit(f"unknown command {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])

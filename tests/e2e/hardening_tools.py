"""Guest- and host-side helpers for the hardening e2e tests (``python hardening_tools.py CMD``).

* ``keepalive ADDR PORT IDLE``: connect to a tcp-echo server with keepalive probes every
  second (TCP_KEEPIDLE/INTVL 1, KEEPCNT 3), stay idle IDLE seconds watching the socket, then
  send bytes, check the echo and the digest; prints ``ok`` or what failed.
* ``craft IFACE SRC DST[,DST...] PORT``: from the guest's tap, raw Ethernet frames (AF_PACKET)
  carrying a TCP SYN, a UDP datagram and an ICMP echo request to each DST (addresses the
  guest's own kernel would never send on a wire), then collects for 2 s what comes back;
  prints one JSON object: per DST and protocol, the ICMP (type, code, source) or TCP flags
  answered, or null.
* ``syn-flood DST[,DST...] PORT N CHECK_ADDR CHECK_PORT WAIT PENDING_MAX``: N non-blocking
  connects to the DSTs in turn, then (with all of them still open) an HTTP GET of 1,000 bytes
  to CHECK_ADDR:CHECK_PORT, checked byte for byte; reports how the flood's sockets stood when
  the reply was complete, once at most PENDING_MAX were pending and once all of them ended
  (the last two: or WAIT seconds from the start passed); prints JSON.
* ``listen PORT ADDR[,ADDR...]``: TCP and UDP listeners on each ADDR; prints ``listening``,
  then one line per accepted connection or datagram.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import struct
import sys
import threading
import time

GW_MAC = bytes.fromhex("52550a000202")


def keepalive(addr: str, port: int, idle: float) -> str:
    s = socket.create_connection((addr, port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    end = time.monotonic() + idle
    while time.monotonic() < end:
        readable, _, _ = select.select([s], [], [], min(1.0, end - time.monotonic()))
        if readable:  # an idle echo connection has nothing to read: only an error
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return f"died while idle: {os.strerror(err) if err else 'readable'}"
    data = os.urandom(5000)
    s.settimeout(10)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
    except OSError as exc:
        return f"failed after idling: {exc}"
    want = data + b"sha256:" + hashlib.sha256(data).hexdigest().encode()
    return "ok" if bytes(got) == want else f"mismatch {len(got)}"


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return int(~s & 0xFFFF)


def _ip(src: bytes, dst: bytes, proto: int, l4: bytes, ident: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64, proto, 0, src,
                      dst)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + l4


def _l4_csum(src: bytes, dst: bytes, proto: int, seg: bytes, at: int) -> bytes:
    c = _csum(src + dst + struct.pack("!BBH", 0, proto, len(seg)) + seg)
    return seg[:at] + struct.pack("!H", c or 0xFFFF) + seg[at + 2 :]


def craft(iface: str, src_text: str, dsts: list[str], port: int) -> dict[str, dict[str, object]]:
    with open(f"/sys/class/net/{iface}/address") as f:
        mac = bytes.fromhex(f.read().strip().replace(":", ""))
    src = socket.inet_aton(src_text)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((iface, 0))
    sport = 40000 + os.getpid() % 10000
    sent: dict[tuple[str, str], int] = {}
    for i, d in enumerate(dsts):
        dst = socket.inet_aton(d)
        syn = struct.pack("!HHIIBBHHH", sport + i, port, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
        udp = struct.pack("!HHHH", sport + i, port, 8 + 5, 0) + b"hello"
        echo = struct.pack("!BBHHH", 8, 0, 0, 0x4242, i) + b"ping"
        echo = echo[:2] + struct.pack("!H", _csum(echo)) + echo[4:]
        for k, (name, proto, l4) in enumerate((("tcp", 6, _l4_csum(src, dst, 6, syn, 16)),
                                               ("udp", 17, _l4_csum(src, dst, 17, udp, 6)),
                                               ("icmp", 1, echo))):
            ident = 0x5000 + 3 * i + k
            sent[(d, name)] = ident
            s.send(GW_MAC + mac + b"\x08\x00" + _ip(src, dst, proto, l4, ident))
    result: dict[str, dict[str, object]] = {d: {"tcp": None, "udp": None, "icmp": None}
                                            for d in dsts}
    by_ident = {v: k for k, v in sent.items()}
    end = time.monotonic() + 2.0
    s.settimeout(0.2)
    while time.monotonic() < end:
        try:
            frame = s.recv(65535)
        except TimeoutError:
            continue
        if frame[6:12] != GW_MAC or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0xF) * 4
        proto, isrc = ip[9], socket.inet_ntoa(ip[12:16])
        l4 = ip[ihl:]
        if proto == 1 and l4[0] in (3, 11) and len(l4) >= 8 + 20:
            quoted = l4[8:]
            key = by_ident.get(struct.unpack("!H", quoted[4:6])[0])
            if key is not None:
                result[key[0]][key[1]] = [l4[0], l4[1], isrc]
        elif proto == 6 and len(l4) >= 14:
            for i, d in enumerate(dsts):
                if struct.unpack("!H", l4[2:4])[0] == sport + i and isrc == d:
                    result[d]["tcp"] = ["flags", l4[13], isrc]
    return result


def _pattern(n: int) -> bytes:
    """What servers.py's ``GET /N`` serves (its ``pattern``, repeated here so this tool stays
    one file the guest runs)."""
    block = hashlib.sha256(b"slirptrio").digest() * 2048
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


def syn_flood(dsts: list[str], port: int, n: int, check: tuple[str, int], wait: float,
              pending_max: int) -> dict[str, object]:
    socks = []
    for i in range(n):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex((dsts[i % len(dsts)], port))
        socks.append(c)
    t0 = time.monotonic()
    check_ok, check_ms, body = False, -1.0, b""
    try:
        with socket.create_connection(check, timeout=10) as h:
            h.sendall(b"GET /1000 HTTP/1.0\r\n\r\n")
            h.settimeout(10)
            while chunk := h.recv(65536):
                body += chunk
        head, _, payload = body.partition(b"\r\n\r\n")
        check_ok = head.startswith(b"HTTP/1.1 200") and payload == _pattern(1000)
        check_ms = (time.monotonic() - t0) * 1000
    except OSError as exc:
        body = str(exc).encode()

    ended: dict[socket.socket, int] = {}  # SO_ERROR reads once: keep each socket's verdict

    def states() -> tuple[int, int, int]:
        _, writable, _ = select.select([], socks, [], 0)
        for c in writable:
            if c not in ended:
                ended[c] = c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        ok = sum(1 for err in ended.values() if err == 0)
        return len(ended) - ok, ok, len(socks) - len(ended)

    def wait_for(done: int) -> tuple[int, int, int]:
        """The states once at most ``done`` sockets are pending, or at the deadline: woken
        by the sockets themselves (select), never by a timer but the deadline."""
        now = states()
        while now[2] > done and time.monotonic() < t0 + wait:
            pending = [c for c in socks if c not in ended]
            select.select([], pending, [], max(0.0, t0 + wait - time.monotonic()))
            now = states()
        return now

    # Sampled on events, not after a sleep: when the check's reply is complete; once no more
    # than PENDING_MAX flood sockets are still pending (a SYN lost on the way is retried by
    # the guest's kernel a second later); and once all of them ended (or WAIT seconds from
    # the start passed).
    at_check = states()
    early = wait_for(pending_max)
    late = wait_for(0)
    for c in socks:
        c.close()
    return {
        "check_ok": check_ok, "check_ms": round(check_ms), "check_error": body[:200].decode(
            errors="replace") if not check_ok else "",
        "pending_at_check": at_check[2],
        "refused_settled": early[0], "connected_settled": early[1],
        "pending_settled": early[2],
        "refused_end": late[0], "connected_end": late[1], "pending_end": late[2],
    }


def listen(port: int, addrs: list[str]) -> None:
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:  # one whole line at a time: the listeners are threads
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def tcp_loop(srv: socket.socket, addr: str) -> None:
        while True:
            c, peer = srv.accept()
            say(f"tcp {addr} {peer[0]}")
            c.close()

    def udp_loop(u: socket.socket, addr: str) -> None:
        while True:
            _, peer = u.recvfrom(65535)
            say(f"udp {addr} {peer[0]}")

    threads = []
    for a in addrs:
        t = socket.socket()
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((a, port))
        t.listen(64)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((a, port))
        threads += [threading.Thread(target=tcp_loop, args=(t, a), daemon=True),
                    threading.Thread(target=udp_loop, args=(u, a), daemon=True)]
    for th in threads:
        th.start()
    print("listening", flush=True)
    while True:
        time.sleep(3600)


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "keepalive":
        print(keepalive(argv[1], int(argv[2]), float(argv[3])), flush=True)
    elif cmd == "craft":
        print(json.dumps(craft(argv[1], argv[2], argv[3].split(","), int(argv[4]))), flush=True)
    elif cmd == "syn-flood":
        out = syn_flood(argv[1].split(","), int(argv[2]), int(argv[3]),
                        (argv[4], int(argv[5])), float(argv[6]), int(argv[7]))
        print(json.dumps(out), flush=True)
    elif cmd == "listen":
        listen(int(argv[1]), argv[2].split(","))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Small test servers and clients run inside the e2e namespaces (``python -m tests.e2e.servers``).

* ``dns PORT [ADDR]``: a DNS server on 127.0.0.1 (or ADDR; UDP and TCP) answering every A
  query with 203.0.113.77 and every AAAA query with 2001:db8::77, except names starting with
  ``silent`` (never answered).
* ``udp-echo ADDR PORT``: echoes every datagram.
* ``udp-client ADDR PORT SIZE``: sends SIZE patterned bytes, prints ``ok FROM`` if the same
  bytes come back, ``refused`` on ICMP port unreachable, ``timeout`` otherwise.
* ``dns-query SERVER NAME [tcp] [aaaa]``: prints the response code and the first A (or AAAA)
  record.
* ``http ADDR PORT``: HTTP/1.1 server; ``GET /N`` answers N patterned bytes, ``PUT``/``POST``
  answers the sha256 of the body it read.
* ``tcp-echo ADDR PORT``: echoes each connection's bytes; after the client's EOF it sends
  ``sha256:HEX`` of all it received and closes (a half-close check).
* ``tcp-client ADDR PORT SIZE [HOLD]``: connects, sends SIZE bytes, shuts down its write
  side, prints ``ok`` if the echo and digest come back (after HOLD seconds of being open).
* ``udp-echo-any PORT``: UDP echo on 0.0.0.0 (for the guest side of forwards).
* ``tcp-many ADDR PORT N SIZE``: N concurrent connections to a tcp-echo server, each sends
  SIZE random bytes, shuts down its write side, and checks the echo and the digest.

Addresses may be IPv6 everywhere (the socket family follows the address); a server on ``::``
also accepts IPv4.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import threading
import time

ANSWER = bytes([203, 0, 113, 77])
ANSWER6 = socket.inet_pton(socket.AF_INET6, "2001:db8::77")


def family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _v6_dual(s: socket.socket, addr: str) -> None:
    if addr == "::":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


def _question_end(q: bytes) -> int:
    end = 12
    while q[end]:
        end += q[end] + 1
    return end + 5


def dns_answer(q: bytes) -> bytes | None:
    """The test server's reply to query ``q``, or None to stay silent."""
    end = _question_end(q)
    name_first = q[13 : 13 + q[12]]
    if name_first.startswith(b"silent"):
        return None
    qtype = struct.unpack("!H", q[end - 4 : end - 2])[0]
    n = 1 if qtype in (1, 28) else 0
    head = q[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, n, 0, 0)
    if qtype == 28:
        rr = b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x00\x3c\x00\x10" + ANSWER6
    else:
        rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + ANSWER
    return head + q[12:end] + (rr if n else b"")


def _recv_exact(c: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def serve_dns(port: int, addr: str = "127.0.0.1") -> None:
    u = socket.socket(family(addr), socket.SOCK_DGRAM)
    u.bind((addr, port))
    t = socket.socket(family(addr), socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, port))
    t.listen(16)

    def tcp_loop() -> None:
        while True:
            c, _ = t.accept()
            try:
                with c:
                    while True:
                        (n,) = struct.unpack("!H", _recv_exact(c, 2))
                        reply = dns_answer(_recv_exact(c, n))
                        if reply is not None:
                            c.sendall(struct.pack("!H", len(reply)) + reply)
            except (EOFError, OSError):
                pass

    threading.Thread(target=tcp_loop, daemon=True).start()
    print("listening", flush=True)
    while True:
        q, addr = u.recvfrom(4096)
        reply = dns_answer(q)
        if reply is not None:
            u.sendto(reply, addr)


def serve_udp_echo(addr: str, port: int) -> None:
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    _v6_dual(s, addr)
    s.bind((addr, port))
    print("listening", flush=True)
    while True:
        d, a = s.recvfrom(65535)
        s.sendto(d, a)


def udp_client(addr: str, port: int, size: int) -> str:
    msg = bytes(i % 251 for i in range(size))
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((addr, port))  # connected: ICMP errors are reported to us
    try:
        s.send(msg)
        data, frm = s.recvfrom(65535)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    return f"ok {frm[0]}" if data == msg else f"mismatch {len(data)}"


def dns_query(server: str, name: str, tcp: bool, aaaa: bool = False) -> str:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    qtype = b"\x00\x1c" if aaaa else b"\x00\x01"
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + qtype + b"\x00\x01"
    if tcp:
        with socket.create_connection((server, 53), timeout=10) as c:
            c.sendall(struct.pack("!H", len(q)) + q)
            (n,) = struct.unpack("!H", _recv_exact(c, 2))
            r = _recv_exact(c, n)
    else:
        s = socket.socket(family(server), socket.SOCK_DGRAM)
        s.settimeout(15)
        s.sendto(q, (server, 53))
        r, _ = s.recvfrom(4096)
    rcode = r[3] & 0x0F
    ident = struct.unpack("!H", r[:2])[0]
    ancount = struct.unpack("!H", r[6:8])[0]
    if aaaa:
        addr = socket.inet_ntop(socket.AF_INET6, r[-16:]) if ancount else "-"
        return f"id={ident:#x} rcode={rcode} answers={ancount} aaaa={addr}"
    addr = socket.inet_ntoa(r[-4:]) if ancount else "-"
    return f"id={ident:#x} rcode={rcode} answers={ancount} a={addr}"


def pattern(n: int) -> bytes:
    """N bytes of a fixed, non-repeating-looking pattern (what ``GET /N`` serves)."""
    block = hashlib.sha256(b"slirptrio").digest() * 2048  # 64 KiB
    reps, rest = divmod(n, len(block))
    return block * reps + block[:rest]


def serve_http(addr: str, port: int) -> None:
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            n = int(self.path.strip("/") or "0")
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            # Streamed from one megabyte of the pattern (it repeats every 64 KiB), so a
            # gigabyte body costs no gigabyte of memory.
            chunk = memoryview(pattern(1 << 20))
            for i in range(0, n, 1 << 20):
                self.wfile.write(chunk[: min(1 << 20, n - i)])

        def do_PUT(self) -> None:
            h = hashlib.sha256()
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
            body = h.hexdigest().encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT

    class Server(http.server.ThreadingHTTPServer):
        address_family = family(addr)

    server = Server((addr, port), Handler)
    print("listening", flush=True)
    server.serve_forever()


def serve_tcp_echo(addr: str, port: int) -> None:
    srv = socket.socket(family(addr), socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _v6_dual(srv, addr)
    srv.bind((addr, port))
    srv.listen(1024)

    def one(c: socket.socket) -> None:
        h = hashlib.sha256()
        with c:
            while True:
                data = c.recv(1 << 16)
                if not data:
                    break
                h.update(data)
                c.sendall(data)
            c.sendall(b"sha256:" + h.hexdigest().encode())

    print("listening", flush=True)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def tcp_many(addr: str, port: int, n: int, size: int) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    want: dict[socket.socket, bytes] = {}
    got: dict[socket.socket, bytearray] = {}
    out: dict[socket.socket, memoryview] = {}
    for _ in range(n):
        s = socket.create_connection((addr, port), timeout=30)
        s.setblocking(False)
        data = os.urandom(size)
        want[s] = data + b"sha256:" + hashlib.sha256(data).hexdigest().encode()
        got[s] = bytearray()
        out[s] = memoryview(data)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    open_ = n
    deadline = time.monotonic() + 120
    while open_ and time.monotonic() < deadline:
        for key, events in sel.select(timeout=1):
            s = key.fileobj  # type: ignore[assignment]
            if events & selectors.EVENT_WRITE and out[s]:
                sent = s.send(out[s][: 1 << 16])
                out[s] = out[s][sent:]
                if not out[s]:
                    s.shutdown(socket.SHUT_WR)
                    sel.modify(s, selectors.EVENT_READ)
            if events & selectors.EVENT_READ:
                data = s.recv(1 << 16)
                if data:
                    got[s] += data
                else:
                    sel.unregister(s)
                    s.close()
                    open_ -= 1
    ok = sum(1 for s in want if bytes(got[s]) == want[s])
    return f"{ok}/{n} ok"


def tcp_rr(addr: str, port: int, n: int) -> str:
    """``n`` one-byte request/response round trips on one connection to an echo server."""
    ok = 0
    with socket.create_connection((addr, port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(n):
            s.sendall(bytes([i & 0xFF]))
            ok += s.recv(1) == bytes([i & 0xFF])
    return f"{ok}/{n} ok"


def tcp_client(addr: str, port: int, size: int, hold: float) -> str:
    """``addr`` may be ``unix:/path`` (then ``port`` is ignored)."""
    data = os.urandom(size)
    want = data + b"sha256:" + hashlib.sha256(data).hexdigest().encode()
    try:
        if addr.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(addr[5:])
        else:
            s = socket.create_connection((addr, port), timeout=20)
        with s:
            time.sleep(hold)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := s.recv(1 << 16):
                got += chunk
    except OSError as exc:
        return f"error {exc.__class__.__name__}"
    return "ok" if bytes(got) == want else f"mismatch {len(got)}"


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "dns":
        serve_dns(int(argv[1]), *argv[2:3])
    elif cmd == "udp-echo":
        serve_udp_echo(argv[1], int(argv[2]))
    elif cmd == "udp-client":
        print(udp_client(argv[1], int(argv[2]), int(argv[3])), flush=True)
    elif cmd == "http":
        serve_http(argv[1], int(argv[2]))
    elif cmd == "tcp-echo":
        serve_tcp_echo(argv[1], int(argv[2]))
    elif cmd == "tcp-client":
        hold = float(argv[4]) if len(argv) > 4 else 0.0
        print(tcp_client(argv[1], int(argv[2]), int(argv[3]), hold), flush=True)
    elif cmd == "udp-echo-any":
        serve_udp_echo("0.0.0.0", int(argv[1]))
    elif cmd == "tcp-many":
        print(tcp_many(argv[1], int(argv[2]), int(argv[3]), int(argv[4])), flush=True)
    elif cmd == "tcp-rr":
        print(tcp_rr(argv[1], int(argv[2]), int(argv[3])), flush=True)
    elif cmd == "dns-query":
        print(dns_query(argv[1], argv[2], "tcp" in argv[3:], "aaaa" in argv[3:]), flush=True)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Small test servers and clients run inside the e2e namespaces (``python -m tests.e2e.servers``).

* ``dns PORT``: a DNS server on 127.0.0.1 (UDP and TCP) answering every A query with
  203.0.113.77, except names starting with ``silent`` (never answered).
* ``udp-echo ADDR PORT``: echoes every datagram.
* ``udp-client ADDR PORT SIZE``: sends SIZE patterned bytes, prints ``ok FROM`` if the same
  bytes come back, ``refused`` on ICMP port unreachable, ``timeout`` otherwise.
* ``dns-query SERVER NAME [tcp]``: prints the response code and the first A record.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

ANSWER = bytes([203, 0, 113, 77])


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
    n = 1 if qtype == 1 else 0
    head = q[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, n, 0, 0)
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


def serve_dns(port: int) -> None:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", port))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("127.0.0.1", port))
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
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    print("listening", flush=True)
    while True:
        d, a = s.recvfrom(65535)
        s.sendto(d, a)


def udp_client(addr: str, port: int, size: int) -> str:
    msg = bytes(i % 251 for i in range(size))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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


def dns_query(server: str, name: str, tcp: bool) -> str:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"
    if tcp:
        with socket.create_connection((server, 53), timeout=10) as c:
            c.sendall(struct.pack("!H", len(q)) + q)
            (n,) = struct.unpack("!H", _recv_exact(c, 2))
            r = _recv_exact(c, n)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(15)
        s.sendto(q, (server, 53))
        r, _ = s.recvfrom(4096)
    rcode = r[3] & 0x0F
    ident = struct.unpack("!H", r[:2])[0]
    ancount = struct.unpack("!H", r[6:8])[0]
    addr = socket.inet_ntoa(r[-4:]) if ancount else "-"
    return f"id={ident:#x} rcode={rcode} answers={ancount} a={addr}"


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "dns":
        serve_dns(int(argv[1]))
    elif cmd == "udp-echo":
        serve_udp_echo(argv[1], int(argv[2]))
    elif cmd == "udp-client":
        print(udp_client(argv[1], int(argv[2]), int(argv[3])), flush=True)
    elif cmd == "dns-query":
        print(dns_query(argv[1], argv[2], len(argv) > 3 and argv[3] == "tcp"), flush=True)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])

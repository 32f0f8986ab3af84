"""A trio program embedding slirptrio (run by the e2e tests in the host namespace).

It serves 10.0.2.100:80 to the guest with an in-process HTTP handler, and when the file
``TRIGGER`` appears it opens ``connect_to_guest(PORT)``, sends bytes, half-closes, and prints
what the guest's echo server answered. Usage: embed_demo.py SOCK JOURNAL TRIGGER PORT
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys

import trio

import slirptrio


async def http_handler(stream: trio.abc.HalfCloseableStream) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        request += chunk
    body = b"hello from a trio handler: " + request.split(b"\r\n", 1)[0]
    head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    await stream.send_all(head + body)


async def main(sock: str, journal: str, trigger: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session, sock, journal, trigger, port)
            async for _ in signals:
                nursery.cancel_scope.cancel()  # leaving open_stack closes the journal
                break


async def session(sock: str, journal: str, trigger: str, port: int) -> None:
    async with slirptrio.open_stack(
        "", journal=journal, pcap=journal + ".pcap", dns_upstreams=["127.0.0.1:5353"]
    ) as stack:
        await stack.listen_qemu(f"unix:{sock}")
        await stack.serve_guestfwd("10.0.2.100:80", http_handler)
        print("ready", flush=True)
        while not os.path.exists(trigger):
            await trio.sleep(0.05)
        stream = await stack.connect_to_guest(port)
        data = os.urandom(100_000)
        await stream.send_all(data)
        await stream.send_eof()
        got = bytearray()
        while chunk := await stream.receive_some(65536):
            got += chunk
        want = data + b"sha256:" + hashlib.sha256(data).hexdigest().encode()
        print("connect_to_guest", "ok" if bytes(got) == want else f"mismatch {len(got)}",
              flush=True)
        print("flows", [f.state for f in stack.flows() if f.proto == "tcp"], flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

"""``slirptrio capture``: stream a running session's frames as pcap, live.

``slirptrio capture /tmp/vm1.ctl | tshark -r -`` or ``| wireshark -k -i -``: frames from the
moment it attaches, through the stack's control socket (:mod:`slirptrio.shell.capture` has the
protocol). A reader that does not keep up loses frames (the stack never waits for it); how many
is printed on stderr at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import sys
from typing import IO, Any

from slirptrio.cli._common import Parser, Subparsers, UserError, describe
from slirptrio.shell.capture import PROTOCOLS
from slirptrio.syntax.address import parse_flow
from slirptrio.syntax.errors import CaptureError

_MSG = struct.Struct(">cI")
_MAX_MESSAGE = 1 << 20
_CONNECT_TIMEOUT_S = 10.0


def add_parser(sub: Subparsers) -> None:
    cap = sub.add_parser(
        "capture", help="stream the running session's frames as pcap (| tshark -r -)",
        description="Stream the frames of a running stack as pcap to stdout, from now on.",
    )
    cap.add_argument("socket", metavar="CONTROL_SOCKET", help="the stack's control socket")
    cap.add_argument("--proto", "-p", action="append", choices=PROTOCOLS, default=[],
                     help="only this protocol (repeatable: any of them)")
    cap.add_argument("--port", action="append", type=int, default=[], metavar="N",
                     help="only TCP/UDP with port N on either side (repeatable)")
    cap.add_argument("--host", action="append", default=[], metavar="ADDR",
                     help="only frames from or to ADDR (repeatable)")
    cap.add_argument("--flow", action="append", default=[], metavar="ID|A:P-B:P",
                     help="only this flow: a number from `ctl info`, or two endpoints as the "
                     "guest sees them (repeatable)")
    cap.add_argument("--guest", action="append", default=[], type=int, metavar="PORT",
                     help="only frames that crossed this switch port (several guests: "
                     "`ctl info` lists the ports; 0 is the first guest; repeatable)")
    cap.add_argument("-c", "--count", type=int, metavar="N", help="stop after N frames")
    cap.add_argument("-w", "--write", metavar="FILE",
                     help="write to FILE instead of stdout ('-': stdout)")
    cap.add_argument("-q", "--quiet", action="store_true", help="no counts on stderr at the end")
    cap.add_argument("-v", "--verbose", action="count", default=0,
                     help="show the traceback of an error")


def _request(args: argparse.Namespace, parser: Parser) -> dict[str, Any]:
    for p in args.port:
        if not 0 <= p <= 65535:
            parser.error(f"argument --port: {p} out of range")
    flows: list[Any] = []
    for f in args.flow:
        if f.isdecimal():
            flows.append(int(f))
            continue
        try:
            parse_flow(f)
        except CaptureError as exc:
            parser.error(f"argument --flow: {exc}")
        flows.append(f)
    for h in args.host:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in h else socket.AF_INET, h)
        except OSError:
            parser.error(f"argument --host: {h!r} is not an IP address")
    if args.count is not None and args.count < 1:
        parser.error("argument --count: must be at least 1")
    for g in args.guest:
        if g < 0:
            parser.error(f"argument --guest: {g} is not a switch port")
    return {"cmd": "capture", "proto": args.proto, "port": args.port, "host": args.host,
            "flow": flows, "guest": args.guest}


class _Reader:
    """Buffered reads from the control connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 18)
        if not data:
            return False
        self.buf += data
        return True

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > 1 << 16 or not self._fill():
                raise ConnectionError("no answer from the control socket")
        i = self.buf.index(b"\n")
        out = bytes(self.buf[:i])
        del self.buf[: i + 1]
        return out

    def message(self) -> tuple[bytes, bytes] | None:
        while len(self.buf) < _MSG.size:
            if not self._fill():
                return None
        kind, n = _MSG.unpack_from(self.buf)
        if n > _MAX_MESSAGE:
            raise ConnectionError(f"oversized capture message ({n} bytes)")
        while len(self.buf) < _MSG.size + n:
            if not self._fill():
                return None
        payload = bytes(self.buf[_MSG.size : _MSG.size + n])
        del self.buf[: _MSG.size + n]
        return kind, payload

    def pending(self) -> bool:
        return len(self.buf) >= _MSG.size


def command(args: argparse.Namespace, parser: Parser) -> int:
    request = _request(args, parser)
    to_stdout = args.write in (None, "-")
    if to_stdout and sys.stdout.isatty():
        parser.error("stdout is a terminal: pipe it (| tshark -r -, | wireshark -k -i -) "
                     "or use -w FILE")
    try:
        out: IO[bytes] = sys.stdout.buffer if to_stdout else open(args.write, "wb")  # noqa: SIM115
    except OSError as exc:
        raise UserError(f"-w: {describe(exc)}") from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    frames = lost = 0
    ended = False
    try:
        try:
            sock.settimeout(_CONNECT_TIMEOUT_S)
            sock.connect(args.socket)
            sock.sendall(json.dumps(request).encode() + b"\n")
            reader = _Reader(sock)
            answer = json.loads(reader.line())
        except (OSError, ValueError, ConnectionError) as exc:
            raise UserError(f"control socket {args.socket}: {describe(exc)}") from exc
        if not isinstance(answer, dict) or not answer.get("ok"):
            err = answer.get("error") if isinstance(answer, dict) else answer
            raise UserError(f"control socket {args.socket}: {err}")
        sock.settimeout(None)
        while args.count is None or frames < args.count:
            msg = reader.message()
            if msg is None:
                break
            kind, payload = msg
            if kind in (b"H", b"P"):
                out.write(payload)
                frames += kind == b"P"
            elif kind in (b"S", b"E"):
                lost = int(json.loads(payload).get("lost", lost))
                ended = kind == b"E"
                if ended:
                    break
            if not reader.pending():
                out.flush()  # a live reader sees each batch at once
        out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader went away (tshark -c, a closed Wireshark): stop quietly.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, ConnectionError) as exc:
        # The stack went away mid-capture: what arrived is written; say why it ended.
        print(f"slirptrio capture: {args.socket}: {describe(exc)}", file=sys.stderr)
    finally:
        sock.close()
        if not to_stdout:
            out.close()
    if not args.quiet:
        note = " (the reader was too slow)" if lost else ""
        stopped = "; the stack stopped" if ended else ""
        print(f"slirptrio capture: {frames} frames, {lost} lost{note}{stopped}", file=sys.stderr)
    return 0

"""TFTP packets (RFC 1350) with options (RFC 2347, 2348, 2349, 7440): parse and build.

A request is ``opcode, filename NUL, mode NUL, (option NUL value NUL)*``. Filenames stay bytes
(the server decides what it accepts); mode and option names are ASCII, lowercased here, and
option values are kept as text. Anything short, unterminated or otherwise unreadable raises
:class:`MalformedFrame` with a ``tftp_*`` reason.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from slirptrio.wire import MalformedFrame

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6

# Error codes (RFC 1350, RFC 2347).
ERR_UNDEFINED = 0
ERR_NOT_FOUND = 1
ERR_ACCESS = 2
ERR_DISK_FULL = 3
ERR_ILLEGAL = 4
ERR_UNKNOWN_TID = 5
ERR_EXISTS = 6
ERR_NO_USER = 7
ERR_OPTION = 8

MAX_FILENAME = 512
"""Longest filename accepted in a request, in bytes (libslirp's bound)."""
MAX_OPTIONS = 16
"""Most option pairs read from one request; more is malformed."""
MAX_ERROR_MESSAGE = 255

_HEAD = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Request:
    """A read (RRQ) or write (WRQ) request."""

    opcode: int
    filename: bytes
    mode: str
    options: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Oack:
    options: tuple[tuple[str, str], ...]


Packet = Request | Data | Ack | Error | Oack


def _ascii(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedFrame("tftp_not_ascii", what) from None


def _strings(body: bytes) -> list[bytes]:
    if not body or body[-1] != 0:
        raise MalformedFrame("tftp_unterminated")
    return body[:-1].split(b"\x00")


def _pairs(fields: list[bytes]) -> tuple[tuple[str, str], ...]:
    # Some clients pad with NULs after the last option: empty trailing strings are dropped.
    while fields and not fields[-1]:
        fields.pop()
    if len(fields) % 2:
        raise MalformedFrame("tftp_bad_option", "an option without a value")
    if len(fields) > 2 * MAX_OPTIONS:
        raise MalformedFrame("tftp_too_many_options", f"{len(fields) // 2}")
    return tuple(
        (_ascii(fields[i], "option name").lower(), _ascii(fields[i + 1], "option value"))
        for i in range(0, len(fields), 2)
    )


def parse_tftp(data: bytes | memoryview) -> Packet:
    """Parse one TFTP packet (the UDP payload)."""
    raw = bytes(data)
    if len(raw) < 4:
        raise MalformedFrame("tftp_short", f"{len(raw)} bytes")
    opcode = (raw[0] << 8) | raw[1]
    if opcode in (RRQ, WRQ):
        fields = _strings(raw[2:])
        if len(fields) < 2:
            raise MalformedFrame("tftp_bad_request", "no mode")
        filename = fields[0]
        if len(filename) > MAX_FILENAME:
            raise MalformedFrame("tftp_long_filename", f"{len(filename)} bytes")
        mode = _ascii(fields[1], "mode").lower()
        return Request(opcode, filename, mode, _pairs(fields[2:]))
    if opcode == DATA:
        return Data((raw[2] << 8) | raw[3], raw[4:])
    if opcode == ACK:
        return Ack((raw[2] << 8) | raw[3])
    if opcode == ERROR:
        code = (raw[2] << 8) | raw[3]
        text = raw[4:].split(b"\x00", 1)[0][:MAX_ERROR_MESSAGE]
        return Error(code, text.decode("latin-1"))
    if opcode == OACK:
        return Oack(_pairs(_strings(raw[2:])))
    raise MalformedFrame("tftp_bad_opcode", str(opcode))


def build_data(block: int, data: bytes | memoryview) -> bytes:
    """DATA for wire block number ``block`` (0..65535)."""
    return _HEAD.pack(DATA, block) + bytes(data)


def build_ack(block: int) -> bytes:
    return _HEAD.pack(ACK, block)


def build_error(code: int, message: str) -> bytes:
    """ERROR with an ASCII message (other characters become ``?``)."""
    text = message.encode("ascii", "replace")[:MAX_ERROR_MESSAGE]
    return _HEAD.pack(ERROR, code) + text + b"\x00"


def _encode_pairs(options: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> bytes:
    return b"".join(k.encode("ascii") + b"\x00" + v.encode("ascii") + b"\x00" for k, v in options)


def build_oack(options: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> bytes:
    return OACK.to_bytes(2, "big") + _encode_pairs(options)


def build_request(
    opcode: int,
    filename: bytes,
    mode: str = "octet",
    options: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
) -> bytes:
    """An RRQ or WRQ (for clients and tests)."""
    return (
        opcode.to_bytes(2, "big") + filename + b"\x00" + mode.encode("ascii") + b"\x00"
        + _encode_pairs(options)
    )

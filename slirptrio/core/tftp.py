"""TFTP server: read-only file service for network boot, on the host address port 69.

Theory of operation
-------------------
A guest's read request (RRQ) to ``host:69`` (or ``[ipv6-host]:69``) opens a session keyed by
the guest's address and port; every reply comes from port 69 of the address asked, as libslirp's
do. Only "octet" mode is served (any other
mode gets error 4) and only reads: a write request gets error 2, "Access violation". Without a
``tftp=`` root every request gets that same error, as in libslirp.

The jail starts here: :func:`check_path` accepts only a relative name of plain components (no
``..``, no leading ``/``, no control characters); anything else is refused with error 2 before
the host is asked anything. The file itself is a host input. The session asks the shell to open
it (:class:`TftpOpen`; the shell resolves it beneath the root, refusing symlink escapes, hard
links and special files) and to read it in chunks (:class:`TftpRead`); the answers come back as
:class:`TftpOpened` and :class:`TftpChunk` events, journaled like any other, so a boot replays
identically after the files changed or vanished. At most one read per session is outstanding;
the session keeps only the bytes from its last acknowledged block to the end of its last read.

Options (RFC 2347), answered with an OACK in the order the client gave them; unknown or invalid
ones are left out, which tells the client to use the default:

* ``blksize`` (RFC 2348): 8..65464, clamped to what one unfragmented datagram carries at the
  MTU (MTU - 32: IPv4, UDP and TFTP headers; MTU - 52 over IPv6);
* ``tsize`` (RFC 2349): answered with the file's size;
* ``timeout`` (RFC 2349): 1..``MAX_TIMEOUT_S`` seconds becomes the retransmission timeout;
* ``windowsize`` (RFC 7440): 1..65535, clamped to ``MAX_WINDOWSIZE``: that many blocks are
  sent before waiting for an ACK.

Blocks are numbered from 1 without bound inside the session; the wire carries the number modulo
65536, so a transfer past block 65535 wraps to 0 and goes on. An ACK is read as the one block
number between the last acknowledged and the last sent with those low 16 bits.

Reliability, lock-step or windowed alike: an ACK that acknowledges new blocks slides the window
and sends what it now allows; an ACK short of the last block sent (a window the client saw only
in part) resumes from the block after it, as RFC 7440 says. A duplicate ACK is ignored — the
Sorcerer's Apprentice cure of RFC 1123 — so lost blocks are sent again only when the session's
timer fires (``RETRANSMIT_NS`` or the client's ``timeout``): then the OACK or every block after
the last acknowledged one goes out again. After ``MAX_RETRIES`` timeouts in a row, or
``SESSION_IDLE_NS`` without progress (a client that went quiet, a shell that never answered),
the session ends. The last block (shorter than ``blksize``, possibly empty) ends it once
acknowledged. At most ``MAX_SESSIONS`` run at once; a request beyond that is dropped (the
client retries).

Phases and their transitions are in :data:`TRANSITIONS`; :meth:`TftpServer._move` is the only
place a session's phase changes.
"""

from __future__ import annotations

import collections
import enum
import errno as _errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from slirptrio.core import snapshot as snap
from slirptrio.core.events import Effect, TftpChunk, TftpClose, TftpOpen, TftpOpened, TftpRead
from slirptrio.syntax.address import ip_port
from slirptrio.wire import MalformedFrame
from slirptrio.wire import tftp as wt

log = logging.getLogger("slirptrio.core.tftp")

TFTP_PORT = 69
MAX_SESSIONS = 20
DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
MAX_WINDOWSIZE = 64
RETRANSMIT_NS = 1_000_000_000
MAX_TIMEOUT_S = 10
MAX_RETRIES = 5
SESSION_IDLE_NS = 30_000_000_000
READ_CHUNK = 65536
MAX_PATH_DEPTH = 32
NAME_MAX = 255
_HEADERS = 20 + 8 + 4  # IPv4, UDP, TFTP DATA
_HEADERS6 = 40 + 8 + 4

SendUdp = Callable[[bytes, int, bytes, int, bytes], None]


class Phase(enum.Enum):
    OPENING = "opening"  # waiting for the shell to open the file
    OACK = "oack"  # OACK sent, waiting for ACK 0
    SENDING = "sending"  # data blocks flowing
    DONE = "done"


class Trigger(enum.Enum):
    OPENED_WITH_OPTIONS = enum.auto()
    OPENED = enum.auto()
    OPEN_FAILED = enum.auto()
    OACK_ACKED = enum.auto()
    LAST_ACKED = enum.auto()
    ABORTED = enum.auto()  # client error, read error, timeout, replaced by a new request


TRANSITIONS: dict[tuple[Phase, Trigger], Phase] = {
    (Phase.OPENING, Trigger.OPENED_WITH_OPTIONS): Phase.OACK,
    (Phase.OPENING, Trigger.OPENED): Phase.SENDING,
    (Phase.OPENING, Trigger.OPEN_FAILED): Phase.DONE,
    (Phase.OACK, Trigger.OACK_ACKED): Phase.SENDING,
    (Phase.SENDING, Trigger.LAST_ACKED): Phase.DONE,
    (Phase.OPENING, Trigger.ABORTED): Phase.DONE,
    (Phase.OACK, Trigger.ABORTED): Phase.DONE,
    (Phase.SENDING, Trigger.ABORTED): Phase.DONE,
}


def peer_str(ip: bytes, port: int) -> str:
    """``10.0.2.15:2000`` or ``[fec0::1]:2000``."""
    return ip_port(ip, port)


def check_path(raw: bytes) -> str | None:
    """A request's filename as a relative path of plain components joined by "/", or None
    when the jail refuses it (not UTF-8, absolute, ``..``, control characters, a directory)."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not name or name.startswith("/") or name.endswith("/"):
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or len(parts) > MAX_PATH_DEPTH:
        return None
    if any(p == ".." or len(p.encode()) > NAME_MAX for p in parts):
        return None
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class TftpSessionInfo:
    """One TFTP session, for ``info``."""

    session: int
    guest_ip: bytes
    guest_port: int
    path: str
    phase: str
    size: int | None
    acked_bytes: int
    blksize: int
    windowsize: int
    idle_ns: int

    def to_dict(self) -> dict[str, object]:
        return {
            "session": self.session,
            "guest": peer_str(self.guest_ip, self.guest_port),
            "path": self.path,
            "state": self.phase,
            "size": self.size,
            "acked_bytes": self.acked_bytes,
            "blksize": self.blksize,
            "windowsize": self.windowsize,
            "idle_s": round(self.idle_ns / 1e9, 3),
        }


class _Session:
    __slots__ = (
        "acked", "blksize", "buf", "buf_off", "bytes_sent", "deadline", "eof", "high", "idle_at",
        "ip", "last", "oack", "path", "phase", "port", "progress_ns", "read_size", "reading",
        "retries", "rto_ns", "sent", "sid", "size", "started_ns", "want_tsize", "window",
    )  # fmt: skip

    def __init__(self, sid: int, ip: bytes, port: int, path: str, now_ns: int) -> None:
        self.sid = sid
        self.ip = ip
        self.port = port
        self.path = path
        self.phase = Phase.OPENING
        self.blksize = DEFAULT_BLKSIZE
        self.window = 1
        self.rto_ns = RETRANSMIT_NS
        self.oack: list[tuple[str, str]] = []  # accepted options, tsize's value filled later
        self.want_tsize = False
        self.size: int | None = None
        self.buf = bytearray()  # file bytes from buf_off
        self.buf_off = 0
        self.eof: int | None = None  # where the file ends, once a short read showed it
        self.reading = False
        self.read_size = 0
        self.acked = 0  # highest block acknowledged (unbounded numbering)
        self.sent = 0  # highest block sent in the current window pass
        self.high = 0  # highest block ever sent
        self.last: int | None = None  # the final (short) block, once known
        self.retries = 0
        self.deadline = now_ns + SESSION_IDLE_NS  # the next timer: retransmit or give up
        self.idle_at = now_ns + SESSION_IDLE_NS  # ends the session if nothing moves by then
        self.progress_ns = now_ns
        self.started_ns = now_ns
        self.bytes_sent = 0


def _dump_oack(oack: list[tuple[str, str]]) -> list[list[str]]:
    return [list(kv) for kv in oack]


def _load_oack(raw: list[list[str]]) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in raw]


# Sessions are dumped slot by slot, so a new slot is in the snapshot without a change here.
_SESSION_CODECS: dict[str, snap.Codec] = {
    "phase": (lambda p: p.value, Phase),
    "buf": snap.BYTEARRAY,
    "oack": (_dump_oack, _load_oack),
}


class TftpServer:
    """The TFTP sessions of one stack.

    Args:
      send_udp: ``send_udp(src_ip, sport, dst_ip, dport, payload)`` queues a datagram to the
        guest.
      alloc_flow: returns a new id (sessions share the stack's flow ids).
      counters: where ``tftp_*`` counts go.
      host_ip, host_ip6: the addresses TFTP answers on (IPv4, IPv6; b"" for none).
      mtu: the link MTU (bounds ``blksize``).
      enabled: whether a ``tftp=`` root is configured.
    """

    # Set from the arguments and never changed (the snapshot convention's "wiring").
    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset({
        "_send_udp", "_alloc_flow", "counters", "host_ip", "host_ip6", "enabled", "max_blksize",
        "max_blksize6",
    })  # fmt: skip
    # ``_out`` is the current call's effect list, replaced at the start of every call.
    _SNAPSHOT_DERIVED: ClassVar[frozenset[str]] = frozenset({"_by_id", "_out"})

    def __init__(
        self,
        *,
        send_udp: SendUdp,
        alloc_flow: Callable[[], int],
        counters: collections.Counter[str],
        host_ip: bytes,
        mtu: int,
        enabled: bool,
        host_ip6: bytes = b"",
    ) -> None:
        self._send_udp = send_udp
        self._alloc_flow = alloc_flow
        self.counters = counters
        self.host_ip = host_ip
        self.host_ip6 = host_ip6
        self.enabled = enabled
        self.max_blksize = max(MIN_BLKSIZE, min(MAX_BLKSIZE, mtu - _HEADERS))
        self.max_blksize6 = max(MIN_BLKSIZE, min(MAX_BLKSIZE, mtu - _HEADERS6))
        self._sessions: dict[tuple[bytes, int], _Session] = {}
        self._by_id: dict[int, _Session] = {}
        self._out: list[Effect] = []

    def __len__(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------------ public face

    def guest_datagram(
        self, src_ip: bytes, sport: int, data: bytes | memoryview, now_ns: int
    ) -> list[Effect]:
        """A UDP datagram from the guest to ``host:69``."""
        out: list[Effect] = []
        self._out = out
        c = self.counters
        try:
            pkt = wt.parse_tftp(data)
        except MalformedFrame as exc:
            c["drop_" + exc.reason] += 1
            log.debug("dropped TFTP packet from %s: %s", peer_str(src_ip, sport), exc)
            return out
        if sport == 0:
            c["drop_tftp_port_zero"] += 1
            return out
        key = (src_ip, sport)
        if type(pkt) is wt.Request:
            self._request(key, pkt, now_ns)
            return out
        s = self._sessions.get(key)
        if s is None:
            c["tftp_stale_packet"] += 1
            return out
        if type(pkt) is wt.Ack:
            self._ack(s, pkt.block, now_ns)
        elif type(pkt) is wt.Error:
            c["tftp_client_errors"] += 1
            log.debug("tftp %s: client error %d %r", s.path, pkt.code, pkt.message)
            self._end(s, Trigger.ABORTED)
        else:
            c["drop_tftp_unexpected"] += 1
        return out

    def host_event(self, ev: object, now_ns: int) -> list[Effect]:
        """A :class:`TftpOpened` or :class:`TftpChunk` from the shell."""
        out: list[Effect] = []
        self._out = out
        if type(ev) is TftpOpened:
            s = self._by_id.get(ev.session)
            if s is None or s.phase is not Phase.OPENING:
                self.counters["tftp_stale_event"] += 1
                return out
            self._opened(s, ev, now_ns)
        elif type(ev) is TftpChunk:
            s = self._by_id.get(ev.session)
            if s is None or not s.reading:
                self.counters["tftp_stale_event"] += 1
                return out
            self._chunk(s, ev, now_ns)
        return out

    def poll_at(self) -> int | None:
        """The earliest session timer, or None."""
        if not self._by_id:
            return None
        return min(s.deadline for s in self._by_id.values())

    def tick(self, now_ns: int) -> list[Effect]:
        """Fire the session timers that are due."""
        out: list[Effect] = []
        self._out = out
        for s in [s for s in self._by_id.values() if s.deadline <= now_ns]:
            self._timeout(s, now_ns)
        return out

    def sessions(self, now_ns: int) -> list[TftpSessionInfo]:
        """The sessions in progress."""
        return [
            TftpSessionInfo(
                s.sid, s.ip, s.port, s.path, s.phase.value, s.size,
                min(s.acked * s.blksize, s.eof if s.eof is not None else s.acked * s.blksize),
                s.blksize, s.window, max(0, now_ns - s.progress_ns),
            )
            for s in self._by_id.values()
        ]  # fmt: skip

    # ------------------------------------------------------------------------ transitions

    def _move(self, s: _Session, trigger: Trigger) -> None:
        new = TRANSITIONS.get((s.phase, trigger))
        if new is None:
            raise AssertionError(f"tftp: no transition from {s.phase} on {trigger}")
        s.phase = new

    def _end(self, s: _Session, trigger: Trigger) -> None:
        self._move(s, trigger)
        del self._sessions[(s.ip, s.port)]
        del self._by_id[s.sid]
        if trigger is not Trigger.OPEN_FAILED:
            self._out.append(TftpClose(s.sid))

    # --------------------------------------------------------------------------- requests

    def _src(self, ip: bytes) -> bytes:
        return self.host_ip6 if len(ip) == 16 else self.host_ip

    def _error(self, ip: bytes, port: int, code: int, message: str) -> None:
        self.counters["tftp_errors_sent"] += 1
        self._send_udp(self._src(ip), TFTP_PORT, ip, port, wt.build_error(code, message))

    def _request(self, key: tuple[bytes, int], req: wt.Request, now_ns: int) -> None:
        c = self.counters
        ip, port = key
        if req.opcode == wt.WRQ:
            c["tftp_write_refused"] += 1
            self._error(ip, port, wt.ERR_ACCESS, "Access violation")
            return
        old = self._sessions.get(key)
        path = check_path(req.filename)
        if old is not None:
            if old.path == path and old.phase in (Phase.OPENING, Phase.OACK):
                c["tftp_duplicate_request"] += 1  # our answer is coming, or its timer resends
                return
            self._end(old, Trigger.ABORTED)
        if not self.enabled:
            c["tftp_no_root"] += 1
            self._error(ip, port, wt.ERR_ACCESS, "Access violation")
            return
        if req.mode != "octet":
            c["tftp_bad_mode"] += 1
            self._error(ip, port, wt.ERR_ILLEGAL, "Unsupported transfer mode")
            return
        if path is None:
            c["tftp_access_violation"] += 1
            log.info("tftp: refused %r from %s", req.filename, peer_str(ip, port))
            self._error(ip, port, wt.ERR_ACCESS, "Access violation")
            return
        if len(self._sessions) >= MAX_SESSIONS:
            c["tftp_sessions_full"] += 1
            return
        s = _Session(self._alloc_flow(), ip, port, path, now_ns)
        self._negotiate(s, req.options)
        self._sessions[key] = s
        self._by_id[s.sid] = s
        c["tftp_sessions"] += 1
        self._out.append(TftpOpen(s.sid, path))

    def _negotiate(self, s: _Session, options: tuple[tuple[str, str], ...]) -> None:
        largest = self.max_blksize6 if len(s.ip) == 16 else self.max_blksize
        seen: set[str] = set()
        for name, text in options:
            if name in seen:
                continue
            seen.add(name)
            value = int(text) if text.isascii() and text.isdecimal() and len(text) < 12 else -1
            if name == "blksize" and value >= MIN_BLKSIZE:
                s.blksize = min(value, largest)
                s.oack.append((name, str(s.blksize)))
            elif name == "tsize" and value >= 0:
                s.want_tsize = True
                s.oack.append((name, ""))
            elif name == "timeout" and 1 <= value <= MAX_TIMEOUT_S:
                s.rto_ns = value * 1_000_000_000
                s.oack.append((name, str(value)))
            elif name == "windowsize" and 1 <= value <= 65535:
                s.window = min(value, MAX_WINDOWSIZE)
                s.oack.append((name, str(s.window)))
            else:
                self.counters["tftp_option_ignored"] += 1

    def _opened(self, s: _Session, ev: TftpOpened, now_ns: int) -> None:
        if ev.errno:
            code, message = _open_error(ev.errno)
            refused = "tftp_not_found" if code == wt.ERR_NOT_FOUND else "tftp_open_refused"
            self.counters[refused] += 1
            log.info("tftp: %s for %s: %s", s.path, peer_str(s.ip, s.port), message)
            self._error(s.ip, s.port, code, message)
            self._end(s, Trigger.OPEN_FAILED)
            return
        s.size = ev.size
        self._progress(s, now_ns)
        if s.oack:
            s.oack = [(k, str(ev.size) if k == "tsize" else v) for k, v in s.oack]
            self._move(s, Trigger.OPENED_WITH_OPTIONS)
            self._send_oack(s, now_ns)
            self._fill(s)  # only starts the first read
        else:
            self._move(s, Trigger.OPENED)
            self._fill(s)
            self._arm(s, now_ns)

    def _send_oack(self, s: _Session, now_ns: int) -> None:
        self._send_udp(self._src(s.ip), TFTP_PORT, s.ip, s.port, wt.build_oack(s.oack))
        s.deadline = min(now_ns + s.rto_ns, s.idle_at)

    # ------------------------------------------------------------------------- transfer

    def _progress(self, s: _Session, now_ns: int) -> None:
        s.retries = 0
        s.progress_ns = now_ns
        s.idle_at = now_ns + SESSION_IDLE_NS

    def _ack(self, s: _Session, block: int, now_ns: int) -> None:
        c = self.counters
        if s.phase is Phase.OACK:
            if block != 0:
                c["tftp_unexpected_ack"] += 1
                return
            self._move(s, Trigger.OACK_ACKED)
            self._progress(s, now_ns)
            self._fill(s)
            self._arm(s, now_ns)
            return
        if s.phase is not Phase.SENDING:
            c["tftp_unexpected_ack"] += 1
            return
        n = s.acked + ((block - s.acked) & 0xFFFF)
        if n == s.acked:
            c["tftp_duplicate_ack"] += 1  # never answered: the timer resends what is lost
            return
        if n > s.sent:
            c["tftp_unexpected_ack"] += 1
            return
        s.acked = n
        self._progress(s, now_ns)
        if n == s.last:
            self._finish(s, now_ns)
            return
        if n < s.sent:
            c["tftp_window_resumed"] += 1  # the client saw part of the window: go on after n
            s.sent = n
        drop = n * s.blksize - s.buf_off
        if drop > 0:
            del s.buf[:drop]
            s.buf_off += drop
        self._fill(s)
        self._arm(s, now_ns)

    def _fill(self, s: _Session) -> bool:
        """Send every block the window allows and the buffer holds, then read ahead; return
        whether a block went out (the caller sets the timer)."""
        bs = s.blksize
        sent_any = False
        if s.phase is Phase.SENDING:
            buf_end = s.buf_off + len(s.buf)
            while s.sent < s.acked + s.window and (s.last is None or s.sent < s.last):
                k = s.sent + 1
                start = (k - 1) * bs
                if buf_end < start + bs and s.eof is None:
                    break  # the read under way brings it
                rel = start - s.buf_off
                chunk = bytes(s.buf[rel : rel + bs])
                self._send_udp(
                    self._src(s.ip), TFTP_PORT, s.ip, s.port, wt.build_data(k & 0xFFFF, chunk)
                )
                sent_any = True
                s.sent = k
                if k > s.high:
                    s.high = k
                    s.bytes_sent += len(chunk)
                    self.counters["tftp_bytes"] += len(chunk)
                else:
                    self.counters["tftp_retransmits"] += 1
                if len(chunk) < bs:
                    s.last = k
        if s.reading or s.eof is not None:
            return sent_any
        # Read ahead once less than half a read's worth is left beyond what was sent.
        buf_end = s.buf_off + len(s.buf)
        want = max(READ_CHUNK, s.window * bs)
        if 2 * (buf_end - s.sent * bs) < want:
            s.reading = True
            s.read_size = want
            self._out.append(TftpRead(s.sid, buf_end, want))
        return sent_any

    def _arm(self, s: _Session, now_ns: int) -> None:
        """Set the timer: a retransmission while blocks are unacknowledged, else the idle
        bound (waiting for the shell's read)."""
        if s.sent > s.acked:
            s.deadline = min(now_ns + s.rto_ns, s.idle_at)
        else:
            s.deadline = s.idle_at

    def _chunk(self, s: _Session, ev: TftpChunk, now_ns: int) -> None:
        s.reading = False
        buf_end = s.buf_off + len(s.buf)
        if ev.errno or ev.offset != buf_end or len(ev.data) > s.read_size:
            self.counters["tftp_read_errors"] += 1
            log.warning("tftp: reading %s failed (errno %d)", s.path, ev.errno)
            self._error(s.ip, s.port, wt.ERR_UNDEFINED, "Read error")
            self._end(s, Trigger.ABORTED)
            return
        s.buf += ev.data
        if len(ev.data) < s.read_size:
            s.eof = ev.offset + len(ev.data)
        s.idle_at = now_ns + SESSION_IDLE_NS
        if s.phase is Phase.OACK:
            self._fill(s)
        elif self._fill(s) or s.sent == s.acked:
            self._arm(s, now_ns)

    def _timeout(self, s: _Session, now_ns: int) -> None:
        c = self.counters
        if now_ns >= s.idle_at or s.retries >= MAX_RETRIES:
            c["tftp_timeouts"] += 1
            log.info("tftp: %s for %s timed out in phase %s", s.path, peer_str(s.ip, s.port),
                     s.phase.value)
            self._end(s, Trigger.ABORTED)
            return
        s.retries += 1
        if s.phase is Phase.OACK:
            c["tftp_retransmits"] += 1
            self._send_oack(s, now_ns)
        elif s.phase is Phase.SENDING:
            s.sent = s.acked
            self._fill(s)
            self._arm(s, now_ns)
        else:
            s.deadline = s.idle_at

    def _finish(self, s: _Session, now_ns: int) -> None:
        c = self.counters
        c["tftp_completed"] += 1
        took = max(1, now_ns - s.started_ns)
        log.info(
            "tftp: sent %s to %s: %d bytes in %.3f s (%.0f KB/s), blksize %d, windowsize %d",
            s.path, peer_str(s.ip, s.port), s.bytes_sent, took / 1e9,
            s.bytes_sent / took * 1e6, s.blksize, s.window,
        )  # fmt: skip
        self._end(s, Trigger.LAST_ACKED)

    # --------------------------------------------------------------------------- snapshot

    def snapshot_state(self) -> dict[str, Any]:
        """Every session as plain data, in table order (see :meth:`restore_state`)."""
        return {"_sessions": [snap.dump_slots(s, _SESSION_CODECS) for s in self._sessions.values()]}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take the sessions of :meth:`snapshot_state` (on a freshly built server)."""
        self._sessions.clear()
        self._by_id.clear()
        for raw in state["_sessions"]:
            s = snap.load_slots(_Session, raw, _SESSION_CODECS)
            self._sessions[(s.ip, s.port)] = s
            self._by_id[s.sid] = s


def _open_error(err: int) -> tuple[int, str]:
    """The TFTP error for a failed open."""
    if err in (_errno.ENOENT, _errno.ENOTDIR):
        return wt.ERR_NOT_FOUND, "File not found"
    if err in (_errno.EACCES, _errno.EPERM, _errno.ELOOP, _errno.EXDEV, _errno.EISDIR):
        return wt.ERR_ACCESS, "Access violation"
    return wt.ERR_UNDEFINED, f"Cannot open file (errno {err})"

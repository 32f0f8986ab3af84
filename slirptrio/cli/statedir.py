"""The state directory's sessions: their records, which are in use, and a bounded total.

Theory of operation
-------------------
``slirptrio qemu`` and ``slirptrio run`` put a session's files in the state directory
(``$XDG_STATE_HOME/slirptrio``, ~/.local/state/slirptrio) under one stem,
``session-STAMP-PID[-NETDEV]``: the journal directory ``STEM.journal``, its pcap
``STEM.pcap`` (and the rotated ``STEM.pcap.1``), and two small files of ours:

* ``STEM.session.json``, the session record, written when the session closes: start, end,
  the guest's MAC and addresses, the netdev, QEMU's command, flows and failures counted from
  the stack's counters at close. Listing sessions reads these, never the journals;
* ``STEM.keep``, present when the user kept the session (``slirptrio sessions keep ID``).

The session's id is the stem without ``session-``; ``last`` is the newest session.

A session is **in use** while its stack runs. The journal directory's ``lock`` file, when
there is one, is held with ``flock`` by the writer: a non-blocking ``flock`` that fails means
in use. Without that file, a session with no record whose PID (in its name) is alive is in
use; a PID reused by another process only keeps a session longer, never removes a live one.

**Retention** (:func:`prune`): when a session starts (and again when it ends), the sessions
of the state directory are deleted oldest first until their total size is within the bound;
kept sessions and sessions in use never go. The bound is ``--state-max``, else
``$SLIRPTRIO_STATE_MAX``, else the smaller of :data:`DEFAULT_MAX` and a tenth of the
filesystem's space that is free or already ours (so the bound does not shrink as the
directory fills). A session in which no frame came from the guest (QEMU failed at start) is
removed when it ends (:func:`remove_if_empty`) unless asked to keep it. Paths the user gave
(``--journal``, ``--pcap``) are never touched: only ``session-*`` stems of the state
directory are.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from slirptrio.cli._common import UserError, parse_size

DEFAULT_MAX = 2 << 30
"""The state directory's default bound: 2 GiB (or a tenth of the free space if smaller)."""
ENV_MAX = "SLIRPTRIO_STATE_MAX"
RECORD = ".session.json"
KEEP = ".keep"
PREFIX = "session-"
_STEM = re.compile(r"session-(\d{8}-\d{6})-(\d+)(?:-(.+))?\Z")


def default_state_dir() -> str:
    """Where journals and pcaps go by default: ``$XDG_STATE_HOME/slirptrio`` (~/.local/state)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "slirptrio")


@dataclass
class Session:
    """One session of the state directory: its stem and what its record says."""

    stem: str  # session-STAMP-PID[-NAME]
    directory: str
    record: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    kept: bool = False
    mtime: float = 0.0

    @property
    def id(self) -> str:
        """The name users type: the stem without ``session-``."""
        return self.stem[len(PREFIX):]

    @property
    def journal(self) -> str:
        return os.path.join(self.directory, self.stem + ".journal")

    @property
    def pid(self) -> int:
        m = _STEM.match(self.stem)
        return int(m.group(2)) if m else 0

    @property
    def start(self) -> float:
        """When the session started (seconds since the epoch)."""
        ns = self.record.get("start_wall_ns")
        if isinstance(ns, int):
            return ns / 1e9
        m = _STEM.match(self.stem)
        if m:
            with contextlib.suppress(ValueError):
                return time.mktime(time.strptime(m.group(1), "%Y%m%d-%H%M%S"))
        return self.mtime

    def files(self) -> list[str]:
        """Every path of this session (journal directory, pcaps, record, keep marker)."""
        out = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                if _stem_of(entry.name) == self.stem:
                    out.append(entry.path)
        return sorted(out)

    def in_use(self) -> bool:
        """Whether the session's stack still runs (see the module's theory)."""
        lock = os.path.join(self.journal, "lock")
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            if self.record:
                return False  # closed: the record is written at close
            return _alive(self.pid)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops our lock too
        return False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stem_of(name: str) -> str | None:
    """The session stem a file of the state directory belongs to, or None."""
    if not name.startswith(PREFIX):
        return None
    for suffix in (RECORD, KEEP, ".journal", ".pcap"):
        head, sep, tail = name.partition(suffix)
        if sep and (not tail or (suffix == ".pcap" and tail.lstrip(".").isdigit())):
            return head
    return None


def _size(path: str) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not os.path.isdir(path) or os.path.islink(path):
        return st.st_blocks * 512 if st.st_blocks else st.st_size
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                est = entry.stat(follow_symlinks=False)
                total += est.st_blocks * 512 if est.st_blocks else est.st_size
    return total


def sessions(directory: str | None = None) -> list[Session]:
    """The sessions of the state directory, oldest first (one ``scandir`` and a ``stat`` per
    file; records are small JSON files)."""
    directory = directory or default_state_dir()
    found: dict[str, Session] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        stem = _stem_of(entry.name)
        if stem is None:
            continue
        s = found.setdefault(stem, Session(stem, directory))
        s.size += _size(entry.path)
        with contextlib.suppress(OSError):
            s.mtime = max(s.mtime, entry.stat(follow_symlinks=False).st_mtime)
        if entry.name == stem + KEEP:
            s.kept = True
        elif entry.name == stem + RECORD:
            with contextlib.suppress(OSError, ValueError), open(entry.path,
                                                              encoding="utf-8") as f:
                record = json.load(f)
                if isinstance(record, dict):
                    s.record = record
    return sorted(found.values(), key=lambda s: (s.start, s.stem))


def find(ident: str, directory: str | None = None) -> Session:
    """The session named ``ident``: its id (or stem, or a unique prefix of its id), or
    ``last`` (the newest).

    Raises:
      UserError: no such session, or a prefix of several.
    """
    every = sessions(directory)
    where = directory or default_state_dir()
    if ident == "last":
        if not every:
            raise UserError(f"no sessions in {where}")
        return every[-1]
    name = ident[len(PREFIX):] if ident.startswith(PREFIX) else ident
    exact = [s for s in every if s.id == name]
    if exact:
        return exact[0]
    matches = [s for s in every if s.id.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(f"session {ident!r} is ambiguous: {matches[0].id}, {matches[1].id}"
                        + (", ..." if len(matches) > 2 else ""))
    raise UserError(f"no session {ident!r} in {where} (see 'slirptrio sessions')")


def resolve_journal(text: str) -> str:
    """A journal argument: a path that exists as given, else a session id (``last``)."""
    if os.path.exists(text) or os.sep in text:
        return text
    try:
        return find(text).journal
    except UserError:
        if text == "last" or _looks_like_id(text):
            raise
        return text  # let the journal reader name the missing path


def _looks_like_id(text: str) -> bool:
    return bool(re.match(r"(session-)?\d{8}", text))


# ------------------------------------------------------------------------------ retention


def bound(option: str | None, directory: str | None = None) -> int | None:
    """The state directory's bound in bytes (None: unlimited): ``option``, else the
    environment's :data:`ENV_MAX`, else the default (see the module's theory).

    Raises:
      ValueError: a size that does not parse (the message names where it came from).
    """
    for where, text in (("--state-max", option), (ENV_MAX, os.environ.get(ENV_MAX))):
        if text:
            try:
                return parse_size(text)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
    directory = directory or default_state_dir()
    probe = directory
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        st = os.statvfs(probe)
    except OSError:
        return DEFAULT_MAX
    ours = sum(s.size for s in sessions(directory))
    return min(DEFAULT_MAX, (st.f_bavail * st.f_frsize + ours) // 10)


def remove(session: Session) -> None:
    """Delete every file of ``session``."""
    for path in session.files():
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def prune(limit: int | None, directory: str | None = None,
          spare: Iterable[str] = ()) -> list[Session]:
    """Delete the oldest sessions until the rest fit in ``limit`` bytes; kept sessions,
    sessions in use and the stems in ``spare`` stay. Returns those deleted."""
    if limit is None:
        return []
    every = sessions(directory)
    spared = set(spare)
    total = sum(s.size for s in every)
    gone = []
    for s in every:
        if total <= limit:
            break
        if s.kept or s.stem in spared or s.in_use():
            continue
        remove(s)
        total -= s.size
        gone.append(s)
    return gone


def in_state_dir(journal: str | None) -> str | None:
    """The stem of ``journal`` when it is a session of the default state directory (ours to
    prune), else None (a path the user chose)."""
    if journal is None:
        return None
    directory, name = os.path.split(os.path.abspath(journal))
    if os.path.abspath(default_state_dir()) != directory:
        return None
    stem = _stem_of(name)
    return stem if stem is not None and name == stem + ".journal" else None


# --------------------------------------------------------------------------- the record


def write_record(journal: str, record: dict[str, Any]) -> None:
    """Write the session record of ``journal`` (0600, replaced atomically)."""
    path = os.path.splitext(journal)[0] + RECORD
    record = {"journal": os.path.basename(journal), **record}
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)


FAILURE_COUNTERS = (
    "tcp_connect_failed", "tcp_connect_timeout", "tcp_refused_restrict", "tcp_handshake_timeout",
    "tcp_retransmit_give_up", "tcp_host_reset", "dns_servfail", "udp_forbidden",
    "icmp_unavailable", "tcp_inbound_refused",
)
"""Counters that count a failure the user would want to know of (refused, timed out,
SERVFAIL ...): the list's ``failures`` column is their sum at close."""


def record_of_stack(stack: Any, *, start_wall_ns: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The session record of a stack about to close (``stack`` a :class:`SlirpStack`)."""
    stats = stack.statistics()
    counters: dict[str, int] = dict(stats.counters)
    leases = []
    with contextlib.suppress(Exception):  # a record is a convenience: never fail a close
        import ipaddress

        leases = [{"ip": str(ipaddress.IPv4Address(lease.ip)), "mac": lease.mac.hex(":")}
                  for lease in stack.leases()]
    flows = sum(counters.get(k, 0) for k in ("tcp_syn", "tcp_inbound", "udp_flows_opened",
                                             "udp_inbound_flows"))
    return {
        "start_wall_ns": start_wall_ns,
        "end_wall_ns": time.time_ns(),
        "pid": os.getpid(),
        "frames_in": counters.get("frames_in", 0),
        "frames_out": counters.get("frames_out", 0),
        "flows": flows,
        "failures": sum(counters.get(k, 0) for k in FAILURE_COUNTERS),
        "failures_by_kind": {k: counters[k] for k in FAILURE_COUNTERS if counters.get(k)},
        "leases": leases,
        "journal_bytes": stats.journal_bytes,
        **extra,
    }


def remove_if_empty(journal: str, frames_in: int) -> bool:
    """Delete the state directory's session of ``journal`` when no frame came from the
    guest; True if it went."""
    stem = in_state_dir(journal)
    if stem is None or frames_in:
        return False
    directory = os.path.dirname(os.path.abspath(journal))
    s = Session(stem, directory)
    if os.path.exists(os.path.join(directory, stem + KEEP)):
        return False
    remove(s)
    return True


def set_kept(session: Session, kept: bool) -> None:
    """Mark (or unmark) ``session`` kept: retention never deletes it."""
    path = os.path.join(session.directory, session.stem + KEEP)
    if kept:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
    else:
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
    session.kept = kept


# ----------------------------------------------------------------- the commands' hooks


def add_options(parser: Any) -> None:
    """``--state-max`` and ``--keep`` (``slirptrio qemu`` and ``slirptrio run``)."""
    parser.add_argument(
        "--state-max", metavar="SIZE",
        help=f"bound on the state directory's sessions; the oldest go first when a session "
        f"starts (default: ${ENV_MAX}, else 2G or a tenth of the free space, the smaller; "
        "0: unlimited). Kept sessions, sessions in use and --journal/--pcap paths never go",
    )
    parser.add_argument(
        "--keep", action="store_true",
        help="keep this session ('slirptrio sessions keep'): never pruned, kept even when "
        "nothing came from the guest (such sessions are removed at exit otherwise)",
    )


class Retention:
    """What a command does for its sessions in the state directory: prune before they
    start, mark them kept, write their records at close, remove the empty ones, prune
    again. Journals elsewhere (the user's paths) are left alone."""

    def __init__(self, journals: Iterable[str | None], state_max: str | None,
                 keep: bool) -> None:
        self.stems = {j: s for j in journals if (s := in_state_dir(j)) is not None}
        self.keep = keep
        self.limit: int | None = None
        self.records: dict[str, dict[str, Any]] = {}
        self.start_ns = time.time_ns()
        if self.stems or state_max:
            self.limit = bound(state_max)  # ValueError: the caller's usage error

    def before(self) -> None:
        """Prune the state directory before the sessions start."""
        if self.stems:
            prune(self.limit)

    def started(self, journal: str | None) -> None:
        """``journal``'s session started: mark it kept if asked."""
        stem = self.stems.get(journal or "")
        if stem is not None and self.keep:
            path = os.path.join(os.path.dirname(os.path.abspath(journal or "")), stem + KEEP)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def closing(self, journal: str | None, stack: Any, extra: dict[str, Any]) -> None:
        """``journal``'s stack is about to close: read its record now (the stack's state
        goes with it)."""
        if journal is not None and journal in self.stems:
            with contextlib.suppress(Exception):  # never fail a close for a convenience
                self.records[journal] = record_of_stack(stack, start_wall_ns=self.start_ns,
                                                        extra=extra)

    def closed(self) -> list[str]:
        """The stacks closed: write the records, remove the sessions with nothing from the
        guest (unless kept), prune again. Returns the journals removed."""
        removed = []
        for journal, record in self.records.items():
            if remove_if_empty(journal, int(record.get("frames_in", 0))):
                removed.append(journal)
                continue
            with contextlib.suppress(OSError):
                write_record(journal, record)
        if self.stems:
            prune(self.limit, spare=self.stems.values())
        return removed

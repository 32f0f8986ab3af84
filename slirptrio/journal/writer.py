"""Writing the journal and the pcap: off the event loop, bounded, never fatal.

Theory of operation
-------------------
The door loop packs each record (:class:`JournalRecorder`) and each pcap frame header
(:class:`PcapRecorder`) in memory; after every burst of inputs it hands the packed bytes to a
:class:`Writer`, whose thread writes them to disk (:class:`DiskFiles`). The loop never touches
a file descriptor, so a slow disk slows nothing but the writer.

Bulk data is not copied on its way to the disk: a record's big payload (a run of guest frames,
a host read) and a pcap record's big frame are handed over as the ``bytes`` objects themselves
(:class:`~slirptrio.journal.format.RecordPacker`, :func:`slirptrio.wire.pcap.pcap_parts`),
between small packed parts; the thread sums the batch's CRC over the parts and writes them
with ``writev``. Only ``bytes`` are kept that way (immutable); any other buffer is copied.

The bytes handed over and not yet written are bounded by the *budget*. When a burst would go
over it, the policy decides:

* ``lossy`` (the default): the burst's records are dropped and the journal is in a *gap*; one
  log line says so. Once the writer has caught up (below half the budget), the journal resumes
  with a new segment that starts with a fresh snapshot of the core, its header naming the gap.
  The network never waits for the disk.
* ``lossless``: nothing is dropped; the door loop stops taking inputs until the writer is below
  the budget again (:meth:`Writer.wait_below`). The guest and the host sockets wait, through
  the bounded inbox: backpressure instead of loss.

The recorder is an observer: a snapshot, an encoding or a hand-over that raises (a bug) is
contained on the loop side. The segment ends with an ``end`` note naming the failure
(``snapshot failed: TypeError: ...``), one log line with the traceback, ``recorder_failures``
in ``ctl stats``; the network goes on and a new segment (with a fresh snapshot) is tried every
``RETRY_S``, its header naming the gap.

A write that fails (disk full, I/O error), or a segment file that was removed, stops the journal
the same way: in ``lossy`` mode one log line, records dropped, and every ``RETRY_S`` a new
segment with a snapshot is tried until one can be written ("writing again"); in ``lossless``
mode the writer retries the same bytes every ``RETRY_S`` and the guest waits. A failed write is
cut back (``ftruncate``) to the last whole record, so every segment stays readable. The pcap
is a view and needs no snapshot: its frames are dropped while it cannot be written and it
resumes by itself.

Bounds on disk: the journal is a ring of segments (:mod:`slirptrio.journal.format`): a new
segment starts once the current one reaches ``journal_max / SEGMENTS_PER_BOUND`` (or
``SNAPSHOT_SHARE`` times its snapshot, so that snapshots of a core with many busy flows never
crowd out the records), and the oldest segments are deleted whenever the ring would otherwise
use more than ``journal_max`` (sizes counted in whole 4 KiB blocks, as the filesystem allocates
them, and 1/64 of the bound left to the filesystem's own blocks). The last ``journal_max`` of
the session is kept, at least 7/8 of it with small snapshots. Smaller segments mean more
snapshots (each a pause of the door loop: about 0.2 s for 5,000 idle TCP flows, see
``benchmarks/recorder-results.md``) but a shorter replay from a snapshot to any record in the
segment.

The pcap rotates: ``NAME`` grows to half of ``pcap_max``, then becomes ``NAME.1`` (replacing
the older one) and a new ``NAME`` starts, so the two files stay within ``pcap_max`` and hold at
least its last half. Any window the journal retains can be exported whole with ``slirptrio
replay --pcap``.

The thread is not woken per burst: while there is traffic it writes what gathered every
``WAKE_S``, sooner once ``WAKE_BYTES`` are queued (and at once for :meth:`Writer.wait_below`
and :meth:`Writer.close`), one write per file; only an idle thread is woken by a hand-over.

A ``kill -9`` loses what was handed to the writer and not yet written: normally the last
``WAKE_S`` (5 ms) of records, at most the budget.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

from slirptrio.core.events import (
    Effect,
    Event,
    GuestFrame,
    GuestFrames,
    PortFrames,
    PortSendFrames,
    SendFrame,
    SendFrames,
)
from slirptrio.crc import crc32
from slirptrio.journal import files
from slirptrio.journal.format import (
    SEGMENT_SUFFIX,
    Header,
    RecordPacker,
    SegmentHeader,
    batch_head,
    end_note,
    segment_name,
    segment_start,
)
from slirptrio.wire import pcap as wpcap

_pcap_parts = wpcap.pcap_parts
_PCAP_REFERENCE_OVER = wpcap.REFERENCE_OVER

log = logging.getLogger("slirptrio.journal")

DEFAULT_JOURNAL_MAX = 1 << 30
DEFAULT_BUDGET = 32 << 20
SEGMENTS_PER_BOUND = 16
SNAPSHOT_SHARE = 4  # a segment holds at least this many times its snapshot's size
MIN_SEGMENT_BYTES = 64 << 10
RETRY_S = 1.0
REMOVED_CHECK_S = 1.0
WAKE_BYTES = 64 << 10
WAKE_S = 0.005
"""The writer thread writes what gathered this often, or as soon as this many bytes are queued
(a quarter of the budget if that is less): one wakeup and one write per file for many bursts,
instead of a thread handoff per burst. A ``kill -9`` loses what is queued."""
BATCH_BYTES = 256 << 10  # taken from the queue per round, so the budget drains by parts
BLOCK = 4096
Policy = Literal["lossy", "lossless"]
POLICIES: tuple[Policy, ...] = ("lossy", "lossless")
THROTTLE_ENV = "SLIRPTRIO_JOURNAL_THROTTLE"
"""Test aid: limit the writer thread to this many bytes per second (a slow disk)."""


METADATA_SHARE = 64
"""1/64 of a bound is left to the filesystem's own blocks: on a busy disk, ext4 gives a large
file extent-tree blocks that ``du`` counts and file sizes do not show."""


def usable(bound: int) -> int:
    """What the journal's segments (or the pcap's files) may take of ``bound`` bytes."""
    return bound - bound // METADATA_SHARE


def allocated(size: int) -> int:
    """Disk space a file of ``size`` bytes takes, counted in whole blocks."""
    return -(-size // BLOCK) * BLOCK


def segment_bytes_for(journal_max: int) -> int:
    """The size at which a new segment starts, for a ring bounded by ``journal_max``."""
    return max(MIN_SEGMENT_BYTES, journal_max // SEGMENTS_PER_BOUND)


# At the start only a full disk is waited out; any other error is the user's to fix (a missing
# directory, a path that cannot be made): one line, before the network starts.
_FULL = {errno.ENOSPC, errno.EDQUOT}


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class BoundTooSmall(OSError):
    """One segment alone does not fit in the journal's bound."""


# ------------------------------------------------------------------------------ the files


class DiskFiles:
    """The journal's segment ring and the rotating pcap. Methods raise OSError; one thread
    (the writer's) calls them."""

    def __init__(
        self,
        journal_dir: str | None,
        journal_max: int | None,
        pcap_path: str | None,
        pcap_max: int | None,
        *,
        overwrite: bool = False,
    ) -> None:
        self.journal_dir = journal_dir
        self.journal_max = journal_max
        self._dir_fd = -1
        self._locks: list[int] = []  # held for the session: the journal directory's lock
        if journal_dir is not None:
            try:
                self._dir_fd = files.open_private_dir(journal_dir, owned_files=SEGMENT_SUFFIX,
                                                      overwrite=overwrite, lock=self._locks)
            except OSError as exc:
                self._release()
                if exc.errno not in _FULL:
                    raise
                # A full disk at the start must not keep the network from starting: the
                # journal begins in a gap and the first segment is retried as usual.
                log.warning("journal: cannot create %s yet (%s)", journal_dir, _reason(exc))
        self._ring: collections.deque[tuple[str, int]] = collections.deque()  # (name, alloc)
        self._ring_bytes = 0
        self._seg_fd = -1
        self._seg_size = 0
        self.journal_bytes = 0
        self.pcap_path = pcap_path
        self.pcap_max = pcap_max
        self._pcap_fd = -1
        self._pcap_size = 0
        self._pcap_old = 0  # allocated size of NAME.1
        self.pcap_bytes = 0
        if pcap_path is not None:
            try:
                files.check_parent(pcap_path)
                self._open_pcap(overwrite=overwrite)
            except OSError as exc:
                if exc.errno not in _FULL:
                    self.close()
                    raise
                log.warning("pcap: cannot create %s yet (%s)", pcap_path, _reason(exc))

    def _release(self) -> None:
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()

    # ---------------------------------------------------------------------------- journal

    def new_segment(self, number: int, data: bytes) -> None:
        """Close the current segment and start segment ``number`` with ``data``."""
        self._close_segment()
        name = segment_name(number)
        self._make_room(allocated(len(data)))
        if self._dir_fd < 0:
            self._reopen_dir()
        try:
            fd = files.create_private_file(name, self._dir_fd)
        except FileNotFoundError:
            self._reopen_dir()  # the directory itself was removed
            fd = files.create_private_file(name, self._dir_fd)
        self._seg_fd = fd
        self._seg_size = 0
        self._ring.append((name, 0))
        try:
            self.append([data], len(data))
        except OSError:
            # Nothing of it is usable: leave no empty segment behind.
            self._close_segment()
            self._ring.pop()
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._dir_fd)
            raise

    def append(self, parts: Sequence[Buffer], nbytes: int) -> None:
        """Append ``parts`` (``nbytes`` in all) to the current segment; on failure it is cut
        back to where it was."""
        if self._seg_fd < 0:
            raise OSError(errno.EBADF, "no journal segment open")
        before = self._seg_size
        grow = allocated(before + nbytes) - allocated(before)
        if grow:
            self._make_room(grow)
        try:
            _writev_all(self._seg_fd, parts)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._seg_fd, before)
            raise
        self._seg_size = before + nbytes
        self.journal_bytes += nbytes
        name, alloc = self._ring[-1]
        new_alloc = allocated(self._seg_size)
        self._ring[-1] = (name, new_alloc)
        self._ring_bytes += new_alloc - alloc

    def segment_removed(self) -> bool:
        """Whether the current segment file was deleted under us."""
        return self._seg_fd >= 0 and os.fstat(self._seg_fd).st_nlink == 0

    def ring_bytes(self) -> int:
        return self._ring_bytes

    def _make_room(self, extra: int) -> None:
        if self.journal_max is None:
            return
        limit = usable(self.journal_max)
        while self._ring_bytes + extra > limit and len(self._ring) > 1:
            name, alloc = self._ring.popleft()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._dir_fd)
            self._ring_bytes -= alloc
        if self._ring_bytes + extra > limit:
            raise BoundTooSmall(errno.EFBIG, "a journal segment does not fit in --journal-max")

    def _reopen_dir(self) -> None:
        assert self.journal_dir is not None
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        self._ring.clear()
        self._ring_bytes = 0
        # Our own directory, removed under us (or not made at the start: the disk was full).
        self._dir_fd = files.open_private_dir(self.journal_dir, owned_files=SEGMENT_SUFFIX,
                                              lock=self._locks)

    def _close_segment(self) -> None:
        if self._seg_fd >= 0:
            os.close(self._seg_fd)
            self._seg_fd = -1

    # ------------------------------------------------------------------------------- pcap

    def _open_pcap(self, overwrite: bool = True) -> None:
        assert self.pcap_path is not None
        self._pcap_fd = files.create_private_file(self.pcap_path, overwrite=overwrite,
                                                  lock=True)
        self._pcap_size = 0
        head = wpcap.global_header()
        _write_all(self._pcap_fd, head)
        self._pcap_size = len(head)

    def pcap_write(self, parts: Sequence[Buffer], nbytes: int) -> None:
        """Append pcap records; rotate first when the file would pass half the bound."""
        if self._pcap_fd < 0:
            self._open_pcap()
        limit = self.pcap_max
        if limit is not None and allocated(self._pcap_size + nbytes) > usable(limit) // 2 and (
            self._pcap_size > len(wpcap.global_header())
        ):
            self._rotate_pcap()
        before = self._pcap_size
        try:
            _writev_all(self._pcap_fd, parts)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._pcap_fd, before)
            raise
        self._pcap_size = before + nbytes
        self.pcap_bytes += nbytes

    def pcap_removed(self) -> bool:
        return self._pcap_fd >= 0 and os.fstat(self._pcap_fd).st_nlink == 0

    def reopen_pcap(self) -> None:
        if self._pcap_fd >= 0:
            os.close(self._pcap_fd)
            self._pcap_fd = -1
        self._open_pcap()

    def _rotate_pcap(self) -> None:
        assert self.pcap_path is not None
        os.close(self._pcap_fd)
        self._pcap_fd = -1
        os.rename(self.pcap_path, self.pcap_path + ".1")
        self._open_pcap()

    def close(self) -> None:
        self._close_segment()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        if self._pcap_fd >= 0:
            os.close(self._pcap_fd)
            self._pcap_fd = -1
        self._release()


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


Buffer = bytes | bytearray | memoryview
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
if _IOV_MAX <= 0:
    _IOV_MAX = 1024


def _writev_all(fd: int, parts: Sequence[Buffer]) -> None:
    """Write every part, in order: ``IOV_MAX`` at a time, a short write finished from where
    it stopped (no part is copied)."""
    i = 0
    end = len(parts)
    while i < end:
        chunk = parts[i : i + _IOV_MAX]
        n = os.writev(fd, chunk)
        i += len(chunk)
        for j, p in enumerate(chunk):  # a short write (rare): finish it part by part
            size = len(p)
            if n >= size:
                n -= size
                continue
            _write_all(fd, memoryview(p)[n:])
            for rest in chunk[j + 1 :]:
                _write_all(fd, rest)
            break


# ----------------------------------------------------------------------------- the thread


@dataclass
class _Chunk:
    kind: str  # "segment" | "journal" (packed records) | "note" | "pcap" | "close"
    data: Any
    nbytes: int
    count: int = 0  # records or frames
    number: int = 0  # segment number


class Writer:
    """A thread writing chunks to :class:`DiskFiles`, with a byte budget and a policy.

    With ``threaded=False`` chunks are written at once by the caller (tools and tests).
    """

    def __init__(
        self,
        disk: DiskFiles,
        *,
        budget: int = DEFAULT_BUDGET,
        policy: str = "lossy",
        threaded: bool = True,
        throttle: float | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"journal policy must be one of {', '.join(POLICIES)}")
        self.disk = disk
        self.budget = budget
        self.policy: Policy = "lossless" if policy == "lossless" else "lossy"
        if throttle is None:
            env = os.environ.get(THROTTLE_ENV)
            throttle = float(env) if env else 0.0
        self._throttle = throttle
        self._free_at = 0.0
        self._cond = threading.Condition()
        # Appended by the loop, popped by the thread (a deque is safe for that without the
        # lock); each counter has one writer: queued = handed - written.
        self._queue: collections.deque[_Chunk] = collections.deque()
        self._handed = 0
        self._written = 0
        self._idle = False  # the thread waits for a first chunk: a put must wake it
        self._close_asked = False
        self.journal_error: str | None = None  # the journal stopped (needs a new segment)
        self.journal_waiting: str | None = None  # lossless: retrying a failed write
        self.pcap_error: str | None = None
        self._pcap_retry_at = 0.0
        self.lost_records = 0  # dropped here, after the loop handed them over
        self.lost_frames = 0
        self.records_written = 0
        self.failures = 0  # journal writes that failed and stopped the journal
        self._closing = False
        self._hurry = 0  # threads in wait_below: write what is queued without waiting
        self._wake_bytes = max(1, min(WAKE_BYTES, budget // 4))
        self._next_check = 0.0
        self._pcap_next_check = 0.0
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="slirptrio-writer", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------------ loop side

    @property
    def queued(self) -> int:
        """Bytes handed over and not yet written (or dropped)."""
        return self._handed - self._written

    def put(self, chunk: _Chunk) -> None:
        if self._thread is None:
            self._do(chunk)
            return
        self._queue.append(chunk)
        self._handed += chunk.nbytes
        # Busy, the thread comes back every WAKE_S by itself: only an idle thread, or enough
        # bytes to write, are worth a wakeup. (The thread sets _idle, then looks at the queue,
        # under the lock; we append, then look at _idle: one of us sees the other.)
        if self._idle or self._handed - self._written >= self._wake_bytes:
            with self._cond:
                self._cond.notify_all()

    def over_budget(self, extra: int = 0) -> bool:
        return self.queued + extra > self.budget

    def wait_below(self, limit: int, timeout: float | None = None) -> bool:
        """Block until fewer than ``limit`` bytes are queued (True), or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._hurry += 1  # the thread writes at once, not when the batch is old enough
            self._cond.notify_all()
            try:
                while (self.queued > limit and self._thread is not None
                       and self._thread.is_alive()):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left if left is not None else 1.0)
            finally:
                self._hurry -= 1
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (giving up on a failing disk after ``timeout``), then stop."""
        if self._thread is None:
            self.disk.close()
            return
        self._queue.append(_Chunk("close", None, 0))
        with self._cond:
            self._close_asked = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            self._thread.join(5.0)
        if self._thread.is_alive():
            log.error("journal writer did not stop; %d bytes were not written", self.queued)
        else:
            self.disk.close()

    # ---------------------------------------------------------------------- thread side

    def _urgent(self) -> bool:
        return (self._handed - self._written >= self._wake_bytes or self._hurry > 0
                or self._close_asked or self._closing)

    def _run(self) -> None:
        cond = self._cond
        queue = self._queue
        idle = False
        while True:
            with cond:
                if idle and not queue:
                    self._idle = True
                    while not queue:
                        cond.wait()
                    self._idle = False
                # Let bursts gather for WAKE_S (unless WAKE_BYTES are queued or someone waits
                # for the queue: wait_below, close), also right after a write with nothing
                # queued: traffic usually goes on, and a wakeup per batch costs the loop a
                # notify. Only a WAKE_S without a hand-over lets the thread go idle.
                until = time.monotonic() + WAKE_S
                while not self._urgent():
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    cond.wait(left)
            batch: list[_Chunk] = []
            nbytes = 0
            while queue and nbytes < BATCH_BYTES and queue[0].kind != "close":
                chunk = queue.popleft()
                batch.append(chunk)
                nbytes += chunk.nbytes
            if not batch:
                if queue and queue[0].kind == "close":
                    return
                idle = True
                continue
            idle = False
            for chunk in _merged(batch):
                try:
                    self._do(chunk)
                except Exception:  # a bug here must not stop the thread: the loop would block
                    log.exception("journal writer failed on a %s chunk", chunk.kind)
            with cond:
                self._written += nbytes
                cond.notify_all()  # wait_below

    def _do(self, chunk: _Chunk) -> None:
        if chunk.kind == "pcap":
            self._pcap(chunk)
        else:
            self._journal(chunk)
        if self._throttle > 0:
            now = time.monotonic()
            self._free_at = max(self._free_at, now) + chunk.nbytes / self._throttle
            if self._free_at > now:
                time.sleep(self._free_at - now)

    def _journal(self, chunk: _Chunk) -> None:
        disk = self.disk
        if chunk.kind != "segment":
            now = time.monotonic()
            if self.journal_error is None and now >= self._next_check:
                self._next_check = now + REMOVED_CHECK_S
                try:
                    removed = disk.segment_removed()
                except OSError as exc:
                    removed = True
                    self._journal_failed(_reason(exc))
                if removed and self.journal_error is None:
                    self._journal_failed("the journal file was removed")
            if self.journal_error is not None:
                self.lost_records += chunk.count
                return
        data = chunk.data
        parts: list[Buffer] = [data]
        nbytes = chunk.nbytes
        if chunk.kind == "journal":
            # Framed with its CRC here, in the writer's thread (crc32 lets go of the GIL while
            # it sums): the event loop never pays for the checksum. The records are parts
            # (packed bytes and the big payloads themselves), written with no join.
            crc = 0
            for part in data:
                crc = crc32(part, crc)
            head = batch_head(chunk.count, crc, nbytes)
            parts = [head, *data]
            nbytes += len(head)
        while True:
            try:
                if chunk.kind == "segment":
                    disk.new_segment(chunk.number, data)
                else:
                    disk.append(parts, nbytes)
                    self.records_written += chunk.count
            except OSError as exc:
                lossless = self.policy == "lossless" and not isinstance(exc, BoundTooSmall)
                if lossless and not self._closing:
                    if self.journal_waiting is None:
                        log.warning("journal: writing failed (%s); lossless policy: the "
                                    "network waits until the journal can be written",
                                    _reason(exc))
                    self.journal_waiting = _reason(exc)
                    with self._cond:
                        self._cond.wait(RETRY_S)
                    continue
                self._journal_failed(_reason(exc))
                if chunk.kind == "journal":
                    self.lost_records += chunk.count
                return
            break
        if self.journal_error is not None or self.journal_waiting is not None:
            where = f" (segment {chunk.number})" if chunk.kind == "segment" else ""
            log.warning("journal: writing again%s", where)
            self.journal_error = self.journal_waiting = None

    def _journal_failed(self, reason: str) -> None:
        """The journal stops: chunks are dropped until a new segment can be written."""
        if self.journal_error is None:
            log.warning("journal: stopped (%s); the network goes on, records are dropped "
                        "until the journal can be written again", reason)
        # The reason first: the event loop reads it as soon as it sees ``failures`` change.
        self.journal_error = reason
        self.failures += 1

    def _pcap(self, chunk: _Chunk) -> None:
        disk = self.disk
        lossless = self.policy == "lossless"
        if self.pcap_error is not None and not lossless and time.monotonic() < self._pcap_retry_at:
            self.lost_frames += chunk.count
            return
        now = time.monotonic()
        check = now >= self._pcap_next_check
        if check:
            self._pcap_next_check = now + REMOVED_CHECK_S
        while True:
            try:
                if (check or self.pcap_error is not None) and disk.pcap_removed():
                    disk.reopen_pcap()
                disk.pcap_write(chunk.data, chunk.nbytes)
            except OSError as exc:
                if self.pcap_error is None:
                    log.warning("pcap: stopped (%s); frames are dropped until it can be "
                                "written again", _reason(exc))
                self.pcap_error = _reason(exc)
                if lossless and not self._closing:
                    with self._cond:
                        self._cond.wait(RETRY_S)
                    continue
                self._pcap_retry_at = time.monotonic() + RETRY_S
                self.lost_frames += chunk.count
                return
            break
        if self.pcap_error is not None:
            log.warning("pcap: writing again (%d frames were lost)", self.lost_frames)
            self.pcap_error = None


def _merged(batch: list[_Chunk]) -> list[_Chunk]:
    """The batch with consecutive journal records joined into one chunk and all pcap records
    into one (two files: only the order within each matters), so each file gets one write."""
    out: list[_Chunk] = []
    records: list[_Chunk] = []
    frames: list[_Chunk] = []

    def records_done() -> None:
        if len(records) == 1:
            out.append(records[0])
        elif records:
            parts = [p for c in records for p in c.data]
            out.append(_Chunk("journal", parts, sum(c.nbytes for c in records),
                              sum(c.count for c in records)))
        records.clear()

    for chunk in batch:
        if chunk.kind == "journal":
            records.append(chunk)
        elif chunk.kind == "pcap":
            frames.append(chunk)
        else:
            records_done()
            out.append(chunk)
    records_done()
    if len(frames) == 1:
        out.append(frames[0])
    elif frames:
        parts = [p for c in frames for p in c.data]
        out.append(_Chunk("pcap", parts, sum(c.nbytes for c in frames),
                          sum(c.count for c in frames)))
    return out


# ------------------------------------------------------------------------- the loop side


class JournalRecorder:
    """Packs the door's records on the event loop and hands them to a :class:`Writer`.

    Call :meth:`attach` with the door's ``snapshot`` function before the first record: it
    starts segment 1. :meth:`flush` after every burst hands the burst over and starts a new
    segment when the current one is full (or resumes after a gap).
    """

    def __init__(
        self,
        writer: Writer,
        header: Header,
        *,
        segment_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._writer = writer
        self._header = header
        self._segment_bytes = segment_bytes
        self._clock = clock
        self._packer = RecordPacker()
        self._snapshot: Callable[[], dict[str, Any]] | None = None
        self._number = 0
        self._seg_bytes = 0
        self._seg_limit = segment_bytes
        self._pending = 0
        self._writing = False
        self._gap: str | None = None  # why we are not writing
        self._overflow = False  # the gap is the budget's, not a failure
        self._retry_at = 0.0
        self._failures_seen = 0
        self.flush_due = False  # the records packed fill a segment: flush between steps
        self._last_seq = -1  # the last record packed
        self._next_seq = 0  # the first record not handed to the writer yet
        self.records = 0  # handed to the writer
        self.record_bytes = 0  # their packed size
        self.lost_records = 0  # never handed over (in a gap)
        self.gaps = 0
        self.failures = 0  # snapshots, encodings or hand-overs that raised (contained)
        self.last_failure: str | None = None

    @property
    def referenced_bytes(self) -> int:
        """Payload bytes packed by reference (no copy on the event loop), in all."""
        return self._packer.referenced

    @property
    def writing(self) -> bool:
        return self._writing

    @property
    def behind(self) -> bool:
        """Stopped because the writer fell behind (lossy): it resumes, naming the gap, once the
        writer has caught up."""
        return not self._writing and self._overflow

    def attach(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Start the journal: ``snapshot()`` returns the door's state for a segment start."""
        self._snapshot = snapshot
        self._start_segment(None)

    def record(self, seq: int, t_ns: int, event: Event, effects: list[Effect]) -> None:
        """Pack one door step (never raises: a record that cannot be encoded is a gap)."""
        if not self._writing:
            self.lost_records += 1
            return
        try:
            self._packer.pack(seq, t_ns, event, effects)
        except Exception as exc:
            # A half-packed record would poison the batch: the whole batch goes.
            self.lost_records += 1
            self.failed("encoding failed", exc)
            return
        self._pending += 1
        self._last_seq = seq
        # A burst can hold more than a segment (thousands of steps of bulk frames); past the
        # segment's size the runtime flushes between two steps (:attr:`Recorder.flush_due`),
        # so a segment never outgrows a small --journal-max.
        if self._pending & 15 == 0 and self._packer.nbytes >= self._seg_limit:
            self.flush_due = True

    def failed(self, what: str, exc: BaseException) -> None:
        """The recorder itself raised (a bug): the segment ends with a gap named after it,
        the network runs on, and a new segment (with a snapshot) is tried after ``RETRY_S``."""
        reason = f"{what}: {type(exc).__name__}: {exc}"[:200]
        self.failures += 1
        self.last_failure = reason
        log.error("journal: %s; the segment ends here, the network goes on, a new segment "
                  "is tried in %g s", reason, RETRY_S, exc_info=exc)
        if self._writing:
            self._end_note(reason)
            self._stop(reason, overflow=False)
        else:
            self._gap = reason
            self._overflow = False  # retried every RETRY_S, not at every burst
            self._retry_at = self._clock() + RETRY_S

    def _end_note(self, reason: str) -> None:
        """Tell the segment being closed why no record follows (so a journal whose later
        segments never come still names its gap)."""
        with contextlib.suppress(Exception):
            note = msgpack.packb(end_note(self._next_seq, reason), use_bin_type=True)
            self._writer.put(_Chunk("note", note, len(note), 0))

    def flush(self) -> None:
        """Hand the records packed since the last flush to the writer (never raises)."""
        try:
            self._flush()
        except Exception as exc:
            self.failed("handing records to the writer failed", exc)

    def _flush(self) -> None:
        self.flush_due = False
        w = self._writer
        if self._writing and w.failures != self._failures_seen:
            self._stop(w.journal_error or "a write failed", overflow=False)
        if self._writing:
            if self._pending:
                # Framed with its CRC by the writer thread; the parts reference the big
                # payloads (immutable bytes), which count as queued like any byte.
                parts, nbytes = self._packer.take()
                if w.policy == "lossy" and w._handed - w._written + nbytes > w.budget:
                    self._stop("the disk could not keep up", overflow=True)
                else:
                    w.put(_Chunk("journal", parts, nbytes, self._pending))
                    self.records += self._pending
                    self.record_bytes += nbytes
                    self._seg_bytes += nbytes
                    self._next_seq = self._last_seq + 1
                self._pending = 0
            if self._writing and self._seg_bytes >= self._seg_limit:
                self._start_segment(None)
            return
        if self._overflow:
            if w.queued <= w.budget // 2:
                log.warning("journal: the writer caught up; writing again (%d records were "
                            "dropped)", self.lost_records)
                self._start_segment(self._gap)
        elif self._clock() >= self._retry_at:
            self._retry_at = self._clock() + RETRY_S
            self._start_segment(self._gap)

    def _stop(self, reason: str, *, overflow: bool) -> None:
        self.lost_records += self._pending
        self._packer.reset()
        self._pending = 0
        self._writing = False
        self._gap = reason
        self._overflow = overflow
        self._retry_at = self._clock() + RETRY_S
        self.gaps += 1
        if overflow:
            log.warning("journal: the disk cannot keep up (%d bytes queued); records are "
                        "dropped until the writer catches up", self._writer.queued)

    def _start_segment(self, gap: str | None) -> None:
        assert self._snapshot is not None, "attach() first"
        try:
            snap = self._snapshot()
            data = self._segment_start(snap, gap)
        except Exception as exc:
            self.failed("snapshot failed", exc)
            return
        self._failures_seen = self._writer.failures
        self._writer.put(_Chunk("segment", data, len(data), 0, self._number))
        self._seg_bytes = len(data)
        self._seg_limit = max(self._segment_bytes, SNAPSHOT_SHARE * len(data))
        self._writing = True
        self._gap = None
        self._overflow = False

    def _segment_start(self, snap: dict[str, Any], gap: str | None) -> bytes:
        """The segment's first bytes: header and snapshot (numbered only once they encode)."""
        number = self._number + 1
        header = Header(
            seed=self._header.seed, config=self._header.config,
            origin_ns=self._header.origin_ns, version=self._header.version,
            meta=self._header.meta, constants=self._header.constants,
            segment=SegmentHeader(number, snap["seq"], snap["now_ns"],
                                  None if gap is None else {"reason": gap}),
        )  # fmt: skip
        data = segment_start(header, snap)
        self._number = number
        self._next_seq = snap["seq"]
        return data


class PcapRecorder:
    """Collects the pcap view of each burst on the event loop for the :class:`Writer`."""

    def __init__(self, writer: Writer, snaplen: int = wpcap.SNAPLEN) -> None:
        self._writer = writer
        self._snaplen = snaplen
        self._parts: list[bytes | memoryview] = []
        self._nbytes = 0
        self._frames = 0
        self._dropping = False
        self.frames = 0
        self.lost_frames = 0

    def add(self, ts_ns: int, frame: bytes) -> None:
        if type(frame) is not bytes:  # kept until written: a mutable buffer could change
            frame = bytes(frame)
        head, frame = wpcap.record_parts(ts_ns, frame, self._snaplen)
        self._parts.append(head)
        self._parts.append(frame)
        self._nbytes += len(head) + len(frame)
        self._frames += 1

    def add_run(self, ts_ns: int, run: bytes) -> None:
        """Every frame of a run (length-prefixed frames): the big frames of a ``bytes`` run
        written from the run itself, the rest copied into one block with the record headers
        (:func:`slirptrio.wire.pcap.pcap_parts`)."""
        n, nbytes = wpcap.pcap_parts(self._parts, run, ts_ns, self._snaplen,
                                     wpcap.REFERENCE_OVER)
        self._nbytes += nbytes
        self._frames += n

    def discard(self) -> None:
        """Drop the frames collected since the last flush (counted as lost)."""
        self.lost_frames += self._frames
        self._parts = []
        self._nbytes = 0
        self._frames = 0

    def flush(self) -> None:
        if not self._parts:
            return
        w = self._writer
        if w.policy == "lossy" and w._handed - w._written + self._nbytes > w.budget:
            if not self._dropping:
                log.warning("pcap: the disk cannot keep up; frames are dropped until the "
                            "writer catches up")
                self._dropping = True
            self.lost_frames += self._frames
        else:
            self._dropping = False
            w.put(_Chunk("pcap", self._parts, self._nbytes, self._frames))
            self.frames += self._frames
        self._parts = []
        self._nbytes = 0
        self._frames = 0


class Recorder:
    """The door's sink: journal records and the pcap view of every frame in and out.

    Build one with :meth:`open`; the runtime calls :meth:`attach` with its door, then the door
    calls the recorder for every step, and the runtime calls :meth:`flush` after every burst.
    """

    def __init__(
        self,
        writer: Writer,
        journal: JournalRecorder | None,
        pcap: PcapRecorder | None,
        origin_ns: int,
    ) -> None:
        self.writer = writer
        self.journal = journal
        self.pcap = pcap
        self._origin_ns = origin_ns
        self.pcap_failures = 0
        # The records packed since the last flush fill a segment: flush before the next step
        # rather than at the end of the burst. (An attribute: the runtime reads it per step.)
        self.flush_due = False

    @classmethod
    def open(
        cls,
        header: Header,
        *,
        journal_dir: str | None,
        pcap_path: str | None,
        journal_max: int | None = DEFAULT_JOURNAL_MAX,
        pcap_max: int | None = DEFAULT_JOURNAL_MAX,
        policy: Policy = "lossy",
        budget: int = DEFAULT_BUDGET,
        threaded: bool = True,
        overwrite: bool = False,
    ) -> Recorder:
        """Create the journal directory and the pcap (private files, locked for the session)
        and start the writer.

        ``journal_max``/``pcap_max`` None: unbounded. Raises OSError if a file cannot be made:
        :class:`~slirptrio.journal.files.InUseError` when another live session holds one,
        :class:`~slirptrio.journal.files.ExistsError` when an earlier session's is there and
        not ``overwrite``, FileNotFoundError when a directory is missing.
        """
        disk = DiskFiles(journal_dir, journal_max, pcap_path, pcap_max, overwrite=overwrite)
        active = journal_dir is not None or pcap_path is not None
        writer = Writer(disk, budget=budget, policy=policy, threaded=threaded and active)
        journal = None
        if journal_dir is not None:
            seg = segment_bytes_for(journal_max) if journal_max else 1 << 62
            journal = JournalRecorder(writer, header, segment_bytes=seg)
        pcap = PcapRecorder(writer) if pcap_path is not None else None
        return cls(writer, journal, pcap, header.origin_ns)

    def attach(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Start the journal's first segment (``snapshot``: the door's); never raises."""
        if self.journal is not None:
            self.journal.attach(snapshot)

    @property
    def failures(self) -> int:
        """Times the recorder itself raised (a snapshot, an encoding, a hand-over), contained."""
        return (self.journal.failures if self.journal is not None else 0) + self.pcap_failures

    def __call__(self, seq: int, t_ns: int, event: Event, effects: list[Effect]) -> None:
        # Every step of the session comes here: :meth:`JournalRecorder.record` and the pcap
        # view inline (the same code, one Python call less each).
        journal = self.journal
        if journal is not None:
            if journal._writing:
                try:
                    journal._packer.pack(seq, t_ns, event, effects)
                except Exception as exc:
                    journal.lost_records += 1
                    journal.failed("encoding failed", exc)
                else:
                    journal._pending += 1
                    journal._last_seq = seq
                    if journal._pending & 15 == 0 and journal._packer.nbytes >= journal._seg_limit:
                        journal.flush_due = self.flush_due = True
            else:
                journal.lost_records += 1
        pcap = self.pcap
        if pcap is not None:
            try:
                ts = self._origin_ns + t_ns
                t = type(event)
                if t is GuestFrames or t is PortFrames:
                    n, nbytes = _pcap_parts(pcap._parts, event.data,  # type: ignore[attr-defined]
                                            ts, pcap._snaplen, _PCAP_REFERENCE_OVER)
                    pcap._nbytes += nbytes
                    pcap._frames += n
                elif t is GuestFrame:
                    pcap.add(ts, event.data)  # type: ignore[attr-defined]
                for eff in effects:
                    te = type(eff)
                    if te is SendFrames or te is PortSendFrames:
                        n, nbytes = _pcap_parts(pcap._parts, eff.data,  # type: ignore[attr-defined]
                                                ts, pcap._snaplen, _PCAP_REFERENCE_OVER)
                        pcap._nbytes += nbytes
                        pcap._frames += n
                    elif te is SendFrame:
                        pcap.add(ts, eff.data)  # type: ignore[attr-defined]
            except Exception:
                self.pcap_failures += 1
                log.exception("pcap: the view of record %d failed; the network goes on", seq)

    def flush(self) -> None:
        """Hand everything recorded since the last flush to the writer thread (never raises)."""
        self.flush_due = False
        journal = self.journal
        if journal is not None:
            try:  # JournalRecorder.flush, inline: it runs after every burst
                journal._flush()
            except Exception as exc:
                journal.failed("handing records to the writer failed", exc)
        pcap = self.pcap
        if pcap is not None and pcap._parts:
            try:
                w = self.writer
                if w.policy == "lossy" and not pcap._dropping:
                    # PcapRecorder.flush's usual case, inline (within the budget).
                    nbytes = pcap._nbytes
                    if w._handed - w._written + nbytes <= w.budget:
                        w.put(_Chunk("pcap", pcap._parts, nbytes, pcap._frames))
                        pcap.frames += pcap._frames
                        pcap._parts = []
                        pcap._nbytes = 0
                        pcap._frames = 0
                        return
                pcap.flush()
            except Exception:
                self.pcap_failures += 1
                pcap.discard()
                log.exception("pcap: handing frames to the writer failed; the network goes on")

    @property
    def backlogged(self) -> bool:
        """Lossless policy and more than the budget queued: the door loop must wait."""
        w = self.writer
        return w.policy == "lossless" and w.queued > w.budget

    def wait_writable(self) -> None:
        """Block until the writer is within its budget again (call from a worker thread)."""
        self.writer.wait_below(self.writer.budget)

    def close(self) -> None:
        self.flush()
        journal = self.journal
        if journal is not None and journal.behind:
            # Records were dropped and no burst came after the writer caught up: give it the
            # time to, so the journal ends with a segment naming the gap, not silently short.
            self.writer.wait_below(self.writer.budget // 2, timeout=30.0)
            journal.flush()
        self.writer.close()

"""The session journal: every input at the door and the effects it produced, on disk.

The package has three parts:

* :mod:`~slirptrio.journal.format` — the format: header, segments, records, their encoding;
* :mod:`~slirptrio.journal.writer` — writing: packing on the event loop, a writer thread with
  a byte budget, gaps, the segment ring and the rotating pcap;
* :mod:`~slirptrio.journal.reader` — reading: segments, snapshots, gaps, windows.

On disk a journal is a directory (0700) of segment files ``00000001.seg``, ``00000002.seg``...
(0600), each starting with the session's header and a snapshot of the core, so that every
segment replays on its own (see :mod:`slirptrio.journal.format`; format 4 checks a CRC over
every write batch), and an empty ``.lock`` that the live session holds (``flock``): a journal
belongs to one session (:mod:`slirptrio.journal.files`). The replay itself lives in
the ``replay`` package.
"""

from slirptrio.journal.format import (
    FORMAT_VERSION,
    MAGIC,
    Header,
    JournalDamaged,
    JournalError,
    Record,
    SegmentHeader,
    compact,
    encode_record,
    frames_of,
    is_digest,
)
from slirptrio.journal.reader import Ended, Gap, Journal, Segment, SegmentStart, open_journal

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Ended",
    "Gap",
    "Header",
    "Journal",
    "JournalDamaged",
    "JournalError",
    "Record",
    "Segment",
    "SegmentHeader",
    "SegmentStart",
    "compact",
    "encode_record",
    "frames_of",
    "is_digest",
    "open_journal",
]

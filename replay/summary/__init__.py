"""What happened in a session, from its journal: leases, flows, DNS, ICMP errors, drops.

:mod:`.model` holds what a summary is (plain dataclasses, with their JSON form),
:mod:`.analysis` replays a journal and builds one (its theory of operation is there), and
:mod:`.text` prints it and is the command line's entry. The names other modules use are
re-exported here.
"""

from __future__ import annotations

from replay.summary.analysis import (
    SESSION_RECORD,
    Point,
    summarize,
    summarize_file,
    summarize_journal,
)
from replay.summary.model import (
    FAILED_ENDS,
    FIRST_BIN_NS,
    MAX_BINS,
    MAX_FLOWS,
    MAX_LOOKUPS,
    MAX_MARKS,
    Activity,
    Flow,
    Lookup,
    Note,
    Summary,
)
from replay.summary.text import flows_by_state, format_summary, main

__all__ = [
    "FAILED_ENDS", "FIRST_BIN_NS", "MAX_BINS", "MAX_FLOWS", "MAX_LOOKUPS", "MAX_MARKS",
    "SESSION_RECORD", "Activity", "Flow", "Lookup", "Note", "Point", "Summary", "flows_by_state",
    "format_summary", "main", "summarize", "summarize_file", "summarize_journal",
]

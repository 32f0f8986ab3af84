"""The summary's model: a session's flows, lookups, notes and counts, and their JSON form."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from slirptrio.journal import (
    Header,
)

MAX_BINS = 512
"""Data-activity bins kept per flow (their width doubles when more would be needed)."""
MAX_MARKS = 256
"""Set-up, retransmission, FIN and RST marks kept per flow (beyond: counted only)."""
MAX_FLOWS = 100_000
"""Flows kept in full; later ones are counted only (a summary must stay bounded)."""
MAX_LOOKUPS = 10_000
"""DNS lookups and ICMP errors kept in full; later ones are counted only."""
FIRST_BIN_NS = 1_000_000

FAILED_ENDS = frozenset(
    {"RST", "refused", "timed out", "unreachable", "unavailable", "no reply"}
)

_NS = 1_000_000_000


class Activity:
    """Bytes over time in at most :data:`MAX_BINS` bins of equal width."""

    def __init__(self, width_ns: int = FIRST_BIN_NS) -> None:
        self.width_ns = width_ns
        self._bins: dict[int, int] = {}

    def add(self, t_ns: int, n: int) -> None:
        b = t_ns // self.width_ns
        bins = self._bins
        bins[b] = bins.get(b, 0) + n
        if len(bins) > MAX_BINS:
            self.width_ns *= 2
            merged: dict[int, int] = {}
            for k, v in bins.items():
                merged[k // 2] = merged.get(k // 2, 0) + v
            self._bins = merged

    def bins(self) -> list[tuple[int, int]]:
        """``(start_ns, bytes)`` per non-empty bin, in time order."""
        return [(k * self.width_ns, v) for k, v in sorted(self._bins.items())]


@dataclass
class Flow:
    """One connection or datagram flow, as the guest saw it."""

    index: int
    proto: str  # "tcp" | "udp" | "icmp" | "tftp" (a transfer from the stack's own server)
    direction: str  # "out": the guest started it; "in": a host forward carried it in
    guest: str  # the guest's end, "10.0.2.15:40012"
    remote: str  # the far end as the guest sees it, "10.0.2.2:8080"
    start_ns: int
    host: str = ""  # where it really went (or came from) on the host
    flow_id: int | None = None
    last_ns: int = 0
    bytes_to_host: int = 0
    bytes_to_guest: int = 0
    packets_to_host: int = 0
    packets_to_guest: int = 0
    retransmits: int = 0
    established_ns: int | None = None
    end: str = "open"  # "FIN", "RST", "refused", "timed out", "unreachable", "closed", "open"
    end_detail: str = ""
    end_ns: int | None = None
    icmp_errors: list[str] = field(default_factory=list)
    marks: list[tuple[int, str]] = field(default_factory=list)
    marks_dropped: int = 0
    activity: Activity = field(default_factory=Activity, repr=False)
    # sequence tracking (TCP): highest end seen from each side, None before the first segment
    _hi_guest: int | None = field(default=None, repr=False)
    _hi_ours: int | None = field(default=None, repr=False)
    _fin_guest: bool = field(default=False, repr=False)  # the guest sent its FIN
    _fin_host: bool = field(default=False, repr=False)  # we sent ours (the host's EOF)

    @property
    def failed(self) -> bool:
        """Refused, reset, timed out, unreachable, or answered with an ICMP error."""
        return self.end in FAILED_ENDS or bool(self.icmp_errors)

    @property
    def duration_ns(self) -> int:
        end = self.end_ns if self.end_ns is not None else self.last_ns
        return max(0, end - self.start_ns)

    def mark(self, t_ns: int, kind: str) -> None:
        if len(self.marks) < MAX_MARKS:
            self.marks.append((t_ns, kind))
        else:
            self.marks_dropped += 1

    def finish(self, t_ns: int, end: str, detail: str = "") -> None:
        """Record how the flow ended (the first decisive reason wins)."""
        if self.end_ns is None:
            self.end, self.end_detail, self.end_ns = end, detail, t_ns
            self.last_ns = max(self.last_ns, t_ns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "proto": self.proto,
            "direction": self.direction,
            "guest": self.guest,
            "remote": self.remote,
            "host": self.host,
            "flow_id": self.flow_id,
            "start_s": _s(self.start_ns),
            "duration_s": _s(self.duration_ns),
            "established_s": _s(self.established_ns) if self.established_ns is not None else None,
            "bytes_to_host": self.bytes_to_host,
            "bytes_to_guest": self.bytes_to_guest,
            "packets_to_host": self.packets_to_host,
            "packets_to_guest": self.packets_to_guest,
            "retransmits": self.retransmits,
            "end": self.end,
            "end_detail": self.end_detail,
            "failed": self.failed,
            "icmp_errors": list(self.icmp_errors),
        }


@dataclass
class Lookup:
    """One DNS question the guest asked the relay, and what it was told."""

    t_ns: int
    name: str
    qtype: str
    guest: str
    answered_ns: int | None = None
    rcode: str = ""
    answers: list[str] = field(default_factory=list)
    retries: int = 0

    @property
    def failed(self) -> bool:
        return self.answered_ns is None or self.rcode not in ("NOERROR", "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "t_s": _s(self.t_ns),
            "name": self.name,
            "type": self.qtype,
            "guest": self.guest,
            "rcode": self.rcode if self.answered_ns is not None else "no answer",
            "answers": list(self.answers),
            "latency_ms": (
                round((self.answered_ns - self.t_ns) / 1e6, 3)
                if self.answered_ns is not None else None
            ),
            "retries": self.retries,
        }


@dataclass
class Note:
    """A dated line: a DHCP message, an ICMP error, a link or forward change."""

    t_ns: int
    kind: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"t_s": _s(self.t_ns), "kind": self.kind, "text": self.text, **self.data}


@dataclass
class Summary:
    """Everything :func:`summarize` found; ``to_dict()`` is the ``--json`` form."""

    header: Header
    records: int = 0
    frames_in: int = 0
    frames_out: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    flows: list[Flow] = field(default_factory=list)
    flows_not_kept: int = 0
    lookups: list[Lookup] = field(default_factory=list)
    lookups_not_kept: int = 0
    starts_at: int = 0  # the first record the journal still holds (a ring drops old ones)
    gaps: int = 0
    ipv6_addresses: dict[bytes, int] = field(default_factory=dict)  # the guest's, first seen
    dhcp: list[Note] = field(default_factory=list)
    icmp_errors: list[Note] = field(default_factory=list)
    events: list[Note] = field(default_factory=list)  # link, forwards, DNS upstreams
    counters: dict[str, int] | None = None  # None: not replayed
    replay: str = "identical"  # "identical" | "diverged at record N" | "not replayed: ..."
    truncated_bytes: int = 0
    end_ns: int | None = None  # when the session closed (its session record), if known
    first_guest_ns: int | None = None  # the guest's first frame (before it: QEMU, boot)
    window: tuple[int, int] | None = None  # --from/--until: the session times shown
    window_records: int = 0  # records inside the window
    faults: list[dict[str, Any]] = field(default_factory=list)  # each rule and what it did
    # Several guests (issue 22): each switch port's guest, and frames between guests by
    # (from port, to port); the destination port is "?" until its MAC was seen.
    guests: dict[int, dict[str, Any]] = field(default_factory=dict)
    between: dict[tuple[int, int | str], list[int]] = field(default_factory=dict)

    @property
    def lookups_failed(self) -> int:
        """DNS lookups unanswered or answered with an error (NXDOMAIN, SERVFAIL ...)."""
        return sum(1 for lk in self.lookups if lk.failed)

    @property
    def drops(self) -> dict[str, int]:
        if self.counters is None:
            return {}
        return {k[5:]: v for k, v in sorted(self.counters.items()) if k.startswith("drop_")}

    @property
    def span_ns(self) -> int:
        """From the first record (the session's start) to the session's close when the
        session record says it, else to the last record."""
        if self.first_ns is None or self.last_ns is None:
            return 0
        last = self.last_ns
        if self.end_ns is not None and self.window is None:
            last = max(last, self.end_ns)
        return last - self.first_ns

    def leases(self) -> list[dict[str, Any]]:
        """Each address acknowledged to a MAC: first and last ACK, lease time, released."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for n in self.dhcp:
            ip, mac = n.data.get("ip", ""), n.data.get("mac", "")
            if n.data.get("type") == "ACK" and ip and ip != "0.0.0.0":
                entry = out.setdefault((ip, mac), {
                    "ip": ip, "mac": mac, "first_s": _s(n.t_ns), "acks": 0, "released_s": None,
                    "lease_s": n.data.get("lease_s"), "hostname": n.data.get("hostname", ""),
                })
                entry["acks"] += 1
                entry["last_s"] = _s(n.t_ns)
            elif n.data.get("type") == "RELEASE":
                for (lip, lmac), entry in out.items():
                    if lmac == mac and lip == n.data.get("ciaddr"):
                        entry["released_s"] = _s(n.t_ns)
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        h = self.header
        return {
            "journal": {
                "format": h.format, "version": h.version, "seed": h.seed,
                "origin_ns": h.origin_ns, "meta": h.meta,
                "config": h.config,
            },
            "records": self.records,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "span": {
                "first_s": _s(self.first_ns or 0),
                "last_s": _s(self.last_ns or 0),
                "duration_s": _s(self.span_ns),
                "start_wall_ns": h.origin_ns + (self.first_ns or 0),
                "last_record_s": _s(self.last_ns or 0),
                "window": list(self.window) if self.window is not None else None,
                "window_records": self.window_records if self.window is not None else None,
            },
            "replay": self.replay,
            "starts_at_record": self.starts_at,
            "truncated_bytes": self.truncated_bytes,
            "leases": self.leases(),
            "ipv6_addresses": [
                {"address": _ip_text(a), "first_s": _s(t)} for a, t in self.ipv6_addresses.items()
            ],
            "dhcp": [n.to_dict() for n in self.dhcp],
            "flows": [f.to_dict() for f in self.flows],
            "flows_not_kept": self.flows_not_kept,
            "dns": [lk.to_dict() for lk in self.lookups],
            "dns_not_kept": self.lookups_not_kept,
            "dns_failed": self.lookups_failed,
            "icmp_errors": [n.to_dict() for n in self.icmp_errors],
            "events": [n.to_dict() for n in self.events],
            "drops": self.drops,
            "counters": self.counters,
            "faults": self.faults,
            "guests": [self.guests[p] for p in sorted(self.guests)],
            "guest_to_guest": [
                {"from_port": a, "to_port": b, "frames": n, "bytes": size}
                for (a, b), (n, size) in sorted(self.between.items(), key=str)
            ],
        }


def _s(t_ns: int) -> float:
    return round(t_ns / _NS, 6)


def _ip_text(raw: bytes) -> str:
    if len(raw) == 4:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
    return str(ipaddress.IPv6Address(raw))

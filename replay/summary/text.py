"""The summary as text and JSON, and the ``slirptrio replay --summary/--json/--timeline`` entry."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

from replay.progress import Progress
from replay.summary.analysis import Point, summarize_journal
from replay.summary.model import _NS, Summary, _ip_text
from slirptrio.journal import (
    JournalError,
)
from slirptrio.wire.pcap import PcapWriter


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB"):
        n_f = n / 1000
        if n_f < 1000 or unit == "GB":
            return f"{n_f:.1f} {unit}"
        n = int(n_f)
    return f"{n} B"


def _dur(t_ns: int) -> str:
    if t_ns < 1_000_000:
        return f"{t_ns / 1000:.0f} µs"
    if t_ns < _NS:
        return f"{t_ns / 1e6:.1f} ms"
    return f"{t_ns / 1e9:.3f} s"


def _ts(t_ns: int) -> str:
    return f"{t_ns / 1e9:9.3f}s"


def _utc_wall(ns: int) -> str:
    """The wall-clock time ``ns`` (ns since the epoch) in UTC, to the ms, marked UTC."""
    import datetime

    when = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_summary(s: Summary, name: str = "") -> str:
    """The human-readable summary."""
    h = s.header
    cfg = h.config
    first, last = s.first_ns or 0, s.last_ns or 0
    if s.window is None and s.end_ns is not None and s.end_ns > last:
        last = s.end_ns
        until = f"; the last record at {_ts(s.last_ns or 0).strip()}"
    else:
        until = ""
    lines = [
        f"Session {name}".rstrip(),
        f"  slirptrio {h.version or '?'}, journal format {h.format}, seed {h.seed}, "
        f"net {cfg.get('net', '?')}" + (f", {cfg['hostfwd']}" if cfg.get("hostfwd") else ""),
        f"  {_utc_wall(h.origin_ns + first)} to {_utc_wall(h.origin_ns + last)} "
        f"({_dur(s.span_ns)}{until}); {s.records} records, {s.frames_in} frames from the "
        f"guest, {s.frames_out} to it",
        *([f"  window {_ts(first).strip()} to {_ts(last).strip()} (--from/--until), "
           f"{s.window_records} records: the flows alive in it, the lookups and events dated "
           "in it"] if s.window is not None else []),
        *([f"  the journal starts at record {s.starts_at}: earlier segments are gone (a "
           "bounded journal); flows open then are not listed"] if s.starts_at else []),
        f"  replay: {s.replay}"
        + (f" (a truncated last record of {s.truncated_bytes} bytes ignored)"
           if s.truncated_bytes else ""),
    ]
    leases = s.leases()
    lines.append(f"\nLeases ({len(leases)}):")
    for lease in leases:
        extra = f", released at {lease['released_s']:.3f}s" if lease["released_s"] else ""
        lines.append(
            f"  {lease['ip']:<15} {lease['mac']}  at {lease['first_s']:.3f}s"
            f" ({lease['acks']} ACK{'s' if lease['acks'] != 1 else ''}, lease "
            f"{lease['lease_s']} s{extra})"
        )
    if len(s.guests) > 1:  # several guests on the switch (issue 22)
        lines.append(f"\nGuests ({len(s.guests)} switch ports):")
        for g in (s.guests[p] for p in sorted(s.guests)):
            comings = ", ".join(f"{x:.3f}s" for x in g["arrived_s"]) or "-"
            goings = ", ".join(f"{x:.3f}s" for x in g["left_s"]) or "-"
            lines.append(f"  port {g['port']:<3} {g['peer'] or '-':<20} "
                         f"{','.join(g['macs']) or '-':<18} {g['frames']:>8} frames; "
                         f"attached {comings}; left {goings}")
        if s.between:
            lines.append("  guest to guest (frames the switch carried between ports):")
            lines += [f"    port {a} -> port {b}: {n} frames, {_size(size)}"
                      for (a, b), (n, size) in sorted(s.between.items(), key=str)]
    if s.ipv6_addresses:
        lines.append(f"\nGuest IPv6 addresses ({len(s.ipv6_addresses)}):")
        aw = max(len(_ip_text(a)) for a in s.ipv6_addresses)
        lines += [f"  {_ip_text(a):<{aw}} first used at {t / 1e9:.3f}s"
                  for a, t in s.ipv6_addresses.items()]
    failed = [f for f in s.flows if f.failed]
    lines.append(
        f"\nFlows ({len(s.flows) + s.flows_not_kept}"
        + (f", {len(failed)} failed" if failed else "") + "):"
    )
    # Columns as wide as their longest entry (IPv6 endpoints), 22 at least.
    gw = max([22, *(len(f.guest) for f in s.flows)])
    rw = max([22, *(len(f.remote) for f in s.flows)])
    hw = max([22, *(len(f.host) for f in s.flows)])
    if s.flows:
        lines.append(
            f"  {'#':>4} {'proto':<5} {'guest':<{gw}}   {'remote':<{rw}} {'host':<{hw}} "
            f"{'start':>10} {'duration':>9} {'to host':>9} {'to guest':>9}  end"
        )
    for f in s.flows:
        arrow = "->" if f.direction == "out" else "<-"
        end = f.end + (f" ({f.end_detail})" if f.end_detail else "")
        if f.retransmits:
            end += f", {f.retransmits} retransmission{'s' if f.retransmits != 1 else ''}"
        if f.icmp_errors:
            end += ", ICMP " + "; ".join(sorted(set(f.icmp_errors)))
        lines.append(
            f"  {f.index:>4} {f.proto:<5} {f.guest:<{gw}} {arrow} {f.remote:<{rw}} {f.host:<{hw}} "
            f"{_ts(f.start_ns):>10} {_dur(f.duration_ns):>9} {_size(f.bytes_to_host):>9} "
            f"{_size(f.bytes_to_guest):>9}  {end}"
        )
    if s.flows_not_kept:
        lines.append(f"  ... and {s.flows_not_kept} more flows not kept")
    failed_lookups = s.lookups_failed
    lines.append(f"\nDNS ({len(s.lookups) + s.lookups_not_kept} lookups"
                 + (f", {failed_lookups} failed" if failed_lookups else "") + "):")
    for lk in s.lookups:
        if lk.answered_ns is None:
            what = "no answer"
        else:
            what = lk.rcode
            if lk.answers:
                what = ", ".join(lk.answers)
            what += f" ({_dur(lk.answered_ns - lk.t_ns)})"
        retries = f", {lk.retries} retries" if lk.retries else ""
        lines.append(f"  {_ts(lk.t_ns)}  {lk.name} {lk.qtype} -> {what}{retries}")
    lines.append(f"\nICMP errors to the guest ({len(s.icmp_errors)}):")
    lines += [f"  {_ts(n.t_ns)}  {n.text}" for n in s.icmp_errors]
    drops = s.drops
    if s.counters is None:
        lines.append("\nDrops by reason: unknown (not replayed)")
    else:
        lines.append(f"\nDrops by reason ({sum(drops.values())}):")
        lines += [f"  {k:<28} {v}" for k, v in drops.items()]
    if s.faults:
        lines.append(f"\nFault rules ({len(s.faults)}):")
        for r in s.faults:
            until = f" to {r['removed_s']:.3f}s" if r["removed_s"] is not None else ""
            did = ", ".join(f"{k} {v}" for k, v in sorted(r["stats"].items())) or "nothing"
            lines.append(f"  {r['id']:>3}  {r['rule']}  (from {r['added_s']:.3f}s{until}): {did}")
    if s.events:
        lines.append("\nEvents:")
        lines += [f"  {_ts(n.t_ns)}  {n.text}" for n in s.events]
    return "\n".join(lines)


def main(
    path: str,
    *,
    text: bool = True,
    as_json: bool = False,
    timeline: str | None = None,
    progress: bool | None = None,
    start: Point | None = None,
    until: Point | None = None,
    pcap: str | None = None,
) -> int:
    """CLI entry for ``slirptrio replay --summary/--json/--timeline``: prints the summary
    (``text``), its JSON (``as_json``), writes the timeline to ``timeline`` (SVG, or PNG when
    the name ends in .png); a progress line on stderr when it is a terminal (or ``progress``
    says so). ``start``/``until`` limit all of it to a window, whose frames go to ``pcap``.
    Files written are 0600. Returns 0 when the replay was identical, 1 when it diverged (the
    summary is still printed), 2 when the journal or an output cannot be used."""
    try:
        pcap_file = _private_output(pcap, binary=True) if pcap is not None else None
    except OSError as exc:
        print(f"slirptrio: error: --pcap {pcap}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        with Progress("summarizing", enabled=progress) as line:
            summary = summarize_journal(
                path, progress=line, start=start, until=until,
                pcap=PcapWriter(pcap_file) if pcap_file is not None else None)
    except (OSError, JournalError) as exc:
        text_ = str(exc)
        where = "" if text_.startswith(path) else f"{path}: "
        print(f"slirptrio: error: journal {where}{text_}", file=sys.stderr)
        return 2
    finally:
        if pcap_file is not None:
            pcap_file.close()
    if timeline is not None:
        from replay.timeline import render_png, render_svg

        try:
            if timeline.lower().endswith(".png"):
                data = render_png(summary, title=path)
            else:
                data = render_svg(summary, title=path).encode()
            with _private_output(timeline, binary=True) as out:
                out.write(data)
        except OSError as exc:
            print(f"slirptrio: error: --timeline {timeline}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    elif text:
        print(format_summary(summary, path))
    if timeline is not None:
        failed = sum(1 for fl in summary.flows if fl.failed)
        print(f"timeline: {timeline} ({len(summary.flows)} flows, {failed} failed)",
              file=sys.stderr if as_json or text else sys.stdout)
    if summary.replay != "identical":
        print(f"slirptrio replay: replay {summary.replay}; run slirptrio replay {path} "
              "for the report", file=sys.stderr)
    return 0 if summary.replay == "identical" else 1


def _private_output(path: str, *, binary: bool) -> IO[Any]:
    """``path`` created or emptied for writing, mode 0600 (a session's files are private)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb" if binary else "w")


def flows_by_state(summary: Summary) -> Iterator[tuple[str, int]]:
    """How many flows ended each way (for tests and a one-line overview)."""
    counts: dict[str, int] = {}
    for f in summary.flows:
        counts[f.end] = counts.get(f.end, 0) + 1
    yield from sorted(counts.items())


__all__ = ["flows_by_state", "format_summary", "main"]

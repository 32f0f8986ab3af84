"""``slirptrio sessions``: list, show, keep, remove and prune the state directory's sessions.

Listing reads the session records written at close (:mod:`.statedir`), never a journal, so it
stays fast with hundreds of sessions; ``show`` summarizes one session's journal.
"""

from __future__ import annotations

import argparse
import json
import time

from slirptrio.cli import statedir
from slirptrio.cli._common import Parser, Subparsers, UserError, format_size, setup_logging

_EPILOG = f"""\
examples:
  slirptrio sessions                   list them, oldest first
  slirptrio sessions show last         the newest session's summary
  slirptrio sessions keep 20261206-1   never delete it (an id, or a unique prefix of one)
  slirptrio sessions rm ID...
  slirptrio sessions prune --state-max 500M
  slirptrio replay last --summary      an id works wherever a journal path does

Sessions live in $XDG_STATE_HOME/slirptrio (~/.local/state/slirptrio). When a session starts
the oldest go until the rest fit the bound: --state-max of 'slirptrio qemu'/'run', else
${statedir.ENV_MAX}, else {format_size(statedir.DEFAULT_MAX)} or a tenth of the free space,
whichever is smaller. Kept sessions and sessions in use are never deleted."""


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "sessions", help="list, show, keep, remove the sessions of the state directory",
        description="The sessions 'slirptrio qemu' and 'slirptrio run' recorded in the state\n"
        "directory: list them, show one's summary, keep, remove or prune them.",
        epilog=_EPILOG,
    )
    p.add_argument("action", nargs="?", default="list",
                   choices=("list", "show", "rm", "keep", "unkeep", "prune"),
                   help="list (default), show ID, rm ID..., keep ID..., unkeep ID..., prune")
    p.add_argument("ids", nargs="*", metavar="ID", help="session ids ('last': the newest)")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.add_argument("--state-max", metavar="SIZE",
                   help=f"prune to this total (default: ${statedir.ENV_MAX}, else "
                   f"{format_size(statedir.DEFAULT_MAX)} or a tenth of the free space)")
    p.add_argument("--dir", metavar="PATH", help="another state directory")
    p.add_argument("-v", "--verbose", action="count", default=0)


def command(args: argparse.Namespace, parser: Parser) -> int:
    setup_logging(args.verbose)
    directory = args.dir or statedir.default_state_dir()
    takes_ids = {"show": (1, 1), "rm": (1, None), "keep": (1, None), "unkeep": (1, None),
                 "list": (0, 0), "prune": (0, 0)}
    low, high = takes_ids[args.action]
    if len(args.ids) < low or (high is not None and len(args.ids) > high):
        parser.error(f"argument ID: {args.action} takes "
                     + ("no id" if high == 0 else "one id" if high == 1 else "session ids"))
    if args.action == "list":
        return _list(directory, args.json)
    if args.action == "prune":
        try:
            limit = statedir.bound(args.state_max, directory)
        except ValueError as exc:
            parser.error(f"argument {exc}")
        gone = statedir.prune(limit, directory)
        for s in gone:
            print(f"removed {s.id} ({format_size_short(s.size)})")
        left = sum(s.size for s in statedir.sessions(directory))
        print(f"{len(gone)} removed; {format_size_short(left)} left"
              + (f" of {format_size_short(limit)}" if limit is not None else ""))
        return 0
    chosen = [statedir.find(i, directory) for i in args.ids]
    if args.action == "show":
        from replay.summary import main as summary_main
        from slirptrio.cli.replay import quiet_replayed_logs

        quiet_replayed_logs(args.verbose)

        return summary_main(chosen[0].journal, text=True)
    for s in chosen:
        if args.action == "rm":
            if s.in_use():
                raise UserError(f"session {s.id} is in use (its stack still runs)")
            statedir.remove(s)
            print(f"removed {s.id}")
        else:
            statedir.set_kept(s, args.action == "keep")
            print(f"{'kept' if args.action == 'keep' else 'not kept'}: {s.id}")
    return 0


def format_size_short(n: int) -> str:
    """``1.5M``-style sizes for the list."""
    value = float(n)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def _duration(record: dict[str, object]) -> str:
    start, end = record.get("start_wall_ns"), record.get("end_wall_ns")
    if not isinstance(start, int) or not isinstance(end, int):
        return "-"
    s = (end - start) / 1e9
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _guest(record: dict[str, object]) -> str:
    leases = record.get("leases")
    if isinstance(leases, list) and leases and isinstance(leases[0], dict):
        return f"{leases[0].get('mac', '?')} {leases[0].get('ip', '?')}"
    return "-"


def _row(s: statedir.Session) -> dict[str, object]:
    r = s.record
    state = "in use" if s.in_use() else ("closed" if r else "no record")
    qemu = r.get("qemu_command")
    return {
        "id": s.id,
        "start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.start)),
        "duration": _duration(r),
        "size": s.size,
        "guest": _guest(r),
        "netdev": r.get("netdev") or "-",
        "command": " ".join(qemu[:2]) if isinstance(qemu, list) and qemu else
                   str(r.get("command") or "-"),
        "flows": r.get("flows", "-"),
        "failures": r.get("failures", "-"),
        "frames_in": r.get("frames_in", "-"),
        "kept": s.kept,
        "state": state,
        "journal": s.journal,
    }


def _list(directory: str, as_json: bool) -> int:
    rows = [_row(s) for s in statedir.sessions(directory)]
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"(no sessions in {directory})")
        return 0
    cols = [("id", "ID", "<"), ("start", "START", "<"), ("duration", "DURATION", ">"),
            ("size", "SIZE", ">"), ("guest", "GUEST", "<"), ("netdev", "NETDEV", "<"),
            ("command", "COMMAND", "<"), ("flows", "FLOWS", ">"), ("failures", "FAILED", ">"),
            ("kept", "KEPT", "<"), ("state", "STATE", "<")]
    text = [{k: (format_size_short(v) if k == "size" and isinstance(v, int)
                 else "kept" if k == "kept" and v else "-" if k == "kept" else str(v))
             for k, v in row.items()} for row in rows]
    widths = {k: max(len(h), *(len(t[k]) for t in text)) for k, h, _a in cols}
    print("  ".join(f"{h:{a}{widths[k]}}" for k, h, a in cols).rstrip())
    for t in text:
        print("  ".join(f"{t[k]:{a}{widths[k]}}" for k, _h, a in cols).rstrip())
    total = sum(int(r["size"]) for r in rows if isinstance(r["size"], int))
    print(f"{len(rows)} sessions, {format_size_short(total)} in {directory}")
    return 0

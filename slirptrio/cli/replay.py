"""``slirptrio replay``: re-run a journal and check that it reproduces every effect; or
summarize the session (``--summary``, ``--json``) and draw it (``--timeline OUT.svg``)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from slirptrio.cli._common import Parser, Subparsers, UserError, describe, setup_logging
from slirptrio.heap import keep_buffers_on_heap

_WHEN = ("a record number (1234 or #1234), a duration into the session (90s, 5m, 1h2m3.5s, "
         "250ms) or a wall-clock time (14:03:07, 2026-01-31T14:03:07)")


def add_parser(sub: Subparsers) -> None:
    rep = sub.add_parser(
        "replay", help="replay a journal and check it reproduces every effect",
        description="Replay every retained segment of a journal (a journal directory, or an\n"
        "older single journal file) through a core restored from its snapshots, and check\n"
        "that every effect is the same. Exit 0: identical; 1: diverged (reported); 2: the\n"
        "journal cannot be read; 3: diverged, and the journal was recorded with other core\n"
        "constants (listed first).",
        epilog="examples:\n  slirptrio replay vm1.journal\n"
        "  slirptrio replay --from 50m --until 52m --pcap minute50.pcap vm1.journal\n"
        "  slirptrio replay last --summary --from 10s --until 20s\n"
        "  slirptrio replay --diff captures/\n\n"
        "--from/--until limit --summary, --json, --timeline and --pcap to the window too.\n"
        "Files replay writes (--pcap, --timeline) are 0600, as the session's own.",
    )
    rep.add_argument("journal", metavar="JOURNAL",
                     help="a journal directory, or a session id from 'slirptrio sessions' "
                     "('last': the newest)")
    rep.add_argument("--pcap", metavar="OUT", help="also export the window's frames to OUT")
    rep.add_argument("--pcapng", metavar="OUT",
                     help="export the session's frames to OUT as pcapng, one interface per "
                     "switch port (several guests), each frame's direction marked")
    rep.add_argument("--from", dest="start", metavar="WHEN",
                     help="start at the nearest snapshot before WHEN: " + _WHEN)
    rep.add_argument("--until", metavar="WHEN", help="stop before WHEN (same forms as --from)")
    rep.add_argument("--context", type=int, default=5, help="records of context on divergence")
    rep.add_argument("--summary", action="store_true",
                     help="print what happened: leases, flows, DNS, ICMP errors, drops")
    rep.add_argument("--json", action="store_true", help="the summary as JSON")
    rep.add_argument("--timeline", metavar="OUT.svg",
                     help="draw the session, one lane per flow (OUT.png: a PNG picture)")
    # -- behavioural diff (issue 23)
    rep.add_argument("--diff", action="store_true",
                     help="run every input through this build to the end and report each "
                     "effect that differs, by flow and kind (exit 0 identical, 1 not); with this "
                     "build's constants; JOURNAL may be a folder of journals (one line each)")
    show = rep.add_mutually_exclusive_group()
    show.add_argument("--progress", action="store_true", default=None,
                      help="show progress (default: when stderr is a terminal)")
    show.add_argument("--no-progress", dest="progress", action="store_false")
    rep.add_argument("-v", "--verbose", action="count", default=0)


def command(args: argparse.Namespace, parser: Parser) -> int:
    from replay.engine import main, parse_target
    from slirptrio.cli.statedir import resolve_journal
    from slirptrio.journal import JournalError, open_journal

    keep_buffers_on_heap()
    setup_logging(args.verbose)
    quiet_replayed_logs(args.verbose)
    args.journal = resolve_journal(args.journal)
    if args.diff:
        for option, value in (("--pcap", args.pcap), ("--from", args.start),
                              ("--until", args.until), ("--timeline", args.timeline)):
            if value is not None:
                parser.error(f"argument {option}: not with --diff")
        if args.summary or args.json:
            parser.error("argument --diff: not with --summary or --json")
        from replay.diff import main as diff_main

        return diff_main(args.journal)
    if args.pcapng:
        return _pcapng(args.journal, args.pcapng)
    start = until = None
    try:
        origin = open_journal(args.journal).header.origin_ns
    except OSError as exc:
        raise UserError(f"journal {describe(exc)}") from exc
    except JournalError as exc:
        text = str(exc)
        raise UserError(f"journal {text}" if text.startswith(args.journal)
                        else f"journal {args.journal}: {text}") from exc
    for option, text in (("--from", args.start), ("--until", args.until)):
        if text is None:
            continue
        try:
            target = parse_target(text, origin)
        except ValueError as exc:
            parser.error(f"argument {option}: {exc}")
        if option == "--from":
            start = target
        else:
            until = target
    if start is not None and until is not None:
        check_window(parser, start, until)
    for path, option in ((args.pcap, "--pcap"), (args.timeline, "--timeline")):
        if path is not None:
            create_private(path, option)
    if args.summary or args.json or args.timeline:
        from replay.summary import main as summary_main

        return summary_main(args.journal, text=args.summary, as_json=args.json,
                            timeline=args.timeline, progress=args.progress,
                            start=start, until=until, pcap=args.pcap)
    return main(args.journal, pcap_out=args.pcap, context=args.context, start=start,
                until=until, progress=args.progress)


def _pcapng(journal: str, out: str) -> int:
    """``--pcapng OUT``: the session's frames, one pcapng interface per switch port."""
    from replay.pcapng import export
    from slirptrio.journal import JournalError

    create_private(out, "--pcapng")
    try:
        with open(out, "wb") as f:
            n = export(journal, f)
    except (OSError, JournalError, ValueError) as exc:
        raise UserError(f"--pcapng: {exc}") from exc
    print(f"{n} frames written to {out}")
    return 0


def quiet_replayed_logs(verbose: int) -> None:
    """The replayed core says again what the live one logged (a DNS upstream failing): the
    summary reports that, so those lines are shown only with -v."""
    if not verbose:
        logging.getLogger("slirptrio.core.dns.upstream").setLevel(logging.ERROR)


def check_window(parser: Parser, start: Any, until: Any) -> None:
    """``--from`` must come before ``--until`` when both are of one kind (record numbers or
    session times); a window mixing both is checked by the replay itself."""
    if start.seq is not None and until.seq is not None:
        if start.seq >= until.seq:
            parser.error(f"argument --until: record {until.seq} is not after --from's "
                         f"record {start.seq}")
    elif start.t_ns is not None and until.t_ns is not None and start.t_ns >= until.t_ns:
        parser.error(f"argument --until: {until.t_ns / 1e9:g}s into the session is not after "
                     f"--from's {start.t_ns / 1e9:g}s")


def create_private(path: str, option: str) -> None:
    """Create (or empty) the output file ``path`` as 0600, as the session's own files are,
    before the replay starts; a failure names the file and its option, not the journal."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UserError(f"{option} {describe(exc)}") from exc
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_TRUNC
    except OSError:
        pass
    finally:
        os.close(fd)

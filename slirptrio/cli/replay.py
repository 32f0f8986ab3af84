"""``slirptrio replay``: re-run a journal and check that it reproduces every effect; or
summarize the session (``--summary``, ``--json``) and draw it (``--timeline OUT.svg``)."""

from __future__ import annotations

import argparse

from slirptrio.cli._common import Parser, Subparsers, UserError, describe, setup_logging

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
        "  slirptrio replay --diff captures/",
    )
    rep.add_argument("journal", metavar="JOURNAL")
    rep.add_argument("--pcap", metavar="OUT", help="also export the window's frames to OUT")
    rep.add_argument("--from", dest="start", metavar="WHEN",
                     help="start at the nearest snapshot before WHEN: " + _WHEN)
    rep.add_argument("--until", metavar="WHEN", help="stop before WHEN (same forms as --from)")
    rep.add_argument("--context", type=int, default=5, help="records of context on divergence")
    rep.add_argument("--summary", action="store_true",
                     help="print what happened: leases, flows, DNS, ICMP errors, drops")
    rep.add_argument("--json", action="store_true", help="the summary as JSON")
    rep.add_argument("--timeline", metavar="OUT.svg", help="draw the session, one lane per flow")
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
    from slirptrio.journal import JournalError, open_journal

    setup_logging(args.verbose)
    if args.diff:
        for option, value in (("--pcap", args.pcap), ("--from", args.start),
                              ("--until", args.until), ("--timeline", args.timeline)):
            if value is not None:
                parser.error(f"argument {option}: not with --diff")
        if args.summary or args.json:
            parser.error("argument --diff: not with --summary or --json")
        from replay.diff import main as diff_main

        return diff_main(args.journal)
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
    if args.summary or args.json or args.timeline:
        for option, value in (("--pcap", args.pcap), ("--from", args.start),
                              ("--until", args.until)):
            if value is not None:
                parser.error(f"argument {option}: not with --summary, --json or --timeline")
        from replay.summary import main as summary_main

        return summary_main(args.journal, text=args.summary, as_json=args.json,
                            timeline=args.timeline, progress=args.progress)
    return main(args.journal, pcap_out=args.pcap, context=args.context, start=start,
                until=until, progress=args.progress)

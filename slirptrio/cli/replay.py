"""``slirptrio replay``: re-run a journal and check that it reproduces every effect."""

from __future__ import annotations

import argparse

from slirptrio.cli._common import Parser, Subparsers, setup_logging

_WHEN = ("a record number (1234 or #1234), a duration into the session (90s, 5m, 1h2m3.5s, "
         "250ms) or a wall-clock time (14:03:07, 2026-01-31T14:03:07)")


def add_parser(sub: Subparsers) -> None:
    rep = sub.add_parser(
        "replay", help="replay a journal and check it reproduces every effect",
        description="Replay every retained segment of a journal (a journal directory, or an "
        "older single journal file) and compare every effect. Exit 0: identical; 1: diverged; "
        "2: unreadable; 3: diverged, and the journal was recorded with other core constants.",
    )
    rep.add_argument("journal", metavar="JOURNAL")
    rep.add_argument("--pcap", metavar="OUT", help="also export the window's frames to OUT")
    rep.add_argument("--from", dest="start", metavar="WHEN",
                     help="start at the nearest snapshot before WHEN: " + _WHEN)
    rep.add_argument("--until", metavar="WHEN", help="stop before WHEN (same forms as --from)")
    rep.add_argument("--context", type=int, default=5, help="records of context on divergence")
    show = rep.add_mutually_exclusive_group()
    show.add_argument("--progress", action="store_true", default=None,
                      help="show progress (default: when stderr is a terminal)")
    show.add_argument("--no-progress", dest="progress", action="store_false")
    rep.add_argument("-v", "--verbose", action="count", default=0)


def command(args: argparse.Namespace, parser: Parser) -> int:
    from replay.engine import EXIT_UNREADABLE, main, parse_target
    from slirptrio.journal import JournalError, open_journal

    setup_logging(args.verbose)
    start = until = None
    if args.start is not None or args.until is not None:
        try:
            origin = open_journal(args.journal).header.origin_ns
        except (OSError, JournalError) as exc:
            print(f"slirptrio replay: error: {exc}")
            return EXIT_UNREADABLE
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
    return main(args.journal, pcap_out=args.pcap, context=args.context, start=start,
                until=until, progress=args.progress)

"""``slirptrio replay``: re-run a journal and check that it reproduces every effect; or
summarize the session (``--summary``, ``--json``) and draw it (``--timeline OUT.svg``)."""

from __future__ import annotations

import argparse

from slirptrio.cli._common import Parser, Subparsers, UserError, describe, setup_logging


def add_parser(sub: Subparsers) -> None:
    rep = sub.add_parser(
        "replay", help="replay a journal and check it reproduces every effect",
        description="Feed a journal's inputs to a fresh stack and check that every effect is\n"
        "the same: exit 0 when identical, 1 on a divergence (reported), 2 when the journal\n"
        "cannot be read.",
        epilog="example:\n  slirptrio replay --pcap vm1.pcap vm1.journal",
    )
    rep.add_argument("journal", metavar="JOURNAL")
    rep.add_argument("--pcap", metavar="OUT", help="also export the capture to OUT")
    rep.add_argument("--context", type=int, default=5, help="records of context on divergence")
    rep.add_argument("--summary", action="store_true",
                     help="print what happened: leases, flows, DNS, ICMP errors, drops")
    rep.add_argument("--json", action="store_true", help="the summary as JSON")
    rep.add_argument("--timeline", metavar="OUT.svg", help="draw the session, one lane per flow")
    rep.add_argument("-v", "--verbose", action="count", default=0)


def command(args: argparse.Namespace, parser: Parser) -> int:
    from replay.engine import main as replay_main

    setup_logging(args.verbose)
    try:
        with open(args.journal, "rb"):
            pass  # unreadable: one line naming it, before the replay starts
    except OSError as exc:
        raise UserError(f"journal {describe(exc)}") from exc
    if args.summary or args.json or args.timeline:
        if args.pcap:
            parser.error("argument --pcap: not with --summary, --json or --timeline")
        from replay.summary import main as summary_main

        return summary_main(
            args.journal, text=args.summary, as_json=args.json, timeline=args.timeline
        )
    return replay_main(args.journal, pcap_out=args.pcap, context=args.context)

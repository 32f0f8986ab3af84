"""``slirptrio replay``: re-run a journal and check that it reproduces every effect."""

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
    rep.add_argument("-v", "--verbose", action="count", default=0)


def command(args: argparse.Namespace, parser: Parser) -> int:
    from replay.engine import main as replay_main

    setup_logging(args.verbose)
    try:
        with open(args.journal, "rb"):
            pass  # unreadable: one line naming it, before the replay starts
    except OSError as exc:
        raise UserError(f"journal {describe(exc)}") from exc
    return replay_main(args.journal, pcap_out=args.pcap, context=args.context)

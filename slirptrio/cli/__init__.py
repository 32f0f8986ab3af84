"""Command line: one module per subcommand.

``slirptrio qemu`` runs QEMU with its user-mode netdevs replaced by stacks (:mod:`.qemu`),
``slirptrio run`` starts a stack (:mod:`.run`), ``slirptrio replay`` re-runs, summarizes or
draws a journal (:mod:`.replay`), ``slirptrio ctl`` talks to a running stack's control socket
(:mod:`.ctl`), ``slirptrio capture`` streams its frames live as pcap (:mod:`.capture`).
Each subcommand module has ``add_parser(sub)`` and ``command(args, parser) -> int``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from types import ModuleType

from slirptrio.cli import capture, ctl, qemu, replay, run
from slirptrio.cli._common import Parser

_COMMANDS: dict[str, ModuleType] = {
    "qemu": qemu, "run": run, "replay": replay, "ctl": ctl, "capture": capture,
}


def build_parser() -> Parser:
    parser = Parser(
        prog="slirptrio",
        description="A user-mode network stack for QEMU guests, with deterministic replay.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in _COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace, Parser], int] = _COMMANDS[args.command].command
    return command(args, parser)

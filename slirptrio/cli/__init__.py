"""Command line: one module per subcommand.

``slirptrio qemu`` runs QEMU with its user-mode netdevs replaced by stacks (:mod:`.qemu`),
``slirptrio run`` starts a stack (:mod:`.run`), ``slirptrio replay`` re-runs, summarizes or
draws a journal (:mod:`.replay`), ``slirptrio ctl`` talks to a running stack's control socket
(:mod:`.ctl`), ``slirptrio capture`` streams its frames live as pcap (:mod:`.capture`),
``slirptrio sessions`` lists and prunes the recorded sessions (:mod:`.sessions`).
Each subcommand module has ``add_parser(sub)`` and ``command(args, parser) -> int``; a user's
mistake in any of them ends with one line and exit status 2 (:func:`._common.run_command`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from slirptrio import __version__
from slirptrio.cli._common import Parser, run_command

_COMMANDS = ("qemu", "run", "replay", "ctl", "capture", "sessions")
"""A command named first imports only its own module: listing the state directory must not pay
for trio and the stack, nor a replay for the shell (the whole parser is built for
``slirptrio --help`` or a mistyped command)."""


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"slirptrio.cli.{name}")

_DESCRIPTION = """\
A user-mode network stack for QEMU guests (like -netdev user), with a journal of every
session that replays byte for byte."""

_EPILOG = """\
examples:
  slirptrio qemu -- qemu-system-x86_64 ... -netdev user,id=n0,hostfwd=tcp::2222-:22 \\
      -device virtio-net-pci,netdev=n0      (QEMU as it was, its user network served by us)
  slirptrio run --control /tmp/vm1.ctl 'hostfwd=tcp:127.0.0.1:2222-:22'
  qemu-system-x86_64 ... -netdev stream,id=n0,server=off,addr.type=unix,addr.path=SOCKET \\
      -device virtio-net-pci,netdev=n0      (slirptrio run prints the exact line)
  slirptrio ctl /tmp/vm1.ctl info
  slirptrio capture /tmp/vm1.ctl | wireshark -k -i -
  slirptrio sessions                         (the sessions recorded, their ids)
  slirptrio replay last --summary            (or an id, or a journal directory)
  slirptrio replay ID --timeline OUT.svg|OUT.png

'slirptrio COMMAND --help' describes each command."""


def build_parser(commands: Sequence[str] = _COMMANDS) -> Parser:
    """The command line's parser, with ``commands`` (every one by default)."""
    parser = Parser(prog="slirptrio", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"slirptrio {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, metavar="COMMAND",
        title="commands",
    )
    for name in commands:
        _module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    only = words[:1] if words[:1] and words[0] in _COMMANDS else _COMMANDS
    parser = build_parser(only)
    args = parser.parse_args(words)
    command: Callable[[argparse.Namespace, Parser], int] = _module(args.command).command
    return run_command(lambda: command(args, parser), getattr(args, "verbose", 0))

"""What the subcommands share: the argument parser and logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn

EXIT_USAGE = 2

Subparsers = Any  # argparse's _SubParsersAction is private


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the option, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"slirptrio: error: {message}\n")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(name)s: %(message)s", stream=sys.stderr)

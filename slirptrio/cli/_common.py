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


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int | None:
    """``64M``, ``1G``, ``512K``, ``100000`` (bytes; K/M/G/T are powers of 1024, an optional
    trailing B or iB is allowed); ``0`` or ``unlimited``: None (no bound).

    Raises:
      ValueError: anything else.
    """
    t = text.strip().upper()
    if t in ("0", "UNLIMITED", "NONE"):
        return None
    for suffix in ("IB", "B"):
        if t.endswith(suffix) and len(t) > len(suffix):
            t = t[: -len(suffix)]
            break
    unit = t[-1:] if t[-1:] in _UNITS and not t[-1:].isdigit() else ""
    number = t[: len(t) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r}: expected a size such as 64M, 1G or 500K") from None
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{text!r}: a size must be positive (0 means unlimited)")
    return size


def format_size(size: int) -> str:
    """The shortest exact K/M/G form of ``size`` bytes (the inverse of :func:`parse_size`)."""
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)

"""What the subcommands share: the argument parser, logging set-up, and how errors end a run.

A user's mistake (a bad path, a port in use, a duplicate forward, permission denied, a bad
option string, an unreadable journal) ends the command with one line on stderr,
``slirptrio: error: ...``, and exit status 2; the traceback is printed only under ``-v``.
trio reports failures inside a nursery as exception groups, so :func:`run_command` looks
through them for the error that ended the run. Anything else is a bug: its traceback is shown.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_USAGE = 2

Subparsers = Any  # argparse's _SubParsersAction is private


class UserError(Exception):
    """A mistake of the user's, reported as one line (the message) and exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the option, and exit code 2; help text
    keeps the line breaks of descriptions and epilogs (examples)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"slirptrio: error: {message}\n")


def add_journal_options(parser: argparse.ArgumentParser, each: bool) -> None:
    """The journal's and pcap's bounds and policy (``slirptrio run``; ``slirptrio qemu`` with
    ``each``: one journal per netdev). :func:`journal_options` reads them."""
    from slirptrio.journal.writer import DEFAULT_BUDGET, DEFAULT_JOURNAL_MAX

    journal, pcap = ("each journal", "each pcap") if each else ("the journal", "the pcap")
    parser.add_argument(
        "--journal-max", metavar="SIZE", default=format_size(DEFAULT_JOURNAL_MAX),
        help=f"disk {journal} may use; its oldest segments go first (K/M/G; 0: unlimited; "
             f"default {format_size(DEFAULT_JOURNAL_MAX)})",
    )
    parser.add_argument(
        "--journal-policy", choices=("lossy", "lossless"), default="lossy",
        help="when the disk cannot keep up or fails: drop records and go on (lossy, default), "
             "or make the guest wait (lossless)",
    )
    parser.add_argument(
        "--journal-buffer", metavar="SIZE", default=format_size(DEFAULT_BUDGET),
        help="memory for records and frames waiting for the disk; past it the policy applies "
             f"(default {format_size(DEFAULT_BUDGET)})",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help=f"replace an earlier session's journal or pcap at the path given (without it "
             f"{journal} that exists is refused; one another running slirptrio holds always is)",
    )
    parser.add_argument(
        "--pcap-max", metavar="SIZE",
        help=f"disk {pcap} may use: it rotates into PATH.1 at half of it (default: as "
             "--journal-max)",
    )


def journal_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Turn the sizes of :func:`add_journal_options` into bytes in ``args`` (None: unlimited);
    a bad one is a usage error naming its option."""
    from slirptrio.journal.writer import DEFAULT_BUDGET

    def size(option: str, text: str) -> int | None:
        try:
            return parse_size(text)
        except ValueError as exc:
            parser.error(f"argument {option}: {exc}")

    args.journal_max = size("--journal-max", args.journal_max)
    if args.pcap_max is None:
        args.pcap_max = args.journal_max
    else:
        args.pcap_max = size("--pcap-max", args.pcap_max)
    args.journal_buffer = size("--journal-buffer", args.journal_buffer) or DEFAULT_BUDGET


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


def _user_error_types() -> tuple[type[BaseException], ...]:
    # Imported here: `slirptrio --help` should not pay for trio and the stack.
    from slirptrio.config import ConfigError
    from slirptrio.journal import JournalError
    from slirptrio.shell.control import ControlError
    from slirptrio.shell.forwards import ForwardError
    from slirptrio.shell.transport import AddressError

    return (UserError, OSError, ConfigError, ForwardError, AddressError, ControlError,
            JournalError)


def leaf_error(exc: BaseException) -> BaseException:
    """The error that ended a run: ``exc`` itself, or the first leaf of an exception group
    that is not a cancellation (nurseries cancel the other tasks when one fails)."""
    import trio

    while isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        if not leaves:
            return exc
        exc = leaves[0]
    return exc


def describe(exc: BaseException) -> str:
    """One line naming the problem."""
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc) or type(exc).__name__
        if exc.filename is not None:
            text = f"{exc.filename}: {text}"
        if exc.filename2 is not None:
            text += f" (and {exc.filename2})"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())  # one line, whatever the message held


EXIT_BROKEN_PIPE = 128 + 13
"""What a shell shows for ``cat`` or ``grep`` killed by SIGPIPE (``| head``)."""


def quiet_broken_pipe() -> int:
    """The reader of our output went away (``| head``): end quietly, as ``cat`` does. Later
    writes (the interpreter's final flush) go to /dev/null instead of raising again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def run_command(command: Callable[[], int], verbose: int) -> int:
    """Run ``command``; a user error becomes one line on stderr and exit status 2."""
    try:
        return command()
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        leaf = leaf_error(exc)
        if isinstance(leaf, BrokenPipeError):
            return quiet_broken_pipe()
        if isinstance(leaf, SystemExit):
            raise leaf from None
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        if not isinstance(leaf, _user_error_types()):
            raise  # a bug: the whole traceback is the useful report
        if verbose:
            traceback.print_exception(exc)
        print(f"slirptrio: error: {describe(leaf)}", file=sys.stderr, flush=True)
        return EXIT_USAGE

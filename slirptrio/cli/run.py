"""``slirptrio run``: start a stack and wait for a QEMU guest."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import trio

from slirptrio.api import SlirpStack, check_host_side
from slirptrio.cli import statedir
from slirptrio.cli._common import (
    Parser,
    Subparsers,
    UserError,
    add_journal_options,
    describe,
    journal_options,
    setup_logging,
)
from slirptrio.cli.session import TransportSpec, default_journal_path, run_session
from slirptrio.config import ConfigError, parse_user_options
from slirptrio.heap import keep_buffers_on_heap
from slirptrio.shell import transport as tp
from slirptrio.shell.descriptors import raise_nofile_limit
from slirptrio.syntax.address import parse_upstream
from slirptrio.syntax.options import help_text
from slirptrio.wire import fast

log = logging.getLogger("slirptrio")


def default_socket_dir() -> str:
    """The private directory (0700) of the default guest socket: ``$XDG_RUNTIME_DIR/slirptrio``,
    else ``/tmp/slirptrio-UID`` (checked to be ours and closed to others before use)."""
    run_dir = os.environ.get("XDG_RUNTIME_DIR")
    if run_dir:
        return os.path.join(run_dir, "slirptrio")
    return os.path.join("/tmp", f"slirptrio-{os.geteuid()}")


def default_socket() -> str:
    """The default ``--listen`` path (nothing is created here)."""
    return os.path.join(default_socket_dir(), "guest.sock")


_EPILOG = """examples:
  slirptrio run
      listen on the default socket and print the -netdev argument QEMU needs
  slirptrio run --listen unix:/tmp/vm1.sock 'net=192.168.76.0/24,hostfwd=tcp:127.0.0.1:2222-:22'
  slirptrio run --connect tcp:127.0.0.1:5555 --control /tmp/vm1.ctl --no-pcap

OPTIONS is QEMU's -netdev user option string, what follows 'user,' (QEMU's options, then
slirptrio's own):
""" + help_text() + """

Sockets the stack creates are 0600. The default guest socket is SOCKDIR/guest.sock, in a
private directory: $XDG_RUNTIME_DIR/slirptrio, else /tmp/slirptrio-UID. The soft limit on
open files is raised to the hard one, and max-flows lowered to what it allows."""


def add_parser(sub: Subparsers) -> None:
    run = sub.add_parser(
        "run", help="run the stack and wait for a QEMU guest",
        description="Run the stack and wait for a QEMU guest; a journal of the session is\n"
        "written for 'slirptrio replay'.",
        epilog=_EPILOG,
    )
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--listen",
        metavar="unix:PATH|tcp:HOST:PORT",
        help="listen for QEMU's -netdev stream client (server=off); default unix:"
        "SOCKDIR/guest.sock (below)",
    )
    where.add_argument(
        "--connect",
        metavar="unix:PATH|tcp:HOST:PORT",
        help="connect to QEMU's -netdev stream server (server=on), retrying until it is up",
    )
    where.add_argument(
        "--dgram",
        metavar="LOCAL,REMOTE",
        help="-netdev dgram: bind LOCAL, send to REMOTE (each unix:PATH or udp:HOST:PORT)",
    )
    where.add_argument(
        "--mcast",
        metavar="GROUP:PORT",
        help="join QEMU's multicast frame bus (-netdev socket,mcast=GROUP:PORT,"
        "localaddr=127.0.0.1) as one more member, on loopback only",
    )
    run.add_argument("--journal", metavar="PATH", help="journal directory (default: under "
                     "$XDG_STATE_HOME/slirptrio, ~/.local/state/slirptrio)")
    run.add_argument("--no-journal", action="store_true", help="do not write a journal")
    run.add_argument("--pcap", metavar="PATH",
                     help="pcap file (default: the journal's path with .pcap)")
    run.add_argument("--no-pcap", action="store_true", help="do not write a pcap")
    add_journal_options(run, each=False)
    statedir.add_options(run)
    run.add_argument(
        "--dns-upstream",
        metavar="HOST[:PORT]",
        action="append",
        help="resolver for the DNS relay (repeatable; default: /etc/resolv.conf's first)",
    )
    run.add_argument(
        "--control", metavar="PATH", help="serve the JSON-lines control socket at PATH"
    )
    run.add_argument("--seed", type=int, help="PRNG seed (default: random; always journaled)")
    run.add_argument("--faults", metavar="FILE",
                     help="fault rules in force from the start (TOML, [[rule]] tables; see "
                     "'Reproduce a flaky network' in the README)")
    run.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    run.add_argument("options", nargs="?", default="", metavar="OPTIONS",
                     help="QEMU -netdev user options, e.g. 'net=192.168.76.0/24,hostname=vm1'")


def _transport(args: argparse.Namespace, parser: Parser) -> TransportSpec:
    try:
        if args.connect:
            return TransportSpec("connect", tp.Address.parse(args.connect, ("unix", "tcp")))
        if args.dgram:
            local, sep, remote = args.dgram.partition(",")
            if not sep:
                raise tp.AddressError("expected LOCAL,REMOTE")
            kinds = ("unix", "udp")
            return TransportSpec(
                "dgram", tp.Address.parse(local, kinds), tp.Address.parse(remote, kinds)
            )
        if args.mcast:
            group, port = tp.parse_mcast(args.mcast)
            return TransportSpec("mcast", tp.Address("udp", host=group, port=port))
        if args.listen:
            return TransportSpec("listen", tp.Address.parse(args.listen, ("unix", "tcp")))
        try:
            tp.private_dir(default_socket_dir())
        except OSError as exc:
            raise UserError(
                f"default socket directory {describe(exc)} (set XDG_RUNTIME_DIR, or give --listen)"
            ) from exc
        return TransportSpec("listen", tp.Address("unix", path=default_socket()))
    except tp.AddressError as exc:
        option = ("--connect" if args.connect else "--dgram" if args.dgram
                  else "--mcast" if args.mcast else "--listen")
        parser.error(f"argument {option}: {exc}")


def read_faults(path: str | None, parser: Parser) -> list[str]:
    """The rules of a ``--faults`` file as rule texts (a bad file: one line, exit 2)."""
    if path is None:
        return []
    from slirptrio.core.faults import FaultError, parse_fault_file

    try:
        with open(path, encoding="utf-8") as f:
            return [rule.text() for rule in parse_fault_file(f.read())]
    except OSError as exc:
        parser.error(f"argument --faults: {path}: {exc.strerror or exc}")
    except (FaultError, UnicodeDecodeError) as exc:
        parser.error(f"argument --faults: {path}: {exc}")


def command(args: argparse.Namespace, parser: Parser) -> int:
    try:
        config = parse_user_options(args.options)
    except ConfigError as exc:
        parser.error(str(exc))
    problem = check_host_side(config)
    if problem is not None:
        parser.error(problem)
    spec = _transport(args, parser)
    upstreams: list[tuple[str, int]] | None = None
    if args.dns_upstream:
        try:
            upstreams = [parse_upstream(u) for u in args.dns_upstream]
        except ValueError as exc:
            parser.error(f"argument --dns-upstream: {exc}")
    journal_options(args, parser)
    faults = read_faults(args.faults, parser)
    journal = None if args.no_journal else (args.journal or default_journal_path())
    pcap = None
    if not args.no_pcap:
        if args.pcap:
            pcap = args.pcap
        elif journal is not None:
            pcap = os.path.splitext(journal)[0] + ".pcap"
    try:
        retention = statedir.Retention([journal], args.state_max, args.keep)
    except ValueError as exc:
        parser.error(f"argument {exc}")
    retention.before()
    setup_logging(max(args.verbose, 1) if args.verbose else 0)
    before, after = raise_nofile_limit()
    if after != before:
        log.info("raised the open files limit (RLIMIT_NOFILE) from %d to %d", before, after)

    def ready(stack: SlirpStack) -> None:
        print("slirptrio: attach a QEMU guest with:")
        print(f"  {spec.qemu_args()} -device virtio-net-pci,netdev=n0")
        for rule, port in stack.hostfwds().items():
            print(f"slirptrio: hostfwd {rule}: host port {port}")
        if config.tftp:
            print(f"slirptrio: tftp {config.tftp} on {config.host}:69")
        if config.smb:
            print(f"slirptrio: smb {config.smb} as //{config.smbserver}/qemu")
        if args.control:
            print(f"slirptrio: control socket {args.control}")
        retention.started(journal)
        if journal:
            print(f"slirptrio: journal {journal}")
        if pcap:
            print(f"slirptrio: pcap {pcap}")
        print(f"slirptrio: fast path {fast.IMPL}")
        print("slirptrio: ready", flush=True)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def session() -> None:
                    await run_session(
                        config, spec, seed=args.seed, journal_path=journal, pcap_path=pcap,
                        on_ready=ready, dns_upstreams=upstreams, control_path=args.control,
                        journal_max=args.journal_max, pcap_max=args.pcap_max,
                        journal_policy=args.journal_policy, journal_buffer=args.journal_buffer,
                        on_close=lambda stack: retention.closing(journal, stack, {
                            "command": "slirptrio run", "transport": spec.qemu_args()}),
                        faults=faults,
                        journal_overwrite=args.overwrite,
                    )

                nursery.start_soon(session)
                async for _sig in signals:
                    nursery.cancel_scope.cancel()
                    break

    keep_buffers_on_heap()
    trio.run(main)
    if retention.closed():
        print("slirptrio: no frame came from the guest; the session was removed (--keep keeps "
              "such a session)", file=sys.stderr)
    return 0

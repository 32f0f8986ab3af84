"""Command line: ``slirptrio run`` starts a stack, ``slirptrio replay`` re-runs a journal,
``slirptrio ctl`` talks to a running stack's control socket."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

import trio

from slirptrio.api import SlirpStack
from slirptrio.config import ConfigError, parse_user_options
from slirptrio.core.dns import parse_upstream
from slirptrio.shell import transport as tp
from slirptrio.shell.session import TransportSpec, default_journal_path, run_session

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the option, and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"slirptrio: error: {message}\n")


def _default_socket() -> str:
    run_dir = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(run_dir, f"slirptrio-{os.getuid()}.sock")


def _build_parser() -> _Parser:
    parser = _Parser(prog="slirptrio", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the stack and wait for a QEMU guest")
    where = run.add_mutually_exclusive_group()
    where.add_argument(
        "--listen",
        metavar="unix:PATH|tcp:HOST:PORT",
        help="listen for QEMU's -netdev stream client (server=off); default unix:"
        + _default_socket(),
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
    run.add_argument("--journal", metavar="PATH", help="journal file (default: under "
                     "$XDG_STATE_HOME/slirptrio, ~/.local/state/slirptrio)")
    run.add_argument("--no-journal", action="store_true", help="do not write a journal")
    run.add_argument("--pcap", metavar="PATH",
                     help="pcap file (default: the journal's path with .pcap)")
    run.add_argument("--no-pcap", action="store_true", help="do not write a pcap")
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
    run.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    run.add_argument("options", nargs="?", default="",
                     help="QEMU -netdev user options, e.g. 'net=192.168.76.0/24,hostname=vm1'")

    ctl = sub.add_parser("ctl", help="query or change a running stack (--control socket)")
    ctl.add_argument("socket", metavar="PATH", help="the stack's --control socket")
    ctl.add_argument("--json", action="store_true", help="print the raw JSON answer")
    ctl.add_argument(
        "request", nargs="+", metavar="COMMAND",
        help="info | leases | stats | hostfwd-add RULE | hostfwd-remove RULE",
    )

    rep = sub.add_parser("replay", help="replay a journal and check it reproduces every effect")
    rep.add_argument("journal", metavar="JOURNAL")
    rep.add_argument("--pcap", metavar="OUT", help="also export the capture to OUT")
    rep.add_argument("--context", type=int, default=5, help="records of context on divergence")
    rep.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _transport(args: argparse.Namespace, parser: _Parser) -> TransportSpec:
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
        return TransportSpec(
            "listen", tp.Address.parse(args.listen or "unix:" + _default_socket(), ("unix", "tcp"))
        )
    except tp.AddressError as exc:
        option = "--connect" if args.connect else "--dgram" if args.dgram else "--listen"
        parser.error(f"argument {option}: {exc}")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(name)s: %(message)s", stream=sys.stderr)


def _cmd_run(args: argparse.Namespace, parser: _Parser) -> int:
    try:
        config = parse_user_options(args.options)
    except ConfigError as exc:
        parser.error(str(exc))
    spec = _transport(args, parser)
    upstreams: list[tuple[str, int]] | None = None
    if args.dns_upstream:
        try:
            upstreams = [parse_upstream(u) for u in args.dns_upstream]
        except ValueError as exc:
            parser.error(f"argument --dns-upstream: {exc}")
    journal = None if args.no_journal else (args.journal or default_journal_path())
    pcap = None
    if not args.no_pcap:
        if args.pcap:
            pcap = args.pcap
        elif journal is not None:
            pcap = os.path.splitext(journal)[0] + ".pcap"
    _setup_logging(max(args.verbose, 1) if args.verbose else 0)

    def ready(stack: SlirpStack) -> None:
        print("slirptrio: attach a QEMU guest with:")
        print(f"  {spec.qemu_args()} -device virtio-net-pci,netdev=n0")
        for rule, port in stack.hostfwds().items():
            print(f"slirptrio: hostfwd {rule}: host port {port}")
        if args.control:
            print(f"slirptrio: control socket {args.control}")
        if journal:
            print(f"slirptrio: journal {journal}")
        if pcap:
            print(f"slirptrio: pcap {pcap}")
        print("slirptrio: ready", flush=True)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def session() -> None:
                    await run_session(
                        config, spec, seed=args.seed, journal_path=journal, pcap_path=pcap,
                        on_ready=ready, dns_upstreams=upstreams, control_path=args.control,
                    )

                nursery.start_soon(session)
                async for _sig in signals:
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except OSError as exc:
        print(f"slirptrio: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from replay.engine import main as replay_main

    _setup_logging(args.verbose)
    return replay_main(args.journal, pcap_out=args.pcap, context=args.context)


_CTL_ARGS = {"info": 0, "leases": 0, "stats": 0, "hostfwd-add": 1, "hostfwd-remove": 1}


def _cmd_ctl(args: argparse.Namespace, parser: _Parser) -> int:
    from slirptrio.shell.control import ControlError, request

    cmd, *rest = args.request
    if cmd not in _CTL_ARGS:
        parser.error(f"argument COMMAND: unknown command {cmd!r} (known: {', '.join(_CTL_ARGS)})")
    if len(rest) != _CTL_ARGS[cmd]:
        parser.error(f"argument COMMAND: {cmd} takes {_CTL_ARGS[cmd]} argument(s)")
    message: dict[str, object] = {"cmd": cmd}
    if rest:
        message["rule"] = rest[0]
    try:
        answer = trio.run(request, args.socket, message)
    except (OSError, ControlError, trio.TooSlowError, ValueError) as exc:
        print(f"slirptrio: error: control socket {args.socket}: {exc!r}", file=sys.stderr)
        return 1
    if args.json or not answer.get("ok"):
        print(json.dumps(answer, indent=None if not args.json else 2))
        return 0 if answer.get("ok") else 1
    print(_format_answer(cmd, answer))
    return 0


def _format_answer(cmd: str, answer: dict[str, object]) -> str:
    if cmd == "info":
        flows = answer.get("flows")
        assert isinstance(flows, list)
        head = f"{'Proto[State]':<22} {'Guest':<22} {'Dest':<22} {'Host':<24} RecvQ SendQ  Idle"
        rows = [
            f"{f['proto'] + '[' + f['state'] + ']':<22} {f['guest']:<22} {f['dest']:<22} "
            f"{f['host']:<24} {f['recv_q']:>5} {f['send_q']:>5} {f['idle_s']:>5.0f}s"
            for f in flows
        ]
        return "\n".join([head, *rows])
    if cmd == "leases":
        leases = answer.get("leases")
        assert isinstance(leases, list)
        rows = [f"{x['ip']:<16} {x['mac']}  expires in {x['expires_in_s']} s" for x in leases]
        return "\n".join(rows) if rows else "(no leases)"
    if cmd == "hostfwd-add":
        return f"forwarding host port {answer.get('port')}"
    if cmd == "hostfwd-remove":
        return "removed"
    return json.dumps({k: v for k, v in answer.items() if k != "ok"}, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _cmd_run(args, parser)
    if args.command == "ctl":
        return _cmd_ctl(args, parser)
    return _cmd_replay(args)

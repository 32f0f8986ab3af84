"""``slirptrio ctl``: query or change a running stack through its control socket."""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio

from slirptrio.cli._common import Parser, Subparsers, UserError, describe

_CTL_ARGS = {"info": 0, "leases": 0, "stats": 0, "hostfwd-add": 1, "hostfwd-remove": 1}


_EPILOG = """\
examples:
  slirptrio ctl /tmp/vm1.ctl info
  slirptrio ctl /tmp/vm1.ctl hostfwd-add tcp:127.0.0.1:0-:22
  slirptrio ctl /tmp/vm1.ctl hostfwd-remove tcp:127.0.0.1:40113
  slirptrio ctl /tmp/vm1.ctl --json stats
  slirptrio ctl /tmp/vm1.ctl fault add proto=tcp loss=2% delay=50ms jitter=50ms
  slirptrio ctl /tmp/vm1.ctl fault list
  slirptrio ctl /tmp/vm1.ctl fault remove 1

Only the stack's own user, and root, may use its control socket."""


def add_parser(sub: Subparsers) -> None:
    ctl = sub.add_parser(
        "ctl", help="query or change a running stack (--control socket)",
        description="Query or change a running stack through its control socket\n"
        "('slirptrio run --control PATH').",
        epilog=_EPILOG,
    )
    ctl.add_argument("socket", metavar="PATH", help="the stack's --control socket")
    ctl.add_argument("--json", action="store_true", help="print the raw JSON answer")
    ctl.add_argument("-v", "--verbose", action="count", default=0,
                     help="show the traceback of an error")
    ctl.add_argument(
        "request", nargs="+", metavar="COMMAND",
        help="info | leases | stats | hostfwd-add RULE | hostfwd-remove RULE | "
        "fault add RULE... | fault list | fault remove ID | fault clear",
    )


def command(args: argparse.Namespace, parser: Parser) -> int:
    from slirptrio.shell.control import ControlError, request

    cmd, *rest = args.request
    if cmd == "fault":
        return _fault_command(args, parser, rest)
    if cmd not in _CTL_ARGS:
        parser.error(f"argument COMMAND: unknown command {cmd!r} (known: {', '.join(_CTL_ARGS)})")
    if len(rest) != _CTL_ARGS[cmd]:
        parser.error(f"argument COMMAND: {cmd} takes {_CTL_ARGS[cmd]} argument(s)")
    message: dict[str, object] = {"cmd": cmd}
    if rest:
        message["rule"] = rest[0]
    try:
        answer = trio.run(request, args.socket, message)
    except OSError as exc:
        raise UserError(f"control socket {args.socket}: {describe(exc)}") from exc
    except (ControlError, trio.TooSlowError, ValueError) as exc:
        reason = str(exc) or "no answer in time"
        raise UserError(f"control socket {args.socket}: {reason}") from exc
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0 if answer.get("ok") else 1
    if not answer.get("ok"):
        raise UserError(str(answer.get("error", "refused")))
    print(format_answer(cmd, answer))
    return 0


def _fault_command(args: argparse.Namespace, parser: Parser, rest: list[str]) -> int:
    """``ctl CTL fault add RULE... | list | remove ID | clear`` (fault rules, issue 23)."""
    from slirptrio.shell.control import ControlError, request

    sub, *words = rest or [""]
    message: dict[str, object]
    if sub == "add" and words:
        message = {"cmd": "fault-add", "rule": " ".join(words)}
    elif sub == "remove" and len(words) == 1 and words[0].isdigit():
        message = {"cmd": "fault-remove", "id": int(words[0])}
    elif sub in ("list", "clear") and not words:
        message = {"cmd": f"fault-{sub}"}
    else:
        parser.error("argument COMMAND: fault add RULE... | fault list | fault remove ID | "
                     "fault clear")
    try:
        answer = trio.run(request, args.socket, message)
    except OSError as exc:
        raise UserError(f"control socket {args.socket}: {describe(exc)}") from exc
    except (ControlError, trio.TooSlowError, ValueError) as exc:
        raise UserError(f"control socket {args.socket}: {exc or 'no answer in time'}") from exc
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0 if answer.get("ok") else 1
    if not answer.get("ok"):
        raise UserError(str(answer.get("error", "refused")))
    if sub == "add":
        print(f"fault rule {answer.get('id')}: {answer.get('rule')}")
    elif sub == "list":
        rules = answer.get("faults") or []
        assert isinstance(rules, list)
        for r in rules:
            done = ", ".join(f"{k} {v}" for k, v in sorted(r["stats"].items())) or "nothing yet"
            state = "" if r["active"] else " (outside its window)"
            print(f"{r['id']:>3}  {r['rule']}{state}\n     {done}")
        if not rules:
            print("(no fault rules)")
    else:
        print("removed" if sub == "remove" else "cleared")
    return 0


def format_answer(cmd: str, answer: dict[str, object]) -> str:
    """The human-readable form of a control answer."""
    if cmd == "info":
        flows = answer.get("flows")
        assert isinstance(flows, list)
        forwards = answer.get("forwards", [])
        assert isinstance(forwards, list)
        head = f"{'Proto[State]':<22} {'Guest':<22} {'Dest':<22} {'Host':<24} RecvQ SendQ  Idle"
        rows = [_forward_row(fw) for fw in forwards]
        rows += [
            f"{f['proto'] + '[' + f['state'] + ']':<22} {f['guest']:<22} {f['dest']:<22} "
            f"{f['host']:<24} {f['recv_q']:>5} {f['send_q']:>5} {f['idle_s']:>5.0f}s"
            for f in flows
        ]
        tftp = answer.get("tftp") or []
        assert isinstance(tftp, list)
        if tftp:
            rows.append("")
            rows.append(f"{'TFTP[State]':<22} {'Guest':<22} {'File':<24} {'Sent':>12} "
                        f"{'Size':>12}  Blk Win")
            rows += [
                f"{'tftp[' + t['state'] + ']':<22} {t['guest']:<22} {t['path']:<24} "
                f"{t['acked_bytes']:>12} {t['size'] if t['size'] is not None else '?':>12} "
                f"{t['blksize']:>5} {t['windowsize']:>3}"
                for t in tftp
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


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _forward_row(fw: dict[str, Any]) -> str:
    """A forward as QEMU's ``info usernet`` shows it: ``TCP[HOST_FORWARD]`` with the bound
    host address and port (``*`` for every address), or ``TCP[GUEST_FORWARD]``."""
    proto = str(fw.get("proto", "tcp")).upper()
    state = str(fw.get("state") or "")
    if fw.get("kind") == "hostfwd":
        label = f"{proto}[HOST_FORWARD{',' + state if state and state != 'listening' else ''}]"
        if proto == "UNIX":
            host = str(fw["addr"])
        else:
            addr = str(fw["addr"])
            host = _endpoint("*" if addr in ("", "0.0.0.0", "::") else addr, int(fw["port"]))
        guest, dest = _endpoint(str(fw["guest_addr"]), int(fw["guest_port"])), "-"
    else:
        label = f"{proto}[GUEST_FORWARD]"
        guest, dest = "*", _endpoint(str(fw["addr"]), int(fw["port"]))
        host = str(fw.get("target", ""))
    origin = "static" if fw.get("static") else "runtime"
    return (f"{label:<22} {guest:<22} {dest:<22} {host:<24} {'-':>5} {'-':>5} {'-':>5}  "
            f"{origin}: {fw.get('rule', '')}")

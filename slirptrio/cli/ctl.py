"""``slirptrio ctl``: query or change a running stack through its control socket."""

from __future__ import annotations

import argparse
import json
from typing import Any

import trio

from slirptrio.cli._common import Parser, Subparsers, UserError, describe
from slirptrio.syntax.address import hostport

_CTL_ARGS = {"info": 0, "leases": 0, "stats": 0, "hostfwd-add": 1, "hostfwd-remove": 1}


_EPILOG = """\
examples:
  slirptrio ctl /tmp/vm1.ctl info
  slirptrio ctl /tmp/vm1.ctl hostfwd-add tcp:127.0.0.1:0-:22
  slirptrio ctl /tmp/vm1.ctl hostfwd-remove tcp:127.0.0.1:40113
  slirptrio ctl /tmp/vm1.ctl stats          (--json: the raw answer, for every command)
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
        # QEMU's info usernet columns, then the flow number 'capture --flow N' takes.
        head = (f"{'Proto[State]':<22} {'Guest':<22} {'Dest':<22} {'Host':<24} RecvQ SendQ  "
                "Idle   Flow")
        rows = [_forward_row(fw) for fw in forwards]
        rows += [
            f"{f['proto'] + '[' + f['state'] + ']':<22} {f['guest']:<22} {f['dest']:<22} "
            f"{f['host']:<24} {f['recv_q']:>5} {f['send_q']:>5} {f['idle_s']:>5.0f}s "
            f"{f.get('flow', '-'):>6}"
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
        ports = answer.get("ports") or []
        assert isinstance(ports, list)
        if len(ports) > 1:  # several guests: who is on which port of the switch
            rows.append("")
            rows.append(f"{'Port':<5} {'Peer':<24} {'MACs':<18} {'Addresses':<32} "
                        f"{'In':>8} {'Out':>8} {'Fwd':>8} Drops")
            rows += [
                f"{p['port']:<5} {str(p['peer'])[:24]:<24} {','.join(p['macs']) or '-':<18} "
                f"{','.join(p['addresses']) or '-':<32} {p['frames_in']:>8} "
                f"{p['frames_out']:>8} {p['forwarded']:>8} "
                f"{p['drops'] + p.get('queue_drops', 0)}"
                for p in ports
            ]
        upstreams = answer.get("dns_upstreams") or []
        assert isinstance(upstreams, list)
        if upstreams:
            rows.append("")
            rows += [f"DNS upstream {u['upstream']:<30} {u['state']}" for u in upstreams]
        return "\n".join([head, *rows])
    if cmd == "stats":
        return format_stats(answer)
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


def format_stats(answer: dict[str, Any]) -> str:
    """``ctl stats`` for people: the overview first, then every counter that moved."""
    from slirptrio.cli._common import format_size

    def yes(v: object) -> str:
        return "yes" if v else "no"

    lines = [
        f"guest attached: {yes(answer.get('guest_attached'))}; leases: "
        f"{answer.get('leases', 0)}; fast path: {answer.get('fast_path', '?')}",
    ]
    by_state = answer.get("flows_by_state") or {}
    if isinstance(by_state, dict):
        lines.append("flows: " + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items()))
                                  or "none"))
    jb = int(answer.get("journal_bytes", 0) or 0)
    lines.append(
        f"journal: {format_size(jb) if jb else '0'} bytes written, "
        f"{answer.get('journal_records', 0)} records, {answer.get('journal_gaps', 0)} gaps "
        f"({answer.get('journal_lost_records', 0)} records lost), "
        f"{answer.get('journal_queued_bytes', 0)} bytes queued; pcap: "
        f"{answer.get('pcap_lost_frames', 0)} frames lost")
    lines.append(f"frames dropped toward the guest: {answer.get('frames_dropped_toward_guest', 0)}"
                 f"; from strangers: {answer.get('frames_from_strangers', 0)}")
    for cap in answer.get("captures") or []:
        lines.append(f"capture {cap.get('id', '?')}: {cap.get('frames', 0)} frames, "
                     f"{cap.get('lost', 0)} lost, filter {cap.get('filter') or '(none)'}")
    counters = answer.get("counters") or {}
    if isinstance(counters, dict) and counters:
        drops = {k: v for k, v in counters.items() if k.startswith("drop_")}
        rest = {k: v for k, v in counters.items() if not k.startswith("drop_")}
        width = max(len(k) for k in counters)
        lines.append("counters:")
        lines += [f"  {k:<{width}} {v:>12}" for k, v in sorted(rest.items())]
        if drops:
            lines.append(f"drops ({sum(drops.values())}):")
            lines += [f"  {k:<{width}} {v:>12}" for k, v in sorted(drops.items())]
    return "\n".join(lines)


def _endpoint(addr: str, port: int) -> str:
    return hostport(addr, port)


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
            f"{'-':>6}  {origin}: {fw.get('rule', '')}")

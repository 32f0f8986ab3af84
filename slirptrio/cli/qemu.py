"""``slirptrio qemu [options] -- QEMU_COMMAND...``: QEMU with slirptrio for its user networking.

Theory of operation
-------------------
Prefixing a working QEMU command line is the whole migration. :func:`rewrite` finds every
user-mode network in the command and replaces it with a ``-netdev stream`` that connects to a
slirptrio stack listening on a unix socket in a private directory (mode 0700), keeping the
netdev's id so the ``-device ...,netdev=ID`` that uses it is untouched:

* ``-netdev user,id=ID,OPTS`` (also ``type=user``, and the JSON form) becomes
  ``-netdev stream,id=ID,server=off,addr.type=unix,addr.path=SOCK``; the stack gets ``OPTS``;
* ``-nic user,OPTS[,model=M][,mac=MAC]`` becomes that ``-netdev stream`` plus
  ``-net nic,netdev=ID[,model=M][,macaddr=MAC]`` — exactly what ``-nic`` does inside QEMU
  (a NIC of the board's default model when none is given; model aliases such as ``virtio``);
* ``-net user,OPTS`` (the legacy hub) becomes the stream joined to hub 0 by a ``hubport``;
* with no ``-net``, ``-nic``, ``-netdev`` nor ``-nodefaults``, a ``qemu-system-*`` command gets
  the default network QEMU would have added itself (``-net nic -net user``).

Everything else — other arguments, the environment, the terminal (stdin stays QEMU's, so a
serial console on stdio works), inherited file descriptors such as ``-netdev tap,fd=3`` — passes
through unchanged. Options QEMU would reject in a user netdev (and those slirptrio cannot
honour yet) are rejected before anything starts: one line on stderr, exit code 2.

The stacks start first (QEMU 7.2's stream client never retries), each with its journal, pcap
and control socket. QEMU runs as our child: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and
SIGUSR2 are passed on to it; when it exits the stacks stop, the journals are closed, where each
one is gets printed on stderr, and QEMU's exit status becomes ours (128+N if a signal N
killed it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import trio

from slirptrio.cli import statedir
from slirptrio.cli._common import (
    Parser,
    Subparsers,
    UserError,
    add_journal_options,
    journal_options,
    setup_logging,
)
from slirptrio.cli.session import default_journal_path
from slirptrio.config import Config, ConfigError, parse_user_options
from slirptrio.heap import keep_buffers_on_heap
from slirptrio.syntax.address import parse_upstream
from slirptrio.syntax.keyval import escape as _esc
from slirptrio.syntax.keyval import split_keyval as split_keyval

FORWARDED_SIGNALS = (
    signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
)
KILL_AFTER_S = 10.0
"""If we must stop QEMU ourselves: SIGTERM, then SIGKILL after this long."""

_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
_SHORT_BOOLS = {"restrict", "ipv4", "ipv6"}


class QemuArgError(ValueError):
    """A QEMU argument QEMU (or slirptrio) would refuse; the message names it."""


@dataclass
class UserNet:
    """One user-mode network of the command line, to be served by a stack."""

    id: str  # the netdev id QEMU sees
    name: str  # for messages and file names: the id, or nic0 / net0 / default
    options: str  # the -netdev user option string the stack gets
    config: Config
    origin: str  # the argument as given, for messages
    socket: str = ""
    extra: list[str] = field(default_factory=list)  # QEMU arguments added after the netdev


# ------------------------------------------------------------------------- QEMU's syntax


def _keyvals(text: str, opt: str) -> tuple[str, list[tuple[str, str]]]:
    """The type (implied first item, or ``type=``) and the other ``key=value`` items."""
    items = split_keyval(text)
    kind = ""
    out: list[tuple[str, str]] = []
    for i, item in enumerate(items):
        key, eq, value = item.partition("=")
        if not eq:
            if i == 0:
                kind = key
                continue
            if not key:
                raise QemuArgError(f"{opt} {text}: empty option (stray comma)")
            # QemuOpts' short booleans: "restrict" is restrict=on, "norestrict" off.
            if key in _SHORT_BOOLS:
                out.append((key, "on"))
            elif key.startswith("no") and key[2:] in _SHORT_BOOLS:
                out.append((key[2:], "off"))
            else:
                out.append((key, ""))
            continue
        if key == "type":
            kind = value
            continue
        out.append((key, value))
    return kind, out


def _json_options(obj: dict[str, Any], opt: str) -> tuple[str, list[tuple[str, str]]]:
    """A JSON ``-netdev`` as ``key=value`` items (lists such as hostfwd repeat the key)."""
    items: list[tuple[str, str]] = []
    for key, value in obj.items():
        if key == "type":
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, dict) and set(v) == {"str"}:
                v = v["str"]
            if isinstance(v, bool):
                items.append((key, "on" if v else "off"))
            elif isinstance(v, int | str):
                items.append((key, str(v)))
            else:
                raise QemuArgError(f"{opt}: {key!r} has an unsupported JSON value {v!r}")
    return str(obj.get("type", "")), items


def _user_config(items: list[tuple[str, str]], origin: str) -> tuple[str, Config]:
    options = ",".join(f"{k}={_esc(v)}" for k, v in items)
    for k, v in items:
        if not v and k not in ("hostname", "domainname"):
            raise QemuArgError(f"{origin}: option '{k}': expects key=value")
    try:
        return options, parse_user_options(options)
    except ConfigError as exc:
        raise QemuArgError(f"{origin}: {exc}") from None


def _take(items: list[tuple[str, str]], key: str) -> str | None:
    found = None
    for i in range(len(items) - 1, -1, -1):
        if items[i][0] == key:
            found = found if found is not None else items[i][1]
            del items[i]
    return found


@dataclass
class Rewrite:
    """The QEMU command with its user networks replaced, and those networks."""

    argv: list[str]
    nets: list[UserNet]


def _option_name(arg: str) -> str:
    """``--netdev`` and ``-netdev`` are the same option to QEMU."""
    return arg[1:] if arg.startswith("--") else arg


def rewrite(argv: Sequence[str], socket_for: Callable[[int, str], str]) -> Rewrite:
    """Replace every user-mode network in the QEMU command ``argv``.

    ``socket_for(index, name)`` gives the unix socket path for the index-th network.

    Raises:
      QemuArgError: a user netdev QEMU or slirptrio would refuse (the message names it).
    """
    argv = list(argv)
    out: list[str] = argv[:1]
    nets: list[UserNet] = []
    ids: set[str] = set()
    has_net = False
    nodefaults = False
    # First pass: every netdev id in use, so generated ones never collide.
    taken: set[str] = set()
    for i in range(1, len(argv) - 1):
        if _option_name(argv[i]) == "-netdev":
            text = argv[i + 1]
            if text.startswith("{"):
                with contextlib.suppress(ValueError, AttributeError):
                    taken.add(str(json.loads(text).get("id", "")))
            else:
                for item in split_keyval(text):
                    k, eq, v = item.partition("=")
                    if eq and k == "id":
                        taken.add(v)
    counters = {"nic": 0, "net": 0}

    def fresh(prefix: str) -> str:
        n = counters[prefix]
        while f"slirptrio-{prefix}{n}" in taken:
            n += 1
        counters[prefix] = n + 1
        taken.add(f"slirptrio-{prefix}{n}")
        return f"slirptrio-{prefix}{n}"

    def add(net_id: str, name: str, items: list[tuple[str, str]], origin: str) -> UserNet:
        if not _ID.match(net_id):
            raise QemuArgError(f"{origin}: Parameter 'id' expects an identifier")
        if net_id in ids:
            raise QemuArgError(f"{origin}: Duplicate ID '{net_id}' for netdev")
        ids.add(net_id)
        options, config = _user_config(items, origin)
        net = UserNet(net_id, name, options, config, origin)
        net.socket = socket_for(len(nets), name)
        nets.append(net)
        return net

    def stream(net: UserNet) -> str:
        return (f"stream,id={net.id},server=off,addr.type=unix,"
                f"addr.path={_esc(net.socket)}")

    i = 1
    while i < len(argv):
        arg = argv[i]
        name = _option_name(arg)
        if name == "-nodefaults":
            nodefaults = True
        if name == "-daemonize":
            raise QemuArgError("-daemonize: QEMU must stay slirptrio's child (its networks "
                               "stop with it); put slirptrio qemu in the background instead")
        if name not in ("-netdev", "-nic", "-net") or i + 1 >= len(argv):
            out.append(arg)
            i += 1
            continue
        has_net = True
        text = argv[i + 1]
        origin = f"{arg} {text}"
        i += 2
        if name == "-netdev" and text.startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                out += [arg, text]
                continue
            if not isinstance(obj, dict) or obj.get("type") != "user":
                out += [arg, text]
                continue
            _, items = _json_options(obj, arg)
        else:
            kind, items = _keyvals(text, arg)
            if kind != "user" or any(k in ("help", "?") for k, _v in items):
                out += [arg, text]
                continue
        if name == "-netdev":
            net_id = _take(items, "id")
            if net_id is None:
                raise QemuArgError(f"{origin}: Parameter 'id' is missing")
            net = add(net_id, net_id, items, origin)
            out += [arg, stream(net)]
        elif name == "-nic":
            model, mac = _take(items, "model"), _take(items, "mac")
            given = _take(items, "id")
            net = add(given or fresh("nic"), given or f"nic{len(nets)}", items, origin)
            nic = f"nic,netdev={net.id}"
            if model is not None:
                nic += f",model={_esc(model)}"
            if mac is not None:
                nic += f",macaddr={_esc(mac)}"
            out += ["-netdev", stream(net), "-net", nic]
        else:  # -net user: on hub 0, as QEMU's legacy -net puts it
            given = _take(items, "id") or _take(items, "name")
            net = add(fresh("net"), given or f"net{len(nets)}", items, origin)
            out += ["-netdev", stream(net), "-netdev",
                    f"hubport,id={net.id}-hub,hubid=0,netdev={net.id}"]
    if not has_net and not nodefaults and os.path.basename(argv[0]).startswith("qemu-system-"):
        net_id = fresh("net")
        net = add(net_id, "default", [], "(QEMU's default network)")
        out += ["-netdev", stream(net), "-net", f"nic,netdev={net.id}"]
    return Rewrite(out, nets)


# ------------------------------------------------------------------------------ the command


def add_parser(sub: Subparsers) -> None:
    q = sub.add_parser(
        "qemu",
        help="run QEMU with its -netdev user / -nic user served by slirptrio",
        description="Run QEMU_COMMAND with every -netdev user, -nic user and -net user "
        "replaced by a slirptrio stack (same options). QEMU's exit status is ours.",
        usage="slirptrio qemu [options] -- QEMU_COMMAND...",
    )
    q.add_argument("--journal", metavar="PATH",
                   help="journal directory; {id} is replaced by the netdev id (default: under "
                   "$XDG_STATE_HOME/slirptrio, ~/.local/state/slirptrio, one per netdev)")
    q.add_argument("--no-journal", action="store_true", help="do not write journals")
    q.add_argument("--pcap", metavar="PATH",
                   help="pcap file, {id} as for --journal (default: beside the journal)")
    q.add_argument("--no-pcap", action="store_true", help="do not write pcaps")
    add_journal_options(q, each=True)
    statedir.add_options(q)
    q.add_argument("--control", metavar="PATH",
                   help="control socket, {id} as for --journal (default: in the private "
                   "directory; printed at start)")
    q.add_argument("--dns-upstream", metavar="HOST[:PORT]", action="append",
                   help="resolver for the DNS relays (repeatable; default: resolv.conf's)")
    q.add_argument("--seed", type=int, help="PRNG seed (the n-th netdev gets SEED+n)")
    q.add_argument("--faults", metavar="FILE",
                   help="fault rules for every netdev, in force from the start (TOML)")
    q.add_argument("--join", metavar="CONTROL_OR_SOCKET",
                   help="attach the VM's user networks to a stack already running (its "
                   "control socket, or the unix socket it listens on) instead of starting one; "
                   "the VM's hostfwd rules are added to that stack and removed when QEMU ends "
                   "(they need the control socket and a guest address)")
    q.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing but errors (not even the journal paths at the end)")
    q.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    q.add_argument("qemu_command", nargs=argparse.REMAINDER, metavar="QEMU_COMMAND",
                   help="the QEMU command line, after --")


def _path_for(template: str, name: str, several: bool) -> str:
    if "{id}" in template:
        return template.replace("{id}", name)
    if not several:
        return template
    root, ext = os.path.splitext(template)
    return f"{root}-{name}{ext}"


def _written(path: str) -> bool:
    """Whether the journal (a directory of segments) or pcap at ``path`` holds anything."""
    from slirptrio.journal.format import segment_number

    try:
        if os.path.isdir(path):
            return any(segment_number(e.name) is not None and e.stat().st_size > 0
                       for e in os.scandir(path))
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]


def _inherited_fds() -> list[int]:
    """File descriptors we were given beyond 0-2 (``-netdev tap,fd=3``): QEMU gets them too.
    Everything Python opens itself is close-on-exec, so the inheritable ones are those."""
    fds = []
    for d in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            fd = int(n)
            with contextlib.suppress(OSError):
                if fd > 2 and os.get_inheritable(fd):
                    fds.append(fd)
        break
    return sorted(fds)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"slirptrio: {text}", file=sys.stderr, flush=True)


def command(args: argparse.Namespace, parser: Parser) -> int:
    inherited = _inherited_fds()
    qemu = list(args.qemu_command)
    if qemu and qemu[0] == "--":
        qemu = qemu[1:]
    if not qemu:
        parser.error("argument QEMU_COMMAND: give the QEMU command after --")
    upstreams: list[str] | None = None
    if args.dns_upstream:
        try:
            for u in args.dns_upstream:
                parse_upstream(u)
        except ValueError as exc:
            parser.error(f"argument --dns-upstream: {exc}")
        upstreams = list(args.dns_upstream)
    if args.join:
        setup_logging(args.verbose)
        return _join(args, qemu, inherited)
    journal_options(args, parser)
    from slirptrio.cli.run import read_faults

    args.fault_rules = read_faults(args.faults, parser)  # checked before QEMU starts
    run_dir = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    if not os.path.isdir(run_dir):
        run_dir = tempfile.gettempdir()
    private = tempfile.mkdtemp(prefix="slirptrio-", dir=run_dir)  # mode 0700
    try:
        try:
            plan = rewrite(qemu, lambda i, name: os.path.join(private, f"{i}.sock"))
        except QemuArgError as exc:
            raise UserError(str(exc)) from None
        from slirptrio.api import check_host_side
        from slirptrio.shell.descriptors import raise_nofile_limit

        for net in plan.nets:
            problem = check_host_side(net.config)
            if problem is not None:
                raise UserError(f"{net.origin}: {problem}")
        setup_logging(args.verbose)
        raise_nofile_limit()
        return _run(args, plan, private, upstreams, inherited)
    finally:
        shutil.rmtree(private, ignore_errors=True)


@dataclass
class _Files:
    journal: str | None
    pcap: str | None
    control: str


def _files(args: argparse.Namespace, net: UserNet, index: int, several: bool,
           private: str) -> _Files:
    name = _safe(net.name)
    journal = None
    if not args.no_journal:
        if args.journal:
            journal = _path_for(args.journal, name, several)
        else:
            journal = default_journal_path(f"-{name}")
    pcap = None
    if not args.no_pcap:
        if args.pcap:
            pcap = _path_for(args.pcap, name, several)
        elif journal is not None:
            pcap = os.path.splitext(journal)[0] + ".pcap"
    control = (_path_for(args.control, name, several) if args.control
               else os.path.join(private, f"{index}.ctl"))
    return _Files(journal, pcap, control)


def _run(args: argparse.Namespace, plan: Rewrite, private: str, upstreams: list[str] | None,
         inherited: list[int]) -> int:
    from slirptrio.api import open_stack

    several = len(plan.nets) > 1
    files = [_files(args, n, i, several, private) for i, n in enumerate(plan.nets)]
    try:
        retention = statedir.Retention((f.journal for f in files), args.state_max, args.keep)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    retention.before()
    opened: list[Any] = []
    status: list[int] = []
    qemu_words = plan.argv[:4]  # for 'slirptrio sessions': which QEMU it was
    early: list[int] = []  # a signal that came before QEMU started

    async def main() -> None:
        # Our signals are caught from the start: one that comes while the stacks start stops
        # us cleanly and QEMU is never run; once QEMU runs, they are passed on to it.
        with trio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
            async with trio.open_nursery() as nursery:
                watcher = trio.CancelScope()
                watcher_done = trio.Event()

                async def watch() -> None:
                    try:
                        with watcher:
                            async for sig in signals:
                                early.append(int(sig))
                                nursery.cancel_scope.cancel()
                                return
                    finally:
                        watcher_done.set()

                async def stop_watching() -> None:
                    watcher.cancel()
                    await watcher_done.wait()

                nursery.start_soon(watch)
                await _stacks_and_qemu(signals, stop_watching)
                nursery.cancel_scope.cancel()

    async def _stacks_and_qemu(
        signals: AsyncIterator[int], stop_watching: Callable[[], Awaitable[None]]
    ) -> None:
        async with contextlib.AsyncExitStack() as stacks:
            for i, (net, f) in enumerate(zip(plan.nets, files, strict=True)):
                stack = await stacks.enter_async_context(open_stack(
                    net.config, journal=f.journal, pcap=f.pcap,
                    seed=None if args.seed is None else args.seed + i,
                    dns_upstreams=upstreams,
                    meta={"qemu_netdev": net.id, "qemu_option": net.origin},
                    journal_max=args.journal_max, pcap_max=args.pcap_max,
                    journal_policy=args.journal_policy, journal_buffer=args.journal_buffer,
                    faults=args.fault_rules,
                    journal_overwrite=args.overwrite,
                ))
                opened.append(stack)
                retention.started(f.journal)
                await stack.listen_qemu("unix:" + net.socket)
                await stack.serve_control(f.control)
                fwd = "".join(f"; hostfwd {rule} on port {port}"
                              for rule, port in stack.hostfwds().items())
                _say(args.quiet, f"netdev {net.name}: control socket {f.control}{fwd}")
            await stop_watching()
            if not early:
                status.append(await _run_qemu(plan.argv, inherited, signals))
            for net, f, stack in zip(plan.nets, files, opened, strict=False):
                retention.closing(f.journal, stack, {
                    "netdev": net.id, "qemu_option": net.origin, "qemu_command": qemu_words,
                    "exit_status": status[0] if status else None})
        removed = retention.closed()
        for net, f in zip(plan.nets, files, strict=True):
            if f.journal in removed:
                _say(args.quiet, f"netdev {net.name}: nothing came from the guest; its "
                     "session was removed (--keep keeps such a session)")
                continue
            where = ", ".join(f"{k} {v}" for k, v in (("journal", f.journal), ("pcap", f.pcap))
                              if v and _written(v)) or "no journal, no pcap"
            _say(args.quiet, f"netdev {net.name}: {where}")

    keep_buffers_on_heap()
    trio.run(main)  # a stack that cannot start (a port in use ...) is the user's: exit 2
    if early:
        return 128 + early[0]
    return status[0] if status else 1


# ------------------------------------------------------------------------------- --join

_JOIN_FIELDS = ("hostfwd", "id")
"""What a joining VM's user netdev may set: the rest is the running stack's."""


async def _resolve_join(target: str) -> tuple[str, str | None]:
    """(the guest socket to connect QEMU to, the control socket or None) for ``--join``."""
    from slirptrio.shell.control import ControlError, request

    if not os.path.exists(target):
        raise UserError(f"--join {target}: no such socket")
    try:
        answer = await request(target, {"cmd": "info"}, timeout=5.0)
    except (OSError, ControlError, ValueError, trio.TooSlowError):
        return target, None  # not a control socket: the guest socket itself
    if not answer.get("ok"):
        raise UserError(f"--join {target}: {answer.get('error', 'the stack refused info')}")
    for addr in answer.get("listen") or []:
        if isinstance(addr, str) and addr.startswith("unix:"):
            return addr[5:], target
    raise UserError(f"--join {target}: that stack listens on no unix socket for QEMU "
                    "(start it with --listen unix:PATH)")


def _join_rules(plan: Rewrite, control: str | None) -> list[str]:
    """The joining VM's hostfwd rules; UserError for options the running stack owns."""
    from slirptrio.syntax.forward import parse_hostfwd

    default = Config()
    rules: list[str] = []
    for net in plan.nets:
        for f in fields(Config):
            if f.name not in _JOIN_FIELDS and getattr(net.config, f.name) != getattr(default,
                                                                                     f.name):
                raise UserError(f"{net.origin}: --join: {f.name} is set by the running stack "
                                "(a joining VM may give only hostfwd)")
        for rule in net.config.hostfwd:
            if not parse_hostfwd(rule).guest_addr:
                raise UserError(f"{net.origin}: --join: hostfwd={rule} needs the guest address "
                                "(the VM's own, e.g. tcp::2222-10.0.2.16:22)")
            rules.append(rule)
    if rules and control is None:
        raise UserError("--join: hostfwd needs the running stack's control socket (join "
                        "through it rather than through the guest socket)")
    return rules


def _join(args: argparse.Namespace, qemu: list[str], inherited: list[int]) -> int:
    """``slirptrio qemu --join``: QEMU's user networks connect to a running stack."""
    from slirptrio.shell.control import request

    status: list[int] = []

    async def main() -> None:
        guest_sock, control = await _resolve_join(args.join)
        try:
            plan = rewrite(qemu, lambda i, name: guest_sock)
        except QemuArgError as exc:
            raise UserError(str(exc)) from None
        rules = _join_rules(plan, control)
        added: list[str] = []
        with trio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
            try:
                for rule in rules:
                    assert control is not None
                    answer = await request(control, {"cmd": "hostfwd-add", "rule": rule})
                    if not answer.get("ok"):
                        raise UserError(f"hostfwd={rule}: {answer.get('error')}")
                    added.append(rule)
                    _say(args.quiet, f"hostfwd {rule} on port {answer.get('port')}")
                _say(args.quiet, f"joined the stack at {args.join}")
                status.append(await _run_qemu(plan.argv, inherited, signals))
            finally:
                with trio.CancelScope(shield=True):
                    for rule in added:  # the stack may be gone already: nothing to remove
                        with contextlib.suppress(Exception):
                            assert control is not None
                            await request(control, {"cmd": "hostfwd-remove", "rule": rule})

    trio.run(main)
    return status[0] if status else 1


async def _run_qemu(argv: list[str], inherited: list[int], signals: AsyncIterator[int]) -> int:
    """Run QEMU (stdin, stdout, stderr and ``inherited`` fds are its too), passing the
    ``signals`` we receive on; return its exit status (128+N for signal N)."""
    try:
        proc = await trio.lowlevel.open_process(argv, pass_fds=inherited)
    except OSError as exc:
        print(f"slirptrio: error: cannot run {argv[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    try:
        async with trio.open_nursery() as nursery:

            async def forward() -> None:
                async for sig in signals:
                    with contextlib.suppress(ProcessLookupError, OSError):
                        proc.send_signal(sig)

            nursery.start_soon(forward)
            await proc.wait()
            nursery.cancel_scope.cancel()
    finally:
        if proc.returncode is None:  # we are stopping for another reason: so does QEMU
            with trio.CancelScope(shield=True):
                proc.terminate()
                with trio.move_on_after(KILL_AFTER_S):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    rc = proc.returncode
    assert rc is not None
    return rc if rc >= 0 else 128 - rc

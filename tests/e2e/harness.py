"""End-to-end harness: a real Linux guest (a network namespace with a tap) attached to slirptrio.

Theory of operation
-------------------
A :class:`Topology` builds three network namespaces, all named after this process and a counter
so concurrent or crashed runs never collide::

    guest ns                         host ns                               deadend ns
    lo, tap0 <-> QEMU relay ==unix==> slirptrio, test servers
                                      lo, veth0 203.0.113.1/24 <--veth--> veth1 203.0.113.2/24
                                                2001:db8::1/64                  2001:db8::2/64
                                      default via 203.0.113.2 and 2001:db8::2

* The guest is the kernel's own TCP/IP stack on ``tap0``; QEMU (``-machine none``, a hub joining
  ``-netdev tap`` and ``-netdev stream|dgram``) relays its frames to slirptrio over a unix socket,
  which reaches across namespaces.
* slirptrio and test servers run in the host namespace. Its only routes out (IPv4 and IPv6)
  lead into the dead end, so NAT toward any "outside" address can reach only servers on
  203.0.113.1 (2001:db8::1) or nothing.
  They also run in a private mount namespace whose ``/etc/resolv.conf`` names 127.0.0.1, so no
  lookup reaches the machine's real resolver.
* Every process is tracked by PID and stopped on :meth:`Topology.close`; every wait is bounded;
  namespaces and the temporary directory are removed even when a test fails.

Everything here is synchronous (subprocess and threads), so tests of any protocol can use it.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, TextIO

REPO_ROOT = Path(__file__).resolve().parents[2]

HOST_ADDR = "203.0.113.1"
DEADEND_ADDR = "203.0.113.2"
PREFIX_LEN = 24
HOST_ADDR6 = "2001:db8::1"
DEADEND_ADDR6 = "2001:db8::2"
PREFIX_LEN6 = 64

NS_PREFIX = "ste2e"
TMP_ROOT = "/tmp"
KEEP_MARKER = ".keep"
TAP = "tap0"

Mode = Literal["listen", "connect", "dgram"]
MODES: tuple[Mode, ...] = ("listen", "connect", "dgram")

REQUIRED_TOOLS = ("ip", "unshare", "mount", "qemu-system-x86_64", "busybox", "tshark")

_counter = itertools.count(1)


class HarnessError(AssertionError):
    """A step of the harness failed; the message carries the command and its output."""


def missing_tools(tools: Sequence[str] = REQUIRED_TOOLS) -> list[str]:
    """Names of the tools in ``tools`` not found on PATH (also in /usr/sbin and /sbin)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [t for t in tools if shutil.which(t, path=path) is None]


def skip_reason() -> str | None:
    """Why end-to-end tests cannot run on this machine, or None if they can."""
    if os.geteuid() != 0:
        return "e2e tests need root (network namespaces, tap devices)"
    missing = missing_tools()
    if missing:
        return "e2e tests need " + ", ".join(missing) + " (run tests/run.sh to install them)"
    if not os.path.exists("/dev/net/tun"):
        return "e2e tests need /dev/net/tun"
    return None


def probe_namespaces() -> str | None:
    """Why network namespaces with a tap cannot be made here, or None if they can."""
    ns = f"{NS_PREFIX}-{os.getpid()}-0-g"
    try:
        run(["ip", "netns", "add", ns], 10)
        run(["ip", "netns", "exec", ns, "ip", "tuntap", "add", "dev", TAP, "mode", "tap"], 10)
    except HarnessError as exc:
        return "e2e tests cannot create a namespace with a tap: " + str(exc).strip()
    finally:
        delete_namespace(ns)
    return None


def _safe(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", tag)


def _fmt(argv: Sequence[str]) -> str:
    return " ".join(argv)


def run(
    argv: Sequence[str],
    timeout: float,
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion within ``timeout`` seconds, capturing text output.

    Raises:
        HarnessError: on timeout, or on a non-zero exit when ``check`` is true.
    """
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raw = exc.stdout
        out = raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "")
        raise HarnessError(f"timed out after {timeout}s: {_fmt(argv)}\n{out}") from None
    if check and proc.returncode != 0:
        raise HarnessError(
            f"exit {proc.returncode}: {_fmt(argv)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


class Proc:
    """A background process: output collected line by line (and logged), stopped by PID."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._lines: list[tuple[str, str]] = []
        self._cond = threading.Condition()
        self._log: TextIO = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop
        self._log.write(f"$ {_fmt(self.argv)}\n")
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            env=None if env is None else dict(env),
        )
        self._readers = [
            threading.Thread(target=self._pump, args=(stream, tag), daemon=True)
            for stream, tag in ((self.popen.stdout, "out"), (self.popen.stderr, "err"))
        ]
        for reader in self._readers:
            reader.start()
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self, stream: TextIO | None, tag: str) -> None:
        if stream is None:
            return
        for line in stream:
            with self._cond:
                self._lines.append((tag, line.rstrip("\n")))
                if not self._log.closed:
                    self._log.write(f"[{tag}] {line}")
                    self._log.flush()
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def lines(self, tag: str | None = None) -> list[str]:
        """Output lines so far; ``tag`` "out" or "err" selects one stream."""
        with self._cond:
            return [line for t, line in self._lines if tag is None or t == tag]

    def output(self) -> str:
        """All output so far, stderr lines marked, for error messages."""
        with self._cond:
            return "\n".join(line if t == "out" else "! " + line for t, line in self._lines)

    def wait_line(self, needle: str, timeout: float, tag: str | None = "out") -> str:
        """Wait for an output line containing ``needle``; return it.

        Raises:
            HarnessError: if the process exits or ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, line in self._lines:
                    if (tag is None or t == tag) and needle in line:
                        return line
                if self.popen.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise HarnessError(
                        f"{self.name} exited {self.popen.returncode} before printing {needle!r}:"
                        f"\n{self.output()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(
                        f"{self.name} did not print {needle!r} in {timeout}s:\n{self.output()}"
                    )
                self._cond.wait(min(left, 0.1))

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; return its exit code.

        Raises:
            HarnessError: if it is still running after ``timeout`` seconds (it is then killed).
        """
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(sig=signal.SIGKILL)
            raise HarnessError(f"{self.name} still running after {timeout}s") from None
        self._finish()
        return code

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` (then SIGKILL after ``timeout`` s) to this PID; return the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5.0)
        self._finish()
        assert self.returncode is not None
        return self.returncode

    def _finish(self) -> None:
        self.returncode = self.popen.returncode
        for reader in self._readers:
            reader.join(2.0)
        with self._cond:
            if not self._log.closed:
                self._log.write(f"[exit {self.returncode}]\n")
                self._log.close()


@dataclass(frozen=True)
class Transport:
    """How QEMU and slirptrio meet: unix stream (either side listening) or unix datagrams."""

    mode: Mode
    path: Path
    """The stream socket (listen/connect), or slirptrio's own datagram socket (dgram)."""
    peer: Path | None = None
    """QEMU's own datagram socket (dgram only)."""

    def slirptrio_args(self) -> list[str]:
        if self.mode == "listen":
            return ["--listen", f"unix:{self.path}"]
        if self.mode == "connect":
            return ["--connect", f"unix:{self.path}"]
        assert self.peer is not None
        return ["--dgram", f"unix:{self.path},unix:{self.peer}"]

    def qemu_netdev(self, netdev_id: str) -> str:
        if self.mode == "listen":
            return f"stream,id={netdev_id},server=off,addr.type=unix,addr.path={self.path}"
        if self.mode == "connect":
            return f"stream,id={netdev_id},server=on,addr.type=unix,addr.path={self.path}"
        assert self.peer is not None
        return (
            f"dgram,id={netdev_id},local.type=unix,local.path={self.peer},"
            f"remote.type=unix,remote.path={self.path}"
        )


@dataclass
class Slirptrio:
    """A running ``slirptrio run`` in the host namespace."""

    proc: Proc
    transport: Transport
    options: str
    journal: Path
    pcap: Path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; return the exit code (0 for a clean shutdown)."""
        return self.proc.stop(signal.SIGTERM, timeout)


@dataclass
class Relay:
    """A QEMU process in the guest namespace relaying ``tap0`` to slirptrio."""

    proc: Proc
    transport: Transport
    pcap: Path | None
    """QEMU's own filter-dump capture of the slirptrio-facing netdev."""

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        return self.proc.stop(sig, timeout)


@dataclass(frozen=True)
class Lease:
    """What udhcpc received, as its script saw it."""

    ip: str
    subnet: str
    routers: list[str]
    dns: list[str]
    mtu: int | None
    hostname: str
    domain: str
    raw: dict[str, str] = field(default_factory=dict)

    @property
    def router(self) -> str:
        return self.routers[0] if self.routers else ""

    @classmethod
    def parse(cls, text: str) -> Lease:
        raw: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                raw[key] = value
        mtu = raw.get("mtu", "")
        return cls(
            ip=raw.get("ip", ""),
            subnet=raw.get("subnet", ""),
            routers=raw.get("router", "").split(),
            dns=raw.get("dns", "").split(),
            mtu=int(mtu) if mtu.isdigit() else None,
            hostname=raw.get("hostname", ""),
            domain=raw.get("domain", ""),
            raw=raw,
        )


# The udhcpc hook: applies a lease to the interface and records the variables udhcpc passed.
# It writes the guest's resolv.conf to a file of ours (bind-mounted by guest_run), never /etc.
_UDHCPC_SCRIPT = """\
#!/bin/sh
LEASE='{lease}'
RESOLV='{resolv}'
echo "$1 ip=${{ip-}} router=${{router-}} dns=${{dns-}}" >> '{events}'
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${{mask:-$subnet}}" ${{broadcast:+broadcast "$broadcast"}} dev "$interface"
    if [ -n "${{mtu-}}" ]; then ip link set dev "$interface" mtu "$mtu"; fi
    if [ -n "${{router-}}" ]; then
        set -- $router
        ip route replace default via "$1" dev "$interface"
    fi
    {{
        if [ -n "${{domain-}}" ]; then echo "search $domain"; fi
        for s in ${{dns-}}; do echo "nameserver $s"; done
    }} > "$RESOLV"
    for k in ip subnet mask router dns mtu hostname domain broadcast lease serverid; do
        eval "v=\\${{$k-}}"
        printf '%s=%s\\n' "$k" "$v"
    done > "$LEASE.tmp"
    mv "$LEASE.tmp" "$LEASE"
    ;;
esac
exit 0
"""


_HUB_FD0 = 10
"""The descriptor the first extra guest's tap gets in a hub relay (then 11, 12, ...)."""

# Opens tap argv[1] in the current namespace as descriptor argv[2], then execs argv[3:].
_OPEN_TAP = """\
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000))
want = int(sys.argv[2])
os.dup2(fd, want)
os.close(fd)
os.set_inheritable(want, True)
os.execvp(sys.argv[3], sys.argv[3:])
"""


class Topology:
    """Guest, host and dead-end namespaces for one test, plus everything started in them.

    Use as a context manager (or call :meth:`close`); cleanup is idempotent.
    """

    def __init__(self, tag: str = "t", keep_dir: bool | None = None) -> None:
        n = next(_counter)
        base = f"{NS_PREFIX}-{os.getpid()}-{n}"
        self.host_ns = f"{base}-h"
        self.guest_ns = f"{base}-g"
        self.dead_ns = f"{base}-d"
        # Short, under /tmp: unix socket paths in it must stay below 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix=f"{base}-{_safe(tag)[:12]}-", dir=TMP_ROOT))
        self.keep_dir = (
            os.environ.get("SLIRPTRIO_E2E_KEEP") == "1" if keep_dir is None else keep_dir
        )
        self.host_resolv = self.dir / "host-resolv.conf"
        self.guest_resolv = self.dir / "guest-resolv.conf"
        self.lease_file = self.dir / "lease.env"
        self.udhcpc_events = self.dir / "udhcpc-events.log"
        self.udhcpc_script = self.dir / "udhcpc.sh"
        self.procs: list[Proc] = []
        self._seq = itertools.count(1)
        self._namespaces: list[str] = []
        self._closed = False
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # -- construction ------------------------------------------------------------------------

    def _build(self) -> None:
        self.host_resolv.write_text("nameserver 127.0.0.1\n")
        self.guest_resolv.write_text("nameserver 127.0.0.1\n")
        self.udhcpc_script.write_text(
            _UDHCPC_SCRIPT.format(
                lease=self.lease_file, resolv=self.guest_resolv, events=self.udhcpc_events
            )
        )
        self.udhcpc_script.chmod(0o755)
        for ns in (self.host_ns, self.guest_ns, self.dead_ns):
            run(["ip", "netns", "add", ns], 10)
            self._namespaces.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"], 10)
        h, d, g = self.host_ns, self.dead_ns, self.guest_ns
        run(["ip", "-n", h, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
             "netns", d], 10)
        run(["ip", "-n", h, "addr", "add", f"{HOST_ADDR}/{PREFIX_LEN}", "dev", "veth0"], 10)
        run(["ip", "-n", d, "addr", "add", f"{DEADEND_ADDR}/{PREFIX_LEN}", "dev", "veth1"], 10)
        run(["ip", "-n", h, "link", "set", "veth0", "up"], 10)
        run(["ip", "-n", d, "link", "set", "veth1", "up"], 10)
        run(["ip", "-n", h, "route", "add", "default", "via", DEADEND_ADDR], 10)
        # IPv6 the same way; nodad: usable at once (no tentative phase for servers to trip on).
        run(["ip", "-n", h, "addr", "add", f"{HOST_ADDR6}/{PREFIX_LEN6}", "dev", "veth0",
             "nodad"], 10)
        run(["ip", "-n", d, "addr", "add", f"{DEADEND_ADDR6}/{PREFIX_LEN6}", "dev", "veth1",
             "nodad"], 10)
        run(["ip", "-n", h, "-6", "route", "add", "default", "via", DEADEND_ADDR6], 10)
        run(["ip", "netns", "exec", g, "ip", "tuntap", "add", "dev", TAP, "mode", "tap"], 10)
        run(["ip", "-n", g, "link", "set", TAP, "up"], 10)
        for ns in (h, g):
            run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                 "net.ipv4.ping_group_range=0 2147483647"], 10)
        # Neither the guest nor the dead end may pass anything on.
        for ns in (g, d):
            run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0"], 10)
            run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                 "net.ipv6.conf.all.forwarding=0"], 10)

    # -- running commands --------------------------------------------------------------------

    @staticmethod
    def _in_ns(ns: str, resolv: Path, argv: Sequence[str]) -> list[str]:
        # ip netns exec, unshare and sh all exec in place, so the PID we get is the command's.
        return [
            "ip", "netns", "exec", ns,
            "unshare", "-m", "--propagation", "private",
            "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv),
            *argv,
        ]  # fmt: skip

    def host_cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the host namespace with the loopback-only resolv.conf."""
        return self._in_ns(self.host_ns, self.host_resolv, argv)

    def guest_cmd(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the guest namespace with the resolv.conf of its lease."""
        return self._in_ns(self.guest_ns, self.guest_resolv, argv)

    def host_run(
        self, argv: Sequence[str], timeout: float = 30.0, *, check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion in the host namespace."""
        return run(self.host_cmd(argv), timeout, check=check, input=input)

    def guest_run(
        self, argv: Sequence[str], timeout: float = 30.0, *, check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command to completion in the guest namespace."""
        return run(self.guest_cmd(argv), timeout, check=check, input=input)

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start an already wrapped command in the background, tracked for cleanup."""
        proc = Proc(name, argv, self.dir / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def host_spawn(self, name: str, argv: Sequence[str]) -> Proc:
        """Start a server (or anything) in the background in the host namespace."""
        return self.spawn(name, self.host_cmd(argv))

    def guest_spawn(self, name: str, argv: Sequence[str]) -> Proc:
        """Start a command in the background in the guest namespace."""
        return self.spawn(name, self.guest_cmd(argv))

    def wait_listening(
        self, port: int, *, where: Literal["host", "guest"] = "host", udp: bool = False,
        timeout: float = 10.0,
    ) -> None:
        """Wait until something listens on ``port`` (TCP, or bound UDP) in a namespace.

        Raises:
            HarnessError: after ``timeout`` seconds.
        """
        ns = self.host_ns if where == "host" else self.guest_ns
        argv = ["ip", "netns", "exec", ns, "ss", "-H", "-n", "-u" if udp else "-t",
                "-a" if udp else "-l", f"sport = :{port}"]
        deadline = time.monotonic() + timeout
        while not run(argv, 10).stdout.strip():
            if time.monotonic() > deadline:
                raise HarnessError(f"nothing listens on port {port} in the {where} namespace")
            time.sleep(0.05)

    # -- slirptrio and the relay -------------------------------------------------------------

    def transport(self, mode: Mode) -> Transport:
        """The transport of ``mode`` for this topology (same paths on every call)."""
        if mode == "dgram":
            return Transport("dgram", self.dir / "st.dgram", self.dir / "qemu.dgram")
        return Transport(mode, self.dir / f"{mode}.sock")

    def start_slirptrio(
        self,
        mode: Mode | Transport,
        options: str = "",
        *,
        seed: int | None = None,
        extra_args: Sequence[str] = (),
        verbose: int = 1,
        ready_timeout: float = 30.0,
        prefix: Sequence[str] = (),
    ) -> Slirptrio:
        """Start ``python -m slirptrio run`` in the host namespace and wait for ``ready``.

        ``prefix`` runs it through a command that execs the rest in place (``prlimit
        --nofile=64 --``, ``sh -c 'umask 000 && exec "$@"' sh``): the PID stays slirptrio's.
        """
        transport = mode if isinstance(mode, Transport) else self.transport(mode)
        n = next(self._seq)
        journal = self.dir / f"slirptrio-{n}.journal"
        pcap = self.dir / f"slirptrio-{n}.pcap"
        argv = [
            *prefix, sys.executable, "-m", "slirptrio", "run", *transport.slirptrio_args(),
            "--journal", str(journal), "--pcap", str(pcap),
        ]  # fmt: skip
        if seed is not None:
            argv += ["--seed", str(seed)]
        if verbose:
            argv.append("-" + "v" * verbose)
        argv += [*extra_args, options]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        proc = self.spawn(f"slirptrio-{n}", self.host_cmd(argv), env)
        proc.wait_line("slirptrio: ready", ready_timeout)
        return Slirptrio(proc, transport, options, journal, pcap)

    def start_relay(
        self, mode: Mode | Transport, *, dump: bool = True, carrier_timeout: float = 15.0
    ) -> Relay:
        """Start QEMU in the guest namespace joining ``tap0`` and the transport on a hub.

        Returns once QEMU holds the tap (its carrier is up). In "listen" and "dgram" mode
        slirptrio must already be running: QEMU 7.2's stream client never retries.
        """
        transport = mode if isinstance(mode, Transport) else self.transport(mode)
        n = next(self._seq)
        if transport.mode == "dgram":
            assert transport.peer is not None
            transport.peer.unlink(missing_ok=True)
        elif transport.mode == "connect":
            transport.path.unlink(missing_ok=True)
        pcap = self.dir / f"qemu-{n}.pcap" if dump else None
        argv = [
            "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
            "-no-user-config",
            "-netdev", f"tap,id=t0,ifname={TAP},script=no,downscript=no",
            "-netdev", transport.qemu_netdev("b0"),
            "-netdev", "hubport,id=p0,hubid=0,netdev=t0",
            "-netdev", "hubport,id=p1,hubid=0,netdev=b0",
        ]  # fmt: skip
        if pcap is not None:
            argv += ["-object", f"filter-dump,id=fd0,netdev=b0,file={pcap}"]
        proc = self.spawn(f"qemu-{n}", ["ip", "netns", "exec", self.guest_ns, *argv])
        relay = Relay(proc, transport, pcap)
        deadline = time.monotonic() + carrier_timeout
        while not self._tap_carrier():
            if not proc.alive():
                raise HarnessError(f"QEMU exited {proc.popen.poll()}:\n{proc.output()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"QEMU did not open {TAP} in {carrier_timeout}s:\n"
                                   + proc.output())
            time.sleep(0.05)
        return relay

    def _tap_carrier(self) -> bool:
        out = run(["ip", "-n", self.guest_ns, "-o", "link", "show", TAP], 10).stdout
        flags = re.search(r"<([^>]*)>", out)
        return flags is not None and "LOWER_UP" in flags.group(1).split(",")

    def attach(
        self, mode: Mode, options: str = "", *, seed: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> tuple[Slirptrio, Relay]:
        """Start slirptrio, then the relay (the order every mode accepts)."""
        st = self.start_slirptrio(mode, options, seed=seed, extra_args=extra_args)
        return st, self.start_relay(st.transport)

    # -- guest tools -------------------------------------------------------------------------

    def udhcpc(self, timeout: float = 30.0, extra_args: Sequence[str] = ()) -> Lease:
        """Run busybox udhcpc on the guest's tap until it holds a lease; return the lease.

        Raises:
            HarnessError: if no lease was obtained.
        """
        self.lease_file.unlink(missing_ok=True)
        argv = [
            "busybox", "udhcpc", "-i", TAP, "-n", "-q", "-f", "-t", "5", "-T", "1",
            "-O", "mtu", "-s", str(self.udhcpc_script), *extra_args,
        ]  # fmt: skip
        proc = self.guest_run(argv, timeout, check=False)
        if proc.returncode != 0 or not self.lease_file.exists():
            events = self.udhcpc_events.read_text() if self.udhcpc_events.exists() else ""
            raise HarnessError(
                f"udhcpc got no lease (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
                f"script events:\n{events}"
            )
        return Lease.parse(self.lease_file.read_text())

    def ping(
        self, addr: str, count: int = 3, wait: int = 2, timeout: float = 30.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``busybox ping -c COUNT -W WAIT ADDR`` from the guest."""
        argv = ["busybox", "ping", "-c", str(count), "-W", str(wait), addr]
        return self.guest_run(argv, timeout, check=check)

    def slaac(
        self, prefix: str = "fec0:", timeout: float = 30.0, *, default_route: bool = True
    ) -> tuple[str, str]:
        """Turn IPv6 on for the guest's tap (router advertisements accepted) and wait until
        it holds a SLAAC address starting with ``prefix`` past duplicate address detection,
        and (if ``default_route``) a default route; return (the address, the default router,
        "" if none).

        Raises:
            HarnessError: if either is missing after ``timeout`` seconds.
        """
        for key, value in (("disable_ipv6", "0"), ("accept_ra", "1"), ("autoconf", "1")):
            run(["ip", "netns", "exec", self.guest_ns, "sysctl", "-q", "-w",
                 f"net.ipv6.conf.{TAP}.{key}={value}"], 10)
        deadline = time.monotonic() + timeout
        addr = router = ""
        while True:
            out = run(["ip", "-n", self.guest_ns, "-6", "-o", "addr", "show", "dev", TAP], 10)
            for line in out.stdout.splitlines():
                m = re.search(r"inet6 (\S+)/\d+", line)
                if m and m.group(1).startswith(prefix) and "tentative" not in line:
                    addr = m.group(1)
            route = run(["ip", "-n", self.guest_ns, "-6", "route", "show", "default"], 10)
            m = re.search(r"default via (\S+)", route.stdout)
            router = m.group(1) if m else ""
            if addr and (router or not default_route):
                return addr, router
            if time.monotonic() > deadline:
                raise HarnessError(f"no SLAAC address/default route in {timeout}s:\n"
                                   f"{out.stdout}{route.stdout}")
            time.sleep(0.1)

    def ping6(
        self, addr: str, count: int = 3, wait: int = 2, timeout: float = 30.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """``busybox ping6 -c COUNT -W WAIT ADDR`` from the guest."""
        argv = ["busybox", "ping6", "-c", str(count), "-W", str(wait), addr]
        return self.guest_run(argv, timeout, check=check)

    # -- more guests on the same hub --------------------------------------------------------

    def add_guest(self, tag: str = "g2") -> Topology:
        """Another kernel guest: a namespace of its own with its own ``tap0``, DHCP script,
        lease file and resolv.conf, for a hub relay (:meth:`start_hub_relay`) to join.

        Returns a view of this topology whose ``guest_*`` methods, :meth:`udhcpc`,
        :meth:`ping`, :meth:`ping6` and :meth:`slaac` act on the new guest; everything else
        (host namespace, processes, cleanup) is shared with this topology, which removes the
        new namespace on :meth:`close`. Close this topology, not the view.
        """
        ns = f"{NS_PREFIX}-{os.getpid()}-{next(_counter)}-g"  # swept like any guest's
        sub = self.dir / _safe(tag)[:12]
        sub.mkdir()
        view = copy.copy(self)
        view.guest_ns = ns
        view.guest_resolv = sub / "guest-resolv.conf"
        view.lease_file = sub / "lease.env"
        view.udhcpc_events = sub / "udhcpc-events.log"
        view.udhcpc_script = sub / "udhcpc.sh"
        view.guest_resolv.write_text("nameserver 127.0.0.1\n")
        view.udhcpc_script.write_text(
            _UDHCPC_SCRIPT.format(
                lease=view.lease_file, resolv=view.guest_resolv, events=view.udhcpc_events
            )
        )
        view.udhcpc_script.chmod(0o755)
        run(["ip", "netns", "add", ns], 10)
        self._namespaces.append(ns)  # the shared list: close() deletes it
        run(["ip", "-n", ns, "link", "set", "lo", "up"], 10)
        run(["ip", "netns", "exec", ns, "ip", "tuntap", "add", "dev", TAP, "mode", "tap"], 10)
        run(["ip", "-n", ns, "link", "set", TAP, "up"], 10)
        for key, value in (("net.ipv4.ping_group_range", "0 2147483647"),
                           ("net.ipv4.ip_forward", "0"), ("net.ipv6.conf.all.forwarding", "0")):
            run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}"], 10)
        return view

    def start_hub_relay(
        self, mode: Mode | Transport, others: Sequence[Topology], *, dump: bool = True,
        carrier_timeout: float = 15.0,
    ) -> Relay:
        """Start one QEMU joining this guest's ``tap0``, the ``tap0`` of every guest in
        ``others`` (views from :meth:`add_guest`) and the transport on hub 0: the seeds'
        several-VMs-on-one-user-network topology.

        QEMU runs in this guest's namespace; each other tap is opened in its own namespace
        and handed to QEMU as an inherited descriptor (``-netdev tap,fd=N``). Returns once
        every tap's carrier is up. Like :meth:`start_relay`, in "listen" and "dgram" mode
        slirptrio must already be running.
        """
        transport = mode if isinstance(mode, Transport) else self.transport(mode)
        n = next(self._seq)
        if transport.mode == "dgram":
            assert transport.peer is not None
            transport.peer.unlink(missing_ok=True)
        elif transport.mode == "connect":
            transport.path.unlink(missing_ok=True)
        pcap = self.dir / f"qemu-{n}.pcap" if dump else None
        argv = [
            "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
            "-no-user-config",
            "-netdev", f"tap,id=t0,ifname={TAP},script=no,downscript=no",
            "-netdev", "hubport,id=p0,hubid=0,netdev=t0",
        ]  # fmt: skip
        for i, _other in enumerate(others, 1):
            argv += ["-netdev", f"tap,id=t{i},fd={_HUB_FD0 + i - 1}",
                     "-netdev", f"hubport,id=p{i},hubid=0,netdev=t{i}"]
        k = len(others) + 1
        argv += ["-netdev", transport.qemu_netdev("b0"),
                 "-netdev", f"hubport,id=p{k},hubid=0,netdev=b0"]
        if pcap is not None:
            argv += ["-object", f"filter-dump,id=fd0,netdev=b0,file={pcap}"]
        # Each other guest's tap is opened inside its namespace by a chain of small programs
        # that exec in place (the PID stays QEMU's); the last one enters this guest's.
        cmd = ["nsenter", f"--net=/run/netns/{self.guest_ns}", *argv]
        for i, other in reversed(list(enumerate(others))):
            cmd = ["ip", "netns", "exec", other.guest_ns, sys.executable, "-c", _OPEN_TAP,
                   TAP, str(_HUB_FD0 + i), *cmd]
        proc = self.spawn(f"qemu-hub-{n}", cmd)
        relay = Relay(proc, transport, pcap)
        deadline = time.monotonic() + carrier_timeout
        while not all(t._tap_carrier() for t in (self, *others)):
            if not proc.alive():
                raise HarnessError(f"QEMU exited {proc.popen.poll()}:\n{proc.output()}")
            if time.monotonic() > deadline:
                raise HarnessError(f"QEMU did not open every {TAP} in {carrier_timeout}s:\n"
                                   + proc.output())
            time.sleep(0.05)
        return relay

    def guest_mac(self) -> str:
        """The MAC address of this guest's ``tap0``."""
        out = run(["ip", "-n", self.guest_ns, "-o", "link", "show", TAP], 10).stdout
        m = re.search(r"link/ether (\S+)", out)
        if m is None:
            raise HarnessError(f"no MAC on {TAP}: {out}")
        return m.group(1)

    # -- teardown ----------------------------------------------------------------------------

    def logs(self) -> str:
        """Every tracked process's output, for a failure report."""
        parts = []
        for proc in self.procs:
            parts.append(f"--- {proc.name} (pid {proc.pid}, exit {proc.popen.poll()})\n"
                         + proc.output())
        if self.udhcpc_events.exists():
            parts.append("--- udhcpc script events\n" + self.udhcpc_events.read_text())
        return "\n".join(parts)

    def close(self) -> None:
        """Stop every process, delete the namespaces and (unless kept) the directory."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(signal.SIGTERM, 5.0)
        for ns in self._namespaces:
            delete_namespace(ns)
        if self.keep_dir:
            with contextlib.suppress(OSError):
                (self.dir / KEEP_MARKER).touch()
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def delete_namespace(ns: str) -> None:
    """Kill whatever still runs in ``ns`` (by PID) and delete it; never raises."""
    with contextlib.suppress(Exception):
        pids = run(["ip", "netns", "pids", ns], 10, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", ns], 10, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces and directories left by harness runs whose process is gone.

    Directories kept on purpose (``SLIRPTRIO_E2E_KEEP=1``) stay. Returns what was removed.
    """
    removed = []
    try:
        names = run(["ip", "netns", "list"], 10, check=False).stdout.split("\n")
    except HarnessError:
        names = []
    for line in names:
        m = re.match(rf"({NS_PREFIX}-(\d+)-\d+-[hgd])\b", line)
        if m is None or os.path.exists(f"/proc/{m.group(2)}"):
            continue
        delete_namespace(m.group(1))
        removed.append(m.group(1))
    for path in Path(TMP_ROOT).glob(f"{NS_PREFIX}-*-*"):
        m = re.match(rf"{NS_PREFIX}-(\d+)-", path.name)
        if m is None or not path.is_dir() or os.path.exists(f"/proc/{m.group(1)}"):
            continue
        if not (path / KEEP_MARKER).exists():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


@contextlib.contextmanager
def topology(tag: str = "t") -> Iterator[Topology]:
    """A :class:`Topology` closed on exit."""
    topo = Topology(tag)
    try:
        yield topo
    finally:
        topo.close()


# -- checks on captures and journals ---------------------------------------------------------


def tshark(args: Sequence[str], timeout: float = 60.0) -> str:
    """Run tshark (``-r`` and the rest in ``args``) and return its stdout."""
    return run(["tshark", "-n", *args], timeout).stdout


CHECKSUM_PREFS = ("ip.check_checksum:TRUE", "udp.check_checksum:TRUE", "tcp.check_checksum:TRUE")


def pcap_problems(pcap: Path, checksums: bool = True) -> list[str]:
    """Frames tshark calls malformed or flags with an error-level expert note.

    With ``checksums`` tshark also verifies IPv4, UDP and TCP checksums (off by default in
    tshark), so a bad checksum is an error too.
    """
    args = ["-r", str(pcap), "-Y", "_ws.malformed || _ws.expert.severity == error"]
    for pref in CHECKSUM_PREFS if checksums else ():
        args += ["-o", pref]
    out = tshark(args)
    return [line for line in out.splitlines() if line.strip()]


def pcap_protocols(pcap: Path) -> set[str]:
    """Every protocol tshark dissects anywhere in ``pcap`` (e.g. "arp", "dhcp", "icmp")."""
    out = tshark(["-r", str(pcap), "-T", "fields", "-e", "frame.protocols"])
    return {p for line in out.splitlines() for p in line.strip().split(":") if p}


def pcap_fields(pcap: Path, display_filter: str, fields: Sequence[str]) -> list[list[str]]:
    """The values of ``fields`` for each frame matching ``display_filter``."""
    args = ["-r", str(pcap), "-Y", display_filter, "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    out = tshark(args)
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def dhcp_message_types(pcap: Path) -> list[int]:
    """The DHCP message types (1 Discover, 2 Offer, 3 Request, 5 Ack, ...) in ``pcap``."""
    rows = pcap_fields(pcap, "dhcp", ["dhcp.option.dhcp"])
    return [int(v) for row in rows for v in row[0].split(",") if v.isdigit()]


def replay(journal: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``python -m slirptrio replay JOURNAL`` (no network is involved)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    argv = [sys.executable, "-m", "slirptrio", "replay", str(journal)]
    return run(argv, timeout, check=False, env=env)

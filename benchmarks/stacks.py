"""The three user-mode stacks under test, each attached to a fresh :class:`Topology` guest.

* slirptrio: ``python -m slirptrio run`` in the host namespace, the guest's QEMU relay (tap0 on
  a hub with ``-netdev stream`` or ``-netdev dgram``) in the guest namespace.
* libslirp: the same QEMU relay with ``-netdev user`` on the hub instead of a socket netdev.
  The tap is opened in the guest namespace and handed to QEMU as ``fd=3`` while QEMU itself runs
  in the host namespace (``benchmarks.tapfd``), so libslirp's sockets, like slirptrio's and
  slirp4netns's, live in the host namespace and reach the same servers on its loopback.
* slirp4netns: Debian's, in the host namespace; it creates and configures tap0 in the guest
  namespace itself (the harness's pre-made tap0 is deleted first). No QEMU involved.

In every case the guest reaches the host namespace's 127.0.0.1 as 10.0.2.2. slirptrio and
libslirp (both with IPv6 on by default, QEMU's addressing) also lead fec0::2 to its ::1; the
guest takes its IPv6 address by SLAAC from their router advertisements (:func:`slaac`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.e2e.harness import TAP, HarnessError, Proc, Topology, run

StackName = Literal["slirptrio", "libslirp", "slirp4netns"]
STACKS: tuple[StackName, ...] = ("slirptrio", "libslirp", "slirp4netns")

GATEWAY = "10.0.2.2"
"""The guest-side address of the host namespace's loopback, on all three stacks."""
GATEWAY6 = "fec0::2"
"""The same over IPv6 (the host namespace's ::1), on slirptrio and libslirp: ``ipv6-host``.
libslirp 4.7 leads every address of its prefix but the DNS one to ::1 (``sotranslate_out``)."""

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Stack:
    """A stack attached to a guest that holds an address and the MTU it was configured for."""

    name: StackName
    label: str
    proc: Proc
    """The process whose memory is the stack's (slirptrio, QEMU with libslirp, slirp4netns)."""
    mtu: int
    guest_ip: str
    relay: Proc | None = None
    journal: Path | None = None
    """slirptrio's journal, when it keeps one."""
    started: float = 0.0
    """time.monotonic() when the stack process was started."""
    guest_ip6: str = ""
    """The guest's SLAAC address, once :func:`slaac` has waited for it."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """The stack process's resident set size (VmRSS) in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise HarnessError(f"no VmRSS for pid {self.pid}")

    def check_alive(self) -> None:
        """Raise if the stack (or its relay) has exited, with its output."""
        for p in (self.proc, self.relay):
            if p is not None and not p.alive():
                raise HarnessError(f"{p.name} exited {p.popen.poll()}:\n{p.output()[-3000:]}")


def guest_mtu(topo: Topology) -> int:
    out = run(["ip", "-n", topo.guest_ns, "-o", "link", "show", TAP], 10).stdout
    fields = out.split()
    return int(fields[fields.index("mtu") + 1])


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_slirptrio(
    topo: Topology,
    mtu: int,
    transport: Literal["listen", "dgram"],
    journal: bool,
    pcap: bool = True,
) -> Stack:
    """slirptrio with ``mtu=`` offered by DHCP; journal and pcap on, journal only, or off."""
    options = f"mtu={mtu}" if mtu != 1500 else ""
    extra = ["--dns-upstream", "127.0.0.1:5353"]
    if not journal:
        extra += ["--no-journal", "--no-pcap"]
    elif not pcap:
        extra += ["--no-pcap"]
    started = time.monotonic()
    st = topo.start_slirptrio(transport, options, extra_args=extra, verbose=0)
    relay = topo.start_relay(st.transport, dump=False)
    lease = topo.udhcpc()
    got = guest_mtu(topo)
    if got != mtu:
        raise HarnessError(f"guest MTU is {got} after DHCP, wanted {mtu} (lease {lease.raw})")
    tr = "stream" if transport == "listen" else "dgram"
    mode = ("on" if pcap else "only, no pcap") if journal else "off"
    label = f"slirptrio ({tr}, journal {mode})"
    return Stack(
        "slirptrio", label, st.proc, mtu, lease.ip, relay.proc, st.journal if journal else None,
        started,
    )


def start_libslirp(topo: Topology) -> Stack:
    """QEMU ``-netdev user`` on the relay's hub; QEMU in the host ns holding the guest's tap."""
    qemu = [
        "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
        "-no-user-config",
        "-netdev", "tap,id=t0,fd=3",
        "-netdev", "user,id=u0,net=10.0.2.0/24",
        "-netdev", "hubport,id=p0,hubid=0,netdev=t0",
        "-netdev", "hubport,id=p1,hubid=0,netdev=u0",
    ]  # fmt: skip
    argv = [
        "ip", "netns", "exec", topo.guest_ns,
        sys.executable, "-m", "benchmarks.tapfd", TAP, "3", "--", *topo.host_cmd(qemu),
    ]  # fmt: skip
    proc = topo.spawn("qemu-user", argv, _python_env())
    _wait_carrier(topo, proc)
    lease = topo.udhcpc()
    return Stack("libslirp", "libslirp (QEMU 7.2 -netdev user)", proc, guest_mtu(topo), lease.ip)


def start_slirp4netns(topo: Topology, mtu: int) -> Stack:
    """slirp4netns creating and configuring tap0 in the guest namespace."""
    run(["ip", "-n", topo.guest_ns, "link", "del", TAP], 10)
    argv = [
        "slirp4netns", "--configure", f"--mtu={mtu}", "--netns-type=path",
        f"/run/netns/{topo.guest_ns}", TAP,
    ]  # fmt: skip
    proc = topo.host_spawn("slirp4netns", argv)
    deadline = time.monotonic() + 15
    ip = ""
    while not ip:
        if not proc.alive():
            raise HarnessError(f"slirp4netns exited {proc.popen.poll()}:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise HarnessError("slirp4netns did not configure tap0:\n" + proc.output())
        out = run(
            ["ip", "-n", topo.guest_ns, "-o", "-4", "addr", "show", "dev", TAP], 10, check=False
        ).stdout
        if " inet " in out:
            ip = out.split(" inet ")[1].split("/")[0]
        else:
            time.sleep(0.05)
    got = guest_mtu(topo)
    if got != mtu:
        raise HarnessError(f"slirp4netns left the guest MTU at {got}, wanted {mtu}")
    return Stack("slirp4netns", "slirp4netns 1.2.0 (libslirp 4.7)", proc, mtu, ip)


def slaac(topo: Topology, stack: Stack, timeout: float = 30.0) -> str:
    """Wait until the guest holds a SLAAC address in fec0::/64 past duplicate address
    detection, and a default route; record it on ``stack`` and return it."""
    addr, _router = topo.slaac("fec0:", timeout)
    stack.guest_ip6 = addr
    return addr


def _wait_carrier(topo: Topology, proc: Proc, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = run(["ip", "-n", topo.guest_ns, "-o", "link", "show", TAP], 10).stdout
        if "LOWER_UP" in out.split(">")[0]:
            return
        if not proc.alive():
            raise HarnessError(f"{proc.name} exited {proc.popen.poll()}:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{proc.name} did not open {TAP}:\n{proc.output()}")
        time.sleep(0.05)

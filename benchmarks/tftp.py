"""TFTP throughput and PXE boot time: slirptrio (lock-step and RFC 7440 windows) and libslirp.

``python -m benchmarks.tftp [--size MB] [--runs N] [--no-pxe]`` (root). Each case gets a fresh
guest namespace (``tests.e2e.harness.Topology``) and a fresh stack serving a TFTP root that
holds one file of random bytes; the guest fetches it and checks its SHA-256:

* busybox ``tftp -g`` lock-step, 512-byte blocks and ``-b 1428`` (libslirp's largest);
* atftp with ``blksize 1428`` and ``windowsize`` 1, 4, 16, 64 (libslirp ignores windowsize,
  so there only 1 is run);
* (unless ``--no-pxe``) a PXE boot of a TCG VM (SeaBIOS, the virtio NIC's iPXE ROM, an iPXE
  script, Debian's kernel and a busybox initramfs over TFTP): seconds from QEMU's start to the
  initramfs's ``/init``, slirptrio (over ``-netdev stream``) against QEMU's own
  ``-netdev user,tftp=,bootfile=``.

The rate is the file size over the client's wall time (the median of ``--runs``). slirptrio
runs with its journal and pcap on, its default. The table goes to stdout and to
``benchmarks/tftp-results.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.stacks import _python_env, _wait_carrier
from tests.e2e.harness import TAP, HarnessError, Topology, skip_reason, sweep_stale
from tests.e2e.test_pxe import INIT, SCRIPT
from tests.e2e.test_vm import _kernel, build_initramfs

HERE = Path(__file__).resolve().parent
BLKSIZE = 1428


def _root(topo: Topology, size: int) -> tuple[Path, str]:
    root = topo.dir / "tftproot"
    root.mkdir(exist_ok=True)
    data = os.urandom(size)
    (root / "blob").write_bytes(data)
    return root, hashlib.sha256(data).hexdigest()


def start_slirptrio(topo: Topology, root: Path) -> None:
    st = topo.start_slirptrio("listen", f"tftp={root}", verbose=0)
    topo.start_relay(st.transport, dump=False)
    topo.udhcpc()


def start_libslirp(topo: Topology, root: Path) -> None:
    qemu = [
        "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
        "-no-user-config",
        "-netdev", "tap,id=t0,fd=3",
        "-netdev", f"user,id=u0,net=10.0.2.0/24,tftp={root}",
        "-netdev", "hubport,id=p0,hubid=0,netdev=t0",
        "-netdev", "hubport,id=p1,hubid=0,netdev=u0",
    ]  # fmt: skip
    argv = [
        "ip", "netns", "exec", topo.guest_ns,
        sys.executable, "-m", "benchmarks.tapfd", TAP, "3", "--", *topo.host_cmd(qemu),
    ]  # fmt: skip
    proc = topo.spawn("qemu-user", argv, _python_env())
    _wait_carrier(topo, proc)
    topo.udhcpc()


def fetch(topo: Topology, argv: list[str], out: Path, digest: str) -> float:
    out.unlink(missing_ok=True)
    t = time.monotonic()
    topo.guest_run(argv, 600)
    took = time.monotonic() - t
    if hashlib.sha256(out.read_bytes()).hexdigest() != digest:
        raise HarnessError(f"{argv}: the file arrived different")
    return took


def transfer_cases(runs: int, size: int) -> list[tuple[str, str, float]]:
    clients: list[tuple[str, Callable[[Path], list[str]], bool]] = [
        ("busybox, 512-byte blocks",
         lambda out: ["busybox", "tftp", "-g", "-r", "blob", "-l", str(out), "10.0.2.2"], True),
        (f"busybox, blksize {BLKSIZE}",
         lambda out: ["busybox", "tftp", "-g", "-r", "blob", "-l", str(out), "-b", str(BLKSIZE),
                      "10.0.2.2"], True),
    ]  # fmt: skip
    for window in (1, 4, 16, 64):
        clients.append((
            f"atftp, blksize {BLKSIZE}, windowsize {window}",
            lambda out, w=window: [  # type: ignore[misc]
                "atftp", "--option", f"blksize {BLKSIZE}", "--option", f"windowsize {w}",
                "-g", "-r", "blob", "-l", str(out), "10.0.2.2"],
            window == 1,
        ))  # fmt: skip
    rows = []
    for stack, start in (("slirptrio", start_slirptrio), ("libslirp", start_libslirp)):
        with Topology(f"tftp-{stack}") as topo:
            root, digest = _root(topo, size)
            start(topo, root)
            for label, argv, on_libslirp in clients:
                if stack == "libslirp" and not on_libslirp:
                    continue
                times = [fetch(topo, argv(topo.dir / "out"), topo.dir / "out", digest)
                         for _ in range(runs)]
                rate = size / statistics.median(times) / 1e6
                print(f"{stack:<10} {label:<40} {rate:7.2f} MB/s", flush=True)
                rows.append((stack, label, rate))
    return rows


def pxe_case(stack: str) -> float:
    found = _kernel()
    if found is None:
        raise HarnessError("no Debian kernel with virtio_net modules")
    vmlinuz, moddir = found
    with Topology(f"pxe-{stack}") as topo:
        root = topo.dir / "tftproot"
        build = topo.dir / "build"
        root.mkdir()
        build.mkdir()
        shutil.copy(vmlinuz, root / "vmlinuz")
        shutil.copy(build_initramfs(build, moddir, INIT), root / "initrd.gz")
        (root / "boot.ipxe").write_text(SCRIPT)
        if stack == "slirptrio":
            st = topo.start_slirptrio("listen", f"tftp={root},bootfile=boot.ipxe", verbose=0)
            netdev = f"stream,id=n0,server=off,addr.type=unix,addr.path={st.transport.path}"
        else:
            netdev = f"user,id=n0,tftp={root},bootfile=boot.ipxe"
        qemu = [
            "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256", "-smp", "1",
            "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-boot", "n",
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
        ]  # fmt: skip
        t = time.monotonic()
        vm = topo.host_spawn("vm", qemu)
        vm.wait_line("VM-INIT", 600)
        took = time.monotonic() - t
        vm.wait_line("VM-DONE", 120)
        print(f"{stack:<10} PXE boot to /init {took:6.1f} s", flush=True)
        return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16, help="file size in MB (default 16)")
    parser.add_argument("--runs", type=int, default=3, help="fetches per case (median)")
    parser.add_argument("--no-pxe", action="store_true", help="skip the PXE boot cases")
    args = parser.parse_args()
    reason = skip_reason()
    if reason is not None:
        print(f"benchmarks.tftp: {reason}", file=sys.stderr)
        return 2
    sweep_stale()
    rows = transfer_cases(args.runs, args.size << 20)
    pxe = {} if args.no_pxe else {s: pxe_case(s) for s in ("slirptrio", "libslirp")}
    lines = [
        f"# TFTP and PXE ({time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, {args.size} MB file, median of {args.runs})",
        "",
        "| stack | client | MB/s |",
        "|---|---|---|",
        *(f"| {s} | {label} | {rate:.2f} |" for s, label, rate in rows),
    ]
    if pxe:
        lines += ["", "| stack | PXE boot to /init (s) |", "|---|---|",
                  *(f"| {s} | {t:.1f} |" for s, t in pxe.items())]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "tftp-results.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

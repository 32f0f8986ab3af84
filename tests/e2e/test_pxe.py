"""A real PXE boot: a QEMU VM with no kernel on its command line boots over the network.

SeaBIOS runs the NIC's iPXE ROM (Debian's ipxe-qemu) under TCG: DHCP from slirptrio gives it
the boot file name and next server, it fetches an iPXE script over our TFTP, and the script
loads Debian's kernel and a busybox initramfs over TFTP too. The booted guest takes a lease
and pings 10.0.2.2; the session replays identical after the TFTP root is deleted. The test
prints the boot time and each transfer's throughput (``pytest -s`` shows them).
"""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from tests.e2e.harness import Topology, pcap_fields, pcap_problems, replay
from tests.e2e.test_vm import _kernel, build_initramfs

pytestmark = pytest.mark.e2e

ROM = "/usr/lib/ipxe/qemu/efi-virtio.rom"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo VM-INIT
for m in {modules}; do insmod /lib/$m || echo "VM-INSMOD-FAILED $m"; done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -n -q -t 10 -T 1 -O mtu -s /udhcpc.sh && echo VM-DHCP-OK
ping -c 3 -W 2 10.0.2.2 && echo VM-PING-OK
echo VM-DONE
poweroff -f
"""

SCRIPT = """#!ipxe
kernel vmlinuz console=ttyS0 panic=-1 quiet
initrd initrd.gz
boot
"""


def test_pxe_boot_over_tftp(topo: Topology) -> None:
    found = _kernel()
    if found is None:
        pytest.skip("no Debian kernel with virtio_net modules (apt install linux-image-amd64)")
    if not shutil.which("cpio"):
        pytest.skip("cpio is needed to build the initramfs")
    if not os.path.exists(ROM):
        pytest.skip(f"{ROM} missing (apt install ipxe-qemu)")
    vmlinuz, moddir = found
    root = topo.dir / "tftproot"
    build = topo.dir / "build"
    root.mkdir()
    build.mkdir()
    shutil.copy(vmlinuz, root / "vmlinuz")
    shutil.copy(build_initramfs(build, moddir, INIT), root / "initrd.gz")
    (root / "boot.ipxe").write_text(SCRIPT)
    sizes = {p.name: p.stat().st_size for p in root.iterdir()}

    st = topo.start_slirptrio("listen", f"tftp={root},bootfile=boot.ipxe")
    qemu = [
        "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256", "-smp", "1",
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-boot", "n",
        "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={st.transport.path}",
        "-device", "virtio-net-pci,netdev=n0",  # its default ROM: efi-virtio.rom (iPXE)
    ]  # fmt: skip
    t0 = time.monotonic()
    vm = topo.host_spawn("vm", qemu)
    vm.wait_line("VM-INIT", 300)
    boot_s = time.monotonic() - t0
    vm.wait_line("VM-DONE", 120)
    console = vm.output()
    vm.wait(60)
    assert "Next server: 10.0.2.2" in console and "Filename: boot.ipxe" in console, console
    assert "VM-INSMOD-FAILED" not in console, console
    assert "VM-DHCP-OK" in console and "VM-PING-OK" in console, console
    assert st.stop() == 0, st.proc.output()

    sent = {}
    for line in st.proc.lines("err"):
        m = re.search(r"tftp: sent (\S+) to \S+: (\d+) bytes in ([\d.]+) s \((\d+) KB/s\), "
                      r"blksize (\d+), windowsize (\d+)", line)
        if m:
            sent[m.group(1)] = (int(m.group(2)), float(m.group(3)), int(m.group(4)),
                                int(m.group(5)), int(m.group(6)))
    assert {name: v[0] for name, v in sent.items()} == sizes, sent
    print(f"\nPXE: /init reached {boot_s:.1f} s after QEMU started")
    for name, (size, secs, rate, blksize, window) in sent.items():
        print(f"PXE: {name}: {size} bytes in {secs:.2f} s, {rate} KB/s, blksize {blksize}, "
              f"windowsize {window}")

    offer = pcap_fields(st.pcap, "dhcp.option.dhcp == 2",
                        ["dhcp.file", "dhcp.option.bootfile_name", "dhcp.ip.server"])
    assert offer and offer[0] == ["boot.ipxe", "boot.ipxe", "10.0.2.2"], offer
    assert pcap_problems(st.pcap) == []
    shutil.rmtree(root)
    result = replay(st.journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr

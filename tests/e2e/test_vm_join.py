"""Two real TCG VMs on one stack (issue 22): the first by ``slirptrio qemu``, the second by
``slirptrio qemu --join`` on the first one's control socket. They reach each other (ping and
HTTP) and the host, the second's host forward leads to it while it runs, and the session (one
journal: the first stack's) replays identical."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, Proc, Topology, replay
from tests.e2e.test_vm import _kernel, build_initramfs

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")

_HEAD = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /lib/$m || echo "VM-INSMOD-FAILED $m"; done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -n -q -t 20 -T 1 -s /udhcpc.sh && echo VM-DHCP-OK
ip -4 -o addr show eth0
"""

INIT_A = _HEAD + r"""mkdir -p /www
echo "hello from A" > /www/index.html
httpd -p 8080 -h /www && echo VM-READY
for i in $(seq 1 120); do ping -c 1 -W 1 10.0.2.16 > /dev/null && break; sleep 1; done
ping -c 2 -W 2 10.0.2.16 && echo VM-PEER-PING-OK
sleep 600
"""

INIT_B = _HEAD + r"""mkdir -p /www
echo "hello from B" > /www/index.html
httpd -p 8080 -h /www
ping -c 3 -W 2 10.0.2.15 && echo VM-PEER-PING-OK
printf 'GET /index.html HTTP/1.0\r\n\r\n' | nc 10.0.2.15 8080 | grep -q "hello from A" \
    && echo VM-PEER-HTTP-OK
printf 'GET /1000 HTTP/1.0\r\n\r\n' | nc 10.0.2.2 8080 > /http.out
echo "VM-HTTP-BYTES $(wc -c < /http.out)"
echo VM-WAITING
nc -l -p 8081 > /dev/null
echo VM-DONE
poweroff -f
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")


def _qemu(vmlinuz: Path, initrd: Path, mac: str, netopts: str) -> list[str]:
    return [
        "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256", "-smp", "1",
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet",
        "-nic", f"user,model=virtio-net-pci,mac={mac}{netopts}",
    ]  # fmt: skip


def test_two_vms_one_by_qemu_one_by_join(topo: Topology) -> None:
    found = _kernel()
    if found is None:
        pytest.skip("no Debian kernel with virtio_net modules (apt install linux-image-amd64)")
    if not shutil.which("cpio"):
        pytest.skip("cpio is needed to build the initramfs")
    vmlinuz, moddir = found
    (topo.dir / "a").mkdir()
    (topo.dir / "b").mkdir()
    initrd_a = build_initramfs(topo.dir / "a", moddir, INIT_A)
    initrd_b = build_initramfs(topo.dir / "b", moddir, INIT_B)
    topo.host_spawn("http", [sys.executable, SERVERS, "http", "127.0.0.1", "8080"]).wait_line(
        "listening", 10)
    ctl = topo.dir / "a.ctl"
    journal = topo.dir / "a.journal"
    vm_a: Proc = topo.spawn("vm-a", topo.host_cmd([
        sys.executable, "-m", "slirptrio", "qemu", "-v", "--journal", str(journal),
        "--control", str(ctl), "--no-pcap", "--seed", "3", "--",
        *_qemu(vmlinuz, initrd_a, "52:54:00:00:0a:01", "")]), _env())
    vm_a.wait_line("VM-READY", 240)
    vm_b: Proc = topo.spawn("vm-b", topo.host_cmd([
        sys.executable, "-m", "slirptrio", "qemu", "--join", str(ctl), "--",
        *_qemu(vmlinuz, initrd_b, "52:54:00:00:0b:01",
               ",hostfwd=tcp:127.0.0.1:2281-10.0.2.16:8081")]), _env())
    vm_b.wait_line("VM-WAITING", 240)
    out = "\n".join(vm_b.lines())
    assert "VM-PEER-PING-OK" in out and "VM-PEER-HTTP-OK" in out, out
    assert "VM-HTTP-BYTES 1" in out, out  # some bytes from the host's server, through NAT
    vm_a.wait_line("VM-PEER-PING-OK", 120)
    # the joining VM's host forward leads to it: its nc hears us and it powers off
    topo.host_run(["sh", "-c", "echo go | busybox nc -w 5 127.0.0.1 2281"], 60, check=False)
    vm_b.wait_line("VM-DONE", 120)
    assert vm_b.wait(120) == 0, vm_b.output()
    gone = topo.host_run(["sh", "-c", "echo go | busybox nc -w 2 127.0.0.1 2281"], 30,
                         check=False)
    assert gone.returncode != 0  # the forward went with its VM
    vm_a.stop()
    result = replay(journal, timeout=600)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr

"""A real VM: Debian's kernel on QEMU (TCG) with a busybox initramfs and virtio-net, attached
to slirptrio over ``-netdev stream``. It takes a DHCP lease, pings, resolves a name and fetches a
page over HTTP from the host's loopback via 10.0.2.2; with IPv6 it forms a SLAAC address from
our router advertisement, pings fec0::2 and fetches a page from the host's ::1 via [fec0::2];
the session replays identical."""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, Topology, pcap_problems, replay
from tests.e2e.servers import pattern

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
MODULES = ["kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/net/virtio_net.ko"]


def load_order(moddir: Path, wanted: list[str]) -> list[str]:
    """``wanted`` and everything they depend on, dependencies first (from modules.dep, whose
    lists modprobe loads last to first)."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name] = rest.split()
    order: list[str] = []

    def visit(m: str) -> None:
        if m in order:
            return
        for d in reversed(deps.get(m, [])):
            visit(d)
        order.append(m)

    for m in wanted:
        visit(m)
    return order

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /lib/$m || echo "VM-INSMOD-FAILED $m"; done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -n -q -t 10 -T 1 -O mtu -s /udhcpc.sh && echo VM-DHCP-OK
ip -4 addr show eth0
ping -c 3 -W 2 10.0.2.2 && echo VM-PING-OK
nslookup vm.example.test 10.0.2.3
printf 'GET /1000 HTTP/1.0\\r\\n\\r\\n' | nc 10.0.2.2 8080 > /http.out
{http_check_4}
for i in $(seq 1 100); do
    ip -6 addr show dev eth0 scope site | grep -v tentative | grep -q 'inet6 fec0:' && break
    sleep 0.2
done
ip -6 addr show dev eth0 scope site
ip -6 route show default
ping6 -c 3 -W 2 fec0::2 && echo VM-PING6-OK
printf 'GET /2000 HTTP/1.0\\r\\n\\r\\n' | nc fec0::2 8081 > /http6.out
{http_check_6}
echo VM-DONE
poweroff -f
"""



def http_check(tag: str, path: str, n: int) -> str:
    """Shell lines for the VM that report an HTTP reply of an ``n``-byte body in ``path``:
    its status line, the digest of the 4 bytes before the last ``n`` (the end of the
    headers), the digest of the last ``n`` bytes (the body) and the whole size."""
    return "\n".join([
        f'echo "{tag}-STATUS $(head -n 1 {path})"',
        f'echo "{tag}-SEP $(tail -c {n + 4} {path} | head -c 4 | sha256sum)"',
        f'echo "{tag}-BODY $(tail -c {n} {path} | sha256sum)"',
    ])  # fmt: skip


def assert_http_reply(console: str, tag: str, n: int) -> None:
    """The VM got ``GET /n`` exactly: a 200, headers ending right before the last ``n``
    bytes, and those bytes the server's pattern."""
    def value(key: str) -> str:
        lines = [ln for ln in console.splitlines() if ln.startswith(f"{tag}-{key} ")]
        assert lines, f"no {tag}-{key} line:\n{console}"
        return lines[-1].split(" ", 1)[1].strip()

    assert value("STATUS").startswith("HTTP/1.1 200"), console
    assert value("SEP").split()[0] == hashlib.sha256(b"\r\n\r\n").hexdigest(), console
    assert value("BODY").split()[0] == hashlib.sha256(pattern(n)).hexdigest(), console


INIT = INIT.replace("{http_check_4}", http_check("VM-HTTP", "/http.out", 1000)).replace(
    "{http_check_6}", http_check("VM-HTTP6", "/http6.out", 2000))

UDHCPC = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr add "$ip/${mask:-24}" dev "$interface"
    ip route add default via "$router"
    echo "VM-LEASE ip=$ip router=$router dns=$dns" ;;
esac
exit 0
"""


def _kernel() -> tuple[Path, Path] | None:
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        release = vmlinuz.split("vmlinuz-", 1)[1]
        moddir = Path("/lib/modules") / release
        if all((moddir / m).exists() for m in MODULES):
            return Path(vmlinuz), moddir
    return None


def build_initramfs(dest: Path, moddir: Path, init: str = INIT) -> Path:
    """A gzipped newc cpio with static busybox, the virtio_net modules and ``init`` as /init
    (``{modules}`` in it becomes the module files, in load order)."""
    root = dest / "root"
    for d in ("bin", "lib", "proc", "sys", "dev", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
    names = []
    for m in load_order(moddir, MODULES):
        shutil.copy(moddir / m, root / "lib" / Path(m).name)
        names.append(Path(m).name)
    (root / "init").write_text(init.replace("{modules}", " ".join(names)))
    (root / "udhcpc.sh").write_text(UDHCPC)
    for f in ("init", "udhcpc.sh", "bin/busybox"):
        (root / f).chmod(0o755)
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files,
                          capture_output=True, check=True, timeout=60).stdout
    out = dest / "initrd.gz"
    out.write_bytes(gzip.compress(cpio, compresslevel=1))
    return out


def test_tcg_vm_dhcp_ping_dns_http(topo: Topology) -> None:
    found = _kernel()
    if found is None:
        pytest.skip("no Debian kernel with virtio_net modules (apt install linux-image-amd64)")
    if not shutil.which("cpio"):
        pytest.skip("cpio is needed to build the initramfs")
    vmlinuz, moddir = found
    initrd = build_initramfs(topo.dir, moddir)
    topo.host_spawn("http", [sys.executable, SERVERS, "http", "127.0.0.1", "8080"]).wait_line(
        "listening", 10
    )
    topo.host_spawn("dns", [sys.executable, SERVERS, "dns", "5353"]).wait_line("listening", 10)
    topo.host_spawn("http6", [sys.executable, SERVERS, "http", "::1", "8081"]).wait_line(
        "listening", 10
    )
    st = topo.start_slirptrio("listen", "hostname=vm1",
                              extra_args=["--dns-upstream", "127.0.0.1:5353"])
    qemu = [
        "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256", "-smp", "1",
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet",
        "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={st.transport.path}",
        "-device", "virtio-net-pci,netdev=n0,romfile=",
    ]  # fmt: skip
    vm = topo.host_spawn("vm", qemu)
    vm.wait_line("VM-DONE", 180)
    console = vm.output()
    vm.wait(60)
    assert "VM-INSMOD-FAILED" not in console, console
    assert "VM-DHCP-OK" in console and "VM-LEASE ip=10.0.2.15 router=10.0.2.2 dns=10.0.2.3" \
        in console, console
    assert "VM-PING-OK" in console, console
    assert "203.0.113.77" in console, console  # the name resolved through 10.0.2.3
    assert_http_reply(console, "VM-HTTP", 1000)
    assert "inet6 fec0:" in console and "default via fe80::2" in console, console
    assert "VM-PING6-OK" in console, console
    assert_http_reply(console, "VM-HTTP6", 2000)
    assert st.stop() == 0, st.proc.output()
    assert pcap_problems(st.pcap) == []
    result = replay(st.journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


if __name__ == "__main__":  # pragma: no cover - build an initramfs by hand
    k = _kernel()
    assert k is not None
    print(build_initramfs(Path(os.environ.get("OUT", ".")), k[1]))

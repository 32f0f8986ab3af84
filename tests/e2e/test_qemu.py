"""``slirptrio qemu`` with a real VM (Debian's kernel under TCG, a busybox initramfs): the QEMU
command line keeps its ``-netdev user`` / ``-nic user``; the VM takes its lease, a host forward
reaches its web server, QEMU's exit status comes back, the journal replays identical. During
the session: ``ctl info`` lists the static and the runtime forward with their bound ports; live
captures attached mid-session see the ping and the HTTP flow (tshark reads them, one through a
pipe), two at once, while a third reader that never reads loses frames without slowing the
guest; afterwards ``replay --summary`` names every flow and ``--timeline`` draws the session.

The guest waits for a "go" on port 8081 (reached through a forward added at runtime) before
it pings, resolves, fetches a page, tries a closed port and (full run) downloads in bulk; then
it waits for a second "go", and leaves through isa-debug-exit with status 3 (QEMU exits 7).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.harness import (
    REPO_ROOT,
    HarnessError,
    Proc,
    Topology,
    pcap_fields,
    pcap_problems,
    pcap_protocols,
    replay,
    run,
)
from tests.e2e.test_vm import _kernel, assert_http_reply, build_initramfs, http_check
from tests.pngread import read_png

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
BULK = 8_000_000
EXIT_STATUS = 7  # isa-debug-exit: (3 << 1) | 1

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /lib/$m || echo "VM-INSMOD-FAILED $m"; done
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -n -q -t 10 -T 1 -O mtu -s /udhcpc.sh && echo VM-DHCP-OK
mkdir -p /www
echo "hello from the VM" > /www/index.html
httpd -p 8080 -h /www && echo VM-HTTPD-OK
echo VM-READY
msg=$(nc -l -p 8081)
echo "VM-GOT $msg"
ping -c 3 -W 2 10.0.2.2 && echo VM-PING-OK
nslookup vm.example.test 10.0.2.3
printf 'GET /1000 HTTP/1.0\r\n\r\n' | nc 10.0.2.2 8080 > /http.out
@HTTP_CHECK@
if nc 10.0.2.2 8089 < /dev/null; then echo VM-8089-OPEN; else echo VM-8089-REFUSED; fi
if grep -q vmtest=full /proc/cmdline; then
    time sh -c 'printf "GET /@BULK@ HTTP/1.0\r\n\r\n" | nc 10.0.2.2 8080 | wc -c > /bulk.out'
    echo "VM-BULK-BYTES $(cat /bulk.out)"
    msg=$(nc -l -p 8081)
    echo "VM-GOT $msg"
fi
echo VM-DONE
printf '\003' | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
poweroff -f
""".replace("@BULK@", str(BULK)).replace("@HTTP_CHECK@", http_check("VM-HTTP", "/http.out", 1000))

def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _slirptrio(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "slirptrio", *args], timeout, env=_env())


def _ctl(ctl: Path, *args: str) -> dict[str, object]:
    out = _slirptrio("ctl", str(ctl), "--json", *args).stdout
    answer = json.loads(out)
    assert isinstance(answer, dict) and answer.get("ok"), out
    return answer


def _initramfs(topo: Topology) -> tuple[Path, Path]:
    found = _kernel()
    if found is None:
        pytest.skip("no Debian kernel with virtio_net modules (apt install linux-image-amd64)")
    if not shutil.which("cpio"):
        pytest.skip("cpio is needed to build the initramfs")
    vmlinuz, moddir = found
    return vmlinuz, build_initramfs(topo.dir, moddir, INIT)


def _start_vm(topo: Topology, vmlinuz: Path, initrd: Path, net_args: list[str], mode: str,
              tag: str) -> Proc:
    topo.host_spawn("http", [sys.executable, SERVERS, "http", "127.0.0.1", "8080"]).wait_line(
        "listening", 10)
    topo.host_spawn("dns", [sys.executable, SERVERS, "dns", "5353"]).wait_line("listening", 10)
    qemu = [
        "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256", "-smp", "1",
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-kernel", str(vmlinuz), "-initrd", str(initrd),
        "-append", f"console=ttyS0 panic=-1 quiet vmtest={mode}",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        *net_args,
    ]  # fmt: skip
    argv = [
        sys.executable, "-m", "slirptrio", "qemu", "-v",
        "--journal", str(topo.dir / f"{tag}-{{id}}.journal"),
        "--control", str(topo.dir / f"{tag}-{{id}}.ctl"),
        "--dns-upstream", "127.0.0.1:5353", "--seed", "11",
        "--", *qemu,
    ]  # fmt: skip
    return topo.spawn(f"vm-{tag}", topo.host_cmd(argv), _env())


def _hostfwd_port(vm: Proc, name: str, rule: str) -> int:
    line = vm.wait_line(f"netdev {name}: control socket", 60, tag="err")
    m = re.search(re.escape(f"hostfwd {rule} on port ") + r"(\d+)", line)
    assert m, line
    return int(m.group(1))


def _go(topo: Topology, vm: Proc, port: int, count: int) -> None:
    """Send "go" to the guest's port 8081 through host port ``port`` until it hears it (the
    guest's nc may not listen yet: a forwarded connection is then refused by the guest)."""
    sender = ("import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5);"
              " s.sendall(b'go\\n'); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()")
    deadline = time.monotonic() + 60
    while sum(ln.startswith("VM-GOT go") for ln in vm.lines("out")) < count:
        if time.monotonic() > deadline:
            raise HarnessError("the guest never heard go:\n" + vm.output())
        topo.host_run([sys.executable, "-c", sender, str(port)], 30, check=False)
        time.sleep(0.5)


def _fetch(topo: Topology, port: int) -> str:
    out = topo.host_run(["curl", "-sS", "--max-time", "30", f"http://127.0.0.1:{port}/"], 40)
    return out.stdout


def _console_checks(console: str) -> None:
    assert "VM-INSMOD-FAILED" not in console, console
    assert "VM-LEASE ip=10.0.2.15 router=10.0.2.2 dns=10.0.2.3" in console, console
    assert "VM-PING-OK" in console, console
    assert "203.0.113.77" in console, console
    assert_http_reply(console, "VM-HTTP", 1000)
    assert "VM-8089-REFUSED" in console, console


def _summary(journal: Path) -> dict[str, object]:
    data = json.loads(_slirptrio("replay", str(journal), "--json", timeout=300).stdout)
    assert isinstance(data, dict)
    return data


def _flows(summary: dict[str, object]) -> list[dict[str, object]]:
    flows = summary["flows"]
    assert isinstance(flows, list)
    return flows


def test_qemu_netdev_user_forwards_captures_summary_timeline(topo: Topology) -> None:
    vmlinuz, initrd = _initramfs(topo)
    rule = "tcp:127.0.0.1:0-:8080"
    vm = _start_vm(topo, vmlinuz, initrd, [
        "-netdev", f"user,id=n0,hostfwd={rule}", "-device", "virtio-net-pci,netdev=n0,romfile=",
    ], "full", "nd")
    web_port = _hostfwd_port(vm, "n0", rule)
    ctl = topo.dir / "nd-n0.ctl"
    vm.wait_line("VM-READY", 240)

    # The static forward reaches the VM's web server.
    assert _fetch(topo, web_port).strip() == "hello from the VM"
    # A forward added at runtime; info lists both, with their bound ports.
    go_port = int(str(_ctl(ctl, "hostfwd-add", "tcp:127.0.0.1:0-:8081")["port"]))
    info = _ctl(ctl, "info")
    forwards = {str(f["rule"]): f for f in info["forwards"]}  # type: ignore[attr-defined]
    assert forwards[rule]["port"] == web_port and forwards[rule]["static"] is True
    go = forwards["tcp:127.0.0.1:0-:8081"]
    assert go["port"] == go_port and go["static"] is False and go["guest_port"] == 8081
    text = _slirptrio("ctl", str(ctl), "info").stdout
    assert re.search(rf"TCP\[HOST_FORWARD\]\s+10\.0\.2\.15:8080\s+-\s+127\.0\.0\.1:{web_port}\b",
                     text), text
    assert re.search(rf"TCP\[HOST_FORWARD\]\s+10\.0\.2\.15:8081\s+-\s+127\.0\.0\.1:{go_port}\b",
                     text), text

    # Captures attached now, mid-session: everything through a pipe into tshark, only ICMP
    # to a file, and a reader that asks for everything and never reads.
    all_pcap, icmp_pcap = topo.dir / "all.pcap", topo.dir / "icmp.pcap"
    py = f"'{sys.executable}' -m slirptrio capture '{ctl}'"
    piped = topo.spawn("cap-all", ["sh", "-c", (
        f"{py} | tee '{all_pcap}' | tshark -n -r - -Y '_ws.malformed' "
        "-T fields -e frame.number -e _ws.col.Info; echo tshark-exit=$?"
    )], _env())
    icmp = topo.spawn("cap-icmp", [sys.executable, "-m", "slirptrio", "capture", str(ctl),
                                   "-p", "icmp", "-w", str(icmp_pcap)], _env())
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(str(ctl))
    stalled.sendall(b'{"cmd": "capture"}\n')
    deadline = time.monotonic() + 30
    while len(_ctl(ctl, "stats")["captures"]) < 3:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, _ctl(ctl, "stats")
        time.sleep(0.2)

    _go(topo, vm, go_port, 1)
    vm.wait_line("VM-BULK-BYTES", 300)
    stats = _ctl(ctl, "stats")
    caps = {int(c["id"]): c for c in stats["captures"]}  # type: ignore[attr-defined]
    assert len(caps) == 3
    assert max(int(c["lost"]) for c in caps.values()) > 0, caps  # the stalled reader lost
    assert stats["frames_dropped_toward_guest"] == 0, stats
    _go(topo, vm, go_port, 2)
    vm.wait_line("VM-DONE", 120)
    assert vm.wait(120) == EXIT_STATUS, vm.output()
    stalled.close()
    console = "\n".join(vm.lines("out"))
    _console_checks(console)
    bulk = [ln for ln in console.splitlines() if ln.startswith("VM-BULK-BYTES")]
    assert int(bulk[-1].split()[1]) > BULK, console
    journal = topo.dir / "nd-n0.journal"
    assert f"netdev n0: journal {journal}, pcap {topo.dir / 'nd-n0.pcap'}" in vm.output()

    # Both captures ended with the stack, and tshark read the piped one without complaint.
    piped.wait(60)
    icmp.wait(60)
    assert piped.lines("out")[-1] == "tshark-exit=0" and piped.lines("out")[:-1] == [], \
        piped.output()
    assert any("the stack stopped" in ln for ln in icmp.lines("err")), icmp.output()
    assert pcap_problems(all_pcap) == []
    assert pcap_problems(icmp_pcap) == []
    protos = pcap_protocols(all_pcap)
    assert {"icmp", "tcp", "http", "dns"} <= protos, protos
    assert "dhcp" not in protos  # the lease was taken before the capture attached
    echo = pcap_fields(all_pcap, "icmp.type == 8 && ip.dst == 10.0.2.2", ["icmp.seq"])
    assert len(echo) == 3, echo
    gets = pcap_fields(all_pcap, 'http.request.method == "GET" && tcp.dstport == 8080 '
                       "&& ip.src == 10.0.2.15", ["http.request.uri"])
    assert ["/1000"] in gets, gets
    # "icmp" takes ICMPv6 too: the guest's router solicitations.
    assert pcap_protocols(icmp_pcap) <= {"eth", "ethertype", "ip", "icmp", "data", "ipv6",
                                         "icmpv6"}
    assert len(pcap_fields(icmp_pcap, "icmp", ["icmp.type"])) == 6

    # The journal replays identical, and the summary names each flow.
    result = replay(journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr
    summary = _summary(journal)
    assert summary["replay"] == "identical"
    flows = _flows(summary)
    out = [f for f in flows if f["direction"] == "out"]

    def one(pred: object) -> dict[str, object]:
        found = [f for f in out if pred(f)]  # type: ignore[operator]
        assert len(found) >= 1, json.dumps(flows, indent=1)
        return found[0]

    page = one(lambda f: f["remote"] == "10.0.2.2:8080" and f["bytes_to_guest"] < 10_000)
    assert page["proto"] == "tcp" and page["end"] == "FIN" and page["host"] == "127.0.0.1:8080"
    bulk_flow = one(lambda f: f["remote"] == "10.0.2.2:8080" and f["bytes_to_guest"] > BULK)
    assert bulk_flow["end"] == "FIN"
    refused = one(lambda f: f["remote"] == "10.0.2.2:8089")
    assert refused["end"] == "refused" and refused["failed"] is True
    ping = one(lambda f: f["proto"] == "icmp")
    assert ping["remote"] == "10.0.2.2" and ping["end_detail"] == "3/3 replies"
    inbound = [f for f in flows if f["direction"] == "in"]
    assert any(f["guest"] == "10.0.2.15:8080" and f["end"] == "FIN" for f in inbound), inbound
    assert any(f["guest"] == "10.0.2.15:8081" for f in inbound), inbound
    names = {(d["name"], d["type"]) for d in summary["dns"]}  # type: ignore[attr-defined]
    assert ("vm.example.test", "A") in names, names
    vm_a = [d for d in summary["dns"] if d["name"] == "vm.example.test"  # type: ignore[attr-defined]
            and d["type"] == "A"]
    assert vm_a[0]["answers"] == ["203.0.113.77"]
    assert [lease["ip"] for lease in summary["leases"]] == ["10.0.2.15"]  # type: ignore[attr-defined]
    text = _slirptrio("replay", str(journal), "--summary", timeout=300).stdout
    assert "10.0.2.2:8089" in text and "refused (ECONNREFUSED)" in text, text

    # The timeline of this session: valid SVG, one lane per flow, the refused one marked,
    # and it renders.
    svg = topo.dir / "session.svg"
    _slirptrio("replay", str(journal), "--timeline", str(svg), timeout=300)
    root = ET.fromstring(svg.read_text())
    ns = "{http://www.w3.org/2000/svg}"
    lanes = [g for g in root.iter(ns + "g") if g.get("class", "").split()[:1] == ["lane"]
             and "special" not in g.get("class", "")]
    assert len(lanes) == len(flows)
    failed = {g.get("data-flow") for g in lanes if "failed" in g.get("class", "")}
    assert str(refused["index"]) in failed
    kinds = {el.get("class", "").split()[1] for el in root.iter()
             if el.get("class", "").startswith("mark ")}
    assert {"syn", "established", "fin", "fail", "dns"} <= kinds, kinds
    if shutil.which("rsvg-convert"):
        png = topo.dir / "session.png"
        run(["rsvg-convert", "--zoom", "0.5", str(svg), "-o", str(png)], 60)
        image = read_png(png.read_bytes())
        assert image.width == int(root.get("width", "0")) // 2
        y = (int(next(g for g in lanes if g.get("data-flow") == str(refused["index"]))
                  .get("data-y", "0")) + 7) // 2
        pinkish = [p for p in image.row_pixels(y) if p[0] > 240 and 200 < p[1] < 225]
        assert len(pinkish) > image.width // 2


def test_qemu_nic_user(topo: Topology) -> None:
    vmlinuz, initrd = _initramfs(topo)
    rule = "tcp:127.0.0.1:0-:8080"
    go_rule = "tcp:127.0.0.1:0-:8081"
    vm = _start_vm(topo, vmlinuz, initrd, [
        "-nic", f"user,model=virtio,hostfwd={rule},hostfwd={go_rule}",
    ], "quick", "nic")
    web_port = _hostfwd_port(vm, "nic0", rule)
    go_port = _hostfwd_port(vm, "nic0", go_rule)
    vm.wait_line("VM-READY", 240)
    assert _fetch(topo, web_port).strip() == "hello from the VM"
    _go(topo, vm, go_port, 1)
    vm.wait_line("VM-DONE", 120)
    assert vm.wait(120) == EXIT_STATUS, vm.output()
    _console_checks("\n".join(vm.lines("out")))
    journal = topo.dir / "nic-nic0.journal"
    result = replay(journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr
    ends = {(f["remote"], f["end"]) for f in _flows(_summary(journal))
            if f["direction"] == "out" and f["proto"] == "tcp"}
    assert ("10.0.2.2:8080", "FIN") in ends and ("10.0.2.2:8089", "refused") in ends, ends

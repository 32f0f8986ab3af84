"""Several guests on one stack (issue 22): guest-to-guest throughput beside guest-to-host.

``sudo python -m benchmarks.guests [--seconds S] [--guests N]`` builds the e2e topology (host,
dead-end and N guest namespaces, nothing can leave), starts ``slirptrio run --listen`` (journal
and pcap on, the default) and one QEMU relay per guest on that socket, then measures with
iperf3 (``-t S``, the receiver's rate):

* guest 1 -> host: to 10.0.2.2, the NAT (an ``iperf3 -s`` on the host namespace's loopback);
* guest 1 -> guest 2: to guest 2's address, switched frame by frame by the core (no NAT);
* the same two with every guest attached, the others idle (the cost of more ports);
* the same two while guest 3 floods broadcast frames as fast as it can (raw socket on its
  tap) and one more QEMU-like client is stalled (connected, one frame sent, never reading):
  what a noisy and a dead neighbour cost the others.

It prints a markdown table and writes ``benchmarks/guests-results.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from tests.e2e.harness import HarnessError, Topology

IPERF_PORT = 5201
HERE = Path(__file__).resolve().parent

# Broadcast frames on tap0 as fast as the tap takes them, until killed.
_FLOOD = """\
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("tap0", 0))
mac = open("/sys/class/net/tap0/address").read().strip()
frame = b"\\xff" * 6 + bytes.fromhex(mac.replace(":", "")) + b"\\x88\\xb5" + bytes(300)
while True:
    try:
        s.send(frame)
    except OSError:
        pass
"""

# A guest connection that sends one frame and then never reads (its QEMU hung).
_STALL = """\
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(sys.argv[1])
frame = b"\\xff" * 6 + bytes.fromhex("5254000000ee") + b"\\x88\\xb5" + bytes(46)
s.sendall(len(frame).to_bytes(4, "big") + frame)
print("stalled", flush=True)
time.sleep(3600)
"""


def iperf(src: Topology, server: str, seconds: float) -> float:
    """Gbit/s received, ``iperf3 -c server`` from ``src``'s guest."""
    argv = ["iperf3", "-c", server, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J"]
    proc = src.guest_run(argv, seconds + 60, check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise HarnessError(f"iperf3 gave no JSON: {proc.stdout}{proc.stderr}") from exc
    if "error" in report:
        raise HarnessError(f"iperf3: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9


def measure(seconds: float, guests: int) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    with Topology("bench-guests") as topo:
        others = [topo.add_guest(f"g{i}") for i in range(2, guests + 1)]
        topo.host_spawn("iperf-host", ["iperf3", "-s", "-B", "127.0.0.1",
                                       "-p", str(IPERF_PORT)])
        topo.wait_listening(IPERF_PORT)
        st = topo.start_slirptrio("listen", seed=1)
        topo.start_relay(st.transport)
        first = others[0]
        first.start_relay(st.transport)
        topo.udhcpc()
        ip2 = first.udhcpc().ip
        first.guest_spawn("iperf-g2", ["iperf3", "-s", "-B", ip2, "-p", str(IPERF_PORT)])
        first.wait_listening(IPERF_PORT, where="guest")
        rows.append(("guest 1 -> host (10.0.2.2, NAT), 2 guests", iperf(topo, "10.0.2.2",
                                                                         seconds)))
        rows.append(("guest 1 -> guest 2 (switched), 2 guests", iperf(topo, ip2, seconds)))
        if guests > 2:
            for g in others[1:]:
                g.start_relay(st.transport)
                g.udhcpc()
            rows.append((f"guest 1 -> host, {guests} guests attached",
                         iperf(topo, "10.0.2.2", seconds)))
            rows.append((f"guest 1 -> guest 2, {guests} guests attached",
                         iperf(topo, ip2, seconds)))
            flooder = others[1].guest_spawn("flood", [sys.executable, "-c", _FLOOD])
            stalled = topo.host_spawn("stall", [sys.executable, "-c", _STALL,
                                                str(st.transport.path)])
            stalled.wait_line("stalled", 30)
            rows.append(("guest 1 -> host, guest 3 flooding broadcast, one port stalled",
                         iperf(topo, "10.0.2.2", seconds)))
            rows.append(("guest 1 -> guest 2, guest 3 flooding broadcast, one port stalled",
                         iperf(topo, ip2, seconds)))
            flooder.stop()
            stalled.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guests")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--guests", type=int, default=3)
    args = parser.parse_args(argv)
    rows = measure(args.seconds, max(2, args.guests))
    lines = [
        "# Several guests on one stack",
        "",
        f"{platform.node()}, {platform.machine()}; `slirptrio run --listen` with journal and "
        f"pcap on, one QEMU relay (`-netdev stream`) per kernel guest, MTU 1500, iperf3 -t "
        f"{args.seconds:g}, the receiver's rate. One run on a shared 2-core machine.",
        "",
        "| case | Gbit/s |",
        "|---|---|",
        *[f"| {name} | {rate:.2f} |" for name, rate in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "guests-results.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sessions a user can live with (issue #21), end to end.

* 30 ``slirptrio qemu`` sessions in one state directory with a bound: most with a QEMU that
  fails at once on a bad option (their sessions are removed at exit), one of those kept with
  ``--keep``, four real ones (a ``-machine none`` QEMU relaying the guest namespace's tap,
  whose kernel takes a lease, pings and resolves). The directory stays within its bound, the
  oldest real session goes while the one the user kept stays, ``slirptrio sessions`` lists
  them (its time is printed) and ``replay last --summary`` works.
* An upstream that never answers: a guest client with a 5 s timeout hears SERVFAIL in time
  (glibc's ``getaddrinfo`` takes it in each of its two tries; a socket with a 5 s timeout
  gets rcode 2), ``ctl info`` shows the upstream failing, and the stack logs its state once
  for several queries. (busybox ``nslookup``, like musl, never accepts SERVFAIL: it asks
  again and reports a timeout after 5 s whatever the relay does.)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, TAP, Proc, Topology, run

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
SILENT = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 5354))
print("listening", flush=True)
while True:
    s.recvfrom(4096)  # read and never answer
"""


def _env(state: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["XDG_STATE_HOME"] = str(state)
    env.pop("XDG_RUNTIME_DIR", None)
    env.update(extra or {})
    return env


def _qemu(topo: Topology, *bad: str) -> list[str]:
    """A ``-machine none`` QEMU in the guest namespace joining its tap and a user netdev on a
    hub (``bad``: an option QEMU refuses, so it exits at once)."""
    return [
        "ip", "netns", "exec", topo.guest_ns,
        "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
        "-no-user-config", *bad,
        "-netdev", f"tap,id=t0,ifname={TAP},script=no,downscript=no",
        "-netdev", "user,id=u0",
        "-netdev", "hubport,id=p0,hubid=0,netdev=t0",
        "-netdev", "hubport,id=p1,hubid=0,netdev=u0",
    ]  # fmt: skip


def _slirptrio_qemu(topo: Topology, state: Path, env: dict[str, str], *args: str) -> list[str]:
    return topo.host_cmd([sys.executable, "-m", "slirptrio", "qemu",
                          "--dns-upstream", "127.0.0.1:5353", *args])


def _sessions(env: dict[str, str]) -> list[dict[str, object]]:
    out = run([sys.executable, "-m", "slirptrio", "sessions", "--json"], 60, env=env).stdout
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def _real_session(topo: Topology, state: Path, env: dict[str, str], n: int) -> None:
    """A session whose guest takes a lease, pings the host and resolves a name."""
    argv = _slirptrio_qemu(topo, state, env, "-v", "--", *_qemu(topo))
    proc = Proc(f"qemu-real-{n}", argv, topo.dir / f"qemu-real-{n}.log", env)
    topo.procs.append(proc)
    try:
        proc.wait_line("control socket", 60, tag=None)
        deadline = time.monotonic() + 30
        while not topo._tap_carrier():
            assert proc.alive(), proc.output()
            assert time.monotonic() < deadline, "QEMU did not open the tap"
            time.sleep(0.05)
        lease = topo.udhcpc()
        assert lease.ip.startswith("10.0.2.")
        topo.guest_run(["busybox", "ping", "-c", "1", "-W", "5", "10.0.2.2"], 30)
        topo.guest_run(["busybox", "nslookup", "vm.example.test", "10.0.2.3"], 30)
    finally:
        proc.stop(signal.SIGTERM, 30)
    run(["ip", "-n", topo.guest_ns, "addr", "flush", "dev", TAP], 10)


def test_thirty_sessions_stay_bounded_and_listed(topo: Topology) -> None:
    state = topo.dir / "state"
    store = state / "slirptrio"
    topo.host_spawn("dns", [sys.executable, SERVERS, "dns", "5353"]).wait_line("listening", 10)
    env = _env(state)
    bad = ("-no-such-option",)

    def failing(*args: str) -> None:
        argv = _slirptrio_qemu(topo, state, env, *args, "--", *_qemu(topo, *bad))
        done = run(argv, 120, check=False, env=env)
        assert done.returncode == 1, done.stdout + done.stderr  # QEMU's own status

    # The first real session, kept by the user; its size sets the bound.
    _real_session(topo, state, env, 0)
    (first,) = _sessions(env)
    assert int(str(first["frames_in"])) > 5, first
    run([sys.executable, "-m", "slirptrio", "sessions", "keep", str(first["id"])], 60, env=env)
    size = int(str(first["size"]))
    # Room for the two kept sessions and two real ones (sizes are counted in disk blocks: a
    # session of a few frames takes about what an empty one does).
    bound = int(size * 4.5)
    env = _env(state, {"SLIRPTRIO_STATE_MAX": str(bound)})
    real_ids: list[str] = []
    for i in range(26):
        failing(*(("--keep",) if i == 5 else ()))
        if i in (8, 16, 24):
            _real_session(topo, state, env, i)
            real_ids.append(str(_sessions(env)[-1]["id"]))
        total = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        assert total <= bound + size, (i, total, bound)  # the newest may overshoot alone
    t = time.monotonic()
    listed = run([sys.executable, "-m", "slirptrio", "sessions"], 60, env=env)
    print(f"\n'slirptrio sessions' listed {len(listed.stdout.splitlines()) - 2} sessions in "
          f"{time.monotonic() - t:.2f} s (interpreter start included)")
    rows = _sessions(env)
    ids = [str(r["id"]) for r in rows]
    assert first["id"] in ids and rows[ids.index(str(first["id"]))]["kept"] is True
    empty = [r for r in rows if r["frames_in"] == 0 and not r["kept"]]
    kept_failed = [r for r in rows if r["kept"] and r["id"] != first["id"]]
    assert len(kept_failed) == 1 and not empty, rows  # failing sessions went at exit
    real = [r for r in rows if not r["kept"]]
    sizes = [(r["id"], r["size"], r["kept"]) for r in rows]
    # The oldest real session went first; the two newer ones fit.
    assert [r["id"] for r in real] == real_ids[1:], (sizes, bound, real_ids)
    total = sum(int(str(r["size"])) for r in rows)
    assert total <= bound, (total, bound)
    assert all(str(r["guest"]).endswith(".15") or str(r["guest"]).startswith("52:")
               for r in real), rows
    summary = run([sys.executable, "-m", "slirptrio", "replay", "last", "--summary"], 120,
                  env=env)
    assert "Leases (1)" in summary.stdout and "replay: identical" in summary.stdout, summary


def test_a_silent_upstream_gives_servfail_in_time_and_one_log_line(topo: Topology) -> None:
    topo.host_spawn("silent", [sys.executable, "-c", SILENT]).wait_line("listening", 10)
    ctl = topo.dir / "st.ctl"
    st = topo.start_slirptrio("listen", verbose=0, extra_args=[
        "--dns-upstream", "127.0.0.1:5354", "--control", str(ctl)])
    topo.start_relay(st.transport)
    topo.udhcpc()
    # glibc (the guest namespace's resolv.conf names 10.0.2.3; 5 s per try, two tries) takes
    # the SERVFAIL of each try: EAI_AGAIN.
    lookup = ("import socket, time\n"
              "t = time.monotonic()\n"
              "try:\n"
              "    socket.getaddrinfo('a.example.test', 80)\n"
              "    print('resolved')\n"
              "except socket.gaierror as e:\n"
              "    print('error', e.errno == socket.EAI_AGAIN, round(time.monotonic() - t, 2))\n")
    topo.guest_resolv.write_text("nameserver 10.0.2.3\n")
    out = topo.guest_run([sys.executable, "-c", lookup], 60, check=False)
    assert out.stdout.startswith("error True"), out.stdout + out.stderr
    print(f"\nglibc getaddrinfo: {out.stdout.strip()} (EAI_AGAIN, seconds)")
    client = ("import socket, struct, time\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "s.settimeout(5.0)\n"
              "q = struct.pack('!HHHHHH', 7, 0x100, 1, 0, 0, 0) + b'\\x01c\\x07example\\x04test"
              "\\x00\\x00\\x01\\x00\\x01'\n"
              "t = time.monotonic(); s.sendto(q, ('10.0.2.3', 53))\n"
              "r = s.recv(512)\n"
              "print('rcode', r[3] & 15, 'after', round(time.monotonic() - t, 2))\n")
    out = topo.guest_run([sys.executable, "-c", client], 30, check=False)
    assert out.returncode == 0 and "rcode 2" in out.stdout, out.stdout + out.stderr
    print(f"\na guest with a 5 s timeout: {out.stdout.strip()}")
    info = topo.host_run([sys.executable, "-m", "slirptrio", "ctl", str(ctl), "info"], 30)
    assert "DNS upstream 127.0.0.1:5354" in info.stdout and "failing: no answer" in info.stdout
    st.proc.stop(signal.SIGTERM, 30)
    summary = json.loads(run([sys.executable, "-m", "slirptrio", "replay", str(st.journal),
                              "--json"], 120).stdout)
    latencies = [d["latency_ms"] for d in summary["dns"]]
    assert latencies and all(ms is not None and ms < 5000 for ms in latencies), summary["dns"]
    failing = [ln for ln in st.proc.lines() if "DNS upstream 127.0.0.1:5354 is failing" in ln]
    assert len(failing) == 1, st.proc.output()

"""The shell's hardening with the kernel as the guest: user mistakes, local access, and running
out of file descriptors.

* Each command-line mistake, made beside a running stack in the host namespace, is one line
  (``slirptrio: error: ...``) and exit status 2, and the running stack is not disturbed.
* Under ``umask 000`` the guest, control and forward sockets are 0600; another uid cannot
  connect, and with the mode opened up the control socket still refuses it (SO_PEERCRED).
* With RLIMIT_NOFILE at 64 the guest fills the descriptors with UDP flows: TCP connections
  fail alone (RST), the guest reconnects, the control socket answers and says the host
  forward is backing off, and once the flows expire everything works again.

Every session must replay identical.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import HOST_ADDR, REPO_ROOT, Slirptrio, Topology, Transport, replay

pytestmark = pytest.mark.e2e

SERVERS = str(REPO_ROOT / "tests" / "e2e" / "servers.py")
GUEST_ECHO = 2222
HOST_HTTP = 8080
HOST_UDP = 9999
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by every uid, unlike a per-user interpreter


def py(*args: str) -> list[str]:
    return [sys.executable, SERVERS, *args]


def slirptrio_argv(*args: str) -> list[str]:
    return ["env", f"PYTHONPATH={REPO_ROOT}", sys.executable, "-m", "slirptrio", *args]


def ctl(topo: Topology, sock: Path, *args: str) -> dict[str, object]:
    out = topo.host_run(slirptrio_argv("ctl", str(sock), "--json", *args), 30, check=False)
    answer = json.loads(out.stdout)
    assert isinstance(answer, dict), out
    return answer


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("slirptrio: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def stop_and_replay(topo: Topology, st: Slirptrio) -> None:
    for proc in topo.procs:
        if proc.name.startswith("qemu"):
            proc.stop()
    assert st.stop() == 0, st.proc.output()
    result = replay(st.journal, timeout=300)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr


def fwd_port(st: Slirptrio, rule: str) -> int:
    for line in st.proc.lines("out"):
        if f"hostfwd {rule}: host port " in line:
            return int(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no port for {rule}:\n{st.proc.output()}")


def start_guest(topo: Topology, st: Slirptrio) -> None:
    topo.start_relay(st.transport)
    assert topo.udhcpc().ip == "10.0.2.15"
    topo.guest_spawn("guest-echo", py("tcp-echo", "0.0.0.0", str(GUEST_ECHO))).wait_line(
        "listening", 10
    )


def test_cli_mistakes_beside_a_running_stack(topo: Topology) -> None:
    port = 18022
    control = topo.dir / "ctl.sock"
    topo.host_spawn("http", py("http", "127.0.0.1", str(HOST_HTTP))).wait_line("listening", 10)
    # An empty host address listens on every address of the (test's own) host namespace.
    st = topo.start_slirptrio("listen", f"hostfwd=tcp::{port}-:{GUEST_ECHO}",
                              extra_args=["--control", str(control)])
    start_guest(topo, st)
    every = [line for line in st.proc.lines("err") if "every address" in line]
    assert len(every) == 1 and f"tcp::{port}-:{GUEST_ECHO}" in every[0], st.proc.output()

    d = topo.dir
    run = ["run", "--no-journal", "--no-pcap"]
    listen = ["--listen", f"unix:{d}/other.sock"]
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        # the running stack's own guest socket: refused, not stolen
        ([*run, "--listen", f"unix:{st.transport.path}"], ("in use by another program",)),
        # its host port
        ([*run, *listen, f"hostfwd=tcp::{port}-:22"], (f"tcp::{port}", "already in use")),
        ([*run, *listen, "hostfwd=tcp:127.0.0.1:18023-:22,hostfwd=tcp:127.0.0.1:18023-:23"],
         ("tcp:127.0.0.1:18023 is already forwarded",)),
        ([*run, "--listen", f"unix:{d}/missing/g.sock"], (f"no such directory {d}/missing",)),
        ([*run, *listen, "--control", f"{d}/missing/c.sock"], ("control socket",)),
        ([*run, *listen, "net=10.0.2.0/24,nonsense=1"], ("nonsense",)),
        ([*run, *listen, "dhcpstart=10.9.9.9"], ("dhcpstart",)),
        (["replay", f"{d}/missing.journal"], ("No such file",)),
        (["ctl", f"{d}/missing.ctl", "info"], ("No such file",)),
        (["ctl", str(control), "hostfwd-add", f"tcp::{port}-:22"], ("already forwarded",)),
    ]
    (d / "locked").mkdir()
    (d / "locked").chmod(0o555)
    if shutil.which("setpriv"):
        no_dac = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        cases.append((["run", *listen, "--journal", f"{d}/locked/s.journal"],
                      ("Permission denied",)))
        cases.append(([*run, "--listen", f"unix:{d}/locked/g.sock"], ("Permission denied",)))
    else:
        no_dac = []
    for args, needles in cases:
        prefix = no_dac if args[0] == "run" and "locked" in " ".join(args) else []
        argv = slirptrio_argv(*args)
        proc = topo.host_run([*argv[:2], *prefix, *argv[2:]], 60, check=False)
        one_line_error(proc, *needles)
    # The stack went on through all that: its forward and its socket work.
    assert st.transport.path.exists()
    out = topo.host_run(py("tcp-client", "127.0.0.1", str(port), "1000"), 60).stdout.strip()
    assert out == "ok"
    info = ctl(topo, control, "info")
    forwards = info["forwards"]
    assert isinstance(forwards, list) and len(forwards) == 1, info
    fwd = forwards[0]
    assert {k: fwd[k] for k in ("rule", "proto", "addr", "port", "state")} == {
        "rule": f"tcp::{port}-:{GUEST_ECHO}", "proto": "tcp", "addr": "0.0.0.0", "port": port,
        "state": "listening"}
    stop_and_replay(topo, st)


# A client for the control socket that any uid can run (the system Python, stdlib only).
_RAW_CTL = """\
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect": exc.strerror})); raise SystemExit
s.settimeout(20)
try:
    s.sendall(b'{"cmd": "info"}\\n')
except OSError:
    pass  # refused before it read: the answer may still be there
print(s.makefile().readline().strip() or json.dumps({"closed": True}))
"""


def test_socket_modes_and_peer_uid(topo: Topology) -> None:
    if not os.path.exists(SYSTEM_PYTHON) or not shutil.which("setpriv"):
        pytest.skip("needs setpriv and /usr/bin/python3 to connect as another uid")
    # A directory another uid may enter, so that only the sockets' own modes keep it out.
    topo.dir.chmod(0o711)
    pub = topo.dir / "pub"
    pub.mkdir()
    pub.chmod(0o755)
    control, fwd = pub / "ctl.sock", pub / "fwd.sock"
    transport = Transport("listen", pub / "guest.sock")
    st = topo.start_slirptrio(
        transport, f"hostfwd=unix:{fwd}-:{GUEST_ECHO}", extra_args=["--control", str(control)],
        prefix=["sh", "-c", 'umask 000 && exec "$@"', "sh"],
    )
    for path in (transport.path, control, fwd):
        mode = os.lstat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, (path, oct(mode))
    start_guest(topo, st)
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 SYSTEM_PYTHON, "-c", _RAW_CTL]

    def raw_ctl(path: Path) -> dict[str, object]:
        out = topo.host_run([*as_nobody, str(path)], 30)
        answer = json.loads(out.stdout)
        assert isinstance(answer, dict)
        return answer

    # The mode keeps another uid out of every socket.
    for path in (control, transport.path, fwd):
        assert raw_ctl(path) == {"connect": "Permission denied"}, path
    # With the mode opened up, the control socket still refuses the stranger...
    control.chmod(0o666)
    refused = raw_ctl(control)
    assert refused == {"ok": False,
                       "error": f"permission denied: uid {NOBODY} may not control this stack"}
    st.proc.wait_line(f"refused a client of uid {NOBODY}", 10, tag="err")
    # ...and still serves its owner.
    assert ctl(topo, control, "info")["ok"] is True
    out = topo.host_run(py("tcp-client", f"unix:{fwd}", "0", "1000"), 60).stdout.strip()
    assert out == "ok"
    stop_and_replay(topo, st)


# Holds N UDP flows open through the stack by sending on N sockets every half second, until
# the stop file appears.
_UDP_HOLDER = """\
import os, socket, sys, time
addr, port, n, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
for s in socks:
    s.setblocking(False)
print("holding", flush=True)
while not os.path.exists(stop):
    for s in socks:
        for op in (lambda: s.sendto(b"x", (addr, port)), lambda: s.recv(64)):
            try:
                op()
            except OSError:
                pass
    time.sleep(0.5)
print("released", flush=True)
"""

# Connects to a host forward and waits (long) for its echo.
_FWD_CLIENT = """\
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=120)
print("connected", flush=True)
s.sendall(b"hello")
s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(4096):
    got += chunk
print("ok" if got.startswith(b"hello") else f"bad {got!r}", flush=True)
"""


def _curl(topo: Topology) -> subprocess.CompletedProcess[str]:
    return topo.guest_run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w",
                           "%{size_download}", f"http://10.0.2.2:{HOST_HTTP}/1000"],
                          30, check=False)


def open_fds(st: Slirptrio) -> int:
    return len(os.listdir(f"/proc/{st.proc.pid}/fd"))


def _wait(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.2)


def _flows_to_guest(topo: Topology, control: Path) -> int:
    info = ctl(topo, control, "info")
    flows = info.get("flows")
    assert isinstance(flows, list), info
    return sum(1 for f in flows if f["guest"] == f"10.0.2.15:{GUEST_ECHO}")


def _listener_state(topo: Topology, control: Path) -> str:
    info = ctl(topo, control, "info")
    forwards = info.get("forwards")
    assert isinstance(forwards, list) and len(forwards) == 1, info
    return str(forwards[0]["state"])


def test_emfile_guest_connects_and_reconnects(topo: Topology) -> None:
    nofile = 64
    control = topo.dir / "ctl.sock"
    rule = f"tcp:127.0.0.1:0-:{GUEST_ECHO}"
    topo.host_spawn("http", py("http", "127.0.0.1", str(HOST_HTTP))).wait_line("listening", 10)
    topo.host_spawn("udp", py("udp-echo", HOST_ADDR, str(HOST_UDP))).wait_line("listening", 10)
    st = topo.start_slirptrio(
        "listen", f"udp-timeout=20,hostfwd={rule}", extra_args=["--control", str(control)],
        prefix=["prlimit", f"--nofile={nofile}", "--"],
    )
    # It said, in one line, that max-flows had to shrink to the descriptors it has.
    shrunk = [line for line in st.proc.lines("err") if "max-flows" in line]
    assert len(shrunk) == 1 and f"RLIMIT_NOFILE {nofile}" in shrunk[0], st.proc.output()
    port = fwd_port(st, rule)
    start_guest(topo, st)
    assert _curl(topo).stdout == "1000"

    # The guest fills every descriptor with UDP flows (twice as many sockets as there are).
    stop = topo.dir / "stop-udp"
    holder = topo.guest_spawn("udp-holder", [sys.executable, "-c", _UDP_HOLDER, HOST_ADDR,
                                             str(HOST_UDP), str(2 * nofile), str(stop)])
    holder.wait_line("holding", 20)
    st.proc.wait_line("Too many open files", 30, tag="err")
    _wait("every descriptor taken", lambda: open_fds(st) >= nofile, 20)

    # A guest TCP connection fails alone, at once (RST: curl's "connection refused").
    refused = _curl(topo)
    assert refused.returncode == 7, refused
    # The guest goes away; a host connection through the forward takes the descriptor its
    # connection left (the core's SYN waits for the guest)...
    for proc in topo.procs:
        if proc.name.startswith("qemu"):
            proc.stop()
    first = topo.host_spawn("fwd-client-1", [sys.executable, "-c", _FWD_CLIENT, str(port)])
    first.wait_line("connected", 20)
    _wait("the forwarded connection accepted", lambda: _flows_to_guest(topo, control) == 1, 30)
    # ...so the guest comes back with none left: the listener's spare descriptor takes it.
    topo.start_relay(st.transport)
    st.proc.wait_line("guest listener: out of file descriptors; used the spare one", 20,
                      tag="err")
    assert topo.udhcpc().ip == "10.0.2.15"
    # The SYN reaches the guest now: the connection accepted under EMFILE carries data.
    assert first.wait(90) == 0 and first.lines("out")[-1] == "ok", first.output()

    # Another host connection waits in the backlog (once the guest's UDP flows have taken
    # the descriptor the first one left); the listener backs off, and the control socket
    # (its own spare descriptor) says so.
    _wait("the descriptors taken again", lambda: open_fds(st) >= nofile, 20)
    second = topo.host_spawn("fwd-client-2", [sys.executable, "-c", _FWD_CLIENT, str(port)])
    second.wait_line("connected", 20)
    _wait("the listener backing off",
          lambda: _listener_state(topo, control) == "backing-off: EMFILE", 30)
    assert "ok" not in second.lines("out")

    # Descriptors free up as the guest's UDP flows expire: everything works again.
    stop.write_text("")
    holder.wait_line("released", 20)
    assert second.wait(90) == 0 and second.lines("out")[-1] == "ok", second.output()
    _wait("the listener listening again", lambda: _listener_state(topo, control) == "listening",
          30)
    assert _curl(topo).stdout == "1000"
    out = topo.host_run(py("tcp-client", "127.0.0.1", str(port), "1000"), 60).stdout.strip()
    assert out == "ok"
    assert st.proc.alive()
    stop_and_replay(topo, st)

"""``slirptrio qemu``: the command-line rewrite, rejections, and the child process contract
(exit status, signals, environment, terminal and inherited file descriptors), with small shell
scripts standing in for QEMU. The real VM is in tests/e2e/test_qemu.py."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from slirptrio.cli.qemu import QemuArgError, rewrite, split_keyval

REPO = pathlib.Path(__file__).resolve().parents[1]
QEMU = "qemu-system-x86_64"


def sock(i: int, name: str) -> str:
    return f"/run/st/{i}.sock"


def stream(net_id: str, i: int) -> str:
    return f"stream,id={net_id},server=off,addr.type=unix,addr.path=/run/st/{i}.sock"


def test_split_keyval_escapes() -> None:
    assert split_keyval("user,id=n0,hostname=a,,b") == ["user", "id=n0", "hostname=a,b"]
    assert split_keyval("a,,,b") == ["a,", "b"]


def test_netdev_user_keeps_its_id_and_options() -> None:
    r = rewrite([QEMU, "-m", "256", "-netdev",
                 "user,id=n0,hostfwd=tcp:127.0.0.1:0-:8080,restrict=on,hostname=a,,b",
                 "-device", "virtio-net-pci,netdev=n0"], sock)
    assert r.argv == [QEMU, "-m", "256", "-netdev", stream("n0", 0),
                      "-device", "virtio-net-pci,netdev=n0"]
    (net,) = r.nets
    assert net.id == "n0" and net.config.restrict and net.config.hostname == "a,b"
    assert net.config.hostfwd == ("tcp:127.0.0.1:0-:8080",)
    assert net.config.id == ""  # the id stays QEMU's


def test_netdev_type_user_json_and_double_dash() -> None:
    r = rewrite([QEMU, "--netdev", "id=a,type=user,net=192.168.76.0/24",
                 "-netdev", '{"type": "user", "id": "b", "hostfwd": [{"str": "tcp::2222-:22"}],'
                 ' "restrict": true}'], sock)
    assert r.argv == [QEMU, "--netdev", stream("a", 0), "-netdev", stream("b", 1)]
    a, b = r.nets
    assert str(a.config.net) == "192.168.76.0/24"
    assert b.config.hostfwd == ("tcp::2222-:22",) and b.config.restrict


def test_nic_user_becomes_netdev_and_net_nic() -> None:
    r = rewrite([QEMU, "-nic", "user,model=virtio-net-pci,mac=52:54:00:12:34:99,"
                 "hostfwd=tcp::0-:22", "-nic", "user,id=second", "-nic", "none"], sock)
    assert r.argv == [
        QEMU,
        "-netdev", stream("slirptrio-nic0", 0),
        "-net", "nic,netdev=slirptrio-nic0,model=virtio-net-pci,macaddr=52:54:00:12:34:99",
        "-netdev", stream("second", 1), "-net", "nic,netdev=second",
        "-nic", "none",
    ]  # fmt: skip
    assert r.nets[0].config.hostfwd == ("tcp::0-:22",) and r.nets[0].name == "nic0"


def test_legacy_net_user_joins_hub_zero() -> None:
    r = rewrite([QEMU, "-net", "nic", "-net", "user,hostname=vm"], sock)
    assert r.argv == [QEMU, "-net", "nic", "-netdev", stream("slirptrio-net0", 0),
                      "-netdev", "hubport,id=slirptrio-net0-hub,hubid=0,netdev=slirptrio-net0"]


def test_default_network_is_ours_too() -> None:
    r = rewrite([QEMU, "-m", "64"], sock)
    assert r.argv == [QEMU, "-m", "64", "-netdev", stream("slirptrio-net0", 0),
                      "-net", "nic,netdev=slirptrio-net0"]
    assert r.nets[0].name == "default"
    assert rewrite([QEMU, "-nodefaults"], sock).nets == []
    assert rewrite([QEMU, "-nic", "none"], sock).nets == []
    assert rewrite(["sh", "-c", "true"], sock).nets == []  # not a QEMU system emulator


def test_other_netdevs_and_help_pass_through() -> None:
    argv = [QEMU, "-netdev", "tap,id=t0,fd=3", "-netdev", "user,help", "-netdev", "help",
            "-device", "e1000,netdev=t0"]
    r = rewrite(argv, sock)
    assert r.argv == argv and r.nets == []


def test_generated_ids_avoid_the_users() -> None:
    r = rewrite([QEMU, "-netdev", "tap,id=slirptrio-nic0", "-nic", "user"], sock)
    assert r.nets[0].id == "slirptrio-nic1"


@pytest.mark.parametrize(("argv", "needle"), [
    (["-netdev", "user,hostname=x"], "Parameter 'id' is missing"),
    (["-netdev", "user,id=0bad"], "Parameter 'id' expects an identifier"),
    (["-netdev", "user,id=a", "-netdev", "user,id=a"], "Duplicate ID 'a' for netdev"),
    (["-netdev", "user,id=a,foo=1"], "option 'foo': unknown option"),
    (["-netdev", "user,id=a,dns=10.9.9.9"], "10.9.9.9 is not inside net 10.0.2.0/24"),
    (["-nic", "user,hostfwd=tcp::99999-:22"], "option 'hostfwd'"),
    (["-netdev", "user,id=a,,b"], "Parameter 'id' expects an identifier"),
    (["-netdev", "user,id=a,restrict=maybe"], "option 'restrict': expects on or off"),
    (["-daemonize"], "QEMU must stay slirptrio's child"),
])
def test_rejected_like_qemu(argv: list[str], needle: str) -> None:
    with pytest.raises(QemuArgError) as exc:
        rewrite([QEMU, *argv], sock)
    assert needle in str(exc.value)
    assert str(exc.value).startswith(argv[0])


# ------------------------------------------------------------------ the child process


def run_cli(args: list[str], tmp: pathlib.Path, *, stdin: int | None = None,
            extra_env: dict[str, str] | None = None,
            wrapper: list[str] | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_STATE_HOME=str(tmp / "state"),
               XDG_RUNTIME_DIR=str(tmp), **(extra_env or {}))
    argv = [sys.executable, "-m", "slirptrio", "qemu", "--dns-upstream", "127.0.0.1:9", *args]
    return subprocess.Popen([*(wrapper or []), *argv], env=env, text=True, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_rejection_is_one_line_exit_2(tmp_path: pathlib.Path) -> None:
    p = run_cli(["--", QEMU, "-netdev", "user,id=n0,dns=10.9.9.9"], tmp_path)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and out == ""
    assert err == ("slirptrio: error: -netdev user,id=n0,dns=10.9.9.9: option 'dns': "
                   "10.9.9.9 is not inside net 10.0.2.0/24\n")


def test_exit_status_environment_and_fds(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "fd3.txt"
    marker.write_text("from fd 3\n")
    script = 'echo "env=$SLIRPTRIO_TEST_ENV"; cat <&3; echo "args=$*"; exit 7'
    # slirptrio starts with file descriptor 3 open, as for -netdev tap,fd=3.
    p = run_cli(["--no-journal", "--", "sh", "-c", script, "sh", "-netdev", "tap,id=t0,fd=3",
                 "-m", "1"], tmp_path, extra_env={"SLIRPTRIO_TEST_ENV": "kept",
                                                  "FD3": str(marker)},
                wrapper=["sh", "-c", 'exec "$@" 3<"$FD3"', "sh"])
    out, err = p.communicate(timeout=60)
    assert p.returncode == 7, err
    assert out.splitlines() == ["env=kept", "from fd 3", "args=-netdev tap,id=t0,fd=3 -m 1"]


def test_stdin_is_the_childs(tmp_path: pathlib.Path) -> None:
    p = run_cli(["--no-journal", "--", "sh", "-c", "read line; echo got:$line"], tmp_path,
                stdin=subprocess.PIPE)
    out, err = p.communicate("typed at the console\n", timeout=60)
    assert p.returncode == 0 and out == "got:typed at the console\n", err


def test_signals_are_forwarded_and_stacks_stop_after(tmp_path: pathlib.Path) -> None:
    # A stand-in for QEMU that needs its user netdev: it connects to the stack's socket
    # (the argument after addr.path=) and exits 42 on SIGTERM.
    script = (
        'for a in "$@"; do case "$a" in *addr.path=*) sock="${a##*addr.path=}";; esac; done; '
        'test -S "$sock" || exit 99; '
        'trap "echo term; exit 42" TERM; echo started; while :; do sleep 0.1; done'
    )
    p = run_cli(["--journal", str(tmp_path / "j-{id}.journal"), "--", "sh", "-c", script, "sh",
                 "-netdev", "user,id=n0", "-device", "e1000,netdev=n0"], tmp_path)
    assert p.stdout is not None
    assert p.stdout.readline() == "started\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 42, err
    assert out == "term\n"
    assert f"netdev n0: journal {tmp_path / 'j-n0.journal'}, pcap {tmp_path / 'j-n0.pcap'}" \
        in err
    replay = subprocess.run([sys.executable, "-m", "slirptrio", "replay",
                             str(tmp_path / "j-n0.journal")], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert "identical" in replay.stdout, replay.stdout + replay.stderr
    # The private directory is gone.
    assert not list(tmp_path.glob("slirptrio-*"))


def test_killed_child_gives_128_plus_signal(tmp_path: pathlib.Path) -> None:
    p = run_cli(["--no-journal", "--", "sh", "-c", "kill -9 $$"], tmp_path)
    p.communicate(timeout=60)
    assert p.returncode == 128 + 9


def test_missing_command(tmp_path: pathlib.Path) -> None:
    p = run_cli(["--no-journal", "--", "/nonexistent/qemu"], tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 127 and "cannot run /nonexistent/qemu" in err
    p = run_cli([], tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "QEMU_COMMAND" in err


def test_a_stack_that_cannot_start_is_one_line_and_qemu_never_runs(tmp_path: pathlib.Path) -> None:
    import socket

    marker = tmp_path / "ran"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = run_cli(["--no-journal", "--", "sh", "-c", f"touch {marker}", "-netdev",
                     f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"], tmp_path)
        _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.count("\n") == 1, err
    assert f"cannot bind tcp:127.0.0.1:{port}" in err
    assert not marker.exists()


def test_host_side_checks_and_journal_options(tmp_path: pathlib.Path) -> None:
    p = run_cli(["--no-journal", "--", QEMU, "-netdev", "user,id=n0,tftp=/nonexistent/tftp"],
                tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err == ("slirptrio: error: -netdev user,id=n0,tftp=/nonexistent"
                                         "/tftp: tftp=/nonexistent/tftp: not a directory\n")
    p = run_cli(["--journal-max", "lots", "--", QEMU], tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "argument --journal-max" in err
    # A bounded journal: the stack writes segments there, and the session replays.
    p = run_cli(["--journal", str(tmp_path / "j.journal"), "--journal-max", "1M", "--", "sh",
                 "-c", "exit 0", "-netdev", "user,id=n0"], tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert list((tmp_path / "j.journal").glob("*.seg"))

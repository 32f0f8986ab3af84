"""``ctl info``: forwards as QEMU's ``info usernet`` lists them (static and runtime, with the
bound host address and port; guest forwards), then the flows; ``--json`` has it all."""

from __future__ import annotations

import json
import pathlib
import socket

import trio

import slirptrio
from slirptrio.cli.ctl import format_answer
from slirptrio.shell.control import request


async def test_info_lists_static_and_runtime_forwards(tmp_path: pathlib.Path) -> None:
    ctl = str(tmp_path / "ctl.sock")
    unix = str(tmp_path / "ssh.sock")
    options = ("hostfwd=tcp:127.0.0.1:0-:8080,"
               "guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:9")
    async with slirptrio.open_stack(options, seed=1, dns_upstreams=["127.0.0.1:9"]) as stack:
        await stack.serve_control(ctl)
        static_port = stack.hostfwds()["tcp:127.0.0.1:0-:8080"]
        added = await request(ctl, {"cmd": "hostfwd-add", "rule": "udp:127.0.0.1:0-:53"})
        assert added["ok"]
        await request(ctl, {"cmd": "hostfwd-add", "rule": f"unix:{unix}-10.0.2.16:22"})
        answer = await request(ctl, {"cmd": "info"})
        assert answer["ok"]
        fws = {f["rule"]: f for f in answer["forwards"]}
        tcp = fws["tcp:127.0.0.1:0-:8080"]
        assert (tcp["kind"], tcp["proto"], tcp["addr"], tcp["port"], tcp["static"]) \
            == ("hostfwd", "tcp", "127.0.0.1", static_port, True)
        assert (tcp["guest_addr"], tcp["guest_port"]) == ("10.0.2.15", 8080)
        udp = fws["udp:127.0.0.1:0-:53"]
        assert udp["port"] == added["port"] and not udp["static"]
        assert fws[f"unix:{unix}-10.0.2.16:22"]["addr"] == unix
        guest = fws["tcp:10.0.2.100:80-tcp:127.0.0.1:9"]
        assert (guest["kind"], guest["addr"], guest["port"], guest["target"]) == (
            "guestfwd", "10.0.2.100", 80, "tcp:127.0.0.1:9"
        )
        # The bound ports are real listeners.
        with socket.create_connection(("127.0.0.1", static_port), timeout=5):
            pass
        text = format_answer("info", answer)
        lines = text.splitlines()
        assert lines[0].startswith("Proto[State]")
        assert any(ln.startswith("TCP[HOST_FORWARD]") and f"127.0.0.1:{static_port}" in ln
                   and "10.0.2.15:8080" in ln and "static" in ln for ln in lines), text
        assert any(ln.startswith("UDP[HOST_FORWARD]") and f"127.0.0.1:{added['port']}" in ln
                   and "runtime" in ln for ln in lines), text
        assert any(ln.startswith("UNIX[HOST_FORWARD]") and unix in ln for ln in lines), text
        assert any(ln.startswith("TCP[GUEST_FORWARD]") and "10.0.2.100:80" in ln
                   and "tcp:127.0.0.1:9" in ln for ln in lines), text
        # Removing one takes it out of the list.
        await request(ctl, {"cmd": "hostfwd-remove", "rule": f"udp:127.0.0.1:{added['port']}"})
        answer = await request(ctl, {"cmd": "info"})
        assert "udp:127.0.0.1:0-:53" not in {f["rule"] for f in answer["forwards"]}
        assert [f.rule for f in stack.forwards()] == [f["rule"] for f in answer["forwards"]]


def test_format_any_address_and_listener_state() -> None:
    answer = {"ok": True, "flows": [], "forwards": [
        {"kind": "hostfwd", "proto": "tcp", "rule": "tcp::2222-:22", "addr": "0.0.0.0",
         "port": 2222, "guest_addr": "10.0.2.15", "guest_port": 22, "static": True,
         "state": "backing-off"},
    ]}
    (row,) = format_answer("info", answer).splitlines()[1:]
    assert row.startswith("TCP[HOST_FORWARD,backing-off]") and "*:2222" in row


async def test_cli_ctl_info_json(tmp_path: pathlib.Path) -> None:
    import os
    import sys

    ctl = str(tmp_path / "ctl.sock")
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
    async with slirptrio.open_stack("hostfwd=tcp:127.0.0.1:0-:80", seed=1,
                                    dns_upstreams=["127.0.0.1:9"]) as stack:
        await stack.serve_control(ctl)
        port = stack.hostfwds()["tcp:127.0.0.1:0-:80"]
        done = await trio.run_process([sys.executable, "-m", "slirptrio", "ctl", ctl, "--json",
                                       "info"], capture_stdout=True, env=env)
        data = json.loads(done.stdout)
        assert data["forwards"][0]["port"] == port
        done = await trio.run_process([sys.executable, "-m", "slirptrio", "ctl", ctl, "info"],
                                      capture_stdout=True, env=env)
        assert "TCP[HOST_FORWARD]" in done.stdout.decode()
        assert f"127.0.0.1:{port}" in done.stdout.decode()

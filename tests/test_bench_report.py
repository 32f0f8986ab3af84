"""benchmarks/bench.py's IPv6 case: which cases measure it, how the table sets IPv6 beside
IPv4 (ratio, verdict, n/a with the reason), and pingpong.c over IPv6 on the loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import bench
from benchmarks.bench import Bulk, Case, CaseResult, Settings

SETTINGS = Settings(3, 2, 1, 2, ("slirptrio", "libslirp", "slirp4netns"), False)


def _result(case: Case, v4: float, v6: float | None, *, error: str = "") -> CaseResult:
    """A result whose IPv4 figures are ``v4`` and IPv6 ones ``v6`` (scaled per measurement)."""
    r = CaseResult(case, label=case.stack)
    r.bulk = {"up": Bulk(v4, 50.0, 30.0, 0), "down": Bulk(v4 / 2, 40.0, None, 0)}
    r.rr, r.rr_cpu_us = 1000 * v4, 200.0
    r.crr, r.crr_cpu_us = 100 * v4, 800.0
    if v6 is not None:
        r.bulk6 = {"up": Bulk(v6, 50.0, 30.0, 0), "down": Bulk(v6 / 2, 40.0, None, 0)}
        r.rr6, r.rr6_cpu_us = 1000 * v6, 220.0
        r.crr6, r.crr6_cpu_us = 100 * v6, 800.0
    if error:
        r.errors.append(error)
    return r


def _rows(table: str, what: str) -> list[str]:
    return [line for line in table.splitlines() if line.startswith("|") and what in line]


def _render(results: list[CaseResult]) -> str:
    return bench.render({r.case.key: r for r in results}, [], SETTINGS, 0.0)


ST = Case("slirptrio", 1500, "listen", True, rr=True, idle=True, ipv6=True)
LIB = Case("libslirp", 1500, rr=True, idle=True, ipv6=True)


def test_ipv6_measured_on_the_mtu_1500_sessions_of_slirptrio_and_libslirp() -> None:
    with_v6 = {c.key for c in bench.cases(SETTINGS) if c.ipv6}
    assert with_v6 == {"slirptrio/1500/listen/j", "libslirp/1500"}


@given(v4=st.floats(0.1, 10.0), v6=st.floats(0.1, 10.0))
def test_ipv6_rows_carry_the_ratio_and_the_verdict(v4: float, v6: float) -> None:
    table = _render([_result(ST, v4, v6), _result(LIB, v4, v4)])
    rows = _rows(table, "**IPv6**")
    assert len(rows) == 4  # bulk both ways, round trips, connections
    ratio = v6 / v4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert f"; {ratio:.2f}x IPv4, CPU/" in cells[1]
        assert "; 1.00x IPv4" in cells[2]  # libslirp's IPv6 equals its IPv4 here
        assert cells[5] == f"slirptrio {ratio:.2f}x IPv4"
        assert cells[6] == ("within 20%" if ratio >= 0.8 else "**not within 20%**")
    # CPU per operation beside the rate: 220 against 200 µs per round trip.
    assert "CPU/op 1.10x" in _rows(table, "round trips/s, **IPv6**")[0]


def test_ipv6_that_failed_is_na_with_its_reason() -> None:
    lib = _result(LIB, 1.0, None, error="IPv6 bulk up: no SLAAC address: none in 30s")
    table = _render([_result(ST, 1.0, 0.9), lib])
    up = _rows(table, "guest→host, MTU 1500, **IPv6**")[0]
    assert "n/a (IPv6 bulk up: no SLAAC address: none in 30s)" in up
    # A measurement that was never tried is not claimed to have failed.
    assert _rows(table, "round trips/s, **IPv6**")[0].split("|")[3].strip() == "—"


def test_replay_table_names_the_ipv6_session() -> None:
    r = _result(ST, 1.0, 1.0)
    r.replay = bench.ReplayCheck(True, "identical: ...", 10.0, 2.0)
    assert "| bulk, rr, crr (IPv4 and IPv6), idle flows |" in _render([r])


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_pingpong_over_either_family(host: str, tmp_path: Path) -> None:
    if ":" in host and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    binary = bench.compile_pingpong(tmp_path)
    port = str(_free_port(host))
    server = subprocess.Popen(
        [str(binary), "serve", host, port], stdout=subprocess.PIPE, text=True
    )
    holder = None
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        for mode in ("rr", "crr"):
            out = subprocess.run(
                [str(binary), mode, host, port, "0.05"], capture_output=True, text=True,
                timeout=30, check=True,
            ).stdout.split()
            assert out[0] == mode and int(out[1]) > 0, out
        holder = subprocess.Popen(
            [str(binary), "hold", host, port, "3"], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held 3 refused 0"
        # The server speaks the family of its address only.
        other = "127.0.0.1" if ":" in host else "::1"
        if ":" in other and not _has_ipv6_loopback():
            return
        miss = subprocess.run(
            [str(binary), "rr", other, port, "0.05"], capture_output=True, text=True, timeout=30
        )
        assert miss.returncode != 0 and "connect" in miss.stderr
    finally:
        for p in (holder, server):
            if p is not None:
                p.kill()
                p.wait()

"""A journal recorded on the native fast path replays identical on the pure one, and the
reverse; so do the recorded captures (checked on whichever path the test process uses, and by
tests/run.sh once more under SLIRPTRIO_PURE=1)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from replay.engine import replay_journal
from slirptrio.wire import fast
from tests.sessions import record

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(
    fast.IMPL != "native", reason=f"needs the native path beside the pure one: {fast.REASON}"
)


def _python(code: str, pure: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SLIRPTRIO_PURE", None)
    if pure:
        env["SLIRPTRIO_PURE"] = "1"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=300,
    )


def test_native_journal_replays_identical_on_the_pure_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "native.journal"
    steps, counters = record(str(path))
    # the session exercises coalescing in, runs out, out-of-order data and pings
    assert counters["tcp_gro_merged"] > 50 and counters["tcp_ooo_queued"] >= 1
    assert counters["frames_out"] > 100 and counters["icmp_echo_replies"] == 1
    out = _python(
        "import sys; from slirptrio.wire import fast; assert fast.IMPL == 'pure';"
        f"from replay.engine import main; sys.exit(main({str(path)!r}))",
        pure=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f"identical: {steps} records")


def test_pure_journal_replays_identical_on_the_native_path(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "pure.journal"
    out = _python(
        "from slirptrio.wire import fast; assert fast.IMPL == 'pure';"
        f"from tests.sessions import record; print(record({str(path)!r})[0])",
        pure=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = replay_journal(path)
    assert result.identical, result.divergence
    assert result.records == int(out.stdout)


def test_both_paths_record_the_same_bytes(tmp_path: pathlib.Path) -> None:
    record(str(tmp_path / "native.journal"))
    out = _python(
        f"from tests.sessions import record; record({str(tmp_path / 'pure.journal')!r})",
        pure=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    native = _journal_bytes(tmp_path / "native.journal")
    assert native == _journal_bytes(tmp_path / "pure.journal")
    assert len(native) > 300_000  # the bulk data is in it


def _journal_bytes(journal: pathlib.Path) -> bytes:
    return b"".join(seg.read_bytes() for seg in sorted(journal.glob("*.seg")))


def test_replay_exports_every_frame_of_the_runs(tmp_path: pathlib.Path) -> None:
    import io

    from slirptrio.wire.pcap import read_pcap

    path = tmp_path / "s.journal"
    _steps, counters = record(str(path))
    out = io.BytesIO()
    result = replay_journal(path, pcap_out=out)
    assert result.identical
    frames = list(read_pcap(io.BytesIO(out.getvalue())))
    assert len(frames) == result.frames == counters["frames_in"] + counters["frames_out"]


def test_the_fuzzer_drives_both_paths_alike() -> None:
    """The stack fuzzer (bursts of guided, mutated segments through the coalescing path) with
    one seed on each path: the same counters, so the same decisions all the way (the fuzzer's
    next frames depend on the stack's answers)."""
    import json
    import logging

    from tests.fuzz import fuzz

    code = (
        "import json, logging; logging.getLogger('slirptrio').setLevel(logging.CRITICAL);"
        "from slirptrio.wire import fast; assert fast.IMPL == 'pure';"
        "from tests.fuzz import fuzz;"
        "s = fuzz('tcp', 3200, seed=11, session_frames=800, replay_every=4);"
        "print(json.dumps(dict(s.counters), sort_keys=True))"
    )
    level = logging.getLogger("slirptrio").level
    logging.getLogger("slirptrio").setLevel(logging.CRITICAL)
    try:
        native = fuzz("tcp", 3200, seed=11, session_frames=800, replay_every=4)
    finally:
        logging.getLogger("slirptrio").setLevel(level)
    assert native.counters["tcp_gro_merged"] > 0
    out = _python(code, pure=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == dict(native.counters)


def test_an_ipv6_journal_replays_identical_on_the_other_path(tmp_path: pathlib.Path) -> None:
    """The IPv6 fast path (parse, coalescing, runs out) recorded natively replays identical on
    the pure path, and a pure recording on the native one, byte for byte the same journal."""
    from tests.sessions6 import record as record6

    native = tmp_path / "native6.journal"
    steps, counters = record6(str(native))
    assert counters["tcp_gro_merged"] > 50 and counters["tcp_ooo_queued"] >= 1
    assert counters["frames_out"] > 100
    out = _python(
        "import sys; from slirptrio.wire import fast; assert fast.IMPL == 'pure';"
        f"from replay.engine import main; sys.exit(main({str(native)!r}))",
        pure=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f"identical: {steps} records")
    pure = tmp_path / "pure6.journal"
    out = _python(
        "from slirptrio.wire import fast; assert fast.IMPL == 'pure';"
        f"from tests.sessions6 import record; print(record({str(pure)!r})[0])",
        pure=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = replay_journal(pure)
    assert result.identical, result.divergence
    assert result.records == int(out.stdout) == steps
    assert _journal_bytes(native) == _journal_bytes(pure)

"""A journal belongs to one session, as a user meets it on the command line: a second stack
naming a live journal or pcap is refused in one line (exit 2) and the first goes on intact; an
earlier session's journal is replaced only with --overwrite; a path in a missing directory, or
one that cannot be created, is one line and exit 2 before anything starts; ``slirptrio qemu``
keeps one journal per netdev and names at exit only what it wrote."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def env(tmp: pathlib.Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), XDG_STATE_HOME=str(tmp / "state"),
                XDG_RUNTIME_DIR=str(tmp))


def start(tmp: pathlib.Path, name: str, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "slirptrio", "run", "--listen", f"unix:{tmp / name}.sock",
            "--dns-upstream", "127.0.0.1:9", *args]
    return subprocess.Popen(argv, env=env(tmp), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_ready(p: subprocess.Popen[str], timeout: float = 60) -> list[str]:
    """The stack's stdout lines up to ``slirptrio: ready`` (bounded by ``timeout``)."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line)
            if line.startswith("slirptrio: ready"):
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout) and lines and lines[-1].startswith("slirptrio: ready"), lines
    return lines


def refused(tmp: pathlib.Path, *args: str) -> str:
    """Run a stack that must not start; return its one line of stderr."""
    p = start(tmp, "refused", *args)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2, (out, err)
    assert "ready" not in out and err.count("\n") == 1, err
    assert err.startswith("slirptrio: error: "), err
    return err


def stop(p: subprocess.Popen[str]) -> str:
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    return err


def replay(journal: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slirptrio", "replay", str(journal)],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=120)


def test_a_live_journal_is_refused_to_a_second_stack(tmp_path: pathlib.Path) -> None:
    journal, pcap = tmp_path / "s.journal", tmp_path / "s.pcap"
    first = start(tmp_path, "first", "--journal", str(journal), "--pcap", str(pcap),
                  "hostfwd=tcp:127.0.0.1:0-:22")
    try:
        wait_ready(first)
        # the writer thread writes the first segment (header and snapshot) within moments
        deadline = time.monotonic() + 30
        while not (segments := sorted(journal.glob("*.seg"))) or not segments[0].stat().st_size:
            assert time.monotonic() < deadline, "no first segment"
            time.sleep(0.05)
        # the same journal, with or without --overwrite: refused, nothing touched
        for extra in ([], ["--overwrite"]):
            err = refused(tmp_path, "--journal", str(journal), "--no-pcap", *extra)
            assert f"{journal}: in use by another running slirptrio" in err, err
        # the same pcap with another journal: refused too
        err = refused(tmp_path, "--journal", str(tmp_path / "other.journal"), "--pcap",
                      str(pcap), "--overwrite")
        assert f"{pcap}: in use by another running slirptrio" in err, err
        assert sorted(journal.glob("*.seg")) == segments
        assert first.poll() is None  # the first session runs on
    finally:
        if first.poll() is None:
            stop(first)
    result = replay(journal)
    assert result.returncode == 0 and "identical" in result.stdout, result.stdout + result.stderr
    # the first session's own header (its hostfwd) is what the journal holds
    from slirptrio.journal import open_journal
    assert "tcp:127.0.0.1:0-:22" in str(open_journal(journal).header.config)


def test_an_earlier_session_is_replaced_only_with_overwrite(tmp_path: pathlib.Path) -> None:
    journal, pcap = tmp_path / "s.journal", tmp_path / "s.pcap"
    first = start(tmp_path, "first", "--journal", str(journal), "--pcap", str(pcap),
                  "--seed", "11")
    wait_ready(first)
    stop(first)
    kept = {p.name: p.read_bytes() for p in journal.glob("*.seg")}
    err = refused(tmp_path, "--journal", str(journal), "--pcap", str(pcap))
    assert f"{journal}: holds an earlier session's journal (give --overwrite" in err, err
    err = refused(tmp_path, "--journal", str(tmp_path / "new.journal"), "--pcap", str(pcap))
    assert f"{pcap}: exists (an earlier session's; give --overwrite" in err, err
    assert not (tmp_path / "new.journal").exists() or not list(
        (tmp_path / "new.journal").glob("*.seg"))
    assert {p.name: p.read_bytes() for p in journal.glob("*.seg")} == kept
    from slirptrio.journal import open_journal
    assert open_journal(journal).header.seed == 11
    second = start(tmp_path, "second", "--journal", str(journal), "--pcap", str(pcap),
                   "--seed", "12", "--overwrite")
    wait_ready(second)
    stop(second)
    assert open_journal(journal).header.seed == 12


def test_missing_directories_and_impossible_paths(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing" / "a" / "b" / "x.journal"
    err = refused(tmp_path, "--journal", str(missing))
    assert "does not exist" in err and str(missing) in err, err
    assert not (tmp_path / "missing").exists()
    err = refused(tmp_path, "--journal", str(tmp_path / "ok.journal"), "--pcap",
                  str(tmp_path / "nope" / "x.pcap"))
    assert "does not exist" in err and "x.pcap" in err, err
    assert not (tmp_path / "nope").exists()
    assert not list((tmp_path / "ok.journal").glob("*.seg")) if (
        tmp_path / "ok.journal").exists() else True
    err = refused(tmp_path, "--journal", "/proc/x.journal", "--no-pcap")
    assert "/proc/x.journal" in err, err
    assert not os.path.exists("/proc/x.journal")


def qemu(tmp: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "slirptrio", "qemu", "--dns-upstream", "127.0.0.1:9", *args]
    return subprocess.run(argv, env=env(tmp), capture_output=True, text=True, timeout=120)


def test_qemu_keeps_one_journal_per_netdev(tmp_path: pathlib.Path) -> None:
    nets = ["-netdev", "user,id=n0", "-netdev", "user,id=n1"]
    # a template without {id}: each netdev gets its own file beside it
    p = qemu(tmp_path, "--journal", str(tmp_path / "vm.journal"), "--", "sh", "-c", "exit 0",
             *nets)
    assert p.returncode == 0, p.stderr
    for name in ("n0", "n1"):
        journal = tmp_path / f"vm-{name}.journal"
        assert list(journal.glob("*.seg")), p.stderr
        assert f"netdev {name}: journal {journal}, pcap {tmp_path / f'vm-{name}.pcap'}" \
            in p.stderr
    # the default: one each, in the state directory (made for them; --keep, or retention
    # removes a session in which nothing came from the guest)
    p = qemu(tmp_path, "--keep", "--", "sh", "-c", "exit 0", *nets)
    assert p.returncode == 0, p.stderr
    journals = sorted((tmp_path / "state" / "slirptrio").glob("*.journal"))
    assert [j.name.rsplit("-", 1)[1] for j in journals] == ["n0.journal", "n1.journal"]
    # the same journals again: refused, the earlier ones kept, QEMU never run
    marker = tmp_path / "ran"
    p = qemu(tmp_path, "--journal", str(tmp_path / "vm.journal"), "--", "sh", "-c",
             f"touch {marker}", *nets)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "--overwrite" in p.stderr and not marker.exists()
    # a journal that cannot be made: one line, and no path printed as if written
    p = qemu(tmp_path, "--journal", "/proc/x-{id}.journal", "--", "sh", "-c", "exit 0", *nets)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "journal /proc" not in p.stderr

"""``slirptrio replay`` as a user meets it (issue #21): a closed pipe ends quietly, windows
combine with the summary, the timeline and the pcap and are checked, an output that cannot be
written is named (not the journal), what replay writes is 0600, help texts agree; the summary
and the timeline details (span, answered pings, failed lookups, wide columns, PNG)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest

from replay.summary import Flow, Summary, format_summary, summarize_journal
from replay.timeline import LEGEND, render_svg
from slirptrio.journal import open_journal
from tests.pngread import read_png
from tests.sessionbuilder import Session
from tests.test_cli import one_line_error, slirptrio

SVG = "{http://www.w3.org/2000/svg}"
ARTIFACTS = os.environ.get("SLIRPTRIO_TEST_ARTIFACTS")  # keep pictures to look at


def build(n: int) -> Session:
    """``n`` flows 20 ms apart (every 10th refused, every 10th+7 reset), lookups (one in
    eight NXDOMAIN), an unanswered UDP datagram; then 3 s of ticks."""
    s = Session()
    s.lease()
    for i in range(n):
        if i % 10 == 3:
            s.refused("203.0.113.1", 30000 + i, 81)
        elif i % 10 == 7:
            s.connection("203.0.113.1", 30000 + i, 80, ending="host-reset", retransmit=True)
        else:
            s.connection("203.0.113.1", 30000 + i, 80, response=b"x" * (200 * (i % 5 + 1)))
        if i % 4 == 0:
            s.dns(f"host{i}.example.test", 5000 + i, "203.0.113.77" if i % 8 else None)
        s.now += 20_000_000
    s.udp("203.0.113.9", 6000, 7777, b"anyone?")
    s.tick_until(3000)
    return s


@pytest.fixture(scope="module")
def big() -> Session:
    return build(300)


@pytest.fixture(scope="module")
def small() -> Session:
    return build(24)


def test_closed_pipe_ends_quietly(big: Session) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "slirptrio", "replay", big.journal(), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH":
                                                            str(pathlib.Path.cwd())})
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()  # as `| head -c 10` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141  # what a shell shows for cat or grep so ended
    assert err == ""


@pytest.mark.parametrize("window", [("30s", "10s"), ("#50", "#20"), ("2s", "2s")])
def test_an_inverted_window_is_one_line_exit_2(small: Session, window: tuple[str, str]) -> None:
    proc = slirptrio(["replay", small.journal(), "--summary", "--from", window[0],
                      "--until", window[1]])
    one_line_error(proc, "--until", "not after")
    proc = slirptrio(["replay", small.journal(), "--from", window[0], "--until", window[1]])
    one_line_error(proc, "--until")


def test_a_window_limits_summary_json_timeline_and_pcap(small: Session,
                                                        tmp_path: pathlib.Path) -> None:
    whole = summarize_journal(small.journal())
    starts = sorted(f.start_ns for f in whole.flows)
    lo, hi = starts[5], starts[10]
    pcap = tmp_path / "w.pcap"
    svg = tmp_path / "w.svg"
    proc = slirptrio(["replay", small.journal(), "--json", "--from", f"{lo}ns", "--until",
                      f"{hi}ns", "--pcap", str(pcap), "--timeline", str(svg)])
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    indexes = [f["index"] for f in got["flows"]]
    alive = [f.index for f in whole.flows
             if f.start_ns < hi and (f.end_ns if f.end_ns is not None else 1 << 62) >= lo]
    assert indexes == alive and 5 <= len(indexes) < len(whole.flows)
    assert got["span"]["window"] is not None
    assert all(lo / 1e9 - 1e-6 <= d["t_s"] < hi / 1e9 for d in got["dns"])
    # The pcap holds the window's frames only: every timestamp inside it.
    import dpkt

    origin = open_journal(small.journal()).header.origin_ns
    with pcap.open("rb") as f:
        times = [ts for ts, _ in dpkt.pcap.Reader(f)]
    assert times and all(lo - 1000 <= int(Decimal(ts) * 10**9) - origin < hi + 1000
                         for ts in times)
    assert len(lanes(ET.parse(svg).getroot())) == len(alive)
    text = slirptrio(["replay", small.journal(), "--summary", "--from", f"{lo}ns",
                      "--until", f"{hi}ns"])
    assert text.returncode == 0 and "window" in text.stdout, text.stderr
    # A window in which nothing happened: an empty summary of it, not a negative span.
    quiet = slirptrio(["replay", small.journal(), "--json", "--from", "100s", "--until", "101s"])
    assert quiet.returncode == 0, quiet.stderr
    span = json.loads(quiet.stdout)["span"]
    assert span["window_records"] == 0 and span["duration_s"] == 1.0


def test_an_output_that_cannot_be_written_is_named(small: Session) -> None:
    for option in ("--pcap", "--timeline"):
        proc = slirptrio(["replay", small.journal(), option, "/missing/dir/t.out"])
        line = one_line_error(proc, option, "/missing/dir/t.out", "No such file")
        assert "journal" not in line
    proc = slirptrio(["replay", "/missing/j.journal", "--pcap", "/tmp/x.pcap"])
    one_line_error(proc, "journal", "/missing/j.journal")


def test_what_replay_writes_is_private(small: Session, tmp_path: pathlib.Path) -> None:
    outs = [tmp_path / "a.pcap", tmp_path / "b.svg", tmp_path / "c.pcap"]
    outs[2].write_bytes(b"old")
    outs[2].chmod(0o644)
    old = os.umask(0o022)
    try:
        assert slirptrio(["replay", small.journal(), "--pcap", str(outs[0])]).returncode == 0
        assert slirptrio(["replay", small.journal(), "--timeline", str(outs[1])]).returncode == 0
        assert slirptrio(["replay", small.journal(), "--pcap", str(outs[2])]).returncode == 0
    finally:
        os.umask(old)
    for out in outs:
        assert stat.S_IMODE(out.stat().st_mode) == 0o600, out
        assert out.stat().st_size > 100


def test_help_texts_agree() -> None:
    run, qemu = (slirptrio([cmd, "--help"]).stdout for cmd in ("run", "qemu"))
    for text in (run, qemu):
        flat = " ".join(text.split())
        assert "--journal PATH journal directory" in flat, flat
        assert "journal file" not in flat


def lanes(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(SVG + "g") if "lane" in g.get("class", "").split()
            and "special" not in g.get("class", "").split()]


def test_the_timeline_fits_its_content_and_its_legend_has_every_glyph(small: Session) -> None:
    summary = summarize_journal(small.journal())
    root = ET.fromstring(render_svg(summary, title="x" * 30))
    width = float(root.get("width", "0"))
    # Head lines wrap inside the picture (about 6.2 px per character at 11 px).
    for el in root.iter(SVG + "text"):
        if el.get("class") == "headline":
            assert 10 + 6.2 * len(el.text or "") < width, el.text
    legend = next(g for g in root.iter(SVG + "g") if g.get("class") == "legend")
    in_legend = {el.get("class", "").split()[1] for el in legend.iter()
                 if el.get("class", "").startswith("legend-mark")}
    used = {el.get("class", "").split()[1] for el in root.iter()
            if el.get("class", "").startswith("mark ")}
    used |= {"dns-failed"} if any(lk.failed for lk in summary.lookups) else set()
    assert used - {"dns", "dhcp"} <= in_legend | {"failed"}, used - in_legend
    assert "dns-failed" in in_legend and {k for k, _t in LEGEND} - {"failed-flow"} <= in_legend
    # An unanswered datagram flow ends at its last frame, not at the session's end.
    udp = next(f for f in summary.flows if f.proto == "udp" and f.remote.endswith(":7777"))
    lane = next(g for g in lanes(root) if g.get("data-flow") == str(udp.index))
    life = next(el for el in lane.iter(SVG + "line") if el.get("class") == "life")
    assert life.get("stroke-dasharray") is None
    assert float(life.get("x2", "0")) < width - 100


def test_many_failures_wrap_with_a_count_of_the_rest(big: Session) -> None:
    root = ET.fromstring(render_svg(summarize_journal(big.journal())))
    heads = [el.text or "" for el in root.iter(SVG + "text") if el.get("class") == "headline"]
    failing = [h for h in heads[1:] if h.startswith(("failed", "  "))]
    assert 1 < len(failing) <= 3 and failing[-1].rstrip().endswith("more")
    details = next(g for g in root.iter(SVG + "g") if g.get("class") == "details")
    assert sum(1 for _ in details.iter(SVG + "text")) <= 42


@pytest.mark.skipif(shutil.which("rsvg-convert") is None,
                    reason="rsvg-convert (Debian librsvg2-bin; tests/run.sh installs it)")
def test_timeline_png_of_24_flows(small: Session, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "t.png"
    proc = slirptrio(["replay", small.journal(), "--timeline", str(out)])
    assert proc.returncode == 0, proc.stderr
    image = read_png(out.read_bytes())
    assert image.width == 1400 and image.height > 24 * 14
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    red = sum(1 for y in range(image.height - 200, image.height)
              for p in image.row_pixels(y) if p[0] > 150 and p[1] < 60 and p[2] < 60)
    assert red > 100  # the failures' details are written in red at the bottom
    if ARTIFACTS:
        shutil.copy(out, os.path.join(ARTIFACTS, "timeline-24.png"))


def test_summary_span_ping_lookups_and_wide_columns(small: Session,
                                                    tmp_path: pathlib.Path) -> None:
    s = summarize_journal(small.journal())
    text = format_summary(s)
    failed = sum(1 for lk in s.lookups if lk.failed)
    assert failed and f"lookups, {failed} failed)" in text
    # The session's end from its record: the span covers it, not only the records.
    header = open_journal(small.journal()).header
    journal = tmp_path / "session-20260101-000000-1.journal"
    shutil.copytree(small.journal(), journal)
    record = tmp_path / "session-20260101-000000-1.session.json"
    record.write_text(json.dumps({"journal": journal.name,
                                  "end_wall_ns": header.origin_ns + 60 * 10**9}))
    assert summarize_journal(str(journal)).span_ns >= 60 * 10**9 - (s.first_ns or 0)
    first = (s.first_ns or 0) / 1e9
    assert f"({60 - first:.3f} s; the last record at" in format_summary(
        summarize_journal(str(journal)))
    # Long IPv6 endpoints keep the columns in line.
    wide = Summary(header)
    wide.flows = [
        Flow(1, "tcp", "out", "10.0.2.15:40000", "203.0.113.1:80", 0, end="FIN"),
        Flow(2, "tcp", "out", "[fec0::5054:ff:fe12:3456]:40000",
             "[2001:db8:1234:5678:9abc:def0:1234:5678]:8080", 0, end="refused"),
        Flow(3, "icmp", "out", "10.0.2.15", "203.0.113.1", 0, end="answered"),
    ]
    rows = [ln for ln in format_summary(wide).splitlines() if ln.strip()[:1].isdigit()
            and ln.split()[1] in ("tcp", "icmp")]
    assert len(rows) == 3
    ends = {ln.rindex("  ") for ln in rows}
    assert len(ends) == 1, rows


def test_an_answered_ping_to_the_outside_reads_answered() -> None:
    from slirptrio.core.events import IcmpEchoOpen, IcmpEchoReply, IcmpEchoSend
    from tests import guestframes as gf

    s = Session()
    s.lease()
    effects = s.guest(gf.icmp_echo("203.0.113.1", ident=7, seq=1))
    opened = [e for e in effects if isinstance(e, IcmpEchoOpen)]
    sent = [e for e in effects if isinstance(e, IcmpEchoSend)]
    assert opened and sent, effects
    s.step(IcmpEchoReply(opened[0].flow, sent[0].seq, sent[0].data), 3)
    unanswered = s.guest(gf.icmp_echo("203.0.113.2", ident=8, seq=1))
    assert any(isinstance(e, IcmpEchoOpen) for e in unanswered)
    s.tick_until(500)
    flows = {f.remote: f for f in summarize_journal(s.journal()).flows if f.proto == "icmp"}
    answered, silent = flows["203.0.113.1"], flows["203.0.113.2"]
    assert (answered.end, answered.end_detail, answered.failed) == ("answered", "1/1 replies",
                                                                    False)
    assert (silent.end, silent.failed) == ("no reply", True)


def test_replay_imports_neither_the_shell_nor_the_reports() -> None:
    """``slirptrio replay JOURNAL`` loads the core and the replay, not trio, the shell, the other
    commands, the summary or the divergence report's decoders (their import is most of a short
    replay's time)."""
    journal = pathlib.Path(__file__).resolve().parents[1] / "captures" / "dns-udp.journal"
    code = (
        "import sys\nfrom slirptrio.cli import main\n"
        f"rc = main(['replay', {str(journal)!r}])\n"
        "heavy = ('trio', 'slirptrio.shell', 'slirptrio.api', 'slirptrio.cli.qemu',"
        " 'slirptrio.cli.run', 'replay.summary', 'replay.timeline', 'replay.describe', 'dpkt')\n"
        "print(rc, sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.splitlines()[-1] == "0 []", out

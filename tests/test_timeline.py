"""The timeline SVG: valid, one lane per flow with its marks, failed flows marked, and it
renders (rsvg-convert, from Debian's librsvg2-bin) to a PNG whose pixels show them."""

from __future__ import annotations

import errno
import pathlib
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from replay.summary import Summary, summarize_journal
from replay.timeline import FAILED_BG, render_svg
from slirptrio.cli import main as cli_main
from tests.pngread import read_png
from tests.sessionbuilder import Session

SVG = "{http://www.w3.org/2000/svg}"
CAPTURES = pathlib.Path(__file__).parent.parent / "captures"


def session(n: int) -> Summary:
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
    s.tick_until(3000)
    return summarize_journal(s.journal())


def lanes(root: ET.Element) -> list[ET.Element]:
    return [g for g in root.iter(SVG + "g") if "lane" in g.get("class", "").split()
            and "special" not in g.get("class", "").split()]


def marks(lane: ET.Element) -> list[str]:
    return [el.get("class", "").split()[1] for el in lane.iter()
            if el.get("class", "").startswith("mark ")]


def test_lanes_and_marks() -> None:
    summary = session(20)
    root = ET.fromstring(render_svg(summary, title="scripted"))
    assert root.tag == SVG + "svg"
    drawn = lanes(root)
    assert [int(g.get("data-flow", "0")) for g in drawn] == [f.index for f in summary.flows]
    by_flow = {int(g.get("data-flow", "0")): g for g in drawn}
    for f in summary.flows:
        g = by_flow[f.index]
        assert ("failed" in g.get("class", "")) == f.failed
        kinds = marks(g)
        assert kinds[0] == "syn"
        if f.end == "refused":
            assert "fail" in kinds
        elif f.end == "RST":
            assert "rst" in kinds and "retransmit" in kinds
        else:
            assert f.end == "FIN" and kinds.count("fin") == 2 and "established" in kinds
            assert g.find(f"{SVG}g[@class='data']") is not None
    dns = [el for el in root.iter() if el.get("class", "").startswith("mark dns")]
    assert len(dns) == 5 and sum("failed" in el.get("class", "") for el in dns) == 3
    headline = " ".join(el.text or "" for el in root.iter(SVG + "text")
                        if el.get("class") == "headline")
    assert "20 flows, 4 failed" in headline and "#4 tcp 203.0.113.1:81 refused" in headline


def test_hundreds_of_flows_stay_one_lane_each() -> None:
    summary = session(300)
    text = render_svg(summary)
    root = ET.fromstring(text)
    drawn = lanes(root)
    assert len(drawn) == 300
    assert sum("failed" in g.get("class", "") for g in drawn) == 60
    ys = [int(g.get("data-y", "0")) for g in drawn]
    assert ys == sorted(ys) and len(set(ys)) == 300
    assert int(root.get("height", "0")) < 300 * 20 + 400


@pytest.mark.skipif(shutil.which("rsvg-convert") is None,
                    reason="rsvg-convert (Debian librsvg2-bin; tests/run.sh installs it)")
def test_renders_to_png_with_failed_lanes_visible(tmp_path: pathlib.Path) -> None:
    summary = session(12)
    svg = tmp_path / "t.svg"
    svg.write_text(render_svg(summary))
    png = tmp_path / "t.png"
    subprocess.run(["rsvg-convert", "--zoom", "0.5", str(svg), "-o", str(png)], check=True,
                   timeout=60)
    image = read_png(png.read_bytes())
    root = ET.fromstring(svg.read_text())
    assert image.width == int(root.get("width", "0")) // 2
    pink = tuple(int(FAILED_BG[i : i + 2], 16) for i in (1, 3, 5))

    def pinkish(y: int) -> int:
        return sum(1 for p in image.row_pixels(y) if abs(p[0] - pink[0]) < 8
                   and abs(p[1] - pink[1]) < 8 and abs(p[2] - pink[2]) < 8)

    for g in lanes(root):
        y = (int(g.get("data-y", "0")) + 7) // 2
        if "failed" in g.get("class", ""):
            assert pinkish(y) > image.width // 2, g.get("data-flow")
        else:
            assert pinkish(y) == 0, g.get("data-flow")


def test_cli_timeline(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tcp.svg"
    journal = CAPTURES / "tcp-http.journal"
    assert cli_main(["replay", str(journal), "--timeline", str(out)]) == 0
    assert "timeline: " in capsys.readouterr().out
    root = ET.fromstring(out.read_text())
    ends = {g.get("data-end") for g in lanes(root)}
    assert ends == {"FIN", "refused"}


def test_refused_attempt_is_one_failed_lane() -> None:
    s = Session()
    s.lease()
    s.refused("203.0.113.1", 40002, 81, errno.ECONNREFUSED)
    root = ET.fromstring(render_svg(summarize_journal(s.journal())))
    (g,) = lanes(root)
    assert g.get("class") == "lane failed" and marks(g) == ["syn", "fail"]

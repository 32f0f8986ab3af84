"""A picture of a session: one lane per flow over time, as an SVG file.

Theory of operation
-------------------
:func:`render_svg` draws a :class:`~replay.summary.Summary`. Time runs left to right over the
session's span; above the flows, a DHCP lane and a DNS lane carry the leases and lookups. Each
flow is a lane, in the order the flows started, labelled with its number, protocol, endpoints
and how it ended. In a lane:

* a line from the flow's start to its end (dashed for a TCP connection still open at the end
  of the journal; a datagram flow or an unanswered attempt ends at its last frame);
* data: shaded blocks where bytes moved, darker for more (per pixel column, four shades);
* marks: set-up (a green triangle at the SYN, a dot when established), FIN (a grey bar),
  retransmissions (orange ticks), RST (a red bar), a refused or timed-out attempt (a red
  cross), an ICMP error (a purple diamond); DNS lookups are diamonds in the DNS lane (red when
  unanswered or failed).

A failed flow (refused, reset, timed out, unreachable, an ICMP error) has a pink lane and a red
label, and the failed flows are listed under the title, so it stands out at a glance even in a
session of hundreds of flows. Every lane and mark carries a ``class`` (``lane``, ``failed``,
``mark syn`` ...) and a ``<title>`` (a tooltip in browsers), so tests and tools can find them.
Only plain SVG 1.1 is used: rsvg, browsers and Inkscape draw it alike. The time before the
guest's first frame (QEMU starting, boot) is squeezed into a grey band when long; the failed
flows' and lookups' details are also written out below the lanes, so that a PNG
(:func:`render_png`, through rsvg-convert) carries them too. Every glyph is in the legend.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from xml.sax.saxutils import escape, quoteattr

from replay.summary.model import Flow, Summary

MAX_LANES = 3000
"""Flow lanes drawn; beyond, the failed flows are still drawn and the rest counted."""

WIDTH = 1400
LABEL_W = 470
PLOT_X0 = LABEL_W + 10
PLOT_X1 = WIDTH - 20
LANE_H = 14
LABEL_CHARS = 76  # what fits in LABEL_W at 10 px monospace
AXIS_H = 24

FAILED_BG = "#fbd5d5"
FAILED_FG = "#c00000"
STRIPE_BG = "#f3f5f8"
DATA_SHADES = ("#b9cdea", "#86a8da", "#4f7fc6", "#1f56a8")
COLORS = {
    "syn": "#1a9641",
    "established": "#1a9641",
    "fin": "#707070",
    "rst": "#d7191c",
    "fail": "#d7191c",
    "retransmit": "#f28e00",
    "icmp": "#8e44ad",
}
LINE = {"ok": "#8a8a8a", "failed": "#d7191c", "open": "#8a8a8a"}
DHCP_COLORS = {"ACK": "#1a9641", "NAK": "#d7191c", "RELEASE": "#707070", "DISCOVER": "#9ecae1"}
BOOT_W = 60
"""Pixels for the time before the guest's first frame when it is squeezed."""
HEAD_CHARS = 200  # what fits in WIDTH at 11 px sans
MAX_FAILED_LINES = 3
"""Headline lines listing failed flows; the last one ends with "+k more"."""
MAX_DETAILS = 40
"""Failed flows and lookups described below the lanes (a PNG has no tooltips)."""
DETAIL_CHARS = 225  # what fits in WIDTH at 10 px monospace
LEGEND = (
    ("syn", "set-up"), ("established", "established"), ("data", "data"),
    ("retransmit", "retransmission"), ("fin", "FIN"), ("rst", "RST"),
    ("fail", "refused / timed out"), ("icmp", "ICMP error"), ("open", "open at the end"),
    ("dns", "DNS lookup"), ("dns-failed", "failed lookup (NXDOMAIN, SERVFAIL, no answer)"),
    ("dhcp-discover", "DHCP DISCOVER"), ("dhcp-ack", "ACK"), ("dhcp-nak", "NAK"),
    ("dhcp-release", "RELEASE"), ("boot", "before the guest's first frame"),
    ("failed-flow", "failed flow"),
)
"""Every glyph the picture uses, in the legend's order."""


def _nice_step(span_s: float, ticks: int = 10) -> float:
    raw = span_s / ticks
    mag = 10 ** _floor_log10(raw)
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def _floor_log10(x: float) -> int:
    n = 0
    if x <= 0:
        return 0
    while x >= 10:
        x /= 10
        n += 1
    while x < 1:
        x *= 10
        n -= 1
    return n


def _fmt_s(t: float, step: float) -> str:
    if step >= 1:
        return f"{t:.0f} s"
    if step >= 0.1:
        return f"{t:.1f} s"
    if step >= 0.01:
        return f"{t:.2f} s"
    return f"{t * 1000:.1f} ms"


class _Canvas:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)


def _label(f: Flow) -> str:
    arrow = "→" if f.direction == "out" else "←"
    end = f.end
    if f.icmp_errors and end not in ("refused", "timed out", "unreachable"):
        end += ", ICMP error"
    text = f"{f.index:>4} {f.proto:<4} {f.guest} {arrow} {f.remote}  {end}"
    if len(text) > LABEL_CHARS:  # long (IPv6) endpoints: keep the end, which matters most
        keep = LABEL_CHARS - len(end) - 3
        text = text[: max(keep, 10)] + "…  " + end
    return text


def _tooltip(f: Flow) -> str:
    lines = [
        f"flow {f.index}: {f.proto} {f.guest} {'→' if f.direction == 'out' else '←'} "
        f"{f.remote}" + (f" (host {f.host})" if f.host else ""),
        f"start {f.start_ns / 1e9:.6f} s, duration {f.duration_ns / 1e9:.6f} s",
        f"{f.bytes_to_host} bytes to the host, {f.bytes_to_guest} to the guest",
        f"end: {f.end}" + (f" ({f.end_detail})" if f.end_detail else ""),
    ]
    if f.retransmits:
        lines.append(f"{f.retransmits} retransmissions")
    if f.icmp_errors:
        lines.append("ICMP: " + "; ".join(sorted(set(f.icmp_errors))))
    return "\n".join(lines)


def _wrap(items: list[str], prefix: str, width_chars: int, max_lines: int) -> list[str]:
    """``items`` joined by commas into lines of at most ``width_chars``; beyond ``max_lines``
    the last line ends with ``+k more``."""
    lines: list[str] = []
    cur = prefix
    for n, item in enumerate(items):
        piece = item if cur == prefix else ", " + item
        if len(cur) + len(piece) > width_chars and cur != prefix:
            if len(lines) + 1 == max_lines:
                cur += f", +{len(items) - n} more"
                lines.append(cur)
                return lines
            lines.append(cur + ",")
            cur = "  " + item
        else:
            cur += piece
    lines.append(cur)
    return lines


def render_svg(summary: Summary, *, title: str = "") -> str:
    """The session as an SVG document (text)."""
    t0 = summary.first_ns or 0
    span = max(summary.span_ns, 1_000_000)
    t_end = t0 + span
    plot_w = PLOT_X1 - PLOT_X0
    # The time before the guest's first frame (QEMU starting, firmware, boot) is squeezed
    # into BOOT_W pixels when it would take more than a tenth of the picture.
    g = summary.first_guest_ns
    boot = g is not None and g - t0 > span // 10 and g < t_end
    g_ns = g if g is not None and boot else t0

    def x(t_ns: int) -> float:
        if boot and t_ns <= g_ns:
            return PLOT_X0 + max(0, t_ns - t0) * BOOT_W / max(1, g_ns - t0)
        x0, w = (PLOT_X0 + BOOT_W, plot_w - BOOT_W) if boot else (PLOT_X0, plot_w)
        return x0 + (t_ns - g_ns) * w / max(1, t_end - g_ns)

    flows = summary.flows
    failed = [f for f in flows if f.failed]
    if len(flows) > MAX_LANES:
        keep = {f.index for f in failed}
        drawn = [f for f in flows if f.index in keep or f.index <= MAX_LANES]
    else:
        drawn = list(flows)
    not_drawn = len(flows) - len(drawn) + summary.flows_not_kept
    # Several guests (issue 22): their lanes grouped, each group under its guest's address.
    rows: list[Flow | str] = list(drawn)
    if len(summary.guests) > 1:
        rows = []
        for ip in sorted({_guest_ip(f) for f in drawn}, key=_ip_key):
            rows.append(ip)
            rows += [f for f in drawn if _guest_ip(f) == ip]

    failed_lookups = summary.lookups_failed
    head_lines = [
        f"{len(flows) + summary.flows_not_kept} flows, {len(failed)} failed; "
        f"{len(summary.lookups)} DNS lookups, {failed_lookups} failed; span {span / 1e9:.3f} s; "
        f"replay {summary.replay}"
    ]
    if failed:
        head_lines += _wrap([f"#{f.index} {f.proto} {f.remote} {f.end}" for f in failed],
                            "failed: ", HEAD_CHARS, MAX_FAILED_LINES)
    if not_drawn:
        head_lines.append(f"{not_drawn} flows not drawn (too many)")
    legend_y = 28 + 16 * len(head_lines)
    legend_rows = _legend_rows()
    axis_y = legend_y + 16 * (len(legend_rows) - 1) + 26
    special = [("DHCP", "dhcp"), ("DNS", "dns")]
    lanes_y = axis_y + AXIS_H
    flow_y0 = lanes_y + len(special) * LANE_H + 6
    details = _details(summary, failed)
    grid_bottom = flow_y0 + len(rows) * LANE_H + 10
    height = grid_bottom + AXIS_H + (16 * len(details) + 10 if details else 0)

    c = _Canvas()
    c.add(
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" '
        'font-family="DejaVu Sans, Verdana, sans-serif" font-size="11">'
    )
    c.add(f"<title>{escape('slirptrio session ' + title)}</title>")
    c.add(f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>')
    c.add(f'<text x="10" y="20" font-size="15" font-weight="bold">'
          f"{escape('slirptrio session ' + title)}</text>")
    for i, line in enumerate(head_lines):
        fill = FAILED_FG if i and line.startswith(("failed", "  ")) else "#333"
        c.add(f'<text class="headline" x="10" y="{38 + 16 * i}" fill="{fill}" '
              f'xml:space="preserve">{escape(line)}</text>')
    _legend(c, legend_y, legend_rows)

    # time axis and grid (session time; ticks over the part after the boot band)
    step = _nice_step((t_end - g_ns) / 1e9)
    ticks: list[float] = []
    k = int(-(-(g_ns - t0) / 1e9 // step)) if boot else 0
    while k * step <= span / 1e9 + 1e-12 and len(ticks) < 200:
        ticks.append(k * step)
        k += 1
    c.add('<g class="axis" font-size="10" fill="#555">')
    for tk in ticks:
        xx = x(t0 + int(tk * 1e9))
        c.add(f'<line x1="{xx:.1f}" y1="{axis_y + 4}" x2="{xx:.1f}" y2="{grid_bottom}" '
              'stroke="#e2e2e2" stroke-width="1"/>')
        c.add(f'<text x="{xx:.1f}" y="{axis_y}" text-anchor="middle">{_fmt_s(tk, step)}</text>')
        c.add(f'<text x="{xx:.1f}" y="{grid_bottom + 14}" text-anchor="middle">'
              f"{_fmt_s(tk, step)}</text>")
    c.add("</g>")
    if boot:
        bx = PLOT_X0
        boot_tip = f"before the guest's first frame: {(g_ns - t0) / 1e9:.3f} s (compressed)"
        c.add(f'<g class="boot"><rect x="{bx}" y="{axis_y + 4}" width="{BOOT_W}" '
              f'height="{grid_bottom - axis_y - 4}" fill="#eeeeee"/>'
              f'<text x="{bx + BOOT_W / 2:.1f}" y="{axis_y}" text-anchor="middle" '
              f'font-size="10" fill="#555">boot {(g_ns - t0) / 1e9:.1f} s</text>'
              f"<title>{escape(boot_tip)}</title></g>")

    # special lanes
    dhcp_y = lanes_y
    dns_y = lanes_y + LANE_H
    c.add(f'<g class="lane special" data-lane="dhcp" data-y="{dhcp_y}">')
    c.add(f'<text x="10" y="{dhcp_y + 11}" font-weight="bold">DHCP</text>')
    for n in summary.dhcp:
        kind = n.data.get("type", "")
        if kind not in ("ACK", "NAK", "RELEASE", "DISCOVER"):
            continue
        xx = x(n.t_ns)
        c.add(f'<circle class="mark dhcp {kind.lower()}" cx="{xx:.1f}" cy="{dhcp_y + 7}" r="4" '
              f'fill="{DHCP_COLORS[kind]}"><title>{escape(f"{n.t_ns / 1e9:.3f} s {n.text}")}'
              "</title></circle>")
    c.add("</g>")
    c.add(f'<g class="lane special" data-lane="dns" data-y="{dns_y}">')
    c.add(f'<text x="10" y="{dns_y + 11}" font-weight="bold">DNS</text>')
    for lk in summary.lookups:
        xx = x(lk.t_ns)
        color = FAILED_FG if lk.failed else "#2b83ba"
        cls = "mark dns failed" if lk.failed else "mark dns"
        answer = ", ".join(lk.answers) or (lk.rcode if lk.answered_ns else "no answer")
        tip = f"{lk.t_ns / 1e9:.3f} s {lk.name} {lk.qtype} → {answer}"
        yy = dns_y + 7
        c.add(f'<path class="{cls}" d="M{xx:.1f},{yy - 5} l4,5 l-4,5 l-4,-5 z" fill="{color}">'
              f"<title>{escape(tip)}</title></path>")
    c.add("</g>")

    # flow lanes
    lane_no = 0
    for i, row in enumerate(rows):
        y = flow_y0 + i * LANE_H
        if isinstance(row, str):
            c.add(f'<g class="lane guest" data-guest="{escape(row)}"><text x="10" y="{y + 11}" '
                  f'font-weight="bold">guest {escape(row)}</text></g>')
            continue
        _lane(c, row, y, lane_no, x, t_end)
        lane_no += 1

    # what the tooltips say about failures, written out (a PNG has no tooltips)
    if details:
        y0 = grid_bottom + AXIS_H + 12
        c.add('<g class="details" font-family="DejaVu Sans Mono, monospace" font-size="10">')
        for i, line in enumerate(details):
            fill = "#333" if i == 0 else FAILED_FG
            c.add(f'<text x="10" y="{y0 + 16 * i}" fill="{fill}" xml:space="preserve">'
                  f"{escape(line)}</text>")
        c.add("</g>")

    c.add("</svg>")
    return "\n".join(c.parts) + "\n"


def _guest_ip(f: Flow) -> str:
    """The guest's address of a flow ("10.0.2.15:40012", "[fec0::5]:22" -> the address)."""
    host = f.guest.rsplit(":", 1)[0] if f.guest.count(":") == 1 or "]" in f.guest else f.guest
    return host.strip("[]")


def _ip_key(text: str) -> tuple[int, int]:
    try:
        a = ipaddress.ip_address(text)
    except ValueError:
        return (9, 0)
    return (a.version, int(a))


def _details(summary: Summary, failed: list[Flow]) -> list[str]:
    """One line per failed flow and failed lookup (at most :data:`MAX_DETAILS`)."""
    lines = []
    for f in failed:
        arrow = "→" if f.direction == "out" else "←"
        text = (f"#{f.index} {f.proto} {f.guest} {arrow} {f.remote}"
                + (f" (host {f.host})" if f.host and f.host != f.remote else "")
                + f" at {f.start_ns / 1e9:.3f} s: {f.end}"
                + (f" ({f.end_detail})" if f.end_detail else ""))
        if f.icmp_errors:
            text += "; ICMP " + "; ".join(sorted(set(f.icmp_errors)))
        lines.append(text[:DETAIL_CHARS])
    for lk in summary.lookups:
        if lk.failed:
            what = lk.rcode if lk.answered_ns is not None else "no answer"
            lines.append(f"DNS {lk.name} {lk.qtype} at {lk.t_ns / 1e9:.3f} s: {what}")
    if not lines:
        return []
    more = len(lines) - MAX_DETAILS
    lines = lines[:MAX_DETAILS] + ([f"... +{more} more"] if more > 0 else [])
    return ["Failures:", *lines]


def render_png(summary: Summary, *, title: str = "") -> bytes:
    """The timeline as a PNG image: the SVG drawn by ``rsvg-convert`` (Debian's
    librsvg2-bin); the failures' details are written on the picture itself.

    Raises:
      OSError: rsvg-convert is missing or failed.
    """
    import shutil
    import subprocess

    tool = shutil.which("rsvg-convert")
    if tool is None:
        raise OSError("a PNG timeline needs rsvg-convert (Debian: librsvg2-bin); "
                      "write .svg instead")
    done = subprocess.run([tool, "-f", "png"], input=render_svg(summary, title=title).encode(),
                          capture_output=True, check=False, timeout=300)
    if done.returncode != 0 or not done.stdout.startswith(b"\x89PNG"):
        raise OSError(f"rsvg-convert failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _legend_rows() -> list[list[tuple[str, str]]]:
    """The legend's items, in rows that fit the picture's width."""
    rows: list[list[tuple[str, str]]] = [[]]
    xx = 10.0
    for kind, text in LEGEND:
        w = 24 + 6.2 * len(text)
        if xx + w > WIDTH - 10 and rows[-1]:
            rows.append([])
            xx = 10.0
        rows[-1].append((kind, text))
        xx += w
    return rows


def _legend(c: _Canvas, y: int, rows: list[list[tuple[str, str]]]) -> None:
    c.add(f'<g class="legend" font-size="10" transform="translate(0,{y})">')
    for r, row in enumerate(rows):
        xx = 10.0
        yy = 16 * r
        for kind, text in row:
            if kind == "failed-flow":
                c.add(f'<rect x="{xx:.1f}" y="{yy - 6}" width="22" height="12" '
                      f'fill="{FAILED_BG}"/>')
                c.add(f'<text x="{xx + 27:.1f}" y="{yy + 4}" fill="{FAILED_FG}">'
                      f"{escape(text)}</text>")
                xx += 34 + 6.2 * len(text)
                continue
            _glyph(c, kind, xx + 5, float(yy), legend=True)
            c.add(f'<text x="{xx + 14:.1f}" y="{yy + 4}">{escape(text)}</text>')
            xx += 24 + 6.2 * len(text)
    c.add("</g>")


def _glyph(c: _Canvas, kind: str, xx: float, yy: float, *, legend: bool = False,
           tip: str = "") -> None:
    cls = f"legend-mark {kind}" if legend else f"mark {kind}"
    title = f"<title>{escape(tip)}</title>" if tip else ""
    color = COLORS.get(kind, "#000")
    if kind == "syn":
        c.add(f'<path class="{cls}" d="M{xx - 3:.1f},{yy - 5} l7,5 l-7,5 z" fill="{color}">'
              f"{title}</path>")
    elif kind == "established":
        c.add(f'<circle class="{cls}" cx="{xx:.1f}" cy="{yy}" r="2.5" fill="{color}">'
              f"{title}</circle>")
    elif kind == "fin":
        c.add(f'<rect class="{cls}" x="{xx - 1:.1f}" y="{yy - 5}" width="2.5" height="10" '
              f'fill="{color}">{title}</rect>')
    elif kind == "rst":
        c.add(f'<rect class="{cls}" x="{xx - 2:.1f}" y="{yy - 6}" width="4" height="12" '
              f'fill="{color}">{title}</rect>')
    elif kind == "retransmit":
        c.add(f'<path class="{cls}" d="M{xx - 3:.1f},{yy + 4} L{xx:.1f},{yy - 4} '
              f'L{xx + 3:.1f},{yy + 4}" stroke="{color}" stroke-width="2" fill="none">'
              f"{title}</path>")
    elif kind == "fail":
        c.add(f'<path class="{cls}" d="M{xx - 5:.1f},{yy - 5} l10,10 M{xx - 5:.1f},{yy + 5} '
              f'l10,-10" stroke="{color}" stroke-width="2.5" fill="none">{title}</path>')
    elif kind == "icmp":
        c.add(f'<path class="{cls}" d="M{xx:.1f},{yy - 5} l5,5 l-5,5 l-5,-5 z" fill="{color}">'
              f"{title}</path>")
    elif kind == "data":
        c.add(f'<rect class="{cls}" x="{xx - 4:.1f}" y="{yy - 5}" width="9" height="10" '
              f'fill="{DATA_SHADES[2]}"/>')
    elif kind in ("dns", "dns-failed"):
        fill = FAILED_FG if kind == "dns-failed" else "#2b83ba"
        c.add(f'<path class="{cls}" d="M{xx:.1f},{yy - 5} l4,5 l-4,5 l-4,-5 z" '
              f'fill="{fill}"/>')
    elif kind.startswith("dhcp-"):
        c.add(f'<circle class="{cls}" cx="{xx:.1f}" cy="{yy}" r="4" '
              f'fill="{DHCP_COLORS[kind[5:].upper()]}"/>')
    elif kind == "open":
        c.add(f'<line class="{cls}" x1="{xx - 6:.1f}" y1="{yy}" x2="{xx + 6:.1f}" y2="{yy}" '
              f'stroke="{LINE["open"]}" stroke-width="1.5" stroke-dasharray="4,3"/>')
    elif kind == "boot":
        c.add(f'<rect class="{cls}" x="{xx - 6:.1f}" y="{yy - 6}" width="12" height="12" '
              'fill="#eeeeee" stroke="#bbbbbb"/>')


def _lane(
    c: _Canvas, f: Flow, y: int, i: int, x: Callable[[int], float], session_end: int
) -> None:
    mid = y + LANE_H / 2
    cls = "lane failed" if f.failed else "lane"
    c.add(f'<g class="{cls}" data-flow="{f.index}" data-end={quoteattr(f.end)} data-y="{y}">')
    c.add(f"<title>{escape(_tooltip(f))}</title>")
    if f.failed:
        c.add(f'<rect x="0" y="{y}" width="{WIDTH}" height="{LANE_H}" fill="{FAILED_BG}"/>')
    elif i % 2:
        c.add(f'<rect x="0" y="{y}" width="{WIDTH}" height="{LANE_H}" fill="{STRIPE_BG}"/>')
    fg = FAILED_FG if f.failed else "#222"
    weight = ' font-weight="bold"' if f.failed else ""
    c.add(f'<text x="6" y="{y + 11}" font-family="DejaVu Sans Mono, monospace" font-size="10" '
          f'fill="{fg}"{weight} xml:space="preserve">{escape(_label(f))}</text>')
    x0 = x(f.start_ns)
    if f.end_ns is not None:
        x1, dash = x(f.end_ns), ""
    elif f.proto == "tcp" and f.established_ns is not None:
        x1, dash = x(session_end), ' stroke-dasharray="4,3"'  # a connection still up
    else:
        # A datagram flow or an unanswered attempt: it ends where its last frame was.
        x1, dash = x(f.last_ns), ""
    color = LINE["failed"] if f.failed else LINE["ok"]
    c.add(f'<line class="life" x1="{x0:.1f}" y1="{mid}" x2="{max(x1, x0 + 1):.1f}" y2="{mid}" '
          f'stroke="{color}" stroke-width="1.5"{dash}/>')
    _data(c, f, y, x)
    for t, kind in f.marks:
        _glyph(c, kind, x(t), mid, tip=f"{t / 1e9:.6f} s {kind}")
    c.add("</g>")


def _data(c: _Canvas, f: Flow, y: int, x: Callable[[int], float]) -> None:
    """Shaded blocks where bytes moved: one value per pixel column, four shades."""
    bins = f.activity.bins()
    if not bins:
        return
    width = f.activity.width_ns
    cols: dict[int, int] = {}
    for start, n in bins:
        a = int(x(start))
        b = max(a, int(x(start + width)) - 1)
        share = n // (b - a + 1)
        for col in range(a, b + 1):
            cols[col] = cols.get(col, 0) + share
    top = max(cols.values()) or 1
    runs: list[tuple[int, int, int]] = []  # (first column, last column, shade)
    for col in sorted(cols):
        frac = cols[col] / top
        shade = 0 if frac < 0.1 else 1 if frac < 0.35 else 2 if frac < 0.7 else 3
        if runs and runs[-1][1] == col - 1 and runs[-1][2] == shade:
            runs[-1] = (runs[-1][0], col, shade)
        else:
            runs.append((col, col, shade))
    c.add(f'<g class="data" data-columns="{len(cols)}">')
    for a, b, shade in runs:
        c.add(f'<rect x="{a}" y="{y + 3}" width="{b - a + 1}" height="{LANE_H - 6}" '
              f'fill="{DATA_SHADES[shade]}"/>')
    c.add("</g>")

"""Inline-SVG drawing helpers and page assets (CSS, JS) for the HTML report.

Pure string building with no dependencies, so the report stays one self-contained file that
opens offline (no plotting library, no CDN).

The escape rule of the whole report: text from a run file reaches the page only through
:func:`esc` (element text and attribute values alike, quotes included), the one place that
escapes; numbers are checked to be numbers when read (:mod:`autoprune.run_files`) and printed
through format specs. The drawing helpers here take plain text (labels, axis titles, bar names)
and escape it themselves. The page carries no data inside its ``<script>``: the script reads
the escaped ``data-*`` attributes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["SCRIPT", "STYLE", "Frame", "Scale", "axes", "budget_line", "esc", "fixed",
           "hbar_chart", "line_chart", "nice_ticks", "padded_range", "percent", "step_path",
           "svg", "tick_labels"]

Formatter = Callable[[float], str]
#: ``(value, decimals) -> text``: a tick format whose precision :func:`tick_labels` chooses.
Decimals = Callable[[float, int], str]


def esc(value: object) -> str:
    """The report's one escape: ``value`` as text that is safe as element content and inside a
    quoted attribute (``& < > " '`` all escaped)."""
    return html.escape(str(value), quote=True)


def _general(value: float) -> str:
    return f"{value:g}"


def percent(value: float, decimals: int) -> str:
    """A fraction as a percentage with ``decimals`` places: ``percent(0.975, 1) == "97.5%"``."""
    return f"{value * 100:.{decimals}f}%"


def fixed(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def tick_labels(ticks: Sequence[float], fmt: Decimals, most: int = 6) -> list[str]:
    """The labels of ``ticks`` with the fewest decimals (all alike) that tells them apart, so an
    axis never reads "97 %, 98 %, 98 %" (``most`` decimals at the finest)."""
    for decimals in range(most + 1):
        labels = [fmt(t, decimals) for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return [fmt(t, most) for t in ticks]


@dataclass(frozen=True)
class Scale:
    """One axis of a chart: its title (plain text), how its ticks print, whole-number ticks
    only; with ``decimals`` the tick labels take as many decimals as they need to differ
    (:func:`tick_labels`) and ``fmt`` is for single values (tooltips)."""

    label: str
    fmt: Formatter = _general
    integer: bool = False
    decimals: Decimals | None = None

    def labels(self, ticks: Sequence[float]) -> list[str]:
        if self.decimals is not None:
            return tick_labels(ticks, self.decimals)
        return [self.fmt(t) for t in ticks]


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering ``[lo, hi]``.

    ``integer`` keeps steps whole (trial numbers): at least 1, and never 2.5.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10.0 ** math.floor(math.log10(raw))
    steps = [m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0)]
    if integer:
        steps = [s for s in steps if s >= 1.0 and s == int(s)] or [1.0]
    step = next((s for s in steps if s >= raw), steps[-1])
    first = math.ceil(lo / step - 1e-9) * step
    ticks, k = [], 0
    while first + k * step <= hi + step * 1e-9:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def padded_range(values: Sequence[float], pad: float = 0.08) -> tuple[float, float]:
    """``(lo, hi)`` around ``values`` with a margin, never empty (a single value gets ±pad)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * pad * 4
    return lo - span * pad, hi + span * pad


@dataclass(frozen=True)
class Frame:
    """A plot's data ranges and pixel box; maps data coordinates to SVG coordinates."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    width: int = 440
    height: int = 320
    left: int = 62
    right: int = 14
    top: int = 14
    bottom: int = 46

    def x(self, value: float) -> float:
        span = (self.x_hi - self.x_lo) or 1.0
        return self.left + (value - self.x_lo) / span * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        span = (self.y_hi - self.y_lo) or 1.0
        return self.height - self.bottom - (value - self.y_lo) / span * (
            self.height - self.top - self.bottom)


def svg(frame: Frame, body: str, label: str, cls: str = "chart", natural: bool = False) -> str:
    """An ``<svg>`` element sized by ``frame`` (scales with the page, keeps its aspect);
    ``natural``: no wider than its own pixel width (text keeps its size on a wide page)."""
    size = f' width="{frame.width}" height="{frame.height}"' if natural else ""
    return (f'<svg class="{cls}"{size} viewBox="0 0 {frame.width} {frame.height}" role="img" '
            f'aria-label="{esc(label)}">{body}</svg>')


def axes(frame: Frame, x: Scale, y: Scale) -> str:
    """Grid lines, tick labels and axis titles for ``frame``."""
    parts = []
    x0, x1 = frame.left, frame.width - frame.right
    y0, y1 = frame.height - frame.bottom, frame.top
    xs = nice_ticks(frame.x_lo, frame.x_hi, 5, integer=x.integer)
    for t, text in zip(xs, x.labels(xs)):
        px = frame.x(t)
        parts.append(f'<line class="grid" x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y1}"/>'
                     f'<text class="tick xtick" x="{px:.1f}" y="{y0 + 15}" '
                     f'text-anchor="middle">{esc(text)}</text>')
    ys = nice_ticks(frame.y_lo, frame.y_hi, 5, integer=y.integer)
    for t, text in zip(ys, y.labels(ys)):
        py = frame.y(t)
        parts.append(f'<line class="grid" x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}"/>'
                     f'<text class="tick ytick" x="{x0 - 6}" y="{py + 4:.1f}" '
                     f'text-anchor="end">{esc(text)}</text>')
    parts.append(f'<rect class="plot-box" x="{x0}" y="{y1}" width="{x1 - x0}" '
                 f'height="{y0 - y1}"/>')
    parts.append(f'<text class="axis-label" x="{(x0 + x1) / 2:.1f}" y="{frame.height - 8}" '
                 f'text-anchor="middle">{esc(x.label)}</text>')
    cy = (y0 + y1) / 2
    parts.append(f'<text class="axis-label" x="14" y="{cy:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {cy:.1f})">{esc(y.label)}</text>')
    return "".join(parts)


def step_path(frame: Frame, points: Sequence[tuple[float, float]], cls: str) -> str:
    """A staircase through ``points`` sorted by x: each level holds until the next point."""
    pts = sorted(points)
    if not pts:
        return ""
    d = [f"M{frame.x(pts[0][0]):.1f},{frame.y(pts[0][1]):.1f}"]
    for x, y in pts[1:]:
        d.append(f"H{frame.x(x):.1f}V{frame.y(y):.1f}")
    return f'<path class="{cls}" d="{"".join(d)}"/>'


def budget_line(frame: Frame, value: float, label: str) -> str:
    """A dashed vertical line at ``value`` on the x axis, labelled at the top."""
    px = frame.x(value)
    return (f'<line class="budget-line" x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" '
            f'y2="{frame.height - frame.bottom}"/><text class="budget-label" x="{px + 4:.1f}" '
            f'y="{frame.top + 12}">{esc(label)}</text>')


def line_chart(xs: Sequence[float], ys: Sequence[float | None], x_axis: Scale, y_axis: Scale,
               reference: tuple[float, str] | None = None) -> str:
    """A small step-line chart of ``ys`` against ``xs``; ``None`` values are not drawn."""
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    values = [y for _, y in pairs] + ([reference[0]] if reference else [])
    y_lo, y_hi = padded_range(values or [0.0])
    x_hi = max([*xs, 1.0])
    frame = Frame(min([*xs, 0.0]) - 0.5, x_hi + 0.5, y_lo, y_hi, width=440, height=240)
    body = [axes(frame, x_axis, y_axis)]
    if reference is not None:
        py = frame.y(reference[0])
        body.append(f'<line class="ref-line" x1="{frame.left}" y1="{py:.1f}" '
                    f'x2="{frame.width - frame.right}" y2="{py:.1f}"/><text class="ref-label" '
                    f'x="{frame.left + 4}" y="{py - 4:.1f}">{esc(reference[1])}</text>')
    if pairs:
        extended = [*pairs, (x_hi, pairs[-1][1])]
        body.append(step_path(frame, extended, "progress-line"))
        body.extend(f'<circle class="progress-point" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" '
                    f'r="2.5"><title>trial {x:g}: {esc(y_axis.fmt(y))}</title></circle>'
                    for x, y in pairs)
    else:
        body.append(f'<text class="empty" x="{frame.width / 2}" y="{frame.height / 2}" '
                    f'text-anchor="middle">no finished trial yet</text>')
    return svg(frame, "".join(body), y_axis.label, "chart small")


def hbar_chart(labels: Sequence[str], values: Sequence[float | None], label: str,
               notes: Sequence[str | None] | None = None) -> str:
    """Horizontal bars of fractions in ``[0, 1]`` (one row per label), value printed at the end,
    followed by that row's note (kept/total channels) when ``notes`` has one."""
    row, left, width = 18, 190, 480
    height = row * len(labels) + 26
    frame = Frame(0.0, 1.0, 0.0, 1.0, width=width, height=height, left=left, right=112, top=4,
                  bottom=22)
    parts = []
    base = frame.top + row * len(labels)
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        px = frame.x(t)
        parts.append(f'<line class="grid" x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" '
                     f'y2="{base}"/><text class="tick" x="{px:.1f}" y="{base + 14}" '
                     f'text-anchor="middle">{t:.0%}</text>')
    notes = list(notes) if notes is not None else [None] * len(labels)
    for i, (name, value, note) in enumerate(zip(labels, values, notes)):
        y = frame.top + i * row
        short = name if len(name) <= 30 else "\u2026" + name[-29:]
        name, short = esc(name), esc(short)
        extra = f" · {esc(note)}" if note else ""
        parts.append(f'<text class="bar-label" x="{left - 6}" y="{y + 12}" '
                     f'text-anchor="end"><title>{name}</title>{short}</text>')
        if value is None:
            parts.append(f'<text class="bar-value" x="{left + 4}" y="{y + 12}">not pruned'
                         f"{extra}</text>")
            continue
        w = max(0.0, frame.x(min(1.0, value)) - left)
        parts.append(f'<rect class="bar" x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 5}">'
                     f'<title>{name}: {value:.1%} of channels removed{extra}</title></rect>'
                     f'<text class="bar-value" x="{left + w + 4:.1f}" y="{y + 12}">'
                     f'{value:.0%}{extra}</text>')
    return svg(frame, "".join(parts), label, "bars")


#: The report's stylesheet: class names match the marks drawn above, in ``report.py`` and
#: in ``report_plots.py``.
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:0 auto;
max-width:1400px;padding:12px 20px 40px}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:4px 0}.side{display:flex;gap:32px;flex-wrap:wrap;align-items:flex-start}
.plots{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;flex:1 1 380px;max-width:460px;min-width:0}
figure.wide{max-width:100%;flex-basis:100%}
figcaption{font-size:12px;color:#555}svg{max-width:100%}svg.chart{width:100%;height:auto}
.scroll{overflow-x:auto;max-width:100%}.side>div{min-width:0;max-width:100%}
.grid{stroke:#ececec}.plot-box{fill:none;stroke:#aaa}.tick{font-size:11px;fill:#555}
.axis-label{font-size:12px;fill:#222}.trial-point{fill:#4e79a7;fill-opacity:.55;stroke:#fff}
.front-point{fill:#e15759;fill-opacity:1;stroke:#7a1f20;stroke-width:1.2}
.baseline-point{fill:#b07aa1;fill-opacity:.95;stroke:#fff}.baseline-global{fill:#59a14f}
.point-label{font-size:10px;fill:#7a1f20;paint-order:stroke;stroke:#fff;stroke-width:3px}
.point-label.baseline-label{fill:#555}.leader{stroke:#999;stroke-width:.8}
.pc-line{fill:none;stroke-width:1.8;stroke-opacity:.85}.pc-axis{stroke:#999}
.run-line{fill:none;stroke-width:2}svg.parallel{height:auto}.run-point{stroke:#fff}
.point-label.run-label{fill:#333}
#summary code.export{white-space:normal}.pc-front{stroke-width:3.2}
.baseline-point.baseline-uniform{fill:none;stroke:#b07aa1;stroke-width:2.2}
.baseline-point.front-point{stroke:#7a1f20;stroke-width:1.6}
.front-line{fill:none;stroke:#e15759;stroke-width:1.8;stroke-opacity:.8}
.dense-point rect{fill:#222}.dense-point text{font-size:11px;fill:#222}
.budget-line{stroke:#d62728;stroke-width:1.5;stroke-dasharray:6 4}
.budget-label{font-size:11px;fill:#d62728}.ref-line{stroke:#888;stroke-dasharray:3 3}
.ref-label{font-size:11px;fill:#666}.progress-line{fill:none;stroke:#4e79a7;stroke-width:2}
.progress-point{fill:#4e79a7}.bar{fill:#f28e2b}.bar-label,.bar-value{font-size:11px;fill:#333}
.hl{stroke:#000!important;stroke-width:2.5!important}tr.hl td,.card.hl{background:#fff4c2}
.legend span.sw{display:inline-block;width:10px;height:10px;border-radius:50%;margin:0 4px 0 12px}
.sw-trial{background:#4e79a7;opacity:.6}.sw-front{background:#e15759}
.sw-uniform{background:#b07aa1;transform:rotate(45deg);border-radius:0!important}
.sw-global{background:#59a14f;border-radius:0!important;width:0!important;height:0!important;
background:none;border-left:6px solid transparent;border-right:6px solid transparent;
border-bottom:10px solid #59a14f}
.sw-dense{background:#222;border-radius:0!important}.sw-budget{background:#d62728;height:2px!important}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #eee}
#trials th{cursor:pointer;background:#f4f4f4;position:sticky;top:0;user-select:none}
#trials td{text-align:right}#trials td.text{text-align:left;max-width:420px}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
tr.front-row td:first-child{font-weight:700;color:#c03535}
tr.state-fail,tr.state-infeasible{color:#a33}
table.kv th{text-align:left;font-weight:600;background:none}.failures{color:#a33}
code{background:#f3f3f3;padding:2px 6px;border-radius:3px;overflow-wrap:break-word}
code.export{user-select:all;white-space:nowrap}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(440px,100%),1fr));gap:14px}
#summary td{text-align:right;white-space:nowrap}#summary td.text{text-align:left}
#summary tr.dense-row td{color:#444;font-style:italic}.slower{color:#a33;font-weight:600}
.iqr-bar{stroke:#666;stroke-width:1.5}
.pos{color:#1f7a3a}.neg{color:#a33}.toggle{cursor:pointer;border:1px solid #bbb;
border-radius:4px;padding:2px 8px;background:#f7f7f7;user-select:none}
.toggle[aria-pressed=true]::before{content:"☑ "}
.toggle[aria-pressed=false]::before{content:"☐ "}
table.hide-screened tr.state-screened{display:none}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px}.card p{margin:4px 0}
svg.bars{width:100%;max-width:520px;height:auto}.tag{font-size:11px;background:#eee;padding:1px 5px}
"""

#: Sortable trials table, cross-highlighting of one trial everywhere, and a ready flag for tests.
SCRIPT = """
(function () {
  "use strict";
  function key(td) {
    var v = td.getAttribute("data-v");
    if (v === null || v === "") return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null || y === null) return (x === null) - (y === null);
          var c = x < y ? -1 : (x > y ? 1 : 0);
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.querySelectorAll(".toggle[data-for]").forEach(function (button) {
    function flip() {
      var table = document.getElementById(button.getAttribute("data-for"));
      var on = table.classList.toggle(button.getAttribute("data-class"));
      button.setAttribute("aria-pressed", on ? "true" : "false");
    }
    button.addEventListener("click", flip);
    button.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); flip(); }
    });
  });
  function mark(trial, on) {
    document.querySelectorAll('[data-trial="' + trial + '"]').forEach(function (el) {
      el.classList.toggle("hl", on);
    });
  }
  document.querySelectorAll("[data-trial]").forEach(function (el) {
    var trial = el.getAttribute("data-trial");
    el.addEventListener("mouseenter", function () { mark(trial, true); });
    el.addEventListener("mouseleave", function () { mark(trial, false); });
  });
  document.body.setAttribute("data-ready", "1");
})();
"""

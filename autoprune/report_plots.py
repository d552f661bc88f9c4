"""The report's charts: accuracy-vs-cost scatter plots with their front, and search progress.

Dominance itself is computed by :mod:`autoprune.pareto`; this module only decides what to draw,
from a :class:`~autoprune.report_data.RunView`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from autoprune import _svg
from autoprune.pareto import hypervolume_progress, non_dominated
from autoprune.report_data import (
    RunView,
    baseline_family,
    budget_x,
    cost_name,
    esc,
    hypervolume_points,
    ms,
    pct,
    slug,
    within_budget,
)
from autoprune.trial import TrialRecord, TrialState

__all__ = ["ACCURACY", "AXES", "LEGEND", "accuracy_color", "parallel", "place_labels",
           "progress", "scatter"]

AXES = {
    "flops_ratio": "FLOPs (fraction of dense)",
    "params_ratio": "parameters (fraction of dense)",
    "latency_ms": "latency (ms, median)",
}

LEGEND = ('<p class="legend"><span class="sw sw-trial"></span>completed trial'
          '<span class="sw sw-front"></span>on the front (step line: the front in that plane)'
          '<span class="sw sw-uniform"></span>uniform baseline (hollow diamond)'
          '<span class="sw sw-global"></span>global-ranking baseline (triangle)'
          '<span class="sw sw-dense"></span>dense model<span class="sw sw-budget"></span>budget'
          " · hover a point for details</p>")


_FULL = _svg.Scale("full fine-tunes done (--trials counts these)", integer=True)


def _percent(value: float) -> str:
    return f"{value:.1%}"


#: The accuracy axis: tick labels with as many decimals as they need to differ.
ACCURACY = _svg.Scale("validation accuracy", _percent, decimals=_svg.percent)
_RATIO_DECIMALS = _svg.percent


def _tooltip(r: TrialRecord, front: bool) -> str:
    kind = r.baseline or "searched"
    lines = [f"trial {r.trial}" + (" (on the front)" if front else ""),
             f"val acc {pct(r.val_acc)} · test acc {pct(r.test_acc)}",
             f"FLOPs {pct(r.flops_ratio)} · params {pct(r.params_ratio)}",
             f"latency {ms(r.latency_ms)} ms", kind]
    if r.fidelity is not None and r.fidelity < 1.0:
        lines.append(f"fidelity {r.fidelity:.0%} (partial fine-tune)")
    return esc("\n".join(lines))


def _mark(frame: _svg.Frame, r: TrialRecord, x: float, front: bool) -> str:
    px, py = frame.x(x), frame.y(float(r.val_acc or 0.0))
    classes = "trial-point" + (" front-point" if front else "")
    attrs = f'data-trial="{r.trial}"'
    title = f"<title>{_tooltip(r, front)}</title>"
    if r.baseline:  # uniform: a hollow diamond around; global: a triangle inside (both show)
        family = baseline_family(r.baseline)
        classes += f" baseline-point baseline-{slug(r.baseline)}" + \
            (f" baseline-{family}" if family else "")
        if family == "global":
            s = 6.0
            return (f'<path class="{classes}" {attrs} d="M{px:.1f},{py - s:.1f}'
                    f'l{s},{s * 1.6:.1f}h{-2 * s}z">{title}</path>')
        s = 8.5 if front else 7.5
        return (f'<path class="{classes}" {attrs} d="M{px:.1f},{py - s:.1f}l{s},{s}l{-s},{s}'
                f'l{-s},{-s}z">{title}</path>')
    radius = 6 if front else 4
    return (f'<circle class="{classes}" {attrs} cx="{px:.1f}" cy="{py:.1f}" r="{radius}">'
            f"{title}</circle>")


Label = tuple[float, float, str, str, int]  # x, y (pixels of the point), text, class, trial
_SPOTS = ((9, -5, "start"), (9, 12, "start"), (-9, -5, "end"), (-9, 12, "end"),
          (0, -11, "middle"), (0, 20, "middle"), (14, 3, "start"), (-14, 3, "end"))


def place_labels(frame: _svg.Frame, labels: list[Label]) -> str:
    """Text beside each point, at the first spot (of eight around it) that overlaps no label
    placed before it and stays in the plot; a label moved off its first spots gets a leader."""
    boxes: list[tuple[float, float, float, float]] = []
    out = []
    for px, py, text, cls, trial in labels:
        w, h = 6.2 * len(text) + 2, 11.0
        chosen = None
        for i, (dx, dy, anchor) in enumerate(_SPOTS):
            x0 = px + dx - {"start": 0, "end": w, "middle": w / 2}[anchor]
            box = (x0, py + dy - h + 2, x0 + w, py + dy + 2)
            inside = box[0] >= frame.left and box[2] <= frame.width - frame.right \
                and box[1] >= frame.top and box[3] <= frame.height - frame.bottom
            free = not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                           for b in boxes)
            if inside and free:
                chosen = (i, dx, dy, anchor, box)
                break
        if chosen is None:
            dx, dy, anchor = _SPOTS[0]
            chosen = (0, dx, dy, anchor, (px + dx, py + dy - h, px + dx + w, py + dy))
        i, dx, dy, anchor, box = chosen
        boxes.append(box)
        lead = (f'<line class="leader" x1="{px:.1f}" y1="{py:.1f}" x2="{px + dx * .7:.1f}" '
                f'y2="{py + dy * .6:.1f}"/>') if i >= 4 else ""
        out.append(f'{lead}<text class="{cls}" data-trial="{trial}" x="{px + dx:.1f}" '
                   f'y="{py + dy:.1f}" text-anchor="{anchor}">{esc(text)}</text>')
    return "".join(out)


def _labels(frame: _svg.Frame, run: RunView,
            pts: list[tuple[TrialRecord, float]]) -> list[Label]:
    """Every front member by its trial number, every baseline by its kind (front first)."""
    out: list[Label] = []
    for r, x in sorted(pts, key=lambda p: (p[0].trial not in run.front_ids, p[0].trial)):
        front, family = r.trial in run.front_ids, baseline_family(r.baseline)
        if not front and not r.baseline:
            continue
        kind = family or r.baseline or ""
        text = f"{r.trial}" + (f" {kind}" if kind else "") if front else f"{kind} ({r.trial})"
        cls = "point-label" + (" front-label" if front else "") + \
            (" baseline-label" if r.baseline else "")
        out.append((frame.x(x), frame.y(float(r.val_acc or 0.0)), text, cls, r.trial))
    return out


def _dense_mark(frame: _svg.Frame, dense: dict[str, Any], x: float) -> str:
    """The dense model's square; a latency far off the axis is pinned to its edge and labelled."""
    clipped = x > frame.x_hi
    px, py = frame.x(min(x, frame.x_hi)), frame.y(float(dense["val_acc"]))
    tip = esc(f"dense model\nval acc {pct(dense['val_acc'])} · test acc "
              f"{pct(dense.get('test_acc'))}\nlatency {ms(dense.get('latency_ms'))} ms")
    label = f"dense ({x:.3g} ms, off scale) →" if clipped else "dense"
    return (f'<g class="dense-point"><title>{tip}</title><rect x="{px - 5:.1f}" '
            f'y="{py - 5:.1f}" width="10" height="10"/><text x="{px - 8:.1f}" '
            f'y="{py - 9:.1f}" text-anchor="end">{esc(label)}</text></g>')


def _scored(run: RunView, key: str) -> list[tuple[TrialRecord, float]]:
    """Every completed trial with a validation accuracy and a ``key`` value (partial fine-tunes
    included: they are drawn, marked in their tooltip; only full ones can be on the front).
    On the latency axis, once the run has re-timed its front, only the re-timed trials: their
    figures and the search-time ones were taken under different conditions."""
    final = run.retimed if key == "latency_ms" else frozenset()
    return [(r, float(getattr(r, key))) for r in run.records
            if r.state is TrialState.COMPLETE and r.val_acc is not None
            and getattr(r, key) is not None and (not final or r.trial in final)]


def _frame(run: RunView, key: str, pts: list[tuple[TrialRecord, float]],
           dense_x: float | None) -> _svg.Frame:
    """The plot's ranges: every point, the budget line, and the dense model unless it is far
    off to the right (then it is pinned at the edge)."""
    ratio = key != "latency_ms"
    x_hi = max([x for _, x in pts] + [budget_x(run, key) or 0.0]) * (1.04 if ratio else 1.1)
    if dense_x is not None and (ratio or dense_x < 3 * x_hi):
        x_hi = max(x_hi, float(dense_x) * 1.05)
    dense = run.dense
    has_dense = dense_x is not None and dense.get("val_acc") is not None
    ys = [float(r.val_acc or 0.0) for r, _ in pts] + ([dense["val_acc"]] if has_dense else [])
    return _svg.Frame(0.0, x_hi, *_svg.padded_range(ys))


def scatter(run: RunView, key: str) -> str:
    """Validation accuracy against one cost, with the front, baselines, dense model and budget."""
    pts = _scored(run, key)
    if not pts:
        return f'<p class="empty">no completed trial has a {esc(AXES[key])} value</p>'
    dense, ratio = {**run.dense, "latency_ms": run.dense_latency}, key != "latency_ms"
    dense_x = 1.0 if ratio else run.dense_latency
    frame = _frame(run, key, pts, dense_x)
    x_axis = _svg.Scale(AXES[key], _percent, decimals=_RATIO_DECIMALS) if ratio else \
        _svg.Scale(AXES[key], decimals=_svg.fixed)
    body = [_svg.axes(frame, x_axis, ACCURACY)]
    limit = budget_x(run, key)
    if limit is not None:
        label = f"budget {limit:.0%}" if ratio else f"budget {limit:.3g} ms"
        body.append(_svg.budget_line(frame, float(limit), label))
    on_front = [(r, x) for r, x in pts if r.trial in run.front_ids]
    keep = non_dominated([(float(r.val_acc or 0.0), x) for r, x in on_front], ("max", "min"))
    body.append(_svg.step_path(frame, [(on_front[i][1], float(on_front[i][0].val_acc or 0.0))
                                       for i in keep], "front-line"))
    if not ratio:
        body.extend(_iqr_bar(frame, x, float(r.val_acc or 0.0), run.latency_iqr.get(str(r.trial)))
                    for r, x in pts)
        if dense_x is not None and dense.get("val_acc") is not None:
            body.append(_iqr_bar(frame, float(dense_x), float(dense["val_acc"]), run.dense_iqr))
    order = sorted(pts, key=lambda p: (p[0].trial in run.front_ids, bool(p[0].baseline)))
    body.extend(_mark(frame, r, x, r.trial in run.front_ids) for r, x in order)
    if dense_x is not None and dense.get("val_acc") is not None:
        body.append(_dense_mark(frame, dense, float(dense_x or 0.0)))
    body.append(place_labels(frame, _labels(frame, run, pts)))
    return _svg.svg(frame, "".join(body), f"validation accuracy vs {AXES[key]}")


def _iqr_bar(frame: _svg.Frame, x: float, y: float, iqr: float | None) -> str:
    """A horizontal bar over a latency's interquartile range (centred on the median)."""
    if not iqr:
        return ""
    lo, hi = frame.x(max(frame.x_lo, x - iqr / 2)), frame.x(min(frame.x_hi, x + iqr / 2))
    py = frame.y(y)
    return (f'<line class="iqr-bar" x1="{lo:.1f}" y1="{py:.1f}" x2="{hi:.1f}" y2="{py:.1f}"/>')


def _best_within_budget(run: RunView) -> list[float | None]:
    """Per trial: the best validation accuracy of the fully fine-tuned trials so far that fit."""
    best: float | None = None
    bests: list[float | None] = []
    for r in run.records:
        if r.is_full and within_budget(run, r):
            best = max(best if best is not None else -math.inf, float(r.val_acc or 0.0))
        bests.append(best)
    return bests


def progress(run: RunView) -> str:
    """Best accuracy within budget, and the front's hypervolume on its own cost axis, against
    the full fine-tunes done (what ``--trials`` counts; screened trials cost little)."""
    full = [i for i, r in enumerate(run.records) if r.is_full]
    if not full:
        return "<p>No fully fine-tuned trial yet.</p>"
    done = [float(k + 1) for k in range(len(full))]
    points = hypervolume_points(run)
    volumes = hypervolume_progress(points, ("max", "min"), (0.0, 1.0))
    bests = _best_within_budget(run)
    dense_acc = run.dense.get("val_acc")
    ref = (float(dense_acc), "dense") if dense_acc is not None else None
    cost = cost_name(run)
    acc = _svg.line_chart(done, [bests[i] for i in full], _FULL,
                          _svg.Scale("best val acc within budget", _percent,
                                     decimals=_svg.percent), ref)
    hv = _svg.line_chart(done, [volumes[i] if volumes[i] > 0 else None for i in full], _FULL,
                         _svg.Scale(f"hypervolume (acc × {cost} saved)", lambda v: f"{v:.3f}",
                                    decimals=_svg.fixed))
    return (f'<div class="plots"><figure>{acc}<figcaption>best validation accuracy among '
            f"fully fine-tuned trials within the budget</figcaption></figure><figure>{hv}"
            f"<figcaption>hypervolume of the front (validation accuracy vs {cost} ratio; "
            f"reference accuracy 0, cost 1.0)</figcaption></figure></div>")


# -- parallel coordinates ---------------------------------------------------------------------

_LOW, _MID, _HIGH = (214, 96, 39), (190, 190, 190), (33, 102, 172)  # low .. high accuracy


def accuracy_color(t: float) -> str:
    """``#rrggbb`` on a diverging scale: orange (``t=0``, the lowest) to blue (``t=1``)."""
    t = min(1.0, max(0.0, t))
    a, b, u = (_LOW, _MID, t * 2) if t < 0.5 else (_MID, _HIGH, t * 2 - 1)
    return "#" + "".join(f"{round(x + (y - x) * u):02x}" for x, y in zip(a, b))


def _natural(name: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(t), "") if t.isdigit() else (-1, t) for t in re.split(r"(\d+)", name))


def _pc_frame(run: RunView, full: list[TrialRecord], n: int) -> _svg.Frame:
    top = max(max(float(v) for v in _ratios(r).values()) for r in full)
    width = max(440, min(900, 80 + 56 * (n - 1)))
    return _svg.Frame(0.0, float(n - 1), 0.0, max(0.05, top * 1.05), width=width, height=340,
                      left=56, right=24, top=30, bottom=112)


def _ratios(r: TrialRecord) -> dict[str, float]:
    return dict((r.plan or {}).get("ratios") or {})


def _pc_axes(frame: _svg.Frame, groups: list[str]) -> list[str]:
    """The ratio ticks (left) and one vertical axis per group, its name slanted below."""
    y_axis = _svg.Scale("channels removed", _percent, decimals=_svg.percent)
    ticks = _svg.nice_ticks(frame.y_lo, frame.y_hi, 5)
    right, base = frame.width - frame.right, frame.height - frame.bottom
    parts = [f'<line class="grid" x1="{frame.left}" y1="{frame.y(t):.1f}" x2="{right}" '
             f'y2="{frame.y(t):.1f}"/><text class="tick ytick" x="{frame.left - 6}" '
             f'y="{frame.y(t) + 4:.1f}" text-anchor="end">{esc(text)}</text>'
             for t, text in zip(ticks, y_axis.labels(ticks))]
    for i, g in enumerate(groups):
        px = frame.x(i)
        short = g if len(g) <= 22 else "\u2026" + g[-21:]
        parts.append(f'<line class="pc-axis" x1="{px:.1f}" y1="{frame.top}" x2="{px:.1f}" '
                     f'y2="{base}"/><text class="tick pc-label" x="{px:.1f}" y="{base + 12}" '
                     f'text-anchor="end" transform="rotate(-45 {px:.1f} {base + 12})">'
                     f"<title>{esc(g)}</title>{esc(short)}</text>")
    cy = (frame.top + base) / 2
    parts.append(f'<text class="axis-label" x="14" y="{cy:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {cy:.1f})">{esc(y_axis.label)}</text>')
    return parts


def _pc_legend(frame: _svg.Frame, lo: float, hi: float) -> str:
    x0, y = frame.width - frame.right - 200, 8
    swatches = "".join(f'<rect x="{x0 + i * 30}" y="{y}" width="30" height="8" '
                       f'fill="{accuracy_color(i / 4)}"/>' for i in range(5))
    return (f'{swatches}<text class="tick" x="{x0 - 4}" y="{y + 8}" text-anchor="end">'
            f'val acc {pct(lo)}</text><text class="tick" x="{x0 + 154}" y="{y + 8}">'
            f"{pct(hi)}</text>")


def parallel(run: RunView) -> str:
    """Per-group pruning ratios of every fully fine-tuned trial, one line each, coloured by its
    validation accuracy (front members drawn thicker)."""
    full = [r for r in run.records if r.is_full and _ratios(r)]
    groups = sorted({g for r in full for g in _ratios(r)}, key=_natural)
    if not full or len(groups) < 2:
        return ('<p class="empty">parallel coordinates need fully fine-tuned trials and at '
                "least two pruned groups</p>")
    frame = _pc_frame(run, full, len(groups))
    parts = _pc_axes(frame, groups)
    accs = [float(r.val_acc or 0.0) for r in full]
    lo, hi = min(accs), max(accs)
    for r, acc in sorted(zip(full, accs), key=lambda p: p[1]):  # the best drawn last, on top
        ratios = _ratios(r)
        d = "".join(f"{'M' if i == 0 else 'L'}{frame.x(i):.1f},"
                    f"{frame.y(float(ratios.get(g, 0.0))):.1f}" for i, g in enumerate(groups))
        front = r.trial in run.front_ids
        tip = esc(f"trial {r.trial}" + (" (on the front)" if front else "")
                  + f"\nval acc {pct(r.val_acc)}" + (f"\n{r.baseline}" if r.baseline else ""))
        color = accuracy_color((acc - lo) / (hi - lo) if hi > lo else 1.0)
        parts.append(f'<path class="pc-line{" pc-front" if front else ""}" '
                     f'data-trial="{r.trial}" stroke="{color}" d="{d}"><title>{tip}</title>'
                     "</path>")
    return _svg.svg(frame, "".join(parts) + _pc_legend(frame, lo, hi),
                    "per-group pruning ratios of the fully fine-tuned trials", "parallel",
                    natural=True)

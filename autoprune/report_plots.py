"""The report's charts: accuracy-vs-cost scatter plots with their front, and search progress.

Dominance itself is computed by :mod:`autoprune.pareto`; this module only decides what to draw,
from a :class:`~autoprune.report_data.RunView`.
"""

from __future__ import annotations

import math
from typing import Any

from autoprune import _svg
from autoprune.pareto import hypervolume_progress, non_dominated
from autoprune.report_data import (
    RunView,
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

__all__ = ["AXES", "LEGEND", "progress", "scatter"]

AXES = {
    "flops_ratio": "FLOPs (fraction of dense)",
    "params_ratio": "parameters (fraction of dense)",
    "latency_ms": "latency (ms, median)",
}

LEGEND = ('<p class="legend"><span class="sw sw-trial"></span>completed trial'
          '<span class="sw sw-front"></span>on the front (step line: the front in that plane)'
          '<span class="sw sw-uniform"></span>uniform baseline'
          '<span class="sw sw-global"></span>global-ranking baseline'
          '<span class="sw sw-dense"></span>dense model<span class="sw sw-budget"></span>budget'
          " · hover a point for details</p>")


_TRIALS = _svg.Scale("trial", integer=True)


def _percent(value: float) -> str:
    return f"{value:.0%}"


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
    if r.baseline:
        classes += f" baseline-point baseline-{slug(r.baseline)}"
        s = 7.5 if front else 6.5
        return (f'<path class="{classes}" {attrs} d="M{px:.1f},{py - s:.1f}l{s},{s}l{-s},{s}'
                f'l{-s},{-s}z">{title}</path>')
    radius = 6 if front else 4
    return (f'<circle class="{classes}" {attrs} cx="{px:.1f}" cy="{py:.1f}" r="{radius}">'
            f"{title}</circle>")


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
    included: they are drawn, marked in their tooltip; only full ones can be on the front)."""
    return [(r, float(getattr(r, key))) for r in run.records
            if r.state is TrialState.COMPLETE and r.val_acc is not None
            and getattr(r, key) is not None]


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
    dense, ratio = run.dense, key != "latency_ms"
    dense_x = 1.0 if ratio else dense.get("latency_ms")
    frame = _frame(run, key, pts, dense_x)
    x_axis = _svg.Scale(AXES[key], _percent) if ratio else _svg.Scale(AXES[key])
    body = [_svg.axes(frame, x_axis, _svg.Scale("validation accuracy", _percent))]
    limit = budget_x(run, key)
    if limit is not None:
        label = f"budget {limit:.0%}" if ratio else f"budget {limit:.3g} ms"
        body.append(_svg.budget_line(frame, float(limit), label))
    on_front = [(r, x) for r, x in pts if r.trial in run.front_ids]
    keep = non_dominated([(float(r.val_acc or 0.0), x) for r, x in on_front], ("max", "min"))
    body.append(_svg.step_path(frame, [(on_front[i][1], float(on_front[i][0].val_acc or 0.0))
                                       for i in keep], "front-line"))
    order = sorted(pts, key=lambda p: (p[0].trial in run.front_ids, bool(p[0].baseline)))
    body.extend(_mark(frame, r, x, r.trial in run.front_ids) for r, x in order)
    if dense_x is not None and dense.get("val_acc") is not None:
        body.append(_dense_mark(frame, dense, float(dense_x or 0.0)))
    return _svg.svg(frame, "".join(body), f"validation accuracy vs {AXES[key]}")


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
    """Best accuracy within budget, and the front's hypervolume on its own cost axis, by trial."""
    trials = [float(r.trial) for r in run.records]
    points = hypervolume_points(run)
    volumes = hypervolume_progress(points, ("max", "min"), (0.0, 1.0)) if points else []
    dense_acc = run.dense.get("val_acc")
    ref = (float(dense_acc), "dense") if dense_acc is not None else None
    cost = cost_name(run)
    acc = _svg.line_chart(trials, _best_within_budget(run), _TRIALS,
                          _svg.Scale("best val acc within budget", lambda v: f"{v:.1%}"), ref)
    hv = _svg.line_chart(trials, [v if v > 0 else None for v in volumes], _TRIALS,
                         _svg.Scale(f"hypervolume (acc × {cost} saved)", lambda v: f"{v:.3f}"))
    return (f'<div class="plots"><figure>{acc}<figcaption>best validation accuracy among '
            f"fully fine-tuned trials within the budget</figcaption></figure><figure>{hv}"
            f"<figcaption>hypervolume of the front (validation accuracy vs {cost} ratio; "
            f"reference accuracy 0, cost 1.0)</figcaption></figure></div>")

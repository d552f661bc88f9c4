"""Reports rendered from a run directory's files only (works on a copied run dir).

The terminal summary and the HTML report build on the same reads. The HTML page is one
self-contained file (inline SVG, CSS and a few lines of vanilla JS; no network, no absolute paths)
so a reviewer can open it anywhere the run folder was copied to. Dominance itself is computed by
:mod:`autoprune.pareto`; this module only decides what to draw.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune import _svg
from autoprune.pareto import hypervolume_progress, non_dominated
from autoprune.results import RunDir, TrialRecord, atomic_write_text

__all__ = ["front_table", "terminal_summary", "write_report"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def front_table(front: Sequence[TrialRecord], baseline: dict[str, Any]) -> str:
    """The front as a fixed-width table, with the dense model as the first row."""
    dense = baseline.get("dense", {})
    dense_ms = dense.get("latency_final_ms") or dense.get("latency_ms")  # timed like the front
    header = f"{'trial':>6} {'val acc':>8} {'test acc':>9} {'FLOPs':>7} {'params':>7} " \
             f"{'latency ms':>11}  note"
    lines = [header, "-" * len(header),
             f"{'dense':>6} {_pct(dense.get('val_acc')):>8} {_pct(dense.get('test_acc')):>9} "
             f"{'100%':>7} {'100%':>7} {_ms(dense_ms):>11}"]
    for r in front:
        lines.append(
            f"{r.trial:>6} {_pct(r.val_acc):>8} {_pct(r.test_acc):>9} "
            f"{_pct(r.flops_ratio):>7} {_pct(r.params_ratio):>7} {_ms(r.latency_ms):>11}  "
            f"{r.baseline or ''}")
    return "\n".join(lines)


def _front_records(run: RunDir) -> list[TrialRecord]:
    fields = TrialRecord.__dataclass_fields__
    return [TrialRecord(**{k: v for k, v in f.items() if k in fields}) for f in run.read_front()]


def terminal_summary(run_dir: str) -> str:
    run = RunDir.open(run_dir)
    records = run.read_trials()
    front = _front_records(run)
    baseline = run.read_baseline() if run.baseline_path.is_file() else {}
    states: dict[str, int] = {}
    for r in records:
        states[r.state] = states.get(r.state, 0) + 1
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    budget = baseline.get("budget", {})
    budget_text = ", ".join(f"latency <= {v:g} ms" if k == "latency_ms" else f"{k} <= {v:.0%}"
                            for k, v in budget.items() if v is not None)
    return (f"run: {run.path}\nbudget: {budget_text or '-'}; trials: {counts or 'none'}\n\n"
            f"Pareto front (validation selects; test shown for front members):\n"
            f"{front_table(front, baseline)}")


# -- HTML report -------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value))


@dataclass(frozen=True)
class _Run:
    """Everything the page shows, read once from the run directory's files."""

    name: str
    records: tuple[TrialRecord, ...]
    front: tuple[TrialRecord, ...]
    baseline: dict[str, Any]
    config: dict[str, Any]

    @property
    def dense(self) -> dict[str, Any]:
        return dict(self.baseline.get("dense") or {})

    @property
    def budget(self) -> dict[str, Any]:
        return dict(self.baseline.get("budget") or self.config.get("budget") or {})

    @property
    def cost_key(self) -> str:
        """The cost the run's front was built on (FLOPs unless only params were budgeted)."""
        budget = self.budget
        return "params_ratio" if budget.get("flops") is None and budget.get("params") is not None \
            else "flops_ratio"

    @property
    def front_ids(self) -> frozenset[int]:
        return frozenset(r.trial for r in self.front)


def _load(run: RunDir) -> _Run:
    records = run.read_trials()
    by_trial = {r.trial: r for r in records}
    front = []
    for row in _front_records(run):  # trials.csv is rewritten last: prefer its values (test acc)
        latest = by_trial.get(row.trial)
        front.append(row if latest is None else
                     dataclasses.replace(latest, plan=row.plan or latest.plan))
    baseline = run.read_baseline() if run.baseline_path.is_file() else {}
    return _Run(run.path.resolve().name, tuple(sorted(records, key=lambda r: r.trial)),
                tuple(front), baseline, run.read_config())


def _full(r: TrialRecord) -> bool:
    """Fully fine-tuned and scored: the only trials the front (and its hypervolume) may use."""
    return r.state == "COMPLETE" and r.val_acc is not None and (r.fidelity or 0.0) >= 1.0


def _budget_x(run: _Run, key: str) -> float | None:
    budget = run.budget
    if key == "flops_ratio":
        return budget.get("flops")
    if key == "params_ratio":
        return budget.get("params")
    if budget.get("latency_ms") is not None:
        return float(budget["latency_ms"])
    dense_ms = run.dense.get("latency_ms")
    return None if budget.get("latency") is None or dense_ms is None \
        else float(budget["latency"]) * float(dense_ms)


def _within_budget(run: _Run, r: TrialRecord) -> bool:
    for key in ("flops_ratio", "params_ratio", "latency_ms"):
        limit, value = _budget_x(run, key), getattr(r, key)
        if limit is not None and (value is None or value > float(limit) * (1 + 1e-9)):
            return False
    return True


def _tooltip(r: TrialRecord, front: bool) -> str:
    kind = r.baseline or "searched"
    lines = [f"trial {r.trial}" + (" (on the front)" if front else ""),
             f"val acc {_pct(r.val_acc)} · test acc {_pct(r.test_acc)}",
             f"FLOPs {_pct(r.flops_ratio)} · params {_pct(r.params_ratio)}",
             f"latency {_ms(r.latency_ms)} ms", kind]
    if r.fidelity is not None and r.fidelity < 1.0:
        lines.append(f"fidelity {r.fidelity:.0%} (partial fine-tune)")
    return _e("\n".join(lines))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def _mark(frame: _svg.Frame, r: TrialRecord, x: float, front: bool) -> str:
    px, py = frame.x(x), frame.y(float(r.val_acc or 0.0))
    classes = "trial-point" + (" front-point" if front else "")
    attrs = f'data-trial="{r.trial}"'
    title = f"<title>{_tooltip(r, front)}</title>"
    if r.baseline:
        classes += f" baseline-point baseline-{_slug(r.baseline)}"
        s = 7.5 if front else 6.5
        return (f'<path class="{classes}" {attrs} d="M{px:.1f},{py - s:.1f}l{s},{s}l{-s},{s}'
                f'l{-s},{-s}z">{title}</path>')
    radius = 6 if front else 4
    return (f'<circle class="{classes}" {attrs} cx="{px:.1f}" cy="{py:.1f}" r="{radius}">'
            f"{title}</circle>")


_AXES = {
    "flops_ratio": "FLOPs (fraction of dense)",
    "params_ratio": "parameters (fraction of dense)",
    "latency_ms": "latency (ms, median)",
}


def _dense_mark(frame: _svg.Frame, dense: dict[str, Any], x: float) -> str:
    """The dense model's square; a latency far off the axis is pinned to its edge and labelled."""
    clipped = x > frame.x_hi
    px, py = frame.x(min(x, frame.x_hi)), frame.y(float(dense["val_acc"]))
    tip = _e(f"dense model\nval acc {_pct(dense['val_acc'])} · test acc "
             f"{_pct(dense.get('test_acc'))}\nlatency {_ms(dense.get('latency_ms'))} ms")
    label = f"dense ({x:.3g} ms, off scale) →" if clipped else "dense"
    return (f'<g class="dense-point"><title>{tip}</title><rect x="{px - 5:.1f}" '
            f'y="{py - 5:.1f}" width="10" height="10"/><text x="{px - 8:.1f}" '
            f'y="{py - 9:.1f}" text-anchor="end">{_e(label)}</text></g>')


def _scatter(run: _Run, key: str) -> str:
    """Validation accuracy against one cost, with the front, baselines, dense model and budget."""
    pts = [(r, float(getattr(r, key))) for r in run.records
           if r.state == "COMPLETE" and r.val_acc is not None and getattr(r, key) is not None]
    if not pts:
        return f'<p class="empty">no completed trial has a {_e(_AXES[key])} value</p>'
    dense, ratio = run.dense, key != "latency_ms"
    dense_x = 1.0 if ratio else dense.get("latency_ms")
    budget_x = _budget_x(run, key)
    x_hi = max([x for _, x in pts] + [budget_x or 0.0]) * (1.04 if ratio else 1.1)
    if dense_x is not None and (ratio or dense_x < 3 * x_hi):  # else: pinned at the edge
        x_hi = max(x_hi, float(dense_x) * 1.05)
    has_dense = dense_x is not None and dense.get("val_acc") is not None
    ys = [float(r.val_acc or 0.0) for r, _ in pts] + ([dense["val_acc"]] if has_dense else [])
    frame = _svg.Frame(0.0, x_hi, *_svg.padded_range(ys))
    x_fmt = (lambda v: f"{v:.0%}") if ratio else (lambda v: f"{v:g}")
    body = [_svg.axes(frame, _e(_AXES[key]), "validation accuracy", x_fmt, lambda v: f"{v:.0%}")]
    if budget_x is not None:
        label = f"budget {budget_x:.0%}" if ratio else f"budget {budget_x:.3g} ms"
        body.append(_svg.budget_line(frame, float(budget_x), label))
    on_front = [(r, x) for r, x in pts if r.trial in run.front_ids]
    keep = non_dominated([(float(r.val_acc or 0.0), x) for r, x in on_front], ("max", "min"))
    body.append(_svg.step_path(frame, [(on_front[i][1], float(on_front[i][0].val_acc or 0.0))
                                       for i in keep], "front-line"))
    order = sorted(pts, key=lambda p: (p[0].trial in run.front_ids, bool(p[0].baseline)))
    body.extend(_mark(frame, r, x, r.trial in run.front_ids) for r, x in order)
    if has_dense:
        body.append(_dense_mark(frame, dense, float(dense_x or 0.0)))
    return _svg.svg(frame, "".join(body), f"validation accuracy vs {_e(_AXES[key])}")


def _natural(name: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(t), "") if t.isdigit() else (-1, t) for t in re.split(r"(\d+)", name))


def _member(run: _Run, r: TrialRecord, groups: Sequence[str]) -> str:
    ratios = (r.plan or {}).get("ratios") or {}
    bars = _svg.hbar_chart(groups, [ratios.get(g) for g in groups],
                           f"channels removed per group, trial {r.trial}")
    test = _pct(r.test_acc) if r.test_acc is not None else "not evaluated"
    cmd = f"autoprune export {shlex.quote(run.name)} --trial {r.trial}"
    tag = f' <span class="tag">{_e(r.baseline)}</span>' if r.baseline else ""
    return (f'<div class="card" data-trial="{r.trial}"><h3>trial {r.trial}{tag}</h3>'
            f"<p>val acc <b>{_pct(r.val_acc)}</b> · test acc <b>{test}</b> · "
            f"FLOPs {_pct(r.flops_ratio)} · params {_pct(r.params_ratio)} · "
            f"latency {_ms(r.latency_ms)} ms</p>{bars}"
            f'<p>export: <code class="export">{_e(cmd)}</code></p></div>')


def _front_section(run: _Run) -> str:
    if not run.front:
        return "<p>No front yet: no trial has finished its full fine-tune.</p>"
    groups = sorted({g for r in run.front for g in ((r.plan or {}).get("ratios") or {})},
                    key=_natural)
    cards = "".join(_member(run, r, groups) for r in run.front)
    return (f"<p>Bars: share of each group's channels removed. Run the export command from the "
            f"folder that contains <code>{_e(run.name)}/</code>.</p>"
            f'<div class="cards">{cards}</div>')


_COLUMNS: tuple[tuple[str, str, str], ...] = (  # header, TrialRecord field, format
    ("trial", "trial", "int"), ("state", "state", "text"), ("kind", "baseline", "kind"),
    ("val acc", "val_acc", "pct"), ("test acc", "test_acc", "pct"),
    ("proxy acc", "proxy_acc", "pct"), ("short acc", "short_acc", "pct"),
    ("FLOPs", "flops_ratio", "pct"),
    ("params", "params_ratio", "pct"), ("MACs", "macs", "int"),
    ("latency ms", "latency_ms", "ms"), ("fidelity", "fidelity", "pct"),
    ("seconds", "seconds", "sec"), ("reason", "fail_reason", "text"),
)


def _cell(r: TrialRecord, field: str, fmt: str) -> str:
    value = getattr(r, field)
    if fmt == "kind":
        value = value or "searched"
    if value is None:
        return '<td data-v="">-</td>'
    if fmt in ("text", "kind"):
        return f'<td class="text" data-v="{_e(value)}">{_e(value)}</td>'
    shown = {"int": f"{value:,.0f}", "pct": _pct(value), "ms": _ms(value),
             "sec": f"{value:.1f}"}[fmt]
    return f'<td data-v="{float(value)!r}">{shown}</td>'


def _trials_table(run: _Run) -> str:
    head = "".join(f'<th title="click to sort">{_e(h)}</th>' for h, _, _ in _COLUMNS)
    rows = []
    for r in run.records:
        front = r.trial in run.front_ids
        cls = f"state-{_slug(r.state)}" + (" front-row" if front else "")
        cells = "".join(_cell(r, f, fmt) for _, f, fmt in _COLUMNS)
        rows.append(f'<tr class="{cls}" data-trial="{r.trial}">{cells}</tr>')
    failed = [r for r in run.records if r.state in ("FAIL", "INFEASIBLE")]
    notes = "".join(f'<li class="failure">trial {r.trial} ({_e(r.state.lower())}): '
                    f"{_e(r.fail_reason or 'no reason recorded')}</li>" for r in failed)
    return (f'<table class="sortable" id="trials"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>'
            + (f'<h3>Trials that did not finish</h3><ul class="failures">{notes}</ul>'
               if failed else ""))


def _progress(run: _Run) -> str:
    trials = [float(r.trial) for r in run.records]
    best: float | None = None
    bests: list[float | None] = []
    for r in run.records:
        if _full(r) and _within_budget(run, r):
            best = max(best if best is not None else -math.inf, float(r.val_acc or 0.0))
        bests.append(best)
    cost = run.cost_key
    points = [(float(r.val_acc or 0.0), float(getattr(r, cost)))
              if _full(r) and getattr(r, cost) is not None else (math.nan, math.nan)
              for r in run.records]
    volumes = hypervolume_progress(points, ("max", "min"), (0.0, 1.0)) if points else []
    dense_acc = run.dense.get("val_acc")
    ref = (float(dense_acc), "dense") if dense_acc is not None else None
    cost_name = "FLOPs" if cost == "flops_ratio" else "params"
    acc = _svg.line_chart(trials, bests, "trial", "best val acc within budget",
                          lambda v: f"{v:.1%}", ref)
    hv = _svg.line_chart(trials, [v if v > 0 else None for v in volumes], "trial",
                         f"hypervolume (acc × {cost_name} saved)", lambda v: f"{v:.3f}")
    return (f'<div class="plots"><figure>{acc}<figcaption>best validation accuracy among '
            f"fully fine-tuned trials within the budget</figcaption></figure><figure>{hv}"
            f"<figcaption>hypervolume of the front (validation accuracy vs {cost_name} ratio; "
            f"reference accuracy 0, cost 1.0)</figcaption></figure></div>")


def _kv(rows: Sequence[tuple[str, Any]], table_id: str) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e('-' if v is None else v)}</td></tr>"
                   for k, v in rows)
    return f'<table class="kv" id="{table_id}">{body}</table>'


def _count(value: Any) -> str | None:
    return None if value is None else f"{float(value):,.0f}"


def _overview(run: _Run) -> str:
    dense, budget = run.dense, run.budget
    names = {"flops": "FLOPs", "params": "params", "latency": "latency"}
    limits = [f"{names[k]} ≤ {v:.0%} of dense" for k, v in budget.items()
              if v is not None and k in names]
    if budget.get("latency_ms") is not None:
        limits.append(f"latency ≤ {budget['latency_ms']} ms")
    states: dict[str, int] = {}
    for r in run.records:
        states[r.state] = states.get(r.state, 0) + 1
    task = dict(run.config.get("task") or {})
    spec = str(task.get("spec") or "-")
    spec = Path(spec).name if os.sep in spec else spec  # never leak a local path
    iqr = dense.get("latency_iqr_ms")
    return _kv([
        ("budget", ", ".join(limits) or "-"), ("task", spec),
        ("model", task.get("model") or "task default"),
        ("trials", ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "none"),
        ("front size", len(run.front)), ("prunable groups", run.baseline.get("groups")),
        ("dense val acc", _pct(dense.get("val_acc"))),
        ("dense test acc", _pct(dense.get("test_acc"))),
        ("dense MACs", _count(dense.get("macs"))), ("dense FLOPs", _count(dense.get("flops"))),
        ("dense params", _count(dense.get("params"))),
        ("dense latency", None if dense.get("latency_ms") is None else
         f"{_ms(dense['latency_ms'])} ms" + (f" (IQR {_ms(iqr)} ms)" if iqr is not None else "")),
    ], "overview")


def _environment(run: _Run) -> str:
    env, dense = dict(run.baseline.get("environment") or {}), run.dense
    return _kv([
        ("device", env.get("device") or dense.get("device")),
        ("device name", env.get("device_name")),
        ("latency batch size", dense.get("batch_size")), ("dtype", dense.get("dtype")),
        ("torch", env.get("torch")), ("torch-pruning", env.get("torch_pruning")),
        ("optuna", env.get("optuna")), ("CUDA", env.get("cuda")), ("python", env.get("python")),
        ("CPU threads", env.get("cpu_threads")), ("platform", env.get("platform")),
        ("autoprune", env.get("autoprune")),
    ], "environment")


_LEGEND = ('<p class="legend"><span class="sw sw-trial"></span>completed trial'
           '<span class="sw sw-front"></span>on the front (step line: the front in that plane)'
           '<span class="sw sw-uniform"></span>uniform baseline'
           '<span class="sw sw-global"></span>global-ranking baseline'
           '<span class="sw sw-dense"></span>dense model<span class="sw sw-budget"></span>budget'
           " · hover a point for details</p>")


def _exports(path: Path) -> str:
    """Exported models (``autoprune export``), quantized variants beside their float parent."""
    rows = []
    for file in sorted((path / "models").glob("*.metrics.json")):
        try:
            m = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        weights = m.get("weights") or {}
        rows.append((m.get("parent") or m.get("file", ""), m.get("parent") is not None, (
            f"<tr><td>{_e(m.get('file', file.name))}</td><td>{_e(m.get('format', '-'))}</td>"
            f"<td>{_e(m.get('trial', '-'))}</td><td>{_pct(m.get('test_acc'))}</td>"
            f"<td>{_pct(m.get('flops_ratio'))}</td>"
            f"<td>{_pct(weights.get('sparsity')) if weights else '-'}</td>"
            f"<td>{int(m.get('file_bytes') or 0):,}</td><td>{_ms(m.get('latency_ms'))}</td>"
            f"<td>{_e(m.get('parent') or '')}</td></tr>")))
    if not rows:
        return ""
    rows.sort(key=lambda r: (r[0], r[1]))  # each parent, then its quantized variants
    head = ("<tr><th>file</th><th>format</th><th>trial</th><th>test acc</th><th>FLOPs</th>"
            "<th>weights zero</th><th>bytes</th><th>latency ms</th><th>float parent</th></tr>")
    return (f"<h2>Exported models</h2><table class=\"exports\">{head}"
            f"{''.join(r[2] for r in rows)}</table>")


def _render(run: _Run, exports: str = "") -> str:
    plots = "".join(f"<figure>{_scatter(run, key)}</figure>" for key in _AXES)
    name = _e(run.name)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>autoprune report: {name}</title>'
            f"<style>{_svg.STYLE}</style></head><body><h1>autoprune report: {name}</h1>"
            f'<div class="side"><div><h2>Run</h2>{_overview(run)}</div>'
            f"<div><h2>Environment</h2>{_environment(run)}</div></div>"
            f"<h2>Pareto front: validation accuracy vs cost</h2>{_LEGEND}"
            f'<div class="plots">{plots}</div><h2>Front members</h2>{_front_section(run)}'
            f"<h2>Search progress</h2>{_progress(run)}"
            f"<h2>All trials</h2><p>Click a header to sort.</p>{_trials_table(run)}"
            f"{exports}<script>{_svg.SCRIPT}</script></body></html>\n")


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Render ``report.html`` into ``run_dir`` from its files alone; returns the report's path.

    Call after a search (or on a copied run folder): the page is self-contained and offline.
    """
    run = RunDir.open(run_dir)
    atomic_write_text(run.report_path, _render(_load(run), _exports(run.path)))
    return run.report_path

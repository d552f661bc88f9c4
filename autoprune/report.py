"""Reports rendered from a run directory's files only (works on a copied run dir).

The terminal summary and the HTML report build on the same reads
(:mod:`autoprune.report_data`); the charts are drawn by :mod:`autoprune.report_plots`. The HTML
page is one self-contained file (inline SVG, CSS and a few lines of vanilla JS; no network, no
absolute paths) so a reviewer can open it anywhere the run folder was copied to.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoprune import _svg
from autoprune.report_data import (
    RunView,
    SummaryRow,
    baseline_family,
    cost_name,
    cost_of,
    esc,
    front_records,
    kept_of,
    load,
    ms,
    pct,
    points,
    recommended,
    slug,
    state_counts,
    summary_rows,
    val_size,
)
from autoprune.report_plots import AXES, LEGEND, parallel, progress, scatter
from autoprune.results import RunDir, atomic_write_text
from autoprune.run_files import FileCheck
from autoprune.selection import passed_over, recommend, standard_error
from autoprune.trial import DRIFT_FLAG, HARD_LINE, LEGACY_DRIFT_FLAG, TrialRecord, TrialState

__all__ = ["front_table", "summary_table", "terminal_summary", "write_report"]


def _pts(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f} pt"


def front_table(front: Sequence[TrialRecord], baseline: dict[str, Any],
                baselines: Sequence[TrialRecord] = ()) -> str:
    """The front as a fixed-width table, the dense model first and the ``baselines`` that are
    not on the front last; Δ columns: test accuracy against the dense model and the uniform
    baseline, in percentage points."""
    dense = baseline.get("dense", {})
    dense_ms = dense.get("latency_final_ms") or dense.get("latency_ms")  # timed like the front
    dense_test = dense.get("test_acc")
    uniform = next((r.test_acc for r in baselines if baseline_family(r.baseline) == "uniform"),
                   None)
    header = f"{'trial':>6} {'val acc':>8} {'test acc':>9} {'Δ dense':>10} {'Δ uniform':>10} " \
             f"{'FLOPs':>7} {'params':>7} {'latency ms':>11}  note"
    lines = [header, "-" * len(header),
             f"{'dense':>6} {pct(dense.get('val_acc')):>8} {pct(dense_test):>9} {'':>10} "
             f"{_pts(points(dense_test, uniform)):>10} {'100%':>7} {'100%':>7} {ms(dense_ms):>11}"]
    ids = {r.trial for r in front}
    rest = [r for r in baselines if r.trial not in ids]
    for r in [*front, *rest]:
        note = "; ".join(n for n in (_printable(r.baseline or ""),
                                     "" if r.trial in ids else "not on the front",
                                     _printable(r.latency_flag or "")) if n)
        lines.append(
            f"{r.trial:>6} {pct(r.val_acc):>8} {pct(r.test_acc):>9} "
            f"{_pts(points(r.test_acc, dense_test)):>10} {_pts(points(r.test_acc, uniform)):>10} "
            f"{pct(r.flops_ratio):>7} {pct(r.params_ratio):>7} {ms(r.latency_ms):>11}  {note}")
    return "\n".join(lines)


def _latency_note(run: RunView) -> str:
    """Where the latencies come from, and how many search-time timings stayed noisy."""
    if run.dense_latency is None:
        return ""
    timed = [r for r in run.records if r.latency_ms is not None]
    noisy = sum("noisy" in (r.latency_flag or "") for r in timed)
    final = "; latencies below: the final re-timing (dense, baselines, front, alternating)" \
        if run.latency_iqr else ""
    warn = f"\nlatency: {noisy} of {len(timed)} timings stayed noisy after re-timing " \
        "(flagged in trials.csv latency_flag: the machine was busy)" if noisy else ""
    return final + warn + _drift_note(run) + _dropped_note(run)


def _drift_note(run: RunView) -> str:
    """The models kept over the latency budget because the re-timed models moved as much."""
    kept = [r for r in run.records
            if any(f in (r.latency_flag or "") for f in (DRIFT_FLAG, LEGACY_DRIFT_FLAG))]
    if not kept:
        return ""
    legacy = any(LEGACY_DRIFT_FLAG in (r.latency_flag or "") for r in kept)  # the least move
    return (f"\nlatency: the models re-timed at the end ran x{run.latency_drift:.3f} "
            f"({'at least' if legacy else 'median'}) "
            "slower relative to dense than the search timed them (the machine's load moved, not "
            f"the models): {len(kept)} over the budget by no more than that were kept, flagged; "
            "re-time one where it will run with `autoprune export RUN --trial N` before "
            "deploying it")


def _dropped_note(run: RunView) -> str:
    """How many models the end-of-run re-timing put over the latency budget, and what to do:
    a small net's ratio to dense moves with what else runs on the machine."""
    dropped = [r for r in run.records
               if r.trial in run.retimed and r.state is TrialState.INFEASIBLE]
    if not dropped:
        return ""
    dense = run.dense_latency
    ratios = sorted(r.latency_ms / dense for r in dropped if r.latency_ms and dense)
    at = f" ({ratios[0]:.3f}-{ratios[-1]:.3f} of dense)" if ratios else ""
    hard = f"; the run was made with {HARD_LINE}, so those over the budget by no more than " \
        f"the re-timed models' common move (x{run.latency_drift:.3f}) were dropped too" \
        if any(HARD_LINE in (r.fail_reason or "") for r in dropped) else ""
    return (f"\nlatency: {len(dropped)} of {len(run.retimed)} models re-timed at the end "
            f"measured over the budget{at} and were dropped (INFEASIBLE, fail_reason in "
            f"trials.csv{hard}). Their ratio to dense moves with the machine's load (5-10 % from "
            "one pass to the next on a busy 2-core machine): before concluding the budget is "
            "out of reach, re-time one on a quiet machine with `autoprune export RUN --trial N` "
            "(add --finetune-epochs for a trial whose weights were dropped)")


def _flag(row: SummaryRow) -> str:
    """The latency note of a decision-table row: its flags, "slower than dense" at least when
    its final latency is."""
    flags = [f for f in (row.latency_flag or "").split("; ") if f]
    if row.slower and "slower than dense" not in flags:
        flags.append("slower than dense")
    return "; ".join(flags)


def _printable(text: str) -> str:
    """Text from a run file, safe to print: control characters (terminal escapes) shown as
    ``\\x..`` instead of acting on the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _why(run: RunView, pick: TrialRecord) -> str:
    """Why ``pick`` is the recommended model (:mod:`autoprune.selection`), in a clause."""
    full, cost = [r for r in run.records if r.is_full], cost_of(run)
    best, n = recommend(full, None, cost=cost), val_size(run)
    if n is None:
        return ("the best validation accuracy (the run does not know its validation size: pass "
                "val_size to apply the one-standard-error rule)")
    top = pick if best is None or best.val_acc == pick.val_acc else best
    if top is pick and pick.baseline:
        return f"the best validation accuracy, and the {pick.baseline} baseline itself"
    se = f"{100 * standard_error(float(top.val_acc or 0.0), n):.2f} point on {n} examples"
    off = "".join(
        f"; {b.baseline} (trial {b.trial}) is within it but off the front: trial {d.trial} "
        f"scores as well on validation at {pct(cost(d))} {cost_name(run)} against {pct(cost(b))}"
        for b, d in (passed_over(full, n, pick, cost=cost) if cost else []))
    if top is pick:
        return (f"the best validation accuracy; no one-liner on the front within one standard "
                f"error ({se}){off}")
    return (f"{pick.baseline} within one standard error ({se}) of the best validation "
            f"accuracy, trial {top.trial}'s {pct(top.val_acc)}; a searched plan is preferred "
            f"only when it leads the one-liners by more (that one: --trial {top.trial}){off}")


def terminal_summary(run_dir: str) -> str:
    """The run's budget, trial counts, front and baselines, ending with the export command of
    the recommended model (:func:`autoprune.report_data.recommended`) and why."""
    run = RunDir.open(run_dir)
    view = load(run)
    budget_text = ", ".join(f"latency <= {v:g} ms" if k == "latency_ms" else f"{k} <= {v:.0%}"
                            for k, v in view.budget.items() if v is not None)
    baselines = [r for r in view.records if r.baseline and r.state is TrialState.COMPLETE]
    pick = recommended(view)
    tail = (f"\n\nrecommended: trial {pick.trial}, {_why(view, pick)}\nnext: autoprune export "
            f"{_printable(shlex.quote(str(run_dir)))} --trial {pick.trial}"
            if pick is not None else "")
    return (f"run: {_printable(str(run.path))}\nbudget: {budget_text or '-'}; "
            f"trials: {state_counts(view.records) or 'none'}{_latency_note(view)}\n\n"
            f"Pareto front (validation selects; test shown for front members and baselines; "
            f"Δ in test-accuracy points):\n"
            f"{front_table(front_records(run), view.baseline, baselines)}{tail}")


def summary_table(run: RunView) -> str:
    """The decision table: dense, front members and baselines, their test accuracy and its Δ,
    costs, final latency and the export command."""
    head = ("<tr><th>model</th><th>kind</th><th>val acc</th><th>test acc</th>"
            "<th>Δ vs dense</th><th>Δ vs uniform</th><th>FLOPs</th><th>params</th>"
            "<th>latency ms (IQR)</th><th>vs dense</th><th>export</th></tr>")
    rows = []
    for row in summary_rows(run):
        iqr = f" ({ms(row.latency_iqr)})" if row.latency_iqr is not None else ""
        cmd = "" if row.trial is None else \
            f"autoprune export {shlex.quote(run.name)} --trial {row.trial}"
        export = f'<code class="export">{esc(cmd)}</code>' if cmd else ""
        trial = "" if row.trial is None else f' data-trial="{row.trial}"'
        cls = "dense-row" if row.trial is None else \
            "front-row" if row.trial in run.front_ids else "baseline-row"
        rows.append(
            f'<tr class="{cls}"{trial}><td class="text">{esc(row.name)}</td>'
            f'<td class="text">{esc(row.kind)}</td><td>{pct(row.val_acc)}</td>'
            f"<td>{pct(row.test_acc)}</td>{_delta(row.vs_dense)}{_delta(row.vs_uniform)}"
            f"<td>{pct(row.flops_ratio)}</td><td>{pct(row.params_ratio)}</td>"
            f"<td>{ms(row.latency_ms)}{iqr}</td>"
            f'<td class="text{" slower" if row.slower else ""}">'
            f'{esc(_flag(row))}</td>'
            f'<td class="text">{export}</td></tr>')
    return (f'<div class="scroll"><table id="summary"><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _delta(value: float | None) -> str:
    cls = "" if value is None or abs(value) < 0.005 else " pos" if value > 0 else " neg"
    return f'<td class="delta{cls}">{_pts(value)}</td>'


# -- HTML report -------------------------------------------------------------------------------

def _natural(name: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(t), "") if t.isdigit() else (-1, t) for t in re.split(r"(\d+)", name))


def _member(run: RunView, r: TrialRecord, groups: Sequence[str]) -> str:
    plan = r.plan or {}
    ratios = plan.get("ratios") or {}
    kept = [kept_of(run, g, ratios.get(g), plan) for g in groups]
    notes = [None if k is None else f"{k[0]}/{k[1]} kept" for k in kept]
    bars = _svg.hbar_chart(groups, [ratios.get(g) for g in groups],
                           f"channels removed per group, trial {r.trial}", notes)
    test = pct(r.test_acc) if r.test_acc is not None else "not evaluated"
    cmd = f"autoprune export {shlex.quote(run.name)} --trial {r.trial}"
    tag = f' <span class="tag">{esc(r.baseline)}</span>' if r.baseline else ""
    return (f'<div class="card" data-trial="{r.trial}"><h3>trial {r.trial}{tag}</h3>'
            f"<p>val acc <b>{pct(r.val_acc)}</b> · test acc <b>{test}</b> · "
            f"FLOPs {pct(r.flops_ratio)} · params {pct(r.params_ratio)} · "
            f"latency {ms(r.latency_ms)} ms</p>{bars}"
            f'<p>export: <code class="export">{esc(cmd)}</code></p></div>')


def _front_section(run: RunView) -> str:
    if not run.front:
        return "<p>No front yet: no trial has finished its full fine-tune.</p>"
    groups = sorted({g for r in run.front for g in ((r.plan or {}).get("ratios") or {})}
                    | set(run.group_channels), key=_natural)
    cards = "".join(_member(run, r, groups) for r in run.front)
    widths = ("each bar ends with the channels kept of the dense model's" if run.group_channels
              else "kept/total channels are not shown: this run's baseline.json does not "
              "record the dense channel count of each group")
    return (f"<p>Bars: share of each group's channels removed ({widths}). Run the export "
            f"command from the folder that contains <code>{esc(run.name)}/</code>.</p>"
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
        return f'<td class="text" data-v="{esc(value)}">{esc(value)}</td>'
    shown = {"int": f"{value:,.0f}", "pct": pct(value), "ms": ms(value),
             "sec": f"{value:.1f}"}[fmt]
    return f'<td data-v="{float(value)!r}">{shown}</td>'


def _trials_table(run: RunView) -> str:
    head = "".join(f'<th title="click to sort">{esc(h)}</th>' for h, _, _ in _COLUMNS)
    rows = []
    for r in run.records:
        front = r.trial in run.front_ids
        cls = f"state-{slug(r.state)}" + (" front-row" if front else "")
        cells = "".join(_cell(r, f, fmt) for _, f, fmt in _COLUMNS)
        rows.append(f'<tr class="{cls}" data-trial="{r.trial}">{cells}</tr>')
    failed = [r for r in run.records if r.state in (TrialState.FAIL, TrialState.INFEASIBLE)]
    notes = "".join(f'<li class="failure">trial {r.trial} ({esc(r.state.lower())}): '
                    f"{esc(r.fail_reason or 'no reason recorded')}</li>" for r in failed)
    screened = sum(r.state is TrialState.SCREENED for r in run.records)
    toggle = (f'<p><span class="toggle" role="button" tabindex="0" aria-pressed="true" '
              f'data-for="trials" data-class="hide-screened">hide the {screened} screened '
              f"trials (proxy or short fine-tune only)</span> · click a header to sort</p>"
              if screened else "<p>Click a header to sort.</p>")
    hide = " hide-screened" if screened else ""
    return (f'{toggle}<div class="scroll"><table class="sortable{hide}" id="trials"><thead>'
            f'<tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            + (f'<h3>Trials that did not finish</h3><ul class="failures">{notes}</ul>'
               if failed else ""))


def _kv(rows: Sequence[tuple[str, Any]], table_id: str) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc('-' if v is None else v)}</td></tr>"
                   for k, v in rows)
    return f'<div class="scroll"><table class="kv" id="{table_id}">{body}</table></div>'


def _count(value: Any) -> str | None:
    return None if value is None else f"{float(value):,.0f}"


def _overview(run: RunView) -> str:
    dense, budget = run.dense, run.budget
    names = {"flops": "FLOPs", "params": "params", "latency": "latency"}
    limits = [f"{names[k]} ≤ {v:.0%} of dense" for k, v in budget.items()
              if v is not None and k in names]
    if budget.get("latency_ms") is not None:
        limits.append(f"latency ≤ {budget['latency_ms']} ms")
    task = dict(run.config.get("task") or {})
    spec = str(task.get("spec") or "-")
    spec = Path(spec).name if os.sep in spec else spec  # never leak a local path
    final, iqr = run.dense_latency, run.dense_iqr  # the end-of-run re-timing's, when it ran
    return _kv([
        ("budget", ", ".join(limits) or "-"), ("task", spec),
        ("model", task.get("model") or "task default"),
        ("trials", state_counts(run.records) or "none"),
        ("front size", len(run.front)), ("prunable groups", run.baseline.get("groups")),
        ("dense val acc", pct(dense.get("val_acc"))),
        ("dense test acc", pct(dense.get("test_acc"))),
        ("dense MACs", _count(dense.get("macs"))), ("dense FLOPs", _count(dense.get("flops"))),
        ("dense params", _count(dense.get("params"))),
        ("dense latency", None if final is None else
         f"{ms(final)} ms" + (f" (IQR {ms(iqr)} ms)" if iqr is not None else "")),
    ], "overview")


def _environment(run: RunView) -> str:
    env, dense = dict(run.baseline.get("environment") or {}), run.dense
    return _kv([
        ("latency device", env.get("device") or dense.get("device")),
        ("device name", env.get("device_name")),
        ("fine-tune device", env.get("finetune_device")),
        ("latency batch size", dense.get("batch_size")), ("dtype", dense.get("dtype")),
        ("torch", env.get("torch")), ("torch-pruning", env.get("torch_pruning")),
        ("optuna", env.get("optuna")), ("CUDA", env.get("cuda")), ("python", env.get("python")),
        ("CPU threads", env.get("cpu_threads")), ("platform", env.get("platform")),
        ("autoprune", env.get("autoprune")),
    ], "environment")


def _exports(models: Path) -> str:
    """Exported models (``autoprune export``), quantized variants beside their float parent."""
    rows = []
    for file in sorted(models.glob("*.metrics.json")):
        m = _metrics(FileCheck(file))
        weights = m.get("weights") or {}
        rows.append((m.get("parent") or m.get("file", ""), m.get("parent") is not None, (
            f"<tr><td>{esc(m.get('file', file.name))}</td><td>{esc(m.get('format', '-'))}</td>"
            f"<td>{esc(m.get('trial', '-'))}</td><td>{pct(m.get('test_acc'))}</td>"
            f"<td>{pct(m.get('flops_ratio'))}</td>"
            f"<td>{pct(weights.get('sparsity')) if weights else '-'}</td>"
            f"<td>{int(m.get('file_bytes') or 0):,}</td><td>{ms(m.get('latency_ms'))}</td>"
            f"<td>{esc(m.get('parent') or '')}</td></tr>")))
    if not rows:
        return ""
    rows.sort(key=lambda r: (r[0], r[1]))  # each parent, then its quantized variants
    head = ("<tr><th>file</th><th>format</th><th>trial</th><th>test acc</th><th>FLOPs</th>"
            "<th>weights zero</th><th>bytes</th><th>latency ms</th><th>float parent</th></tr>")
    return (f'<h2>Exported models</h2><div class="scroll"><table class="exports">{head}'
            f"{''.join(r[2] for r in rows)}</table></div>")


def _metrics(check: FileCheck) -> dict[str, Any]:
    """An export's ``.metrics.json``, its figures checked to be numbers (damage: one line)."""
    m = check.mapping(check.json(), "the file")
    check.numbers(m, ("test_acc", "flops_ratio", "file_bytes", "latency_ms"), "")
    check.number(m.get("trial"), "trial", integer=True)
    check.words(m, ("file", "format", "parent"), "")
    check.numbers(check.mapping(m.get("weights") or {}, "weights"), ("sparsity",), "weights.")
    return m


def _headline(run: RunView) -> str:
    best = recommended(run)
    pick = (f" Recommended: trial {best.trial} ({pct(best.val_acc)} val, "
            f"{pct(best.test_acc)} test, {pct(best.flops_ratio)} of the dense FLOPs): "
            f"{esc(_why(run, best))}." if best is not None else "")
    return (f"<p>Trials: {esc(state_counts(run.records) or 'none')}.{pick} Validation "
            "accuracy selects the front; test accuracy is measured once, on front members and "
            "baselines. Δ: test accuracy in percentage points.</p>")


def _frozen_section(run: RunView) -> str:
    """The groups autoprune left at full width, and why (none: nothing is shown)."""
    if not run.frozen:
        return ""
    rows = "".join(f"<tr><td><code>{esc(f.get('name', ''))}</code></td>"
                   f"<td>{esc(f.get('reason', ''))}</td></tr>" for f in run.frozen)
    return (f"<h2>Groups left at full width ({len(run.frozen)})</h2><p>Not searched: pruning "
            "them was unsafe or could not be costed exactly, or they are an embedding width "
            f'(see <code>autoprune inspect</code>).</p><div class="scroll"><table>'
            f"<tr><th>group</th><th>why</th></tr>{rows}</table></div>")


def _render(run: RunView, exports: str = "") -> str:
    plots = "".join(f"<figure>{scatter(run, key)}</figure>" for key in AXES)
    name = esc(run.name)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>autoprune report: {name}</title>'
            f"<style>{_svg.STYLE}</style></head><body><h1>autoprune report: {name}</h1>"
            f"<h2>Decision: front members, baselines and the dense model</h2>{_headline(run)}"
            f"{summary_table(run)}"
            f"<h2>Pareto front: validation accuracy vs cost</h2>{LEGEND}"
            f'<div class="plots">{plots}</div><h2>Front members</h2>{_front_section(run)}'
            f"{_frozen_section(run)}"
            f"<h2>Per-group ratios of the fully fine-tuned trials</h2>"
            f'<div class="plots"><figure class="wide">{parallel(run)}<figcaption>one line per '
            f"trial, coloured by validation accuracy (orange: lowest, blue: highest); front "
            f"members drawn thicker</figcaption></figure></div>"
            f"<h2>Search progress</h2>{progress(run)}"
            f"<h2>All trials</h2>{_trials_table(run)}{exports}"
            f'<h2>Details</h2><div class="side"><div><h3>Run</h3>{_overview(run)}</div>'
            f"<div><h3>Environment</h3>{_environment(run)}</div></div>"
            f"<script>{_svg.SCRIPT}</script></body></html>\n")


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Render ``report.html`` into ``run_dir`` from its files alone; returns the report's path.

    Call after a search (or on a copied run folder): the page is self-contained and offline.
    """
    run = RunDir.open(run_dir)
    atomic_write_text(run.report_path, _render(load(run), _exports(run.models_dir)))
    return run.report_path

"""Several runs on one page: ``autoprune report RUN_A RUN_B ...`` (:func:`write_comparison`).

Each run's front (validation accuracy vs FLOPs ratio, the one cost every run records) on one
chart, in its own colour and letter, with each run's dense model; then a table of the runs and
their recommended model (:func:`autoprune.report_data.recommended`). Built from the same
reads as the single-run report (:mod:`autoprune.report_data`) and escaped the same way
(:func:`autoprune._svg.esc`).
"""

from __future__ import annotations

import os
import shlex
import string
from collections.abc import Sequence
from pathlib import Path

from autoprune import _svg
from autoprune.errors import ConfigError
from autoprune.pareto import hypervolume_2d, non_dominated
from autoprune.report_data import RunView, esc, load, pct, recommended, state_counts
from autoprune.report_plots import ACCURACY, Label, place_labels
from autoprune.results import RunDir, atomic_write_text

__all__ = ["write_comparison"]

_COLORS = ("#4e79a7", "#e15759", "#59a14f", "#b07aa1", "#f28e2b", "#76b7b2", "#9c755f",
           "#edc948")
_FLOPS = _svg.Scale("FLOPs (fraction of dense)", lambda v: f"{v:.1%}", decimals=_svg.percent)


def _front_points(run: RunView) -> list[tuple[int, float, float]]:
    """(trial, FLOPs ratio, val acc) of each front member that has both."""
    return [(r.trial, float(r.flops_ratio), float(r.val_acc)) for r in run.front
            if r.flops_ratio is not None and r.val_acc is not None]


def _chart(runs: Sequence[RunView]) -> str:
    fronts = [_front_points(run) for run in runs]
    ys = [a for f in fronts for _, _, a in f] + [float(run.dense["val_acc"]) for run in runs
                                                 if run.dense.get("val_acc") is not None]
    frame = _svg.Frame(0.0, 1.05, *_svg.padded_range(ys or [0.0]), width=640, height=380)
    body = [_svg.axes(frame, _FLOPS, ACCURACY)]
    labels: list[Label] = []
    for i, (run, front) in enumerate(zip(runs, fronts)):
        color, letter = _COLORS[i % len(_COLORS)], string.ascii_uppercase[i % 26]
        keep = non_dominated([(a, x) for _, x, a in front], ("max", "min"))
        body.append(_svg.step_path(frame, [(front[k][1], front[k][2]) for k in keep],
                                   f"run-line run-{i}").replace("/>", f' stroke="{color}"/>'))
        for trial, x, acc in front:
            px, py = frame.x(x), frame.y(acc)
            body.append(f'<circle class="run-point run-{i}" data-run="{i}" '
                        f'data-trial="{trial}" cx="{px:.1f}" cy="{py:.1f}" r="5" '
                        f'fill="{color}"><title>{esc(f"{letter}: {run.name}, trial {trial}")}'
                        f"\nval acc {pct(acc)} · FLOPs {pct(x)}</title></circle>")
            labels.append((px, py, f"{letter}{trial}", "point-label run-label", trial))
        if run.dense.get("val_acc") is not None:
            px, py = frame.x(1.0), frame.y(float(run.dense["val_acc"]))
            body.append(f'<rect class="dense-mark" x="{px - 4:.1f}" y="{py - 4:.1f}" width="8" '
                        f'height="8" fill="{color}"><title>{esc(f"{letter}: dense")}</title>'
                        "</rect>")
    body.append(place_labels(frame, labels))
    return _svg.svg(frame, "".join(body), "validation accuracy vs FLOPs, every run's front")


def _row(i: int, run: RunView) -> str:
    best = recommended(run)
    points = [(a, x) for _, x, a in _front_points(run)]
    volume = hypervolume_2d(points, ("max", "min"), (0.0, 1.0)) if points else None
    budget = ", ".join(f"{k} {v:g}" for k, v in run.budget.items() if v is not None) or "-"
    pick = "-" if best is None else (
        f"trial {best.trial}: val {pct(best.val_acc)}, test {pct(best.test_acc)}, "
        f"FLOPs {pct(best.flops_ratio)}")
    cmd = "" if best is None else f"autoprune export {shlex.quote(run.name)} --trial {best.trial}"
    return (f'<tr><td class="text"><b>{string.ascii_uppercase[i % 26]}</b></td>'
            f'<td class="text">{esc(run.name)}</td><td class="text">{esc(budget)}</td>'
            f"<td>{pct(run.dense.get('val_acc'))}</td><td>{pct(run.dense.get('test_acc'))}</td>"
            f'<td class="text">{esc(state_counts(run.records) or "none")}</td>'
            f"<td>{len(run.front)}</td><td>{'-' if volume is None else f'{volume:.3f}'}</td>"
            f'<td class="text">{esc(pick)}</td><td class="text"><code class="export">'
            f"{esc(cmd)}</code></td></tr>")


def _page(runs: Sequence[RunView]) -> str:
    head = ("<tr><th>run</th><th>folder</th><th>budget</th><th>dense val</th><th>dense test"
            "</th><th>trials</th><th>front</th><th>hypervolume (FLOPs)</th>"
            "<th>recommended (one-SE rule)</th><th>export</th></tr>")
    rows = "".join(_row(i, run) for i, run in enumerate(runs))
    dense = {pct(run.dense.get("val_acc")) for run in runs}
    warn = ("<p>The runs' dense models score differently: different tasks, models or splits "
            "compare only loosely.</p>" if len(dense) > 1 else "")
    names = esc(" vs ".join(run.name for run in runs))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>autoprune comparison: {names}'
            f"</title><style>{_svg.STYLE}</style></head><body><h1>autoprune comparison: {names}"
            f'</h1><div class="scroll"><table id="runs"><thead>{head}</thead><tbody>{rows}'
            f"</tbody></table></div>{warn}<h2>Fronts: validation accuracy vs FLOPs</h2>"
            f"<p>Each run's front in its colour, points named by run letter and trial; squares: "
            f'each run\'s dense model.</p><div class="plots"><figure class="wide">{_chart(runs)}'
            f"</figure></div><script>{_svg.SCRIPT}</script></body></html>\n")


def write_comparison(run_dirs: Sequence[str | os.PathLike[str]],
                     out_path: str | os.PathLike[str]) -> Path:
    """Write one offline page comparing the fronts of ``run_dirs`` (at least two) to
    ``out_path``; returns its path. Each run is read as its own report reads it."""
    if len(run_dirs) < 2:
        raise ConfigError(f"run_dirs={list(map(str, run_dirs))!r} names one run; give two or "
                          "more to compare (one run: write_report)")
    runs = [load(RunDir.open(d)) for d in run_dirs]
    out = Path(out_path)
    atomic_write_text(out, _page(runs))
    return out

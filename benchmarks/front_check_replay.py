"""Replay the pick rule's front check on kept search runs.

    python benchmarks/front_check_replay.py RUN_DIR... \\
        --out benchmarks/results/front_check_replay.md

The one-standard-error rule (:func:`autoprune.selection.recommend`) passes over a one-liner
baseline that another fully fine-tuned candidate puts clearly off the front (a validation
accuracy no lower at a cost lower by more than ``DOMINANCE_MARGIN``). The benchmark rows do not
record every candidate's cost, so this reads the run directories ``search_regime.py
--keep-runs`` kept: per run, the best on validation, the rule's pick without the front check
and with it (at each ``--margins``), on the run's front axis (FLOPs or final measured latency).
No training: the rule applied to figures already measured. Run directories that predate
``val_size`` in ``baseline.json`` use ``--val-size`` (the benchmark's split: 5000).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from autoprune.report_data import cost_of, load, val_size
from autoprune.results import RunDir
from autoprune.selection import DOMINANCE_MARGIN, recommend


def replay_run(path: Path, default_val_size: int, margins: list[float]) -> dict[str, Any] | None:
    """One run's picks: best on validation, the rule without the front check, with it at each
    margin (trial numbers); None for a run with no fully fine-tuned trial."""
    view = load(RunDir.open(path))
    full = [r for r in view.records if r.is_full]
    cost, n = cost_of(view), val_size(view) or default_val_size
    if not full or cost is None:
        return None
    plain = recommend(full, n)
    checked = {f"{m:g}": recommend(full, n, cost=cost, margin=m) for m in margins}
    best = recommend(full, None, cost=cost)
    assert plain is not None and best is not None
    return {"run": path.name, "val_size": n, "n_full": len(full), "best_val": best.trial,
            "one_se": plain.trial, "one_se_baseline": plain.baseline,
            "one_se_cost": cost(plain),
            "front_checked": {m: (p.trial if p else None) for m, p in checked.items()},
            "changed": sorted(m for m, p in checked.items() if p is not plain)}


def _runs(path: Path) -> list[Path]:
    """``path`` if it is a run directory, else the run directories in it."""
    if (path / "trials.csv").is_file():
        return [path]
    return sorted(p for p in path.iterdir() if (p / "trials.csv").is_file())


def render(rows: list[dict[str, Any]], margins: list[float], command: str) -> str:
    lines = ["# The pick rule's front check, replayed on kept search runs", "", f"`{command}`", "",
             f"{len(rows)} runs with fully fine-tuned trials; default margin "
             f"{DOMINANCE_MARGIN:g}. A row per run; trial numbers.", ""]
    for m in margins:
        n = sum(f"{m:g}" in r["changed"] for r in rows)
        lines.append(f"- margin {m:g}: the front check changes the pick in {n} of {len(rows)}")
    lines += ["", "| run | best on val | one-SE pick | its cost | "
              + " | ".join(f"front-checked ({m:g})" for m in margins) + " |",
              "|---|---|---|---|" + "---|" * len(margins)]
    for r in rows:
        pick = f"{r['one_se']}" + (f" ({r['one_se_baseline']})" if r["one_se_baseline"] else "")
        checked = " | ".join(f"**{r['front_checked'][f'{m:g}']}**" if f"{m:g}" in r["changed"]
                             else str(r["front_checked"][f"{m:g}"]) for m in margins)
        lines.append(f"| {r['run']} | {r['best_val']} | {pick} | {r['one_se_cost']:.3f} | "
                     f"{checked} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="run directories, or folders of them (search_regime's --keep-runs)")
    p.add_argument("--val-size", type=int, default=5000,
                   help="validation examples of runs that do not record it (default 5000)")
    p.add_argument("--margins", type=float, nargs="+", default=[0.02, DOMINANCE_MARGIN, 0.1])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    runs = [run for path in args.runs for run in _runs(path)]
    rows = [r for path in runs if (r := replay_run(path, args.val_size, args.margins)) is not None]
    command = "python benchmarks/front_check_replay.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = render(rows, args.margins, command)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        print(f"written to {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

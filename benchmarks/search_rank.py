"""Does the search's own fine-tune rank plans the way the final fine-tune does?

A search picks among its fully fine-tuned candidates by their validation accuracy after
``--finetune-steps`` steps; what the user deploys is the pick after a much longer fine-tune. The
proxy study (``search_regime.py``) measures a cheap score against that same short fine-tune under
another seed; this script measures the short fine-tune against the final one. It takes a search
run directory kept by ``search_regime.py --keep-runs`` (its ``trials.csv`` and ``plans/``),
prunes every fully fine-tuned plan from the same dense model again, and for each plan runs

- a ``--steps`` fine-tune (each of ``--steps``; seed ``--steps-seed``), scored on val;
- the final fine-tune of ``search_regime.py`` (``--final-epochs`` of the training set, one per
  ``--final-seeds``), scored on val and test;

then prints, per score, Spearman's rho against the final test accuracy (mean over the final
seeds), the plan the score would pick with its final test accuracy, and the final fine-tune's
rho with itself under the other seed (its noise ceiling). Besides the fine-tunes, the scores
include one that costs nothing: the FLOPs share a plan keeps (at equal measured latency, the
capacity the latency budget leaves it), alone and as the tie-break among the plans within
``--tie`` points of the best search val. With one final seed equal to the search's seed, every
plan gets its ``search_regime`` row's final fine-tune seed and batches, so the peers and the
pick pair with that row (not bit-exact on CPU: tests came out 0.0-0.4 point away from it).
``--peer ROW_JSON`` adds a kept ``search_regime`` row's plan (e.g. ``uniform-lat``) to the table.
Every fine-tune is kept in the ``--out`` JSON as it finishes; a re-run skips those.

    python benchmarks/search_rank.py /tmp/runs/mbv2-latency0.3-seed1-autoprune --arch mbv2 \\
        --steps 300 --final-seeds 1001 5003 --out benchmarks/results/search_rank.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import save_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a search run directory (search_regime --keep-runs)")
    p.add_argument("--arch", required=True)
    p.add_argument("--steps", type=int, nargs="*", default=[300], help="none: finals only")
    p.add_argument("--steps-seed", type=int, default=7)
    p.add_argument("--final-seeds", type=int, nargs="+", default=[1001, 5003])
    p.add_argument("--final-epochs", type=float, default=2.0)
    p.add_argument("--peer", type=Path, action="append", default=[], metavar="ROW_JSON")
    p.add_argument("--tie", type=float, default=1.0, help="points of search val within which "
                   "the tie-broken pick prefers the plan that keeps the most FLOPs")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def plans_of(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """{name: plan dict} of the run's fully fine-tuned trials and the peers; {score: {name:
    value}} of the trials: the search's own validation accuracy, the FLOPs share kept, and
    ``kept`` (1 for the trials the search could pick, 0 for those dropped, e.g. re-timed over
    the budget at the end: ranked, never picked)."""
    scores: dict[str, dict[str, float]] = {"search val": {}, "FLOPs kept": {}, "kept": {}}
    plans: dict[str, Any] = {}
    with open(args.run / "trials.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["val_acc"] and float(row.get("fidelity") or 1.0) >= 1.0:
                name = f"{row['trial']}" + (f" ({row['baseline']})" if row["baseline"] else "")
                scores["search val"][name] = float(row["val_acc"])
                scores["FLOPs kept"][name] = float(row["flops_ratio"])
                scores["kept"][name] = float(row["state"] == "COMPLETE")
                plans[name] = json.loads((args.run / "plans" / f"{row['trial']}.json")
                                         .read_text())
    for path in args.peer:
        row = json.loads(path.read_text())
        plans[row["method"]] = row["plan"]
    return plans, scores


def tie_broken(scores: dict[str, dict[str, float]], tie: float) -> dict[str, float]:
    """A pick rule as a score: among the plans within ``tie`` points of the best search val of
    the kept plans, the most FLOPs kept ranks first (the plans outside the tie follow, by val)."""
    val, flops = scores["search val"], scores["FLOPs kept"]
    best = max(v for n, v in val.items() if scores["kept"][n])
    return {n: (2.0 + flops[n]) if val[n] >= best - tie / 100 else val[n] for n in val}


def fine_tunes(args: argparse.Namespace, plans: dict[str, Any],
               done: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Run every (schedule, plan) fine-tune not in ``done``; ``done`` grows and is saved as
    each finishes."""
    import search_regime as sr

    import autoprune as ap

    cfg = vars(sr.parse_args(["--arch", args.arch, "--flops", "--latency", "0.3"]))
    cfg["final_epochs"] = args.final_epochs
    ctx = sr._context(cfg, args.arch, print)
    schedules = [(f"{n}-{args.steps_seed}", n / ctx["epoch_steps"], args.steps_seed)
                 for n in args.steps]
    schedules += [(f"final-{s}", args.final_epochs, s) for s in args.final_seeds]
    for label, epochs, seed in schedules:
        for name, plan in plans.items():
            key = f"{label}-{name}"
            if key in done:
                continue
            start = time.perf_counter()
            model, steps = sr._train(ctx["analysis"].apply(ap.PruningPlan.from_dict(plan)),
                                     cfg, ctx, seed, epochs)
            done[key] = {"val": ctx["evaluate"](model, "val"), "steps": steps,
                         "s": time.perf_counter() - start}
            if label.startswith("final"):
                done[key]["test"] = ctx["evaluate"](model, "test")
            print(key, done[key], flush=True)
            args.out.with_suffix(".json").parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps({"fine_tunes": done}, indent=1))
    return done


def report(args: argparse.Namespace, plans: dict[str, Any], scores: dict[str, dict[str, float]],
           done: dict[str, dict[str, float]]) -> str:
    from scipy.stats import spearmanr

    finals = [f"final-{s}" for s in args.final_seeds]
    test = {n: sum(done[f"{f}-{n}"]["test"] for f in finals) / len(finals) for n in plans}
    searched, flops = scores["search val"], scores["FLOPs kept"]
    cols = ["search val", "FLOPs kept", *(f"{n}-step val" for n in args.steps),
            *(f"{f} test" for f in finals)]
    lines = [f"`python {' '.join(sys.argv)}`", "",
             "| plan | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for n in plans:
        cells = [f"{searched[n]:.4f}" if n in searched else "-",
                 f"{flops[n]:.3f}" if n in flops else "-"]
        cells += [f"{done[f'{s}-{args.steps_seed}-{n}']['val']:.4f}" for s in args.steps]
        cells += [f"{done[f'{f}-{n}']['test']:.4f}" for f in finals]
        dropped = " (dropped by the search)" if not scores["kept"].get(n, 1.0) else ""
        lines.append(f"| {n}{dropped} | " + " | ".join(cells) + " |")
    names = [n for n in plans if n in searched]
    ranked = {k: v for k, v in scores.items() if k != "kept"}
    ranked[f"search val, ties within {args.tie:g} pt to FLOPs kept"] = tie_broken(scores,
                                                                                args.tie)
    ranked.update({f"{s}-step val": {n: done[f"{s}-{args.steps_seed}-{n}"]["val"] for n in names}
                   for s in args.steps})
    lines += ["", f"Spearman rho against the final test accuracy (mean over {len(finals)} "
              f"seeds), the search's {len(names)} fully fine-tuned plans, and the plan each "
              "score picks (its highest of those the search kept) with that plan's final test "
              "accuracy:", ""]
    for label, score in ranked.items():
        rho = spearmanr([score[n] for n in names], [test[n] for n in names])[0]
        pick = max((n for n in names if scores["kept"][n]), key=lambda n: score[n])
        lines.append(f"- {label}: {rho:+.2f}; picks {pick}, {test[pick]:.4f}")
    if len(finals) > 1:
        rho = spearmanr([done[f"{finals[0]}-{n}"]["test"] for n in names],
                        [done[f"{finals[1]}-{n}"]["test"] for n in names])[0]
        lines.append(f"- {finals[0]} test vs {finals[1]} test (the noise ceiling): {rho:+.2f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)
    plans, scores = plans_of(args)
    kept = args.out.with_suffix(".json")
    done = json.loads(kept.read_text())["fine_tunes"] if kept.is_file() else {}
    done = fine_tunes(args, plans, done)
    text = "# Search fine-tune vs final fine-tune: ranking\n\n" + report(args, plans, scores,
                                                                          done)
    print(text)
    save_report(args.out, text, {"run": str(args.run), "plans": plans,
                                 "searched": scores["search val"],
                                 "flops_kept": scores["FLOPs kept"], "fine_tunes": done})


if __name__ == "__main__":
    main()

"""Give saved pruning plans ``benchmarks/search_regime.py``'s final fine-tune, and test them.

    python benchmarks/finetune_plans.py --arch mbv2 --jobs 2 \\
        RUN/plans/2.json:3000 OTHER_RUN/plans/18.json:2000
    python benchmarks/finetune_plans.py --arch mbv2 --jobs 2 --gradual 4 \\
        --rows benchmarks/results/search_regime_mbv2_latency_median_5seeds.json \\
        --cell latency:0.5 --methods uniform-lat autoprune

Each ``PLAN.json:SEED`` (a plan as a run directory's ``plans/N.json`` holds it, and the final
fine-tune seed of the cell it is compared in: ``final_seed`` in that cell's kept rows) is
applied to the committed / cached dense model and fine-tuned exactly as ``search_regime.py``
fine-tunes every method of a cell (2 epochs of the training set, that seed's batches), then
scored on the test and validation splits. For "what would this cell have scored had the
search picked that plan" without re-running the search: a plan the search did pick reproduces
its row's test accuracy to the last image (MobileNetV2 latency 0.5 seed 4, trial 17: 91.98 %
in its row and with the calls this script makes; ``benchmarks/results/drift_replay_median.md``).

``--rows RESULTS.json --cell KIND:BUDGET --methods M...`` takes the plans of those methods'
rows in one cell of a ``search_regime.py`` results file instead, each with its row's final
seed, and prints the paired difference of the last method to each other one, beside the rows'
own figures. ``--gradual K`` prunes *during* the final fine-tune instead of before it: the
dense model is trained with the same batches, learning rate and optimizer, and
:class:`autoprune.PruneHook` prunes it in place ``K`` times, evenly over the first
``--gradual-until`` of the steps, event k keeping ``k/K`` of the way from dense to the plan's
widths (re-ranked on the weights trained so far); the architecture it ends with is the plan's.
Prints a table and writes ``--out`` (JSON). One torch thread per process.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_regime as sr
from _regime_peers import paired_interval


def prune_events(steps: int, k: int, until: float) -> list[int]:
    """The steps after which a ``k``-event gradual prune acts: the first after step 1, the
    rest evenly spaced, the last at ``until`` of ``steps``'s (k-1)/k; distinct, within steps."""
    if k < 1 or not 0.0 < until <= 1.0 or steps < k:
        raise ValueError(f"gradual pruning needs k >= 1 (got {k}), 0 < until <= 1 (got {until}) "
                         f"and at least k steps (got {steps})")
    events = [1 + round(j * until * steps / k) for j in range(k)]
    if len(set(events)) != k or events[-1] > steps:
        raise ValueError(f"{k} pruning events do not fit in {until:g} of {steps} steps")
    return events


def gradual_finetune(plan: Any, cfg: dict[str, Any], ctx: dict[str, Any],
                     seed: int) -> tuple[Any, int, list[dict[str, Any]]]:
    """The dense model fine-tuned as ``search_regime._train`` would fine-tune a pruned one
    (``final_epochs``, ``seed``'s batches, cosine learning rate), pruned to ``plan`` in
    ``cfg["gradual"]`` events over the first ``cfg["gradual_until"]`` of the steps by
    :class:`autoprune.PruneHook`: (model on the CPU in eval mode, steps, the hook's history)."""
    import torch

    import autoprune as ap
    from autoprune.pipeline import make_optimizer, training_pairs
    from autoprune.settings import FinetuneSettings

    steps = max(1, round(cfg["final_epochs"] * ctx["epoch_steps"]))
    torch.manual_seed(seed)
    loader = ctx["data"].loader(seed, ctx["batch"])
    model = copy.deepcopy(ctx["dense"]).train()
    settings = FinetuneSettings(steps=steps, **ctx["ft"])
    opt = make_optimizer(model, settings)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    hook = ap.PruneHook(model, ctx["example"], plan, optimizer=opt,
                        at_steps=prune_events(steps, cfg["gradual"], cfg["gradual_until"]))
    for _, (x, y) in zip(range(steps), training_pairs(loader)):
        model.train()  # whatever mode the hook's tracing left it in
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hook.on_step_end()
    return model.eval(), steps, hook.history


def _one(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    import autoprune as ap

    torch.set_num_threads(1)
    args = sr.parse_args(["--arch", job["arch"], "--cache", job["cache"],
                          "--out", str(Path(job["cache"]) / "x.md")])
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cfg.update(gradual=job["gradual"], gradual_until=job["until"])
    ctx = sr._context(cfg, job["arch"], lambda msg: None)
    plan = ap.PruningPlan.from_dict(job["plan"])
    start = time.perf_counter()
    seed = job["final_seed"]
    if job["gradual"]:
        model, steps, history = gradual_finetune(plan, cfg, ctx, seed)
        want = ctx["analysis"].macs(plan) / ctx["analysis"].cost_model.dense_macs()
        if abs(history[-1]["flops_ratio"] - want) > 1e-6:
            raise RuntimeError(f"{job['label']}: the gradual prune ended at FLOPs "
                               f"{history[-1]['flops_ratio']:.4f}, the plan's is {want:.4f}")
        out = {"test_acc": ctx["evaluate"](model, "test"),
               "val_acc": ctx["evaluate"](model, "val"), "final_steps": steps}
    else:
        out = sr._finetune(ctx["analysis"].apply(plan), cfg, ctx, seed)
    row = {**{k: v for k, v in job.items() if k not in ("plan", "cache")},
           "test_acc": out["test_acc"], "val_acc": out["val_acc"],
           "finetune_s": time.perf_counter() - start}
    print(f"{job['label']} seed {seed}: test {row['test_acc']:.4f} val {row['val_acc']:.4f} "
          f"({row['finetune_s']:.0f} s)", flush=True)
    return row


def jobs_from_rows(path: str, cell: str, methods: list[str]) -> list[dict[str, Any]]:
    """One job per (seed, method) of ``cell`` (``KIND:BUDGET``) in a results file's rows."""
    kind, _, budget = cell.partition(":")
    try:
        wanted = {(kind, float(budget), m) for m in methods}
    except ValueError:
        raise SystemExit(f"--cell {cell!r}: expected KIND:BUDGET, e.g. latency:0.5") from None
    found = []
    for unit in json.loads(Path(path).read_text())["results"]:
        for r in unit["runs"]:
            if ((r["kind"], r["budget"], r["method"]) in wanted and r.get("plan")
                    and r.get("test_acc") is not None):
                found.append({"plan": r["plan"], "final_seed": int(r["final_seed"]),
                              "seed": r["seed"], "method": r["method"],
                              "label": f"{r['method']} seed {r['seed']}",
                              "row_test_acc": r["test_acc"]})
    if not found:
        raise SystemExit(f"no rows of {methods} in cell {cell!r} of {path}")
    return sorted(found, key=lambda j: (j["seed"], methods.index(j["method"])))


def _interval(diffs: list[float]) -> str:
    """Mean difference in points and its 95 % interval, as ``search_regime.py`` writes them."""
    return sr._fmt(*paired_interval(diffs), scale=1.0)


def paired_lines(rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """The last method minus each other one, paired by seed, in this run and in the rows'
    figures; then each method's test accuracy here minus its row's (points, 95 % interval)."""
    by = {(r["seed"], r["method"]): r for r in rows}
    last = methods[-1]
    lines = ["", f"| {last} − | this fine-tune | the rows' fine-tune |", "|---|---|---|"]
    for other in methods[:-1]:
        seeds = [s for s, m in by if m == last and (s, other) in by]
        cols = [_interval([100 * (by[s, last][key] - by[s, other][key]) for s in seeds])
                for key in ("test_acc", "row_test_acc")]
        lines.append(f"| {other} ({len(seeds)} seeds) | {cols[0]} | {cols[1]} |")
    lines += ["", "| method | this fine-tune − the row's |", "|---|---|"]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        lines.append(f"| {method} ({len(mine)} seeds) | "
                     f"{_interval([100 * (r['test_acc'] - r['row_test_acc']) for r in mine])} |")
    return lines


def render(rows: list[dict[str, Any]], methods: list[str], header: str) -> str:
    """The printed report of ``rows`` (this run's, or a ``--out`` file's with ``--render``)."""
    lines = [header, "", "| plan | final seed | test % | the row's test % | val % |",
             "|---|---|---|---|---|"]
    for r in rows:
        was = r.get("row_test_acc")
        lines.append(f"| {r['label']} | {r['final_seed']} | {100 * r['test_acc']:.2f} | "
                     f"{'' if was is None else f'{100 * was:.2f}'} | {100 * r['val_acc']:.2f} |")
    return "\n".join(lines + (paired_lines(rows, methods) if methods else []))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("plans", nargs="*", metavar="PLAN.json:SEED")
    p.add_argument("--rows", help="a search_regime.py results JSON to take the plans from")
    p.add_argument("--cell", help="with --rows: KIND:BUDGET, e.g. latency:0.5 or flops:0.07")
    p.add_argument("--methods", nargs="+", default=[], help="with --rows: the methods' plans "
                   "(the last is compared with each other one)")
    p.add_argument("--gradual", type=int, default=0, metavar="K",
                   help="prune in K events during the fine-tune (0: prune, then fine-tune)")
    p.add_argument("--gradual-until", type=float, default=0.5, metavar="F",
                   help="the K events spread over the first F of the fine-tune's steps")
    p.add_argument("--arch", default="mbv2")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--cache", default="/tmp/finetune_plans", help="dense-model cache")
    p.add_argument("--out", default="finetune_plans.json")
    p.add_argument("--render", metavar="OUT.json", help="print the report of an earlier "
                   "run's --out file (with its --methods) and fine-tune nothing")
    args = p.parse_args(argv)
    if args.render:
        if not Path(args.render).is_file():
            p.error(f"--render {args.render!r}: no such file (an earlier run's --out)")
        print(render(json.loads(Path(args.render).read_text()), args.methods, args.render))
        return
    if bool(args.rows) != bool(args.cell) or (args.rows and not args.methods):
        p.error("--rows needs --cell KIND:BUDGET and --methods")
    common = {"arch": args.arch, "cache": args.cache, "gradual": args.gradual,
              "until": args.gradual_until}
    jobs = [{**j, **common} for j in jobs_from_rows(args.rows, args.cell, args.methods)
            ] if args.rows else []
    for spec in args.plans:
        path, sep, seed = spec.rpartition(":")
        if not sep or not seed.isdigit() or not Path(path).is_file():
            p.error(f"plan {spec!r}: expected PLAN.json:SEED with an existing plan file "
                    "(e.g. run/plans/2.json:3000)")
        jobs.append({**common, "plan": json.loads(Path(path).read_text()),
                     "final_seed": int(seed), "label": path})
    if not jobs:
        p.error("give PLAN.json:SEED arguments or --rows/--cell/--methods")
    start = time.perf_counter()
    with Pool(max(1, args.jobs)) as pool:
        rows = pool.map(_one, jobs, chunksize=1)
    how = f"gradual, {args.gradual} events" if args.gradual else "one shot"
    print(render(rows, args.methods if args.rows else [],
                 f"\n{len(rows)} fine-tunes in {(time.perf_counter() - start) / 60:.1f} min "
                 f"({how})"))
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""The latency model: predicted vs measured latency of random plans, fitting to a budget.

For each model (the README's default digits ResNet-8, torchvision ResNet-18 and MobileNetV2 at
64 px, random weights: latency does not depend on them) a :class:`~autoprune.latency.predictor.
LatencyTable` is built (each conv/linear layer timed standalone at 5 widths per axis, the rest
calibrated on the dense model and uniform plans at ratios 0.3 and 0.6) and its build seconds
reported. Then random plans (each group's ratio uniform in [0, 0.7], every third with
``round_to=8``) are predicted without building them, built, prepared in the runtime and timed:
``blocked_autorange`` (>= 0.1 s) once per round, the rounds alternating the order of the plans
(chunks of 10 plans plus the dense model); the latency is the fastest round (the least disturbed
by other jobs; the table builds on fastest samples too), the median over rounds is given too. The
relative error is ``|predicted - measured| / measured``; the error of the fraction of dense
compares ``predicted / dense`` with ``measured / dense measured in the same chunk`` (what a
latency budget needs; insensitive to the machine's load changing since the table was built,
which the absolute error is not). Finally
:func:`~autoprune.latency.predictor.fit_latency` fits plans to latency budgets (fractions of the
dense latency; uniform allocation and one random allocation; no rounding), which are measured
alongside the dense model: the miss is ``measured / (budget x measured dense) - 1``. Where it
misses by > 2 %, one correction (re-fit at the target scaled by predicted / measured fraction,
measure again) is reported too. Budgets out of reach (the fastest plan the 0.95 caps allow is
predicted slower) are reported with that plan measured, and replaced by the budget halfway
between it and dense. Batch 1, one thread.

    python benchmarks/latency_model.py [--models digits resnet18 mobilenet_v2] [--plans 50]
        [--rounds 5] [--budgets 0.5 0.3] [--runtimes eager]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, environment
from latency import build

import autoprune as ap
from autoprune.errors import BudgetError
from autoprune.latency import LatencyTarget
from autoprune.latency.layer_table import build_table
from autoprune.latency.predictor import LatencyTable, fit_latency
from autoprune.latency.runtimes import prepare

CHUNK = 10


def time_rounds(models: list[torch.nn.Module], x: torch.Tensor, runtime: str,
                rounds: int, stat: Any = min) -> list[float]:
    """``stat`` (default: the fastest) over ``rounds`` of each model's ``blocked_autorange``
    median (ms), the rounds alternating the order of the models."""
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        runs = [prepare(m.eval(), x, runtime).run for m in models]
        for r in range(rounds):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                timer = benchmark.Timer(stmt="run()", globals={"run": runs[i]}, num_threads=1)
                times[i].append(timer.blocked_autorange(min_run_time=0.1).median * 1e3)
    return [stat(t) for t in times]


def measured(analysis: ap.PrunableModel, plans: list[ap.PruningPlan], x: torch.Tensor,
             runtime: str, rounds: int) -> tuple[list[list[float]], list[list[float]]]:
    """Each plan's latency per round, and the dense model's (timed with every chunk)."""
    out, dense = [], []
    for start in range(0, len(plans), CHUNK):
        models = [analysis.model, *(analysis.apply(p) for p in plans[start:start + CHUNK])]
        ms = time_rounds(models, x, runtime, rounds, stat=list)
        dense.append(ms[0])
        out.extend(ms[1:])
    return out, dense


def random_plans(analysis: ap.PrunableModel, n: int, seed: int) -> list[ap.PruningPlan]:
    rng = np.random.default_rng(seed)
    return [ap.PruningPlan({g.name: float(rng.uniform(0.0, 0.7)) for g in analysis.groups},
                           round_to=8 if i % 3 == 0 else None) for i in range(n)]


def dense_fraction_errors(result: dict[str, Any]) -> dict[str, float]:
    """Error of the predicted fraction of dense vs the measured one (dense timed per chunk)."""
    predicted, got = np.asarray(result["predicted_ms"]), np.asarray(result["measured_ms"])
    dense = np.repeat(result["dense_measured_ms"], CHUNK)[:len(got)]
    err = np.abs(predicted / result["dense_ms"] / (got / dense) - 1)
    return {"median_err_of_dense_fraction": float(np.median(err)),
            "p90_err_of_dense_fraction": float(np.quantile(err, 0.9))}


def accuracy(analysis: ap.PrunableModel, table: LatencyTable, x: torch.Tensor,
             args: argparse.Namespace, runtime: str) -> dict[str, Any]:
    plans = random_plans(analysis, args.plans, args.seed)
    predicted = [table.predict(p) for p in plans]
    rounds, dense = measured(analysis, plans, x, runtime, args.rounds)
    got = np.array([min(r) for r in rounds])
    signed = (np.asarray(predicted) - got) / got
    err = np.abs(signed)
    by_median = np.array([statistics.median(r) for r in rounds])
    rounded = np.array([p.round_to is not None for p in plans])
    return {"plans": len(plans), "median_err": float(np.median(err)),
            "median_err_vs_median_of_rounds": float(np.median(
                np.abs(np.asarray(predicted) - by_median) / by_median)),
            "p90_err": float(np.quantile(err, 0.9)), "max_err": float(err.max()),
            "median_signed": float(np.median(signed)),
            "median_err_round8": float(np.median(err[rounded])),
            "median_err_unrounded": float(np.median(err[~rounded])),
            "dense_measured_ms": [min(d) for d in dense], "predicted_ms": predicted,
            "measured_ms": got.tolist(), "rounds_ms": rounds,
            "plans_json": [p.to_dict() for p in plans]}


def fit_row(analysis: ap.PrunableModel, table: LatencyTable, x: torch.Tensor, runtime: str,
            rounds: int, budget: float, alloc: Any) -> dict[str, Any]:
    """Fit ``alloc`` to ``budget`` x the dense latency, measure it (and one correction)."""
    target = budget * table.dense_ms
    plan = fit_latency(table, target, allocation=alloc)
    dense_ms, ms = time_rounds([analysis.model, analysis.apply(plan)], x, runtime, rounds)
    row = {"budget": budget, "target_ms": target, "predicted_ms": table.predict(plan),
           "measured_ms": ms, "dense_ms": dense_ms, "miss": ms / (budget * dense_ms) - 1.0,
           "miss_vs_target_ms": ms / target - 1,
           "flops_ratio": analysis.macs(plan) / analysis.cost_model.dense_macs()}
    if abs(row["miss"]) > 0.02:  # one correction: the predicted fraction's error, taken out
        fraction = (table.predict(plan) / table.dense_ms) / (ms / dense_ms)
        try:
            plan2 = fit_latency(table, target * fraction, allocation=alloc)
        except BudgetError:  # the corrected target is out of this allocation's reach
            return row
        dense2, ms2 = time_rounds([analysis.model, analysis.apply(plan2)], x, runtime, rounds)
        row.update(corrected_measured_ms=ms2, corrected_miss=ms2 / (budget * dense2) - 1)
    return row


def fits(analysis: ap.PrunableModel, table: LatencyTable, x: torch.Tensor,
         args: argparse.Namespace, runtime: str) -> list[dict[str, Any]]:
    """Budgets out of reach (the fastest plan the caps allow is predicted slower) are
    reported as such and replaced by the budget halfway between that plan and dense."""
    rng = np.random.default_rng(args.seed + 1)
    allocations: dict[str, Any] = {
        "uniform": 1.0, "random": {g.name: float(rng.uniform(0.2, 1.0)) for g in analysis.groups}}
    fastest = ap.PruningPlan(dict.fromkeys(table.group_names, 0.95))
    floor = table.predict(fastest) / table.dense_ms
    rows: list[dict[str, Any]] = []
    for budget in args.budgets:
        if budget < floor:
            dense_ms, ms = time_rounds([analysis.model, analysis.apply(fastest)], x, runtime,
                                       args.rounds)
            rows.append({"budget": budget, "unreachable": floor, "measured": ms / dense_ms})
            print(f"  fit {budget:g}: out of reach (fastest predicted {floor:.3f} of dense, "
                  f"measured {ms / dense_ms:.3f})")
            budget = math.ceil(50 * (1 + floor)) / 100
            if any(r["budget"] == budget for r in rows):
                continue
        for label, alloc in allocations.items():
            try:
                row = {**fit_row(analysis, table, x, runtime, args.rounds, budget, alloc),
                       "allocation": label}
            except BudgetError:  # a random allocation reaches less far than the uniform one
                rows.append({"budget": budget, "unreachable": floor, "measured": float("nan")})
                continue
            rows.append(row)
            print(f"  fit {budget:g} {label}: miss {100 * row['miss']:+.1f} %"
                  + (f" -> corrected {100 * row['corrected_miss']:+.1f} %"
                     if "corrected_miss" in row else ""), flush=True)
    return rows


def run_model(name: str, runtime: str, args: argparse.Namespace) -> dict[str, Any]:
    model, x = build(name)
    analysis = ap.analyze(model, x)
    start = time.perf_counter()
    table = build_table(analysis, LatencyTarget(runtime=runtime))
    build_s = time.perf_counter() - start
    print(f"{name} {runtime}: table {build_s:.1f} s ({table.info['entries']} entries, "
          f"{len(table.luts)} layer configs, {len(table.layers)} layers), dense "
          f"{table.dense_ms:.3f} ms", flush=True)
    acc = accuracy(analysis, table, x, args, runtime)
    print(f"  error median {100 * acc['median_err']:.1f} % p90 {100 * acc['p90_err']:.1f} %",
          flush=True)
    result = {"model": name, "runtime": runtime, "build_s": build_s, "entries":
              table.info["entries"], "configs": len(table.luts), "layers": len(table.layers),
              "dense_ms": table.dense_ms, "rest": list(table.rest), **acc}
    result.update(dense_fraction_errors(result))
    return {**result, "fits": fits(analysis, table, x, args, runtime)}


def tables(results: list[dict[str, Any]]) -> str:
    lines = ["| model | runtime | table build s (entries / layer configs) | dense ms | plans | "
             "median rel. error | p90 | max | median signed | median err round_to=8 / "
             "unrounded | median err vs median of rounds | median / p90 err of the fraction "
             "of dense |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['build_s']:.1f} ({r['entries']} / "
            f"{r['configs']}) | {r['dense_ms']:.3f} | {r['plans']} | "
            f"{100 * r['median_err']:.1f} % | {100 * r['p90_err']:.1f} % | "
            f"{100 * r['max_err']:.1f} % | {100 * r['median_signed']:+.1f} % | "
            f"{100 * r['median_err_round8']:.1f} % / {100 * r['median_err_unrounded']:.1f} % | "
            f"{100 * r['median_err_vs_median_of_rounds']:.1f} % | "
            f"{100 * r['median_err_of_dense_fraction']:.1f} % / "
            f"{100 * r['p90_err_of_dense_fraction']:.1f} % |")
    lines += ["", "| model | runtime | budget | allocation | predicted ms | measured ms | "
              "dense ms | miss vs budget x dense | after one correction | FLOPs % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for f in r["fits"]:
            if "unreachable" in f:
                lines.append(f"| {r['model']} | {r['runtime']} | {f['budget']:g} | - | "
                             f"out of reach: the fastest plan (every ratio 0.95) is predicted "
                             f"at {f['unreachable']:.3f} of dense, measured at "
                             f"{f['measured']:.3f} | | | | | |")
                continue
            corr = f"{100 * f['corrected_miss']:+.1f} %" if "corrected_miss" in f else "-"
            lines.append(f"| {r['model']} | {r['runtime']} | {f['budget']:g} | "
                         f"{f['allocation']} | {f['predicted_ms']:.3f} | "
                         f"{f['measured_ms']:.3f} | {f['dense_ms']:.3f} | "
                         f"{100 * f['miss']:+.1f} % | {corr} | "
                         f"{100 * f['flops_ratio']:.1f} |")
    return "\n".join(lines)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def document(data: dict[str, Any]) -> str:
    """The markdown page of one run (``data`` as the JSON holds it)."""
    return (f"# Latency model: predicted vs measured, fitting to a latency budget\n\n"
            f"`{data['command']}`\n\n{data['environment']} · total {data['total_s']:.0f} s\n\n"
            f"Machine load (other jobs ran concurrently on its 2 cores), `uptime` before and "
            f"after each model:\n\n" + "\n".join(f"- {line}" for line in data["load"]) +
            f"\n\n{__doc__.split(chr(10) + chr(10))[1]}\n\n{tables(data['results'])}\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits", "resnet18", "mobilenet_v2"])
    p.add_argument("--plans", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--runtimes", nargs="+", default=["eager"],
                   choices=["eager", "compile", "onnxruntime"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "latency_model.md")
    p.add_argument("--render", type=Path, help="only write the page again from this JSON "
                   "(derived columns recomputed from its raw timings)")
    args = p.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        data.setdefault("environment", environment())
        data.setdefault("total_s", 0.0)
        for r in data["results"]:
            r.update(dense_fraction_errors(r))
    else:
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        command = "python benchmarks/latency_model.py " + " ".join(
            sys.argv[1:] if argv is None else argv)
        start, load = time.perf_counter(), [uptime()]
        results = []
        for runtime in args.runtimes:
            for name in args.models:
                results.append(run_model(name, runtime, args))
                load.append(uptime())
        data = {"command": command, "environment": environment(), "load": load,
                "total_s": time.perf_counter() - start, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(document(data))
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    print(tables(data["results"]))


if __name__ == "__main__":
    main()

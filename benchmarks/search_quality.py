"""Search quality on Fashion-MNIST: uniform-l2, global-l2, random search, autoprune side by side.

For each arch (two CNNs, or a small ViT searched over its heads and MLP widths), seed and FLOPs
budget every method picks one plan; each plan is then pruned from
the same dense weights and fine-tuned with the same recipe, seed and batches, and scored on the
full test set. Searches select on a validation split carved from the training images. Also a
proxy-quality study (Spearman rho of the adaptive-BN proxy and of a short fine-tune against the
search's full fine-tune over random candidates at one budget) and best-so-far curves.

    python benchmarks/search_quality.py --task fashion-mnist --arch resnet vgg \
        --budgets 0.4 0.2 0.1 --trials 8 --seeds 3 [--quick] [--jobs 2]
    python benchmarks/search_quality.py --task fashion-mnist --arch vit --budgets 0.5 0.3 \
        --methods uniform-l2 global-l2 autoprune --spearman-arch none --jobs 1
        (writes results/search_quality_vit.md; the ViT trains and fine-tunes with AdamW)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

METHODS = ("uniform-l2", "global-l2", "random", "autoprune")
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"seeds": 3, "train_size": 12000, "val_size": 2000, "test_size": None,
             "budgets": [0.4, 0.2, 0.1], "trials": 8, "search_steps": 100, "final_steps": 300,
             "dense_epochs": 3, "spearman_candidates": 32},
    "quick": {"seeds": 1, "train_size": 2000, "val_size": 500, "test_size": 1000,
              "budgets": [0.2], "trials": 2, "search_steps": 20, "final_steps": 40,
              "dense_epochs": 1, "spearman_candidates": 6},
}
CAPS = 0.95
ARCH_NAMES = ("resnet", "vgg", "vit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="fashion-mnist", choices=["fashion-mnist", "digits"],
                   help="fashion-mnist (the figures) | digits (8x8, bundled: the CI run)")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--arch", nargs="+", default=["resnet", "vgg"], choices=ARCH_NAMES,
                   help="resnet | vgg | vit (a ViT, patch 4, ~35 MMACs: heads and MLP widths "
                        "searched; default resnet vgg)")
    p.add_argument("--budgets", nargs="+", type=float, help="FLOPs fractions (default 0.4 0.2 "
                   "0.1; --quick: 0.2)")
    p.add_argument("--trials", type=int, help="candidates fine-tuned at full fidelity")
    p.add_argument("--seeds", type=int, help="number of seeds (0 .. S-1)")
    p.add_argument("--quick", action="store_true", help="a small smoke run of the whole pipeline")
    p.add_argument("--jobs", type=int, default=2,
                   help="processes; (arch, seed) units run longest first (default 2)")
    p.add_argument("--out", type=Path, help="report path (default results/search_quality.md; "
                   "search_quality_vit.md when --arch has vit; _quick before .md with --quick)")
    p.add_argument("--train-size", type=int)
    p.add_argument("--val-size", type=int)
    p.add_argument("--test-size", type=int, help="default: the full 10k test set")
    p.add_argument("--dense-epochs", type=int)
    p.add_argument("--search-steps", type=int)
    p.add_argument("--final-steps", type=int)
    p.add_argument("--lr-ft", type=float, help="fine-tune learning rate (default per arch: "
                   "0.01 SGD for the CNNs, 5e-4 AdamW for the ViT)")
    p.add_argument("--space-resnet", default="resnet")
    p.add_argument("--space-vgg", default="plain")
    p.add_argument("--space-vit", default="vit")
    p.add_argument("--sampler", default="tpe")
    p.add_argument("--screen", type=float, default=4.0)
    p.add_argument("--short-fidelity", type=float, default=0.35)
    p.add_argument("--promote", type=float, default=2.0)
    p.add_argument("--generation", type=int, default=2)
    p.add_argument("--spearman-candidates", type=int)
    p.add_argument("--spearman-arch", default="resnet", choices=[*ARCH_NAMES, "none"],
                   help="arch of the proxy-ranking study (default resnet: the faster arch, so "
                        "both processes end about together)")
    p.add_argument("--spearman-budget", type=float, default=0.2)
    p.add_argument("--spearman-shorts", type=float, nargs="+", metavar="F",
                   help="short fine-tune fidelities the Spearman study ranks by (default: "
                        "--short-fidelity); --seeds 0 runs the study alone")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda: fine-tunes, dense "
                   "training and latency on this device (data stays on the CPU)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods to run (default all four; e.g. only autoprune for an ablation)")
    p.add_argument("--keep-runs", action="store_true", help="keep the search run directories")
    p.add_argument("--rerender", type=Path, metavar="JSON",
                   help="only rewrite the report of a finished run from its JSON (adding the "
                        "engine's FLOPs ratios when the run predates them); other options "
                        "ignored")
    args = p.parse_args(argv)
    if args.rerender is not None:
        return args
    for key, value in PRESETS["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.task == "digits" and "vit" in args.arch:
        p.error("--arch vit needs 28x28 images: use --task fashion-mnist")
    if args.out is None:
        stem = "search_quality" + ("_vit" if "vit" in args.arch else "")
        args.out = Path(__file__).parent / "results" / (
            f"{stem}_quick.md" if args.quick else f"{stem}.md")
    return args


def finetune_recipe(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """The fine-tune optimizer, lr and weight decay of ``arch`` (``--lr-ft`` overrides the lr)."""
    import _quality_data as qd

    spec = qd.ARCHS[arch]
    return {"lr": spec.ft_lr if cfg["lr_ft"] is None else cfg["lr_ft"],
            "optimizer": spec.optimizer, "weight_decay": spec.weight_decay}


# -- one arch (runs in its own process) ----------------------------------------------------------
def _settings(**wanted: Any) -> tuple[Any, list[str]]:
    """SearchSettings with the fields this autoprune has; the names it lacks."""
    from autoprune.settings import SearchSettings

    known = {f.name for f in dataclasses.fields(SearchSettings)}
    return (SearchSettings(**{k: v for k, v in wanted.items() if k in known}),
            sorted(set(wanted) - known))


def _search_plan(method: str, cfg: dict[str, Any], ctx: dict[str, Any], b: float,
                 seed: int) -> tuple[Any, dict[str, Any]]:
    import autoprune as ap
    from autoprune.driver import search
    from autoprune.plan import PruningPlan
    from autoprune.settings import FinetuneSettings

    common = {"seed": seed, "latency": False, "progress": False, "levels": 1,
              "short_fidelity": cfg["short_fidelity"], "promote": cfg["promote"],
              "generation": cfg["generation"]}
    if method == "random":
        settings, missing = _settings(sampler="random", screen=0.0, priors=False, **common)
    else:
        settings, missing = _settings(sampler=cfg["sampler"], screen=cfg["screen"], priors=True,
                                      **common)
    run_dir = Path(tempfile.mkdtemp(prefix=f"sq-{method}-")) / "run"
    start = time.perf_counter()
    try:
        result = search(ctx["dense"], ctx["example"], evaluate=ctx["evaluate"],
                        train_loader=ctx["data"].loader(seed), budget=ap.Budget(flops=b),
                        trials=cfg["trials"], run_dir=run_dir, space=ctx["space"],
                        finetune_settings=FinetuneSettings(steps=cfg["search_steps"],
                                                           bn_batches=20, device=cfg["device"],
                                                           **ctx["ft"]),
                        settings=settings)
    finally:
        if not cfg["keep_runs"]:
            shutil.rmtree(run_dir.parent, ignore_errors=True)
    wall = time.perf_counter() - start
    rows = [{k: getattr(r, k, None) for k in ("trial", "state", "flops_ratio", "proxy_acc",
                                               "short_acc", "val_acc", "fidelity", "seconds",
                                               "baseline")} for r in result.trials]
    full = [r for r in result.trials if r.state == "COMPLETE" and (r.fidelity or 0) >= 1
            and r.val_acc is not None and r.flops_ratio is not None
            and r.flops_ratio <= b + 1e-9]
    info: dict[str, Any] = {"search_s": wall, "trials": rows, "missing_settings": missing,
                            "n_full": len(full), "n_total": len(result.trials)}
    if not full:
        return None, info
    best = max(full, key=lambda r: r.val_acc)
    info.update(chosen_trial=best.trial, chosen_val=best.val_acc, chosen_baseline=best.baseline)
    return PruningPlan.from_dict(best.plan), info


def _choose(method: str, cfg: dict[str, Any], ctx: dict[str, Any], b: float,
            seed: int) -> tuple[Any, dict[str, Any]]:
    import numpy as np

    import autoprune as ap
    from autoprune.plan import FitOptions, PruningPlan, Widths, global_ratios

    start = time.perf_counter()
    an = ctx["analysis"]
    if method == "uniform-l2":
        plan = ap.fit_budget(ctx["dense"], ctx["example"], allocation=1.0, flops=b, caps=CAPS,
                             importance="l2", analysis=an)
    elif method == "global-l2":
        groups, cm = an.groups, an.cost_model
        ratios = global_ratios(an.importance_scores("l2"), Widths.of(cm, groups),
                               b * cm.dense_macs(), FitOptions("macs", np.full(len(groups), CAPS)))
        plan = PruningPlan({g.name: r for g, r in zip(groups, ratios) if r > 0}, "l2")
    else:
        return _search_plan(method, cfg, ctx, b, seed)
    return plan, {"search_s": time.perf_counter() - start}


def _final(plan: Any, cfg: dict[str, Any], ctx: dict[str, Any], seed: int,
           bi: int) -> dict[str, Any]:
    """Prune from the dense weights, fine-tune (same seed and batches for every method), test."""
    import torch

    import autoprune as ap
    from autoprune.pipeline import finetune_model
    from autoprune.settings import FinetuneSettings

    device = cfg["device"]
    pruned = ctx["analysis"].apply(plan).to(device)
    torch.manual_seed(seed * 1000 + bi)
    loader = ctx["data"].loader(seed * 1000 + bi)
    start = time.perf_counter()
    finetune_model(pruned, loader, FinetuneSettings(steps=cfg["final_steps"], device=device,
                                                    **ctx["ft"]), steps=cfg["final_steps"])
    cost = ap.measure(pruned, ctx["example"], device=device, latency=True, repeats=50,
                      warmup=10)
    dense, an = ctx["dense_cost"], ctx["analysis"]
    return {"test_acc": ctx["evaluate"](pruned, "test"), "val_acc": ctx["evaluate"](pruned, "val"),
            "flops_ratio": cost.macs / dense.macs, "params_ratio": cost.params / dense.params,
            "engine_flops_ratio": an.macs(plan) / an.cost_model.dense_macs(),
            "latency_ms": cost.latency_ms, "finetune_s": time.perf_counter() - start,
            "plan": plan.to_dict()}


def _setup_worker(cfg: dict[str, Any], arch: str) -> Callable[[str], None]:
    import logging

    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)

    def log(msg: str) -> None:
        print(f"[{arch} +{time.time() - cfg['t0']:6.0f}s] {msg}", flush=True)

    return log


def run_seed(cfg: dict[str, Any], arch: str, seed: int) -> dict[str, Any]:
    """Every budget and method of one (arch, seed): one work unit of the process pool."""
    import _quality_data as qd

    import autoprune as ap
    from autoprune.engine import analyze

    log = _setup_worker(cfg, arch)
    example = qd.example_input(cfg["task"])
    data = qd.load_data(cfg["data_dir"], seed, cfg["train_size"], cfg["val_size"],
                        cfg["test_size"], cfg["task"])
    dense = qd.train_dense(arch, data, seed, cfg["dense_epochs"], log, cfg["device"])
    dense_cost = ap.measure(dense, example, device=cfg["device"], latency=True, repeats=50,
                            warmup=10)
    dense.cpu()
    evaluate = qd.make_evaluate(data, dense)
    ctx = {"dense": dense, "example": example, "data": data, "evaluate": evaluate,
           "space": cfg[f"space_{arch}"], "analysis": analyze(dense.eval(), example),
           "dense_cost": dense_cost, "ft": finetune_recipe(cfg, arch)}
    out: dict[str, Any] = {"arch": arch, "seed": seed, "sizes": data.sizes(), "runs": [],
                           "dense": {"seed": seed, "test_acc": evaluate(dense, "test"),
                                     "val_acc": evaluate(dense, "val"), "macs": dense_cost.macs,
                                     "engine_macs": ctx["analysis"].cost_model.dense_macs(),
                                     "params": dense_cost.params,
                                     "latency_ms": dense_cost.latency_ms}}
    log(f"seed {seed}: dense test {out['dense']['test_acc']:.4f}")
    for bi, b in enumerate(cfg["budgets"]):
        for method in cfg["methods"]:
            try:
                plan, info = _choose(method, cfg, ctx, b, seed)
            except Exception as exc:  # e.g. a budget under the space's smallest model
                plan, info = None, {"search_s": None, "error": f"{type(exc).__name__}: "
                                                               f"{str(exc)[:300]}"}
            run = {"arch": arch, "seed": seed, "budget": b, "method": method, **info}
            if "error" in info:
                log(f"seed {seed} budget {b}: {method}: {info['error']}")
            elif plan is not None:
                run.update(_final(plan, cfg, ctx, seed, bi))
                log(f"seed {seed} budget {b}: {method:10s} test {run['test_acc']:.4f} "
                    f"flops {run['flops_ratio']:.3f} search {info['search_s']:.0f} s")
            else:
                log(f"seed {seed} budget {b}: {method}: no feasible full-fidelity trial")
            out["runs"].append(run)
    return out


def run_spearman(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """The proxy-ranking study (seed 0 of ``arch``): one work unit of the process pool."""
    import _quality_data as qd

    from autoprune.engine import analyze

    log = _setup_worker(cfg, arch)
    log(f"spearman study: {cfg['spearman_candidates']} random candidates at "
        f"{cfg['spearman_budget']}")
    data = qd.load_data(cfg["data_dir"], 0, cfg["train_size"], cfg["val_size"],
                        cfg["test_size"], cfg["task"])
    dense = qd.train_dense(arch, data, 0, cfg["dense_epochs"], log, cfg["device"])
    example = qd.example_input(cfg["task"])
    ft = finetune_recipe(cfg, arch)
    study = qd.proxy_study(analyze(dense.eval(), example), data, cfg[f"space_{arch}"],
                           cfg["spearman_budget"], cfg["spearman_candidates"], 0,
                           cfg["search_steps"],
                           cfg["spearman_shorts"] or [cfg["short_fidelity"]], ft["lr"], log,
                           cfg["device"], ft["optimizer"], ft["weight_decay"])
    log("spearman study done")
    return {"arch": arch, "spearman": study, "sizes": data.sizes()}


def run_all(cfg: dict[str, Any], jobs: int) -> list[dict[str, Any]]:
    """All (arch, seed) units and the Spearman study over ``jobs`` processes, longest first
    (vgg's units are the slowest), merged back into one result per arch."""
    import _quality_data as qd

    cost = {arch: qd.ARCHS[arch].relative_cost for arch in cfg["arch"]}
    units: list[tuple[Any, ...]] = [(run_seed, cfg, arch, seed) for arch in cfg["arch"]
                                    for seed in range(cfg["seeds"])]
    units.sort(key=lambda u: -cost[u[2]])
    if cfg["spearman_arch"] in cfg["arch"]:
        units.append((run_spearman, cfg, cfg["spearman_arch"]))
    if jobs == 1:
        parts = [fn(*rest) for fn, *rest in units]
    else:
        from _common import die_with_parent

        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                                 initializer=die_with_parent) as pool:
            futures = [pool.submit(fn, *rest) for fn, *rest in units]
            parts = [f.result() for f in futures]
    results = []
    for arch in cfg["arch"]:
        mine = sorted((p for p in parts if p["arch"] == arch and "seed" in p),
                      key=lambda p: p["seed"])
        study = next((p["spearman"] for p in parts if p["arch"] == arch and "spearman" in p),
                     None)
        sizes = next((p["sizes"] for p in [*mine, *parts] if p["arch"] == arch), {})
        results.append({"arch": arch, "widths": list(qd.ARCHS[arch].widths), "sizes": sizes,
                        "dense": [p["dense"] for p in mine],
                        "runs": [r for p in mine for r in p["runs"]], "spearman": study})
    return results


# -- report ---------------------------------------------------------------------------------------
def _versions() -> str:
    import optuna
    import scipy
    import torch
    import torch_pruning

    import autoprune

    return (f"python {platform.python_version()} · torch {torch.__version__} · torch-pruning "
            f"{torch_pruning.__version__} · optuna {optuna.__version__} · scipy "
            f"{scipy.__version__} · autoprune {autoprune.__version__}")


def engine_note(results: list[dict[str, Any]], cfg: dict[str, Any]) -> list[str]:
    """Where ``ap.measure``'s count (the FLOPs % column: torch-pruning's layer counter, without
    the matmuls between tokens) and the engine's (which the budgets are fitted on) differ, the
    engine's ratios of the chosen plans."""
    from _quality_data import mean_std

    lines: list[str] = []
    for res in results:
        d = res["dense"]
        if not d or "engine_macs" not in d[0] or \
                abs(d[0]["engine_macs"] - d[0]["macs"]) <= 1e-3 * d[0]["engine_macs"]:
            continue
        cells = []
        for b in cfg["budgets"]:
            for method in cfg["methods"]:
                ok = [r["engine_flops_ratio"] for r in res["runs"] if r["budget"] == b
                      and r["method"] == method and r.get("engine_flops_ratio") is not None]
                cells.append(f"{b:g} {method} {mean_std(ok, 100, 2)}")
        lines += ["", f"{res['arch']}: FLOPs % above is `ap.measure`'s count "
                  f"({d[0]['macs'] / 1e6:.2f} MMACs dense: torch-pruning's layer counter, without "
                  "the matmuls between tokens); the budgets are fitted on the engine's analytic "
                  f"count ({d[0]['engine_macs'] / 1e6:.2f} MMACs dense, with them), under which "
                  "the chosen plans are at (FLOPs %): " + "; ".join(cells) + "."]
    return lines


def report(results: list[dict[str, Any]], cfg: dict[str, Any], wall: float) -> str:
    from _quality_data import ARCHS, FRACTIONS, curve, mean_std, picked, within_rho

    def per_arch(text: Callable[[str], str]) -> str:
        """One phrase for all archs when they agree, else ``arch: phrase`` for each."""
        phrases = {a: text(a) for a in cfg["arch"]}
        if len(set(phrases.values())) == 1:
            return next(iter(phrases.values()))
        return "; ".join(f"{a}: {t}" for a, t in phrases.items())

    def shape(res: dict[str, Any]) -> str:
        return ARCHS[res["arch"]].shape or f"widths {tuple(res['widths'])}"

    def ft_words(arch: str) -> str:
        ft = finetune_recipe(cfg, arch)
        return (f"{'AdamW' if ft['optimizer'] == 'adamw' else 'SGD'} lr {ft['lr']:g}, "
                f"wd {ft['weight_decay']:g}")

    runs = [r for res in results for r in res["runs"]]
    sizes = results[0].get("sizes", {})
    missing = sorted({m for r in runs for m in r.get("missing_settings", [])})
    lines = [f"# Search quality: {cfg['task']}{' (quick)' if cfg['quick'] else ''}", "",
             f"`{cfg['command']}`", "",
             f"{cfg.get('finished') or f'{datetime.datetime.now():%Y-%m-%d %H:%M}'} · "
             f"{platform.platform()} · "
             f"{platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · "
             f"{_versions()}", "",
             f"(arch, seed) units over {cfg['jobs_used']} processes, 1 torch thread each; "
             f"total wall {wall / 60:.1f} min.", "",
             "## Setup", "",
             f"- data: train {sizes.get('train')} (stratified subset), val {sizes.get('val')} "
             f"(carved from the training images, disjoint), test {sizes.get('test')}; seeds "
             f"0..{cfg['seeds'] - 1}",
             *[f"- {res['arch']}: {shape(res)}, space `{cfg['space_' + res['arch']]}`"
               for res in results],
             f"- dense: {cfg['dense_epochs']} epochs "
             f"{per_arch(lambda a: ARCHS[a].recipe())}, batch 64",
             f"- searches: {cfg['trials']} full-fidelity candidates x {cfg['search_steps']} "
             f"steps ({per_arch(ft_words)}); autoprune: sampler {cfg['sampler']}, screen "
             f"{cfg['screen']:g}, short fidelity {cfg['short_fidelity']:g}, promote "
             f"{cfg['promote']:g}, generation {cfg['generation']}, priors on; random: screen 0, "
             f"priors off",
             f"- final: every chosen plan pruned from the dense weights, {cfg['final_steps']} "
             f"steps ({per_arch(ft_words)}), same seed and batches for every method; test on "
             "the test split",
             "- chosen search candidate: best val acc among COMPLETE full-fidelity trials within "
             "the budget. The searches enqueue their own uniform/global-ranking plans as trials; "
             "those use the space's caps (not 0.95 everywhere), so they can differ from the "
             "uniform-l2/global-l2 rows; 'picked a baseline' counts seeds where one won"]
    if missing:
        lines.append(f"- **SearchSettings here lacks {', '.join(missing)}: those were not "
                     "passed (the searches ran without screening)**")
    lines += ["", "## Dense models", "", "| arch | test acc % | val acc % | MMACs | params k "
              "| CPU latency ms |", "|---|---|---|---|---|---|"]
    for res in results:
        d = res["dense"]
        if not d:  # --seeds 0: the Spearman study alone
            continue
        lines.append(f"| {res['arch']} | {mean_std([x['test_acc'] for x in d])} | "
                     f"{mean_std([x['val_acc'] for x in d])} | {d[0]['macs'] / 1e6:.2f} | "
                     f"{d[0]['params'] / 1e3:.1f} | "
                     f"{mean_std([x['latency_ms'] for x in d], 1, 3)} |")
    lines += ["", "## Test accuracy after the same final fine-tune", "",
              "Mean ± std over seeds; Δ = mean ± std of the per-seed difference to uniform-l2 "
              "(points); latency: batch 1, 1 thread" + (", while the other arch's process "
                                                        "runs" if cfg["jobs_used"] > 1 else "")
              + ".", "",
              "| arch | budget | method | test acc % | Δ vs uniform | FLOPs % | params % | "
              "CPU latency ms | search wall s | picked a baseline |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for b in (cfg["budgets"] if runs else []):
            sel = [r for r in res["runs"] if r["budget"] == b]
            uni = {r["seed"]: r.get("test_acc") for r in sel if r["method"] == "uniform-l2"}
            for method in cfg["methods"]:
                rs = [r for r in sel if r["method"] == method]
                ok = [r for r in rs if r.get("test_acc") is not None]
                diffs = [r["test_acc"] - uni[r["seed"]] for r in ok
                         if uni.get(r["seed"]) is not None]
                won = picked(ok) if method in ("random", "autoprune") else ""
                lines.append(
                    f"| {res['arch']} | {b:g} | {method} | "
                    f"{mean_std([r['test_acc'] for r in ok])} | "
                    f"{mean_std(diffs) if method != 'uniform-l2' else '—'} | "
                    f"{mean_std([r['flops_ratio'] for r in ok], 100, 1)} | "
                    f"{mean_std([r['params_ratio'] for r in ok], 100, 1)} | "
                    f"{mean_std([r['latency_ms'] for r in ok], 1, 3)} | "
                    f"{mean_std([r['search_s'] for r in rs], 1, 1)} | {won} |")
    lines += engine_note(results, cfg)
    errors = sorted({f"{r['arch']} {r['method']} at {r['budget']:g}: {r['error']}"
                     for r in runs if r.get("error")}
                    | {f"{r['arch']} {r['method']} at {r['budget']:g}: no feasible "
                       "full-fidelity trial" for r in runs
                       if not r.get("error") and r.get("test_acc") is None})
    if errors:
        lines += ["", "Runs without a result (n/a above):", "", *[f"- {e}" for e in errors]]
    lines += ["", "## Proxy quality (Spearman rho)", ""]
    for res in results:
        sp = res.get("spearman")
        if sp:
            lines += [f"Random candidates from the `{sp['space']}` space of {res['arch']}, all "
                      f"fitted onto FLOPs {sp['budget']:g} (seed 0; FLOPs spread "
                      f"{sp['flops_min']:.4f}..{sp['flops_max']:.4f}, "
                      f"{(sp['flops_max'] - sp['flops_min']) * 100:.2f} points), ranked by the "
                      f"full search fine-tune ({sp['full_steps']} steps) on val. Each score "
                      "from a fresh prune; BatchNorm re-estimated on 20 training batches first; "
                      "every candidate sees the same batches:", "",
                      "| cheap score | rho vs full fine-tune | n |", "|---|---|---|",
                      f"| adaptive-BN proxy (20 batches) | {sp['rho_proxy']:.3f} | {sp['n']} |",
                      *[f"| fine-tune {k} | {v:.3f} | {sp['n']} |"
                        for k, v in sp["rho_short"].items()], ""]
    searches = [m for m in ("random", "autoprune") if m in cfg["methods"]]
    no_proxy = [res["arch"] for res in results if not any(
        t.get("proxy_acc") is not None for r in res["runs"] for t in r.get("trials", []))
        and any(r.get("trials") for r in res["runs"])]
    lines += ["Inside each search: rho of the proxy (and the short fine-tune, when recorded) vs "
              "the full val acc over its full-fidelity trials, computed per run (arch, budget, "
              "seed) and averaged over seeds; n/a when a run has < 3 such trials"
              + (f" ({', '.join(no_proxy)}: no BatchNorm, so no adaptive-BN proxy score: the "
                 "proxy screen keeps candidates in sampling order, and the short fine-tune does "
                 "the screening)" if no_proxy else "") + ".", "",
              "| arch | budget | method | rho proxy | rho short |", "|---|---|---|---|---|"]
    for res in results:
        for b in (cfg["budgets"] if runs else []):
            for method in searches:
                rs = [r for r in res["runs"] if r["budget"] == b and r["method"] == method]
                lines.append(f"| {res['arch']} | {b:g} | {method} | "
                             f"{mean_std([within_rho(r, 'proxy_acc') for r in rs], 1, 3)} | "
                             f"{mean_std([within_rho(r, 'short_acc') for r in rs], 1, 3)} |")
    lines += ["", "## Best-so-far validation accuracy", "",
              "Best full-fidelity val acc % after the given share of the full-fidelity trials "
              "(in trial-number order), mean over seeds.", "",
              "| arch | budget | method | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |",
              "|---|---|---|" + "---|" * len(FRACTIONS)]
    for res in results:
        for b in (cfg["budgets"] if runs else []):
            for method in searches:
                curves = [curve(r) for r in res["runs"]
                          if r["budget"] == b and r["method"] == method]
                cells = [mean_std([c[i] for c in curves if c[i] is not None], 100, 2).split(" ±")[0]
                         for i in range(len(FRACTIONS))]
                lines.append(f"| {res['arch']} | {b:g} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def engine_ratios(results: list[dict[str, Any]], task: str) -> None:
    """Fill in the engine's FLOPs ratio (the count the budgets are fitted on) of every tested
    plan and the engine's dense MACs, where a saved run lacks them (the counts depend on the
    architecture only, not on the weights)."""
    import _quality_data as qd

    from autoprune.engine import analyze
    from autoprune.plan import PruningPlan

    for res in results:
        todo = [r for r in res["runs"] if r.get("plan") and "engine_flops_ratio" not in r]
        if not todo and all("engine_macs" in d for d in res["dense"]):
            continue
        an = analyze(qd.ARCHS[res["arch"]].build().eval(), qd.example_input(task))
        dense = an.cost_model.dense_macs()
        for d in res["dense"]:
            d.setdefault("engine_macs", dense)
        for r in todo:
            r["engine_flops_ratio"] = an.macs(PruningPlan.from_dict(r["plan"])) / dense


def rerender(path: Path) -> None:
    """Rewrite ``path``'s report (and the JSON, with the engine ratios) from the saved run."""
    raw = json.loads(path.read_text())
    cfg = raw["config"]
    cfg.setdefault("finished", datetime.datetime.fromtimestamp(path.stat().st_mtime)
                   .strftime("%Y-%m-%d %H:%M"))
    engine_ratios(raw["results"], cfg["task"])
    text = report(raw["results"], cfg, raw["wall_s"])
    path.with_suffix(".md").write_text(text)
    path.write_text(json.dumps(raw, indent=1, default=str))
    print(f"rewritten {path.with_suffix('.md')} and {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rerender is not None:
        rerender(args.rerender)
        return
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cfg["t0"] = time.time()
    cfg["command"] = "python " + shlex.join(["benchmarks/search_quality.py", *sys.argv[1:]])
    jobs = max(1, args.jobs)
    cfg["jobs_used"] = jobs
    print(f"search quality: archs {args.arch}, budgets {args.budgets}, seeds {args.seeds}, "
          f"trials {args.trials}, {jobs} process(es)", flush=True)
    if jobs == 1:
        import torch

        torch.set_num_threads(1)
    results = run_all(cfg, jobs)
    wall = time.time() - cfg["t0"]
    cfg["finished"] = f"{datetime.datetime.now():%Y-%m-%d %H:%M}"
    text = report(results, cfg, wall)
    print("\n" + text, flush=True)
    from _common import save_report

    save_report(Path(args.out), text, {"config": {k: v for k, v in cfg.items() if k != "t0"},
                                       "wall_s": wall, "results": results})
    print(f"total wall {wall:.0f} s", flush=True)


if __name__ == "__main__":
    main()

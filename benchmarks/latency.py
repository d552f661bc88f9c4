"""Latency where models ship: eager PyTorch vs ONNX Runtime, with and without channel rounding.

For each model (the README's default digits ResNet-8, torchvision ResNet-18 and MobileNetV2 at
64 px, random weights: latency does not depend on them) the dense model and uniform-L2 plans at a
few FLOPs budgets, fitted with ``round_to`` None and 8 (the fit lands on the budget either way),
are timed in each runtime at each batch size, and so are the front members of digits searches
given with ``--runs``, as searched. Timing is ``ap.latency.time_alternating``, the routine of a
search's final re-timing: each variant is prepared once (exported and opened in an ONNX Runtime
session), then rounds of 10 timed samples each (``torch.utils.benchmark`` on CPU, CUDA events on
a GPU) alternate the variants, so load drifts hit all of them alike; the table gives the median
and robust CV (IQR / 1.349 / median) of the pooled samples and the speed-up over dense in the
same runtime. One torch (and ONNX Runtime) thread.

    python benchmarks/latency.py [--models digits resnet18 mobilenet_v2] [--budgets 0.5 0.3]
        [--batches 1 64] [--rounds 5] [--runtimes eager onnxruntime]
        [--runs results/RUN ...] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, environment

import autoprune as ap
from autoprune.latency import LatencyTarget, time_alternating
from autoprune.latency.guard import robust_cv


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model (eval) and a one-image example input."""
    if name == "digits":
        from autoprune.tasks import load_task

        task = load_task("digits")
        return task.dense_model().eval(), task.example_inputs()
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    return model, torch.randn(1, 3, 64, 64)


def variants(model: torch.nn.Module, x: torch.Tensor,
             budgets: list[float]) -> dict[str, tuple[torch.nn.Module, float, str]]:
    """label -> (pruned model, FLOPs ratio, kept widths of the first groups)."""
    analysis = ap.analyze(model, x)
    dense = analysis.cost_model.dense_macs()
    out = {"dense": (model, 1.0, _widths(analysis, None))}
    for b in budgets:
        for round_to in (None, 8):
            plan = ap.fit_budget(model, x, 1.0, flops=b, round_to=round_to, analysis=analysis)
            label = f"uniform {b:g}" + (f" round_to={round_to}" if round_to else "")
            out[label] = (analysis.apply(plan), analysis.macs(plan) / dense,
                          _widths(analysis, plan))
    return out


def searched(run_dir: Path) -> tuple[str, dict[str, tuple[torch.nn.Module, float, str]]]:
    """A digits search's dense model and front members (their plans on the task's dense
    weights; latency does not depend on the weights): (name, label -> variant)."""
    from autoprune.results import RunDir

    run = RunDir.open(run_dir)
    model, x = build("digits")
    analysis = ap.analyze(model, x)
    dense = analysis.cost_model.dense_macs()
    out = {"dense": (model, 1.0, _widths(analysis, None))}
    for row in run.read_front():
        plan = ap.PruningPlan.from_dict(run.read_plan(int(row["trial"])))
        label = f"front trial {row['trial']}" + \
            (f" round_to={plan.round_to}" if plan.round_to else "")
        out[label] = (analysis.apply(plan), analysis.macs(plan) / dense, _widths(analysis, plan))
    return f"digits search {run_dir.name}", out


def _widths(analysis: Any, plan: Any) -> str:
    kept = analysis.kept(plan) if plan is not None else [g.channels for g in analysis.groups]
    shown = "/".join(str(k) for k in kept[:9])
    return shown + ("/…" if len(kept) > 9 else "")


def time_rounds(models: dict[str, torch.nn.Module], x: torch.Tensor, runtime: str,
                batch: int, rounds: int, device: str) -> dict[str, tuple[float, float]]:
    """Per label, the median and IQR (ms) from ``ap.latency.time_alternating``: every model
    prepared once, then rounds that alternate the labels (the search's final re-timing)."""
    return time_alternating(models, x, LatencyTarget(device, batch, runtime=runtime), rounds)


def run_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    if name.startswith("run:"):
        name, found = searched(Path(name[4:]))
        x = build("digits")[1]
    else:
        model, x = build(name)
        found = variants(model, x, args.budgets)
    pruned = {label: v[0] for label, v in found.items()}
    rows = []
    for runtime in args.runtimes:
        for batch in args.batches:
            start = time.perf_counter()
            times = time_rounds(pruned, x, runtime, batch, args.rounds, args.device)
            dense = times["dense"][0]
            for label, (_, flops, widths) in found.items():
                ms, iqr = times[label]
                rows.append({"model": name, "variant": label, "runtime": runtime,
                             "batch": batch, "flops_ratio": flops, "widths": widths,
                             "latency_ms": ms, "iqr_ms": iqr, "cv": robust_cv(ms, iqr),
                             "device": args.device, "speedup": dense / ms})
            print(f"{name} {runtime} batch {batch}: {time.perf_counter() - start:.0f} s",
                  flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | variant | kept widths (first groups) | FLOPs % | runtime | batch | "
             "latency ms (median) | CV | speed-up vs dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = " **slower than dense**" if r["speedup"] < 1.0 and r["variant"] != "dense" else ""
        lines.append(f"| {r['model']} | {r['variant']} | {r['widths']} | "
                     f"{100 * r['flops_ratio']:.1f} | {r['runtime']} | {r['batch']} | "
                     f"{r['latency_ms']:.3f} | {r['cv']:.3f} | {r['speedup']:.2f}x{flag} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits", "resnet18", "mobilenet_v2"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runtimes", nargs="+", default=["eager", "onnxruntime"],
                   choices=["eager", "compile", "onnxruntime"])
    p.add_argument("--device", default="cpu", help="cpu, or cuda (eager / compile; CUDA events)")
    p.add_argument("--runs", nargs="*", type=Path, default=[],
                   help="digits search run directories: time their front members too")
    p.add_argument("--out", type=Path, default=RESULTS / "latency.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    names = [*args.models, *(f"run:{r}" for r in args.runs)]
    rows = [row for name in names for row in run_model(name, args)]
    text = (f"# Latency by runtime: eager PyTorch vs ONNX Runtime, channel rounding\n\n"
            f"`{command}`\n\n{environment()} · total {time.perf_counter() - start:.0f} s\n\n"
            f"{__doc__.split(chr(10) + chr(10))[1]}\n\n{table(rows)}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows},
                                                        indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()

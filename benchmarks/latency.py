"""Latency where models ship: eager PyTorch vs ONNX Runtime, with and without channel rounding.

For each model (the README's default digits ResNet-8, torchvision ResNet-18 and MobileNetV2 at
64 px, random weights: latency does not depend on them) the dense model and uniform-L2 plans at a
few FLOPs budgets, fitted with ``round_to`` None and 8 (the fit lands on the budget either way),
are timed in each runtime at each batch size. Each variant is prepared once (exported and opened
in an ONNX Runtime session), then timed once per round (``torch.utils.benchmark``
``blocked_autorange``, >= 0.2 s) with the rounds alternating the variants, so load drifts hit
all of them alike; the table gives the median over rounds and the speed-up over dense in the same
runtime. One torch (and ONNX Runtime) thread.

    python benchmarks/latency.py [--models digits resnet18 mobilenet_v2] [--budgets 0.5 0.3]
        [--batches 1 64] [--rounds 5] [--runtimes eager onnxruntime]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, environment

import autoprune as ap
from autoprune.latency.runtimes import prepare


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


def _widths(analysis: Any, plan: Any) -> str:
    kept = analysis.kept(plan) if plan is not None else [g.channels for g in analysis.groups]
    shown = "/".join(str(k) for k in kept[:9])
    return shown + ("/…" if len(kept) > 9 else "")


def time_rounds(models: dict[str, torch.nn.Module], x: torch.Tensor, runtime: str,
                batch: int, rounds: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per label, one latency (ms, ``blocked_autorange`` median) per round, the rounds
    alternating the labels; and each label's preparation seconds (compile / export, once)."""
    xb = x.repeat(batch, *[1] * (x.dim() - 1))
    times: dict[str, list[float]] = {label: [] for label in models}
    with torch.inference_mode():
        prepared = {label: prepare(m.eval(), xb, runtime) for label, m in models.items()}
        for r in range(rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for label in order:
                timer = benchmark.Timer(stmt="run()", globals={"run": prepared[label].run},
                                        num_threads=1)
                times[label].append(timer.blocked_autorange(min_run_time=0.2).median * 1e3)
    return times, {label: p.prepare_s for label, p in prepared.items()}


def run_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    model, x = build(name)
    found = variants(model, x, args.budgets)
    pruned = {label: v[0] for label, v in found.items()}
    rows = []
    for runtime in args.runtimes:
        for batch in args.batches:
            start = time.perf_counter()
            times, prep = time_rounds(pruned, x, runtime, batch, args.rounds)
            dense = statistics.median(times["dense"])
            for label, (_, flops, widths) in found.items():
                ms = statistics.median(times[label])
                rows.append({"model": name, "variant": label, "runtime": runtime,
                             "batch": batch, "flops_ratio": flops, "widths": widths,
                             "latency_ms": ms, "rounds_ms": times[label],
                             "prepare_s": prep[label],
                             "speedup": dense / ms})
            print(f"{name} {runtime} batch {batch}: {time.perf_counter() - start:.0f} s",
                  flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | variant | kept widths (first groups) | FLOPs % | runtime | batch | "
             "latency ms (median of rounds) | speed-up vs dense |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = " **slower than dense**" if r["speedup"] < 1.0 and r["variant"] != "dense" else ""
        lines.append(f"| {r['model']} | {r['variant']} | {r['widths']} | "
                     f"{100 * r['flops_ratio']:.1f} | {r['runtime']} | {r['batch']} | "
                     f"{r['latency_ms']:.3f} | {r['speedup']:.2f}x{flag} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits", "resnet18", "mobilenet_v2"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runtimes", nargs="+", default=["eager", "onnxruntime"],
                   choices=["eager", "compile", "onnxruntime"])
    p.add_argument("--out", type=Path, default=RESULTS / "latency.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    rows = [row for name in args.models for row in run_model(name, args)]
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

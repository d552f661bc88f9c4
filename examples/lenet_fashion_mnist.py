"""The classic pruning workflow on LeNet-5 / Fashion-MNIST, every row measured the same way.

dense training -> unstructured weight pruning (gradual, 80 %) -> channel/filter pruning (an
autoprune search at <= 40 % FLOPs) -> int8 quantization of the channel-pruned model; each
retrained, each row with test accuracy, params, FLOPs, size on disk and CPU latency. The table is
printed and written to examples/results/lenet_fashion_mnist.md.

    apt-get install -y dataset-fashion-mnist   # the data (or --data-dir FOLDER)
    python examples/lenet_fashion_mnist.py [--dense-epochs 12] [--trials 10]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import io
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark

import autoprune as ap
from autoprune.tasks import FashionMNISTTask, TaskOptions

RESULTS = Path(__file__).resolve().parent / "results"


def retrain(model: nn.Module, loader, epochs: float, lr: float = 1e-3, mask=None) -> None:
    """Plain AdamW epochs; a weight mask re-zeroes pruned weights after every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, round(epochs * len(loader)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if mask is not None:
                mask.apply(model)
            done += 1
            if done >= steps:
                break
    model.eval()


def state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def latency_ms(model: nn.Module, x: torch.Tensor) -> float:
    timer = benchmark.Timer("m(x)", globals={"m": model, "x": x},
                            num_threads=torch.get_num_threads())
    with torch.inference_mode():
        return timer.blocked_autorange(min_run_time=0.5).median * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--dense-epochs", type=int, default=12)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--retrain-epochs", type=float, default=8.0,
                        help="retraining after weight pruning (spread over 4 phases) and after "
                             "channel pruning")
    parser.add_argument("--subset", type=int, default=None, help="quick runs: training images")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (LeNet is too small to gain from more; on a busy "
                             "machine extra threads spin and slow it ~10x)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # training progress
    start = time.perf_counter()
    torch.manual_seed(0)
    task = FashionMNISTTask(args.data_dir, model="lenet", subset=args.subset,
                            options=TaskOptions(epochs=args.dense_epochs))
    splits = task.splits()
    dense = task.dense_model()  # trained once (AdamW, cosine), then cached
    x = task.example_inputs()
    batch = torch.cat([splits.test.dataset[i][0].unsqueeze(0) for i in range(64)])
    dense_cost = ap.measure(dense, x, latency=False)
    rows = []

    def row(name: str, model: nn.Module, macs: float, params: float, size: int) -> float:
        acc = task.evaluate(model, "test")
        rows.append((name, acc, params, 2 * macs, size, latency_ms(model, batch)))
        print(f"{name}: test {acc:.2%}")
        return acc

    dense_acc = row("dense LeNet-5", dense, dense_cost.macs, dense_cost.params,
                    state_bytes(dense))

    # 1. unstructured weight pruning: cubic schedule to 80 %, retraining between steps
    sparse = copy.deepcopy(dense)
    for sparsity in ap.sparsity_schedule(0.8, 4):
        mask = ap.prune_weights(sparse, sparsity, scope="global")
        retrain(sparse, splits.train, args.retrain_epochs / 4, mask=mask)
    size = ap.sparse_size(sparse)
    row(f"weights {size.sparsity:.0%} sparse (dense kernels: no speed-up)", sparse,
        dense_cost.macs, size.nonzeros, size.compressed_bytes)

    # 2. channel/filter pruning: an autoprune search at <= 40 % FLOPs, then retraining
    with tempfile.TemporaryDirectory() as tmp:
        result = ap.search(
            dense, x, evaluate=task.evaluate, train_loader=splits.train,
            budget=ap.Budget(flops=0.4), trials=args.trials, run_dir=Path(tmp) / "run",
            finetune_settings=ap.FinetuneSettings(epochs=1, lr=1e-3, optimizer="adamw",
                                                  weight_decay=1e-4),
            settings=ap.SearchSettings(progress=True, latency=False))
        best = max(result.front, key=lambda t: t.val_acc or 0.0)  # selected on validation
        channels = ap.apply_plan(dense, x, ap.PruningPlan.from_dict(best.plan))
        channels.load_state_dict(torch.load(Path(tmp) / "run" / "models" /
                                            f"trial_{best.trial}.pt", weights_only=True))
    retrain(channels, splits.train, args.retrain_epochs)
    cost = ap.measure(channels, x, latency=False)
    float_acc = row(f"channels pruned to {cost.macs / dense_cost.macs:.0%} FLOPs (trial "
                    f"{best.trial})", channels, cost.macs, cost.params, state_bytes(channels))

    # 3. int8 post-training quantization of the channel-pruned model
    from autoprune.deploy.quantize import quantize, save_program

    quantized = quantize(channels, x, "int8", calibration=splits.train)
    with tempfile.TemporaryDirectory() as tmp:  # both programs in the same file format
        q_size = quantized.save(Path(tmp) / "int8.pt2").stat().st_size
        float_program = save_program(channels, x, Path(tmp) / "float.pt2").stat().st_size
    int8_acc = row("channels pruned + int8", quantized.module, cost.macs, cost.params, q_size)

    minutes = (time.perf_counter() - start) / 60
    table = ["| model | test acc | params (nonzero) | FLOPs | size on disk | CPU latency, "
             f"batch 64, {args.threads} thread(s) |", "|---|---|---|---|---|---|"]
    for name, acc, params, flops, size_b, lat in rows:
        table.append(f"| {name} | {acc:.2%} | {params:,.0f} | {flops / 1e6:.3f} M | "
                     f"{size_b / 1024:.1f} KiB | {lat:.2f} ms |")
    checks = [
        f"dense >= 89 %: {dense_acc:.2%}",
        f"80 % weight sparsity within 1 point of dense: {rows[1][1] - dense_acc:+.2%}",
        f"<= 40 % FLOPs within 1.5 points of dense: {float_acc - dense_acc:+.2%}",
        f"int8 within 0.5 point of its float parent: {int8_acc - float_acc:+.2%}; file "
        f"{q_size / float_program:.2f}x the float model saved the same way (torch.export "
        f"program), {q_size / rows[2][4]:.2f}x its state_dict",
    ]
    text = "\n".join(table) + "\n\n" + "\n".join(f"- {c}" for c in checks)
    print("\n" + text + f"\n\nwall time {minutes:.1f} min")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lenet_fashion_mnist.md").write_text(
        f"# LeNet-5 on Fashion-MNIST\n\n`python examples/lenet_fashion_mnist.py "
        f"--dense-epochs {args.dense_epochs} --trials {args.trials}`\n\n"
        f"{datetime.date.today()} · {platform.machine()} · torch {torch.__version__} · "
        f"{torch.get_num_threads()} threads · wall time {minutes:.1f} min\n\n{text}\n")


if __name__ == "__main__":
    main()

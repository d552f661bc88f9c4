"""Your loop trains each candidate; autoprune proposes them and keeps the front: ``ap.Session``.

    python examples/ask_tell_session.py [--candidates 8]
"""

from __future__ import annotations

import argparse

import torch
from _digits import SmallCNN, accuracy, loaders, train

import autoprune as ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--out", default="results/example-session")
    args = parser.parse_args()
    torch.manual_seed(0)
    train_loader, val_loader, test_loader = loaders()
    model = SmallCNN()
    train(model, train_loader, steps=300)

    session = ap.Session(
        model, torch.zeros(1, 1, 8, 8), budget=ap.Budget(flops=0.3), run_dir=args.out,
        train_loader=train_loader,
        evaluate=lambda m, split="val": accuracy(m, val_loader if split == "val" else test_loader))
    for cand in session.candidates(args.candidates):
        for epoch in range(3):  # your own training loop, unchanged
            train(cand.model, train_loader, steps=20, lr=0.02)
            acc = accuracy(cand.model, val_loader)
            cand.report(acc, epoch)
            if cand.should_stop():  # below the median of finished candidates: stop early
                break
        cand.finish(accuracy=acc)
        print(f"candidate {cand.number}: {cand.flops_ratio:.1%} FLOPs, val {acc:.2%}"
              f"{' (stopped early)' if cand.stopped else ''}")
    run_dir = session.write_report()
    print(f"\nreport: {run_dir}/report.html")


if __name__ == "__main__":
    main()

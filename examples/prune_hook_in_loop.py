"""Prune inside your training loop, gradually, with your optimizer kept valid: ``ap.PruneHook``.

    python examples/prune_hook_in_loop.py
"""

from __future__ import annotations

import torch
from _digits import SmallCNN, accuracy, loaders, train

import autoprune as ap


def main() -> None:
    torch.manual_seed(0)
    train_loader, val_loader, test_loader = loaders()
    model = SmallCNN()
    example = torch.zeros(1, 1, 8, 8)
    plan = ap.fit_budget(model, example, 1.0, flops=0.3)  # uniform plan at 30 % of the FLOPs
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # prune a third of the way at steps 150, 200 and 250, then keep training to 400
    hook = ap.PruneHook(model, example, plan, optimizer=optimizer, at_steps=[150, 200, 250])
    train(model, train_loader, steps=400, optimizer=optimizer, on_step=hook.on_step_end)
    for event in hook.history:
        print(f"step {event['step']}: pruned to {event['flops_ratio']:.1%} of the dense FLOPs")
    cost = ap.measure(model, example)
    print(f"final: {cost.macs / 1e6:.3f} MMACs, {cost.params / 1e3:.1f} k params, "
          f"val {accuracy(model, val_loader):.2%}, test {accuracy(model, test_loader):.2%}")


if __name__ == "__main__":
    main()

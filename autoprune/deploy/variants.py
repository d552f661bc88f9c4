"""Deployment variants of an exported candidate: weight-pruned (hybrid) and quantized.

Structured pruning removes channels; these two classics act on what remains. Both are measured
the way the search measures candidates: test accuracy on the task's test split, parameters,
bytes on disk, CPU latency. Zeroed weights do not speed up dense kernels (the metrics say so);
eager int8 dequantizes and is usually slower on CPU than float (measured, not assumed).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.errors import ConfigError

if TYPE_CHECKING:
    from autoprune.deploy.formats import Inputs

__all__ = ["RETRAIN_LR", "RETRAIN_PHASES", "check_sparsity", "quantized_variant", "sparse_metrics",
           "weight_pruned"]

log = logging.getLogger(__name__)

#: Pruning steps of the cubic schedule of :func:`weight_pruned`, and the retraining AdamW's lr.
RETRAIN_PHASES = 4
RETRAIN_LR = 1e-3


def check_sparsity(sparsity: float) -> None:
    if not (math.isfinite(sparsity) and 0.0 <= sparsity < 1.0):
        raise ConfigError(f"--sparsity {sparsity} must be in [0, 1): the fraction of the "
                          "remaining weights set to zero, e.g. 0.8")


def weight_pruned(model: nn.Module, sparsity: float, loader: Iterable[Any],
                  epochs: float) -> dict[str, Any]:
    """Prune ``model``'s weights in place to ``sparsity`` on a cubic schedule of
    :data:`RETRAIN_PHASES`, retraining ``epochs`` in total between the phases (AdamW at
    :data:`RETRAIN_LR`, masked); returns the size metrics."""
    from autoprune.deploy.weights import prune_weights, sparsity_schedule
    from autoprune.pipeline import finetune_model
    from autoprune.settings import FinetuneSettings

    check_sparsity(sparsity)
    phases = RETRAIN_PHASES
    steps_total = max(phases, round(epochs * len(loader)))  # type: ignore[arg-type]
    settings = FinetuneSettings(steps=steps_total // phases, lr=RETRAIN_LR, optimizer="adamw",
                                weight_decay=1e-4, bn_batches=0)
    for target in sparsity_schedule(sparsity, phases):
        mask = prune_weights(model, target, scope="global")
        mask.attach(model)  # zero gradients: with AdamW the pruned weights stay exactly zero
        finetune_model(model, loader, settings)
        mask.detach()
    return {**sparse_metrics(model), "retrain_steps": steps_total}


def sparse_metrics(model: nn.Module) -> dict[str, Any]:
    """True sparsity and sizes on disk (dense vs sparse storage), measured."""
    from autoprune.deploy.weights import sparse_size

    size = sparse_size(model)
    return {"sparsity": size.sparsity, "nonzeros": size.nonzeros,
            "dense_bytes": size.dense_bytes, "compressed_bytes": size.compressed_bytes,
            "note": "zeroed weights: smaller file, no speed-up on dense kernels"}


def quantized_variant(model: nn.Module, mode: str, path: Path, task: Any,
                      inputs: Inputs) -> dict[str, Any]:
    """Quantize a copy of ``model`` (calibrated on ``task``'s train split), save it to ``path``
    and measure it: ``task``'s test accuracy, file bytes, CPU latency on ``inputs.batch[0]``."""
    from torch.utils import benchmark

    from autoprune.deploy.quantize import quantize

    quantized = quantize(copy.deepcopy(model).eval(), inputs.example, mode,
                         calibration=task.splits().train)
    quantized.save(path)
    batch = inputs.batch[0]
    timer = benchmark.Timer("m(x)", globals={"m": quantized.module, "x": batch},
                            num_threads=torch.get_num_threads())
    with torch.inference_mode():
        latency = timer.blocked_autorange(min_run_time=0.3).median * 1000
    return {"mode": mode, "file": path.name, "file_bytes": path.stat().st_size,
            "test_acc": float(task.evaluate(quantized.module, "test")),
            "latency_ms": latency, "latency_batch": int(batch.shape[0]),
            "note": "eager CPU execution; compile with torch.compile for int8 kernels"}

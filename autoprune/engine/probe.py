"""Probing groups before a search: a group is kept only if pruning it is safe and costed exactly.

One probe prunes a deep copy with every candidate group losing a different share of its channels,
runs it, and compares what the counters see with the analytic cost model: torch-pruning's counter
must match exactly (the same tolerance as the zoo test), and where attention heads are pruned the
*change* in ``FlopCounterMode``'s matmuls must match too (matmuls the cost model does not model,
such as a functional projection, are constant and cancel). When the probe fails, halves are
probed until the offending groups are found; they are frozen with the reason and the rest is
probed again. A clean model costs one probe.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.engine.costmodel import CostModel
from autoprune.engine.count import count_macs_params, count_matmul_macs
from autoprune.engine.groups import CoupledGroup, FrozenGroup
from autoprune.engine.inputs import call_model
from autoprune.engine.prune import Ranking, prune_groups
from autoprune.errors import UnsupportedModelError
from autoprune.interrupts import raise_if_pressed

__all__ = ["TOLERANCE", "ProbeLimits", "probe_groups", "probe_kept"]

TOLERANCE = 0.005  # relative: counted vs analytic


def probe_kept(groups: Sequence[CoupledGroup]) -> list[int]:
    """Kept channels per group for a probe: a different share (about 1/4 to 1/2) removed from
    each, in whole channel groups, at least one channel group kept."""
    kept = []
    for i, g in enumerate(groups):
        q = max(1, g.channel_groups)
        share = 0.25 + 0.25 * ((i * 0.618034) % 1.0)
        remove = max(q, round(g.channels * share / q) * q)
        kept.append(g.channels - remove if g.channels - remove >= q else g.channels)
    return kept


def _output_shapes(out: Any) -> Any:
    """The shapes of a forward's tensors (nested tuples, lists, dicts, model-output objects)."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(_output_shapes(o) for o in out)
    if hasattr(out, "items"):
        return {k: _output_shapes(v) for k, v in out.items()}
    return None


def _off(counted: float, analytic: float) -> bool:
    return abs(counted - analytic) > TOLERANCE * max(abs(analytic), 1.0)


@dataclass
class _Prober:
    model: nn.Module
    example_inputs: Any
    groups: Sequence[CoupledGroup]
    cost_model: CostModel
    dense_shapes: Any
    dense_matmul: float | None
    deadline: float = float("inf")

    def kept(self, subset: Sequence[int]) -> np.ndarray:
        kept = self.cost_model.group_channels.copy()
        probe = probe_kept(self.groups)
        for i in subset:
            kept[i] = probe[i]
        return kept

    def check(self, subset: Sequence[int]) -> str | None:
        """Why pruning ``subset`` (group indices) together is unsafe, or None."""
        if time.monotonic() > self.deadline:
            raise UnsupportedModelError(
                f"checking which of {type(self.model).__name__}'s {len(self.groups)} groups "
                "prune safely took longer than 4 x trace_timeout; raise it (ap.analyze(..., "
                "trace_timeout=...)) or `ignore=` the blocks `autoprune inspect` cannot group")
        kept = self.kept(subset)
        targets = [(self.groups[i], int(kept[i])) for i in subset
                   if kept[i] < self.groups[i].channels]
        if not targets:
            return None
        try:
            pruned = prune_groups(copy.deepcopy(self.model), self.example_inputs, targets,
                                  Ranking("l2"))
            with torch.no_grad():
                shapes = _output_shapes(call_model(pruned.eval(), self.example_inputs))
            macs, params = count_macs_params(pruned, self.example_inputs)
        except Exception as exc:  # any failure (ours or torch-pruning's) freezes the group
            raise_if_pressed(exc)  # unless it was a Ctrl-C that torch swallowed
            text = str(exc).strip().splitlines()
            return f"the pruned copy fails ({type(exc).__name__}: {text[0][:140] if text else ''})"
        if shapes != self.dense_shapes:
            return f"the pruned copy's output shape changes ({shapes} vs {self.dense_shapes})"
        cm = self.cost_model
        if _off(macs, cm.counter_macs(kept)):
            return f"counted MACs {macs:.4g} != analytic {cm.counter_macs(kept):.4g}"
        if _off(params, cm.params(kept)):
            return f"counted params {params:.4g} != analytic {cm.params(kept):.4g}"
        if self.dense_matmul is not None:
            dense = cm.matmul_macs(cm.group_channels)
            removed = self.dense_matmul - count_matmul_macs(pruned, self.example_inputs)
            if _off(removed, dense - cm.matmul_macs(kept)):
                return (f"attention matmuls: {removed:.4g} MACs removed, analytic "
                        f"{dense - cm.matmul_macs(kept):.4g}")
        return None

    def offenders(self, subset: list[int]) -> list[tuple[int, str]]:
        reason = self.check(subset)
        if reason is None:
            return []
        if len(subset) == 1:
            return [(subset[0], reason)]
        half = len(subset) // 2
        found = self.offenders(subset[:half]) + self.offenders(subset[half:])
        if found:
            return found
        return [(i, f"fails only together with other groups: {reason}") for i in subset]


@dataclass(frozen=True)
class ProbeLimits:
    """``check_matmuls``: also compare the matmuls ``FlopCounterMode`` sees removed with the
    analytic ones (attention heads, or matmuls outside layer calls that must stay constant).
    Probing past ``deadline`` (``time.monotonic()``) raises :class:`UnsupportedModelError`."""

    check_matmuls: bool = False
    deadline: float = float("inf")


def probe_groups(model: nn.Module, example_inputs: Any, groups: Sequence[CoupledGroup],
                 cost_model: CostModel, limits: ProbeLimits = ProbeLimits(),
                 ) -> list[FrozenGroup]:
    """The groups that cannot be pruned safely (with the reason); the others passed together."""
    check_matmuls, deadline = limits.check_matmuls, limits.deadline
    was = model.training
    with torch.no_grad():
        dense_shapes = _output_shapes(call_model(model.eval(), example_inputs))
    model.train(was)
    dense_matmul = count_matmul_macs(model, example_inputs) if check_matmuls else None
    prober = _Prober(model, example_inputs, groups, cost_model, dense_shapes, dense_matmul,
                     deadline)
    frozen: dict[int, str] = {}
    rest = list(range(len(groups)))
    while rest:
        found = prober.offenders(rest)
        if not found:
            break
        frozen.update(found)
        rest = [i for i in rest if i not in frozen]
    return [FrozenGroup(groups[i].name, reason) for i, reason in sorted(frozen.items())]

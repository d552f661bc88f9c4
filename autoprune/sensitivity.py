"""Per-group sensitivity analysis: how much validation accuracy each coupled group costs when it
alone is pruned, and the relative allocation that spares the sensitive groups.

The classic recipe (Li et al., "Pruning Filters for Efficient ConvNets", 2017), with EagleEye's
adaptive BatchNorm: each group pruned alone at one ratio, BatchNorm re-estimated on a few
training batches, the validation drop measured. On MobileNetV2 (``benchmarks/search_regime.py
--sensitivity``) the groups coupled through residual adds lose 7-11 points pruned alone at 0.5,
the expansion layers 0.5-2 and the last conv nothing; the plan weighted by these drops beat the
latency-matched uniform plan by +0.9 / +2.1 points at 0.5 / 0.3 of the dense latency, which is
why a latency-bound search starts from it (``--sensitivity``).

:func:`group_drops` runs the measurement through a scoring callable (the search's adaptive-BN
proxy); :func:`group_savings` prices the same one-group plans on a cost (MACs, a latency
table's prediction); :func:`sensitivity_allocation` is pure maths.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping

from autoprune.plan import PruningPlan

__all__ = ["RATIO", "group_drops", "group_savings", "sensitivity_allocation"]

log = logging.getLogger(__name__)
RATIO = 0.5  # the ratio every group is pruned at alone


def group_drops(groups: Iterable[str], score: Callable[[PruningPlan], float],
                importance: str = "l2", ratio: float = RATIO,
                progress: bool = False) -> dict[str, float]:
    """Per group of ``groups``: the score lost (>= 0) when that group alone is pruned at
    ``ratio`` by ``importance``; ``score(plan)`` prunes the dense model by ``plan``,
    re-estimates BatchNorm and scores it on validation (the reference is the empty plan,
    scored alike). A score that is not a number (nothing to re-estimate, no evaluator) stops
    the analysis with a ValueError."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio {ratio} must be in (0, 1)")
    from tqdm.auto import tqdm

    names = list(groups)
    start = time.perf_counter()
    base = _checked(score(PruningPlan({}, importance)), "the dense model")
    drops: dict[str, float] = {}
    for name in tqdm(names, desc="sensitivity", unit="group", disable=not progress,
                     leave=False):
        value = _checked(score(PruningPlan({name: ratio}, importance)), name)
        drops[name] = max(0.0, base - value)
    log.info("sensitivity of %d groups in %.0f s: %s", len(names),
             time.perf_counter() - start,
             ", ".join(f"{n} {d * 100:.1f}" for n, d in sorted(drops.items(),
                                                              key=lambda kv: -kv[1])[:5]))
    return drops


def _checked(value: float, what: str) -> float:
    if value != value:  # NaN: no BatchNorm to re-estimate, or no validation score
        raise ValueError(f"no validation score for {what}: the sensitivity analysis needs an "
                         "evaluate() and training batches to re-estimate BatchNorm")
    return float(value)


def group_savings(groups: Iterable[str], cost: Callable[[PruningPlan], float],
                  importance: str = "l2", ratio: float = RATIO) -> dict[str, float]:
    """Per group of ``groups``: the cost saved (>= 0) when that group alone is pruned at
    ``ratio``, ``cost(plan)`` being the pruned model's MACs, parameters or predicted
    latency (the reference is the empty plan)."""
    base = cost(PruningPlan({}, importance))
    return {name: max(0.0, base - cost(PruningPlan({name: ratio}, importance)))
            for name in groups}


def sensitivity_allocation(drops: Mapping[str, float], floor: float = 1e-3,
                           savings: Mapping[str, float] | None = None) -> dict[str, float]:
    """Relative per-group ratios from :func:`group_drops`'s drops: ``1 / (drop + tau)`` with
    ``tau`` the median drop (at least ``floor``), so a group that loses nothing is pruned about
    twice as hard as a median one and one that loses much far less; scaled to a largest value
    of 1. With ``savings`` (:func:`group_savings`, same groups), ``saving / (drop + tau)``:
    accuracy lost per cost saved, the first-order answer to "lose least for the budget" (a
    drop quadratic in the ratio, a saving linear in it), so a group that saves little is
    pruned little however insensitive. Measured worse than without on MobileNetV2's latency
    cells (``search_regime.py``'s ``sensitivity-cost``: -1.0 / -0.2 point at 0.3 / 0.5, one
    seed), so the search's baseline does not use it. Pure."""
    if floor <= 0:
        raise ValueError(f"floor {floor} must be > 0")
    if savings is not None and set(savings) != set(drops):
        raise ValueError(f"savings name groups {sorted(set(savings) ^ set(drops))} that the "
                         "drops do not (or the other way round): give both for the same groups")
    tau = max(statistics.median(drops.values()), floor) if drops else floor
    weights = {name: (1.0 if savings is None else max(savings[name], 0.0)) / (max(d, 0.0) + tau)
               for name, d in drops.items()}
    top = max(weights.values(), default=1.0) or 1.0
    return {name: w / top for name, w in weights.items()}

"""Pruning plans, budgets, and projecting a relative allocation onto a budget.

Pure maths and plain data: no torch_pruning, no optuna. A plan maps group *names* (strings) to
ratios, so it serializes, replays and pickles. :func:`fit_allocation` is the heart of
"feasible by construction": FLOPs and params are known before any training, so a relative
allocation is scaled (bisection on the analytic cost model, then a greedy fill that knows about
channel rounding) to land at most on the budget and within ``tol`` of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from autoprune.errors import BudgetError, ConfigError

if TYPE_CHECKING:
    from autoprune.cost import CostModel

__all__ = ["IMPORTANCES", "Budget", "PruningPlan", "fit_allocation",
           "fit_allocation_lifting_caps", "fit_budget",
           "global_ratios", "kept_channels"]

IMPORTANCES = ("l1", "l2", "bn", "taylor", "random")


@dataclass(frozen=True)
class PruningPlan:
    """``{group name: ratio}`` plus the importance criterion and channel rounding.

    A ratio ``r`` keeps ``round(C * (1 - r))`` of a group's ``C`` channels (at least one quantum;
    with ``round_to`` the kept count is rounded to a multiple of it). Groups not named keep all
    their channels.
    """

    ratios: Mapping[str, float] = field(default_factory=dict)
    importance: str = "l2"
    round_to: int | None = None

    def __post_init__(self) -> None:
        for name, ratio in self.ratios.items():
            if not isinstance(name, str):
                raise ConfigError(f"plan key {name!r} must be a group name (str), not a module")
            if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0 \
                    or math.isnan(float(ratio)):
                raise ConfigError(
                    f"ratio for group {name!r} is {ratio!r}; a ratio is the fraction of channels "
                    "removed and must be in [0, 1)"
                )
        if self.importance not in IMPORTANCES:
            raise ConfigError(
                f"importance={self.importance!r} is unknown; use one of {', '.join(IMPORTANCES)}"
            )
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise ConfigError(f"round_to={self.round_to!r} must be a positive int or None")
        object.__setattr__(self, "ratios", {k: float(v) for k, v in self.ratios.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": dict(self.ratios), "importance": self.importance,
                "round_to": self.round_to}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        unknown = set(data) - {"ratios", "importance", "round_to"}
        if unknown:
            raise ConfigError(f"plan has unknown keys {sorted(unknown)}; expected ratios, "
                              "importance, round_to")
        return cls(dict(data.get("ratios", {})), data.get("importance", "l2"),
                   data.get("round_to"))

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"plan is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("plan JSON must be an object with a 'ratios' mapping")
        return cls.from_dict(data)


@dataclass(frozen=True)
class Budget:
    """Fractions of the dense model: ``flops=0.4`` keeps at most 40 % of the dense FLOPs."""

    flops: float | None = None
    params: float | None = None
    latency: float | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("flops", "params", "latency"):
            value = getattr(self, name)
            if value is not None and not (0.0 < float(value) <= 1.0):
                raise BudgetError(
                    f"budget {name}={value!r} must be a fraction of the dense model in (0, 1]; "
                    f"e.g. {name}=0.4 keeps at most 40 % of the dense {name}"
                )
        if self.latency is not None and self.latency_ms is not None:
            raise BudgetError("give either latency (a fraction) or latency_ms, not both")
        if self.latency_ms is not None and not float(self.latency_ms) > 0:
            raise BudgetError(f"budget latency_ms={self.latency_ms!r} must be > 0 milliseconds")

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, n) is None for n in ("flops", "params", "latency", "latency_ms"))


def kept_channels(channels: int, ratio: float, round_to: int | None = None,
                  quantum: int = 1) -> int:
    """Channels kept of ``channels`` at ``ratio`` (in multiples of ``quantum``, >= one quantum)."""
    if ratio <= 0.0:
        return channels
    per = channels // quantum  # channels per channel-group (grouped convs)
    kept = min(per, max(1, math.floor(per * (1.0 - ratio) + 0.5)))
    if round_to:
        step = round_to // math.gcd(round_to, quantum)
        if per >= step:
            kept = max(step, round(kept / step) * step)
            if kept > per:
                kept -= step
    return kept * quantum


def _ratio_for(channels: int, kept: int) -> float:
    return 1.0 - kept / channels


def fit_allocation(
    cost_model: CostModel,
    channels: list[int],
    quanta: list[int],
    allocation: np.ndarray,
    target: float,
    metric: str = "macs",
    caps: np.ndarray | None = None,
    round_to: int | None = None,
    tol: float = 0.01,
) -> list[int]:
    """Kept channels per group so that ``metric`` is <= ``target`` and within ``tol`` of it.

    Ratios are ``min(s * allocation, cap)``; ``s`` is bisected so the cost lands at or just under
    ``target``, then single quanta are given back greedily (largest cost that still fits) to close
    the gap that channel rounding leaves.
    """
    cost = cost_model.macs if metric == "macs" else cost_model.params
    alloc = np.clip(np.asarray(allocation, dtype=float), 0.0, None)
    caps_arr = np.full(len(channels), 0.95) if caps is None else np.asarray(caps, dtype=float)
    if not alloc.any():
        raise BudgetError("allocation is all zeros: at least one group must be prunable")

    def kept_at(s: float) -> list[int]:
        ratios = np.minimum(s * alloc, caps_arr)
        return [kept_channels(c, float(r), round_to, q)
                for c, r, q in zip(channels, ratios, quanta)]

    s_hi = float(np.max(caps_arr[alloc > 0] / alloc[alloc > 0]))
    floor_kept = kept_at(s_hi)
    dense = cost(channels)
    if cost(floor_kept) > target:
        smallest = cost(floor_kept) / dense
        raise BudgetError(
            f"budget {metric}={target / dense:.4f} of dense is below the smallest reachable model "
            f"({smallest:.4f} of dense with these group caps and allocation); raise the budget "
            f"to at least {math.ceil(smallest * 1000) / 1000:.3f} or raise the caps"
        )
    if dense <= target:
        return list(channels)
    lo, hi = 0.0, s_hi
    for _ in range(60):  # smallest s whose cost fits
        mid = (lo + hi) / 2
        if cost(kept_at(mid)) <= target:
            hi = mid
        else:
            lo = mid
    kept = kept_at(hi)
    return _greedy_fill(cost, kept, channels, quanta, round_to, target, tol)


def fit_allocation_lifting_caps(
    cost_model: CostModel,
    channels: list[int],
    quanta: list[int],
    allocation: np.ndarray,
    target: float,
    metric: str = "macs",
    caps: np.ndarray | None = None,
    round_to: int | None = None,
) -> list[int]:
    """:func:`fit_allocation`, with the caps (which keep layers from being pruned to slivers)
    lifted halfway, then all the way, toward 0.95 only when the budget is out of their reach."""
    caps_arr = np.full(len(channels), 0.95) if caps is None else np.asarray(caps, dtype=float)
    for lift in (0.0, 0.5):
        try:
            return fit_allocation(cost_model, channels, quanta, allocation, target, metric,
                                  caps_arr + lift * np.maximum(0.95 - caps_arr, 0.0), round_to)
        except BudgetError:
            continue
    return fit_allocation(cost_model, channels, quanta, allocation, target, metric,
                          np.maximum(caps_arr, 0.95), round_to)


def _greedy_fill(cost: Any, kept: list[int], channels: list[int],
                 quanta: list[int], round_to: int | None, target: float, tol: float) -> list[int]:
    """Give back one step of channels at a time while the cost stays <= target."""
    kept = list(kept)
    for _ in range(4 * len(kept) + 64):
        current = cost(kept)
        if current >= target * (1.0 - tol / 4):
            break
        best, best_cost = None, -1.0
        for g, (c, q) in enumerate(zip(channels, quanta)):
            step = q * (round_to // math.gcd(round_to, q) if round_to else 1)
            if kept[g] >= c or kept[g] + step > c:
                continue
            trial = kept.copy()
            trial[g] += step
            value = cost(trial)
            if best_cost < value <= target:
                best, best_cost = g, value
        if best is None:
            break
        kept[best] += quanta[best] * (round_to // math.gcd(round_to, quanta[best])
                                      if round_to else 1)
    return kept


def global_ratios(scores: list[np.ndarray], channels: list[int], quanta: list[int],
                  cost_model: CostModel, target: float, metric: str = "macs",
                  caps: np.ndarray | None = None) -> list[float]:
    """Per-group ratios from one global importance threshold that lands on ``target``.

    torch-pruning's global ranking: every channel below the threshold goes, whatever its layer,
    bounded by each group's cap. ``scores[g]`` has one entry per channel (per channel group for
    grouped convs). Bisects the threshold on the analytic cost.
    """
    cost = cost_model.macs if metric == "macs" else cost_model.params
    caps_arr = np.full(len(scores), 0.95) if caps is None else np.asarray(caps, dtype=float)
    sorted_scores = [np.sort(s) for s in scores]

    def ratios_at(t: float) -> list[float]:
        return [min(float(np.searchsorted(s, t)) / len(s), float(c))
                for s, c in zip(sorted_scores, caps_arr)]

    def kept_at(t: float) -> list[int]:
        return [kept_channels(c, r, None, q) for c, r, q in zip(channels, ratios_at(t), quanta)]

    lo, hi = 0.0, float(max(s[-1] for s in sorted_scores)) + 1.0
    if cost(kept_at(hi)) > target:
        raise BudgetError(f"global ranking cannot reach {metric} {target:.4g} within the caps")
    for _ in range(60):
        mid = (lo + hi) / 2
        if cost(kept_at(mid)) <= target:
            hi = mid
        else:
            lo = mid
    return ratios_at(hi)


def fit_budget(model: Any, example_inputs: Any, allocation: Mapping[str, float] | float = 1.0,
               flops: float | None = None, params: float | None = None,
               caps: Mapping[str, float] | float = 0.95, importance: str = "l2",
               round_to: int | None = None, ignore: Any = None, tol: float = 0.01,
               analysis: Any = None) -> PruningPlan:
    """Scale a relative per-group ``allocation`` so the pruned model lands on the budget.

    ``allocation`` maps group names to relative weights (a float = the same for all: uniform);
    groups it omits are not pruned. ``flops=0.4`` keeps at most 40 % of the dense FLOPs and lands
    within ``tol`` (relative) of it. ``caps`` bound each group's ratio. Raises
    :class:`~autoprune.errors.BudgetError` if the budget is below the smallest reachable model.
    Pass ``analysis`` (from :func:`autoprune.graph.analyze`) to skip re-tracing.
    """
    if (flops is None) == (params is None):
        raise BudgetError("fit_budget needs exactly one of flops=... or params=...")
    Budget(flops=flops, params=params)  # validates the range
    PruningPlan({}, importance, round_to)  # validates importance and round_to
    if analysis is None:
        from autoprune.graph import analyze

        analysis = analyze(model, example_inputs, ignore=ignore)
    groups = analysis.groups
    names = [g.name for g in groups]
    if isinstance(allocation, Mapping):
        analysis.check_plan(PruningPlan({k: 0.0 for k in allocation}))
        alloc = np.array([float(allocation.get(n, 0.0)) for n in names])
    else:
        alloc = np.full(len(names), float(allocation))
    if isinstance(caps, Mapping):
        analysis.check_plan(PruningPlan({k: 0.0 for k in caps}))
        cap_arr = np.array([float(caps.get(n, 0.95)) for n in names])
    else:
        cap_arr = np.full(len(names), float(caps))
    if not np.all((cap_arr >= 0) & (cap_arr < 1)):
        raise ConfigError(f"caps must be in [0, 1); got {caps!r}")
    cm = analysis.cost_model
    metric = "macs" if flops is not None else "params"
    fraction = float(flops if flops is not None else params)  # type: ignore[arg-type]
    dense = cm.dense_macs() if metric == "macs" else cm.dense_params()
    channels = [g.channels for g in groups]
    kept = fit_allocation(cm, channels, [g.quantum for g in groups], alloc, fraction * dense,
                          metric, cap_arr, round_to, tol)
    ratios = {n: _ratio_for(c, k) for n, c, k in zip(names, channels, kept) if k < c}
    return PruningPlan(ratios, importance, round_to)

"""Pruning plans, budgets, and projecting a relative allocation onto a budget.

Pure maths and plain data: no torch, no torch_pruning, no optuna, and no import of the engine
(:func:`fit_plan` takes an analysed model; :func:`autoprune.engine.fit_budget` traces). A plan
maps group *names* (strings) to ratios, so it serializes, replays and pickles.
:func:`fit_allocation` is the heart of "feasible by construction": FLOPs and params are known
before any training, so a relative allocation is scaled (bisection on the analytic cost model,
then a greedy fill that knows about channel rounding) to land at most on the budget and within
``tol`` of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from autoprune.errors import BudgetError, ConfigError

if TYPE_CHECKING:
    from autoprune.engine.analysis import PrunableModel
    from autoprune.engine.costmodel import CostModel

__all__ = ["DEFAULT_BUDGET", "FIT_DEFAULTS", "IMPORTANCES", "Budget", "FitOptions", "FitRequest",
           "Metric", "PruningPlan", "Widths", "fit_allocation", "fit_allocation_lifting_caps",
           "fit_plan", "global_ratios", "kept_channels"]

IMPORTANCES = ("l1", "l2", "bn", "taylor", "random")
Metric = Literal["macs", "params"]  # the analytic costs a budget is fitted on


@dataclass(frozen=True)
class PruningPlan:
    """``{group name: ratio}`` plus the importance criterion and channel rounding, and the
    residual blocks removed whole.

    A ratio ``r`` keeps ``round(C * (1 - r))`` of a group's ``C`` channels (at least one quantum;
    with ``round_to`` the kept count is rounded to a multiple of it). Groups not named keep all
    their channels. ``drop`` names blocks (``named_modules()`` names) that become the identity
    before any channel goes; ratios of groups inside them do not apply.
    """

    ratios: Mapping[str, float] = field(default_factory=dict)
    importance: str = "l2"
    round_to: int | None = None
    drop: tuple[str, ...] = ()

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
        if isinstance(self.drop, str) or not all(isinstance(n, str) and n for n in self.drop):
            raise ConfigError(f"drop={self.drop!r} must be a list of block names (str), e.g. "
                              "['features.3']")
        object.__setattr__(self, "ratios", {k: float(v) for k, v in self.ratios.items()})
        object.__setattr__(self, "drop", tuple(sorted(set(self.drop))))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ratios": dict(self.ratios), "importance": self.importance,
                                "round_to": self.round_to}
        if self.drop:  # plans that remove no block serialise as before
            data["drop"] = list(self.drop)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        unknown = set(data) - {"ratios", "importance", "round_to", "drop"}
        if unknown:
            raise ConfigError(f"plan has unknown keys {sorted(unknown)}; expected ratios, "
                              "importance, round_to, drop")
        return cls(dict(data.get("ratios", {})), data.get("importance", "l2"),
                   data.get("round_to"), tuple(data.get("drop") or ()))

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


#: The budget when none is given (CLI, ``ap.search``, ``Session``): at most 40 % of the FLOPs.
DEFAULT_BUDGET = Budget(flops=0.4)


def round_step(round_to: int, quantum: int = 1, unit_width: int = 1) -> int:
    """Kept units per channel group come in multiples of this, so that the layer width (kept x
    ``quantum`` x ``unit_width`` channels) is a multiple of ``round_to``."""
    return round_to // math.gcd(round_to, quantum * unit_width)


def kept_channels(channels: int, ratio: float, round_to: int | None = None,
                  quantum: int = 1, unit_width: int = 1) -> int:
    """Channels kept of ``channels`` at ``ratio`` (in multiples of ``quantum``, >= one quantum).

    ``unit_width``: layer channels per counted unit (a head's width for a group of heads), so
    ``round_to`` rounds the width the layers get, not the head count."""
    if ratio <= 0.0:
        return channels
    per = channels // quantum  # channels per channel-group (grouped convs)
    kept = min(per, max(1, math.floor(per * (1.0 - ratio) + 0.5)))
    if round_to:
        step = round_step(round_to, quantum, unit_width)
        if per >= step:
            kept = max(step, round(kept / step) * step)
            if kept > per:
                kept -= step
    return kept * quantum


def _ratio_for(channels: int, kept: int) -> float:
    return 1.0 - kept / channels


class _Sized(Protocol):
    """What :meth:`Widths.of` reads of a group (an engine ``Group`` has both)."""

    @property
    def channels(self) -> int: ...

    @property
    def quantum(self) -> int: ...


@dataclass(frozen=True)
class Widths:
    """The channels a fit works on: each group's width and quantum (in group order) and the
    analytic cost model that prices a list of kept channels, one entry per group.
    ``unit_widths`` (default all 1): layer channels per counted unit, e.g. a head's width."""

    cost_model: CostModel
    channels: tuple[int, ...]
    quanta: tuple[int, ...]
    unit_widths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.quanta):
            raise ConfigError(f"Widths has {len(self.channels)} channel counts but "
                              f"{len(self.quanta)} quanta; give one quantum per group")
        if self.unit_widths and len(self.unit_widths) != len(self.channels):
            raise ConfigError(f"Widths has {len(self.channels)} channel counts but "
                              f"{len(self.unit_widths)} unit widths; give one per group")

    @property
    def units(self) -> tuple[int, ...]:
        return self.unit_widths or (1,) * len(self.channels)

    @classmethod
    def of(cls, cost_model: CostModel, groups: Iterable[_Sized]) -> Widths:
        """The widths of ``groups`` (e.g. an analysed model's ``groups``) under ``cost_model``."""
        groups = list(groups)
        units = tuple(int(getattr(g, "unit_width", 1)) for g in groups)
        return cls(cost_model, tuple(g.channels for g in groups),
                   tuple(g.quantum for g in groups), units if set(units) - {1} else ())

    def cost(self, metric: Metric) -> Callable[[Sequence[int]], float]:
        """The analytic ``metric`` (MACs or params) of a list of kept channels."""
        return self.cost_model.macs if metric == "macs" else self.cost_model.params


@dataclass(frozen=True)
class FitOptions:
    """How :func:`fit_allocation` fits: the ``metric`` the target is in, per-group ``caps`` on the
    ratio (None: 0.95 each), channel rounding ``round_to``, and the relative gap ``tol`` it
    closes below the target."""

    metric: Metric = "macs"
    caps: Sequence[float] | np.ndarray | None = None
    round_to: int | None = None
    tol: float = 0.01

    def __post_init__(self) -> None:
        if self.metric not in ("macs", "params"):
            raise ConfigError(f"metric={self.metric!r} cannot be fitted analytically; use "
                              "'macs' or 'params'")
        if self.caps is not None:  # a tuple: the record stays a comparable value
            object.__setattr__(self, "caps", tuple(float(c) for c in np.ravel(self.caps)))

    def caps_for(self, groups: int) -> np.ndarray:
        """The caps as an array, 0.95 for every one of ``groups`` groups when none are given."""
        return np.full(groups, 0.95) if self.caps is None else np.asarray(self.caps, dtype=float)


FIT_DEFAULTS = FitOptions()


def fit_allocation(widths: Widths, allocation: np.ndarray, target: float,
                   options: FitOptions = FIT_DEFAULTS) -> list[int]:
    """Kept channels per group so that ``options.metric`` is <= ``target`` and within
    ``options.tol`` of it.

    Ratios are ``min(s * allocation, cap)``; ``s`` is bisected so the cost lands at or just under
    ``target``, then single quanta are given back greedily (largest cost that still fits) to close
    the gap that channel rounding leaves.
    """
    channels, quanta, round_to = widths.channels, widths.quanta, options.round_to
    cost = widths.cost(options.metric)
    alloc = np.clip(np.asarray(allocation, dtype=float), 0.0, None)
    caps_arr = options.caps_for(len(channels))
    if not alloc.any():
        raise BudgetError("allocation is all zeros: at least one group must be prunable")

    def kept_at(s: float) -> list[int]:
        ratios = np.minimum(s * alloc, caps_arr)
        return [kept_channels(c, float(r), round_to, q, w)
                for c, r, q, w in zip(channels, ratios, quanta, widths.units)]

    s_hi = float(np.max(caps_arr[alloc > 0] / alloc[alloc > 0]))
    floor_kept = kept_at(s_hi)
    dense = cost(channels)
    if cost(floor_kept) > target:
        smallest = cost(floor_kept) / dense
        raise BudgetError(
            f"budget {options.metric}={target / dense:.4f} of dense is below the smallest "
            f"reachable model ({smallest:.4f} of dense with these group caps and allocation); "
            f"raise the budget to at least {math.ceil(smallest * 1000) / 1000:.3f} or raise the "
            "caps"
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
    return _greedy_fill(cost, kept, _steps(widths, round_to), target, options.tol)


def fit_allocation_lifting_caps(widths: Widths, allocation: np.ndarray, target: float,
                                options: FitOptions = FIT_DEFAULTS) -> list[int]:
    """:func:`fit_allocation`, with the caps (which keep layers from being pruned to slivers)
    lifted halfway, then all the way, toward 0.95 only when the budget is out of their reach."""
    caps_arr = options.caps_for(len(widths.channels))
    for lift in (0.0, 0.5):
        lifted = caps_arr + lift * np.maximum(0.95 - caps_arr, 0.0)
        try:
            return fit_allocation(widths, allocation, target, replace(options, caps=lifted))
        except BudgetError:
            continue
    return fit_allocation(widths, allocation, target,
                          replace(options, caps=np.maximum(caps_arr, 0.95)))


def _steps(widths: Widths, round_to: int | None) -> list[tuple[int, int]]:
    """``(channels, channels given back per step)`` per group: a quantum, rounded to round_to."""
    return [(c, q * (round_step(round_to, q, w) if round_to else 1))
            for c, q, w in zip(widths.channels, widths.quanta, widths.units)]


def _greedy_fill(cost: Callable[[Sequence[int]], float], kept: list[int],
                 steps: list[tuple[int, int]], target: float, tol: float) -> list[int]:
    """Give back one step of channels at a time while the cost stays <= target."""
    kept = list(kept)
    for _ in range(4 * len(kept) + 64):
        current = cost(kept)
        if current >= target * (1.0 - tol / 4):
            break
        best, best_cost = None, -1.0
        for g, (c, step) in enumerate(steps):
            if kept[g] >= c or kept[g] + step > c:
                continue
            trial = kept.copy()
            trial[g] += step
            value = cost(trial)
            if best_cost < value <= target:
                best, best_cost = g, value
        if best is None:
            break
        kept[best] += steps[best][1]
    return kept


def global_ratios(scores: list[np.ndarray], widths: Widths, target: float,
                  options: FitOptions = FIT_DEFAULTS) -> list[float]:
    """Per-group ratios from one global importance threshold that lands on ``target``.

    torch-pruning's global ranking: every channel below the threshold goes, whatever its layer,
    bounded by each group's cap (``options.caps``; None: 0.95 each). ``scores[g]`` has one entry
    per channel (per channel group for grouped convs). Bisects the threshold on the analytic
    ``options.metric``; channels are not rounded unless ``options.round_to`` (> 1) is given:
    then the threshold is bisected on the rounded widths and the gap rounding leaves is closed
    one rounding step at a time (to within ``options.tol``), as :func:`fit_allocation` does.
    """
    metric, round_to = options.metric, options.round_to
    cost = widths.cost(metric)
    caps_arr = options.caps_for(len(scores))
    sorted_scores = [np.sort(s) for s in scores]

    def ratios_at(t: float) -> list[float]:
        return [min(float(np.searchsorted(s, t)) / len(s), float(c))
                for s, c in zip(sorted_scores, caps_arr)]

    def kept_at(t: float) -> list[int]:
        return [kept_channels(c, r, round_to, q, w)
                for c, r, q, w in zip(widths.channels, ratios_at(t), widths.quanta,
                                      widths.units)]

    lo, hi = 0.0, float(max(s[-1] for s in sorted_scores)) + 1.0
    if cost(kept_at(hi)) > target:
        raise BudgetError(f"global ranking cannot reach {metric} {target:.4g} within the caps")
    for _ in range(60):
        mid = (lo + hi) / 2
        if cost(kept_at(mid)) <= target:
            hi = mid
        else:
            lo = mid
    if not round_to or round_to == 1:  # one threshold, exactly
        return ratios_at(hi)
    kept = _greedy_fill(cost, kept_at(hi), _steps(widths, round_to), target, options.tol)
    return [_ratio_for(c, k) for c, k in zip(widths.channels, kept)]


@dataclass(frozen=True)
class FitRequest:
    """What :func:`fit_plan` fits: a relative allocation scaled onto one FLOPs or params budget.

    ``allocation`` and ``caps`` are one float for every group or ``{group name: value}`` (groups
    an allocation mapping omits are not pruned; groups a caps mapping omits get 0.95).
    """

    allocation: Mapping[str, float] | float = 1.0
    flops: float | None = None
    params: float | None = None
    caps: Mapping[str, float] | float = 0.95
    importance: str = "l2"
    round_to: int | None = None
    tol: float = 0.01

    def __post_init__(self) -> None:
        if (self.flops is None) == (self.params is None):
            raise BudgetError("fit_budget needs exactly one of flops=... or params=...")
        Budget(flops=self.flops, params=self.params)  # validates the range
        PruningPlan({}, self.importance, self.round_to)  # validates importance and round_to

    @property
    def metric(self) -> Metric:
        return "macs" if self.flops is not None else "params"

    @property
    def fraction(self) -> float:
        value = self.flops if self.flops is not None else self.params
        return float(value or 0.0)  # one of the two is set (checked above)


def _per_group(analysis: PrunableModel, value: Mapping[str, float] | float,
               default: float) -> np.ndarray:
    """One value per group (in ``analysis.groups`` order); mapping keys must name groups."""
    names = [g.name for g in analysis.groups]
    if isinstance(value, Mapping):
        analysis.check_plan(PruningPlan({k: 0.0 for k in value}))
        return np.array([float(value.get(n, default)) for n in names])
    return np.full(len(names), float(value))


def fit_plan(analysis: PrunableModel, request: FitRequest) -> PruningPlan:
    """The plan that scales ``request.allocation`` onto its budget for an analysed model.

    Pure: ``analysis`` (from :func:`autoprune.engine.analyze`) supplies the groups and the
    analytic cost model; :func:`autoprune.engine.fit_budget` is the tracing front door.
    """
    groups = analysis.groups
    alloc = _per_group(analysis, request.allocation, 0.0)
    cap_arr = _per_group(analysis, request.caps, 0.95)
    if not np.all((cap_arr >= 0) & (cap_arr < 1)):
        raise ConfigError(f"caps must be in [0, 1); got {request.caps!r}")
    cm = analysis.cost_model
    widths = Widths.of(cm, groups)
    dense = cm.dense_macs() if request.metric == "macs" else cm.dense_params()
    options = FitOptions(request.metric, cap_arr, request.round_to, request.tol)
    kept = fit_allocation(widths, alloc, request.fraction * dense, options)
    ratios = {g.name: _ratio_for(c, k) for g, c, k in zip(groups, widths.channels, kept) if k < c}
    return PruningPlan(ratios, request.importance, request.round_to)

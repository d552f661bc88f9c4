"""A latency model: a plan's latency predicted from per-layer lookup tables, no model built.

As in NetAdapt and AMC, each conv/linear layer is timed once, standalone (its kernel, stride,
padding, groups and input size), at a grid of (in, out) widths on the target device and runtime;
identical layer configurations are timed once. A plan's latency is the sum of its layers'
bilinearly interpolated entries plus the rest of the network (norms, activations, pools, call
overhead) as ``a + b x activations`` (the elements the layers write), calibrated on measured
models: exactly on the dense one, by least squares on uniformly pruned ones.
:class:`LatencyTable` is plain data (JSON, keyed by shape signature, device, runtime, batch and
dtype) and predicts without torch; :func:`fit_latency` scales an allocation onto a latency target
on the predicted latency, as :func:`~autoprune.plan.fit_allocation` does on FLOPs. Pure numpy:
:mod:`autoprune.latency.layer_table` measures the tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

import numpy as np

from autoprune.engine.costmodel import CostModel
from autoprune.errors import BudgetError, ConfigError
from autoprune.plan import FitOptions, PruningPlan, Widths, fit_allocation, kept_channels

__all__ = ["LatencyTable", "LayerLut", "fit_latency"]

_FORMAT = 1


@dataclass(frozen=True)
class LayerLut:
    """One layer configuration's table: ``ms[i, o]`` (ms) at ``in_grid[i]`` x ``out_grid[o]``
    channels (``in_grid == (0,)``: depthwise). ``odd``: the table timed one channel narrower on
    the input (depthwise: channels) axis, where widths off multiples of ``align`` run slower."""

    config: Mapping[str, Any]
    in_grid: tuple[int, ...]
    out_grid: tuple[int, ...]
    ms: np.ndarray
    odd: np.ndarray | None = None
    align: int = 0

    def predict(self, kin: float, kout: float) -> float:
        """Bilinear interpolation (linear extrapolation below the smallest width timed)."""
        m, dw = self.ms, self.in_grid == (0,)
        if self.odd is not None and round(kout if dw else kin) % self.align:
            m, kin, kout = self.odd, kin + (not dw), kout + dw  # odd[i] was timed at grid - 1
        i, ti = _cell(self.in_grid, kin)
        o, to = _cell(self.out_grid, kout)
        i1, o1 = min(i + 1, m.shape[0] - 1), min(o + 1, m.shape[1] - 1)
        value = ((1 - ti) * (1 - to) * m[i, o] + ti * (1 - to) * m[i1, o]
                 + (1 - ti) * to * m[i, o1] + ti * to * m[i1, o1])
        return max(float(value), 0.0)


def _cell(grid: Sequence[int], value: float) -> tuple[int, float]:
    """The grid cell ``value`` falls in and its position in it (< 0 below the grid)."""
    if len(grid) == 1:  # an axis the plan never changes
        return 0, 0.0
    i = int(np.clip(np.searchsorted(grid, value) - 1, 0, len(grid) - 2))
    return i, (value - grid[i]) / (grid[i + 1] - grid[i])


@dataclass(frozen=True)
class LatencyTable:
    """Predicted latency (ms) of any plan of one analysed model on one device and runtime:
    ``dense``/``removal`` give each dim's channels (as :meth:`CostModel.sizes`); ``layers`` rows
    are ``(lut, in dim, out dim)``; the rest costs ``rest[0] + rest[1] x`` activations
    ``+ rest[2] x`` layers that run (0 for tables built before blocks could be removed: a layer
    timed alone carries a call overhead it does not have in the model, which only matters once
    a plan removes layers)."""

    key: Mapping[str, Any]
    group_names: tuple[str, ...]
    group_channels: tuple[int, ...]
    quanta: tuple[int, ...]
    unit_widths: tuple[int, ...]
    dense: np.ndarray
    removal: np.ndarray
    layers: np.ndarray
    positions: np.ndarray
    luts: tuple[LayerLut, ...]
    layer_names: tuple[str, ...]
    rest: tuple[float, ...]
    dense_ms: float
    info: Mapping[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()  # blocks removed in every prediction (:meth:`without`)

    def without(self, drop: Sequence[str]) -> LatencyTable:
        """This table predicting with the blocks ``drop`` removed (and fitting plans that
        remove them: :func:`fit_latency`)."""
        return replace(self, drop=tuple(sorted(set(drop))))

    def sizes(self, kept: Sequence[float] | np.ndarray) -> np.ndarray:
        """Each dim's channels with ``kept`` root channels per group."""
        kept_arr = np.asarray(kept, dtype=np.float64)
        if kept_arr.shape != (len(self.group_channels),):
            raise ConfigError(f"kept has {kept_arr.size} entries but the table has "
                              f"{len(self.group_channels)} groups; pass one count per group")
        removed = np.asarray(self.group_channels, dtype=np.float64) - kept_arr
        return self.dense - self.removal @ removed if self.removal.size else self.dense

    def layer_widths(self, kept: Sequence[float] | np.ndarray) -> np.ndarray:
        """``(in, out)`` channels of each layer (``layer_names`` order) with ``kept``."""
        sizes = self.sizes(kept)
        out = sizes[self.layers[:, 2]]
        return np.stack([np.where(self.layers[:, 1] >= 0, sizes[self.layers[:, 1]], out), out], 1)

    def layer_ms(self, kept: Sequence[float] | np.ndarray) -> np.ndarray:
        """Each layer's predicted latency (ms) with ``kept`` root channels per group."""
        return np.array([self.luts[int(t)].predict(i, o)
                         for t, (i, o) in zip(self.layers[:, 0], self.layer_widths(kept))])

    def live(self, drop: Sequence[str] = ()) -> np.ndarray:
        """Which layers (``layer_names`` order) run once the blocks ``drop`` are removed."""
        return np.array([not any(n == d or n.startswith(d + ".") for d in drop)
                         for n in self.layer_names], dtype=bool)

    def activations(self, kept: Sequence[float] | np.ndarray,
                    live: np.ndarray | None = None) -> float:
        """Millions of elements the (``live``) layers write (what the rest scales with)."""
        written = self.positions * self.layer_widths(kept)[:, 1]
        return float(np.sum(written if live is None else written[live])) / 1e6

    def predict_kept(self, kept: Sequence[float] | np.ndarray,
                     live: np.ndarray | None = None) -> float:
        """Predicted latency (ms) with ``kept`` root channels per group (in group order), only
        the ``live`` layers running (default: those :attr:`drop` leaves).

        The rest of the network (``a + b x activations``) is extrapolated down to narrower
        models but never below ``min(0, its dense value)``: a slope fitted on noisy timings
        would otherwise predict negative latencies for heavily pruned plans. A removed block's
        layers go, with the activations they write and their part of the rest's per-layer term
        (fitted on the model without every removable block; candidates are timed before they
        are trained, so an estimate that is off costs no fine-tune)."""
        if live is None and self.drop:
            live = self.live(self.drop)
        rest = max(self._rest(kept, live), min(0.0, self._dense_rest))
        ms = self.layer_ms(kept)
        return float(np.sum(ms if live is None else ms[live])) + rest

    def _rest(self, kept: Sequence[float] | np.ndarray, live: np.ndarray | None) -> float:
        a, b, c = (*self.rest, 0.0)[:3]
        running = len(self.layer_names) if live is None else int(np.sum(live))
        return a + b * self.activations(kept, live) + c * running

    @cached_property
    def _dense_rest(self) -> float:
        """The rest's value on the dense model (computed once per table)."""
        return self._rest(self.group_channels, None)

    def kept(self, plan: PruningPlan) -> list[int]:
        """Kept root channels per group under ``plan`` (as the analysis computes them)."""
        unknown = sorted(set(plan.ratios) - set(self.group_names))
        if unknown:
            raise ConfigError(f"plan names group {unknown[0]!r}, which this latency table does "
                              "not have; build the table for the model the plan prunes")
        return [kept_channels(c, plan.ratios.get(n, 0.0), plan.round_to, q, w) for n, c, q, w
                in zip(self.group_names, self.group_channels, self.quanta, self.unit_widths)]

    def predict(self, plan: PruningPlan) -> float:
        """Predicted latency (ms) of the model ``plan`` prunes to; nothing is built."""
        drop = {*self.drop, *plan.drop}
        return self.predict_kept(self.kept(plan), self.live(tuple(drop)) if drop else None)

    def idle_groups(self, live: np.ndarray) -> np.ndarray:
        """Which groups change the width of no ``live`` layer (all theirs are removed)."""
        if not self.removal.size:
            return np.ones(len(self.group_names), dtype=bool)
        rows = self.layers[live]
        touched = np.abs(self.removal[rows[:, 2]]).sum(0)
        ins = rows[:, 1][rows[:, 1] >= 0]
        touched = touched + np.abs(self.removal[ins]).sum(0)
        return np.asarray(touched == 0)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        return {"format": _FORMAT, **data, "luts": [
            {f.name: _plain(getattr(t, f.name)) for f in fields(t)} for t in self.luts]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        if data.get("format") != _FORMAT:
            raise ConfigError(f"latency table format {data.get('format')!r} is not {_FORMAT}; "
                              "build the table again")
        kw: dict[str, Any] = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kw.update({k: tuple(kw[k]) for k in ("group_names", "group_channels", "quanta",
                                             "unit_widths", "layer_names", "rest", "drop")
                   if k in kw})
        kw.update(dense=np.asarray(kw["dense"], dtype=float), positions=np.asarray(
            kw["positions"], dtype=float), layers=np.asarray(kw["layers"], np.int64).reshape(
            -1, 3), removal=np.asarray(kw["removal"], float).reshape(len(kw["dense"]), -1))
        kw["luts"] = tuple(LayerLut(**{**t, "in_grid": tuple(t["in_grid"]), "out_grid": tuple(
            t["out_grid"]), "ms": np.asarray(t["ms"], dtype=float), "odd": None if t["odd"] is
            None else np.asarray(t["odd"], dtype=float)}) for t in data["luts"])
        return cls(**kw)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        return cls.from_dict(json.loads(text))


def _plain(value: Any) -> Any:
    if isinstance(value, (np.ndarray, tuple)):
        return value.tolist() if isinstance(value, np.ndarray) else list(value)
    return dict(value) if isinstance(value, Mapping) else value


@dataclass(frozen=True)
class _LatencyWidths(Widths):
    """:class:`Widths` whose cost is the predicted latency, whatever the metric."""

    table: Any = None

    def cost(self, metric: Any) -> Callable[[Sequence[int]], float]:
        return self.table.predict_kept  # type: ignore[no-any-return]


def _per_group(table: LatencyTable, value: Mapping[str, float] | float,
               default: float) -> np.ndarray:
    if isinstance(value, Mapping):
        table.kept(PruningPlan(dict.fromkeys(value, 0.0)))  # names must be groups
        return np.array([float(value.get(n, default)) for n in table.group_names])
    return np.full(len(table.group_names), float(value))


def fit_latency(table: LatencyTable, target_ms: float,
                allocation: Mapping[str, float] | float = 1.0,
                caps: Mapping[str, float] | float = 0.95,
                round_to: int | None = None) -> PruningPlan:
    """The plan scaling ``allocation`` (per-group weights, groups a mapping omits stay dense) so
    its *predicted* latency is at most ``target_ms`` and within 1 % of it (channel rounding
    ``round_to`` honoured, ratios capped by ``caps``; the plan's importance is L2: replace it
    for another), with the blocks the table's :attr:`~LatencyTable.drop` removes removed (the
    groups inside them get no ratio). Pure given the table; measure the plan once to verify
    it."""
    alloc = _per_group(table, allocation, 0.0)
    cap_arr = _per_group(table, caps, 0.95)
    if table.drop:
        alloc = np.where(table.idle_groups(table.live(table.drop)), 0.0, alloc)
    model = CostModel(np.asarray(table.group_channels, dtype=float), table.dense, table.removal,
                      np.zeros((0, 4)), np.zeros((0, 3)))
    widths = _LatencyWidths(model, table.group_channels, table.quanta,
                            table.unit_widths if set(table.unit_widths) - {1} else (),
                            table=table)
    try:
        kept = fit_allocation(widths, alloc, target_ms, FitOptions("macs", cap_arr, round_to))
    except BudgetError as exc:
        fastest = table.predict(PruningPlan({n: min(c, 0.999) for n, a, c in zip(
            table.group_names, alloc, cap_arr) if a > 0}, round_to=round_to))
        raise BudgetError(f"latency target {target_ms:.4g} ms is below the fastest reachable "
                          f"model (predicted {fastest:.4g} ms of {table.dense_ms:.4g} ms dense "
                          "with these caps and allocation)") from exc
    ratios = {n: 1.0 - k / c for n, c, k in zip(table.group_names, table.group_channels, kept)
              if k < c}
    return PruningPlan(ratios, "l2", round_to, table.drop)

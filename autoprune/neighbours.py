"""Neighbours in the searched space: the key two trials of one plan share, a random step around
searched values, and a random step around a plan's own per-group ratios (the priors' candidates
around a baseline, whose plan the searched values only approximate). Pure: no torch, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.trial import LEVEL, ParamSpec

__all__ = ["Centre", "Neighbours", "jitter", "perturb", "plan_key"]

#: Where the priors search around: the searched values of a fully fine-tuned candidate (or a
#: baseline), and its plan's per-group ratios when the searched values only approximate that
#: plan (None: they express it).
Centre = tuple[Mapping[str, float], Mapping[str, float] | None]


def plan_key(params: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """Searched values as a hashable key (two trials with one key evaluate the same plan)."""
    return tuple(sorted((k, round(float(v), 9)) for k, v in params.items()))


def perturb(values: dict[str, float], specs: list[ParamSpec], rng: np.random.Generator,
            sigma: float = 0.15) -> dict[str, float]:
    """A neighbour of ``values``: Gaussian steps of ``sigma`` x each range, clipped, on grid; a
    yes/no parameter (two grid points, a block removed or not) flips with probability ``sigma``
    (a missing one reads as the low value: no)."""
    out = {}
    for s in specs:
        if s.step and round((s.high - s.low) / s.step) == 1:
            v = float(values.get(s.name, s.low))
            out[s.name] = (s.low + s.high - v) if rng.random() < sigma else v
            continue
        v = float(values.get(s.name, (s.low + s.high) / 2))
        v = min(max(v + rng.normal(0.0, sigma * (s.high - s.low)), s.low), s.high)
        if s.step:
            v = s.low + round((v - s.low) / s.step) * s.step
            v = min(max(round(v, 10), s.low), s.high)
        out[s.name] = v
    return out


def jitter(ratios: Mapping[str, float], caps: Mapping[str, float], rng: np.random.Generator,
           sigma: float = 0.25) -> dict[str, float]:
    """A neighbour of a plan's per-group pruning ratios: each group's kept fraction scaled by
    ``exp(N(0, sigma))``, the ratio clipped to ``[0, cap]``; a group capped at 0 (one the space
    leaves alone) stays unpruned. Steps in the kept fraction are relative: a layer kept at a
    quarter of its width moves by channels, not by half its width."""
    out = {}
    for name, cap in caps.items():
        if cap <= 0:
            continue
        keep = 1.0 - float(ratios.get(name, 0.0))
        ratio = 1.0 - keep * float(np.exp(rng.normal(0.0, sigma)))
        out[name] = min(max(ratio, 0.0), float(cap))
    return out


@dataclass(frozen=True)
class Neighbours:
    """Where the priors' steps land: the searched parameters (``specs``, the cost level
    excluded), the per-group ``caps`` of a step in ratios, and the searched values ``nearest``
    a plan's ratios (what the sampler is told of such a step)."""

    specs: list[ParamSpec]
    caps: Mapping[str, float]
    nearest: Callable[[Mapping[str, float]], dict]
    rng: np.random.Generator

    def around(self, centres: Sequence[Centre], n: int, level: float,
               seen: set[Any]) -> list[tuple[dict, dict]]:
        """``n`` neighbours of ``centres`` in turn at cost ``level``, as (searched values,
        attributes): a step in the searched values where they express the centre's plan, else
        a step in its ratios (``allocation``: the candidate's exact allocation) told to the
        sampler as the nearest searched values. Each has a key not in ``seen`` when 20 tries
        find one (``seen`` grows): no two trials evaluate the same searched values."""
        out: list[tuple[dict, dict]] = []
        for i in range(n):
            values, ratios = centres[i % len(centres)]
            for _ in range(20):  # a neighbour on the grid may round back onto a known plan
                attrs: dict[str, Any] = {"prior": True}
                if ratios is None:
                    params = {**perturb(dict(values), self.specs, self.rng), LEVEL: level}
                else:
                    attrs["allocation"] = jitter(ratios, self.caps, self.rng)
                    params = {**self.nearest(attrs["allocation"]), LEVEL: level}
                if plan_key(params) not in seen:
                    break
            seen.add(plan_key(params))
            out.append((params, attrs))
        return out

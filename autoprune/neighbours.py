"""Neighbours in the searched space: the key two trials of one plan share, and a random step
around searched values (the priors' candidates). Pure: no torch, no I/O."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from autoprune.trial import ParamSpec

__all__ = ["perturb", "plan_key"]


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

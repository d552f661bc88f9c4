"""Which fully fine-tuned candidate to deploy: the one-standard-error rule.

The search keeps the candidate with the best validation accuracy out of many, each scored once
on a finite validation split, so the winner's lead over a plan fixed in advance (the uniform or
global-ranking plan a torch-pruning user would write) is biased upward: the winner's curse. The
one-standard-error rule (Breiman et al., *Classification and Regression Trees*, 1984; Hastie,
Tibshirani and Friedman, *The Elements of Statistical Learning*, 2009, section 7.10) corrects for
it the standard way: it keeps the **simplest** candidate whose validation accuracy is within one
standard error of the best. Here the simplest are the one-liners, uniform first (one ratio for
every group), then global ranking (one threshold); a searched plan is deployed only when it
leads both by more than one standard error of the best's accuracy, ``sqrt(p (1 - p) / n)`` for
accuracy ``p`` on ``n`` validation examples (0.36 point at 93 % of 5000).

Measured on the 2026-12-07 benchmark rows (``benchmarks/selection_replay.py``): it turns VGG-8
at 15 % FLOPs from 0.15 point below the uniform plan (every seed) into the uniform plan itself,
and moves no other cell beyond its interval.

Pure: no I/O, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["SIMPLEST_FIRST", "Candidate", "baseline_family", "recommend", "standard_error"]

#: the baseline families the rule prefers, simplest first
SIMPLEST_FIRST: tuple[str, ...] = ("uniform", "global")


class Candidate(Protocol):
    """What the rule reads of a candidate (a :class:`~autoprune.trial.TrialRecord` is one)."""

    @property
    def val_acc(self) -> float | None: ...

    @property
    def baseline(self) -> str | None: ...

    @property
    def flops_ratio(self) -> float | None: ...


C = TypeVar("C", bound=Candidate)


def baseline_family(name: str | None) -> str | None:
    """``"uniform"`` or ``"global"`` for the enqueued one-liner baselines (``uniform-l2``, ...);
    None for searched plans and other baselines (the sensitivity plan)."""
    family = (name or "").split("-")[0]
    return family if family in SIMPLEST_FIRST else None


def standard_error(accuracy: float, n: int) -> float:
    """The binomial standard error of an accuracy measured on ``n`` examples."""
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy {accuracy!r} must be a fraction in [0, 1]")
    if n < 1:
        raise ValueError(f"n {n!r} must be >= 1 (the number of validation examples)")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def _val(c: Candidate) -> float:
    return float(c.val_acc or 0.0)


def recommend(candidates: Sequence[C], val_size: int | None, *, z: float = 1.0) -> C | None:
    """The candidate to deploy among fully fine-tuned, in-budget ``candidates``.

    Without ``val_size`` (the validation split's size is unknown): the best validation
    accuracy, the cheaper of equals. With it: the best uniform baseline within ``z`` standard
    errors of that best, else the best global-ranking one, else the best."""
    if not candidates:
        return None
    best = max(candidates, key=lambda c: (_val(c), -float(c.flops_ratio or 1.0)))
    if val_size is None or baseline_family(best.baseline) == SIMPLEST_FIRST[0]:
        return best
    floor = _val(best) - z * standard_error(_val(best), val_size)
    for family in SIMPLEST_FIRST:
        if family == baseline_family(best.baseline):
            return best  # nothing simpler qualified before it
        near = [c for c in candidates if baseline_family(c.baseline) == family
                and _val(c) >= floor]
        if near:
            return max(near, key=_val)
    return best

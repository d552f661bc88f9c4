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

A one-liner is passed over, though, when it is clearly off the front: when another candidate
scores at least as well on validation at a cost (on the front's axis) lower by more than
:data:`DOMINANCE_MARGIN` of the one-liner's. Without that, on a small validation split (one
standard error is 0.8 point on digits' 216 examples) the rule recommended the uniform plan at 40 %
of the dense FLOPs where a searched plan scored the same at 24 %.

Measured on the 2026-12-07 benchmark rows (``benchmarks/selection_replay.py``): it turns VGG-8
at 15 % FLOPs from 0.15 point below the uniform plan (every seed) into the uniform plan itself,
and moves no other cell beyond its interval. The front check changes 2 of the 69 kept runs'
picks, one cell's figure by 0.01 point (``benchmarks/front_check_replay.py``).

Pure: no I/O, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

__all__ = ["DOMINANCE_MARGIN", "SIMPLEST_FIRST", "Candidate", "baseline_family", "dominator",
           "passed_over", "recommend", "standard_error"]

#: the baseline families the rule prefers, simplest first
SIMPLEST_FIRST: tuple[str, ...] = ("uniform", "global")

#: how much cheaper, as a fraction of its cost, another candidate must be (at a validation
#: accuracy no lower) for a one-liner to count as off the front: final CPU latencies of the
#: same model vary by a few percent between timings, FLOPs budgets fit every plan to within 1 %
DOMINANCE_MARGIN = 0.05


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


def dominator(c: C, candidates: Sequence[C], cost: Callable[[C], float | None], *,
              margin: float = DOMINANCE_MARGIN) -> C | None:
    """The cheapest candidate that puts ``c`` clearly off the front: a validation accuracy no
    lower than ``c``'s at a ``cost`` below ``(1 - margin)`` times ``c``'s; None when there is
    none (or ``c``'s cost is unknown)."""
    own = cost(c)
    if own is None:
        return None
    better = [(price, i) for i, d in enumerate(candidates) if d is not c
              and (price := cost(d)) is not None and price < own * (1.0 - margin)
              and _val(d) >= _val(c)]
    return candidates[min(better)[1]] if better else None


def recommend(candidates: Sequence[C], val_size: int | None, *, z: float = 1.0,
              cost: Callable[[C], float | None] | None = None,
              margin: float = DOMINANCE_MARGIN) -> C | None:
    """The candidate to deploy among fully fine-tuned, in-budget ``candidates``.

    Without ``val_size`` (the validation split's size is unknown): the best validation
    accuracy, the cheaper of equals (on ``cost``, else FLOPs). With it: the best uniform
    baseline within ``z`` standard errors of that best, else the best global-ranking one, else
    the best; a one-liner that another candidate puts clearly off the front
    (:func:`dominator`, when ``cost`` is given) does not count."""
    if not candidates:
        return None
    price = cost or (lambda c: c.flops_ratio)
    best = max(candidates, key=lambda c: (_val(c), -_or(price(c), 1.0)))
    if val_size is None:
        return best
    floor = _floor(best, val_size, z)
    for family in SIMPLEST_FIRST:
        if family == baseline_family(best.baseline):
            return best  # nothing simpler qualified before it
        near = [c for c in candidates if baseline_family(c.baseline) == family
                and _val(c) >= floor
                and (cost is None or dominator(c, candidates, cost, margin=margin) is None)]
        if near:
            return max(near, key=_val)
    return best


def passed_over(candidates: Sequence[C], val_size: int, pick: C, *,
                cost: Callable[[C], float | None],
                margin: float = DOMINANCE_MARGIN) -> list[tuple[C, C]]:
    """The one-liners simpler than ``pick`` that were within one standard error of the best
    but clearly off the front, each with the candidate that puts it there (:func:`dominator`):
    why :func:`recommend` (at its default ``z``) did not deploy them."""
    floor = _floor(max(candidates, key=_val), val_size, 1.0)
    family = baseline_family(pick.baseline)
    simpler = SIMPLEST_FIRST[:SIMPLEST_FIRST.index(family)] if family else SIMPLEST_FIRST
    out = []
    for c in candidates:
        if baseline_family(c.baseline) in simpler and _val(c) >= floor:
            d = dominator(c, candidates, cost, margin=margin)
            if d is not None:
                out.append((c, d))
    return out


def _floor(best: Candidate, val_size: int, z: float) -> float:
    """The lowest validation accuracy within ``z`` standard errors of ``best``'s."""
    return _val(best) - z * standard_error(_val(best), val_size)


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)

"""Noise guards: a timing whose spread is too wide is taken again, and flagged if it stays wide.

A latency taken while other work shares the machine can be off by 10x or more (measured here: a
busy search recorded 0.95 to 237 ms for near-identical models). Its robust coefficient of
variation (IQR / 1.349 / median, :func:`robust_cv`) says so. :func:`guarded` takes a timing,
re-takes it with twice the runs while the CV is above ``max_cv`` (at most ``retries`` times),
keeps the steadiest, and marks it ``noisy`` when even that one is above the threshold.
:func:`merge_retimed` does the same for models timed together beside a reference, keeping
their ratios to it. Pure control flow over a timing callable: no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_CV", "DEFAULT_RETRIES", "Timed", "guarded", "merge_retimed",
           "robust_cv"]

#: A CV above this is noise, not a model's latency: quiet CPU timings measured here stay under
#: 0.05; timings beside a training process reach 0.2-1.0.
DEFAULT_MAX_CV = 0.10
DEFAULT_RETRIES = 2


def robust_cv(median_ms: float | None, iqr_ms: float | None) -> float | None:
    """IQR / 1.349 / median: the CV of a normal sample, robust to a few outliers."""
    if not median_ms or iqr_ms is None:
        return None
    return iqr_ms / 1.349 / median_ms


@dataclass(frozen=True)
class Timed:
    """A guarded latency: median and IQR (ms), how many timings it took, and whether its CV
    stayed above the threshold after them (``noisy``: do not trust it without a re-timing)."""

    ms: float
    iqr_ms: float
    attempts: int = 1
    noisy: bool = False

    @property
    def cv(self) -> float | None:
        return robust_cv(self.ms, self.iqr_ms)


def guarded(take: Callable[[int], tuple[float, float]], max_cv: float = DEFAULT_MAX_CV,
            retries: int = DEFAULT_RETRIES) -> Timed:
    """The steadiest of up to ``1 + retries`` timings. ``take(k)`` times with ``k`` times the
    usual runs (1, 2, 4, ...) and returns (median, IQR) in ms; it is called again only while
    the best CV so far is above ``max_cv``."""
    if max_cv <= 0:
        raise ValueError(f"max_cv={max_cv} must be > 0")
    if retries < 0:
        raise ValueError(f"retries={retries} must be >= 0")
    best: Timed | None = None
    for attempt in range(1 + retries):
        median, iqr = take(2 ** attempt)
        timed = Timed(median, iqr, attempt + 1)
        if best is None or (timed.cv or 0.0) < (best.cv or 0.0):
            best = timed
        best = Timed(best.ms, best.iqr_ms, attempt + 1)
        if (best.cv or 0.0) <= max_cv:
            return best
    assert best is not None
    return Timed(best.ms, best.iqr_ms, best.attempts, noisy=True)


def merge_retimed(found: dict[str, Timed], again: dict[str, tuple[float, float]],
                  reference: str) -> dict[str, Timed]:
    """``found`` (models timed together, ``reference`` among them) updated with ``again`` (some
    of them re-timed together with ``reference``): each label keeps its steadier figure *as a
    ratio to the reference of the timing it came from*, and every ratio is expressed in the
    steadier of the two reference figures. Taking a re-timed model's milliseconds as they are
    would mix two machine loads (a re-timing under a heavier load made a model look slower
    than the reference it was never timed beside)."""
    old, new = found[reference], Timed(*again[reference])
    steadier_ref = (new.cv or 0.0) < (old.cv or 0.0)
    base = new.ms if steadier_ref else old.ms
    out: dict[str, Timed] = {}
    for label, t in found.items():
        ms, iqr, ref_ms, attempts = t.ms, t.iqr_ms, old.ms, t.attempts
        if label in again and label != reference:
            attempts += 1
            if (robust_cv(*again[label]) or 0.0) < (t.cv or 0.0):
                (ms, iqr), ref_ms = again[label], new.ms
        out[label] = Timed(ms / ref_ms * base, iqr / ref_ms * base, attempts)
    kept = new if steadier_ref else old
    out[reference] = Timed(kept.ms, kept.iqr_ms, old.attempts + 1)
    return out

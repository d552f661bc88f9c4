"""Non-domination and hypervolume: the pure maths behind the Pareto front of a search.

Kept free of I/O, torch and optuna so results, reports and backends can all agree on one front,
and so it tests in milliseconds against brute-force oracles. Every objective carries a sense,
``"max"`` or ``"min"``; internally all objectives are turned into minimisation. A point with a
NaN value (a failed or diverged trial) is never on the front and never adds hypervolume.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

from autoprune.errors import ConfigError

__all__ = ["dominates", "hypervolume_2d", "hypervolume_progress", "non_dominated"]

_SENSES = ("max", "min")


def _signs(senses: Sequence[str]) -> tuple[float, ...]:
    """Validate ``senses`` once and return the factor that turns each objective into a minimum."""
    if isinstance(senses, str) or len(senses) == 0:
        raise ConfigError(
            f"senses={senses!r} must be a non-empty sequence with one 'max' or 'min' per "
            "objective, e.g. ('max', 'min') for accuracy up and cost down"
        )
    for sense in senses:
        if sense not in _SENSES:
            raise ConfigError(f"senses contains {sense!r}; use only 'max' or 'min'")
    return tuple(-1.0 if sense == "max" else 1.0 for sense in senses)


def _to_min(point: Sequence[float], signs: tuple[float, ...], name: str) -> tuple[float, ...]:
    """Check one point's length and values, and return it in minimisation form."""
    if len(point) != len(signs):
        raise ConfigError(
            f"{name}={tuple(point)!r} has {len(point)} values but senses has {len(signs)}; "
            "give exactly one value per objective"
        )
    try:
        return tuple(s * float(v) for v, s in zip(point, signs, strict=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={tuple(point)!r} is not all numbers; pass floats") from exc


def _has_nan(point: Sequence[float]) -> bool:
    return any(math.isnan(v) for v in point)


def _dominates_min(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and strictly better somewhere.

    A point with NaN dominates nothing and is dominated by every NaN-free point, so failed trials
    always lose to finished ones.
    """
    signs = _signs(senses)
    ma, mb = _to_min(a, signs, "a"), _to_min(b, signs, "b")
    if _has_nan(ma):
        return False
    return _has_nan(mb) or _dominates_min(ma, mb)


def non_dominated(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices of the Pareto-optimal points, in input order, for building the front of a run.

    Identical points are all kept (two trials with the same score are both on the front); points
    with NaN are left out. Two objectives use an O(n log n) sweep, more fall back to O(n²).
    """
    signs = _signs(senses)
    pts = [_to_min(p, signs, f"points[{i}]") for i, p in enumerate(points)]
    valid = [i for i, p in enumerate(pts) if not _has_nan(p)]
    if len(signs) != 2:
        return [i for i in valid if not any(_dominates_min(pts[j], pts[i]) for j in valid)]
    order = sorted(valid, key=lambda i: pts[i])
    keep: list[int] = []
    best_y: float | None = None  # lowest y among points with a strictly smaller x
    start = 0
    while start < len(order):
        x, y_min = pts[order[start]]
        end = start
        while end < len(order) and pts[order[end]][0] == x:
            end += 1
        if best_y is None or y_min < best_y:
            keep.extend(i for i in order[start:end] if pts[i][1] == y_min)
            best_y = y_min
        start = end
    return sorted(keep)


def hypervolume_progress(
    points: Sequence[Sequence[float]], senses: Sequence[str], reference: Sequence[float]
) -> list[float]:
    """Hypervolume of the first k points for k = 1..n, for "front quality vs trials" plots.

    Incremental: the front is kept as a staircase sorted by the first objective, and each new point
    adds only the area it uncovers, so n points cost O(n log n) comparisons.
    """
    signs = _signs(senses)
    if len(signs) != 2:
        raise ConfigError(
            f"senses={tuple(senses)!r} has {len(signs)} objectives; hypervolume is exact for "
            "exactly 2, so pass two senses"
        )
    rx, ry = _to_min(reference, signs, "reference")
    if not (math.isfinite(rx) and math.isfinite(ry)):
        raise ConfigError(f"reference={tuple(reference)!r} must be finite; pass a worst-case point")
    xs: list[float] = []  # front, x strictly increasing ...
    ys: list[float] = []  # ... and y strictly decreasing
    volume, progress = 0.0, []
    for k, point in enumerate(points):
        px, py = _to_min(point, signs, f"points[{k}]")
        i = bisect_right(xs, px)
        if _has_nan((px, py)) or px >= rx or py >= ry or (i > 0 and ys[i - 1] <= py):
            progress.append(volume)
            continue
        if math.isinf(volume) or math.isinf(px) or math.isinf(py):  # an infinitely good point
            volume = math.inf
            progress.append(volume)
            continue
        j = bisect_left(xs, px)
        m = j
        while m < len(xs) and ys[m] >= py:
            m += 1
        height, cur_x = (ys[j - 1] if j > 0 else ry), px
        for qx, qy in zip(xs[j:m], ys[j:m], strict=True):
            volume += (qx - cur_x) * (height - py)
            height, cur_x = qy, qx
        volume += ((xs[m] if m < len(xs) else rx) - cur_x) * (height - py)
        xs[j:m], ys[j:m] = [px], [py]
        progress.append(volume)
    return progress


def hypervolume_2d(
    points: Sequence[Sequence[float]], senses: Sequence[str], reference: Sequence[float]
) -> float:
    """Exact area dominated by the front and bounded by ``reference``: one number per run.

    Points that do not strictly beat the reference in both objectives contribute nothing.
    """
    progress = hypervolume_progress(points, senses, reference)
    return progress[-1] if progress else 0.0

"""autoprune.pareto against brute-force oracles written independently of the implementation."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import pytest

from autoprune.errors import ConfigError
from autoprune.pareto import dominates, hypervolume_2d, hypervolume_progress, non_dominated

NAN = float("nan")
INF = float("inf")


def _better_eq(a: float, b: float, sense: str) -> bool:
    return a >= b if sense == "max" else a <= b


def _strictly_better(a: float, b: float, sense: str) -> bool:
    return a > b if sense == "max" else a < b


def oracle_dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    if any(math.isnan(v) for v in a):
        return False
    if any(math.isnan(v) for v in b):
        return True
    return all(_better_eq(x, y, s) for x, y, s in zip(a, b, senses, strict=True)) and any(
        _strictly_better(x, y, s) for x, y, s in zip(a, b, senses, strict=True)
    )


def oracle_front(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """O(n²): a NaN-free point is on the front iff no other point dominates it."""
    return [
        i
        for i, p in enumerate(points)
        if not any(math.isnan(v) for v in p)
        and not any(oracle_dominates(q, p, senses) for j, q in enumerate(points) if j != i)
    ]


def oracle_area(points: Sequence[Sequence[int]], senses: Sequence[str], ref: Sequence[int]) -> int:
    """Count unit cells whose centre lies between some point and the reference in both axes."""
    lo = [min([ref[k], *(p[k] for p in points)]) for k in range(2)]
    hi = [max([ref[k], *(p[k] for p in points)]) for k in range(2)]
    area = 0
    for cx in range(lo[0], hi[0]):
        for cy in range(lo[1], hi[1]):
            centre = (cx + 0.5, cy + 0.5)
            if any(
                all(
                    _better_eq(p[k], centre[k], senses[k])
                    and _better_eq(centre[k], ref[k], senses[k])
                    for k in range(2)
                )
                for p in points
            ):
                area += 1
    return area


def _random_points(rng: random.Random, n: int, dims: int, spread: int) -> list[list[float]]:
    """Small integer grids force ties and duplicates; rare NaN and inf test the exclusions."""
    pts = []
    for _ in range(n):
        p: list[float] = [float(rng.randint(0, spread)) for _ in range(dims)]
        roll = rng.random()
        if roll < 0.05:
            p[rng.randrange(dims)] = NAN
        elif roll < 0.08:
            p[rng.randrange(dims)] = rng.choice([INF, -INF])
        elif roll < 0.3:
            p[rng.randrange(dims)] += rng.random()
        pts.append(p)
    if n > 3:
        pts.extend(list(rng.choice(pts)) for _ in range(n // 4))  # exact duplicates
        rng.shuffle(pts)
    return pts


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 25, 120, 400])
@pytest.mark.parametrize("seed", range(4))
def test_non_dominated_matches_oracle(dims: int, n: int, seed: int) -> None:
    rng = random.Random(1000 * seed + 10 * n + dims)
    senses = [rng.choice(["max", "min"]) for _ in range(dims)]
    pts = _random_points(rng, n, dims, spread=rng.choice([3, 10, 1000]))
    assert non_dominated(pts, senses) == oracle_front(pts, senses)


@pytest.mark.parametrize("seed", range(5))
def test_dominates_matches_oracle(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        dims = rng.choice([1, 2, 3])
        senses = [rng.choice(["max", "min"]) for _ in range(dims)]
        a, b = _random_points(rng, 2, dims, spread=2)
        assert dominates(a, b, senses) == oracle_dominates(a, b, senses), (a, b, senses)


def test_duplicates_are_all_kept_and_order_preserved() -> None:
    pts = [(0.9, 5.0), (0.8, 1.0), (0.9, 5.0), (0.5, 9.0), (0.8, 1.0)]
    assert non_dominated(pts, ("max", "min")) == [0, 1, 2, 4]


def test_tie_in_one_objective_is_dominated() -> None:
    assert non_dominated([(1.0, 2.0), (1.0, 3.0), (0.0, 3.0)], ("max", "min")) == [0]
    assert non_dominated([(1.0, INF), (2.0, INF)], ("min", "min")) == [0]


@pytest.mark.parametrize("seed", range(30))
def test_hypervolume_matches_grid_oracle(seed: int) -> None:
    rng = random.Random(seed)
    senses = [rng.choice(["max", "min"]) for _ in range(2)]
    pts = [[rng.randint(0, 12), rng.randint(0, 12)] for _ in range(rng.randint(0, 15))]
    ref = [rng.randint(0, 12), rng.randint(0, 12)]
    assert hypervolume_2d(pts, senses, ref) == oracle_area(pts, senses, ref)


@pytest.mark.parametrize("seed", range(10))
def test_progress_matches_oracle_on_every_prefix(seed: int) -> None:
    rng = random.Random(100 + seed)
    senses = [rng.choice(["max", "min"]) for _ in range(2)]
    pts = [[rng.randint(0, 10), rng.randint(0, 10)] for _ in range(30)]
    ref = [5 if s == "max" else 8 for s in senses]  # some points miss the reference
    progress = hypervolume_progress(pts, senses, ref)
    assert progress == [oracle_area(pts[: k + 1], senses, ref) for k in range(len(pts))]


def test_progress_on_a_long_run_matches_a_front_sweep() -> None:
    rng = random.Random(7)
    pts = [(x, 1.0 - x + rng.uniform(-0.05, 0.05)) for x in (rng.random() for _ in range(5000))]
    progress = hypervolume_progress(pts, ("max", "min"), (0.0, 1.2))
    assert all(b >= a for a, b in itertools.pairwise(progress))
    front = sorted((pts[i] for i in oracle_front(pts, ("max", "min"))), key=lambda p: p[1])
    # cheapest first; cost band [y_i, y_next) is covered up to accuracy x_i
    next_y = [p[1] for p in front[1:]] + [1.2]
    area = sum(x * (nxt - y) for (x, y), nxt in zip(front, next_y, strict=True))
    assert progress[-1] == pytest.approx(area, rel=1e-12)


def test_empty_and_single_point() -> None:
    assert non_dominated([], ("max", "min")) == []
    assert hypervolume_2d([], ("max", "min"), (0.0, 1.0)) == 0.0
    assert hypervolume_progress([], ("max", "min"), (0.0, 1.0)) == []
    assert non_dominated([(0.5, 0.5)], ("max", "min")) == [0]
    assert hypervolume_2d([(0.5, 0.25)], ("max", "min"), (0.0, 1.0)) == pytest.approx(0.375)
    assert hypervolume_2d([(0.5, 2.0)], ("max", "min"), (0.0, 1.0)) == 0.0


def test_nan_points_are_excluded() -> None:
    pts = [(NAN, 0.0), (0.5, 0.5), (1.0, NAN), (NAN, NAN)]
    assert non_dominated(pts, ("max", "min")) == [1]
    assert non_dominated([(NAN, 0.0, 1.0)], ("max", "min", "min")) == []
    assert hypervolume_progress(pts, ("max", "min"), (0.0, 1.0)) == [0.0, 0.25, 0.25, 0.25]
    assert dominates((0.0, 9.0), (NAN, 0.0), ("max", "min"))
    assert not dominates((NAN, 0.0), (0.0, 9.0), ("max", "min"))


@pytest.mark.parametrize(
    ("senses", "needle"),
    [
        (("max", "minimize"), "minimize"),
        (("MAX", "min"), "MAX"),
        ("max", "senses"),
        ((), "senses"),
    ],
)
def test_bad_senses_raise_config_error(senses: Sequence[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        non_dominated([(1.0, 2.0)], senses)
    with pytest.raises(ConfigError):
        dominates((1.0, 2.0), (1.0, 2.0), senses)


def test_malformed_points_and_reference_raise_config_error() -> None:
    with pytest.raises(ConfigError, match=r"points\[1\]"):
        non_dominated([(1.0, 2.0), (1.0, 2.0, 3.0)], ("max", "min"))
    with pytest.raises(ConfigError, match=r"points\[0\]"):
        non_dominated([("a", 2.0)], ("max", "min"))
    with pytest.raises(ConfigError, match="reference"):
        hypervolume_2d([(1.0, 2.0)], ("max", "min"), (0.0,))
    with pytest.raises(ConfigError, match="reference"):
        hypervolume_2d([(1.0, 2.0)], ("max", "min"), (NAN, 1.0))
    with pytest.raises(ConfigError, match="objectives"):
        hypervolume_2d([(1.0, 2.0, 3.0)], ("max", "min", "min"), (0.0, 9.0, 9.0))

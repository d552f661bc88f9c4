"""The one-standard-error rule that picks the model to deploy (autoprune/selection.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from autoprune.selection import (
    DOMINANCE_MARGIN,
    baseline_family,
    dominator,
    recommend,
    standard_error,
)


@dataclass(frozen=True)
class C:
    val_acc: float | None
    baseline: str | None = None
    flops_ratio: float | None = 0.3
    name: str = ""


def test_standard_error_is_the_binomial_one():
    # oracle: sqrt(p (1 - p) / n) by hand, 0.93 on 5000 examples -> 0.3608 point
    assert standard_error(0.93, 5000) == pytest.approx(math.sqrt(0.93 * 0.07 / 5000))
    assert 100 * standard_error(0.93, 5000) == pytest.approx(0.3608, abs=1e-4)
    assert standard_error(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="n 0 must be >= 1"):
        standard_error(0.9, 0)
    with pytest.raises(ValueError, match=r"accuracy 93\.0"):
        standard_error(93.0, 5000)  # a percentage, not a fraction


def test_baseline_family_names_only_the_one_liners():
    assert baseline_family("uniform-l2") == "uniform" and baseline_family("global-bn") == "global"
    assert baseline_family("sensitivity-l2") is None and baseline_family(None) is None


# n = 5000 and best 0.92: one standard error is 0.3837 point, so the floor is 0.916163
SEARCHED = C(0.92, name="searched")


@pytest.mark.parametrize("uniform, global_, want", [
    (0.9162, 0.9190, "uniform"),   # uniform within one SE: the simplest wins, over global too
    (0.9161, 0.9170, "global"),    # uniform 0.0063 below the floor, global within it
    (0.9100, 0.9150, "searched"),  # neither within: the searched plan leads by more than 1 SE
])
def test_the_simplest_candidate_within_one_standard_error_is_kept(uniform, global_, want):
    cands = [SEARCHED, C(uniform, "uniform-l2", name="uniform"),
             C(global_, "global-l2", name="global"), C(0.9199, "sensitivity-l2", name="sens")]
    pick = recommend(cands, 5000)
    assert pick is not None and pick.name == want
    assert recommend(cands, None) is SEARCHED  # no validation size: the best, as before


def test_a_baseline_that_is_best_is_kept_unless_a_simpler_one_is_near():
    uniform, glob = C(0.9170, "uniform-l2"), C(0.9200, "global-l2")
    assert recommend([uniform, glob, C(0.9190)], 5000) is uniform
    assert recommend([C(0.9100, "uniform-l2"), glob, C(0.9190)], 5000) is glob
    assert recommend([C(0.95, "uniform-l2"), glob], 5000).val_acc == 0.95


def test_more_validation_examples_make_the_rule_stricter():
    cands = [C(0.925), C(0.920, "uniform-l2")]  # a lead of 0.5 point
    assert recommend(cands, 1000).baseline == "uniform-l2"  # 1 SE = 0.83 point
    assert recommend(cands, 10_000).baseline is None  # 1 SE = 0.26 point


def test_ties_on_validation_go_to_the_cheaper_and_nothing_to_none():
    cheap, dear = C(0.9, flops_ratio=0.2), C(0.9, flops_ratio=0.3)
    assert recommend([dear, cheap], None) is cheap
    assert recommend([], 5000) is None


def _flops(c: C) -> float | None:
    return c.flops_ratio


def test_a_one_liner_clearly_off_the_front_is_passed_over():
    # digits, as the README's first command ran it: 216 validation examples (1 SE ~0.8 point);
    # the uniform plan at 39.8 % FLOPs scored what a searched plan scored at 23.5 %
    uniform = C(0.9630, "uniform-l2", flops_ratio=0.398, name="uniform")
    cheap = C(0.9630, flops_ratio=0.235, name="cheap")
    best = C(0.9676, flops_ratio=0.390, name="best")
    cands = [uniform, cheap, best]
    assert recommend(cands, 216) is uniform  # accuracy alone: the uniform plan, off the front
    assert dominator(uniform, cands, _flops) is cheap
    assert recommend(cands, 216, cost=_flops) is best  # global-l2 absent: the best
    glob = C(0.9600, "global-l2", flops_ratio=0.24, name="global")
    assert recommend([*cands, glob], 216, cost=_flops) is glob  # on the front, within 1 SE


@pytest.mark.parametrize("cheaper_by, passed_over", [
    (DOMINANCE_MARGIN / 2, False),  # within the margin: timing noise, not off the front
    (DOMINANCE_MARGIN * 2, True),
])
def test_the_front_check_allows_for_measurement_noise(cheaper_by, passed_over):
    uniform = C(0.9200, "uniform-l2", flops_ratio=0.50, name="uniform")
    peer = C(0.9200, flops_ratio=0.50 * (1 - cheaper_by), name="peer")
    best = C(0.9230, flops_ratio=0.50, name="best")
    pick = recommend([uniform, peer, best], 5000, cost=_flops)
    assert pick is not None and pick.name == ("best" if passed_over else "uniform")


def test_only_an_equally_accurate_cheaper_candidate_dominates():
    uniform = C(0.9200, "uniform-l2", flops_ratio=0.5)
    worse = C(0.9199, flops_ratio=0.2)  # much cheaper, 0.01 point lower: uniform stays
    unknown = C(0.9300, flops_ratio=None)  # no cost: compares with nothing
    assert dominator(uniform, [uniform, worse, unknown], _flops) is None
    assert dominator(unknown, [uniform, worse, unknown], _flops) is None
    cheaper, cheapest = C(0.93, flops_ratio=0.3), C(0.92, flops_ratio=0.1)
    assert dominator(uniform, [uniform, cheaper, cheapest], _flops) is cheapest

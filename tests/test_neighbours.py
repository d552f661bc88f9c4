"""The priors' steps: in the searched values where those express a centre's plan, else in the
plan's own per-group ratios (a kept fraction scaled by a log-normal factor), told to the sampler as
the nearest searched values and carried to the candidate as its exact ``allocation``."""

from __future__ import annotations

import numpy as np
import optuna

from autoprune.backends.heartbeat import retry_attrs
from autoprune.neighbours import Neighbours, jitter, plan_key
from autoprune.trial import LEVEL, ParamSpec

CAPS = {"a": 0.95, "b": 0.5, "frozen": 0.0}


def test_jitter_scales_each_kept_fraction_and_stays_within_the_caps():
    rng = np.random.default_rng(0)
    ratios = {"a": 0.8, "b": 0.4, "frozen": 0.0}
    steps = [jitter(ratios, CAPS, rng) for _ in range(2000)]
    assert all(set(s) == {"a", "b"} for s in steps)  # a group the space leaves alone stays
    assert all(0.0 <= s["a"] <= 0.95 and 0.0 <= s["b"] <= 0.5 for s in steps)
    # the step is relative to the kept fraction: log(keep'/keep) ~ N(0, 0.25) where unclipped
    logs = np.log([(1 - s["a"]) / 0.2 for s in steps if s["a"] < 0.95])
    assert abs(np.median(logs)) < 0.03 and 0.2 < np.std(logs) < 0.3
    assert jitter(ratios, CAPS, rng, sigma=0.0) == {"a": 0.8, "b": 0.4}


def test_around_steps_in_ratios_where_the_values_do_not_express_the_plan():
    specs = [ParamSpec("a", 0.0, 0.8, 0.05), ParamSpec("b", 0.0, 0.5, 0.05)]
    def nearest(ratios):
        return {k: round(min(v, 0.8) * 20) / 20 for k, v in ratios.items()}

    steps = Neighbours(specs, CAPS, nearest, np.random.default_rng(1))
    exact = {"a": 0.9, "b": 0.3}  # a plan past the space's range for "a"
    seen = {plan_key({"a": 0.8, "b": 0.3, LEVEL: 0.2})}  # the centre itself
    out = steps.around([({"a": 0.8, "b": 0.3}, exact), ({"a": 0.1, "b": 0.1}, None)], 6, 0.2,
                       seen)
    assert len(out) == 6 and len({plan_key(p) for p, _ in out}) == 6  # distinct, none the centre
    by_ratio, by_value = out[0::2], out[1::2]
    for params, attrs in by_ratio:
        assert attrs["prior"] is True and set(attrs["allocation"]) == {"a", "b"}
        assert params == {**nearest(attrs["allocation"]), LEVEL: 0.2}
    for params, attrs in by_value:
        assert attrs == {"prior": True} and params[LEVEL] == 0.2
        assert 0.0 <= params["a"] <= 0.8 and 0.0 <= params["b"] <= 0.5
    assert len(seen) == 7


def test_a_retried_prior_keeps_its_allocation():
    trial = optuna.trial.create_trial(
        params={"a": 0.5}, distributions={"a": optuna.distributions.FloatDistribution(0, 1)},
        state=optuna.trial.TrialState.FAIL,
        user_attrs={"prior": True, "allocation": {"a": 0.9}, "worker": "h:1", "slots": 2})
    assert retry_attrs(trial) == {"retry_of": trial.number, "allocation": {"a": 0.9}}

"""autoprune.trial: the one trial record and its states."""

from __future__ import annotations

import pytest

from autoprune.trial import Outcome, TrialRecord, TrialState


def test_states_coerce_from_names_and_compare_as_strings():
    r = TrialRecord(1, "SCREENED")
    assert r.state is TrialState.SCREENED and r.state == "SCREENED"
    assert str(r.state) == "SCREENED" and f"{r.state}" == "SCREENED"
    with pytest.raises(ValueError):
        TrialRecord(1, "DONE")


@pytest.mark.parametrize("state,val,fidelity,full", [
    ("COMPLETE", 0.9, 1.0, True), ("COMPLETE", 0.9, 0.5, False), ("COMPLETE", None, 1.0, False),
    ("SCREENED", 0.9, 1.0, False), ("INFEASIBLE", 0.0, 1.0, False), ("COMPLETE", 0.9, None, False),
])
def test_only_fully_fine_tuned_scored_trials_are_full(state, val, fidelity, full):
    assert TrialRecord(0, state, val_acc=val, fidelity=fidelity).is_full is full


def test_updated_keeps_fields_given_none_and_outcomes_are_values():
    r = TrialRecord(3, TrialState.COMPLETE, 0.4, val_acc=0.8)
    assert r.updated(test_acc=None, latency_ms=2.0) == TrialRecord(3, "COMPLETE", 0.4,
                                                                   latency_ms=2.0, val_acc=0.8)
    o = Outcome("FAIL", None, 0.0, {"a": 1})
    o2 = o.with_attrs(b=2)
    assert o.state is TrialState.FAIL and o.attrs == {"a": 1} and o2.attrs == {"a": 1, "b": 2}
    with pytest.raises(AttributeError):
        o.state = TrialState.COMPLETE  # type: ignore[misc]

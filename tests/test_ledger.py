"""autoprune.ledger: the front on the budget's axis, weights kept while the front may still change,
and the end-of-run re-timing of every front member (weights or not)."""

from __future__ import annotations

import pytest
from torch import nn

from autoprune.budget import ResolvedBudget
from autoprune.ledger import Ledger
from autoprune.pareto import non_dominated
from autoprune.plan import Budget
from autoprune.results import RunDir
from autoprune.trial import TrialRecord, TrialState


def full(trial: int, acc: float, flops: float, latency: float) -> TrialRecord:
    return TrialRecord(trial, TrialState.COMPLETE, flops, flops, latency_ms=latency, val_acc=acc,
                       fidelity=1.0, plan={"ratios": {}, "importance": "l2", "round_to": None})


RECORDS = [full(0, 0.90, 0.50, 2.0), full(1, 0.85, 0.40, 3.0), full(2, 0.80, 0.30, 2.5),
           TrialRecord(3, TrialState.SCREENED, 0.2, 0.2, proxy_acc=0.5, fidelity=0.0)]


def ledger(tmp_path, budget: Budget) -> Ledger:
    run = RunDir.create(tmp_path / "run")
    run.write_baseline({"dense": {"latency_ms": 4.0}})
    for r in RECORDS:
        run.write_model(r.trial, b"w")
    return Ledger(run, ResolvedBudget(budget, 100.0, 10.0, dense_latency_ms=4.0))


def test_front_is_the_non_dominated_full_trials_on_the_budget_axis(tmp_path):
    for budget, cost in ((Budget(flops=0.6), lambda r: r.flops_ratio),
                         (Budget(latency=0.9), lambda r: r.latency_ms / 4.0)):
        book = ledger(tmp_path / str(budget.flops), budget)
        full_ones = [r for r in RECORDS if r.is_full]
        oracle = {full_ones[i].trial for i in non_dominated(
            [(r.val_acc, cost(r)) for r in full_ones], ("max", "min"))}
        assert {r.trial for r in book.front(RECORDS)} == oracle
    assert {r.trial for r in ledger(tmp_path / "lat", Budget(latency=0.9)).front(RECORDS)} \
        == {0}  # FLOPs would also keep 1 and 2: the axis matters


def test_weights_are_dropped_only_once_the_front_cannot_change(tmp_path):
    book = ledger(tmp_path / "flops", Budget(flops=0.6))
    book.write(RECORDS)
    assert set(book.run.saved_models()) == {0, 1, 2}  # all three on the FLOPs front
    lat = ledger(tmp_path / "lat", Budget(latency=0.9))
    lat.write(RECORDS)
    assert set(lat.run.saved_models()) == {0, 1, 2, 3}  # re-timing may still change the front
    lat.write(RECORDS, final=True)
    assert set(lat.run.saved_models()) == {0}


def test_retiming_reaches_members_that_join_the_front_late(tmp_path):
    """Trial 0 turns out over the budget when timed alone; trial 2 then joins the front and is
    timed too, although its weights were dropped during the search."""
    book = ledger(tmp_path, Budget(latency=0.9))
    book.run.model_path(2).unlink()
    final = {"dense": 4.0, 0: 3.9, 2: 2.4, 1: 2.9}
    timed: list[object] = []

    def time_model(model: nn.Module, repeats: int, cached: bool) -> float:
        assert repeats == 50 and not cached
        timed.append(model.name)  # type: ignore[attr-defined]
        return final[model.name]  # type: ignore[attr-defined,index]

    def build(record: TrialRecord) -> nn.Module:
        model = nn.Identity()
        model.name = record.trial  # type: ignore[assignment]
        return model

    dense = nn.Identity()
    dense.name = "dense"  # type: ignore[assignment]
    book.remeasure(RECORDS, time_model, build, dense)
    assert book.run.read_scores("latency") == {0: 3.9, 1: 2.9, 2: 2.4}
    merged = book.merge(RECORDS)
    assert merged[0].state is TrialState.INFEASIBLE and "re-measured" in merged[0].fail_reason
    assert {r.trial for r in book.front(merged)} == {1, 2}
    assert timed[0] == "dense" and sorted(timed[1:]) == [0, 1, 2]
    assert book.budget.dense_latency_ms == 4.0 and book.run.read_budget()["axis"] \
        == "latency_ratio"
    assert book.run.read_baseline()["dense"]["latency_final_ms"] == pytest.approx(4.0)

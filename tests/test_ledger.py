"""autoprune.ledger: the front on the budget's axis, weights kept while the front may still change,
and the end-of-run re-timing of every front member (weights or not)."""

from __future__ import annotations

import pytest
from torch import nn

from autoprune.budget import ResolvedBudget
from autoprune.latency.guard import Timed
from autoprune.ledger import OVER_RETIMES, Ledger
from autoprune.pareto import non_dominated
from autoprune.plan import Budget
from autoprune.results import RunDir
from autoprune.trial import DRIFT_FLAG, HARD_LINE, TrialRecord, TrialState


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


def named(name: object) -> nn.Module:
    model = nn.Identity()
    model.name = name  # type: ignore[assignment]
    return model


def test_retiming_reaches_members_that_join_the_front_late(tmp_path):
    """Trial 0 turns out over the budget when timed again; trials 1 and 2 then join the front
    and are timed too (2 although its weights were dropped during the search), always beside
    the dense model, in one alternating session per pass."""
    book = ledger(tmp_path, Budget(latency=0.9))
    book.run.model_path(2).unlink()
    final = {"dense": 4.0, "0": 3.9, "2": 2.4, "1": 2.9}
    sessions: list[list[str]] = []

    def together(models: dict[str, nn.Module]) -> dict[str, Timed]:
        sessions.append(list(models))
        assert all(m.name == ("dense" if k == "dense" else int(k))  # type: ignore[attr-defined]
                   for k, m in models.items())
        return {k: Timed(final[k], 0.01 * final[k]) for k in models}

    book.remeasure(RECORDS, together, lambda r: named(r.trial), named("dense"))
    # then two more passes (OVER_RETIMES) before 0, over the budget each time, is dropped
    assert [s[:2] for s in sessions] == [["dense", "0"]] * (2 + OVER_RETIMES)
    assert all(sorted(s[2:]) == ["1", "2"] for s in sessions[1:])
    assert book.run.read_scores("latency") == {0: 3.9, 1: 2.9, 2: 2.4}
    assert book.run.read_remeasured().iqr["1"] == pytest.approx(0.029)
    merged = book.merge(RECORDS)
    assert merged[0].state is TrialState.INFEASIBLE and "re-measured" in merged[0].fail_reason
    assert {r.trial for r in book.front(merged)} == {1, 2}
    assert book.budget.dense_latency_ms == 4.0 and book.run.read_budget()["axis"] \
        == "latency_ratio"
    dense = book.run.read_baseline()["dense"]
    assert dense["latency_final_ms"] == pytest.approx(4.0)
    assert dense["latency_final_iqr_ms"] == pytest.approx(0.04)


def test_a_member_over_budget_on_one_pass_is_timed_again_and_kept_on_the_median(tmp_path):
    """Trial 0 times at 0.95 of dense on the first pass (budget 0.9), 0.86 and 0.85 on the
    next two: after two passes its median (0.905) is still over, after three (0.86) it is not;
    its figure is that median in the last pass's dense milliseconds and it stays on the front;
    no pass is taken once every member is within the budget."""
    book = ledger(tmp_path, Budget(latency=0.9))
    dense = [4.0, 4.4, 4.2]
    ratio0 = [0.95, 0.86, 0.85]
    passes: list[list[str]] = []

    def together(models: dict[str, nn.Module]) -> dict[str, Timed]:
        i = len(passes)
        passes.append(list(models))
        figures = {"dense": dense[i], "0": ratio0[i] * dense[i], "1": 0.7 * dense[i],
                   "2": 0.6 * dense[i]}
        return {k: Timed(figures[k], 0.02 * figures[k]) for k in models}

    book.remeasure(RECORDS, together, lambda r: named(r.trial), named("dense"))
    assert len(passes) == 3 and all(p[:2] == ["dense", "0"] for p in passes)
    latency = book.run.read_scores("latency")
    assert latency[0] == pytest.approx(0.86 * 4.2)  # the median of 0.95, 0.86, 0.85
    assert latency[1] == pytest.approx(0.7 * 4.2)
    assert book.run.read_baseline()["dense"]["latency_final_ms"] == 4.2
    assert book.run.read_remeasured().iqr["0"] == pytest.approx(0.02 * 0.86 * 4.2)
    merged = book.merge(RECORDS)
    assert merged[0].state is TrialState.COMPLETE
    assert {r.trial for r in book.front(merged)} == {0, 1, 2}


def test_final_figures_replace_search_flags_and_flag_slow_or_noisy_members(tmp_path):
    """A final figure over the dense one is flagged "slower than dense"; one whose CV is over
    the ledger's threshold "noisy"; a search-time "noisy" flag goes once a steady final figure
    replaces it; trials without a final figure keep theirs."""
    book = ledger(tmp_path, Budget(flops=0.6))
    records = [r.updated(latency_flag="noisy", latency_cv=0.5) for r in RECORDS]
    timed = {"dense": Timed(2.2, 0.02), "0": Timed(2.0, 0.01), "1": Timed(2.5, 0.02),
             "2": Timed(1.5, 0.6)}  # 2: CV 0.3
    book.remeasure(records, lambda models: {k: timed[k] for k in models},
                   lambda r: named(r.trial), named("dense"))
    merged = {r.trial: r for r in book.merge(records)}
    assert merged[0].latency_flag is None and merged[0].latency_cv == pytest.approx(
        0.01 / 1.349 / 2.0)
    assert merged[1].latency_flag == "slower than dense"
    assert merged[2].latency_flag == "noisy"
    assert merged[3].latency_flag == "noisy" and merged[3].latency_cv == 0.5  # not re-timed
    assert [merged[t].latency_ms for t in (0, 1, 2)] == [2.0, 2.5, 1.5]


def _retimed(tmp_path, moved: dict[str, float],
             forgive: bool = True) -> tuple[Ledger, list[TrialRecord], int]:
    """A front member (0) and two baselines (1, 2) searched at 0.75 / 0.80 / 0.825 of a dense
    4 ms under a 0.85 budget, re-timed with their ratios to dense multiplied by ``moved``
    (``forgive``: the ledger's ``forgive_drift``); returns the ledger, the records and the
    number of passes."""
    records = [full(0, 0.90, 0.5, 3.0), full(1, 0.85, 0.5, 3.2).updated(baseline="uniform-l2"),
               full(2, 0.80, 0.5, 3.3).updated(baseline="global-l2")]
    run = RunDir.create(tmp_path / "run")
    run.write_baseline({"dense": {"latency_ms": 4.0}})
    book = Ledger(run, ResolvedBudget(Budget(latency=0.85), 100.0, 10.0, dense_latency_ms=4.0),
                  forgive_drift=forgive)
    passes = []

    def together(models: dict[str, nn.Module]) -> dict[str, Timed]:
        passes.append(list(models))
        dense = 5.0  # the re-timing's dense figure differs from the search's: ratios matter
        return {k: Timed(dense * (1.0 if k == "dense" else moved[k] * r.latency_ms / 4.0), 0.0)
                for k, r in [("dense", None), *((str(r.trial), r) for r in records)]
                if k in models}

    book.remeasure(records, together, lambda r: named(r.trial), named("dense"))
    return book, book.merge(records), len(passes)


def test_models_over_the_budget_only_by_what_every_model_re_timed_moved_are_kept_flagged(
        tmp_path):
    """Every model re-times 10 % slower relative to dense than the search timed it: the two
    baselines land over the budget (0.88, 0.91 of dense against 0.85) but moved no more than
    the rest, so they stay, flagged with the drift; a model that moved further than the
    median move, beyond the budget, is dropped and says so."""
    book, merged, _ = _retimed(tmp_path / "common", {"0": 1.1, "1": 1.1, "2": 1.1})
    assert book.run.read_remeasured().drift == pytest.approx(1.1)
    assert [r.state for r in merged] == [TrialState.COMPLETE] * 3
    assert merged[0].latency_flag is None and merged[0].latency_ms == pytest.approx(0.825 * 5)
    assert merged[1].latency_flag == f"{DRIFT_FLAG} (x1.100)"
    assert merged[2].latency_ms == pytest.approx(0.9075 * 5)
    book, merged, _ = _retimed(tmp_path / "one", {"0": 1.1, "1": 1.1, "2": 1.2})
    assert merged[1].state is TrialState.COMPLETE
    assert merged[2].state is TrialState.INFEASIBLE and "(x1.100)" in merged[2].fail_reason


def test_a_hard_latency_budget_drops_what_the_drift_would_keep(tmp_path):
    """--no-latency-drift: the same common x1.1 move as above is measured and written, but the
    two baselines over the budget are dropped after the extra passes, their fail_reason naming
    the move and the flag; the member still under the budget stays, unflagged."""
    book, merged, passes = _retimed(tmp_path, {"0": 1.1, "1": 1.1, "2": 1.1}, forgive=False)
    assert book.run.read_remeasured().drift == pytest.approx(1.1)
    assert passes == 1 + OVER_RETIMES
    assert [r.state for r in merged] == [TrialState.COMPLETE, *[TrialState.INFEASIBLE] * 2]
    assert merged[0].latency_flag is None
    assert all(r.fail_reason.endswith(f"(the re-timed models moved x1.100; {HARD_LINE})")
               for r in merged[1:])


def test_the_drift_is_the_median_move_not_the_least(tmp_path):
    """Moves x1.02 / x1.06 / x1.07 (as a loaded MobileNetV2 search's re-timing spread them):
    the drift is the median, x1.06, so the baseline searched at 0.97 of the budget and moved
    with the rest (0.883 of dense against 0.85) is kept, flagged; the least move (x1.02) would
    have dropped it. Two of three models moving x1.1 while one got faster is a drift too."""
    book, merged, _ = _retimed(tmp_path / "spread", {"0": 1.02, "1": 1.06, "2": 1.07})
    assert book.run.read_remeasured().drift == pytest.approx(1.06)
    assert [r.state for r in merged] == [TrialState.COMPLETE] * 3
    assert merged[2].latency_ms / 5 == pytest.approx(0.825 * 1.07)
    assert merged[2].latency_flag == f"{DRIFT_FLAG} (x1.060)"
    book, merged, _ = _retimed(tmp_path / "two", {"0": 0.98, "1": 1.1, "2": 1.1})
    assert book.run.read_remeasured().drift == pytest.approx(1.1)
    assert [r.state for r in merged] == [TrialState.COMPLETE] * 3


def test_without_a_common_drift_the_budget_holds_as_measured(tmp_path):
    """Only one model re-timed slower than searched (x1.1; the others x0.99, x1.0): no drift
    (1), the one over the budget is dropped, after the extra passes; fewer than
    DRIFT_MIN_MODELS timed: no drift either."""
    from autoprune.ledger import DRIFT_MIN_MODELS

    book, merged, passes = _retimed(tmp_path / "down", {"0": 0.99, "1": 1.0, "2": 1.1})
    assert book.run.read_remeasured().drift == 1.0 and passes == 1 + OVER_RETIMES
    assert [r.state for r in merged] == [*[TrialState.COMPLETE] * 2, TrialState.INFEASIBLE]
    assert "beyond" not in merged[2].fail_reason
    assert DRIFT_MIN_MODELS == 3
    run = RunDir.create(tmp_path / "two" / "run")
    run.write_baseline({"dense": {"latency_ms": 4.0}})
    book = Ledger(run, ResolvedBudget(Budget(latency=0.85), 100.0, 10.0, dense_latency_ms=4.0))
    records = [full(0, 0.9, 0.5, 3.0), full(1, 0.85, 0.5, 3.2).updated(baseline="uniform-l2")]
    book.remeasure(records, lambda models: {k: Timed(4.0 if k == "dense" else 3.6, 0.0)
                                            for k in models},
                   lambda r: named(r.trial), named("dense"))
    assert book.run.read_remeasured().drift == 1.0
    assert all(r.state is TrialState.INFEASIBLE for r in book.merge(records))


def test_common_drift_is_the_median_of_each_models_median_move():
    """Oracle by hand: each model's move is the median of its passes' ratios over its search
    ratio (a: 0.55/0.5 = 1.1, b: 0.6/0.5 = 1.2, c: 0.4/0.4 = 1.0); the drift is their median,
    floored at 1, and 1 with fewer than DRIFT_MIN_MODELS models or a search figure missing."""
    from autoprune.ledger import common_drift

    searched = {"a": 0.5, "b": 0.5, "c": 0.4}
    ratios = {"a": [0.5, 0.55, 0.6], "b": [0.6], "c": [0.4, 0.4]}
    assert common_drift(ratios, searched) == pytest.approx(1.1)
    assert common_drift({k: [v * 0.9] for k, v in searched.items()}, searched) == 1.0
    assert common_drift({"a": [0.6], "b": [0.6]}, searched) == 1.0
    assert common_drift({**ratios, "d": [9.0]}, searched) == pytest.approx(1.1)  # d: unsearched

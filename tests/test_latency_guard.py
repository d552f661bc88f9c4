"""autoprune.latency.guard and the run's timer: noisy timings are taken again and flagged, the
end of a run re-times dense, baselines and front together, and the report shows those figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_search import FAST, cli

from autoprune.latency.guard import Timed, guarded, robust_cv
from autoprune.report import terminal_summary
from autoprune.report_data import load, ms, summary_rows
from autoprune.results import RunDir


def test_robust_cv_is_iqr_over_1349_median():
    assert robust_cv(2.0, 0.2698) == pytest.approx(0.1)
    assert robust_cv(None, 1.0) is None and robust_cv(0.0, 1.0) is None
    assert robust_cv(1.0, None) is None


def test_guarded_stops_at_the_first_steady_timing():
    calls: list[int] = []

    def take(k: int) -> tuple[float, float]:
        calls.append(k)
        return 1.0, 0.01

    assert guarded(take, max_cv=0.1) == Timed(1.0, 0.01, 1, False)
    assert calls == [1]


def test_guarded_retakes_with_more_runs_and_keeps_the_steadiest():
    figures = iter([(2.0, 2.0), (1.0, 0.05), (3.0, 1.0)])  # CVs 0.74, 0.037, 0.25
    calls: list[int] = []

    def take(k: int) -> tuple[float, float]:
        calls.append(k)
        return next(figures)

    assert guarded(take, max_cv=0.1) == Timed(1.0, 0.05, 2, False)
    assert calls == [1, 2]  # stopped once a steady one came


def test_guarded_flags_a_timing_that_stays_noisy_after_its_retries():
    figures = iter([(2.0, 2.0), (1.0, 0.5), (3.0, 3.0)])  # CVs 0.74, 0.37, 0.74

    timed = guarded(lambda k: next(figures), max_cv=0.1, retries=2)
    assert timed == Timed(1.0, 0.5, 3, True)  # the steadiest of three, flagged
    assert timed.cv == pytest.approx(0.5 / 1.349)


@pytest.mark.parametrize("bad", [{"max_cv": 0.0}, {"retries": -1}])
def test_guarded_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        guarded(lambda k: (1.0, 0.0), **bad)


def _burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


@pytest.mark.xdist_group("multicore")  # see tests/conftest.py: it loads every core on purpose
@pytest.mark.slow
def test_search_beside_a_cpu_burner_retimes_noisy_figures_and_reports_the_final_dense(tmp_path):
    """Issue 13's check: a search while CPU-burning processes compete. With a CV threshold no
    timing can meet (0.001), every figure is taken again twice and flagged noisy, in
    latency_log.jsonl, trials.csv and the terminal; the report's dense latency is the final
    re-timing's, taken beside the front (not the first timing)."""
    burners = _burners(2)
    try:
        proc = cli("search", "--budget-flops", "0.5", "--trials", "2", "--latency-max-cv",
                   "0.001", "--out", "run", *FAST, cwd=tmp_path)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert proc.returncode == 0, proc.stderr
    run = RunDir.open(tmp_path / "run")
    log = run.read_timing_log()
    candidates = [t for e in log for k, t in e["timings"].items() if k == "candidate"]
    assert candidates and all(t["attempts"] == 3 and t["noisy"] for t in candidates)
    final = log[-1]["timings"]  # the end-of-run re-timing: dense beside the front
    front = {str(f["trial"]) for f in run.read_front()}
    assert "dense" in final and front <= set(final)
    remeasured = json.loads(run.remeasured_path.read_text())
    dense = run.read_baseline()["dense"]
    assert remeasured["dense"] == final["dense"]["ms"] == dense["latency_final_ms"]
    assert dense["latency_final_ms"] != dense["latency_ms"]  # two timings, the final one shown
    view = load(run)
    assert view.dense_latency == pytest.approx(final["dense"]["ms"])
    rows = summary_rows(view)
    assert rows[0].latency_ms == pytest.approx(final["dense"]["ms"])
    assert rows[0].latency_iqr == pytest.approx(final["dense"]["iqr_ms"])
    for row in rows[1:]:  # every front member / baseline: its final figure, flagged noisy
        assert row.latency_ms == pytest.approx(final[str(row.trial)]["ms"])
        assert "noisy" in (row.latency_flag or "")
    flagged = [r for r in run.read_trials() if r.latency_ms is not None]
    assert flagged and all("noisy" in (r.latency_flag or "") for r in flagged)
    assert "stayed noisy" in proc.stdout and "stayed noisy" in terminal_summary(str(run.path))
    html = Path(run.report_path).read_text(encoding="utf-8")
    assert f"{ms(final['dense']['ms'])} ms" in html and "noisy" in html


def test_a_cached_noisy_figure_is_taken_again_not_trusted(tmp_path):
    import torch
    from torch import nn

    from autoprune.stages import Timer

    timer = Timer(RunDir(tmp_path), torch.randn(1, 4), "cpu")
    figures = iter([(0.48, 0.3)] * 3 + [(0.20, 0.004)])  # noisy three times, then steady
    calls = []

    def fake(models, rounds, repeats):
        calls.append(repeats)
        return {label: next(figures) for label in models}

    timer.alternating = fake  # type: ignore[method-assign]
    model = nn.Linear(4, 2)
    first = timer(model)
    assert first.noisy and first.ms == 0.48 and len(calls) == 3
    second = timer(nn.Linear(4, 2))  # the same shape: a cache hit, but a noisy one
    assert not second.noisy and second.ms == 0.20 and len(calls) == 4
    third = timer(model)  # now steady in the cache: no timing
    assert third.ms == 0.20 and len(calls) == 4


def test_a_candidate_is_timed_beside_the_dense_model_and_scaled_to_its_reference(tmp_path):
    """With a reference, a candidate's figure is its ratio to the dense model timed in the same
    alternating rounds, times the run's dense latency: a machine running 10 % slower than when
    the dense model was first timed leaves the candidate's share of the budget unchanged."""
    import torch
    from torch import nn

    from autoprune.stages import REFERENCE, REFERENCE_ROUNDS, Timer

    dense, candidate = nn.Linear(4, 8), nn.Linear(4, 2)
    timer = Timer(RunDir(tmp_path), torch.randn(1, 4), "cpu", reference=(dense, 0.40))
    calls = []

    def slower(models, rounds, repeats):  # now 10 % slower than the reference's 0.40 ms
        calls.append((dict(models), rounds))
        return {REFERENCE: (0.44, 0.004), "candidate": (0.22, 0.002)}

    timer.alternating = slower  # type: ignore[method-assign]
    timed = timer(candidate)
    assert timed.ms == pytest.approx(0.20) and timed.iqr_ms == pytest.approx(0.002 / 1.1)
    ((models, rounds),) = calls
    assert models == {REFERENCE: dense, "candidate": candidate} and rounds == REFERENCE_ROUNDS
    from autoprune.latency import shape_signature

    assert timer.prepared._pinned == {shape_signature(dense)}  # never evicted by a candidate


def test_a_retimed_figure_keeps_its_ratio_to_the_reference_it_was_timed_beside():
    """Oracle by hand: a noisy candidate re-timed while the machine runs 20 % slower keeps the
    ratio of its re-timing (0.30 / 0.48), in the first timing's reference (0.40): 0.25 ms,
    not the 0.30 ms it read under the heavier load."""
    from autoprune.latency.guard import merge_retimed

    found = {"dense": Timed(0.40, 0.004), "a": Timed(0.20, 0.08), "b": Timed(0.10, 0.001)}
    out = merge_retimed(found, {"dense": (0.48, 0.0096), "a": (0.30, 0.003)}, "dense")
    assert out["a"].ms == pytest.approx(0.25) and out["a"].iqr_ms == pytest.approx(0.0025)
    assert out["dense"].ms == 0.40 and out["b"] == found["b"]
    assert (out["dense"].attempts, out["a"].attempts, out["b"].attempts) == (2, 2, 1)
    # the reference steadier the second time: every ratio is expressed in its new figure
    noisy_ref = {"dense": Timed(0.40, 0.2), "a": Timed(0.20, 0.002)}
    out = merge_retimed(noisy_ref, {"dense": (0.50, 0.005)}, "dense")
    assert out["dense"].ms == 0.50 and out["a"].ms == pytest.approx(0.25)
    # a re-timing noisier than the first figure is not taken
    out = merge_retimed(found, {"dense": (0.48, 0.0096), "a": (0.30, 0.3)}, "dense")
    assert out["a"].ms == pytest.approx(0.20)


def test_together_retimes_noisy_models_in_the_first_timings_frame(tmp_path):
    """Timer.together under a load that grows between the first timing and the re-timing of a
    noisy model: the model's figure stays its ratio to dense times dense's figure."""
    import torch
    from torch import nn

    from autoprune.stages import Timer

    timer = Timer(RunDir(tmp_path), torch.randn(1, 4), "cpu")
    answers = iter([{"dense": (0.40, 0.004), "m": (0.20, 0.1)},  # m noisy
                    {"dense": (0.60, 0.012), "m": (0.36, 0.0036)}])  # 1.5x the load
    timer.alternating = lambda models, rounds, repeats: next(answers)  # type: ignore[method-assign]
    out = timer.together({"dense": nn.Linear(4, 8), "m": nn.Linear(4, 2)})
    assert out["dense"].ms == 0.40 and out["m"].ms == pytest.approx(0.24)
    assert not out["m"].noisy

"""The Ray Tune backend: lazy import, outcome states through Ray, and a digits search end to end.

Skipped (with the reason shown by ``-ra``) when Ray is not installed; in CI (env ``CI`` set),
where ``autoprune[ray]`` is installed, a missing Ray is a failure instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch_pruning as tp

try:
    import ray
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs autoprune[ray]: a missing Ray must fail there, not skip
    pytest.skip('Ray is not installed (pip install "autoprune[ray]")', allow_module_level=True)

import autoprune as ap
from autoprune.backends.optuna import Outcome, ParamSpec, make_storage
from autoprune.backends.ray import RayBackend
from autoprune.errors import BackendUnavailable
from autoprune.evaluate import FinetuneSettings
from autoprune.plan import Budget
from autoprune.results import COLUMNS, RunDir
from autoprune.runner import STUDY, resolved_config
from autoprune.searcher import Search, SearchSettings
from autoprune.space import load_space

ROOT = Path(ap.__file__).resolve().parent.parent
FILES = ("config.yaml", "baseline.json", "study.journal", "trials.csv", "front.csv",
         "front.json", "plans", "ray/tune")
DIRECTIONS = ("maximize", "minimize")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs, no dashboard, token auth off) for this module."""
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # new local clusters enable token auth by default
    if ray.is_initialized():
        ray.shutdown()
    # workers import the same autoprune as this process, whatever is installed globally
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


def test_import_does_not_import_ray():
    code = "import sys, autoprune.backends.ray; assert 'ray' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_missing_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(BackendUnavailable, match=r'pip install "autoprune\[ray\]"'):
        RayBackend(make_storage(None, tmp_path / "study.journal"), STUDY, "tpe", 0, DIRECTIONS,
                   run_dir=tmp_path)


def test_outcome_states_through_ray(local_ray, tmp_path):
    """COMPLETE / INFEASIBLE / FAIL outcomes, an exception and a dead worker, in order."""

    def evaluate(params, number, attrs):  # nested: pickled by value for the workers
        import os

        if number == 3:
            raise ValueError("boom")
        if number == 4:
            os._exit(1)  # the worker dies
        rec = {"flops_ratio": params["level"], "fidelity": 1.0, "seconds": 0.1,
               "plan": {"ratios": {"conv.1": 0.5}}, **attrs}
        if number == 1:
            return Outcome("INFEASIBLE", (0.0, params["level"]), 0.25,
                           {**rec, "fail_reason": "over"})
        if number == 2:
            return Outcome("FAIL", None, 0.0, {**rec, "fail_reason": "diverged"})
        return Outcome("COMPLETE", (0.5 + params["level"], params["level"]), 0.0,
                       {**rec, "val_acc": 0.5 + params["level"]})

    specs = [ParamSpec("level", 0.1, 0.9)]
    backend = RayBackend(make_storage(None, tmp_path / "study.journal"), STUDY, "tpe", 0,
                         DIRECTIONS, run_dir=tmp_path, max_concurrent=1)
    backend.enqueue({"level": 0.4}, {"baseline": "uniform-l2"})
    backend.enqueue({"level": 0.3}, {"baseline": "global-l2"})
    seen = []
    backend.optimize(specs, evaluate, 5, on_trial=lambda: seen.append(backend.done()))
    assert seen == [1, 2, 3, 4, 5]
    assert backend.done() == 5
    # a new backend on the same run reads the same records (the study is the record)
    reopened = RayBackend(make_storage(None, tmp_path / "study.journal"), STUDY, "tpe", 0,
                          DIRECTIONS, run_dir=tmp_path)
    for b in (backend, reopened):
        records = b.records()
        assert [r.trial for r in records] == [0, 1, 2, 3, 4]
        assert [r.state for r in records] == ["COMPLETE", "INFEASIBLE", "FAIL", "FAIL", "FAIL"]
        assert [r.baseline for r in records[:3]] == ["uniform-l2", "global-l2", None]
        assert records[0].searched == {"level": 0.4} and records[1].searched == {"level": 0.3}
        assert records[0].val_acc == pytest.approx(0.9) and records[0].fidelity == 1.0
        assert records[0].plan == {"ratios": {"conv.1": 0.5}}
        assert records[1].fail_reason == "over" and records[2].fail_reason == "diverged"
        assert "ValueError: boom" in records[3].fail_reason
        assert "errored" in records[4].fail_reason
    study = optuna.load_study(study_name=STUDY, storage=make_storage(
        None, tmp_path / "study.journal"))
    assert study.trials[1].constraints == {"budget": 0.25}
    assert (tmp_path / "ray" / "tune" / "trial_0").is_dir()


def dominated_oracle(points: list[tuple[float, float]]) -> set[int]:
    out = set()
    for i, (a, c) in enumerate(points):
        for j, (a2, c2) in enumerate(points):
            if j != i and a2 >= a and c2 <= c and (a2 > a or c2 < c):
                out.add(i)
    return out


def run_digits(out: Path, trials: int) -> tuple[Search, RayBackend]:
    """What autoprune.runner.run_search does, with the Ray backend."""
    from autoprune.tasks import load_task

    budget, space = Budget(flops=0.4), load_space("default")
    ft, settings = FinetuneSettings(steps=10, bn_batches=4), SearchSettings(progress=False)
    task = load_task("digits")
    model, example = task.dense_model(), task.example_inputs()
    run = RunDir.create(out)
    run.write_config(resolved_config({"task": {"spec": "digits"}}, budget, trials, settings,
                                     space, ft))
    search = Search(model, example, task.evaluate, task.splits().train, budget, run,
                    getattr(task, "finetune", None), space, ft, settings)
    search.bind_baseline(search.baseline())
    backend = RayBackend(make_storage(None, run.journal_path), STUDY, settings.sampler,
                         settings.seed, DIRECTIONS, run_dir=run.path, cpus_per_trial=1)
    for params, attrs in search.baseline_params():
        backend.enqueue(params, attrs)
    backend.optimize(search.specs(), search.evaluate_trial, trials,
                     lambda: search.write(backend.records()))
    search.write(backend.records())
    search.remeasure_front(backend.records())
    records = search.write(backend.records())
    search.score_front_on_test(search.front_of(records))
    search.write(backend.records())
    return search, backend


@pytest.mark.slow
def test_digits_search_through_ray(local_ray, tmp_path):
    run_dir, trials, budget = tmp_path / "run", 4, 0.4
    run_digits(run_dir, trials)  # ~25 s on 2 idle CPUs (Ray already started by the fixture)
    for name in FILES:
        assert (run_dir / name).exists(), name
    records = RunDir.open(run_dir).read_trials()
    header = (run_dir / "trials.csv").read_text().splitlines()[0].split(",")
    assert tuple(header[: len(COLUMNS)]) == COLUMNS
    # rows consistent with the journal Ray's OptunaSearch wrote
    study = optuna.load_study(study_name=STUDY, storage=make_storage(
        None, run_dir / "study.journal"))
    journal = {t.number: t for t in study.trials}
    assert sorted(journal) == [r.trial for r in records] == list(range(trials))
    for r in records:
        t = journal[r.trial]
        assert r.searched == pytest.approx(t.params)
        if r.state == "COMPLETE":
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.values[0] == pytest.approx(r.val_acc)
            assert r.flops_ratio <= budget * 1.01
            assert r.fidelity == 1.0
    assert sum(r.state in ("COMPLETE", "FAIL") for r in records) == trials
    # the baselines ran first
    assert [r.baseline for r in records[:2]] == ["uniform-l2", "global-l2"]
    # the front is exactly the non-dominated set of completed trials, scored on test
    complete = [r for r in records if r.state == "COMPLETE"]
    dominated = dominated_oracle([(r.val_acc, r.flops_ratio) for r in complete])
    expected = {r.trial for i, r in enumerate(complete) if i not in dominated}
    front = json.loads((run_dir / "front.json").read_text())
    assert {f["trial"] for f in front} == expected and expected
    assert all(f["test_acc"] is not None for f in front)
    for f in front:  # weights written by the workers, in the run directory
        assert (run_dir / "models" / f"trial_{f['trial']}.pt").is_file()
    # plans written by the workers replay to the recorded MACs on the real dense model
    from autoprune.tasks import load_task

    task = load_task("digits")
    dense, x = task.dense_model(), task.example_inputs()
    for r in records[:2]:
        plan = ap.PruningPlan.from_json((run_dir / "plans" / f"{r.trial}.json").read_text())
        macs, _ = tp.utils.count_ops_and_params(ap.apply_plan(dense, x, plan), x)
        assert macs == pytest.approx(r.macs)

"""The Ray Tune backend: lazy import, outcome states through Ray, and a digits search end to end.

Skipped (with the reason shown by ``-ra``) when Ray is not installed; in CI (env ``CI`` set),
where ``autoprune[ray]`` is installed, a missing Ray is a failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

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
from autoprune.runner import STUDY

ROOT = Path(ap.__file__).resolve().parent.parent
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

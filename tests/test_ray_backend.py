"""The Ray backend: lazy import, stage jobs as Ray tasks (failures included), and the same staged
search as the Optuna backend: same trials, states, fidelities and scores for the same seed.

Skipped (with the reason shown by ``-ra``) when Ray is not installed; in CI (env ``CI`` set),
where ``autoprune[ray]`` is installed, a missing Ray is a failure instead.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:
    import ray
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs autoprune[ray]: a missing Ray must fail there, not skip
    pytest.skip('Ray is not installed (pip install "autoprune[ray]")', allow_module_level=True)

import autoprune as ap
from autoprune.backends.optuna import make_storage
from autoprune.backends.ray import RayBackend
from autoprune.errors import BackendUnavailable
from autoprune.results import RunDir

# Ray takes 2 CPUs, and `ray stop --force` ends every Ray on the machine (see tests/conftest.py)
pytestmark = pytest.mark.xdist_group("multicore")

ROOT = Path(ap.__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs, no dashboard, token auth off) for this module."""
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # new local clusters enable token auth by default
    if ray.is_initialized():
        ray.shutdown()
    # workers import the same autoprune (and these test modules) as this process
    path = os.pathsep.join(p for p in (str(ROOT), str(TESTS), os.environ.get("PYTHONPATH"))
                           if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
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
        RayBackend(make_storage(None, tmp_path / "study.journal"), "autoprune", "tpe", 0)


class Jobs:
    """A job owner as the stages are: put into the object store once, called per item."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    def run(self, item: int) -> tuple[int, int]:
        if item == 3:
            raise ValueError("boom")
        if item == 4:
            os._exit(1)  # the worker dies
        return item + self.offset, os.getpid()


def test_map_runs_jobs_as_ray_tasks_and_returns_failures_in_place(local_ray, tmp_path):
    backend = RayBackend(make_storage(None, tmp_path / "study.journal"), "autoprune", "tpe", 0)
    out = backend.map(Jobs(10).run, [0, 1, 2, 3, 4])
    assert [o[0] for o in out[:3]] == [10, 11, 12]
    assert all(pid != os.getpid() for _, pid in out[:3])  # not in this process
    assert isinstance(out[3], ray.exceptions.RayError) and "boom" in str(out[3])
    assert isinstance(out[4], ray.exceptions.RayError)
    assert backend.map(Jobs(0).run, []) == []
    backend.close()
    assert ray.is_initialized()  # a Ray it did not start stays up


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_staged_search_on_ray_records_what_optuna_records(local_ray, tmp_path):
    """Same seed and settings: the same trials, SCREENED states, fidelities, plans and scores
    whether the stage jobs run in this process or as Ray tasks."""
    from test_generations import Net, _score, steps_finetune

    loader = [(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(i)),
               torch.tensor([0, 1, 2, 0])) for i in range(2)]
    results = {}
    for backend in ("optuna", "ray"):
        settings = ap.SearchSettings(progress=False, latency=False, screen=3, short_fidelity=0.25,
                                     promote=2, generation=2, levels=2, seed=5, backend=backend)
        torch.manual_seed(0)  # the same dense weights: the global-ranking baseline reads them
        results[backend] = ap.search(
            Net(), torch.zeros(1, 1, 8, 8), evaluate=_score, finetune=steps_finetune,
            train_loader=loader, budget=ap.Budget(flops=0.5), trials=4,
            run_dir=tmp_path / backend, settings=settings, space=ap.SearchSpace(round_to=1),
            finetune_settings=ap.FinetuneSettings(steps=8, bn_batches=1))

    def view(result: ap.SearchResult) -> list[tuple]:
        return [(r.trial, r.state, r.fidelity, r.proxy_acc, r.short_acc, r.val_acc, r.baseline,
                 r.flops_ratio) for r in result.trials]

    optuna_view, ray_view = view(results["optuna"]), view(results["ray"])
    assert ray_view == optuna_view
    states = [row[1] for row in ray_view]
    assert states.count("COMPLETE") == 4 and states.count("SCREENED") == 8
    assert {row[2] for row in ray_view} == {0.0, 0.25, 1.0}
    assert [r.trial for r in results["ray"].front] == [r.trial for r in results["optuna"].front]
    models = RunDir(tmp_path / "ray").saved_models()  # weights written by the Ray workers
    assert {r.trial for r in results["ray"].front} <= set(models)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_ray_search_times_latency_serially_on_the_driver(local_ray, tmp_path):
    """Issue 13's check: stage jobs run as concurrent Ray tasks, but every latency (candidates
    and the end-of-run re-timing) is taken in this, the driver's, process, one at a time: no
    two timings in latency_log.jsonl overlap, so none is taken beside another timing (and the
    driver times between stages, not while its candidates train)."""
    from test_generations import Net, _score, steps_finetune

    loader = [(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(i)),
               torch.tensor([0, 1, 2, 0])) for i in range(2)]
    settings = ap.SearchSettings(progress=False, screen=2, short_fidelity=0.25, promote=2,
                                 generation=2, levels=1, seed=3, backend="ray")
    result = ap.search(Net(), torch.zeros(1, 1, 8, 8), evaluate=_score, finetune=steps_finetune,
                       train_loader=loader, budget=ap.Budget(flops=0.5), trials=4,
                       run_dir=tmp_path / "run", settings=settings,
                       space=ap.SearchSpace(round_to=1),  # 8-16 channels: distinct plans
                       finetune_settings=ap.FinetuneSettings(steps=8, bn_batches=1))
    log = RunDir(result.run_dir).read_timing_log()
    candidates = [e for e in log if "candidate" in e["timings"]]  # (a cached shape: not timed)
    assert len(candidates) >= 2 and "dense" in log[-1]["timings"]
    assert {e["pid"] for e in log} == {os.getpid()}
    spans = sorted((e["start"], e["end"]) for e in log)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    timed = [r for r in result.trials if r.is_full]
    assert timed and all(r.latency_ms is not None for r in timed)


@pytest.mark.slow
def test_cli_staged_search_on_an_existing_cluster(tmp_path):
    """`ray start --head` on loopback, then `autoprune search --backend ray --ray-address
    auto` joins it and finishes a small staged search (screened trials included)."""
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # socket paths: <= 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p),
           "RAY_TMPDIR": str(ray_tmp)}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    if ray.is_initialized():
        ray.shutdown()  # this process's own local instance would be joined instead
    start = subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1",
                            "--port", str(_free_port()), "--num-cpus", "2",
                            "--include-dashboard", "false",
                            "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "autoprune.cli", "search", "--backend", "ray",
             "--ray-address", "auto", "--budget-flops", "0.5", "--trials", "2",
             "--finetune-steps", "10", "--no-latency", "--quiet", "--out", str(tmp_path / "run")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    records = RunDir(tmp_path / "run").read_trials()
    states = [r.state for r in records]
    assert states.count("COMPLETE") == 2 and "SCREENED" in states
    assert {r.fidelity for r in records} >= {0.0, 1.0}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

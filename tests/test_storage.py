"""Many processes on one real PostgreSQL server (the multi-machine storage), on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autoprune.results import RunDir
from autoprune.storage_url import mask_url
from autoprune.trial import TrialState

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "postgres.sh"


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get("AUTOPRUNE_TEST_PG_URL")
    if url:
        return url
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must start PostgreSQL: {proc.stderr.strip()}")
        pytest.skip(f"no PostgreSQL server could be started here: {proc.stderr.strip()[:200]}")
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.xdist_group("multicore")  # see tests/conftest.py
@pytest.mark.slow
def test_two_workers_on_postgres(tmp_path, postgres_url):
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install 'autoprune[test]'")
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", "--budget-flops", "0.4", "--trials",
         "6", "--workers", "2", "--storage", postgres_url, "--out", "run",
         "--finetune-steps", "120", "--bn-batches", "4", "--quiet"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = RunDir.open(tmp_path / "run")
    config = run.read_config()
    assert config["search"]["storage"] == mask_url(postgres_url)  # never a password
    assert not (tmp_path / "run" / "study.journal").exists()  # the study lives on the server
    study = optuna.load_study(study_name=config["study_name"], storage=postgres_url)
    records = run.read_trials()
    assert sorted(t.number for t in study.trials) == sorted(r.trial for r in records)
    # exactly --trials full fine-tunes; a plan out of reach of its cost level is told COMPLETE
    # too (with its constraint violation, for the sampler) but recorded INFEASIBLE
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
            and t.user_attrs.get("state") != TrialState.INFEASIBLE.value]
    assert len(done) == 6 and sum(r.is_full for r in records) == 6
    assert len({t.user_attrs.get("worker") for t in study.trials}) == 2  # two processes
    for t in done:
        r = next(r for r in records if r.trial == t.number)
        assert r.val_acc == pytest.approx(t.values[0]) and r.flops_ratio <= 0.404
    front = run.read_front()
    assert front and all(f["test_acc"] is not None for f in front)


@pytest.mark.xdist_group("multicore")  # see tests/conftest.py
@pytest.mark.slow
def test_worker_from_another_machine_joins_by_storage_and_study(tmp_path, postgres_url):
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install 'autoprune[test]'")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "autoprune.cli", "search", "--budget-flops", "0.5", "--trials",
         "6", "--storage", postgres_url, "--out", "run", "--finetune-steps", "150",
         "--bn-batches", "4", "--quiet"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config = tmp_path / "run" / "config.yaml"
    import time

    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "run" / "baseline.json").exists():
        time.sleep(0.3)
    study = RunDir.open(tmp_path / "run").read_config()["study_name"]
    assert config.exists() and study
    time.sleep(2)  # the launcher publishes the run on the study right after its baseline
    worker = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "worker", "--storage", postgres_url, "--study",
         study, "--run-dir", str(tmp_path / "elsewhere")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert worker.returncode == 0, worker.stderr
    _, err = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, err
    trials = optuna.load_study(study_name=study, storage=postgres_url).trials
    hosts = {t.user_attrs.get("worker") for t in trials}
    assert len(hosts) == 2  # the launcher and the joined worker both ran trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
            and t.user_attrs.get("state") != TrialState.INFEASIBLE.value]
    assert len(done) == 6
    records = RunDir.open(tmp_path / "run").read_trials()  # results on the launching side
    assert sorted(r.trial for r in records) == sorted(t.number for t in trials)


@pytest.mark.slow
def test_journal_lock_of_a_killed_process_is_broken(tmp_path, monkeypatch):
    """A worker killed while it writes the journal leaves Optuna's symlink lock behind; with the
    journal opened by a relative path the lock is never broken (the link's relative target
    resolves beside the link, so Optuna's stale-lock stat fails) and every process spins."""
    monkeypatch.chdir(tmp_path)
    child = (
        "import os\n"
        "from pathlib import Path\n"
        "from autoprune.backends.optuna import make_storage\n"
        "storage = make_storage(None, Path('run/study.journal'))\n"
        "storage._backend._lock.acquire()\n"  # what a process killed mid-write leaves
        "os._exit(0)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    subprocess.run([sys.executable, "-c", child], check=True, timeout=60, env=env)
    assert os.path.lexists("run/study.journal.lock")
    from autoprune.backends.optuna import make_storage

    result = subprocess.run(  # a fresh process must get through within Optuna's 30 s grace
        [sys.executable, "-c", "from pathlib import Path\n"
         "import optuna\n"
         "from autoprune.backends.optuna import make_storage\n"
         "optuna.create_study(storage=make_storage(None, Path('run/study.journal')), "
         "study_name='s')\n"], timeout=90, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    names = optuna.get_all_study_names(make_storage(None, Path("run/study.journal")))
    assert names == ["s"]

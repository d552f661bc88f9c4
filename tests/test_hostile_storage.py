"""Hostile storage: damaged journals heal, storage passwords never reach a file or a message,
and a worker that dies on another machine is noticed by its heartbeat (issue 15)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from autoprune.backends.journal import heal, repair
from autoprune.storage_url import mask_url, resolve_password, scrub

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SEARCH = [sys.executable, "-m", "autoprune.cli", "search"]
SMALL = ["--budget-flops", "0.5", "--trials", "2", "--finetune-steps", "5", "--bn-batches", "2",
         "--quiet"]


def _cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _completed(journal: Path) -> dict[int, list[float]]:
    """COMPLETE trials (number -> values) that Optuna replays from a journal file."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="autoprune", storage=storage)
    return {t.number: list(t.values) for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE}


def _lines(journal: Path) -> list[bytes]:
    return journal.read_bytes().splitlines(keepends=True)


# -- the pure repair -------------------------------------------------------------------------
def _op(code: int, **fields: object) -> bytes:
    return json.dumps({"op_code": code, "worker_id": "w", **fields},
                      separators=(",", ":")).encode() + b"\n"


STUDY = _op(0, study_name="s", directions=[1])
TRIAL = _op(4, study_id=0, datetime_start=None, state=0)


def test_repair_keeps_a_clean_journal_whole():
    data = STUDY + TRIAL + _op(8, trial_id=0, user_attr={"a": 1})
    assert repair(data).kept == data and not repair(data).damaged


def test_repair_drops_a_partial_last_line():
    data = STUDY + TRIAL
    healed = repair(data + b'{"op_code":6,"trial_id":0,"st')
    assert healed.kept == data and healed.dropped == b'{"op_code":6,"trial_id":0,"st\n'
    assert healed.lines == 1


def test_repair_keeps_the_record_glued_after_a_fragment():
    """ENOSPC mid-write, then another process appends: fragment + whole record on one line."""
    attr = _op(8, trial_id=0, user_attr={"a": 1})
    healed = repair(STUDY + TRIAL + b'{"op_code":6,"tri' + attr)
    assert healed.kept == STUDY + TRIAL + attr and healed.dropped == b'{"op_code":6,"tri\n'


def test_repair_drops_a_garbage_line_and_keeps_consistent_records_after_it():
    after = TRIAL + _op(8, trial_id=1, user_attr={"b": 2})
    healed = repair(STUDY + TRIAL + b"garbage\n" + after)
    assert healed.kept == STUDY + TRIAL + after and healed.dropped == b"garbage\n"


def test_repair_cuts_at_a_lost_create_trial():
    """A damaged line that was a create_trial shifts every later trial id: keeping the records
    after it would pin them on the wrong trials, so the journal is cut there instead."""
    rest = b'{"op_code":4,"study_id":0,"dat\n' + _op(8, trial_id=1, user_attr={"b": 2})
    healed = repair(STUDY + TRIAL + rest)
    assert healed.kept == STUDY + TRIAL and healed.dropped == rest and healed.lines == 2


def test_heal_waits_for_the_journal_lock(tmp_path):
    from optuna.storages.journal import JournalFileSymlinkLock

    journal = tmp_path / "study.journal"
    journal.write_bytes(STUDY + b"{partial")
    lock = JournalFileSymlinkLock(str(journal.absolute()))
    lock.acquire()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (heal(journal), done.set()))
    worker.start()
    time.sleep(0.5)
    assert not done.is_set() and journal.read_bytes().endswith(b"{partial")  # waits
    lock.release()
    worker.join(timeout=30)
    assert done.is_set() and journal.read_bytes() == STUDY
    copies = list(tmp_path.glob("study.journal.damaged-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == b"{partial\n"


# -- damaged journals of a real search resume -------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("journal")
    proc = _cli([*SEARCH, *SMALL, "--out", "run"], base)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return base / "run"


def _breaks_optuna(damaged: bytes, copy: Path) -> None:
    """Without the heal, a process that appends to the journal and reads it back crashes
    (what every resume and worker did)."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    copy.write_bytes(damaged)
    with pytest.raises(ValueError):  # JSONDecodeError or "Invalid log format"
        storage = JournalStorage(JournalFileBackend(str(copy)))
        study = optuna.load_study(study_name="autoprune", storage=storage)
        study.set_user_attr("x", 1)
        study.set_user_attr("y", 2)
        _completed(copy)


def _complete_line(lines: list[bytes]) -> int:
    """Index of the journal line that tells the first trial COMPLETE."""
    return next(i for i, line in enumerate(lines)
                if json.loads(line)["op_code"] == 6 and json.loads(line).get("state") == 1)


def _truncated(lines: list[bytes]) -> tuple[bytes, int]:
    return b"".join(lines)[:-7], len(lines) - 1


def _garbage(lines: list[bytes]) -> tuple[bytes, int]:
    i = _complete_line(lines) + 1
    return b"".join(lines[:i]) + b"\x00\xffnot json at all\n" + b"".join(lines[i:]), len(lines)


def _enospc(lines: list[bytes]) -> tuple[bytes, int]:
    """The disk filled while the record after the first COMPLETE was written."""
    i = _complete_line(lines) + 1
    return b"".join(lines[:i]) + lines[i][: len(lines[i]) // 2], i


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_truncated, _garbage, _enospc])
def test_a_damaged_journal_resumes_with_every_completed_trial(finished_run, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    journal = run / "study.journal"
    lines = _lines(journal)
    damaged, good = damage(lines)
    oracle_file = tmp_path / "oracle.journal"  # what Optuna reads from the undamaged lines
    oracle_file.write_bytes(b"".join(lines[:good]))
    oracle = _completed(oracle_file)
    assert oracle  # the damage leaves at least one completed trial to keep
    journal.write_bytes(damaged)
    _breaks_optuna(damaged, tmp_path / "plain.journal")
    proc = _cli([*SEARCH, "--resume", "run", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [line for line in proc.stderr.splitlines() if "was damaged" in line]
    assert len(said) == 1 and "dropped" in said[0], proc.stderr
    after = _completed(journal)
    for number, values in oracle.items():  # every completed trial, same number and values
        assert after[number] == pytest.approx(values)
    assert len(list(run.glob("study.journal.damaged-*"))) == 1
    trials = (run / "trials.csv").read_text()
    assert all(f"\n{n}," in trials for n in oracle)
    # a worker opening the healed journal does not crash either
    from autoprune.backends.optuna import make_storage

    names = optuna.get_all_study_names(make_storage(None, journal))
    assert names == ["autoprune"]


# -- secrets ----------------------------------------------------------------------------------
def test_mask_url_hides_every_password_form():
    assert mask_url("postgresql+psycopg2://user:PW@host/db") == \
        "postgresql+psycopg2://user:***@host/db"
    assert mask_url("postgresql://u:p@ss/w@h:5/db") == "postgresql://u:***@h:5/db"
    assert mask_url("postgresql://u@h/db?sslmode=x&password=PW") == \
        "postgresql://u@h/db?sslmode=x&password=***"
    assert mask_url("postgresql://u@h:5432/db") == "postgresql://u@h:5432/db"
    assert mask_url("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"
    assert scrub("failed for S3c@t (S3c%40t)", "postgresql://u:S3c%40t@h/db") == \
        "failed for *** (***)"


def test_resolve_password_takes_the_given_url_then_the_environment(monkeypatch):
    masked = "postgresql+psycopg2://user:***@host:5/db"
    monkeypatch.delenv("AUTOPRUNE_STORAGE_PASSWORD", raising=False)
    assert resolve_password(masked) == "postgresql+psycopg2://user@host:5/db"  # libpq's turn
    monkeypatch.setenv("AUTOPRUNE_STORAGE_PASSWORD", "e@v")
    assert resolve_password(masked) == "postgresql+psycopg2://user:e%40v@host:5/db"
    other = "postgresql+psycopg2://user:given@otherhost:5/db"  # another server: not used
    assert resolve_password(masked, other) == "postgresql+psycopg2://user:e%40v@host:5/db"
    same = "postgresql+psycopg2://user:given@host:5/db"
    assert resolve_password(masked, same) == same


def test_an_unreachable_storage_prints_one_masked_line(tmp_path):
    proc = _cli([*SEARCH, *SMALL, "--out", "run", "--storage",
                 "postgresql+psycopg2://role:S3cretPW@127.0.0.1:9/nowhere"], tmp_path)
    assert proc.returncode == 2
    assert "S3cretPW" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "role:***@127.0.0.1:9" in lines[-1] and "Traceback" not in proc.stderr


# -- on a real PostgreSQL server --------------------------------------------------------------
from test_storage import postgres_url  # noqa: E402,F401  (the server fixture)

SECRET = "S3cretPW"


@pytest.fixture(scope="module")
def secret_url(postgres_url):  # noqa: F811
    """A role with a password and its own database (the CI server trusts loopback, so the
    password is accepted, and it must still never be written or printed)."""
    psycopg2 = pytest.importorskip("psycopg2")
    from sqlalchemy.engine import make_url

    base = make_url(postgres_url)
    conn = psycopg2.connect(host=base.host, port=base.port, user=base.username,
                            dbname=base.database)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'aprole'")
        if not cur.fetchone():
            cur.execute(f"CREATE ROLE aprole LOGIN PASSWORD '{SECRET}'")
        cur.execute("SELECT 1 FROM pg_database WHERE datname = 'apsecret'")
        if not cur.fetchone():
            cur.execute("CREATE DATABASE apsecret OWNER aprole")
    conn.close()
    return f"postgresql+psycopg2://aprole:{SECRET}@{base.host}:{base.port}/apsecret"


def _leaks(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.xdist_group("multicore")  # see tests/conftest.py
@pytest.mark.slow
def test_a_storage_password_is_never_written_nor_printed(tmp_path, secret_url):
    first = _cli([*SEARCH, *SMALL, "--workers", "2", "--storage", secret_url, "--out", "run"],
                 tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "aprole:***@127.0.0.1" in config
    resumed = _cli([*SEARCH, "--resume", "run", "--quiet"], tmp_path)  # the password from
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # libpq's sources (trust here)
    for proc in (first, resumed):
        assert SECRET not in proc.stdout + proc.stderr
    assert _leaks(tmp_path) == []
    storage = optuna.storages.RDBStorage(secret_url)
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        study_id = storage.get_study_id_from_name(summary.study_name)
        stored = [storage.get_study_user_attrs(study_id),
                  storage.get_study_system_attrs(study_id)] + \
            [[t.user_attrs, t.system_attrs] for t in study.trials]
        assert SECRET not in json.dumps(stored, default=str)


WORKER = ("import socket, sys\n"
          "socket.gethostname = lambda: 'other-machine'\n"  # reaped by heartbeat, not by pid
          "from autoprune.cli import main\n"
          "sys.exit(main(sys.argv[1:]))\n")


def _running_elsewhere(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.RUNNING
            and str(t.user_attrs.get("worker", "")).startswith("other-machine:")]


@pytest.mark.xdist_group("multicore")  # see tests/conftest.py
@pytest.mark.slow
def test_a_killed_remote_worker_is_failed_and_retried_within_the_grace_period(
        tmp_path, postgres_url):  # noqa: F811
    import datetime
    import signal

    from autoprune.results import RunDir

    env = {**ENV, "AUTOPRUNE_HEARTBEAT_INTERVAL": "1", "AUTOPRUNE_HEARTBEAT_GRACE": "3"}
    # 6 trials: with 4, a quiet machine's launcher had every slot taken before the joining
    # worker was up, and the worker finished 0 trials (2 runs in 4)
    launcher = subprocess.Popen(
        [*SEARCH, "--budget-flops", "0.5", "--trials", "6", "--storage", postgres_url, "--out",
         "run", "--finetune-steps", "150", "--bn-batches", "4", "--quiet"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "run" / "baseline.json").exists():
        time.sleep(0.3)
    name = RunDir.open(tmp_path / "run").read_config()["study_name"]
    time.sleep(2)  # the launcher publishes the run on the study right after its baseline
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, "worker", "--storage", postgres_url, "--study", name,
         "--run-dir", str(tmp_path / "elsewhere")],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    deadline = time.time() + 180
    while time.time() < deadline and not _running_elsewhere(study) and worker.poll() is None:
        time.sleep(0.2)
    assert _running_elsewhere(study), "the remote worker never ran a trial"
    time.sleep(1)
    worker.send_signal(signal.SIGKILL)
    killed_at = datetime.datetime.now()
    assert worker.wait(timeout=30) == -signal.SIGKILL
    _, err = launcher.communicate(timeout=600)  # no resume: the launcher carries on alone
    assert launcher.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name=name, storage=postgres_url).trials
    dead = [t for t in trials if str(t.user_attrs.get("worker", "")).startswith("other-")]
    assert dead and all(t.state == optuna.trial.TrialState.FAIL for t in dead)
    for t in dead:
        retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        plan = {**t.system_attrs.get("fixed_params", {}), **t.params}
        # once (not again by the resume logic); none for a trial killed before it had values
        assert len(retries) == (1 if plan else 0), t.number
        if plan:
            assert plan.items() <= retries[0].params.items() and retries[0].state.is_finished()
        failed_after = (t.datetime_complete - killed_at).total_seconds()
        assert failed_after <= 3 + 1 + 3  # grace + one beat + slack
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in trials]
    # a plan out of reach of its cost level is told COMPLETE too, but recorded INFEASIBLE
    assert len([t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.user_attrs.get("state") != "INFEASIBLE"]) == 6
    records = RunDir.open(tmp_path / "run").read_trials()
    assert all("heartbeat" in (r.fail_reason or "") for r in records if r.trial in
               {t.number for t in dead})


def test_a_finished_run_drops_its_queued_trials(tmp_path):
    """A retry still queued when the run reached its count (a dead worker's trial the others no
    longer needed) is failed, not left WAITING forever in a finished study."""
    from autoprune.backends.optuna import OptunaBackend, make_storage

    backend = OptunaBackend(make_storage(None, tmp_path / "study.journal"), "s", "tpe", 0)
    backend.enqueue({"a": 0.1}, {"retry_of": 3})
    assert backend.drop_queued("queued, not run") == 1
    (record,) = backend.records()
    assert record.state == "FAIL" and record.fail_reason == "queued, not run"
    assert backend.drop_queued("again") == 0  # nothing is queued any more


def _queued_baseline(storage: optuna.storages.BaseStorage, params: dict[str, float]) -> Any:
    """Study ``s`` on ``storage`` with one baseline (``params``) waiting in its queue."""
    from autoprune.backends.optuna import OptunaBackend

    backend = OptunaBackend(storage, "s", "tpe", 0)
    backend.enqueue(params, {"baseline": "uniform-l2"})
    return backend


def test_a_trial_whose_process_died_before_claiming_it_is_reaped(tmp_path, monkeypatch):
    """A worker killed between Optuna creating its trial (or popping it from the queue) and
    autoprune writing the trial's ``worker`` left it RUNNING with no owner; on a journal
    nothing reaped it, and the launcher waited for it forever (a CI hang of
    test_sigkill_one_of_two_workers). It is failed after the grace and its enqueued values
    retried; a fresh trial with no values is failed only (nothing to redo)."""
    from autoprune.backends import optuna as backend_module

    journal = tmp_path / "study.journal"
    backend = _queued_baseline(backend_module.make_storage(None, journal), {"a": 0.25})
    child = ("import optuna, sys\n"
             "from pathlib import Path\n"
             "from autoprune.backends.optuna import make_storage\n"
             "storage = make_storage(None, Path(sys.argv[1]))\n"
             "study = optuna.load_study(study_name='s', storage=storage)\n"
             "study.ask()\n"  # pops the queued trial
             "study.ask()\n"  # a fresh one
             "import os; os._exit(0)\n")  # killed before either is claimed
    subprocess.run([sys.executable, "-c", child, str(journal)], check=True, timeout=120, env=ENV)
    assert backend.slots().running == 2
    assert backend.reap() == 0  # within the grace: a live process may be claiming them
    monkeypatch.setattr(backend_module, "UNCLAIMED_GRACE_S", 0)
    assert backend.reap() == 2
    slots = backend.slots()
    assert (slots.running, slots.waiting, slots.done) == (0, 1, 0)
    retry = backend.ask([])
    assert retry.attrs.get("retry_of") == 0 and retry.attrs.get("baseline") == "uniform-l2"
    assert retry.handle._cached_frozen_trial.system_attrs["fixed_params"] == {"a": 0.25}


def test_a_remote_worker_killed_while_sampling_is_failed_by_its_heartbeat(tmp_path, monkeypatch):
    """A worker on another machine killed while its sampler drew a trial's values (after
    autoprune wrote the trial's ``worker``) left it RUNNING with no heartbeat: Optuna fails
    only trials whose heartbeat went stale, the pid check is this host's only, and the
    launcher waited for the trial forever (a CI hang of the killed-remote-worker test). The
    heartbeat now starts before the claim: the trial goes stale, is failed, and its enqueued
    values are retried."""
    from autoprune.backends import optuna as backend_module
    from autoprune.trial import ParamSpec

    url = f"sqlite:///{tmp_path / 'study.db'}"
    beat = {"AUTOPRUNE_HEARTBEAT_INTERVAL": "1", "AUTOPRUNE_HEARTBEAT_GRACE": "2"}
    for name, value in beat.items():  # this process's storage too: stale after 2 s, not 30
        monkeypatch.setenv(name, value)
    env = {**ENV, **beat}
    backend = _queued_baseline(backend_module.make_storage(url, tmp_path), {"level": 0.5})
    child = ("import os, socket, sys\n"
             "socket.gethostname = lambda: 'other-machine'\n"
             "import optuna\n"
             "from autoprune.backends.optuna import OptunaBackend, make_storage\n"
             "from autoprune.trial import ParamSpec\n"
             "backend = OptunaBackend(make_storage(sys.argv[1], None), 's', 'tpe', 0)\n"
             "def killed(*args, **kwargs):\n"
             "    os._exit(9)\n"  # SIGKILL while the sampler draws the free value
             "backend.study.sampler.sample_independent = killed\n"
             "backend.ask([ParamSpec('level', 0.0, 1.0, None), ParamSpec('g0', 0.0, 0.9, None)])\n")
    for _ in range(2):  # pops the enqueued baseline; then a fresh trial, killed with no value
        done = subprocess.run([sys.executable, "-c", child, url], env=env, timeout=120)
        assert done.returncode == 9
    dead, fresh = [t for t in backend.study.get_trials()
                   if t.state == optuna.trial.TrialState.RUNNING]
    assert dead.user_attrs["worker"].startswith("other-machine:")
    deadline = time.time() + 20
    while time.time() < deadline and backend.slots().running:
        time.sleep(0.5)
        backend.reap()
    slots = backend.slots()
    assert (slots.running, slots.waiting, slots.baselines) == (0, 1, 1)
    retry = backend.ask([ParamSpec("level", 0.0, 1.0, None), ParamSpec("g0", 0.0, 0.9, None)])
    assert retry.attrs.get("retry_of") == dead.number and retry.params["level"] == 0.5
    assert retry.attrs.get("baseline") == "uniform-l2"
    assert backend.study.trials[fresh.number].state == optuna.trial.TrialState.FAIL

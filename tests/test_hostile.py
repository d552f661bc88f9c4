"""Hostile and unlucky input (issue 15's probe as tests): every outcome is exit 0, 1 or 2 with
at most one stderr line and no traceback; nothing is lost, run twice, leaked or executed.

The probe's numbered items, and where each is tested (tests mirror the modules they check):
1. damaged journals heal ............ test_hostile_storage.py (unit + a real resume, 3 damages)
2. stored XSS ....................... test_hostile_report.py (payloads in every field, Chromium)
3. passwords ........................ test_hostile_storage.py (a real PostgreSQL role)
4. NaN models ....................... here (no completed trial: exit 1); test_hostile_archive.py
                                      and test_export.py (NaN is an export mismatch)
5. run folders execute code ......... here (task sha256, --trust-task, export/resume refuse)
6. resume gaps ...................... here (skipped baselines, refused flags, failed start,
                                      exclusive --out)
7. one line, not tracebacks ......... here (bad flags, space files, full disk, damaged files,
                                      hypothesis fuzz over flags and run files)
8. load_pruned on crafted archives .. test_hostile_archive.py (no code run, no network)
9. dead remote workers .............. test_hostile_storage.py (SIGKILL, heartbeat, retry)
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune.cli import main
from autoprune.results import RunDir

# a small real search: two full fine-tunes, no proxy or short stage, no latency
TINY = ["--budget-flops", "0.5", "--trials", "2", "--finetune-steps", "8", "--bn-batches", "2",
        "--screen", "0", "--short-fidelity", "0", "--no-latency", "--quiet"]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """``autoprune ARGV`` in this process: its exit code and its non-empty stderr lines."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    err = [line for line in err if "%|" not in line]  # a progress bar is not a message
    return code, err


def one_line_error(code: int, err: list[str], expect: int = 2) -> str:
    assert code == expect, err
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "internal error" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished small digits run (shared: tests copy it before changing anything)."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(["search", *TINY, "--out", str(out)]) == 0
    return out


BAD_FLAGS = [
    (["search", "--importance", "magic"], "--importance 'magic'"),
    (["search", "--promote", "nan"], "--promote nan"),
    (["search", "--promote", "inf"], "--promote inf"),
    (["search", "--seed", "99999999999999999999"], "--seed"),
    (["search", "--finetune-epochs", "inf"], "--finetune-epochs inf"),
    (["search", "--budget-latency-ms", "inf"], "--budget-latency-ms inf"),
    (["search", "--budget-flops", "0.4", "--budget-flops", "0.5"], "given twice"),
    (["search", "--lr", "nan"], "--lr nan"),
    (["search", "--trials", "0"], "--trials 0"),
    (["search", "--workers", "0"], "--workers 0"),
    (["inspect", "--num-classes", "0", "--model", "resnet18"], "--num-classes 0"),
    (["inspect", "--model", "resnet18", "--input", "1,3,99999,99999"], "too large"),
    (["export", "nowhere", "--trial", "1", "--sparsity", "nan"], "--sparsity nan"),
    (["worker", "--threads", "0"], "--threads 0"),
    (["worker", "--storage", "notaurl", "--study", "s"], "--storage 'notaurl'"),
    (["search", "--out", "/proc/autoprune-x"], "--out '/proc/autoprune-x' cannot be created"),
    (["search", "--out", "/etc/hostname/x"], "--out '/etc/hostname/x' cannot be created"),
]


@pytest.mark.parametrize("argv,needle", BAD_FLAGS, ids=[" ".join(a)[:40] for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_exit_2(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(*cli(capsys, *argv))
    assert needle in line, line
    assert not (tmp_path / "results").exists()  # nothing was started


SPACE_FILES = ["ratio: 5", "ratio: {step: abc}", "rules: 5", "round_to: abc", "ignore: 5",
               "rules: [{pattern: 5}]", "rules: [{pattern: 'a*', shared: maybe}]", "[1, 2",
               "ratio: {low: .nan}"]


@pytest.mark.parametrize("text", SPACE_FILES)
def test_space_file_with_wrong_types_is_one_line(capsys, tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.yaml").write_text(text + "\n")
    line = one_line_error(*cli(capsys, "search", "--space", "space.yaml", "--out", "run"))
    assert "space.yaml" in line
    assert not (tmp_path / "run").exists()


def test_task_that_exits_is_refused_and_leaves_no_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "task.py").write_text("import sys\nsys.exit(0)\n")
    line = one_line_error(*cli(capsys, "search", "--task", "task.py", "--out", "run", *TINY))
    assert "sys.exit(0)" in line
    # a failed start leaves no folder, so the corrected command can take the same --out
    assert not (tmp_path / "run").exists()


def test_out_is_claimed_exclusively(tmp_path):
    """Eight processes claim one --out at the same moment: exactly one gets it."""
    ctx = multiprocessing.get_context("fork")
    barrier, won = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path / "run"), barrier, won))
             for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(won.get(timeout=5) for _ in procs) == [False] * 7 + [True]


def _claim(path: str, barrier: object, won: object) -> None:
    from autoprune.errors import ConfigError
    from autoprune.run import claim_run_dir

    barrier.wait()  # type: ignore[attr-defined]
    try:
        claim_run_dir(Path(path))
        won.put(True)  # type: ignore[attr-defined]
    except ConfigError:
        won.put(False)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_resume_refuses_flags_that_change_the_run(capsys, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for flags in (["--budget-flops", "0.3"], ["--out", "other"], ["--lr", "0.5"],
                  ["--trials", "1"]):
        line = one_line_error(*cli(capsys, "search", "--resume", str(run), *flags))
        assert flags[0] in line, line
    assert not (tmp_path / "other").exists()


def _kill_before_priors(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt  # the process dies after the baseline, before any trial is enqueued


@pytest.mark.slow
def test_resume_enqueues_baselines_a_kill_skipped(capsys, tmp_path, monkeypatch):
    import autoprune.driver as driver

    run = tmp_path / "run"
    real_prime = driver.prime
    monkeypatch.setattr(driver, "prime", _kill_before_priors)
    code, _ = cli(capsys, "search", *TINY, "--out", str(run))
    assert code == 130 and RunDir(run).has_baseline()
    monkeypatch.setattr(driver, "prime", real_prime)
    code, err = cli(capsys, "search", "--resume", str(run), "--quiet")
    assert code == 0, err
    baselines = {r.baseline for r in RunDir(run).read_trials() if r.baseline}
    assert {"uniform-l2", "global-l2"} <= baselines


NAN_TASK = '''
import torch
from autoprune.tasks.digits import DigitsTask


def nan_finetune(model, steps):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))


task = DigitsTask()
task.finetune = nan_finetune
'''


@pytest.mark.slow
def test_no_completed_trial_is_exit_1_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nan_task.py").write_text(NAN_TASK)
    code, err = cli(capsys, "search", "--task", "nan_task.py", "--out", "run", *TINY)
    line = one_line_error(code, err, expect=1)
    assert "no trial completed" in line and "non-finite" in line, line
    assert not RunDir(tmp_path / "run").read_front()


@pytest.mark.slow
def test_changed_task_file_is_refused_unless_trusted(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = tmp_path / "my_task.py"
    task.write_text("from autoprune.tasks.digits import DigitsTask\ntask = DigitsTask()\n")
    assert cli(capsys, "search", "--task", "my_task.py", "--out", "run", *TINY)[0] == 0
    config = RunDir(tmp_path / "run").read_config()
    assert len(config["task"]["sha256"]) == 64
    task.write_text(task.read_text() + "print('changed')\n")
    line = one_line_error(*cli(capsys, "search", "--resume", "run"))
    assert "changed since the run started" in line and "--trust-task" in line
    line = one_line_error(*cli(capsys, "export", "run", "--trial", "0"))
    assert "changed since the run started" in line
    task.unlink()
    line = one_line_error(*cli(capsys, "search", "--resume", "run"))
    assert "missing" in line
    task.write_text("from autoprune.tasks.digits import DigitsTask\ntask = DigitsTask()\n")
    assert cli(capsys, "search", "--resume", "run", "--trust-task", "--quiet")[0] == 0


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return proc.returncode == 0


@pytest.mark.slow
def test_full_disk_is_one_line_and_resume_continues(capsys, tmp_path, monkeypatch):
    """A real small filesystem fills up mid-search: one line naming the file and the fix; after
    space is freed, --resume finishes with every completed trial intact."""
    disk = tmp_path / "disk"
    if sys.platform != "linux" or not _mount_tmpfs(disk, "160k"):
        pytest.skip("mounting a small tmpfs needs root on Linux")
    try:
        run = disk / "run"
        code, err = cli(capsys, "search", *TINY, "--trials", "6", "--out", str(run))
        line = one_line_error(code, err)
        assert line.startswith("autoprune: error: disk full while writing ") and \
            f"--resume {run}" in line, line
        done = {r.trial: r.val_acc for r in _completed(run)}
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        code, err = cli(capsys, "search", "--resume", str(run), "--quiet")
        assert code == 0, err
        after = {r.trial: r.val_acc for r in _completed(run)}
        assert all(after.get(t) == acc for t, acc in done.items())
        assert sum(r.is_full for r in RunDir(run).read_trials()) >= 6
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _completed(run: Path) -> list:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not (run / "study.journal").exists():
        return []
    storage = JournalStorage(JournalFileBackend(str(run / "study.journal")))
    study = optuna.load_study(study_name="autoprune", storage=storage)
    return [_Done(t.number, t.values[0]) for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE]


class _Done:
    def __init__(self, trial: int, val_acc: float) -> None:
        self.trial, self.val_acc = trial, val_acc


def test_damaged_config_named_by_report(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps(["not", "a", "mapping"]))
    line = one_line_error(*cli(capsys, "report", str(run)))
    assert "config.yaml" in line


# ---- property-based fuzz: flag values and damaged run files ------------------------------------

FUZZ_FLAGS = ["--budget-flops", "--budget-params", "--budget-latency", "--budget-latency-ms",
              "--trials", "--seed", "--lr", "--finetune-steps", "--finetune-epochs",
              "--bn-batches", "--screen", "--short-fidelity", "--promote", "--generation",
              "--levels", "--workers", "--latency-batch", "--sampler", "--importance", "--mode",
              "--device", "--space", "--optimizer", "--latency-dtype", "--backend"]
NASTY = ["nan", "inf", "-inf", "-1", "0", "1e309", "99999999999999999999", "0x10", "", " ",
         "1,5", "☃", "--", "-0.0", "1e-320", "null", "../../etc/passwd", "<script>"]


def _values() -> object:
    from hypothesis import strategies as st

    return st.one_of(st.sampled_from(NASTY), st.integers(-10**12, 10**12).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.text(max_size=12))


@pytest.mark.slow
def test_fuzz_search_flags_never_trace(capsys, tmp_path_factory):
    """Any values of the search's flags: exit 0/1/2, at most one stderr line, no traceback.
    --out names a folder that holds a run, so nothing valid ever starts a search."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    taken = tmp_path_factory.mktemp("fuzz") / "taken"
    taken.mkdir()
    (taken / "config.yaml").write_text("task: {spec: digits}\n")

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(FUZZ_FLAGS), _values()), min_size=1, max_size=3))
    def check(pairs: list[tuple[str, str]]) -> None:
        argv = ["search", "--out", str(taken)]
        for flag, value in pairs:
            argv.append(f"{flag}={value}")  # '=': a value may start with '-'
        code, err = cli(capsys, *argv)
        seen.append(code)
        assert code in (0, 1, 2) and len(err) <= 1, (argv, err)
        assert not any("Traceback" in e or "internal error" in e for e in err), (argv, err)

    seen: list[int] = []
    check()
    assert len(seen) >= 150 and seen.count(2) > 100  # the examples really ran, and were refused


RUN_FILES = ["config.yaml", "baseline.json", "trials.csv", "front.json", "budget.json"]


@pytest.mark.slow
def test_fuzz_damaged_run_files_never_trace(capsys, tiny_run, tmp_path_factory):
    """One run file replaced by garbage, a truncation, a flipped byte or JSON of the wrong
    shape: `autoprune report` exits 0 or 2 with at most one stderr line, never a traceback."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    files = RUN_FILES + [str(p.relative_to(tiny_run)) for p in sorted(tiny_run.glob("plans/*"))]
    json_values = st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                     max_size=4), max_leaves=12)
    damage = st.one_of(
        st.binary(max_size=64).map(lambda b: ("bytes", b)),
        json_values.map(lambda v: ("json", json.dumps(v).encode())),
        st.floats(0, 1).map(lambda f: ("truncate", f)),
        st.tuples(st.floats(0, 1), st.integers(0, 255)).map(lambda t: ("flip", t)))
    work = tmp_path_factory.mktemp("damaged")

    @settings(max_examples=150, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(files), damage)
    def check(name: str, how: tuple[str, object]) -> None:
        run = work / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(tiny_run, run)
        path = run / name
        original = path.read_bytes()
        kind, arg = how
        if kind in ("bytes", "json"):
            data = arg
        elif kind == "truncate":
            data = original[: int(len(original) * arg)]
        else:
            at, byte = arg
            i = min(int(len(original) * at), len(original) - 1)
            data = original[:i] + bytes([byte]) + original[i + 1:]
        path.write_bytes(data)  # type: ignore[arg-type]
        code, err = cli(capsys, "report", str(run))
        seen.append(code)
        assert code in (0, 2) and len(err) <= 1, (name, how, err)
        assert not any("Traceback" in e or "internal error" in e for e in err), (name, how, err)

    seen: list[int] = []
    check()
    assert len(seen) >= 150 and seen.count(2) > 50  # the examples ran; most damage is named


DAMAGEABLE = ["config.yaml", "baseline.json", "trials.csv", "front.json", "budget.json",
              "plans/0.json", "models/trial_0.pt", "study.journal"]


@pytest.mark.slow
@pytest.mark.parametrize("name", DAMAGEABLE)
def test_export_and_resume_on_a_damaged_file(capsys, tiny_run, tmp_path, name):
    """Garbage in one run file: `export` and `search --resume` end in exit 0 (the file is not
    needed, or is rebuilt) or exit 2 with one line naming it; never a traceback."""
    for argv in (["export", "{run}", "--trial", "0", "--quiet"],
                 ["search", "--resume", "{run}", "--quiet"]):
        run = tmp_path / argv[0]
        shutil.copytree(tiny_run, run)
        if not (run / name).exists():
            pytest.skip(f"the tiny run has no {name}")
        (run / name).write_bytes(b"\x00garbage {[<'\"\n\xff")
        code, err = cli(capsys, *(a.format(run=run) for a in argv))
        assert code in (0, 2) and len(err) <= 1, (argv, err)
        assert not any("Traceback" in e or "internal error" in e for e in err), (argv, err)
        if code == 2:
            assert Path(name).name in err[0], err

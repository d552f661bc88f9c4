"""Records that can be trusted: file modes of the one atomic writer, the CPU a run was timed on,
and the end-of-run figures written back to the Optuna study (optuna-dashboard, load_study)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch

from autoprune.backends.optuna import OptunaBackend, make_storage
from autoprune.budget import ResolvedBudget
from autoprune.latency import machine
from autoprune.ledger import Ledger
from autoprune.plan import Budget
from autoprune.results import RunDir, atomic_write_bytes, atomic_write_text
from autoprune.trial import Outcome, ParamSpec
from autoprune.trial import TrialState as State

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def umask() -> Iterator[object]:
    """``umask(mask)`` sets the process umask for the test; the old one comes back after."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


# -- file modes ----------------------------------------------------------------------------------
def test_new_files_are_0644_under_umask_022_and_follow_the_umask(tmp_path, umask):
    umask(0o022)  # type: ignore[operator]
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "sub" / "b.txt", "y")
    assert _mode(tmp_path / "a.bin") == 0o644 and _mode(tmp_path / "sub" / "b.txt") == 0o644
    umask(0o077)  # type: ignore[operator]
    atomic_write_bytes(tmp_path / "private.bin", b"x")
    assert _mode(tmp_path / "private.bin") == 0o600
    os.chmod(tmp_path / "a.bin", 0o640)  # an existing file keeps its bits
    atomic_write_bytes(tmp_path / "a.bin", b"new")
    assert _mode(tmp_path / "a.bin") == 0o640 and (tmp_path / "a.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "private.bin", "sub"]


def test_cache_files_are_0644_under_umask_022(tmp_path, umask):
    from autoprune.tasks._train import _save_atomic

    umask(0o022)  # type: ignore[operator]
    path = tmp_path / "cache" / "dense.pt"
    _save_atomic({"w": torch.ones(2)}, path)
    assert _mode(path) == 0o644
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))


#: Calls that write a file, and the position of the file argument.
_SAVERS = {"torch.save": 1, "torch.jit.save": 1, "torch.export.save": 1, "torch.onnx.export": 2,
           "zipfile.ZipFile": 0}


def _direct_writes(source: str) -> list[str]:
    """Calls in ``source`` that write a file other than into an ``io.BytesIO`` buffer (then
    handed to the atomic writer): a saver of :data:`_SAVERS` whose file is not a BytesIO name,
    ``open(..., "w")``, ``Path.write_bytes`` / ``write_text``."""
    tree = ast.parse(source)
    buffers = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
               and isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "io.BytesIO"
               for t in node.targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        texts = [a.value for a in node.args[1:] if isinstance(a, ast.Constant)]
        writes_text = name == "open" and any(set(str(m)) & set("wax+") for m in texts)
        if name.endswith((".write_bytes", ".write_text")) or writes_text:
            found.append(name)
        elif name in _SAVERS:
            if name == "zipfile.ZipFile" and not set(map(str, texts)) & {"w", "a", "x"}:
                continue  # read
            at = _SAVERS[name]
            target = node.args[at] if len(node.args) > at else \
                next((k.value for k in node.keywords if k.arg == "f"), None)
            if name == "torch.onnx.export" and target is None:
                continue  # dynamo: the program is returned, nothing is written
            if not (isinstance(target, ast.Name) and target.id in buffers):
                found.append(name)
    return found


def test_every_deploy_file_is_written_through_the_atomic_writer():
    assert _direct_writes("import torch\ntorch.save(m, path)\nopen(p, 'w')\n") == \
        ["torch.save", "open"]  # the oracle sees a direct write
    offenders = {path.name: _direct_writes(path.read_text(encoding="utf-8"))
                 for path in sorted((ROOT / "autoprune" / "deploy").glob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}
    uses = [p.name for p in (ROOT / "autoprune" / "deploy").glob("*.py")
            if "atomic_write_bytes(" in p.read_text(encoding="utf-8")]
    assert {"archive.py", "formats.py", "quantize.py", "weights.py"} <= set(uses)


# -- the machine ---------------------------------------------------------------------------------
def test_cpu_model_is_the_cpuinfo_model_name_else_the_platform(monkeypatch):
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    if names:
        assert machine.cpu_model() == " ".join(names[0].split())
    assert machine.cpu_model().strip()
    monkeypatch.setattr(machine, "_from_cpuinfo", lambda: "")
    monkeypatch.setattr(machine.platform, "system", lambda: "Linux")
    monkeypatch.setattr(machine.platform, "processor", lambda: "  Some   CPU ")
    assert machine.cpu_model() == "Some CPU"
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine.platform, "machine", lambda: "riscv64")
    assert machine.cpu_model() == "riscv64"
    info = machine.cpu_info()
    assert isinstance(info["cpu_count"], int) and info["cpu_count"] >= 1


# -- the study -----------------------------------------------------------------------------------
def _study_with_two_trials(run: RunDir) -> OptunaBackend:
    backend = OptunaBackend(make_storage(None, run.journal_path), "s", "random", 0)
    backend.name_objectives(("val_acc", "flops_ratio"))
    spec = [ParamSpec("a", 0.0, 1.0)]
    for acc in (0.9, 0.8):
        asked = backend.ask(spec)
        backend.tell(asked, Outcome(State.COMPLETE, (acc, 0.4),
                                    attrs={"plan": {"ratios": {"conv1": 0.5}}}))
    return backend


def test_publish_writes_test_accuracy_and_final_latency_to_the_study(tmp_path):
    run = RunDir.create(tmp_path / "run")
    backend = _study_with_two_trials(run)
    run.write_scores("test", {0: 0.91})
    run.write_scores("latency", {0: 1.5, 1: 1.25, "dense": 3.0})
    run.write_baseline({"dense": {"latency_final_ms": 3.0}})
    ledger = Ledger(run, ResolvedBudget(Budget(flops=0.4), 1.0, 1.0))
    ledger.publish(backend)
    size = run.journal_path.stat().st_size
    ledger.publish(backend)  # again (a resume): nothing new is written
    assert run.journal_path.stat().st_size == size
    study = optuna.load_study(study_name=None, storage=make_storage(None, run.journal_path))
    assert study.metric_names == ["val_acc", "flops_ratio"]
    assert study.user_attrs["test_acc"] == {"0": 0.91}
    assert study.user_attrs["latency_final_ms"] == {"0": 1.5, "1": 1.25, "dense": 3.0}
    assert [t.user_attrs["ratio:conv1"] for t in study.trials] == [0.5, 0.5]


# -- a finished run ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("records") / "run"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", "--budget-flops", "0.4", "--trials",
         "3", "--finetune-steps", "10", "--bn-batches", "4", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, preexec_fn=lambda: os.umask(0o022),
        env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_a_finished_runs_journal_names_metrics_ratios_and_test_accuracy(finished):
    run = RunDir(finished)
    study = optuna.load_study(study_name=None, storage=make_storage(None, run.journal_path))
    budget = json.loads(run.budget_path.read_text())
    assert study.metric_names == ["val_acc", budget["axis"]]
    front = [int(row["trial"]) for row in run.read_front()]
    assert front
    by_number = {t.number: t for t in study.trials}
    for number in front:  # each member's pruned groups (one may keep a group whole)
        groups = set(json.loads(run.plan_path(number).read_text())["ratios"])
        attrs = by_number[number].user_attrs
        assert groups and {f"ratio:{g}" for g in groups} <= set(attrs), attrs.keys()
    tests = run.read_scores("test")
    assert {str(n): tests[n] for n in front if n in tests} == \
        {k: v for k, v in study.user_attrs["test_acc"].items() if int(k) in front}
    assert set(map(str, front)) <= set(study.user_attrs["test_acc"])


@pytest.mark.slow
def test_a_finished_run_records_its_cpu_and_writes_0644_files(finished):
    env = RunDir(finished).read_baseline()["environment"]
    assert env["cpu_model"] == machine.cpu_model() and env["cpu_threads"] >= 1
    files = [p for p in finished.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert files and {p.name: oct(_mode(p)) for p in files if _mode(p) != 0o644} == {}

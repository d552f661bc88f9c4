"""``export_trial`` on a real (small) run: each format reloads and matches what the search saw."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import autoprune as ap
from autoprune.deploy.archive import builder_reference
from autoprune.deploy.export import export_trial
from autoprune.deploy.formats import ONNX_TOLERANCE, PT2_EXTRA
from autoprune.deploy.onnx_file import PLAN_KEY, VERSION_KEY
from autoprune.errors import ConfigError
from autoprune.results import RunDir

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """Subprocesses import this checkout, whatever is installed."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="session")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", "--budget-flops", "0.4", "--trials",
         "3", "--finetune-steps", "10", "--bn-batches", "4", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def trial(run: Path) -> int:
    front = json.loads((run / "front.json").read_text())
    assert front, "the search wrote an empty front"
    return int(front[0]["trial"])


@pytest.fixture(scope="session")
def reference(run: Path, trial: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The trial's model rebuilt by hand, and a test batch, to compare exported files with."""
    from autoprune.tasks import load_task

    task = load_task("digits")
    plan = ap.PruningPlan.from_dict(RunDir(run).read_plan(trial))
    model = ap.apply_plan(task.dense_model(), task.example_inputs(), plan)
    model.load_state_dict(torch.load(RunDir(run).model_path(trial), weights_only=True))
    images, _ = next(iter(task.splits().test))
    return model.eval(), images[:32]


def _recorded(run: Path, trial: int, column: str) -> float | None:
    return next(getattr(r, column) for r in RunDir(run).read_trials() if r.trial == trial)


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_pt_loads_in_a_fresh_process_with_the_recorded_test_accuracy(run, trial):
    result = export_trial(run, trial, "pt", progress=False)
    assert result.model_path == run / "models" / f"trial_{trial}.pruned.pt"
    assert result.metrics_path == run / "models" / f"trial_{trial}.pruned.metrics.json"
    metrics = json.loads(result.metrics_path.read_text())
    recorded = _recorded(run, trial, "test_acc")
    assert recorded is not None and metrics["test_acc"] == recorded
    assert metrics["format"] == "pt" and metrics["trial"] == trial
    assert metrics["file_bytes"] == result.model_path.stat().st_size
    assert metrics["flops_ratio"] == pytest.approx(_recorded(run, trial, "flops_ratio"), rel=1e-6)
    assert metrics["macs"] > 0 and metrics["params"] > 0 and metrics["latency_ms"] > 0
    assert metrics["plan"]["ratios"] and metrics["finetune_epochs"] == 0
    script = ("import sys, autoprune as ap\nfrom autoprune.tasks import load_task\n"
              "model = ap.load_pruned(sys.argv[1])\n"
              "print(repr(load_task('digits').evaluate(model, 'test')))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(result.model_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) == recorded


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_loads_and_matches_pytorch(run, trial, reference, tmp_path):
    result = export_trial(run, trial, "torchscript", out=tmp_path, progress=False)
    assert result.model_path == tmp_path / f"trial_{trial}.torchscript.pt"
    assert result.metrics_path.is_file()
    model, batch = reference
    loaded = torch.jit.load(str(result.model_path))
    with torch.no_grad():
        assert (loaded(batch) - model(batch)).abs().max() <= 1e-5
    assert result.metrics["test_acc"] == _recorded(run, trial, "test_acc")
    assert result.metrics["format_status"] == "legacy"


def test_pt2_reloads_and_matches_at_two_batch_sizes(run, trial, reference, tmp_path):
    result = export_trial(run, trial, "pt2", out=tmp_path, progress=False)
    assert result.model_path == tmp_path / f"trial_{trial}.pt2"
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["format"] == "pt2" and metrics["format_status"] == "recommended"
    assert metrics["max_abs_diff"] <= 1e-5 and len(set(metrics["check_batches"])) == 2
    assert metrics["cpu_model"] and metrics["test_acc"] == _recorded(run, trial, "test_acc")
    extra = {PT2_EXTRA: ""}
    program = torch.export.load(result.model_path, extra_files=extra).module()
    assert json.loads(extra[PT2_EXTRA])["plan"] == RunDir(run).read_plan(trial)
    model, batch = reference
    with torch.no_grad():
        for x in (batch, batch[:1], batch[:7]):
            assert (program(x) - model(x)).abs().max() <= 1e-5


def test_onnx_matches_pytorch_within_tolerance(run, trial, reference, tmp_path):
    for module in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install \"autoprune[onnx]\")")
    import onnxruntime

    result = export_trial(run, trial, "onnx", out=tmp_path / "model.onnx", progress=False)
    assert result.metrics_path == tmp_path / "model.metrics.json"
    assert result.metrics["max_abs_diff"] <= ONNX_TOLERANCE
    assert result.metrics["onnx_exporter"] == \
        ("dynamo" if importlib.util.find_spec("onnxscript") else "legacy")
    # the file's latency is ONNX Runtime's, not eager PyTorch's
    assert result.metrics["latency_runtime"] == "onnxruntime"
    assert result.metrics["latency_ms"] > 0 and result.metrics["latency_prepare_s"] > 0
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(result.model_path)).metadata_props}
    assert ap.PruningPlan.from_json(meta[PLAN_KEY]).to_dict() == RunDir(run).read_plan(trial)
    assert meta[VERSION_KEY] == ap.__version__
    model, batch = reference
    session = onnxruntime.InferenceSession(str(result.model_path),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": batch.numpy()})[0]
    with torch.no_grad():
        assert (torch.from_numpy(got) - model(batch)).abs().max() <= ONNX_TOLERANCE


def test_trial_without_weights_needs_and_takes_finetune_epochs(run, trial, tmp_path):
    copy = _copy(run, tmp_path)
    (copy / "models" / f"trial_{trial}.pt").unlink()
    with pytest.raises(ConfigError, match="--finetune-epochs"):
        export_trial(copy, trial, "pt", progress=False)
    result = export_trial(copy, trial, "pt", finetune_epochs=1, progress=False)
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["finetune_epochs"] == 1 and metrics["finetune_steps"] > 0
    assert 0.0 <= metrics["test_acc"] <= 1.0 and result.model_path.is_file()


def test_unknown_trial_names_it_and_the_front(run, trial):
    with pytest.raises(ConfigError, match=rf"--trial 999: .*front is trial .*{trial}"):
        export_trial(run, 999)


def test_failed_trial_is_refused_with_its_state(run, trial, tmp_path):
    copy = _copy(run, tmp_path)
    from dataclasses import replace

    records = RunDir(copy).read_trials()
    failed = next(r for r in records if r.trial != trial)
    RunDir(copy).write_trials([replace(r, state="FAIL", fail_reason="loss is nan")
                               if r is failed else r for r in records])
    with pytest.raises(ConfigError, match=rf"--trial {failed.trial} is FAIL \(loss is nan\).*"
                                          rf"front is trial .*{trial}"):
        export_trial(copy, failed.trial)


def test_bad_arguments_are_config_errors(run, trial, tmp_path):
    with pytest.raises(ConfigError, match="pt, pt2, torchscript, onnx"):
        export_trial(run, trial, "tflite")
    with pytest.raises(ConfigError, match="--finetune-epochs"):
        export_trial(run, trial, finetune_epochs=-1)
    with pytest.raises(ConfigError, match="not an autoprune run directory"):
        export_trial(tmp_path, trial)
    with pytest.raises(ConfigError, match="overwrite the search's weights"):
        export_trial(run, trial, out=RunDir(run).model_path(trial))


def test_python_api_run_points_to_save_pruned(run, trial, tmp_path):
    copy = _copy(run, tmp_path)
    config = RunDir(copy).read_config()
    RunDir(copy).write_config({**config, "task": {"python": True}})
    with pytest.raises(ConfigError, match=r"ap\.save_pruned"):
        export_trial(copy, trial)


class _Task:
    name = "mine"

    def __init__(self, **attrs: object) -> None:
        self.__dict__.update(attrs)


def test_builder_reference_of_each_kind_of_task():
    from autoprune.tasks import vision
    from autoprune.tasks.models import cifar_resnet

    tv = _Task(model_factory=functools.partial(vision.build_model, "resnet18", 7))
    assert builder_reference(tv) == ("torchvision.models:resnet18", {"num_classes": 7})
    own = _Task(model_factory=functools.partial(cifar_resnet, depth=8, num_classes=3))
    assert builder_reference(own) == ("autoprune.tasks.models:cifar_resnet",
                                      {"depth": 8, "num_classes": 3})
    explicit = _Task(builder="pkg.nets:small", builder_kwargs={"width": 4},
                     model_factory=lambda: None)
    assert builder_reference(explicit) == ("pkg.nets:small", {"width": 4})
    with pytest.raises(ConfigError, match="`builder` attribute"):
        builder_reference(_Task(model_factory=lambda: torch.nn.Linear(2, 2)))


def test_onnx_without_the_onnx_package_names_the_extra(run, trial, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ap.BackendUnavailable, match=r"autoprune\[onnx\]"):
        export_trial(run, trial, "onnx")


# -- hybrid (weights after channels) and quantized variants -------------------------------------
def test_hybrid_and_int8_variants(run: Path, trial: int, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = export_trial(copy, trial, progress=False, sparsity=0.6, quantize="int8")
    m = result.metrics
    weights = m["weights"]
    assert 0.5 < weights["sparsity"] < 0.6  # of all parameters; BN and biases stay
    sparse_file = result.model_path.with_name(f"trial_{trial}.pruned.sparse.pt")
    assert sparse_file.stat().st_size < 0.8 * weights["dense_bytes"]
    q = m["quantized"]
    assert q["file_bytes"] < 0.5 * result.model_path.stat().st_size
    assert abs(q["test_acc"] - m["test_acc"]) <= 0.05
    q_metrics = json.loads((result.model_path.parent / (q["file"] + ".metrics.json")).read_text())
    assert q_metrics["parent"] == result.model_path.name
    from autoprune.report import write_report

    html = write_report(copy).read_text()  # the quantized variant beside its float parent
    section = html.split("<h2>Exported models</h2>")[1]
    assert section.index(result.model_path.name) < section.index(q["file"])


@pytest.mark.parametrize("args,needle", [
    (["--quantize", "int4"], "--quantize 'int4' is not supported; use one of int8, fp16, bf16"),
    (["--sparsity", "1.5"], "--sparsity 1.5 must be in [0, "),  # the CLI's bound or variants'
    (["--sparsity", "-0.1"], "--sparsity -0.1 must be in [0, "),
])
def test_variant_bad_input_exit_2(run: Path, trial: int, args: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", "export", str(run),
                           "--trial", str(trial), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=_env())
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert needle in err and "Traceback" not in err and err.count("\n") == 0, err


def test_deploy_package_loads_its_modules_lazily():
    code = ("import sys, autoprune.deploy as deploy\n"
            "assert 'torch' not in sys.modules, 'import autoprune.deploy loaded torch'\n"
            "missing = [n for n in deploy.__all__ if getattr(deploy, n, None) is None]\n"
            "assert not missing, missing\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]


def _damage_weights(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif how == "list":
        torch.save([1, 2, 3], path)
    elif how == "wrong_shapes":
        torch.save({k: torch.zeros(1) for k in torch.load(path, weights_only=True)}, path)


@pytest.mark.parametrize("how", ["empty", "garbage", "truncated", "list", "wrong_shapes"])
def test_damaged_weights_file_is_one_line(run, trial, tmp_path, how):
    """Issue 15 item 7: a damaged models/trial_N.pt names itself and the fix."""
    copy = _copy(run, tmp_path)
    weights = RunDir(copy).model_path(trial)
    _damage_weights(weights, how)
    with pytest.raises(ConfigError, match=rf"--trial {trial}: .*trial_{trial}\.pt") as info:
        export_trial(copy, trial, "pt", progress=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("plan", [[1, 2], {"ratios": 5}, {"ratios": {"x": 0.5}, "nope": 1}])
def test_type_damaged_plan_file_is_one_line(run, trial, tmp_path, plan):
    copy = _copy(run, tmp_path)
    RunDir(copy).plan_path(trial).write_text(json.dumps(plan))
    with pytest.raises(ConfigError) as info:
        export_trial(copy, trial, "pt", progress=False)
    assert "\n" not in str(info.value) and f"{trial}.json" in str(info.value), info.value

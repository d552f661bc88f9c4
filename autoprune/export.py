"""Turn one trial of a finished run into a file to deploy, with its measured metrics beside it.

A reviewer picks a trial from ``report.html`` / ``front.csv``; ``autoprune export`` rebuilds that
candidate from the run alone: the task named in ``config.yaml`` gives the dense model, the trial's
plan prunes it, and the fine-tuned weights the search kept (``models/trial_<N>.pt``) are loaded.
The model is scored on the test split and timed on the CPU *after* it is rebuilt, and every file
is checked by loading it again before it is written, so the metrics describe the file itself.

Formats:

- ``pt``: the portable archive of :func:`autoprune.save_pruned` (DESIGN decision 7): the dense
  model's builder reference + pruning history + weights; ``ap.load_pruned(path)`` rebuilds it in
  any process without the search or the task.
- ``torchscript``: ``torch.jit.trace`` in eval mode (deprecated upstream since torch 2.9, still
  the file most C++/mobile runtimes take).
- ``onnx``: the TorchScript-based exporter (``dynamo=False``), which needs only the ``onnx``
  package; the dynamo exporter would also need ``onnxscript``. With ``onnxruntime`` installed the
  file is run on a test batch and must match PyTorch within ``ONNX_TOLERANCE``.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import AutopruneError, BackendUnavailable, ConfigError, UnsupportedModelError
from autoprune.evaluate import CandidateFailed, FinetuneSettings
from autoprune.plan import PruningPlan
from autoprune.results import RunDir, TrialRecord, atomic_write_bytes, atomic_write_text

__all__ = ["FORMATS", "ONNX_TOLERANCE", "ExportResult", "builder_reference", "export_trial"]

log = logging.getLogger(__name__)

#: Export formats and the suffix of their default file name (``trial_<N><suffix>``); ``pt`` is not
#: plain ``.pt`` because ``models/trial_<N>.pt`` already holds the search's state_dict.
FORMATS: Mapping[str, str] = {"pt": ".pruned.pt", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
#: Largest |ONNX Runtime - PyTorch| accepted on a test batch.
ONNX_TOLERANCE = 1e-4
#: A reloaded archive or TorchScript file runs the same kernels; it must match much tighter.
RELOAD_TOLERANCE = 1e-5
_CHECK_BATCH = 32
#: loader.py imports a user's task.py under this prefix: such a module is not importable later.
_USER_FILE_MODULE = "autoprune_user_task_"
_ONNX_HINT = 'pip install "autoprune[onnx]"'


@dataclass(frozen=True)
class ExportResult:
    """Where the exported model and its ``.metrics.json`` went, and the metrics written there."""

    model_path: Path
    metrics_path: Path
    metrics: dict[str, Any]


def export_trial(run_dir: str | os.PathLike[str], trial: int, fmt: str = "pt",
                 out: str | os.PathLike[str] | None = None, finetune_epochs: float = 0.0,
                 progress: bool = True, sparsity: float = 0.0,
                 quantize: str | None = None) -> ExportResult:
    """Export ``trial`` of the run in ``run_dir`` as ``fmt`` and write its metrics beside it.

    Call it once a reviewer has chosen a candidate; it needs the run directory and the task the
    run was started from (same data and cached dense model), not the search. ``finetune_epochs``
    > 0 fine-tunes the candidate further on the task's train split with the run's fine-tune
    settings, which is also the way to export a trial whose weights the search dropped (a
    dominated, non-baseline trial). ``out`` is a file path or an existing folder; the default is
    ``<run_dir>/models/trial_<N>`` + the format's suffix in :data:`FORMATS`.

    ``sparsity`` > 0 makes a hybrid: after the channels, that fraction of the remaining weights
    is zeroed (cubic schedule, retrained ``max(finetune_epochs, 1)`` epochs) and a sparse
    ``.sparse.pt`` is written beside the model. ``quantize`` (int8 | fp16 | bf16) also writes
    the quantized program (``.<mode>.pt2``) with its own metrics, beside its float parent.
    """
    from autoprune.variants import check_sparsity

    check_sparsity(sparsity)
    if quantize is not None:
        from autoprune.quantize import MODES

        if quantize not in MODES:
            raise ConfigError(f"--quantize {quantize!r} is not supported; use one of "
                              f"{', '.join(MODES)}")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not an export format; use one of "
                          f"{', '.join(FORMATS)}")
    if not (math.isfinite(finetune_epochs) and finetune_epochs >= 0):
        raise ConfigError(f"--finetune-epochs {finetune_epochs} must be a number >= 0 "
                          "(0 = export the search's fine-tuned weights as they are)")
    run = RunDir.open(run_dir)
    config = run.read_config()
    task_cfg = _task_config(run, config)
    record = _completed_trial(run, int(trial))
    state_path = run.models_dir / f"trial_{record.trial}.pt"
    if not state_path.is_file() and finetune_epochs == 0:
        raise ConfigError(
            f"--trial {record.trial}: its fine-tuned weights ({state_path}) are not in the run "
            "(a search keeps them only for front members and baselines); pass "
            "--finetune-epochs E (finetune_epochs=E) to fine-tune it from the dense model now")
    model_path = _model_path(run, record.trial, fmt, out)
    if fmt == "onnx":
        _require("onnx")

    from autoprune.tasks import load_task

    task = load_task(task_cfg["spec"], data_dir=task_cfg.get("data_dir"),
                     model=task_cfg.get("model"), weights=task_cfg.get("weights"),
                     seed=int(task_cfg.get("seed") or 0))
    builder = builder_reference(task) if fmt == "pt" else None  # fail before any work
    example = task.example_inputs()
    plan = _plan_of(run, record)
    model, steps = _rebuild(config, task, plan, record.trial, state_path, finetune_epochs,
                            progress)
    sparse: dict[str, Any] = {}
    weights_mode = (config.get("search") or {}).get("mode") == "weights"
    if sparsity > 0 or weights_mode:
        from autoprune.variants import sparse_metrics, weight_pruned
        from autoprune.weights import save_sparse

        sparse = weight_pruned(model, sparsity, task.splits().train, max(finetune_epochs, 1.0)) \
            if sparsity > 0 else sparse_metrics(model)  # --mode weights: already zeroed
        save_sparse(model, model_path.with_name(_stem(model_path) + ".sparse.pt"))
    metrics = _metrics(run, config, task, model, example, record, plan)  # before any runtime
    if sparse:
        metrics["weights"] = sparse
    check = _write(fmt, model, model_path, example, _check_batch(task, example), builder, plan)
    metrics.update(check, format=fmt, file=model_path.name, file_bytes=model_path.stat().st_size,
                   finetune_epochs=finetune_epochs, finetune_steps=steps)
    if finetune_epochs == 0 and not sparsity and record.test_acc is not None \
            and abs(metrics["test_acc"] - record.test_acc) > 1e-9:
        log.warning("trial %d: test accuracy %.4f differs from the %.4f the search recorded; "
                    "did the task's data or dense model change?", record.trial,
                    metrics["test_acc"], record.test_acc)
    if quantize is not None:
        from autoprune.variants import quantized_variant

        q_path = model_path.with_name(f"{_stem(model_path)}.{quantize}.pt2")
        q = quantized_variant(model, example, quantize, task.splits().train, q_path,
                              task.evaluate, _check_batch(task, example)[0])
        float_only = ("latency_iqr_ms", "check", "max_abs_diff", "weights")
        q_metrics = {k: v for k, v in metrics.items() if k not in float_only}
        q_metrics.update(q, format=f"{quantize} torch.export program", parent=model_path.name)
        atomic_write_text(q_path.with_name(q_path.name + ".metrics.json"),
                          json.dumps(q_metrics, indent=2) + "\n")
        metrics["quantized"] = q
    metrics_path = model_path.with_name(_stem(model_path) + ".metrics.json")
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    log.info("trial %d: wrote %s (%d bytes) and %s", record.trial, model_path,
             metrics["file_bytes"], metrics_path.name)
    return ExportResult(model_path, metrics_path, metrics)


# -- validation ----------------------------------------------------------------------------------
def _task_config(run: RunDir, config: Mapping[str, Any]) -> Mapping[str, Any]:
    task_cfg = config.get("task") or {}
    if not isinstance(task_cfg, Mapping) or not task_cfg.get("spec"):
        raise ConfigError(
            f"{run.path} was searched from Python (ap.search), so the export has no task to "
            "rebuild the model from; export from Python instead: rebuild the candidate with "
            "ap.apply_plan(model, example_inputs, ap.PruningPlan.from_dict(plan)), load "
            "models/trial_<N>.pt into it, then ap.save_pruned(model, path, example_inputs, "
            "builder=...)")
    return task_cfg


def _completed_trial(run: RunDir, trial: int) -> TrialRecord:
    records = {r.trial: r for r in run.read_trials()}
    front = [int(row["trial"]) for row in run.read_front()]
    hint = (f"the front is trial {', '.join(map(str, front))}" if front
            else "the run has no front yet")
    record = records.get(trial)
    if record is None:
        known = f"trials {min(records)}-{max(records)}" if records else "no trials"
        raise ConfigError(f"--trial {trial}: {run.path} has no such trial ({known}); {hint}")
    if record.state != "COMPLETE":
        why = f" ({record.fail_reason})" if record.fail_reason else ""
        raise ConfigError(f"--trial {trial} is {record.state}{why}; only COMPLETE trials can "
                          f"be exported; {hint}")
    return record


def _model_path(run: RunDir, trial: int, fmt: str, out: str | os.PathLike[str] | None) -> Path:
    name = f"trial_{trial}{FORMATS[fmt]}"
    path = run.models_dir / name if out is None else Path(out).expanduser()
    if path.is_dir():
        path = path / name
    if path.resolve() == (run.models_dir / f"trial_{trial}.pt").resolve():
        raise ConfigError(f"--out {str(out)!r} would overwrite the search's weights of trial "
                          f"{trial}; choose another file name, e.g. {name}")
    return path


def _stem(path: Path) -> str:
    """``trial_3.pruned.pt`` -> ``trial_3.pruned``: only the last suffix goes."""
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(f"--format onnx needs the {module!r} package; install it with "
                                 f"{_ONNX_HINT}") from exc


# -- builder reference ---------------------------------------------------------------------------
def builder_reference(task: Any) -> tuple[str, dict[str, Any]]:
    """``('module:callable', kwargs)`` that rebuilds ``task``'s dense architecture in any process.

    Taken, in order, from the task's ``builder`` (+ ``builder_kwargs``) attributes, from a
    torchvision task (``torchvision.models:<name>``), or from ``model_factory`` when it is a
    module-level function or a keyword-only ``functools.partial`` of one.
    """
    from autoprune.archive import _reference

    explicit = getattr(task, "builder", None)
    factory = getattr(task, "model_factory", None)
    try:
        if explicit is not None:
            ref, kwargs = _reference(explicit)
            kwargs.update(getattr(task, "builder_kwargs", None) or {})
        elif factory is not None and _is_torchvision_factory(factory):
            args, kw = factory.args, factory.keywords
            name = args[0] if args else kw["name"]
            classes = args[1] if len(args) > 1 else kw["num_classes"]
            ref, kwargs = f"torchvision.models:{name}", {"num_classes": int(classes)}
        elif factory is not None:
            ref, kwargs = _reference(factory)
        else:
            raise ConfigError("it has neither a `builder` nor a `model_factory`")
        module = ref.partition(":")[0]
        if module == "__main__" or module.startswith(_USER_FILE_MODULE):
            raise ConfigError(f"{ref.partition(':')[2]!r} lives in a script, which another "
                              "process cannot import")
    except ConfigError as exc:
        raise ConfigError(
            f"--format pt: task {getattr(task, 'name', '?')!r} gives no importable builder of its "
            f"dense model ({exc}); give the task a `builder` attribute ('pkg.module:function' "
            "building the dense architecture) plus `builder_kwargs` (a dict of plain values), "
            "or export with --format torchscript or onnx") from exc
    return ref, kwargs


def _is_torchvision_factory(factory: Any) -> bool:
    """Vision tasks build with ``partial(autoprune.tasks.vision.build_model, name, classes)``."""
    func = getattr(factory, "func", None)
    return (isinstance(factory, functools.partial)
            and getattr(func, "__module__", "") == "autoprune.tasks.vision"
            and getattr(func, "__name__", "") == "build_model")


# -- rebuild and fine-tune -----------------------------------------------------------------------
def _load_weights(model: nn.Module, path: Path, trial: int) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"--trial {trial}: {path} does not fit the model rebuilt from its plan "
            f"({str(exc).strip().splitlines()[0]}); the task's model changed since the search"
        ) from exc


def _plan_of(run: RunDir, record: TrialRecord) -> PruningPlan:
    if record.plan is None and not run.plan_path(record.trial).is_file():
        raise ConfigError(f"--trial {record.trial}: its plan {run.plan_path(record.trial)} is "
                          "missing; copy the whole run directory, plans/ included")
    return PruningPlan.from_dict(record.plan or run.read_plan(record.trial))


def _rebuild(config: Mapping[str, Any], task: Any, plan: PruningPlan, trial: int,
             state_path: Path, finetune_epochs: float, progress: bool) -> tuple[nn.Module, int]:
    """The trial's candidate on CPU, in eval mode: dense -> plan -> kept weights -> fine-tune."""
    from autoprune.graph import analyze

    dense, example = task.dense_model(), task.example_inputs()
    analysis = analyze(dense, example, ignore=(config.get("space") or {}).get("ignore"))
    log.info("trial %d: rebuilding the pruned model from its plan", trial)
    model = analysis.apply(plan)
    if state_path.is_file():
        _load_weights(model, state_path, trial)
    steps = 0
    if finetune_epochs > 0:
        settings = FinetuneSettings(**config.get("finetune", {}))
        seed = int((config.get("search") or {}).get("seed", 0))
        steps = _finetune(model, task, dense, settings, finetune_epochs, progress,
                          from_dense=not state_path.is_file(), seed=seed, trial=trial)
    return model.cpu().eval(), steps


class _Counted:
    """A re-iterable loader that advances a progress bar per batch drawn (one fine-tune step)."""

    def __init__(self, loader: Iterable[Any], bar: Any) -> None:
        self.loader, self.bar = loader, bar

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield batch
            self.bar.update(1)


def _finetune(model: nn.Module, task: Any, dense: nn.Module, settings: FinetuneSettings,
              epochs: float, progress: bool, *, from_dense: bool, seed: int, trial: int) -> int:
    """Fine-tune ``model`` in place for ``epochs`` passes over the train split; returns steps."""
    from tqdm.auto import tqdm

    from autoprune.evaluate import finetune_model, reestimate_bn

    device = settings.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.info("the run fine-tuned on %s, which is not available here: using cpu", device)
        device = "cpu"
    settings = replace(settings, device=device)
    train = task.splits().train
    steps = max(1, round(epochs * len(train)))
    model.to(device)
    torch.manual_seed(seed * 100_003 + trial)
    user_finetune = getattr(task, "finetune", None)
    try:
        if from_dense:  # fresh from the dense weights: BN statistics first, as the search does
            reestimate_bn(model, train, settings.bn_batches, device)
        if user_finetune is not None:
            log.info("trial %d: fine-tuning %d steps with the task's finetune()", trial, steps)
            model.train()
            user_finetune(model, steps)
        else:
            teacher = copy.deepcopy(dense).to(device) if settings.distill else None
            with tqdm(total=steps, desc=f"fine-tune trial {trial}", unit="step",
                      disable=not progress) as bar:
                finetune_model(model, _Counted(train, bar), settings, teacher, steps=steps)
    except CandidateFailed as exc:
        raise ConfigError(f"--finetune-epochs {epochs}: fine-tuning trial {trial} failed "
                          f"({exc}); try fewer epochs or a lower lr") from exc
    return steps


# -- writing and checking ------------------------------------------------------------------------
def _inputs(example: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in example):
        return tuple(example)
    raise ConfigError(f"example inputs of type {type(example).__name__} cannot be traced for "
                      "torchscript/onnx; use --format pt")


def _check_batch(task: Any, example: Any) -> tuple[torch.Tensor, ...]:
    """A few test images to compare a reloaded file with PyTorch (the example input if none)."""
    batch = next(iter(task.splits().test), None)
    inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else None
    if isinstance(inputs, torch.Tensor) and isinstance(example, torch.Tensor):
        return (inputs[:_CHECK_BATCH].to(example.dtype),)
    return _inputs(example)


def _output(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu()
    if isinstance(value, (tuple, list)) and value:
        return _output(value[0])
    if isinstance(value, Mapping) and value:
        return _output(next(iter(value.values())))
    raise UnsupportedModelError(f"the model returned {type(value).__name__}, not a tensor")


def _diff(a: Any, b: Any) -> float:
    return float((_output(a) - _output(b)).abs().max())


def _write(fmt: str, model: nn.Module, path: Path, example: Any, batch: tuple[torch.Tensor, ...],
           builder: tuple[str, dict[str, Any]] | None, plan: PruningPlan) -> dict[str, Any]:
    """Write ``path`` only after the file, loaded again, reproduces ``model`` on ``batch``."""
    with torch.no_grad():
        expected = model(*batch)
    if builder is not None:  # resolved by export_trial for fmt == "pt" only
        diff, checked_with = _write_archive(model, path, example, batch, expected, builder, plan)
    elif fmt == "torchscript":
        diff, checked_with = _write_torchscript(model, path, example, batch, expected)
    else:
        diff, checked_with = _write_onnx(model, path, example, batch, expected)
    return {"max_abs_diff": diff, "checked_with": checked_with, "check_batch": len(batch[0])}


def _mismatch(fmt: str, diff: float, tolerance: float) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"--format {fmt}: the exported model differs from PyTorch by {diff:.3g} (> {tolerance:g}) "
        "on a test batch, so it was not written; try another --format")


def _write_archive(model: nn.Module, path: Path, example: Any, batch: tuple[torch.Tensor, ...],
                   expected: Any, builder: tuple[str, dict[str, Any]],
                   plan: PruningPlan) -> tuple[float, str]:
    from autoprune.archive import _OWN_BUILDERS, load_pruned, save_pruned

    ref, kwargs = builder
    save_pruned(model, path, example, ref, kwargs, plan=plan)
    try:
        reloaded = load_pruned(path, trust=True)  # the reference came from the task just run
        with torch.no_grad():
            diff = _diff(reloaded(*batch), expected)
        if diff > RELOAD_TOLERANCE:
            raise _mismatch("pt", diff, RELOAD_TOLERANCE)
    except (AutopruneError, RuntimeError, TypeError) as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, AutopruneError):
            raise
        raise ConfigError(f"--format pt: the archive does not load again with builder {ref!r} "
                          f"({type(exc).__name__}: {exc}); give the task a `builder` and "
                          "`builder_kwargs` that build its dense model") from exc
    module, _, attr = ref.partition(":")
    if not module.startswith("torchvision.models") and not (
            module == "autoprune.tasks.models" and attr in _OWN_BUILDERS):
        log.info("load it with ap.load_pruned(path, builders={%r: <that function>}) or "
                 "trust=True: %r is not a builder load_pruned trusts by default", ref, ref)
    return diff, "autoprune.load_pruned"


def _write_torchscript(model: nn.Module, path: Path, example: Any,
                       batch: tuple[torch.Tensor, ...], expected: Any) -> tuple[float, str]:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit is deprecated upstream; the format is not
        warnings.simplefilter("ignore", FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, _inputs(example))
        torch.jit.save(traced, buffer)
        reloaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")
    with torch.no_grad():
        diff = _diff(reloaded(*batch), expected)
    if diff > RELOAD_TOLERANCE:
        raise _mismatch("torchscript", diff, RELOAD_TOLERANCE)
    atomic_write_bytes(path, buffer.getvalue())
    return diff, "torch.jit.load"


def _write_onnx(model: nn.Module, path: Path, example: Any, batch: tuple[torch.Tensor, ...],
                expected: Any) -> tuple[float | None, str | None]:
    onnx = _require("onnx")
    inputs = _inputs(example)
    names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter warns it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, inputs, buffer, input_names=names, output_names=["output"],
                          dynamic_axes={n: {0: "batch"} for n in [*names, "output"]},
                          dynamo=False)
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is not installed: the ONNX file was not compared with PyTorch "
                    "(%s)", _ONNX_HINT)
        atomic_write_bytes(path, data)
        return None, None
    import onnxruntime

    options = onnxruntime.SessionOptions()  # no spinning threads left behind in this process
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {n: x.numpy() for n, x in zip(names, batch)})[0]
    del session
    diff = _diff(torch.from_numpy(got), expected)
    if diff > ONNX_TOLERANCE:
        raise _mismatch("onnx", diff, ONNX_TOLERANCE)
    atomic_write_bytes(path, data)
    return diff, f"onnxruntime {onnxruntime.__version__}"


# -- metrics -------------------------------------------------------------------------------------
def _metrics(run: RunDir, config: Mapping[str, Any], task: Any, model: nn.Module, example: Any,
             record: TrialRecord, plan: PruningPlan) -> dict[str, Any]:
    """Scores and costs of the rebuilt model, measured now, with what the search recorded.

    Timed before ONNX Runtime or TorchScript run in this process: their idle thread pools would
    otherwise compete with the timed model.
    """
    import autoprune
    from autoprune.cost import measure

    search = config.get("search") or {}
    cost = measure(model, example, device="cpu", latency=True,
                   batch_size=int(search.get("latency_batch") or 1), repeats=30)
    dense = run.read_baseline().get("dense", {}) if run.baseline_path.is_file() else {}
    dense_macs, dense_params = dense.get("macs"), dense.get("params")
    return {
        "trial": record.trial,
        "task": config["task"]["spec"],
        "test_acc": float(task.evaluate(model, "test")),
        "val_acc": float(task.evaluate(model, "val")),
        "flops_ratio": cost.macs / dense_macs if dense_macs else record.flops_ratio,
        "params_ratio": cost.params / dense_params if dense_params else record.params_ratio,
        "macs": cost.macs,
        "flops": cost.flops,
        "params": cost.params,
        "latency_ms": cost.latency_ms,
        "latency_iqr_ms": cost.latency_iqr_ms,
        "latency_device": "cpu",
        "latency_batch": cost.batch_size,
        "cpu_threads": torch.get_num_threads(),
        "search": {"val_acc": record.val_acc, "test_acc": record.test_acc,
                   "baseline": record.baseline},
        "plan": plan.to_dict(),
        "torch": torch.__version__,
        "autoprune": autoprune.__version__,
    }

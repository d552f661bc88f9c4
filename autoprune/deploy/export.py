"""Turn one trial of a finished run into a file to deploy, with its measured metrics beside it.

A reviewer picks a trial from ``report.html`` / ``front.csv``; ``autoprune export`` rebuilds that
candidate from the run alone: the task named in ``config.yaml`` gives the dense model, the trial's
plan prunes it, and the fine-tuned weights the search kept (``models/trial_<N>.pt``) are loaded
(:mod:`autoprune.deploy.rebuild`). The model is scored on the test split and timed on the CPU
*after* it is rebuilt, and every file is checked by loading it again before it is written
(:mod:`autoprune.deploy.formats`: ``pt`` (default), ``pt2`` (recommended for deployment),
``torchscript`` (legacy), ``onnx``), so the metrics describe the file itself.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.deploy.archive import builder_reference
from autoprune.deploy.formats import FORMATS, Archived, Inputs, onnx_module, write
from autoprune.deploy.rebuild import SavedTrial, rebuild_trial
from autoprune.errors import ConfigError
from autoprune.plan import PruningPlan
from autoprune.results import RunDir, atomic_write_text
from autoprune.trial import TrialRecord, TrialState

__all__ = ["ExportOptions", "ExportResult", "export_trial"]

log = logging.getLogger(__name__)

#: Metrics of the float model that do not describe its quantized variant.
_FLOAT_ONLY = ("latency_iqr_ms", "check", "max_abs_diff", "weights")


@dataclass(frozen=True)
class ExportResult:
    """Where the exported model and its ``.metrics.json`` went, and the metrics written there."""

    model_path: Path
    metrics_path: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class ExportOptions:
    """How :func:`export_trial` writes a trial; see its docstring for each field."""

    fmt: str = "pt"
    out: str | os.PathLike[str] | None = None
    finetune_epochs: float = 0.0
    progress: bool = True
    sparsity: float = 0.0
    quantize: str | None = None
    trust_task: bool = False

    def check(self) -> None:
        """A :class:`ConfigError` naming the option and its choices for the first bad option."""
        from autoprune.deploy.variants import check_sparsity

        check_sparsity(self.sparsity)
        if self.quantize is not None:
            from autoprune.deploy.quantize import MODES

            if self.quantize not in MODES:
                raise ConfigError(f"--quantize {self.quantize!r} is not supported; use one of "
                                  f"{', '.join(MODES)}")
        if self.fmt not in FORMATS:
            raise ConfigError(f"--format {self.fmt!r} is not an export format; use one of "
                              f"{', '.join(FORMATS)}")
        epochs = self.finetune_epochs
        if not (math.isfinite(epochs) and epochs >= 0):
            raise ConfigError(f"--finetune-epochs {epochs} must be a number >= 0 "
                              "(0 = export the search's fine-tuned weights as they are)")


@dataclass(frozen=True)
class _Job:
    """One export under way: the run, the trial and its plan, the task, where the model goes."""

    run: RunDir
    config: Mapping[str, Any]
    record: TrialRecord
    plan: PruningPlan
    options: ExportOptions
    model_path: Path
    task: Any
    example: Any
    builder: tuple[str, dict[str, Any]] | None  # fmt == "pt" only

    @property
    def archived(self) -> Archived | None:
        return None if self.builder is None else Archived(self.builder, self.plan)

    def beside(self, suffix: str) -> Path:
        """``trial_3.pruned.pt`` + ``.metrics.json`` -> ``trial_3.pruned.metrics.json``."""
        return self.model_path.with_name(_stem(self.model_path) + suffix)


def export_trial(run_dir: str | os.PathLike[str], trial: int, fmt: str = "pt",
                 out: str | os.PathLike[str] | None = None, finetune_epochs: float = 0.0,
                 progress: bool = True, sparsity: float = 0.0,
                 quantize: str | None = None, *, trust_task: bool = False) -> ExportResult:
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

    A run started from a task file runs that file again only if it is unchanged and in the same
    place (its sha256 is in config.yaml), or with ``trust_task=True``.
    """
    options = ExportOptions(fmt, out, finetune_epochs, progress, sparsity, quantize, trust_task)
    options.check()
    job = _prepare(RunDir.open(run_dir), int(trial), options)
    record = job.record
    saved = SavedTrial(record.trial, job.plan, job.run.model_path(record.trial))
    model, steps = rebuild_trial(job.task, saved, job.config, finetune_epochs, progress)
    sparse = _sparsify(job, model)
    metrics = _metrics(job, model)  # before any runtime
    if sparse:
        metrics["weights"] = sparse
    inputs = Inputs.of(job.task, job.example)
    check = write(fmt, model, job.model_path, inputs, job.archived, job.plan)
    if fmt == "torchscript":
        log.warning("--format torchscript is legacy (TorchScript is deprecated upstream); "
                    "--format pt2 (torch.export) is recommended for deployment")
    metrics.update(check, format=fmt, file=job.model_path.name,
                   file_bytes=job.model_path.stat().st_size, finetune_epochs=finetune_epochs,
                   finetune_steps=steps)
    if finetune_epochs == 0 and not sparsity and record.test_acc is not None \
            and abs(metrics["test_acc"] - record.test_acc) > 1e-9:
        log.warning("trial %d: test accuracy %.4f differs from the %.4f the search recorded; "
                    "did the task's data or dense model change?", record.trial,
                    metrics["test_acc"], record.test_acc)
    if quantize is not None:
        metrics["quantized"] = _quantized(job, model, inputs, metrics)
    metrics_path = job.beside(".metrics.json")
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2) + "\n")
    log.info("trial %d: wrote %s (%d bytes) and %s", record.trial, job.model_path,
             metrics["file_bytes"], metrics_path.name)
    _refresh_report(job.run)
    return ExportResult(job.model_path, metrics_path, metrics)


# -- validation ----------------------------------------------------------------------------------
def _prepare(run: RunDir, trial: int, options: ExportOptions) -> _Job:
    """Check the run (before loading the task), load the task, resolve the ``pt`` builder."""
    from autoprune.tasks import load_task
    from autoprune.tasks.loader import check_task_file

    config = run.read_config()
    task_cfg = _task_config(run, config)
    check_task_file(dict(task_cfg), run.path, options.trust_task)
    record = _completed_trial(run, trial)
    state_path = run.model_path(record.trial)
    if not state_path.is_file() and options.finetune_epochs == 0:
        raise ConfigError(
            f"--trial {record.trial}: its fine-tuned weights ({state_path}) are not in the run "
            "(a search keeps them only for front members and baselines); pass "
            "--finetune-epochs E (finetune_epochs=E) to fine-tune it from the dense model now")
    model_path = _model_path(run, record.trial, options.fmt, options.out)
    if options.fmt == "onnx":
        onnx_module()
    task = load_task(task_cfg["spec"], data_dir=task_cfg.get("data_dir"),
                     model=task_cfg.get("model"), weights=task_cfg.get("weights"),
                     seed=int(task_cfg.get("seed") or 0))
    builder = builder_reference(task) if options.fmt == "pt" else None  # fail before any work
    example = task.example_inputs()
    return _Job(run, config, record, _plan_of(run, record), options, model_path, task, example,
                builder)


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
    if record.state != TrialState.COMPLETE:
        why = f" ({record.fail_reason})" if record.fail_reason else ""
        raise ConfigError(f"--trial {trial} is {record.state}{why}; only COMPLETE trials can "
                          f"be exported; {hint}")
    return record


def _model_path(run: RunDir, trial: int, fmt: str, out: str | os.PathLike[str] | None) -> Path:
    default = run.export_path(trial, FORMATS[fmt])
    path = default if out is None else Path(out).expanduser()
    if path.is_dir():
        path = path / default.name
    if path.resolve() == run.model_path(trial).resolve():
        raise ConfigError(f"--out {str(out)!r} would overwrite the search's weights of trial "
                          f"{trial}; choose another file name, e.g. {default.name}")
    return path


def _stem(path: Path) -> str:
    """``trial_3.pruned.pt`` -> ``trial_3.pruned``: only the last suffix goes."""
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _plan_of(run: RunDir, record: TrialRecord) -> PruningPlan:
    if record.plan is None and not run.plan_path(record.trial).is_file():
        raise ConfigError(f"--trial {record.trial}: its plan {run.plan_path(record.trial)} is "
                          "missing; copy the whole run directory, plans/ included")
    try:
        return PruningPlan.from_dict(record.plan or run.read_plan(record.trial))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # ConfigError included
        raise ConfigError(f"--trial {record.trial}: its plan {run.plan_path(record.trial)} is "
                          f"damaged "
                          f"({type(exc).__name__}: {str(exc)[:160]!r}); restore the file from "
                          "a copy of the run, or export another trial") from exc


# -- variants ------------------------------------------------------------------------------------
def _sparsify(job: _Job, model: nn.Module) -> dict[str, Any]:
    """With ``sparsity`` > 0 (or a ``--mode weights`` run, already zeroed): the sparse file
    beside the model, and its size metrics; else ``{}``."""
    sparsity = job.options.sparsity
    if not (sparsity > 0 or (job.config.get("search") or {}).get("mode") == "weights"):
        return {}
    from autoprune.deploy.variants import sparse_metrics, weight_pruned
    from autoprune.deploy.weights import save_sparse

    epochs = max(job.options.finetune_epochs, 1.0)
    sparse = weight_pruned(model, sparsity, job.task.splits().train, epochs) \
        if sparsity > 0 else sparse_metrics(model)
    save_sparse(model, job.beside(".sparse.pt"))
    return sparse


def _quantized(job: _Job, model: nn.Module, inputs: Inputs,
               metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The quantized program beside its float parent, with its own ``.metrics.json``."""
    from autoprune.deploy.variants import quantized_variant

    mode = str(job.options.quantize)
    q_path = job.beside(f".{mode}.pt2")
    q = quantized_variant(model, mode, q_path, job.task, inputs)
    q_metrics = {k: v for k, v in metrics.items() if k not in _FLOAT_ONLY}
    q_metrics.update(q, format=f"{mode} torch.export program", parent=job.model_path.name)
    atomic_write_text(q_path.with_name(q_path.name + ".metrics.json"),
                      json.dumps(q_metrics, indent=2) + "\n")
    return q


# -- metrics -------------------------------------------------------------------------------------
def _metrics(job: _Job, model: nn.Module) -> dict[str, Any]:
    """Scores and costs of the rebuilt model, measured now, with what the search recorded.

    Timed before ONNX Runtime or TorchScript run in this process: their idle thread pools would
    otherwise compete with the timed model.
    """
    import autoprune
    from autoprune.latency import cpu_model, measure

    run, record = job.run, job.record
    search = job.config.get("search") or {}
    # an .onnx file is timed as it runs: exported, in ONNX Runtime (when installed)
    runtime = "onnxruntime" if job.options.fmt == "onnx" and \
        importlib.util.find_spec("onnxruntime") is not None else "eager"
    cost = measure(model, job.example, device="cpu", latency=True,
                   batch_size=int(search.get("latency_batch") or 1), repeats=30,
                   runtime=runtime)
    dense = run.read_baseline().get("dense", {}) if run.baseline_path.is_file() else {}
    dense_macs, dense_params = dense.get("macs"), dense.get("params")
    return {
        "trial": record.trial,
        "task": job.config["task"]["spec"],
        "test_acc": float(job.task.evaluate(model, "test")),
        "val_acc": float(job.task.evaluate(model, "val")),
        "flops_ratio": cost.macs / dense_macs if dense_macs else record.flops_ratio,
        "params_ratio": cost.params / dense_params if dense_params else record.params_ratio,
        "macs": cost.macs,
        "flops": cost.flops,
        "params": cost.params,
        "latency_ms": cost.latency_ms,
        "latency_iqr_ms": cost.latency_iqr_ms,
        "latency_device": "cpu",
        "latency_runtime": runtime,
        "latency_prepare_s": cost.extra.get("prepare_s", 0.0),  # export + session, once
        "latency_batch": cost.batch_size,
        "cpu_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "search": {"val_acc": record.val_acc, "test_acc": record.test_acc,
                   "baseline": record.baseline},
        "plan": job.plan.to_dict(),
        "torch": torch.__version__,
        "autoprune": autoprune.__version__,
    }


def _refresh_report(run: RunDir) -> None:
    """Export changes what the report shows (its exports table): write it again. A report that
    cannot be written does not undo a finished export."""
    from autoprune.report import write_report

    try:
        write_report(run.path)
    except (ConfigError, OSError) as exc:
        log.warning("report.html not refreshed: %s", exc)

"""The one run driver: a run directory and everything a search process builds from it.

``autoprune search``, :func:`autoprune.search`, :class:`~autoprune.session.Session` and
``autoprune worker`` all go through :class:`Run`: it traces the dense model, measures (or reads)
its baseline, resolves the budget once (``budget.json``), and builds the problem, the stages,
the books (:class:`~autoprune.ledger.Ledger`) and the backend. :mod:`autoprune.driver` runs the
search loop on top of it.

Resume rules: trials a killed process left RUNNING (or Ctrl-C left failed) are marked failed and
their parameters enqueued again; completed trials are never rerun.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os
import platform
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.backends.base import SearchBackend
from autoprune.budget import ResolvedBudget
from autoprune.errors import ConfigError
from autoprune.ledger import Ledger
from autoprune.plan import Budget
from autoprune.problem import Problem
from autoprune.results import RunDir
from autoprune.settings import FinetuneSettings, SearchSettings
from autoprune.space import SearchSpace, with_target_rounding
from autoprune.stages import Stages, Timer
from autoprune.storage_url import mask_url

if TYPE_CHECKING:
    from autoprune.engine import PrunableModel

__all__ = ["Run", "Target", "claim_run_dir", "default_run_name", "open_run_dir",
           "release_unstarted"]

STUDY = "autoprune"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What is pruned and how a candidate is trained and scored (the user's task)."""

    model: nn.Module
    example_inputs: Any
    evaluate: Callable[..., float] | None
    train_loader: Iterable[Any] | None = None
    finetune: Callable[..., Any] | None = None
    val_size: int | None = None  # examples evaluate(model, "val") scores: the one-SE rule's n

    def __post_init__(self) -> None:
        n = self.val_size
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ConfigError(f"val_size={n!r}: give the number of validation examples "
                              "evaluate(model, 'val') scores (an int >= 1), or None")


@dataclass(frozen=True)
class Recipe:
    """How the run searches: the space, the search settings and the fine-tune settings."""

    space: SearchSpace
    settings: SearchSettings
    finetune: FinetuneSettings


def default_run_name(task: str, budget: Budget) -> str:
    parts = [task.replace("/", "_").replace(":", "_").removesuffix(".py")]
    for key in ("flops", "params", "latency", "latency_ms"):
        value = getattr(budget, key)
        if value is not None:
            parts.append(f"{key.replace('_', '')}{value:g}")
    parts.append(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    return "-".join(parts)


def open_run_dir(run_dir: str | Path | None, config: dict[str, Any], resume: bool,
                 budget: Budget) -> RunDir:
    """Create (writing the resolved ``config``) or, with ``resume``, open a run directory."""
    if resume:
        if run_dir is None:
            raise ConfigError("resume needs the run directory to continue")
        return RunDir.open(run_dir)
    path = Path(run_dir) if run_dir else Path("results") / default_run_name(
        str(config.get("task", {}).get("spec", "python")), budget)
    run = claim_run_dir(path)
    storage = config.get("search", {}).get("storage")
    # the journal in a run dir holds one study; a shared server holds many, one per run (a
    # random suffix: two runs both called results/run must never share a study)
    name = STUDY if storage is None else \
        f"autoprune-{run.path.resolve().name}-{secrets.token_hex(4)}"
    run.write_config({**config, "study_name": name})
    return run


def claim_run_dir(path: Path) -> RunDir:
    """Create ``path`` as a new run directory, claimed by an exclusive create of its
    config.yaml: of two searches started on one ``--out`` at once, exactly one gets it."""
    try:
        RunDir.create(path)
        os.close(os.open(path / "config.yaml", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise ConfigError(f"{str(path)!r} already holds a run; pass --resume {path} to "
                          "continue it or choose another --out") from None
    except OSError as exc:
        raise ConfigError(f"--out {str(path)!r} cannot be created ({exc.strerror}); choose a "
                          "folder you can write to") from None
    return RunDir(path)


def release_unstarted(run: RunDir) -> None:
    """Undo :func:`claim_run_dir` for a run whose start failed (no baseline measured yet): the
    files autoprune wrote go, and the folder too when that leaves it empty, so the corrected
    command can take the same ``--out``."""
    if run.has_baseline():
        return
    for path in (run.config_path, run.budget_path, *run.path.glob(".*.lock")):
        path.unlink(missing_ok=True)
    for folder in (run.plans_dir, run.models_dir, run.path):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: nothing of the user's is removed


def resolved_config(task: dict[str, Any], budget: Budget, trials: int,
                    recipe: Recipe) -> dict[str, Any]:
    """config.yaml: everything needed to rerun."""
    import autoprune

    return {
        "autoprune_version": autoprune.__version__,
        "task": task,
        "budget": {k: v for k, v in asdict(budget).items() if v is not None},
        "trials": trials,
        "space": {"source": recipe.space.source, **recipe.space.to_dict()},
        "finetune": asdict(recipe.finetune),
        # a storage password is never at rest: config.yaml and the study hold the masked URL
        "search": {**asdict(recipe.settings), "storage": mask_url(recipe.settings.storage)},
    }


class Run:
    """One run directory with its traced model, baseline, resolved budget and stages."""

    def __init__(self, run: RunDir, target: Target, budget: Budget, recipe: Recipe) -> None:
        from autoprune.engine import analyze

        settings = recipe.settings
        _check(budget, settings)
        where = timing_device(settings, recipe.finetune)
        if settings.latency:  # before the dense model is timed: a missing runtime fails now
            from autoprune.latency.runtimes import check_runtime

            check_runtime(settings.latency_runtime, where, settings.latency_dtype)
        space = with_target_rounding(recipe.space)
        self.dir, self.target, self.settings, self.ft = run, target, settings, recipe.finetune
        self.evaluate = split_evaluator(target.evaluate)
        analysis = analyze(target.model.eval(), target.example_inputs, ignore=space.ignore)
        self.timer = Timer(run, target.example_inputs, where, settings.latency_batch,
                           settings.latency_dtype, runtime=settings.latency_runtime,
                           max_cv=settings.latency_max_cv)
        self.baseline = self._baseline(analysis, budget)
        cm = analysis.cost_model
        dense_ms = self.baseline.get("dense", {}).get("latency_ms")
        self.budget = ResolvedBudget(budget, cm.dense_macs(), cm.dense_params(), dense_ms)
        if settings.latency and dense_ms:  # candidates are timed beside the dense model
            self.timer.use_reference(analysis.model, float(dense_ms))
        if not run.budget_path.is_file():
            run.write_budget(self.budget.to_dict())
        table = self.timer.table(analysis) if self._fits_latency(settings) else None
        self.problem = Problem(analysis, space, self.budget, settings, table)
        self.stages = Stages(self.problem, run, self.timer, self.evaluate,
                             (target.train_loader, self.ft, finetune_adapter(target.finetune)))
        self.problem.sensitivity = self._sensitivity()
        self.ledger = Ledger(run, self.budget, settings.latency_max_cv,
                             settings.latency_drift)

    def _sensitivity(self) -> dict[str, float] | None:
        """The groups' validation drops for the sensitivity baseline (``--sensitivity``):
        baseline.json's, else measured now (one BatchNorm re-estimation and validation score
        per group) and kept there."""
        p = self.problem
        if not p.wants_sensitivity or self.target.evaluate is None:  # nothing to score with
            return None
        if self.baseline.get("sensitivity") is not None:
            return {k: float(v) for k, v in self.baseline["sensitivity"].items()}
        from autoprune.pipeline import CandidateFailed
        from autoprune.sensitivity import group_drops

        names = [g.name for g, cap in zip(p.groups, p.resolved.caps()) if cap > 0]
        start = time.perf_counter()
        try:
            drops = group_drops(names, self.stages.pipeline.score,
                                self.settings.importance, progress=self.settings.progress)
        except (ValueError, ConfigError, CandidateFailed) as exc:
            log.warning("no sensitivity baseline: %s", exc)
            return None
        self.baseline = {**self.baseline, "sensitivity": drops,
                         "sensitivity_s": time.perf_counter() - start}
        self.dir.write_baseline(self.baseline)
        return drops

    def _fits_latency(self, settings: SearchSettings) -> bool:
        """Candidates are fitted on a latency table under a latency-only budget (channels)."""
        b = self.budget.budget
        return settings.latency and settings.latency_table and settings.mode == "channels" \
            and self.budget.latency_bound and b.flops is None and b.params is None

    @property
    def study_name(self) -> str:
        return str(self.dir.read_config().get("study_name") or STUDY)

    def _baseline(self, analysis: PrunableModel, budget: Budget) -> dict[str, Any]:
        if self.dir.has_baseline():
            return self.dir.read_baseline()
        from autoprune.latency import measure

        s, dense = self.settings, analysis.model
        cost = measure(dense, self.target.example_inputs, device=self.timer.device,
                       latency=s.latency, batch_size=s.latency_batch, dtype=s.latency_dtype,
                       repeats=30, warmup=10, runtime=s.latency_runtime)
        data = {
            "dense": {**cost.to_dict(), "val_acc": self.evaluate(dense, "val"),
                      "test_acc": self.evaluate(dense, "test"),
                      **({} if self.target.val_size is None
                         else {"val_size": int(self.target.val_size)})},
            "groups": len(analysis.groups),
            # the dense widths, so the report can show kept/total channels per group
            "group_channels": {g.name: {"channels": g.channels, "quantum": g.quantum,
                                        "unit_width": g.unit_width}
                               for g in analysis.groups},
            # groups left at full width, and why (the probe's verdicts, attention, embedding)
            "frozen": [{"name": f.name, "reason": f.reason} for f in analysis.frozen],
            "budget": asdict(budget),
            # the hardware the latencies were measured on, and where candidates were fine-tuned
            "environment": {**environment(self.timer.device), "finetune_device": self.ft.device},
        }
        self.dir.write_baseline(data)
        return data

    def backend(self, seed_offset: int = 0) -> SearchBackend:
        """The run's study on its storage, under the configured backend."""
        from autoprune.backends import open_backend

        s = self.settings
        backend = open_backend(s, self.dir, self.study_name, s.seed + seed_offset)
        backend.name_objectives(("val_acc", self.budget.axis))
        return backend


def timing_device(settings: SearchSettings, finetune: FinetuneSettings) -> str:
    """Where candidates are timed: ``--latency-device``, else where they are fine-tuned."""
    return settings.latency_device or finetune.device


def _check(budget: Budget, settings: SearchSettings) -> None:
    latency_bound = budget.latency is not None or budget.latency_ms is not None
    if budget.is_empty:
        raise ConfigError("give a budget: --budget-flops F, --budget-params F or "
                          "--budget-latency F")
    if settings.mode == "weights" and (budget.params is None or budget.flops is not None
                                       or latency_bound):
        raise ConfigError("--mode weights needs --budget-params F (and no FLOPs or latency "
                          "budget): zeroed weights do not lower dense FLOPs or latency")
    if latency_bound and not settings.latency:
        raise ConfigError("a latency budget needs latency measurement; drop --no-latency")


def split_evaluator(
    evaluate: Callable[..., float] | None,
) -> Callable[[nn.Module, str], float | None]:
    """Adapt ``evaluate(model)`` or ``evaluate(model, split)`` to ``(model, split)``."""
    if evaluate is None:
        return _no_score
    try:
        params = inspect.signature(evaluate).parameters
        positional = [p for p in params.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes_split = "split" in params or len(positional) >= 2
    except (TypeError, ValueError):
        takes_split = False
    return _SplitEvaluate(evaluate, takes_split)


def _no_score(model: nn.Module, split: str) -> float | None:
    return None


@dataclass(frozen=True)
class _SplitEvaluate:
    """``evaluate(model, split)`` over the user's function (picklable, for Ray workers)."""

    evaluate: Callable[..., float]
    takes_split: bool

    def __call__(self, model: nn.Module, split: str) -> float | None:
        if self.takes_split:
            return float(self.evaluate(model, split))
        return float(self.evaluate(model)) if split == "val" else None


def finetune_adapter(
    finetune: Callable[..., Any] | None,
) -> Callable[[nn.Module, int], Any] | None:
    """Adapt ``finetune(model, steps)`` or ``finetune(model)`` to ``(model, steps)``."""
    if finetune is None:
        return None
    try:
        n = len(inspect.signature(finetune).parameters)
    except (TypeError, ValueError):
        n = 2
    return finetune if n >= 2 else _IgnoreSteps(finetune)


@dataclass(frozen=True)
class _IgnoreSteps:
    finetune: Callable[[nn.Module], Any]

    def __call__(self, model: nn.Module, steps: int) -> Any:
        return self.finetune(model)


def environment(device: str) -> dict[str, Any]:
    """Versions and hardware, for baseline.json (figures are only comparable with these)."""
    import autoprune
    from autoprune.backends.optuna import version as optuna_version
    from autoprune.engine import torch_pruning_version
    from autoprune.latency import cpu_info, cpu_model

    env = {"autoprune": autoprune.__version__, "torch": torch.__version__,
           "torch_pruning": torch_pruning_version(), "optuna": optuna_version(),
           "python": platform.python_version(), "platform": platform.platform(),
           "cpu_threads": torch.get_num_threads(), "device": device,
           "cuda": torch.version.cuda}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
    else:
        env["device_name"] = cpu_model()
    env.update(cpu_info())  # cpu_model, cpu_count: latencies compare only on the same CPU
    return env

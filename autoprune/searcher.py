"""One search, end to end: dense baseline -> feasible candidates -> pipeline -> results -> front.

The CLI (``autoprune search``) and the Python API (:func:`search`) both end in :class:`Search`.
Candidates are feasible by construction: each trial samples a relative allocation per searched
parameter and a cost level at or under the budget, and :func:`~autoprune.plan.fit_allocation`
projects it onto that level exactly, so no fine-tune is ever spent on an over-budget model. The
uniform and global-ranking plans at the budget are enqueued as the first trials, so every front
shows the naive answer beside the searched one. The validation split selects; the test split is
touched only for front members at the end.
"""

from __future__ import annotations

import inspect
import json
import logging
import platform
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune import pareto
from autoprune.candidates import LEVEL, CandidateStages, Prepared
from autoprune.errors import BudgetError, ConfigError
from autoprune.evaluate import FinetuneSettings, Pipeline
from autoprune.plan import Budget, PruningPlan, fit_allocation_lifting_caps, global_ratios
from autoprune.results import RunDir, TrialRecord, atomic_write_text
from autoprune.space import SearchSpace, load_space

__all__ = ["Prepared", "Search", "SearchResult", "SearchSettings", "search"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SearchSettings:
    """How the search is run (the budget, trial count and run directory are arguments)."""

    sampler: str = "tpe"
    seed: int = 0
    importance: str = "l2"
    level_low: float = 0.6  # lowest cost level sampled, as a fraction of the budget
    latency: bool = True  # measure each candidate's latency (CPU timer / CUDA events)
    latency_batch: int = 1
    latency_dtype: str = "float32"
    storage: str | None = None  # Optuna storage URL; None = study.journal in the run dir
    mode: str = "channels"  # channels (structured) | weights (unstructured, --budget-params)
    workers: int = 1  # local worker processes sharing the study (CPU threads split evenly)
    workers_per_gpu: int = 1  # on CUDA: processes sharing one GPU (each capped at 1/K memory)
    backend: str = "optuna"  # optuna | ray (Tuner + OptunaSearch on the same study)
    ray_address: str | None = None  # None: a local Ray instance; "auto": the running cluster
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    progress: bool = True
    # cheap first, expensive last (see autoprune.staging); defaults from benchmarks/search_quality
    screen: float = 4.0  # proxied candidates per fully fine-tuned one (<= promote: no proxy cut)
    short_fidelity: float = 0.35  # the short stage's share of the full fine-tune (0: none)
    promote: float = 2.0  # short fine-tunes per full one
    generation: int = 2  # full fine-tunes per generation
    priors: bool = True  # start around the uniform / global-ranking plans and the incumbents
    levels: int = 3  # cost levels searched, from the budget down to level_low x budget

    def __post_init__(self) -> None:
        from autoprune.backends.optuna import SAMPLERS
        from autoprune.staging import Schedule

        Schedule(self.screen, self.short_fidelity, self.promote, self.generation)  # validates
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler {self.sampler!r} is unknown; use one of "
                              f"{', '.join(SAMPLERS)}")
        if self.levels < 1:
            raise ConfigError(f"--levels {self.levels} must be >= 1")
        if not 0.0 < self.level_low <= 1.0:
            raise ConfigError(f"level_low={self.level_low} must be in (0, 1]")
        if self.workers < 1 or self.workers_per_gpu < 1:
            raise ConfigError(f"--workers {self.workers} and --workers-per-gpu "
                              f"{self.workers_per_gpu} must be >= 1")
        if self.mode not in ("channels", "weights"):
            raise ConfigError(f"--mode {self.mode!r}; use channels or weights")
        if self.backend not in ("optuna", "ray"):
            raise ConfigError(f"--backend {self.backend!r}; use optuna or ray")
        if self.backend == "ray" and self.workers > 1:
            raise ConfigError("--workers is for the optuna backend; with --backend ray, Ray "
                              "runs trials in parallel (--cpus-per-trial, --gpus-per-trial)")
        if self.latency_batch < 1:
            raise ConfigError(f"--latency-batch {self.latency_batch} must be >= 1")
        if self.latency_dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"--latency-dtype {self.latency_dtype!r}; use float32, float16 "
                              "or bfloat16")


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    trials: list[TrialRecord]
    front: list[TrialRecord]
    baseline: dict[str, Any] = field(default_factory=dict)


def _split_evaluator(
    evaluate: Callable[..., float] | None,
) -> Callable[[nn.Module, str], float | None]:
    """Adapt ``evaluate(model)`` or ``evaluate(model, split)`` to ``(model, split)``."""
    if evaluate is None:
        return lambda model, split: None
    try:
        takes_split = "split" in inspect.signature(evaluate).parameters or len(
            [p for p in inspect.signature(evaluate).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 2
    except (TypeError, ValueError):
        takes_split = False

    def call(model: nn.Module, split: str) -> float | None:
        if takes_split:
            return float(evaluate(model, split))
        return float(evaluate(model)) if split == "val" else None

    return call


def _finetune_adapter(
    finetune: Callable[..., Any] | None,
) -> Callable[[nn.Module, int], Any] | None:
    if finetune is None:
        return None
    try:
        n = len(inspect.signature(finetune).parameters)
    except (TypeError, ValueError):
        n = 2
    return finetune if n >= 2 else (lambda model, steps: finetune(model))


def environment(device: str) -> dict[str, Any]:
    import optuna
    import torch_pruning

    import autoprune

    env = {"autoprune": autoprune.__version__, "torch": torch.__version__,
           "torch_pruning": torch_pruning.__version__, "optuna": optuna.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "cpu_threads": torch.get_num_threads(), "device": device,
           "cuda": torch.version.cuda}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


class Search(CandidateStages):
    """Everything one run needs; :meth:`run` searches and writes the run directory."""

    def __init__(self, model: nn.Module, example_inputs: Any,
                 evaluate: Callable[..., float] | None,
                 train_loader: Iterable[Any] | None, budget: Budget, run: RunDir,
                 finetune: Callable[..., Any] | None = None,
                 space: SearchSpace | None = None,
                 finetune_settings: FinetuneSettings | None = None,
                 settings: SearchSettings | None = None) -> None:
        from autoprune.graph import analyze

        self.latency_bound = budget.latency is not None or budget.latency_ms is not None
        if budget.is_empty:
            raise BudgetError("give a budget: --budget-flops F, --budget-params F or "
                              "--budget-latency F")
        self.settings = settings or SearchSettings()
        if self.settings.mode == "weights" and (budget.params is None or budget.flops is not None
                                                or self.latency_bound):
            raise ConfigError("--mode weights needs --budget-params F (and no FLOPs or latency "
                              "budget): zeroed weights do not lower dense FLOPs or latency")
        if self.latency_bound and not self.settings.latency:
            raise ConfigError("a latency budget needs latency measurement; drop --no-latency")
        self.ft = finetune_settings or FinetuneSettings()
        self.space = space or load_space("default")
        if self.ft.device.startswith("cuda") and self.space.round_to is None:
            import dataclasses

            # tensor cores want channel counts in multiples of 8 (DESIGN decision 4)
            self.space = dataclasses.replace(self.space, round_to=8)
        self.budget, self.run_dir = budget, run
        self.example_inputs = example_inputs
        self.evaluate = _split_evaluator(evaluate)
        self.analysis = analyze(model.eval(), example_inputs, ignore=self.space.ignore)
        self.groups = self.analysis.groups
        self.resolved = self.space.resolve([g.name for g in self.groups])
        self.train_loader = train_loader
        self._finetune = _finetune_adapter(finetune)
        self._pipeline: Pipeline | None = None
        self._baselines: list[tuple[dict[str, float], dict[str, Any]]] | None = None
        # the cost candidates are fitted on (analytic); latency is measured on top of it
        self.metric = "params" if budget.flops is None and budget.params is not None else "macs"
        self.fraction = float(budget.params if self.metric == "params" else budget.flops or 1.0)
        self.dense_latency: float | None = None
        cm = self.analysis.cost_model
        self.dense_macs, self.dense_params = cm.dense_macs(), cm.dense_params()
        from autoprune.cost import LatencyCache

        self.latency_cache = LatencyCache()

    def __getstate__(self) -> dict[str, Any]:
        # for Ray workers: the pipeline is rebuilt lazily there; an absolute run dir keeps
        # plans/ and models/ in place whatever the worker's working directory
        state = self.__dict__.copy()
        state["_pipeline"] = None
        state["run_dir"] = RunDir(self.run_dir.path.absolute())
        return state

    @property
    def pipeline(self) -> Pipeline:
        """Built on first use: ask/tell sessions train candidates themselves and never need it."""
        if self._pipeline is None:
            self._pipeline = Pipeline(self.analysis, self.evaluate,  # type: ignore[arg-type]
                                      self.train_loader, self.ft, self._finetune)
        return self._pipeline

    # -- dense baseline --------------------------------------------------------------------
    def baseline(self) -> dict[str, Any]:
        if self.run_dir.baseline_path.is_file():
            return self.run_dir.read_baseline()
        from autoprune.cost import measure

        dense = self.analysis.model
        cost = measure(dense, self.example_inputs, device=self.ft.device,
                       latency=self.settings.latency, batch_size=self.settings.latency_batch,
                       dtype=self.settings.latency_dtype, repeats=30, warmup=10)
        data = {
            "dense": {**cost.to_dict(), "val_acc": self.evaluate(dense, "val"),
                      "test_acc": self.evaluate(dense, "test")},
            "groups": len(self.groups),
            "budget": asdict(self.budget),
            "environment": environment(self.ft.device),
        }
        self.run_dir.write_baseline(data)
        return data

    def bind_baseline(self, data: dict[str, Any]) -> None:
        """Take the dense latency from the baseline (latency budgets are fractions of it)."""
        self.dense_latency = data.get("dense", {}).get("latency_ms")
        if not self.latency_bound:
            return
        if not self.dense_latency:
            raise ConfigError("the dense model's latency could not be measured; a latency "
                              "budget needs it")
        if self.budget.latency_ms is not None:
            self.latency_limit = float(self.budget.latency_ms)
        else:
            self.latency_limit = float(self.budget.latency) * self.dense_latency  # type: ignore
        if self.budget.flops is None and self.budget.params is None:
            # FLOPs fall faster than latency (0.6-0.9x here), so a latency fraction L needs
            # FLOPs at most ~L: candidates are fitted onto FLOPs levels in [L^2, L].
            self.fraction = min(1.0, self.latency_limit / self.dense_latency)

    def latency_ratio(self, latency_ms: float | None) -> float | None:
        if latency_ms is None or not self.dense_latency:
            return None
        return latency_ms / self.dense_latency

    def time_model(self, model: nn.Module, repeats: int = 10) -> float | None:
        """Latency of ``model``; local workers take turns on the device (one file lock)."""
        from filelock import FileLock

        from autoprune.cost import measure

        lock = FileLock(str(self.run_dir.path / f".latency-{self.ft.device}.lock"))
        with lock:
            return measure(model, self.example_inputs, device=self.ft.device,
                           batch_size=self.settings.latency_batch,
                           dtype=self.settings.latency_dtype, repeats=repeats, warmup=3,
                           cache=self.latency_cache).latency_ms

    # -- candidates ------------------------------------------------------------------------
    def specs(self) -> list[Any]:
        from autoprune.backends.optuna import ParamSpec

        specs = [ParamSpec(p.name, p.low, p.high, p.step) for p in self.resolved.params]
        if self.settings.mode == "weights":  # one global magnitude ranking: the level is all
            specs = []
        low = self.fraction * self.settings.level_low if self.settings.levels > 1 else self.fraction
        if self.latency_bound and self.budget.flops is None and self.budget.params is None:
            low = min(low, self.fraction ** 2)
        return [*specs, ParamSpec(LEVEL, low, self.fraction)]

    def plan_for(self, params: dict[str, float]) -> PruningPlan:
        if self.settings.mode == "weights":  # no channels go; the weights are zeroed instead
            return PruningPlan({}, self.settings.importance, None)
        level = float(params.get(LEVEL, self.fraction))
        dense = self.dense_macs if self.metric == "macs" else self.dense_params
        kept = fit_allocation_lifting_caps(
            self.analysis.cost_model, [g.channels for g in self.groups],
            [g.quantum for g in self.groups], self.resolved.allocation(params), level * dense,
            self.metric, self.resolved.caps(), self.space.round_to)
        ratios = {g.name: 1.0 - k / g.channels for g, k in zip(self.groups, kept)
                  if k < g.channels}
        return PruningPlan(ratios, self.settings.importance, self.space.round_to)

    def baseline_params(self) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """The uniform and global-ranking plans at the budget, as searched parameter values
        (computed once: the priors ask for them every generation until one has incumbents)."""
        if self._baselines is None:
            self._baselines = self._compute_baseline_params()
        return [(dict(p), dict(a)) for p, a in self._baselines]

    def _compute_baseline_params(self) -> list[tuple[dict[str, float], dict[str, Any]]]:
        if self.settings.mode == "weights":
            return [({LEVEL: self.fraction}, {"baseline": "global-l1"})]
        label = self.settings.importance if self.settings.importance != "taylor" else "l2"
        out = [({**self.resolved.uniform(), LEVEL: self.fraction},
                {"baseline": f"uniform-{label}"})]
        try:
            ratios = global_ratios(
                self.analysis.importance_scores(label), [g.channels for g in self.groups],
                [g.quantum for g in self.groups], self.analysis.cost_model,
                self.fraction * (self.dense_macs if self.metric == "macs" else self.dense_params),
                self.metric, self.resolved.caps())
            by_name = {g.name: r for g, r in zip(self.groups, ratios)}
            out.append(({**self.resolved.from_group_ratios(by_name), LEVEL: self.fraction},
                        {"baseline": f"global-{label}"}))
        except BudgetError as exc:
            log.warning("global-ranking baseline skipped: %s", exc)
        return out

    def costs(self, plan: PruningPlan) -> dict[str, Any]:
        """Analytic MACs/params of ``plan`` and their ratios to the dense model."""
        kept = self.analysis.kept(plan)
        cm = self.analysis.cost_model
        macs, n_params = cm.macs(kept), cm.params(kept)
        return {"macs": macs, "params": n_params, "flops_ratio": macs / self.dense_macs,
                "params_ratio": n_params / self.dense_params, "plan": plan.to_dict(),
                "fidelity": 1.0}

    # -- results ---------------------------------------------------------------------------
    def objective_cost(self, flops_ratio: float | None, params_ratio: float | None,
                       latency_ms: float | None) -> float | None:
        """The cost the front is built on: latency ratio under a latency budget, else the
        fitted ratio (FLOPs, or params when only a params budget is given)."""
        if self.latency_bound:
            return self.latency_ratio(latency_ms)
        return flops_ratio if self.metric == "macs" else params_ratio

    def cost_of(self, r: TrialRecord) -> float | None:
        return self.objective_cost(r.flops_ratio, r.params_ratio, r.latency_ms)

    def front_of(self, records: list[TrialRecord]) -> list[TrialRecord]:
        full = [r for r in records if r.state == "COMPLETE" and r.val_acc is not None
                and (r.fidelity or 0) >= 1.0 and self.cost_of(r) is not None]
        idx = pareto.non_dominated([(r.val_acc, self.cost_of(r)) for r in full], ("max", "min"))
        return sorted((full[i] for i in idx), key=lambda r: self.cost_of(r) or 0.0)

    def _test_scores_path(self) -> Path:
        return self.run_dir.path / "test_scores.json"

    def test_scores(self) -> dict[int, float]:
        path = self._test_scores_path()
        if not path.is_file():
            return {}
        return {int(k): float(v) for k, v in json.loads(path.read_text()).items()}

    def _remeasured_path(self) -> Path:
        return self.run_dir.path / "latency_remeasured.json"

    def remeasured(self) -> dict[int, float]:
        path = self._remeasured_path()
        if not path.is_file():
            return {}
        return {int(k): float(v) for k, v in json.loads(path.read_text()).items() if k.isdigit()}

    def merge(self, records: list[TrialRecord]) -> list[TrialRecord]:
        """Records with test scores and end-of-run latencies (over a latency budget ->
        INFEASIBLE) folded in."""
        scores, latency = self.test_scores(), self.remeasured()
        out = []
        for r in records:
            r = _with(r, test_acc=scores.get(r.trial), latency_ms=latency.get(r.trial))
            if self.latency_bound and r.trial in latency and r.state == "COMPLETE" \
                    and latency[r.trial] > self.latency_limit:
                r = _with(r, state="INFEASIBLE", fail_reason=(
                    f"re-measured latency {latency[r.trial]:.4g} ms over the budget "
                    f"{self.latency_limit:.4g} ms"))
            out.append(r)
        return out

    def remeasure_front(self, records: list[TrialRecord]) -> None:
        """Time the dense model and every front member again, alone and longer, until the
        front is stable; latency ratios and a latency budget then use the final dense time."""
        if not self.settings.latency:
            return
        measured: dict[Any, float] = dict(self.remeasured())
        if self.latency_bound or self.dense_latency:
            # the dense model too, under the same conditions: ratios compare like with like
            self.latency_cache = type(self.latency_cache)()
            dense = self.time_model(self.analysis.model, repeats=50)
            if dense:
                measured["dense"] = dense
                self.dense_latency = dense
                if self.latency_bound and self.budget.latency is not None:
                    self.latency_limit = float(self.budget.latency) * dense
                baseline = self.run_dir.read_baseline()
                baseline["dense"]["latency_final_ms"] = dense
                self.run_dir.write_baseline(baseline)
                atomic_write_text(self._remeasured_path(), json.dumps(measured, indent=2))
        for _ in range(10):
            todo = [r for r in self.front_of(self.merge(records))
                    if r.trial not in measured and self._state_path(r.trial).is_file()]
            if not todo:
                break
            for r in todo:
                self.latency_cache = type(self.latency_cache)()  # no cached figure
                measured[r.trial] = self.time_model(self.load_candidate(r), repeats=50) or 0.0
            atomic_write_text(self._remeasured_path(), json.dumps(measured, indent=2))

    def write(self, records: list[TrialRecord]) -> list[TrialRecord]:
        """Write trials.csv and the front; drop saved weights of dominated candidates."""
        records = self.merge(records)
        front = self.front_of(records)
        self.run_dir.write_trials(records)
        self.run_dir.write_front(front)
        keep = {r.trial for r in front} | {r.trial for r in records if r.baseline}
        finished = {r.trial for r in records if r.state != "RUNNING"}  # a worker may be saving
        for path in self.run_dir.models_dir.glob("trial_*.pt"):
            number = int(path.stem.split("_")[1])
            if number in finished and number not in keep:
                path.unlink(missing_ok=True)
        return records

    def score_front_on_test(self, front: list[TrialRecord]) -> None:
        scores = self.test_scores()
        baselines = [r for r in self.run_dir.read_trials() if r.baseline and r.state == "COMPLETE"]
        for r in [*front, *baselines]:
            if r.trial in scores or not self._state_path(r.trial).is_file():
                continue
            value = self.evaluate(self.load_candidate(r), "test")
            if value is not None:
                scores[r.trial] = value
        atomic_write_text(self._test_scores_path(), json.dumps(scores, indent=2))


def _with(r: TrialRecord, **changes: Any) -> TrialRecord:
    from dataclasses import replace

    return replace(r, **{k: v for k, v in changes.items() if v is not None})


def search(model: nn.Module, example_inputs: Any, *, evaluate: Callable[..., float],
           finetune: Callable[..., Any] | None = None,
           train_loader: Iterable[Any] | None = None,
           budget: Budget | None = None, trials: int = 20,
           run_dir: str | Path | None = None, space: str | SearchSpace = "default",
           finetune_settings: FinetuneSettings | None = None,
           settings: SearchSettings | None = None, resume: bool = False) -> SearchResult:
    """Search per-group pruning ratios of ``model`` under ``budget``; keep the Pareto front.

    ``evaluate(model)`` (or ``evaluate(model, split)`` with split ``"val"``/``"test"``) returns
    accuracy, higher is better. ``finetune(model, steps)`` (or ``finetune(model)``) trains a
    candidate in place; without it autoprune fine-tunes on ``train_loader`` batches of
    ``(inputs, targets)`` with cross-entropy. ``train_loader`` also feeds BatchNorm
    re-estimation for the proxy score. Results go to ``run_dir`` (default ``results/<name>``).
    """
    from autoprune.runner import run_search

    budget = budget or Budget(flops=0.4)
    space_obj = space if isinstance(space, SearchSpace) else load_space(space)
    config = {"task": {"python": True}}
    return run_search(
        lambda run: Search(model, example_inputs, evaluate, train_loader, budget, run, finetune,
                           space_obj, finetune_settings, settings),
        budget=budget, trials=trials, run_dir=run_dir, config=config, resume=resume,
        settings=settings or SearchSettings(), space=space_obj,
        finetune_settings=finetune_settings or FinetuneSettings())

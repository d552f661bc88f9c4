"""autoprune inside the user's own training code: ask/tell sessions and an in-loop prune hook.

- :class:`Session` hands out pruned candidates (feasible by construction, baselines first) for
  the user's loop to train, takes back their accuracy, and keeps the same run directory and
  front as ``autoprune search``. Early stopping is a median rule over the curves reported so far
  (Optuna's pruners raise in multi-objective studies); a stopped candidate is recorded with its
  partial fidelity and never enters the front.
- :class:`PruneHook` prunes the user's model *in place* to a plan at chosen steps or epochs (one
  shot, or gradually over several events) and keeps the user's optimizer valid: pruned
  parameters are swapped into its param groups and their optimizer state (momentum, Adam
  moments) is reset; untouched parameters keep theirs.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.plan import Budget, PruningPlan

__all__ = ["Candidate", "PruneHook", "Session"]

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One pruned model for the user's loop: train ``model``, ``report``, then ``finish``."""

    number: int
    plan: PruningPlan
    model: nn.Module
    costs: dict[str, Any]
    _session: Session = field(repr=False)
    _trial: Any = field(repr=False)
    curve: dict[int, float] = field(default_factory=dict)
    stopped: bool = False
    finished: bool = False
    started: float = field(default_factory=time.perf_counter)

    @property
    def flops_ratio(self) -> float:
        return float(self.costs["flops_ratio"])

    def report(self, value: float, step: int) -> None:
        """An intermediate accuracy (higher is better) at ``step``; feeds :meth:`should_stop`."""
        self.curve[int(step)] = float(value)

    def should_stop(self) -> bool:
        """True when the last reported value is below the median of finished candidates' at
        the same step (after ``min_finished`` candidates); stopping marks partial fidelity."""
        if not self.curve:
            return False
        step = max(self.curve)
        peers = [c[step] for c in self._session.curves if step in c]
        if len(peers) < self._session.min_finished:
            return False
        self.stopped = self.curve[step] < statistics.median(peers)
        return self.stopped

    def finish(self, accuracy: float) -> None:
        """The final validation accuracy of this candidate (ends its trial)."""
        self._session._finish(self, float(accuracy))

    def fail(self, reason: str) -> None:
        self._session._fail(self, reason)


class Session:
    """Ask/tell over the same study, run directory and front as ``autoprune search``.

    ``train_loader`` (optional) re-estimates BatchNorm statistics of each candidate before it is
    handed out, which is what makes a pruned model trainable from the first step.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, budget: Budget | None = None,
                 run_dir: str | Path | None = None, space: Any = "default",
                 evaluate: Callable[..., float] | None = None,
                 train_loader: Iterable[Any] | None = None, settings: Any = None) -> None:
        from autoprune.backends.optuna import OptunaBackend, make_storage
        from autoprune.results import RunDir
        from autoprune.runner import default_run_name, resolved_config, study_name
        from autoprune.searcher import Search, SearchSettings
        from autoprune.space import SearchSpace, load_space

        budget = budget or Budget(flops=0.4)
        settings = settings or SearchSettings(latency=False)
        space_obj = space if isinstance(space, SearchSpace) else load_space(space)
        path = Path(run_dir) if run_dir else Path("results") / default_run_name("session", budget)
        self.run = RunDir.open(path) if (path / "config.yaml").exists() else RunDir.create(path)
        if not self.run.config_path.exists():
            from autoprune.evaluate import FinetuneSettings

            config = resolved_config({"task": {"python": True, "session": True}}, budget, 0,
                                     settings, space_obj, FinetuneSettings())
            config["study_name"] = study_name(self.run, settings)
            self.run.write_config(config)
        self.search = Search(model, example_inputs, evaluate, train_loader, budget, self.run,
                             space=space_obj, settings=settings)
        self.search.bind_baseline(self.search.baseline())
        self.backend = OptunaBackend(make_storage(settings.storage, self.run.journal_path),
                                     self.run.read_config().get("study_name")
                                     or study_name(self.run, settings),
                                     settings.sampler, settings.seed, ("maximize", "minimize"))
        if not self.backend.study.trials:
            for params, attrs in self.search.baseline_params():
                self.backend.enqueue(params, attrs)
        self.train_loader = train_loader
        self.min_finished = 3
        self.curves: list[dict[int, float]] = []

    def candidates(self, n: int) -> Iterator[Candidate]:
        """``n`` pruned candidates, one at a time; unfinished ones are recorded as failed."""
        from autoprune.backends.optuna import Outcome
        from autoprune.errors import BudgetError
        from autoprune.evaluate import reestimate_bn

        if n < 1:
            raise ConfigError(f"candidates(n={n}): n must be >= 1")
        for _ in range(n):
            trial, params = self.backend.ask(self.search.specs())
            try:
                plan = self.search.plan_for(params)
            except BudgetError as exc:
                self.backend.tell(trial, Outcome("INFEASIBLE", (0.0, self.search.fraction), 1.0,
                                                 {"fail_reason": str(exc)}))
                continue
            self.run.write_plan(trial.number, plan.to_dict())
            costs = self.search.costs(plan)
            over = self.search.over_budget(costs)
            if over is not None:
                self.backend.tell(trial, over)
                continue
            model = self.search.analysis.apply(plan)
            if self.train_loader is not None:
                reestimate_bn(model, self.train_loader, self.search.ft.bn_batches, "cpu")
            cand = Candidate(trial.number, plan, model, costs, self, trial)
            try:
                yield cand
            finally:  # also when the caller breaks out of the loop
                if not cand.finished:
                    self._fail(cand, "the loop did not call finish()")
        self.write_report()

    def _finish(self, cand: Candidate, accuracy: float) -> None:
        from autoprune.backends.optuna import Outcome

        if cand.finished:
            raise ConfigError(f"candidate {cand.number} is already finished")
        cand.finished = True
        fidelity = 1.0
        if cand.stopped and cand.curve and self.curves:
            longest = max(max(c) for c in self.curves)  # steps are 0-based: count them
            fidelity = min(1.0, (max(cand.curve) + 1) / (longest + 1))
        elif cand.curve:
            self.curves.append(dict(cand.curve))
        cost = cand.costs["flops_ratio" if self.search.metric == "macs" else "params_ratio"]
        attrs = {**cand.costs, "val_acc": accuracy, "fidelity": fidelity,
                 "seconds": time.perf_counter() - cand.started, "curve": cand.curve}
        self.search._save_state(cand.number, cand.model)
        self.backend.tell(cand._trial, Outcome("COMPLETE", (accuracy, cost), 0.0, attrs))
        self.search.write(self.backend.records())

    def _fail(self, cand: Candidate, reason: str) -> None:
        from autoprune.backends.optuna import Outcome

        cand.finished = True
        self.backend.tell(cand._trial, Outcome("FAIL", None, 0.0,
                                               {**cand.costs, "fail_reason": reason}))
        self.search.write(self.backend.records())

    def write_report(self) -> Path:
        """Write trials.csv, the front (test-scored when ``evaluate`` takes a split) and the
        HTML report; returns the run directory."""
        records = self.search.write(self.backend.records())
        self.search.score_front_on_test(self.search.front_of(records))
        self.search.write(self.backend.records())
        try:
            from autoprune.report import write_report

            write_report(str(self.run.path))
        except ImportError:  # pragma: no cover - the HTML report is optional here
            pass
        return self.run.path


class PruneHook:
    """Prune the user's model in place to ``plan`` at chosen steps (or epochs).

    Call :meth:`on_step_end` after each optimizer step (or :meth:`on_epoch_end` after each
    epoch). With several entries in ``at_steps``/``at_epochs`` pruning is gradual: event k of K
    keeps ``k/K`` of the way from dense to the plan's channel counts. ``history`` holds the cost
    after each event.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, plan: PruningPlan,
                 optimizer: torch.optim.Optimizer | None = None,
                 at_steps: Sequence[int] | None = None,
                 at_epochs: Sequence[int] | None = None) -> None:
        if (at_steps is None) == (at_epochs is None):
            raise ConfigError("PruneHook needs exactly one of at_steps=[...] or at_epochs=[...]")
        events = sorted(at_steps if at_steps is not None else at_epochs)  # type: ignore[arg-type]
        if not events or events[0] < 0 or len(set(events)) != len(events):
            raise ConfigError(f"pruning points {events!r} must be distinct non-negative ints")
        from autoprune.graph import analyze

        self.model, self.example_inputs, self.optimizer = model, example_inputs, optimizer
        self.plan = plan
        self.events = events
        self.unit = "step" if at_steps is not None else "epoch"
        self._count = 0
        analysis = analyze(model, example_inputs)
        analysis.check_plan(plan)
        self._target = dict(zip([g.name for g in analysis.groups], analysis.kept(plan)))
        self._dense = {g.name: g.channels for g in analysis.groups}
        self._dense_macs = analysis.cost_model.dense_macs()
        self.history: list[dict[str, Any]] = []

    def on_step_end(self) -> None:
        if self.unit == "step":
            self._tick()

    def on_epoch_end(self) -> None:
        if self.unit == "epoch":
            self._tick()

    def _tick(self) -> None:
        self._count += 1
        if self._count in self.events:
            self._prune(self.events.index(self._count) + 1)

    def _prune(self, k: int) -> None:
        from autoprune.graph import analyze

        fraction = k / len(self.events)
        analysis = analyze(self.model, self.example_inputs)
        ratios = {}
        for g in analysis.groups:
            if g.name not in self._target:
                continue
            dense, target = self._dense[g.name], self._target[g.name]
            want = round(dense - fraction * (dense - target))
            if want < g.channels:
                ratios[g.name] = 1.0 - want / g.channels
        plan = PruningPlan(ratios, self.plan.importance, self.plan.round_to)
        before = {id(p): (n, p) for n, p in self.model.named_parameters()}
        analysis.apply(plan, inplace=True)
        self._fix_optimizer(before)
        macs = analysis.cost_model.macs(analysis.kept(plan))
        entry = {self.unit: self._count, "event": k, "macs": macs,
                 "flops_ratio": macs / self._dense_macs}
        self.history.append(entry)
        log.info("pruned at %s %d (event %d/%d): %.1f%% of the dense FLOPs",
                 self.unit, self._count, k, len(self.events), 100 * entry["flops_ratio"])

    def _fix_optimizer(self, before: dict[int, tuple[str, nn.Parameter]]) -> None:
        if self.optimizer is None:
            return
        now = dict(self.model.named_parameters())
        for group in self.optimizer.param_groups:
            fresh = []
            for p in group["params"]:
                name, _ = before.get(id(p), (None, p))
                new = now.get(name) if name is not None else p
                if new is None:
                    continue
                if new is not p:  # pruned: a new tensor; its momentum no longer lines up
                    self.optimizer.state.pop(p, None)
                fresh.append(new)
            group["params"] = fresh

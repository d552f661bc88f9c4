"""Ask/tell for the user's own training loop: :class:`Session` hands out pruned candidates
(feasible by construction, baselines first, over-budget ones never handed out) for the user's
loop to train, takes back their accuracy, and keeps the same run directory, budget and front as
``autoprune search``. Early stopping is a median rule over the curves reported so far (Optuna's
pruners raise in multi-objective studies); a stopped candidate is recorded with its partial
fidelity and never enters the front.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.backends.base import Asked
from autoprune.errors import ConfigError
from autoprune.plan import DEFAULT_BUDGET, Budget, PruningPlan
from autoprune.results import RunDir
from autoprune.run import Recipe, Run, Target, default_run_name, resolved_config
from autoprune.settings import FinetuneSettings, SearchSettings
from autoprune.space import SearchSpace, load_space
from autoprune.trial import Outcome, TrialState

__all__ = ["Candidate", "Session"]


@dataclass
class Candidate:
    """One pruned model for the user's loop: train ``model``, ``report``, then ``finish``."""

    number: int
    plan: PruningPlan
    model: nn.Module
    costs: dict[str, Any]
    _session: Session = field(repr=False)
    _asked: Asked = field(repr=False)
    curve: dict[int, float] = field(default_factory=dict)
    stopped: bool = False
    finished: bool = False
    started: float = field(default_factory=time.time)

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
    handed out, which is what makes a pruned model trainable from the first step. Latency is
    not measured unless ``settings`` asks for it (a latency budget does).
    """

    def __init__(self, model: nn.Module, example_inputs: Any, budget: Budget | None = None,
                 run_dir: str | Path | None = None, space: str | SearchSpace = "default",
                 evaluate: Callable[..., float] | None = None,
                 train_loader: Iterable[Any] | None = None,
                 settings: SearchSettings | None = None) -> None:
        from autoprune.run import open_run_dir

        budget = budget or DEFAULT_BUDGET
        recipe = Recipe(space if isinstance(space, SearchSpace) else load_space(space),
                        settings or SearchSettings(latency=False), FinetuneSettings())
        path = Path(run_dir) if run_dir else Path("results") / default_run_name("session", budget)
        resume = RunDir.holds_run(path)
        config = resolved_config({"python": True, "session": True}, budget, 0, recipe)
        run_d = open_run_dir(path, config, resume, budget)
        self.run = Run(run_d, Target(model, example_inputs, evaluate, train_loader), budget,
                       recipe)
        self.backend = self.run.backend()
        if not self.backend.records():
            for params, attrs in self.run.problem.baseline_params():
                self.backend.enqueue(params, attrs)
        self.train_loader = train_loader
        self.min_finished = 3
        self.curves: list[dict[int, float]] = []

    def candidates(self, n: int) -> Iterator[Candidate]:
        """``n`` pruned candidates, one at a time; unfinished ones are recorded as failed."""
        from autoprune.pipeline import reestimate_bn

        if n < 1:
            raise ConfigError(f"candidates(n={n}): n must be >= 1")
        stages, specs = self.run.stages, self.run.problem.specs()
        for _ in range(n):
            asked = self.backend.ask(specs)
            prep = stages.prepare(asked.params, asked.number, asked.attrs)
            if prep.outcome is not None:  # over a budget (FLOPs, params or latency)
                self.backend.tell(asked, prep.outcome)
                continue
            model = prep.model if prep.model is not None else \
                self.run.problem.analysis.apply(prep.plan)
            if self.train_loader is not None:
                reestimate_bn(model, self.train_loader, self.run.ft.bn_batches, "cpu")
            cand = Candidate(asked.number, prep.plan, model, prep.rec, self, asked)
            try:
                yield cand
            finally:  # also when the caller breaks out of the loop
                if not cand.finished:
                    self._fail(cand, "the loop did not call finish()")
        self.write_report()

    def _finish(self, cand: Candidate, accuracy: float) -> None:
        if cand.finished:
            raise ConfigError(f"candidate {cand.number} is already finished")
        cand.finished = True
        fidelity = 1.0
        if cand.stopped and cand.curve and self.curves:
            longest = max(max(c) for c in self.curves)  # steps are 0-based: count them
            fidelity = min(1.0, (max(cand.curve) + 1) / (longest + 1))
        elif cand.curve:
            self.curves.append(dict(cand.curve))
        attrs = {**cand.costs, "val_acc": accuracy, "fidelity": fidelity,
                 "seconds": time.time() - cand.started, "curve": cand.curve}
        self.run.stages.save(cand.number, cand.model)
        cost = self.run.problem.objective(attrs)
        self.backend.tell(cand._asked, Outcome(TrialState.COMPLETE, (accuracy, cost or 0.0),
                                               0.0, attrs))
        self.run.ledger.write(self.backend.records())

    def _fail(self, cand: Candidate, reason: str) -> None:
        cand.finished = True
        self.backend.tell(cand._asked, Outcome(TrialState.FAIL, None, 0.0,
                                               {**cand.costs, "fail_reason": reason}))
        self.run.ledger.write(self.backend.records())

    def write_report(self) -> Path:
        """Write trials.csv, the front (test-scored when ``evaluate`` takes a split) and the
        HTML report; returns the run directory."""
        ledger = self.run.ledger
        records = ledger.write(self.backend.records())
        ledger.score_on_test(records, self.run.evaluate, self.run.stages.load)
        ledger.write(self.backend.records(), final=True)
        from autoprune.report import write_report

        write_report(str(self.run.dir.path))
        return self.run.dir.path

"""The run's books: trials as the backend has them, plus what the end of a run adds (test scores
of front members, latencies re-measured alone), the front built from them, and the files.

The front is built on the resolved budget's axis (:meth:`~autoprune.budget.ResolvedBudget.cost_of`)
from fully fine-tuned trials only; a trial whose re-measured latency is over a latency budget
becomes ``INFEASIBLE``. Saved weights of dominated candidates are dropped as the run goes.
:meth:`Ledger.publish` writes the end-of-run figures back to the study (optuna-dashboard).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from autoprune import pareto
from autoprune.backends.base import SearchBackend
from autoprune.budget import ResolvedBudget
from autoprune.results import RunDir
from autoprune.trial import TrialRecord, TrialState

__all__ = ["Ledger"]


@dataclass
class Ledger:
    """Reads and writes a run's results; ``budget`` follows the end-of-run re-timing."""

    run: RunDir
    budget: ResolvedBudget

    def merge(self, records: list[TrialRecord]) -> list[TrialRecord]:
        """Records with test scores and end-of-run latencies folded in (over a latency budget
        on the final timing -> INFEASIBLE)."""
        scores, latency = self.run.read_scores("test"), self.run.read_scores("latency")
        limit = self.budget.latency_limit_ms
        out = []
        for r in records:
            r = r.updated(test_acc=scores.get(r.trial), latency_ms=latency.get(r.trial))
            if limit is not None and r.trial in latency and r.state is TrialState.COMPLETE \
                    and latency[r.trial] > limit:
                r = r.updated(state=TrialState.INFEASIBLE, fail_reason=(
                    f"re-measured latency {latency[r.trial]:.4g} ms over the budget "
                    f"{limit:.4g} ms"))
            out.append(r)
        return out

    def front(self, records: list[TrialRecord]) -> list[TrialRecord]:
        """The non-dominated fully fine-tuned trials, cheapest first."""
        cost = self.budget.cost_of
        full = [r for r in records if r.is_full and cost(r) is not None]
        idx = pareto.non_dominated([(r.val_acc, cost(r)) for r in full], ("max", "min"))
        return sorted((full[i] for i in idx), key=lambda r: cost(r) or 0.0)

    def write(self, records: list[TrialRecord], final: bool = False) -> list[TrialRecord]:
        """Write trials.csv and the front; drop saved weights of dominated candidates (under a
        latency budget only when ``final``: the end-of-run re-timing can change the front)."""
        records = self.merge(records)
        front = self.front(records)
        self.run.write_trials(records)
        self.run.write_front(front)
        if self.budget.latency_bound and not final:
            return records
        keep = {r.trial for r in front} | {r.trial for r in records if r.baseline}
        finished = {r.trial for r in records if r.state is not TrialState.RUNNING}
        for number, path in self.run.saved_models().items():
            if number in finished and number not in keep:  # a running one may be saving
                path.unlink(missing_ok=True)
        return records

    def remeasure(self, records: list[TrialRecord], time_model: Callable[..., float | None],
                  build: Callable[[TrialRecord], nn.Module], dense: nn.Module) -> None:
        """Time the dense model and every front member again, alone and longer, until the
        front is stable; latency ratios and a latency budget then use the final dense time.
        ``time_model(model, repeats, cached)``; ``build(record)`` the pruned architecture
        (latency does not depend on the weights, so dropped weights do not matter)."""
        measured: dict[Any, float] = dict(self.run.read_scores("latency"))
        dense_ms = time_model(dense, 50, False)
        if dense_ms:
            measured["dense"] = dense_ms
            self.budget = self.budget.with_dense_latency(dense_ms)
            self.run.write_budget(self.budget.to_dict())
            baseline = self.run.read_baseline()
            baseline["dense"]["latency_final_ms"] = dense_ms
            self.run.write_baseline(baseline)
            self.run.write_scores("latency", measured)
        for _ in range(10):
            todo = [r for r in self.front(self.merge(records)) if r.trial not in measured]
            if not todo:
                break
            for r in todo:
                measured[r.trial] = time_model(build(r), 50, False) or 0.0
            self.run.write_scores("latency", measured)

    def score_on_test(self, records: list[TrialRecord],
                      evaluate: Callable[[nn.Module, str], float | None],
                      load: Callable[[TrialRecord], nn.Module]) -> None:
        """Test accuracy of the front members and the baselines (the only test-split use);
        ``records`` as :meth:`write` returned them."""
        scores: dict[Any, float] = dict(self.run.read_scores("test"))
        saved = self.run.saved_models()
        baselines = [r for r in records if r.baseline and r.state is TrialState.COMPLETE]
        for r in [*self.front(records), *baselines]:
            if r.trial in scores or r.trial not in saved:
                continue
            value = evaluate(load(r), "test")
            if value is not None:
                scores[r.trial] = value
        self.run.write_scores("test", scores)

    def publish(self, backend: SearchBackend) -> None:
        """Write the end-of-run figures back to the study: ``test_acc`` of the front members
        and baselines, ``latency_final_ms`` of the re-timed front and of ``"dense"`` (see
        :meth:`~autoprune.backends.base.SearchBackend.set_attrs`); after :meth:`score_on_test`."""
        figures: dict[int | str, dict[str, float]] = {}
        for number, value in self.run.read_scores("test").items():
            figures.setdefault(number, {})["test_acc"] = value
        for number, value in self.run.read_scores("latency").items():
            figures.setdefault(number, {})["latency_final_ms"] = value
        if self.run.has_baseline():
            dense = (self.run.read_baseline().get("dense") or {}).get("latency_final_ms")
            if dense is not None:
                figures["dense"] = {"latency_final_ms": float(dense)}
        for key, attrs in figures.items():
            backend.set_attrs(key, attrs)

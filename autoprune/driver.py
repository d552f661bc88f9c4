"""Running a search on a :class:`~autoprune.run.Run`: the launching process, extra workers, and
the Python entry point :func:`search`.

The launching process primes the study (baselines first, or the retries of a resumed run),
starts local workers, runs generations until the requested number of full fine-tunes is done,
then re-times the front alone and scores it on the test split. Every other process is a worker
(:func:`work`): it runs generations on the same study and writes nothing but its trials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock
from torch import nn

from autoprune.backends.base import SearchBackend
from autoprune.errors import ConfigError
from autoprune.generations import optimize
from autoprune.interrupts import watching
from autoprune.plan import DEFAULT_BUDGET, Budget
from autoprune.results import RunDir
from autoprune.run import Recipe, Run, Target, open_run_dir, release_unstarted, resolved_config
from autoprune.selection import recommend
from autoprune.settings import FinetuneSettings, RunSettings, SearchSettings
from autoprune.space import SearchSpace, load_space
from autoprune.trial import TrialRecord
from autoprune.workers import WorkerArgs, pin_gpu, spawn, stop

__all__ = ["SearchResult", "join_study", "run_search", "search", "work"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """A finished search: every trial, the Pareto front, the dense figures and the model to
    deploy (:func:`autoprune.selection.recommend`: a one-liner baseline within one standard
    error of the best validation accuracy when the run knows its ``val_size``, else the best)."""

    run_dir: Path
    trials: list[TrialRecord]
    front: list[TrialRecord]
    baseline: dict[str, Any] = field(default_factory=dict)
    recommended: TrialRecord | None = None


def prime(run: Run, backend: SearchBackend, resume: bool, trials: int) -> None:
    """Baselines first in a new study; on resume, the trials to retry and any baseline a kill
    skipped. A run that already holds its ``trials`` full fine-tunes queues nothing (a queued
    trial would stay WAITING in a finished study)."""
    retries = backend.recover() if resume else []
    if backend.slots().done >= trials:
        retries, priors = [], False
    else:
        priors = run.settings.priors
    for params, attrs in retries:
        backend.enqueue(params, attrs)
    if priors:  # a run killed before they were enqueued gets them on resume
        have = {r.baseline for r in backend.records()}
        for params, attrs in run.problem.baseline_params():
            if attrs.get("baseline") not in have:
                backend.enqueue(params, attrs)
    if run.settings.storage is not None:  # workers on other machines rebuild the run from these
        backend.share({"autoprune_config": run.dir.read_config(),
                       "autoprune_baseline": run.dir.read_baseline()})


def run_search(run: Run, trials: int, resume: bool, rebuildable: bool) -> SearchResult:
    """Search until ``trials`` full fine-tunes are done; write every result file."""
    if trials < 1:
        raise ConfigError(f"--trials {trials} must be >= 1")
    backend = run.backend()
    try:
        prime(run, backend, resume, trials)
        _loop(run, backend, trials, rebuildable)
        return finish(run, backend)
    finally:
        backend.close()


class _Bar:
    """The search's progress bar: full fine-tunes done of ``--trials``, with the generation,
    the stage and candidate under way, and the best full-fidelity trial so far."""

    def __init__(self, run: Run, backend: SearchBackend, trials: int) -> None:
        self.ledger, self.backend = run.ledger, backend
        self.bar = _progress(trials, backend.slots().done, run.settings.progress)
        self.generations, self.best = 1, ""  # the generation under way, counted here

    def generation(self) -> None:
        self.generations += 1
        self.refresh()

    def refresh(self) -> None:
        """Rewrite the books and show what is done (also while other workers' trials run)."""
        records = self.ledger.write(self.backend.records())
        self.bar.update(max(0, self.backend.slots().done - self.bar.n))
        best = max((r for r in records if r.is_full), key=lambda r: r.val_acc or 0.0,
                   default=None)
        if best is not None:
            self.best = (f"best val {best.val_acc:.2%} at "
                         f"{self.ledger.budget.cost_of(best) or 0.0:.1%} (trial {best.trial})")
        self.bar.set_postfix_str(self.best)

    def stage(self, name: str, done: int, total: int, trial: int) -> None:
        now = f"gen {self.generations} · {name} {done}/{total} · trial {trial}"
        self.bar.set_postfix_str(f"{now} · {self.best}" if self.best else now)

    def close(self) -> None:
        self.bar.close()


def _loop(run: Run, backend: SearchBackend, trials: int, rebuildable: bool) -> None:
    ledger, s = run.ledger, run.settings
    ledger.write(backend.records())
    bar = _Bar(run, backend, trials)
    remaining = trials - backend.slots().done
    procs = spawn(run.dir, s.workers, s.workers_per_gpu, run.ft.device, rebuildable) \
        if remaining > 0 else []
    lock = FileLock(str(run.dir.lock_path("ask")))
    try:
        while backend.slots().done < trials:
            optimize(backend, run.stages, trials, bar, lock)
            if backend.slots().done >= trials:
                break
            if not any(p.poll() is None for p in procs) and backend.slots().running == 0:
                continue  # nothing left running: the next round reaps and runs the rest
            time.sleep(0.5)  # other workers' trials are still running
            bar.refresh()
    except KeyboardInterrupt:
        stop(procs)
        ledger.write(backend.records())
        bar.close()
        log.warning("interrupted: %d trials are written to %s; continue with "
                    "`autoprune search --resume %s`", backend.slots().done, run.dir.path,
                    run.dir.path)
        raise
    stop(procs, wait=True)
    bar.close()


def finish(run: Run, backend: SearchBackend) -> SearchResult:
    """Re-time the front alone, score it (and the baselines) on test, write the results."""
    ledger = run.ledger
    backend.drop_queued("queued, not run: the search had reached --trials")
    records = ledger.write(backend.records())
    if run.settings.latency:
        ledger.remeasure(records, run.timer.together, run.stages.architecture,
                         run.problem.analysis.model)
        records = ledger.write(backend.records())
    ledger.score_on_test(records, run.evaluate, run.stages.load)
    ledger.publish(backend)  # test accuracy, final latencies onto the study (optuna-dashboard)
    records = ledger.write(backend.records(), final=True)
    pick = recommend([r for r in records if r.is_full], run.baseline["dense"].get("val_size"),
                     cost=ledger.budget.cost_of)
    return SearchResult(run.dir.path, records, ledger.front(records), run.baseline, pick)


def work(run: Run, trials: int, args: WorkerArgs) -> int:
    """One extra worker on a run's study: generations until the total is reached; returns the
    number of trials it added."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    pin_gpu(args.per_gpu)
    # each worker samples with its own seed: same-seeded samplers would propose the same plans
    backend = run.backend(seed_offset=1000 * args.index)
    try:
        before = backend.slots().done
        optimize(backend, run.stages, trials, None, FileLock(str(run.dir.lock_path("ask"))))
        return backend.slots().done - before
    finally:
        backend.close()


def join_study(storage: str, study: str, run_dir: str | Path | None) -> RunDir:
    """A local run directory for a worker on another machine, from the study's attributes."""
    from autoprune.backends.optuna import shared_attrs

    attrs = shared_attrs(storage, study)
    run = RunDir.create(Path(run_dir) if run_dir else Path("results") / f"worker-{study}")
    run.write_config(attrs["autoprune_config"])
    run.write_baseline(attrs["autoprune_baseline"])
    return run


def search(model: nn.Module, example_inputs: Any, *, evaluate: Callable[..., float],
           finetune: Callable[..., Any] | None = None,
           train_loader: Iterable[Any] | None = None,
           budget: Budget | None = None, trials: int = RunSettings.trials,
           run_dir: str | Path | None = None, space: str | SearchSpace = "default",
           finetune_settings: FinetuneSettings | None = None,
           settings: SearchSettings | None = None, resume: bool = False,
           val_size: int | None = None) -> SearchResult:
    """Search per-group pruning ratios of ``model`` under ``budget``; keep the Pareto front.

    ``evaluate(model)`` (or ``evaluate(model, split)`` with split ``"val"``/``"test"``) returns
    accuracy, higher is better. ``finetune(model, steps)`` (or ``finetune(model)``) trains a
    candidate in place; without it autoprune fine-tunes on ``train_loader`` batches of
    ``(inputs, targets)`` with cross-entropy. ``train_loader`` also feeds BatchNorm
    re-estimation for the proxy score. Results go to ``run_dir`` (default ``results/<name>``).
    ``val_size``, the number of examples ``evaluate(model, "val")`` scores, turns on the
    one-standard-error rule for :attr:`SearchResult.recommended` (:mod:`autoprune.selection`);
    without it the recommended model is the best on validation.
    """
    budget = budget or DEFAULT_BUDGET
    recipe = Recipe(space if isinstance(space, SearchSpace) else load_space(space),
                    settings or SearchSettings(), finetune_settings or FinetuneSettings())
    config = resolved_config({"python": True}, budget, trials, recipe)
    run_d = open_run_dir(run_dir, config, resume, budget)
    with watching():  # a Ctrl-C that a library swallowed still stops the search
        try:
            run = Run(run_d, Target(model, example_inputs, evaluate, train_loader, finetune,
                                    val_size), budget, recipe)
        except BaseException:
            if not resume:
                release_unstarted(run_d)
            raise
        return run_search(run, trials, resume, rebuildable=False)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="search", unit="trial", disable=not enabled,
                dynamic_ncols=True, leave=True)

"""The Ray Tune backend (``--backend ray``, extra ``autoprune[ray]``): the same search problem as
:mod:`autoprune.backends.optuna`, with trials run as Ray Tune trials on a Ray cluster.

One study, one journal: Ray Tune's ``OptunaSearch`` is given the run's Optuna storage (by default
``<run>/study.journal``) and study name, so every trial Ray runs is an Optuna trial of the same
study the Optuna backend would use: trial numbers are Optuna's (0..n-1 in creation order), the
enqueued baselines are the first trials (Optuna's ``ask`` pops enqueued trials first, user
attributes included), and :meth:`RayBackend.records` reads the study exactly as the Optuna
backend does. Ray's own experiment state (for ``Tuner.restore``) lives in ``<run>/ray/tune``.

The objective (``Search.evaluate_trial``, a bound method) travels to the workers through the
object store (``tune.with_parameters``); each worker re-traces the model on unpickling. The
trainable reports once, at the end, with ``ray.tune.report``; the driver-side searcher turns
that report into the Optuna trial's values, user attributes and budget constraint.

Ray is imported only here, and only when a :class:`RayBackend` is built (4 s and 640 MiB).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.backends.optuna import OptunaBackend, Outcome, ParamSpec, _plain, make_sampler
from autoprune.errors import BackendUnavailable, ConfigError
from autoprune.results import TrialRecord

__all__ = ["RayBackend"]

log = logging.getLogger(__name__)

METRICS = ("val_acc", "cost")
EXPERIMENT = "tune"  # <run>/ray/tune, then tune-1, tune-2, ... for runs extended on resume
_FINAL = "autoprune_final"  # set only in the trainable's one report, after the evaluation


def _import_ray() -> Any:
    try:
        import ray
        import ray.tune
        import ray.tune.search.optuna
    except ImportError as exc:
        raise BackendUnavailable(
            f"--backend ray needs Ray Tune ({exc}); install it with: "
            'pip install "autoprune[ray]"') from exc
    return ray


# -- driver-side hooks, looked up by a token so that nothing pickled holds a closure -------------
@dataclass
class _Hooks:
    on_trial: Callable[[], None] | None = None
    live: set[str] = field(default_factory=set)  # Ray trials started and not yet ended


_HOOKS: dict[str, _Hooks] = {}


def _hooks(token: str) -> _Hooks:
    return _HOOKS.setdefault(token, _Hooks())


# -- the trainable (runs in a Ray worker) -------------------------------------------------------
def _trainable(config: dict[str, Any], evaluate: Callable[..., Outcome]) -> None:
    from ray import tune

    number = int(config["number"])
    params = {k: float(v) for k, v in config["params"].items()}
    try:
        outcome = evaluate(params, number, dict(config.get("attrs") or {}))
    except Exception as exc:  # a worker-side failure fails this trial, not the whole search
        log.exception("trial %d failed in its Ray worker", number)
        outcome = Outcome("FAIL", None, 0.0, {"fail_reason": f"{type(exc).__name__}: {exc}"})
    values = list(outcome.values) if outcome.values is not None else [None] * len(METRICS)
    tune.report({**dict(zip(METRICS, values)), "state": outcome.state,
                 "violation": float(outcome.violation), "number": number,
                 # one JSON string: Tune flattens nested metric dicts with "/"
                 "attrs": json.dumps(_plain(dict(outcome.attrs))), _FINAL: True})


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.config.get('number', trial.trial_id)}"


# -- Ray classes, built on first use (module __getattr__) so importing this module imports no Ray
def _make_searcher() -> type:
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class _Searcher(OptunaSearch):
        """OptunaSearch that passes the Optuna trial number and attributes to the trainable,
        and records autoprune's outcome (values, attributes, state, constraint) on completion."""

        def __init__(self, *args: Any, token: str, **kwargs: Any) -> None:
            self._token = token
            super().__init__(*args, **kwargs)

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            super().suggest(trial_id)  # asks the study: enqueued trials first
            trial = self._ot_trials[trial_id]
            return {"number": trial.number, "params": dict(trial.params),
                    "attrs": dict(trial.user_attrs)}

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            self._completed_trials.add(trial_id)
            trial = self._ot_trials[trial_id]
            stored = self._ot_study._storage.get_trial(trial._trial_id)
            if stored.state.is_finished():  # rerun by Tuner.restore after its result was told
                log.info("trial %d was already recorded as %s; keeping that record",
                         trial.number, stored.state.name)
            else:
                _tell(self._ot_study, trial, result, error)
            hooks = _HOOKS.get(self._token)
            if hooks is not None and hooks.on_trial is not None:
                hooks.on_trial()

    def _tell(study: optuna.Study, trial: optuna.Trial, result: dict[str, Any] | None,
              error: bool) -> None:
        if not result or not result.get(_FINAL):
            # errored, or stopped (scheduler, time budget) before the trainable's final report
            values = [result.get(m) for m in METRICS] if result else [None]
            if error or any(v is None for v in values):
                reason = ("the Ray trial errored: its worker raised or died (see the trial's "
                          "error.txt under <run>/ray)") if error else \
                    "stopped by Ray before it reported a result"
                trial.set_user_attr("fail_reason", reason)
                trial.set_user_attr("state", "FAIL")
                study.tell(trial, state=TrialState.FAIL)
                return
            # stopped early with partial metrics: kept, but never on the front (fidelity < 1)
            trial.set_user_attr("fidelity", min(float(result.get("fidelity") or 0.0), 0.5))
            trial.set_user_attr("fail_reason", "stopped early by the Ray scheduler")
            trial.set_user_attr("state", "COMPLETE")
            study.tell(trial, [float(v) for v in values])
            return
        attrs = json.loads(result.get("attrs") or "{}")
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        state = str(result.get("state", "COMPLETE"))
        trial.set_user_attr("state", state)
        trial.set_constraint("budget", float(result.get("violation") or 0.0))
        values = [result.get(m) for m in METRICS]
        if state == "FAIL" or any(v is None for v in values):
            if "fail_reason" not in attrs:
                trial.set_user_attr("fail_reason", "failed")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, [float(v) for v in values])

    return _Searcher


def _make_watch() -> type:
    from ray import tune

    class _Watch(tune.Callback):
        """Tracks Ray trials that started and did not end: left over after fit() = interrupted."""

        def __init__(self, token: str) -> None:
            self.token = token

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            _hooks(self.token).live.add(trial.trial_id)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any,
                              **info: Any) -> None:
            _hooks(self.token).live.discard(trial.trial_id)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            _hooks(self.token).live.discard(trial.trial_id)

    return _Watch


_LAZY: dict[str, Callable[[], type]] = {"_Searcher": _make_searcher, "_Watch": _make_watch}


def __getattr__(name: str) -> Any:
    """Build the Ray subclasses on first use; unpickling (Tuner.restore) finds them here too."""
    if name in _LAZY:
        _import_ray()
        cls = _LAZY[name]()
        cls.__module__, cls.__name__, cls.__qualname__ = __name__, name, name
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy(name: str) -> type:
    return globals()[name] if name in globals() else __getattr__(name)


# -- the backend --------------------------------------------------------------------------------
class RayBackend:
    """The Optuna study of the run, with trials run by Ray Tune (same methods as
    :class:`~autoprune.backends.optuna.OptunaBackend`).

    ``address``: a Ray cluster to join (``ray.init(address=...)``, e.g. ``"auto"``); ``None``
    starts a local instance with ``num_cpus`` CPUs unless Ray is already initialised. On a
    cluster the run directory must be on storage every node sees (plans and weights are written
    by the workers). ``cpus_per_trial``/``gpus_per_trial`` are each trial's Ray resources
    (fractional GPUs share a device but do not cap its memory); ``max_concurrent`` caps trials in
    flight (default: as many as the resources allow).
    """

    def __init__(self, storage: Any, study_name: str, sampler: str, seed: int,
                 directions: Sequence[str], *, run_dir: str | os.PathLike[str],
                 address: str | None = None, num_cpus: int | None = None,
                 cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                 max_concurrent: int | None = None, verbose: int = 0) -> None:
        _import_ray()
        if tuple(directions) != ("maximize", "minimize"):
            raise ConfigError(f"the Ray backend searches (val_acc max, cost min); got "
                              f"directions {tuple(directions)}")
        if cpus_per_trial <= 0 or gpus_per_trial < 0:
            raise ConfigError(f"cpus_per_trial={cpus_per_trial} must be > 0 and "
                              f"gpus_per_trial={gpus_per_trial} >= 0")
        if max_concurrent is not None and max_concurrent < 1:
            raise ConfigError(f"max_concurrent={max_concurrent} must be >= 1")
        self._optuna = OptunaBackend(storage, study_name, sampler, seed, directions)
        self.storage, self.study = storage, self._optuna.study
        self.study_name, self.sampler, self.seed = study_name, sampler, seed
        self.directions = tuple(directions)
        self.run_dir = Path(run_dir).absolute()
        self.ray_dir = self.run_dir / "ray"
        self.address, self.num_cpus = address, num_cpus
        self.resources = {"cpu": float(cpus_per_trial), "gpu": float(gpus_per_trial)}
        self.max_concurrent, self.verbose = max_concurrent, verbose
        self._restore = False
        self._token = str(self.run_dir)

    # -- queue (the study itself, as with the Optuna backend) ---------------------------------
    def enqueue(self, params: Mapping[str, float], attrs: Mapping[str, Any]) -> None:
        self._optuna.enqueue(params, attrs)

    def recover(self) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """On resume: restore Ray's experiment if it can be (it reruns its unfinished trials
        under their own numbers: nothing to retry); else fail RUNNING trials and retry them."""
        from ray import tune

        latest = self._latest_experiment()
        if latest is not None and tune.Tuner.can_restore(str(latest)):
            self._restore = True
            return []
        return self._optuna.recover()

    def done(self) -> int:
        return self._optuna.done()

    def records(self) -> list[TrialRecord]:
        return self._optuna.records()

    # the user's own ask/tell loop runs in this process, on the same study
    def ask(self, specs: Sequence[ParamSpec]) -> Any:
        return self._optuna.ask(specs)

    def tell(self, trial: Any, outcome: Outcome) -> None:
        self._optuna.tell(trial, outcome)

    # -- run -----------------------------------------------------------------------------------
    def optimize(self, specs: Sequence[ParamSpec], evaluate: Callable[[dict[str, float], int,
                 dict[str, Any]], Outcome], n_trials: int,
                 on_trial: Callable[[], None] | None = None) -> None:
        """Run until ``n_trials`` more trials have finished (restoring Ray's experiment first
        when :meth:`recover` found one); ``evaluate(params, trial_number, attrs)``."""
        ray = _import_ray()
        from ray import tune

        target = self.done() + n_trials
        os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"  # the trainable keeps the working directory
        started = self._init_ray(ray)
        hooks = _hooks(self._token)
        hooks.on_trial, hooks.live = on_trial, set()
        trainable = tune.with_resources(tune.with_parameters(_trainable, evaluate=evaluate),
                                        self.resources)
        try:
            for _ in range(8):  # restored experiment, then fresh ones while trials are missing
                if self._restore:
                    self._restore = False
                    path = self._latest_experiment()
                    log.info("restoring the Ray experiment %s", path)
                    tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True,
                                               resume_errored=False, restart_errored=False)
                else:
                    left = target - self.done()
                    if left <= 0:
                        break
                    tuner = self._tuner(trainable, specs, left)
                tuner.fit()
                if hooks.live:  # Ctrl-C: Tune stopped and saved its state; resume restores it
                    raise KeyboardInterrupt
                self._fail_orphans()
        finally:
            hooks.on_trial = None
            _HOOKS.pop(self._token, None)
            if started:
                ray.shutdown()

    def _init_ray(self, ray: Any) -> bool:
        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if self.address:
            kwargs["address"] = self.address
            # workers of an existing cluster do not inherit this process's environment
            kwargs["runtime_env"] = {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}
        else:
            kwargs["num_cpus"] = self.num_cpus
        ray.init(**kwargs)
        return True

    def _tuner(self, trainable: Any, specs: Sequence[ParamSpec], num_samples: int) -> Any:
        from optuna.distributions import FloatDistribution
        from ray import tune

        searcher = _lazy("_Searcher")(
            space={s.name: FloatDistribution(s.low, s.high, step=s.step) for s in specs},
            metric=list(METRICS), mode=["max", "min"],
            # a fresh sampler per experiment: offset its seed by the trials already in the study,
            # or an extended run would draw the first run's random start-up points again
            sampler=make_sampler(self.sampler, self.seed + self._asked()),
            study_name=self.study_name, storage=self.storage, token=self._token)
        name = self._next_experiment_name()
        log.info("Ray experiment %s: %d trials", self.ray_dir / name, num_samples)
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=num_samples,
                                        max_concurrent_trials=self.max_concurrent,
                                        trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(storage_path=str(self.ray_dir), name=name,
                                      verbose=self.verbose,
                                      callbacks=[_lazy("_Watch")(self._token)]))

    def _asked(self) -> int:
        from optuna.trial import TrialState

        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state != TrialState.WAITING)

    def _fail_orphans(self) -> None:
        """After a complete Ray experiment, a RUNNING trial can only be one Ray lost (the driver
        was killed between asking the study and saving its state): fail it and retry it."""
        from optuna.trial import TrialState

        if any(t.state == TrialState.RUNNING for t in self.study.get_trials(deepcopy=False)):
            for params, attrs in self._optuna.recover():
                self.enqueue(params, attrs)

    # -- Ray experiment directories --------------------------------------------------------------
    def _experiments(self) -> list[tuple[int, Path]]:
        if not self.ray_dir.is_dir():
            return []
        found = []
        for path in self.ray_dir.iterdir():
            m = re.fullmatch(rf"{EXPERIMENT}(?:-(\d+))?", path.name)
            if m and path.is_dir():
                found.append((int(m.group(1) or 0), path))
        return sorted(found)

    def _latest_experiment(self) -> Path | None:
        found = self._experiments()
        return found[-1][1] if found else None

    def _next_experiment_name(self) -> str:
        found = self._experiments()
        return EXPERIMENT if not found else f"{EXPERIMENT}-{found[-1][0] + 1}"

"""The Ray backend (``--backend ray``, extra ``autoprune[ray]``): the same study and the same
staged search as :mod:`autoprune.backends.optuna`, with the stage jobs of each generation (proxy
scores, short and full fine-tunes) run as Ray tasks across a cluster.

The study stays where the Optuna backend keeps it (``<run>/study.journal``, or ``--storage``):
the driver asks and tells, so trial numbers, enqueued baselines, screening and fidelities are
exactly those of the Optuna backend for the same seed; only where the fine-tunes run changes.
The :class:`~autoprune.stages.Stages` object travels once per run into Ray's object store; each
task rebuilds its pipeline and writes the candidate's weights into the run directory (on a
cluster, put the run directory on storage every node sees). Resume is the Optuna backend's:
trials left RUNNING are failed and retried.

Ray is imported only here, and only when a :class:`RayBackend` is built (4 s and 640 MiB).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autoprune.backends.optuna import OptunaBackend
from autoprune.errors import BackendUnavailable, ConfigError

__all__ = ["RayBackend", "RayOptions"]

log = logging.getLogger(__name__)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailable(
            f"--backend ray needs Ray ({exc}); install it with: "
            'pip install "autoprune[ray]"') from exc
    return ray


def _call(owner: Any, method: str, item: Any) -> Any:
    """A stage job in a Ray worker: ``owner.method(item)``."""
    return getattr(owner, method)(item)


@dataclass(frozen=True)
class RayOptions:
    """Where and how stage jobs run.

    ``address``: a Ray cluster to join (``ray.init(address=...)``, e.g. ``"auto"``); ``None``
    starts a local instance (``num_cpus`` CPUs) unless Ray is already initialised.
    ``cpus``/``gpus``: each task's resources; fractional GPUs share a device but do not cap
    its memory.
    """

    address: str | None = None
    num_cpus: int | None = None
    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.gpus < 0:
            raise ConfigError(f"--cpus-per-trial {self.cpus} must be > 0 and "
                              f"--gpus-per-trial {self.gpus} >= 0")


class RayBackend(OptunaBackend):
    """The run's Optuna study, with stage jobs run as Ray tasks (see :class:`RayOptions`)."""

    runs_jobs_here = False

    def __init__(self, storage: Any, study_name: str, sampler: str, seed: int,
                 options: RayOptions | None = None) -> None:
        self._ray = _import_ray()
        options = options or RayOptions()
        super().__init__(storage, study_name, sampler, seed)
        self.address, self.num_cpus = options.address, options.num_cpus
        self.resources = {"num_cpus": float(options.cpus), "num_gpus": float(options.gpus)}
        self._started = False
        self._remote: Any = None
        self._owners: dict[int, tuple[Any, Any]] = {}  # id(owner) -> (owner, object ref)

    def map(self, job: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``[job(x) for x in items]`` as Ray tasks (``job`` a bound method: its object is put
        into the object store once); a task whose worker raised or died gives its exception."""
        if not items:
            return []
        owner, method = getattr(job, "__self__", None), getattr(job, "__name__", "")
        if owner is None:
            raise ConfigError(f"the Ray backend runs bound methods as jobs, not {job!r}")
        ray = self._ray
        self._init()
        if id(owner) not in self._owners:
            self._owners[id(owner)] = (owner, ray.put(owner))
        ref = self._owners[id(owner)][1]
        futures = [self._remote.remote(ref, method, item) for item in items]
        out: list[Any] = []
        try:
            for future in futures:
                try:
                    out.append(ray.get(future))
                except ray.exceptions.RayError as exc:  # the task's worker raised or died
                    log.warning("a Ray task failed: %s", str(exc).splitlines()[0][:300])
                    out.append(exc)
        except KeyboardInterrupt:
            for future in futures:
                ray.cancel(future, force=True)
            raise
        return out

    def _init(self) -> None:
        ray = self._ray
        if self._remote is not None:
            return
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False,
                                      "logging_level": logging.WARNING}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs["num_cpus"] = self.num_cpus
            # workers import autoprune the way this process does (an unpacked source tree too)
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                p for p in (os.environ.get("PYTHONPATH"), os.getcwd()) if p)}}
            ray.init(**kwargs)
            self._started = True
        self._remote = ray.remote(**self.resources, max_retries=0)(_call)

    def close(self) -> None:
        """Shut down the local Ray instance this backend started (a joined cluster stays)."""
        self._owners.clear()
        self._remote = None
        if self._started:
            self._ray.shutdown()
            self._started = False

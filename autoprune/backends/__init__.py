"""Search backends: the study a search asks and tells, and where its stage jobs run.

:mod:`autoprune.backends.optuna` (default, embedded) and :mod:`autoprune.backends.ray` (a Ray
cluster) are the only modules that import optuna and ray; both implement
:class:`~autoprune.backends.base.SearchBackend`. Nothing heavy is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoprune.backends.base import SearchBackend
    from autoprune.results import RunDir
    from autoprune.settings import SearchSettings

__all__ = ["open_backend"]


def open_backend(settings: SearchSettings, run: RunDir, study_name: str,
                 seed: int) -> SearchBackend:
    """The run's study on its storage (``settings.storage``, else ``<run>/study.journal``),
    sampled with ``settings.sampler`` from ``seed``, under ``settings.backend``."""
    from autoprune.backends.optuna import OptunaBackend, make_storage

    storage = make_storage(settings.storage, run.journal_path)
    if settings.backend == "ray":
        from autoprune.backends.ray import RayBackend, RayOptions

        return RayBackend(storage, study_name, settings.sampler, seed,
                          RayOptions(settings.ray_address, None, settings.cpus_per_trial,
                                     settings.gpus_per_trial))
    return OptunaBackend(storage, study_name, settings.sampler, seed)

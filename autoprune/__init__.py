"""autoprune: find the pruned network you would actually deploy.

Structured (channel) pruning searched per coupled group under FLOPs, params and latency budgets,
with a Pareto front of accuracy vs cost. Heavy parts (torch, torch-pruning, optuna) are imported
on first use, so ``import autoprune`` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoprune._lazy import lazy_getattr
from autoprune.errors import (
    AutopruneError,
    BackendUnavailable,
    BudgetError,
    ConfigError,
    UnsupportedModelError,
)
from autoprune.plan import Budget, PruningPlan

__version__ = "0.1.0"

_LAZY = {
    "Cost": "autoprune.latency",
    "measure": "autoprune.latency",
    "Group": "autoprune.engine",
    "PrunableModel": "autoprune.engine",
    "analyze": "autoprune.engine",
    "apply_plan": "autoprune.engine",
    "fit_budget": "autoprune.engine",
    "prunable_groups": "autoprune.engine",
    "register_layer": "autoprune.engine.custom",
    "unregister_layer": "autoprune.engine.custom",
    "search": "autoprune.driver",
    "Session": "autoprune.session",
    "PruneHook": "autoprune.hooks",
    "SearchResult": "autoprune.driver",
    "SearchSettings": "autoprune.settings",
    "FinetuneSettings": "autoprune.settings",
    "RunSettings": "autoprune.settings",
    "ResolvedBudget": "autoprune.budget",
    "TrialRecord": "autoprune.trial",
    "TrialState": "autoprune.trial",
    "SearchSpace": "autoprune.space",
    "load_space": "autoprune.space",
    "load_pruned": "autoprune.deploy.archive",
    "QuantizedModel": "autoprune.deploy.quantize",
    "quantize": "autoprune.deploy.quantize",
    "WeightMask": "autoprune.deploy.weights",
    "prune_weights": "autoprune.deploy.weights",
    "sparsity_schedule": "autoprune.deploy.weights",
    "sparse_size": "autoprune.deploy.weights",
    "save_sparse": "autoprune.deploy.weights",
    "load_sparse": "autoprune.deploy.weights",
    "save_pruned": "autoprune.deploy.archive",
}

__all__ = [
    "AutopruneError",
    "BackendUnavailable",
    "Budget",
    "BudgetError",
    "ConfigError",
    "Cost",
    "FinetuneSettings",
    "Group",
    "PrunableModel",
    "PruneHook",
    "PruningPlan",
    "QuantizedModel",
    "ResolvedBudget",
    "RunSettings",
    "SearchResult",
    "SearchSettings",
    "SearchSpace",
    "Session",
    "TrialRecord",
    "TrialState",
    "UnsupportedModelError",
    "WeightMask",
    "analyze",
    "apply_plan",
    "fit_budget",
    "load_pruned",
    "load_space",
    "load_sparse",
    "measure",
    "prunable_groups",
    "prune_weights",
    "quantize",
    "register_layer",
    "save_pruned",
    "save_sparse",
    "search",
    "sparse_size",
    "sparsity_schedule",
    "unregister_layer",
]

if TYPE_CHECKING:
    from autoprune.budget import ResolvedBudget
    from autoprune.deploy.archive import load_pruned, save_pruned
    from autoprune.deploy.quantize import QuantizedModel, quantize
    from autoprune.deploy.weights import (
        WeightMask,
        load_sparse,
        prune_weights,
        save_sparse,
        sparse_size,
        sparsity_schedule,
    )
    from autoprune.driver import SearchResult, search
    from autoprune.engine import (
        Group,
        PrunableModel,
        analyze,
        apply_plan,
        fit_budget,
        prunable_groups,
    )
    from autoprune.engine.custom import register_layer, unregister_layer
    from autoprune.hooks import PruneHook
    from autoprune.latency import Cost, measure
    from autoprune.session import Session
    from autoprune.settings import FinetuneSettings, RunSettings, SearchSettings
    from autoprune.space import SearchSpace, load_space
    from autoprune.trial import TrialRecord, TrialState


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)

"""autoprune: find the pruned network you would actually deploy.

Structured (channel) pruning searched per coupled group under FLOPs, params and latency budgets,
with a Pareto front of accuracy vs cost. Heavy parts (torch, torch-pruning, optuna) are imported
on first use, so ``import autoprune`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autoprune.errors import (
    AutopruneError,
    BackendUnavailable,
    BudgetError,
    ConfigError,
    UnsupportedModelError,
)
from autoprune.plan import Budget, PruningPlan, fit_budget

__version__ = "0.1.0"

_LAZY = {
    "Cost": "autoprune.cost",
    "measure": "autoprune.cost",
    "Group": "autoprune.graph",
    "PrunableModel": "autoprune.graph",
    "analyze": "autoprune.graph",
    "apply_plan": "autoprune.graph",
    "prunable_groups": "autoprune.graph",
    "search": "autoprune.searcher",
    "Session": "autoprune.hooks",
    "PruneHook": "autoprune.hooks",
    "SearchResult": "autoprune.searcher",
    "SearchSettings": "autoprune.searcher",
    "FinetuneSettings": "autoprune.evaluate",
    "SearchSpace": "autoprune.space",
    "load_space": "autoprune.space",
    "load_pruned": "autoprune.archive",
    "QuantizedModel": "autoprune.quantize",
    "quantize": "autoprune.quantize",
    "WeightMask": "autoprune.weights",
    "prune_weights": "autoprune.weights",
    "sparsity_schedule": "autoprune.weights",
    "sparse_size": "autoprune.weights",
    "save_sparse": "autoprune.weights",
    "load_sparse": "autoprune.weights",
    "save_pruned": "autoprune.archive",
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
    "SearchResult",
    "SearchSettings",
    "SearchSpace",
    "Session",
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
    "save_pruned",
    "save_sparse",
    "search",
    "sparse_size",
    "sparsity_schedule",
]

if TYPE_CHECKING:
    from autoprune.archive import load_pruned, save_pruned
    from autoprune.cost import Cost, measure
    from autoprune.evaluate import FinetuneSettings
    from autoprune.graph import Group, PrunableModel, analyze, apply_plan, prunable_groups
    from autoprune.hooks import PruneHook, Session
    from autoprune.quantize import QuantizedModel, quantize
    from autoprune.searcher import SearchResult, SearchSettings, search
    from autoprune.space import SearchSpace, load_space
    from autoprune.weights import (
        WeightMask,
        load_sparse,
        prune_weights,
        save_sparse,
        sparse_size,
        sparsity_schedule,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

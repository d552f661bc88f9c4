"""The pruning engine: the ONLY package that imports torch_pruning.

- :mod:`~autoprune.engine.trace`: one traced forward (torch-pruning's dependency graph, the
  counted layer calls, attention inputs) and torch-pruning's version.
- :mod:`~autoprune.engine.count`: the counters the cost model must match (torch-pruning's, and
  ``FlopCounterMode`` for matmuls).
- :mod:`~autoprune.engine.groups`: coupled channel groups as typed records (:class:`Group`),
  grouping with an index-explosion guard and a deadline, :class:`FrozenGroup`.
- :mod:`~autoprune.engine.attention`: attention heads as prunable units.
- :mod:`~autoprune.engine.probe`: which groups prune safely and are costed exactly.
- :mod:`~autoprune.engine.custom`: ``register_layer`` (customized pruners for custom layers).
- :mod:`~autoprune.engine.costmodel`: the pure analytic :class:`CostModel` (numpy only), which
  :mod:`~autoprune.engine.terms` extracts from the trace.
- :mod:`~autoprune.engine.prune`: channel importance, pruning, replaying a pruning history.
- :mod:`~autoprune.engine.inputs`: the one set of example-input helpers.
- :mod:`~autoprune.engine.analysis`: :class:`PrunableModel` and the entry points below.
"""

from __future__ import annotations

from autoprune.engine.analysis import (
    PrunableModel,
    analyze,
    apply_plan,
    fit_budget,
    prunable_groups,
)
from autoprune.engine.costmodel import CostModel
from autoprune.engine.count import count_macs_params
from autoprune.engine.groups import FrozenGroup, Group
from autoprune.engine.prune import replay_history
from autoprune.engine.trace import torch_pruning_version

__all__ = ["CostModel", "FrozenGroup", "Group", "PrunableModel", "analyze", "apply_plan",
           "count_macs_params", "fit_budget", "prunable_groups", "replay_history",
           "torch_pruning_version"]

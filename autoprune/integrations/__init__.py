"""Integrations with training frameworks; each submodule imports its framework, this package
imports nothing heavy (``import autoprune.integrations`` never imports lightning or transformers).

- :mod:`autoprune.integrations.lightning`: :class:`PruneCallback` (a Lightning ``Callback``),
  :func:`restore_pruned` and :class:`PrunableModule` for ``load_from_checkpoint``.
- :mod:`autoprune.integrations.hf`: :class:`PruneCallback` and :func:`load_pruned_checkpoint`.
"""

from __future__ import annotations

__all__: list[str] = []

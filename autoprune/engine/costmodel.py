"""The analytic cost model: MACs and params of any plan as a few numpy operations.

Pure arithmetic over channel counts (numpy only, no torch, no torch-pruning). The engine extracts
it from one traced pass (:mod:`autoprune.engine.terms`: each counted layer call becomes a product
of channel dimensions), after which budget bisection and search-space projection are nearly free.
It reproduces torch-pruning's counter (``count_ops_and_params``), which counts MACs per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoprune.errors import ConfigError

__all__ = ["ATTENTION", "ELEMENTWISE", "LAYER", "CostModel"]

ELEMENTWISE, LAYER, ATTENTION = 0, 1, 2


@dataclass(frozen=True)
class CostModel:
    """MACs and params as polynomials of per-group kept channels.

    A *dim* is one channel dimension of one layer (``dense[d]`` channels in the dense model); it
    loses ``sum_g removal[d, g] * removed_g`` channels when group ``g`` removes ``removed_g`` of its
    root channels. Each term is ``coef * size[d1] * size[d2]`` where index ``-1`` stands for the
    constant 1, so conv/linear (bilinear), norms/activations (linear) and constants all fit.

    A MAC term may carry a fourth column, its *kind*: :data:`ELEMENTWISE` (norms, activations,
    pools: torch-pruning's counter counts them, ``FlopCounterMode`` does not), :data:`LAYER`
    (conv/linear: both count them; the default for 3-column terms) or :data:`ATTENTION` (matmuls
    outside layer calls: attention's tokens² products, functional projections; only
    ``FlopCounterMode`` sees them).
    :meth:`macs` is the sum of all three: what a budget limits.
    """

    group_channels: np.ndarray  # (G,) dense root channels per group
    dense: np.ndarray  # (D,) dense size of each dim
    removal: np.ndarray  # (D, G) channels removed from dim d per root channel of group g
    mac_terms: np.ndarray  # (T, 3) or (T, 4): coef, d1, d2[, kind]
    param_terms: np.ndarray  # (P, 3): coef, d1, d2
    batch: int = 1

    def sizes(self, kept: Sequence[int] | np.ndarray) -> np.ndarray:
        kept_arr = np.asarray(kept, dtype=np.float64)
        if kept_arr.shape != self.group_channels.shape:
            raise ConfigError(
                f"kept has {kept_arr.shape[0]} entries but the model has "
                f"{self.group_channels.shape[0]} groups; pass one kept count per group"
            )
        removed = self.group_channels - kept_arr
        sizes = self.dense - self.removal @ removed if self.removal.size else self.dense
        return np.append(sizes, 1.0)  # index -1 -> the constant 1

    @staticmethod
    def _evaluate(terms: np.ndarray, sizes: np.ndarray) -> float:
        if terms.size == 0:
            return 0.0
        d1 = terms[:, 1].astype(np.int64)
        d2 = terms[:, 2].astype(np.int64)
        return float(np.sum(terms[:, 0] * sizes[d1] * sizes[d2]))

    def _kinds(self, kinds: tuple[int, ...]) -> np.ndarray:
        terms = self.mac_terms
        if terms.size == 0:
            return terms
        kind = terms[:, 3] if terms.shape[1] > 3 else np.full(len(terms), LAYER)
        return terms[np.isin(kind, kinds)]

    def macs(self, kept: Sequence[int] | np.ndarray) -> float:
        """MACs per image with ``kept`` root channels per group: layers, elementwise ops (as
        torch-pruning's counter counts them) and attention's matmuls."""
        return self._evaluate(self.mac_terms, self.sizes(kept)) / self.batch

    def counter_macs(self, kept: Sequence[int] | np.ndarray) -> float:
        """What torch-pruning's counter sees per image (layers and elementwise ops, no attention
        matmuls): the oracle :func:`autoprune.engine.count.count_macs_params` checks."""
        return self._evaluate(self._kinds((ELEMENTWISE, LAYER)), self.sizes(kept)) / self.batch

    def matmul_macs(self, kept: Sequence[int] | np.ndarray) -> float:
        """Matmul MACs per image (layers and attention, no elementwise ops): what
        ``torch.utils.flop_counter.FlopCounterMode`` counts, halved."""
        return self._evaluate(self._kinds((LAYER, ATTENTION)), self.sizes(kept)) / self.batch

    def params(self, kept: Sequence[int] | np.ndarray) -> float:
        return self._evaluate(self.param_terms, self.sizes(kept))

    def dense_macs(self) -> float:
        return self.macs(self.group_channels)

    def dense_params(self) -> float:
        return self.params(self.group_channels)

"""What one measured model costs, and the latency cache keyed by its architecture.

Plain data (no torch import): :class:`Cost` is what :func:`~autoprune.latency.measure` returns;
:class:`LatencyCache` keeps one process's timings by :func:`shape_signature` (the architecture,
not the weights), device, batch, dtype and runtime.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoprune.latency.guard import robust_cv

__all__ = ["Cost", "LatencyCache", "LatencyKey", "LatencyTarget", "shape_signature"]

LatencyKey = tuple[str, str, int, str, str]  # shape signature, device, batch, dtype, runtime


@dataclass(frozen=True)
class LatencyTarget:
    """Where a latency is taken: device, batch size (None: the example inputs' batch), dtype
    and runtime (``eager`` | ``compile`` | ``onnxruntime``)."""

    device: str = "cpu"
    batch_size: int | None = None
    dtype: str = "float32"
    runtime: str = "eager"


@dataclass(frozen=True)
class Cost:
    """The measured cost of one model: ``latency_ms`` is the median, ``latency_iqr_ms`` the IQR."""

    macs: float
    params: float
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    device: str = "cpu"
    batch_size: int = 1
    dtype: str = "float32"
    extra: Mapping[str, Any] = field(default_factory=dict)
    runtime: str = "eager"  # what ran the timed model: eager | compile | onnxruntime

    @property
    def flops(self) -> float:
        """FLOPs = 2 x MACs (ratios are the same)."""
        return 2.0 * self.macs

    @property
    def latency_cv(self) -> float | None:
        """A robust coefficient of variation: IQR / 1.349 / median."""
        return robust_cv(self.latency_ms, self.latency_iqr_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs": self.macs,
            "flops": self.flops,
            "params": self.params,
            "latency_ms": self.latency_ms,
            "latency_iqr_ms": self.latency_iqr_ms,
            "latency_cv": self.latency_cv,
            "device": self.device,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "runtime": self.runtime,
            **dict(self.extra),
        }


def shape_signature(model: Any) -> str:
    """A hash of the architecture: parameter/buffer names and shapes, not their values."""
    h = hashlib.sha1(type(model).__name__.encode())
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
    return h.hexdigest()[:16]


class LatencyCache:
    """Latency keyed by (shape signature, device, batch, dtype, runtime); shared by one
    process's calls."""

    def __init__(self) -> None:
        self._store: dict[LatencyKey, tuple[float, float]] = {}

    def get(self, key: LatencyKey) -> tuple[float, float] | None:
        return self._store.get(key)

    def put(self, key: LatencyKey, value: tuple[float, float]) -> None:
        self._store[key] = value

    def __len__(self) -> int:
        return len(self._store)

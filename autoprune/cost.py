"""What a model costs: the analytic MACs/params model, and measured latency.

Two halves with one concept: *cost*.

- :class:`CostModel` is pure arithmetic over channel counts. ``graph.py`` extracts it from one
  traced pass (each counted layer call becomes a product of channel dimensions), after which the
  MACs and params of *any* plan are a few numpy operations: this is what makes budget bisection
  and search-space projection nearly free. It reproduces torch-pruning's counter
  (``count_ops_and_params``), which counts MACs per image.
- :func:`measure` counts the real pruned model and times it on the target device: warm-up, then
  the median and IQR of repeated runs (``torch.utils.benchmark`` on CPU, CUDA events on GPU),
  under ``torch.inference_mode()``, cached by the architecture's shape signature.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoprune.errors import ConfigError

__all__ = ["Cost", "CostModel", "LatencyCache", "measure", "shape_signature"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CostModel:
    """MACs and params as polynomials of per-group kept channels.

    A *dim* is one channel dimension of one layer (``dense[d]`` channels in the dense model); it
    loses ``sum_g removal[d, g] * removed_g`` channels when group ``g`` removes ``removed_g`` of its
    root channels. Each term is ``coef * size[d1] * size[d2]`` where index ``-1`` stands for the
    constant 1, so conv/linear (bilinear), norms/activations (linear) and constants all fit.
    """

    group_channels: np.ndarray  # (G,) dense root channels per group
    dense: np.ndarray  # (D,) dense size of each dim
    removal: np.ndarray  # (D, G) channels removed from dim d per root channel of group g
    mac_terms: np.ndarray  # (T, 3): coef, d1, d2
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

    def macs(self, kept: Sequence[int] | np.ndarray) -> float:
        """MACs per image (torch-pruning's convention) with ``kept`` root channels per group."""
        return self._evaluate(self.mac_terms, self.sizes(kept)) / self.batch

    def params(self, kept: Sequence[int] | np.ndarray) -> float:
        return self._evaluate(self.param_terms, self.sizes(kept))

    def dense_macs(self) -> float:
        return self.macs(self.group_channels)

    def dense_params(self) -> float:
        return self.params(self.group_channels)


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

    @property
    def flops(self) -> float:
        """FLOPs = 2 x MACs (ratios are the same)."""
        return 2.0 * self.macs

    @property
    def latency_cv(self) -> float | None:
        """A robust coefficient of variation: IQR / 1.349 / median."""
        if not self.latency_ms or self.latency_iqr_ms is None:
            return None
        return self.latency_iqr_ms / 1.349 / self.latency_ms

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
            **dict(self.extra),
        }


def shape_signature(model: Any) -> str:
    """A hash of the architecture: parameter/buffer names and shapes, not their values."""
    h = hashlib.sha1(type(model).__name__.encode())
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
    return h.hexdigest()[:16]


class LatencyCache:
    """Latency keyed by (shape signature, device, batch, dtype); shared by one process's calls."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, str, int, str], tuple[float, float]] = {}

    def get(self, key: tuple[str, str, int, str]) -> tuple[float, float] | None:
        return self._store.get(key)

    def put(self, key: tuple[str, str, int, str], value: tuple[float, float]) -> None:
        self._store[key] = value

    def __len__(self) -> int:
        return len(self._store)


_DTYPES = ("float32", "float16", "bfloat16")


def _batched(example_inputs: Any, batch_size: int | None) -> Any:
    import torch

    if batch_size is None:
        return example_inputs
    if isinstance(example_inputs, torch.Tensor):
        reps = [batch_size] + [1] * (example_inputs.dim() - 1)
        return example_inputs[:1].repeat(*reps)
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(_batched(x, batch_size) for x in example_inputs)
    if isinstance(example_inputs, dict):
        return {k: _batched(v, batch_size) for k, v in example_inputs.items()}
    return example_inputs


def _to(obj: Any, device: Any, dtype: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        keep = dtype is None or not obj.is_floating_point()
        return obj.to(device=device, dtype=obj.dtype if keep else dtype)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(x, device, dtype) for x in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    return obj


def _call(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _time_cuda(model: Any, inputs: Any, repeats: int, warmup: int) -> list[float]:
    import torch

    for _ in range(warmup):
        _call(model, inputs)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _call(model, inputs)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _time_cpu(model: Any, inputs: Any, repeats: int, warmup: int) -> list[float]:
    from torch.utils import benchmark

    timer = benchmark.Timer(
        stmt="call(model, inputs)",
        globals={"call": _call, "model": model, "inputs": inputs},
        num_threads=_threads(),
    )
    per_run = timer.timeit(max(1, warmup)).median
    # Each sample lasts >= ~2 ms so timer overhead does not dominate tiny models.
    number = max(1, int(0.002 / max(per_run, 1e-9)))
    return [timer.timeit(number).median * 1000.0 for _ in range(repeats)]


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def measure(
    model: Any,
    example_inputs: Any,
    device: str = "cpu",
    latency: bool = True,
    batch_size: int | None = None,
    dtype: str = "float32",
    repeats: int = 30,
    warmup: int = 5,
    cache: LatencyCache | None = None,
) -> Cost:
    """Count MACs/params and (optionally) time ``model`` on ``device``.

    Latency is the median over ``repeats`` runs after ``warmup`` runs, at ``batch_size`` (default:
    the batch of ``example_inputs``) and ``dtype``; the model is timed in ``eval`` mode under
    ``torch.inference_mode()``. MACs are per image. The model is not modified (it is deep-copied
    for counting and moved on a copy for timing).
    """
    import copy

    import torch
    from torch_pruning.utils import count_ops_and_params  # counting only; pruning is in graph.py

    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; use one of {', '.join(_DTYPES)}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device='cpu'")
    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)  # count where the model is (a candidate on the GPU)
    here = example_inputs if first is None else _to(example_inputs, first.device, None)
    try:
        macs, params = count_ops_and_params(model, here)
    finally:
        model.train(was_training)
    inputs = _batched(example_inputs, batch_size)
    bs = batch_size or _batch_of(example_inputs)
    if not latency:
        return Cost(float(macs), float(params), device=device, batch_size=bs, dtype=dtype)
    key = (shape_signature(model), device, bs, dtype)
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        torch_dtype = getattr(torch, dtype)
        timed = copy.deepcopy(model).to(device=device, dtype=torch_dtype).eval()
        inputs = _to(inputs, device, torch_dtype)
        with torch.inference_mode():
            if device.startswith("cuda"):
                times = _time_cuda(timed, inputs, repeats, warmup)
            else:
                times = _time_cpu(timed, inputs, repeats, warmup)
        q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
        hit = (statistics.median(times), q[2] - q[0])
        if cache is not None:
            cache.put(key, hit)
    return Cost(float(macs), float(params), hit[0], hit[1], device, bs, dtype)


def _batch_of(example_inputs: Any) -> int:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        return int(example_inputs.shape[0]) if example_inputs.dim() else 1
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        return _batch_of(example_inputs[0])
    if isinstance(example_inputs, dict) and example_inputs:
        return _batch_of(next(iter(example_inputs.values())))
    return 1

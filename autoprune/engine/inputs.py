"""The one set of example-input helpers: calling a model, batch sizes, batching, moving.

``example_inputs`` is what a model's ``forward`` takes: a tensor (one positional argument), a
tuple/list (positional arguments) or a dict (keyword arguments); tensors may sit inside nested
tuples, lists and dicts. Every part of autoprune (tracing, counting, timing, fine-tuning,
quantization) reads inputs through these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["as_args", "batch_size_of", "batched", "call_model", "counter_batch", "map_tensors",
           "split_inputs", "to_device"]


def _identity(obj: Any) -> Any:
    return obj


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any],
                other: Callable[[Any], Any] = _identity) -> Any:
    """``fn`` on every tensor of a (nested) tuple / list / dict of inputs, ``other`` on the rest."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(x, fn, other) for x in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn, other) for k, v in obj.items()}
    return other(obj)


def split_inputs(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``example_inputs`` as ``(args, kwargs)``: a tensor, a tuple of arguments or a kwargs dict."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def call_model(model: nn.Module | Callable[..., Any], inputs: Any) -> Any:
    """``model`` called on ``inputs`` (unpacked as positional or keyword arguments)."""
    if isinstance(inputs, dict):  # no split_inputs(): this is also the call latency times
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def as_args(example_inputs: Any) -> Any:
    """torch-pruning calls ``model(*inputs)`` first: a bare tensor would be unpacked on dim 0."""
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs


def counter_batch(example_inputs: Any) -> int:
    """The batch torch-pruning's counter divides by: len() of the first positional input."""
    if isinstance(example_inputs, dict):
        return 1
    first = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    return len(first)


def batch_size_of(example_inputs: Any) -> int:
    """Dim 0 of the first tensor found (depth first); 1 for a scalar or no tensor."""
    if isinstance(example_inputs, torch.Tensor):
        return int(example_inputs.shape[0]) if example_inputs.dim() else 1
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        return batch_size_of(example_inputs[0])
    if isinstance(example_inputs, dict) and example_inputs:
        return batch_size_of(next(iter(example_inputs.values())))
    return 1


def batched(example_inputs: Any, batch_size: int | None) -> Any:
    """Every tensor's first sample repeated ``batch_size`` times (unchanged for ``None``)."""
    if batch_size is None:
        return example_inputs
    return map_tensors(example_inputs,
                       lambda t: t[:1].repeat(batch_size, *[1] * (t.dim() - 1)))


def to_device(obj: Any, device: Any, dtype: torch.dtype | None = None) -> Any:
    """Every tensor moved to ``device``; floating-point ones also cast to ``dtype`` if given."""

    def move(t: torch.Tensor) -> torch.Tensor:
        keep = dtype is None or not t.is_floating_point()
        return t.to(device=device, dtype=t.dtype if keep else dtype)

    return map_tensors(obj, move)

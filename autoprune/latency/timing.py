"""Measuring a real model: counted MACs/params and its latency on the target device.

:func:`measure` counts with torch-pruning's counter (through the engine) and times the model:
warm-up, then the median and IQR of repeated runs (``torch.utils.benchmark`` on CPU, CUDA events
on GPU), under ``torch.inference_mode()``, cached by the architecture's shape signature.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from autoprune.engine import count_macs_params
from autoprune.engine.inputs import batch_size_of, batched, call_model, to_device
from autoprune.errors import ConfigError
from autoprune.latency.cost import Cost, LatencyCache, shape_signature

__all__ = ["measure"]

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class _Timing:
    """Where and how long to time: device, dtype name, timed runs, warm-up runs."""

    device: str
    dtype: str
    repeats: int
    warmup: int


def _time_cuda(model: nn.Module, inputs: Any, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call_model(model, inputs)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call_model(model, inputs)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _time_cpu(model: nn.Module, inputs: Any, repeats: int, warmup: int) -> list[float]:
    timer = benchmark.Timer(
        stmt="call(model, inputs)",
        globals={"call": call_model, "model": model, "inputs": inputs},
        num_threads=torch.get_num_threads(),
    )
    per_run = timer.timeit(max(1, warmup)).median
    # Each sample lasts >= ~2 ms so timer overhead does not dominate tiny models.
    number = max(1, int(0.002 / max(per_run, 1e-9)))
    return [timer.timeit(number).median * 1000.0 for _ in range(repeats)]


def _latency(model: nn.Module, inputs: Any, timing: _Timing) -> tuple[float, float]:
    """Median and IQR (ms) of timing a copy of ``model`` in eval mode on the target device."""
    torch_dtype = getattr(torch, timing.dtype)
    timed = copy.deepcopy(model).to(device=timing.device, dtype=torch_dtype).eval()
    inputs = to_device(inputs, timing.device, torch_dtype)
    with torch.inference_mode():
        if timing.device.startswith("cuda"):
            times = _time_cuda(timed, inputs, timing.repeats, timing.warmup)
        else:
            times = _time_cpu(timed, inputs, timing.repeats, timing.warmup)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def _check(device: str, batch_size: int | None, dtype: str) -> None:
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported; use one of {', '.join(_DTYPES)}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device='cpu'")


def _count(model: nn.Module, example_inputs: Any) -> tuple[float, float]:
    """MACs per image and params, counted where the model is (a candidate on the GPU)."""
    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)
    here = example_inputs if first is None else to_device(example_inputs, first.device)
    try:
        return count_macs_params(model, here)
    finally:
        model.train(was_training)


def measure(  # public API: keeps its keyword arguments
    model: nn.Module,
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
    _check(device, batch_size, dtype)
    macs, params = _count(model, example_inputs)
    bs = batch_size or batch_size_of(example_inputs)
    if not latency:
        return Cost(macs, params, device=device, batch_size=bs, dtype=dtype)
    key = (shape_signature(model), device, bs, dtype)
    hit = cache.get(key) if cache is not None else None
    if hit is None:
        timing = _Timing(device, dtype, repeats, warmup)
        hit = _latency(model, batched(example_inputs, batch_size), timing)
        if cache is not None:
            cache.put(key, hit)
    return Cost(macs, params, hit[0], hit[1], device, bs, dtype)

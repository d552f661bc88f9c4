"""Measuring a real model: counted MACs/params and its latency on the target device.

:func:`measure` counts with torch-pruning's counter (through the engine) and times the model:
warm-up, then the median and IQR of repeated runs (``torch.utils.benchmark`` on CPU, CUDA events
on GPU), under ``torch.inference_mode()``, cached by the architecture's shape signature.
:func:`time_alternating` times several models in alternating rounds (the end-of-run re-timing of
dense, baselines and front), so that a change in the machine's load hits all of them alike; with
a :class:`PreparedModels` it prepares an architecture it times again (the noise guard re-times)
only once: an ONNX export takes seconds, the timing itself milliseconds.
"""

from __future__ import annotations

import copy
import statistics
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from autoprune.engine import count_macs_params
from autoprune.engine.inputs import batch_size_of, batched, to_device
from autoprune.errors import ConfigError
from autoprune.latency.cost import Cost, LatencyCache, LatencyTarget, shape_signature
from autoprune.latency.runtimes import check_runtime, prepare

__all__ = ["PreparedModels", "measure", "time_alternating"]

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class _Timing:
    """Where and how long to time: device, dtype name, timed runs, warm-up runs, runtime."""

    device: str
    dtype: str
    repeats: int
    warmup: int
    runtime: str = "eager"


def _time_cuda(run: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _time_cpu(run: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    timer = benchmark.Timer(stmt="run()", globals={"run": run},
                            num_threads=torch.get_num_threads())
    per_run = timer.timeit(max(1, warmup)).median
    # Each sample lasts >= ~2 ms so timer overhead does not dominate tiny models.
    number = max(1, int(0.002 / max(per_run, 1e-9)))
    return [timer.timeit(number).median * 1000.0 for _ in range(repeats)]


def _samples(run: Callable[[], Any], timing: _Timing) -> list[float]:
    if timing.device.startswith("cuda"):
        return _time_cuda(run, timing.repeats, timing.warmup)
    return _time_cpu(run, timing.repeats, timing.warmup)


def _median_iqr(times: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return statistics.median(times), q[2] - q[0]


def _prepared(model: nn.Module, inputs: Any, timing: _Timing) -> Any:
    """A copy of ``model`` in eval mode on the target device, ready in its runtime (call under
    ``torch.inference_mode()``)."""
    torch_dtype = getattr(torch, timing.dtype)
    timed = copy.deepcopy(model).to(device=timing.device, dtype=torch_dtype).eval()
    return prepare(timed, to_device(inputs, timing.device, torch_dtype), timing.runtime)


class PreparedModels:
    """Models made ready in a runtime that takes time to prepare (``compile``, ``onnxruntime``),
    kept by architecture so that timing one again does not export or compile it again.

    Keyed like :class:`~autoprune.latency.LatencyCache`: shape signature, device, dtype, runtime
    (and the inputs' shapes): latency depends on shapes, not on weight values, so a model is
    timed on the copy prepared first. The most recently used are kept while their parameters
    add up to at most ``capacity`` (the newest and the :meth:`pin`-ned always; two copies of
    each are held: the prepared model and the runtime's own). Eager models are never kept
    (nothing to save). Pickles without its copies (sessions and compiled graphs do not
    pickle), its pins kept.
    """

    def __init__(self, capacity: int = 32_000_000) -> None:
        if capacity < 0:
            raise ConfigError(f"capacity={capacity} must be >= 0 parameters")
        self.capacity = capacity
        self._items: OrderedDict[tuple[Any, ...], tuple[Any, int]] = OrderedDict()
        self.hits = 0
        self._pinned: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "pinned": sorted(self._pinned)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["capacity"])  # type: ignore[misc]
        self._pinned.update(state.get("pinned", ()))

    def __len__(self) -> int:
        return len(self._items)

    def get(self, model: nn.Module, inputs: Any, timing: _Timing) -> Any:
        """``model`` prepared in ``timing``'s runtime: the kept copy of its architecture, or a
        new one (then kept)."""
        if timing.runtime == "eager":
            return _prepared(model, inputs, timing)
        key = (shape_signature(model), timing.device, timing.dtype, timing.runtime,
               _shapes(inputs))
        hit = self._items.pop(key, None)
        if hit is not None:
            self.hits += 1
        else:
            hit = (_prepared(model, inputs, timing), sum(p.numel() for p in model.parameters()))
        self._items[key] = hit
        evictable = [k for k in self._items if k[0] not in self._pinned and k != key]
        while evictable and sum(n for _, n in self._items.values()) > self.capacity:
            del self._items[evictable.pop(0)]  # the least recently used first
        return hit[0]

    def pin(self, model: nn.Module) -> None:
        """Never evict ``model``'s architecture (e.g. the dense reference every candidate is
        timed beside: evicted by each large candidate, it would be exported again for the
        next one). Pinned copies count toward the capacity."""
        self._pinned.add(shape_signature(model))

    def time_alternating(self, models: Mapping[str, nn.Module], example_inputs: Any,
                         target: LatencyTarget | None = None, rounds: int = 5,
                         repeats: int = 10) -> dict[str, tuple[float, float]]:
        """:func:`time_alternating`, preparing each model through this cache."""
        where = target or LatencyTarget()
        _check(where.device, where.batch_size, where.dtype)
        check_runtime(where.runtime, where.device, where.dtype)
        if rounds < 1:
            raise ConfigError(f"rounds={rounds} must be >= 1")
        inputs = batched(example_inputs, where.batch_size)
        timing = _Timing(where.device, where.dtype, repeats, 3, where.runtime)
        samples: dict[str, list[float]] = {label: [] for label in models}
        with torch.inference_mode():
            ready = {label: self.get(m, inputs, timing) for label, m in models.items()}
            for r in range(rounds):
                order = list(ready) if r % 2 == 0 else list(reversed(ready))
                for label in order:
                    samples[label].extend(_samples(ready[label].run, timing))
        return {label: _median_iqr(times) for label, times in samples.items()}


def _shapes(inputs: Any) -> str:
    """The shapes and dtypes of the tensors in ``inputs`` (any nesting), as a key."""
    leaves = torch.utils._pytree.tree_leaves(inputs)
    return repr([(tuple(x.shape), str(x.dtype)) if isinstance(x, torch.Tensor) else repr(x)
                 for x in leaves])


def _latency(model: nn.Module, inputs: Any, timing: _Timing) -> tuple[float, float, float]:
    """Median and IQR (ms) of timing a copy of ``model`` in eval mode on the target device in
    its runtime, and the runtime's preparation seconds."""
    with torch.inference_mode():
        prepared = _prepared(model, inputs, timing)
        times = _samples(prepared.run, timing)
    return (*_median_iqr(times), prepared.prepare_s)


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
    runtime: str = "eager",
) -> Cost:
    """Count MACs/params and (optionally) time ``model`` on ``device`` in ``runtime``.

    Latency is the median over ``repeats`` runs after ``warmup`` runs, at ``batch_size`` (default:
    the batch of ``example_inputs``) and ``dtype``; the model is timed in ``eval`` mode under
    ``torch.inference_mode()``, in ``runtime`` (``eager`` | ``compile`` | ``onnxruntime``, see
    :mod:`autoprune.latency.runtimes`; the cost of compiling or exporting is
    ``extra["prepare_s"]``, paid once per architecture with a ``cache``). MACs are per image. The
    model is not modified (it is deep-copied for counting and moved on a copy for timing).
    """
    _check(device, batch_size, dtype)
    if latency:  # counting alone runs nowhere: any device and runtime will do
        check_runtime(runtime, device, dtype)
    macs, params = _count(model, example_inputs)
    bs = batch_size or batch_size_of(example_inputs)
    if not latency:
        return Cost(macs, params, device=device, batch_size=bs, dtype=dtype, runtime=runtime)
    key = (shape_signature(model), device, bs, dtype, runtime)
    hit = cache.get(key) if cache is not None else None
    prepare_s = 0.0
    if hit is None:
        timing = _Timing(device, dtype, repeats, warmup, runtime)
        median, iqr, prepare_s = _latency(model, batched(example_inputs, batch_size), timing)
        hit = (median, iqr)
        if cache is not None:
            cache.put(key, hit)
    extra = {"prepare_s": prepare_s} if runtime != "eager" else {}
    return Cost(macs, params, hit[0], hit[1], device, bs, dtype, extra, runtime)


def time_alternating(models: Mapping[str, nn.Module], example_inputs: Any,
                     target: LatencyTarget | None = None, rounds: int = 5,
                     repeats: int = 10) -> dict[str, tuple[float, float]]:
    """Median and IQR (ms) per label, from ``rounds`` rounds of ``repeats`` runs of each model
    on ``target`` (default: CPU, eager, float32, the example inputs' batch).

    Every model is prepared once (copied to the device, compiled or exported), then the rounds
    time them in turn, the order reversed every other round, so a change in the machine's load
    hits all of them alike; each label's figures pool its samples of every round. To prepare
    an architecture timed again only once, call :meth:`PreparedModels.time_alternating`.
    """
    return PreparedModels(capacity=0).time_alternating(models, example_inputs, target, rounds,
                                                       repeats)

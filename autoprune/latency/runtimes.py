"""The runtime a model is timed in: eager PyTorch, ``torch.compile``, or ONNX Runtime.

A pruned model is only worth deploying if it is faster in the runtime it ships in, and runtimes
disagree: odd channel counts that eager PyTorch barely notices can make an ONNX Runtime model
slower than the dense one. :func:`prepare` turns a model into a zero-argument callable that runs
it once in the chosen runtime (compiling, or exporting to ONNX and opening a session, first) and
reports what that preparation cost; :func:`~autoprune.latency.measure` times the callable.

- ``eager``: the module as it is;
- ``compile``: ``torch.compile(model)`` (inductor; needs a C++ compiler on CPU), compiled by one
  warm-up call, which is the preparation cost;
- ``onnxruntime``: the model exported as autoprune's ONNX export writes it
  (:func:`~autoprune.deploy.onnx_file.onnx_bytes`), its shapes fixed to the timed batch (the
  same operators, half the export time), in an ONNX Runtime CPU session with as many intra-op
  threads as torch uses and no spinning threads (``pip install "autoprune[onnx]"``).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from autoprune.engine.inputs import call_model
from autoprune.errors import BackendUnavailable, ConfigError

__all__ = ["RUNTIMES", "Prepared", "Runtime", "check_runtime", "prepare"]

Runtime = Literal["eager", "compile", "onnxruntime"]
RUNTIMES: tuple[str, ...] = ("eager", "compile", "onnxruntime")


# dynamo's recompile limits (per code object, per process), named as in torch >= 2.6 / before
_LIMITS = (("recompile_limit", "cache_size_limit"),
           ("accumulated_recompile_limit", "accumulated_cache_size_limit"))
_NO_LIMIT = 1 << 20


@dataclass(frozen=True)
class Prepared:
    """``run()`` runs the model once in its runtime; ``prepare_s`` is what getting there cost
    (compilation, export and session creation; 0 for eager)."""

    run: Callable[[], Any]
    prepare_s: float
    runtime: str


def check_runtime(runtime: str, device: str, dtype: str = "float32") -> None:
    """One-line ConfigError (or BackendUnavailable) unless ``runtime`` can time on ``device``."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"latency runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime != "onnxruntime":
        return
    if not device.startswith("cpu"):
        raise ConfigError(f"latency runtime 'onnxruntime' times on the CPU, not {device!r}; "
                          "use eager or compile on CUDA")
    if dtype != "float32":
        raise ConfigError(f"latency runtime 'onnxruntime' times float32 models, not {dtype}; "
                          "use --latency-dtype float32")
    for package in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(package) is None:
            raise BackendUnavailable(f"latency runtime 'onnxruntime' needs the {package!r} "
                                     'package; install it with pip install "autoprune[onnx]"')


def prepare(model: nn.Module, inputs: Any, runtime: str) -> Prepared:
    """``model`` (eval mode, on its device) ready to run on ``inputs`` in ``runtime``."""
    start = time.perf_counter()
    if runtime == "eager":
        return Prepared(lambda: call_model(model, inputs), 0.0, runtime)
    if runtime == "compile":
        compiled = _compiled(model, inputs)
        return Prepared(lambda: call_model(compiled, inputs), time.perf_counter() - start,
                        runtime)
    if runtime == "onnxruntime":
        run = _onnxruntime(model, inputs)
        run()  # the session's first run allocates its buffers
        return Prepared(run, time.perf_counter() - start, runtime)
    raise ConfigError(f"latency runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")


def _compiled(model: nn.Module, inputs: Any) -> nn.Module:
    """``torch.compile(model)`` with static shapes (what a deployment compiles), compiled now.

    Every candidate of a search runs its classes' ``forward`` code, and dynamo compiles one code
    object at most ``recompile_limit`` (8) times, then silently runs it eager: the 9th candidate
    on would be timed eager. The limits are lifted while this model compiles (calling a model
    compiled earlier matches its own cached graph, so nothing recompiles later).
    """
    config = torch._dynamo.config
    names = [next((n for n in pair if hasattr(config, n)), None) for pair in _LIMITS]
    compiled = torch.compile(model, dynamic=False)
    with config.patch(**{n: _NO_LIMIT for n in names if n is not None}):
        call_model(compiled, inputs)
    return compiled


def _onnxruntime(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    from autoprune.deploy.onnx_file import onnx_bytes, ort_session

    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    if not (isinstance(tensors, tuple) and all(isinstance(t, torch.Tensor) for t in tensors)):
        raise ConfigError("latency runtime 'onnxruntime' needs example inputs that are a tensor "
                          "or a tuple of tensors; use the eager runtime for other inputs")
    data, names, _ = onnx_bytes(model, tensors, {}, dynamic_batch=False)  # timed at this batch
    session = ort_session(data)
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}
    return lambda: session.run(None, feeds)

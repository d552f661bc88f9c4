"""Quantize a (pruned) model after the search, and measure what it costs in agreement and bytes.

Modes (:data:`MODES`):

- ``int8``: post-training *static* quantization through torchao's PT2E flow for x86 CPUs. The
  model is captured with ``torch.export.export(..., strict=True)`` (strict capture gives each call
  of a reused module, e.g. ResNet's shared ``relu``, its own partition; non-strict capture makes
  ``X86InductorQuantizer`` reject it), BatchNorm is folded into the convs, observers are placed by
  ``X86InductorQuantizer`` and fed ``calibration`` batches, then ``convert_pt2e`` freezes
  conv/linear weights to int8 (symmetric, per output channel) and activations to uint8 (affine,
  per tensor). The result is a ``torch.fx.GraphModule`` of quantize/dequantize + float ops: in
  eager mode it is *not* faster than float; ``torch.compile`` (inductor, x86) lowers those patterns
  to real int8 kernels. Its ``state_dict`` keeps only what the graph uses, so the weights take a
  quarter of the float bytes.
- ``fp16`` / ``bf16``: the weights are cast (``.half()`` / ``.to(torch.bfloat16)``); a wrapper casts
  floating inputs to that dtype and the outputs back to float32, so callers see float32 logits.

:meth:`QuantizedModel.save` writes a ``torch.export`` program (batch dimension dynamic) as a
deflate-compressed zip that ``torch.export.load`` / :func:`load` read as is. Compression matters
for small networks: the program's JSON graph is ~1.5 kB per node, which would otherwise outweigh
the int8 weights it describes.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import itertools
import logging
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.engine.inputs import call_model as _call
from autoprune.engine.inputs import map_tensors as _map
from autoprune.engine.inputs import split_inputs as _split
from autoprune.errors import BackendUnavailable, ConfigError, UnsupportedModelError

__all__ = ["MODES", "QuantizedModel", "compare", "load", "quantize", "save_program"]

MODES = ("int8", "fp16", "bf16")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_INSTALL = 'pip install "autoprune[quant]"'


@dataclass(frozen=True)
class QuantizedModel:
    """The runnable quantized ``module`` (called like the original) and how it was made."""

    module: nn.Module
    mode: str
    example_inputs: Any  # a batch of 2, kept to re-export the module with a dynamic batch

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def save(self, path: str | Path) -> Path:
        """Write the module as a compressed ``torch.export`` program; read it with :func:`load`."""
        return save_program(self.module, self.example_inputs, path)

    def size_bytes(self, path: str | Path | None = None) -> int:
        """Bytes on disk of what :meth:`save` writes (to ``path``, else to a temporary file)."""
        if path is not None:
            return self.save(path).stat().st_size
        with tempfile.TemporaryDirectory() as folder:
            return self.save(Path(folder) / "model.pt2").stat().st_size


class _Cast(nn.Module):
    """Runs ``model`` in ``dtype``: floating inputs cast in, floating outputs cast to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*_cast(args, self.dtype), **_cast(kwargs, self.dtype))
        return _cast(out, torch.float32)


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    return _map(obj, lambda t: t.to(dtype) if t.is_floating_point() else t)


def _pair(obj: Any) -> Any:
    """A batch of 2 from the first sample (export specializes a batch of 1 to a constant)."""
    return _map(obj, lambda t: t[:1].repeat(2, *[1] * (t.dim() - 1)) if t.dim() else t)


def _dynamic_batch(obj: Any) -> Any:
    """Dim 0 of every tensor is the batch: dynamic where the model allows (``Dim.AUTO``)."""
    return _map(obj, lambda t: {0: torch.export.Dim.AUTO} if t.dim() else None, lambda _: None)


def _export(model: nn.Module, example: Any, strict: bool = False) -> torch.export.ExportedProgram:
    args, kwargs = _split(example)
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
        shapes = {name: _dynamic_batch(value) for name, value in bound.items()}
        return torch.export.export(model, args, kwargs, dynamic_shapes=shapes, strict=strict)
    except Exception as exc:  # torch.export raises many types; all mean "cannot capture"
        raise UnsupportedModelError(
            f"torch.export could not capture {type(model).__name__} ({_first_line(exc)}); "
            f"quantization needs a model that torch.export can trace"
        ) from exc


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration; captured graphs (int8) are already eval and refuse .train()."""
    if isinstance(module, torch.fx.GraphModule):
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _inputs_of(batch: Any) -> Any:
    """The model inputs of a calibration batch: ``(inputs, targets, ...)`` pairs give ``inputs``."""
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    return batch


@contextlib.contextmanager
def _quiet_torch_log() -> Iterator[None]:
    """torchao's import logs a torch deprecation warning about its own enum; keep it off stderr."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _torchao() -> tuple[Any, Any, Any, Any]:
    try:
        with _quiet_torch_log():
            from torchao.quantization.pt2e import allow_exported_model_train_eval
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as exc:
        raise BackendUnavailable(
            f"mode='int8' needs torchao's PT2E quantization ({exc}); install it with {_INSTALL}"
        ) from exc
    return prepare_pt2e, convert_pt2e, x86, allow_exported_model_train_eval


def _drop_unused(graph_module: torch.fx.GraphModule) -> None:
    """Delete parameters/buffers the graph no longer reads (the float weights int8 replaced)."""
    used = {str(n.target) for n in graph_module.graph.nodes if n.op == "get_attr"}
    named = itertools.chain(graph_module.named_parameters(), graph_module.named_buffers())
    for name in [n for n, _ in named if n not in used]:
        owner_name, _, leaf = name.rpartition(".")
        delattr(graph_module.get_submodule(owner_name) if owner_name else graph_module, leaf)


def _int8(model: nn.Module, example: Any, calibration: Iterable[Any] | None,
          batches: int) -> nn.Module:
    if calibration is None:
        raise ConfigError(
            "calibration=None: mode='int8' is static quantization and needs calibration batches; "
            "pass training batches, e.g. task.splits().train"
        )
    prepare_pt2e, convert_pt2e, x86, allow_train_eval = _torchao()
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    try:
        captured = _export(model, example, strict=True)
    except UnsupportedModelError:  # strict capture refuses graph breaks; non-strict may still work
        captured = _export(model, example)
    try:
        prepared = prepare_pt2e(captured.module(), quantizer)
    except ValueError as exc:
        raise UnsupportedModelError(
            f"X86InductorQuantizer cannot annotate {type(model).__name__} ({_first_line(exc)}); "
            f"use mode='bf16' for this model"
        ) from exc
    seen = 0
    with torch.no_grad():
        for batch in itertools.islice(calibration, batches):
            _call(prepared, _map(_inputs_of(batch), lambda t: t.cpu()))
            seen += 1
    if not seen:
        raise ConfigError("calibration yielded no batch; pass a non-empty iterable of batches")
    converted = convert_pt2e(prepared)
    _drop_unused(converted)
    allow_train_eval(converted)  # callers' model.eval() (evaluate, measure) would raise otherwise
    return converted


def _low_precision(model: nn.Module, example: Any, mode: str) -> nn.Module:
    wrapped = _Cast(model.to(_DTYPES[mode]), _DTYPES[mode]).eval()
    try:
        with torch.no_grad():
            _call(wrapped, example)
    except (RuntimeError, NotImplementedError) as exc:
        fix = "fp16 needs a GPU here (use bf16 on CPU)" if mode == "fp16" else "use int8 or fp16"
        raise ConfigError(
            f"--quantize {mode!r} cannot run this model ({_first_line(exc)}); {fix}"
        ) from exc
    return wrapped


def quantize(model: nn.Module, example_inputs: Any, mode: str,
             calibration: Iterable[Any] | None = None,
             calibration_batches: int = 16) -> QuantizedModel:
    """Quantize a copy of ``model`` (left untouched) to ``mode``; see the module docstring.

    ``example_inputs`` is what ``model`` is called with (a tensor, a tuple of arguments or a
    kwargs dict; any batch size). ``calibration`` yields training batches, tensors or
    ``(inputs, targets)`` pairs; ``int8`` reads the first ``calibration_batches`` of them (on CPU:
    the int8 program is an x86 CPU program). fp16/bf16 ignore ``calibration``.
    """
    if mode not in MODES:
        raise ConfigError(f"--quantize {mode!r} is not supported; use one of {', '.join(MODES)}")
    if isinstance(calibration_batches, bool) or not isinstance(calibration_batches, int) \
            or calibration_batches < 1:
        raise ConfigError(
            f"calibration_batches={calibration_batches!r}: pass a whole number >= 1 (16 is plenty)"
        )
    work = copy.deepcopy(model).eval()
    example = _pair(example_inputs)
    if mode != "int8":
        return QuantizedModel(_low_precision(work, example, mode), mode, example)
    example = _map(example, lambda t: t.cpu())  # the int8 program is an x86 CPU program
    module = _int8(work.cpu(), example, calibration, calibration_batches)
    return QuantizedModel(module, mode, example)


def save_program(module: nn.Module, example_inputs: Any, path: str | Path) -> Path:
    """Export ``module`` (dynamic batch) and write it, deflate-compressed, atomically to ``path``.

    Also the fair baseline: the float model saved this way is what an int8 file compares with.
    """
    from autoprune.results import atomic_write_bytes  # pandas; only needed when writing

    with _eval_mode(module):
        program = _export(module, _pair(example_inputs))
    raw = io.BytesIO()
    torch.export.save(program, raw)
    packed = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    atomic_write_bytes(path, packed.getvalue())
    return Path(path)


def load(path: str | Path) -> nn.Module:
    """A program written by :func:`save_program`, as a module (torch alone reads it)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"path={str(path)!r}: no such file; save one with QuantizedModel.save")
    import torch.ao.quantization.fx._decomposed  # registers the int8 ops; torchao not needed

    return torch.export.load(file).module()


def compare(float_model: nn.Module, quant_model: nn.Module | QuantizedModel, batch: Any) -> float:
    """Fraction of ``batch`` (inputs, or an ``(inputs, targets)`` pair) whose argmax agrees."""
    inputs = _inputs_of(batch)
    module = quant_model.module if isinstance(quant_model, QuantizedModel) else quant_model
    with _eval_mode(float_model), torch.no_grad():
        ref, out = _call(float_model, inputs), _call(module, inputs)
    if not isinstance(ref, torch.Tensor) or not isinstance(out, torch.Tensor):
        raise ConfigError("compare() needs models that return one logits tensor (batch, classes)")
    agree = ref.argmax(dim=-1).cpu() == out.float().argmax(dim=-1).cpu()
    return float(agree.float().mean())

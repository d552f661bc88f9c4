"""The file formats of ``autoprune export``: each written only after it loads again and matches.

- ``pt``: the portable archive of :func:`autoprune.save_pruned` (DESIGN decision 7), checked by
  :func:`autoprune.load_pruned`.
- ``torchscript``: ``torch.jit.trace`` in eval mode (deprecated upstream since torch 2.9, still
  the file most C++/mobile runtimes take), checked by ``torch.jit.load``.
- ``onnx``: the TorchScript-based exporter (``dynamo=False``), which needs only the ``onnx``
  package; the dynamo exporter would also need ``onnxscript``. With ``onnxruntime`` installed the
  file is run on a test batch and must match PyTorch within :data:`ONNX_TOLERANCE`.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import AutopruneError, BackendUnavailable, ConfigError, UnsupportedModelError
from autoprune.plan import PruningPlan
from autoprune.results import atomic_write_bytes

__all__ = ["FORMATS", "ONNX_TOLERANCE", "RELOAD_TOLERANCE", "Archived", "Inputs", "onnx_module",
           "write"]

log = logging.getLogger(__name__)

#: Export formats and the suffix of their default file name (``trial_<N><suffix>``); ``pt`` is not
#: plain ``.pt`` because ``models/trial_<N>.pt`` already holds the search's state_dict.
FORMATS: Mapping[str, str] = {"pt": ".pruned.pt", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
#: Largest |ONNX Runtime - PyTorch| accepted on a test batch.
ONNX_TOLERANCE = 1e-4
#: A reloaded archive or TorchScript file runs the same kernels; it must match much tighter.
RELOAD_TOLERANCE = 1e-5
_CHECK_BATCH = 32
_ONNX_HINT = 'pip install "autoprune[onnx]"'


@dataclass(frozen=True)
class Inputs:
    """The model's example input (traced by torchscript/onnx) and a test batch (checks, timing)."""

    example: Any
    batch: tuple[torch.Tensor, ...]

    @classmethod
    def of(cls, task: Any, example: Any) -> Inputs:
        """A few test images of ``task`` to compare a reloaded file with PyTorch (else
        ``example``)."""
        batch = next(iter(task.splits().test), None)
        inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else None
        if isinstance(inputs, torch.Tensor) and isinstance(example, torch.Tensor):
            return cls(example, (inputs[:_CHECK_BATCH].to(example.dtype),))
        return cls(example, _tensors(example))


@dataclass(frozen=True)
class Archived:
    """What the ``pt`` archive stores beside the weights: the dense builder and the plan."""

    builder: tuple[str, dict[str, Any]]  # from autoprune.deploy.archive.builder_reference
    plan: PruningPlan


def onnx_module() -> Any:
    """The ``onnx`` package, or :class:`BackendUnavailable` naming the extra to install."""
    try:
        return importlib.import_module("onnx")
    except ImportError as exc:
        raise BackendUnavailable(f"--format onnx needs the 'onnx' package; install it with "
                                 f"{_ONNX_HINT}") from exc


def write(fmt: str, model: nn.Module, path: Path, inputs: Inputs,
          archived: Archived | None = None) -> dict[str, Any]:
    """Write ``path`` only after the file, loaded again, reproduces ``model`` on ``inputs.batch``.

    ``archived`` is required for ``fmt == "pt"``; returns the check's metrics.
    """
    with torch.no_grad():
        expected = model(*inputs.batch)
    if fmt == "pt":
        if archived is None:
            raise ConfigError("--format pt: archived=None; pass Archived(builder_reference(task), "
                              "plan) to write the portable archive")
        diff, checked_with = _write_archive(model, path, inputs, expected, archived)
    elif fmt == "torchscript":
        diff, checked_with = _write_torchscript(model, path, inputs, expected)
    else:
        diff, checked_with = _write_onnx(model, path, inputs, expected)
    return {"max_abs_diff": diff, "checked_with": checked_with,
            "check_batch": len(inputs.batch[0])}


def _tensors(example: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, (tuple, list)) and all(isinstance(x, torch.Tensor) for x in example):
        return tuple(example)
    raise ConfigError(f"example inputs of type {type(example).__name__} cannot be traced for "
                      "torchscript/onnx; use --format pt")


def _output(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu()
    if isinstance(value, (tuple, list)) and value:
        return _output(value[0])
    if isinstance(value, Mapping) and value:
        return _output(next(iter(value.values())))
    raise UnsupportedModelError(f"the model returned {type(value).__name__}, not a tensor")


def _diff(a: Any, b: Any) -> float:
    return float((_output(a) - _output(b)).abs().max())


def _mismatch(fmt: str, diff: float, tolerance: float) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"--format {fmt}: the exported model differs from PyTorch by {diff:.3g} (> {tolerance:g}) "
        "on a test batch, so it was not written; try another --format")


def _write_archive(model: nn.Module, path: Path, inputs: Inputs, expected: Any,
                   archived: Archived) -> tuple[float, str]:
    from autoprune.deploy.archive import is_trusted, load_pruned, save_pruned

    ref, kwargs = archived.builder
    save_pruned(model, path, inputs.example, ref, kwargs, plan=archived.plan)
    try:
        reloaded = load_pruned(path, trust=True)  # the reference came from the task just run
        with torch.no_grad():
            diff = _diff(reloaded(*inputs.batch), expected)
        if not diff <= RELOAD_TOLERANCE:  # NaN never passes
            raise _mismatch("pt", diff, RELOAD_TOLERANCE)
    except (AutopruneError, RuntimeError, TypeError) as exc:
        path.unlink(missing_ok=True)
        if isinstance(exc, AutopruneError):
            raise
        raise ConfigError(f"--format pt: the archive does not load again with builder {ref!r} "
                          f"({type(exc).__name__}: {exc}); give the task a `builder` and "
                          "`builder_kwargs` that build its dense model") from exc
    if not is_trusted(ref):
        log.info("load it with ap.load_pruned(path, builders={%r: <that function>}) or "
                 "trust=True: %r is not a builder load_pruned trusts by default", ref, ref)
    return diff, "autoprune.load_pruned"


def _write_torchscript(model: nn.Module, path: Path, inputs: Inputs,
                       expected: Any) -> tuple[float, str]:
    buffer = io.BytesIO()
    example = _tensors(inputs.example)
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated upstream; the format is not
            warnings.simplefilter("ignore", FutureWarning)
            with torch.no_grad():
                traced = torch.jit.trace(model, example)
            torch.jit.save(traced, buffer)
            reloaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")
    except Exception as exc:  # RuntimeError (tracing, or TorchScript code that does not parse)
        raise _torchscript_failed(model, exc) from exc
    with torch.no_grad():
        diff = _diff(reloaded(*inputs.batch), expected)
    if not diff <= RELOAD_TOLERANCE:  # NaN never passes
        raise _mismatch("torchscript", diff, RELOAD_TOLERANCE)
    atomic_write_bytes(path, buffer.getvalue())
    return diff, "torch.jit.load"


def _torchscript_failed(model: nn.Module, exc: Exception) -> ConfigError:
    """One line for a model TorchScript cannot trace, save or load again."""
    odd = next((n for n, _ in model.named_modules() if not _plain_name(n)), None)
    cause = (f"; layer name {odd!r} holds a double quote, backslash or control character, "
             "which TorchScript's saved code cannot spell" if odd is not None else "")
    return ConfigError(f"--format torchscript: the model does not trace, save and load again as "
                       f"TorchScript ({_why(exc)}){cause}; use --format onnx or --format pt")


def _why(exc: Exception) -> str:
    """The exception's type and first line (one line whatever it holds)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120]}" if lines else type(exc).__name__


def _plain_name(name: str) -> bool:
    return name.isprintable() and '"' not in name and "\\" not in name


def _onnx_bytes(model: nn.Module, example: Any) -> tuple[bytes, list[str]]:
    """The model as checked ONNX bytes, and the names of its inputs."""
    onnx = onnx_module()
    tensors = _tensors(example)
    names = ["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the TorchScript-based exporter warns it is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, tensors, buffer, input_names=names, output_names=["output"],
                              dynamic_axes={n: {0: "batch"} for n in [*names, "output"]},
                              dynamo=False)
        data = buffer.getvalue()
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:  # an op without an ONNX form, a model the checker refuses
        raise ConfigError(f"--format onnx: the model does not export to a valid ONNX file "
                          f"({_why(exc)}); use --format pt or --format torchscript") from exc
    return data, names


def _write_onnx(model: nn.Module, path: Path, inputs: Inputs,
                expected: Any) -> tuple[float | None, str | None]:
    data, names = _onnx_bytes(model, inputs.example)
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is not installed: the ONNX file was not compared with PyTorch "
                    "(%s)", _ONNX_HINT)
        atomic_write_bytes(path, data)
        return None, None
    import onnxruntime

    options = onnxruntime.SessionOptions()  # no spinning threads left behind in this process
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs.batch)})[0]
    del session
    diff = _diff(torch.from_numpy(got), expected)
    if not diff <= ONNX_TOLERANCE:  # NaN never passes
        raise _mismatch("onnx", diff, ONNX_TOLERANCE)
    atomic_write_bytes(path, data)
    return diff, f"onnxruntime {onnxruntime.__version__}"

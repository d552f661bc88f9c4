"""The file formats of ``autoprune export``: each written only after it loads again and matches.

- ``pt`` (the default): the portable archive of :func:`autoprune.save_pruned` (DESIGN decision
  7), checked by :func:`autoprune.load_pruned`; it needs autoprune and the dense model's builder.
- ``pt2`` (recommended for deployment): a ``torch.export`` program with a dynamic batch
  dimension, saved by ``torch.export.save``; torch alone runs it
  (``torch.export.load(path).module()``). It is checked against the eager model at two batch
  sizes, and carries the plan and the autoprune version as the extra file :data:`PT2_EXTRA`.
- ``torchscript`` (legacy): ``torch.jit.trace`` in eval mode (deprecated upstream since torch
  2.9, still the file some C++/mobile runtimes take), checked by ``torch.jit.load``.
- ``onnx``: see :mod:`autoprune.deploy.onnx_file` (the dynamo exporter when ``onnxscript`` is
  installed, else the legacy one; plan and version in ``metadata_props``; ONNX Runtime check).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.deploy.onnx_file import (
    ONNX_TOLERANCE,
    PLAN_KEY,
    VERSION_KEY,
    onnx_bytes,
    onnx_module,
    run_onnx,
)
from autoprune.errors import AutopruneError, ConfigError, UnsupportedModelError
from autoprune.plan import PruningPlan
from autoprune.results import atomic_write_bytes

__all__ = ["FORMATS", "ONNX_TOLERANCE", "PT2_EXTRA", "RELOAD_TOLERANCE", "STATUS", "Archived",
           "Inputs", "onnx_module", "write"]

log = logging.getLogger(__name__)

#: Export formats and the suffix of their default file name (``trial_<N><suffix>``); ``pt`` is not
#: plain ``.pt`` because ``models/trial_<N>.pt`` already holds the search's state_dict.
FORMATS: Mapping[str, str] = {"pt": ".pruned.pt", "pt2": ".pt2", "torchscript": ".torchscript.pt",
                              "onnx": ".onnx"}
#: What each format is (``format_status`` in the export's metrics).
STATUS: Mapping[str, str] = {"pt": "default", "pt2": "recommended", "torchscript": "legacy",
                             "onnx": "interchange"}
#: A reloaded archive, program or TorchScript file runs the same kernels: it must match tightly.
RELOAD_TOLERANCE = 1e-5
#: The extra file of a ``pt2`` program holding ``{"plan": ..., "autoprune": version}``; read it
#: with ``torch.export.load(path, extra_files={PT2_EXTRA: ""})``.
PT2_EXTRA = "autoprune.json"
_CHECK_BATCH = 32


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


def write(fmt: str, model: nn.Module, path: Path, inputs: Inputs,
          archived: Archived | None = None, plan: PruningPlan | None = None) -> dict[str, Any]:
    """Write ``path`` only after the file, loaded again, reproduces ``model`` on ``inputs.batch``.

    ``archived`` is required for ``fmt == "pt"``; ``plan`` (else ``archived.plan``) goes into
    the ``pt2`` and ``onnx`` files' metadata. Returns the check's metrics.
    """
    with torch.no_grad():
        expected = model(*inputs.batch)
    plan = plan if plan is not None else archived.plan if archived is not None else None
    extra: dict[str, Any] = {}
    if fmt == "pt":
        if archived is None:
            raise ConfigError("--format pt: archived=None; pass Archived(builder_reference(task), "
                              "plan) to write the portable archive")
        diff, checked_with = _write_archive(model, path, inputs, expected, archived)
    elif fmt == "pt2":
        diff, checked_with, extra = _write_program(model, path, inputs, expected, plan)
    elif fmt == "torchscript":
        diff, checked_with = _write_torchscript(model, path, inputs, expected)
    else:
        diff, checked_with, extra = _write_onnx(model, path, inputs, expected, plan)
    return {"max_abs_diff": diff, "checked_with": checked_with,
            "check_batch": len(inputs.batch[0]), "format_status": STATUS.get(fmt), **extra}


def _metadata(plan: PruningPlan | None) -> dict[str, str]:
    """What ``pt2`` and ``onnx`` files carry: the plan (JSON) and the autoprune version."""
    import autoprune

    meta = {VERSION_KEY: str(autoprune.__version__)}
    if plan is not None:
        meta[PLAN_KEY] = plan.to_json()
    return meta


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


def _write_program(model: nn.Module, path: Path, inputs: Inputs, expected: Any,
                   plan: PruningPlan | None) -> tuple[float, str, dict[str, Any]]:
    """``torch.export`` with a dynamic batch, saved, loaded again and compared with the eager
    model on the example input and on the test batch (two batch sizes)."""
    example = _tensors(inputs.example)
    other = inputs.batch
    if len(other[0]) == len(example[0]):  # a second, different batch size
        other = tuple(torch.cat([t, t[:1]]) for t in other)
    meta = _metadata(plan)
    extra = json.dumps({"plan": json.loads(meta[PLAN_KEY]) if PLAN_KEY in meta else None,
                        "autoprune": meta[VERSION_KEY]})
    was_training = model.training
    model.eval()
    try:
        pair = tuple(t[:1].repeat(2, *[1] * (t.dim() - 1)) if t.dim() else t for t in example)
        shapes = tuple({0: torch.export.Dim.AUTO} if t.dim() else None for t in pair)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.export.export(model, pair, dynamic_shapes=shapes)
            torch.export.save(program, buffer, extra_files={PT2_EXTRA: extra})
            reloaded = torch.export.load(io.BytesIO(buffer.getvalue())).module()
        with torch.no_grad():
            diffs = [_diff(reloaded(*x), model(*x)) for x in (example, other)]
    except AutopruneError:
        raise
    except Exception as exc:  # torch.export raises many types; all mean "cannot capture"
        raise ConfigError(f"--format pt2: torch.export cannot capture, save or load the model "
                          f"again with a dynamic batch ({_why(exc)}); use --format pt") from exc
    finally:
        model.train(was_training)
    diff = max(diffs)
    if not diff <= RELOAD_TOLERANCE:  # NaN never passes
        raise _mismatch("pt2", diff, RELOAD_TOLERANCE)
    atomic_write_bytes(path, buffer.getvalue())
    return diff, "torch.export.load", {"check_batches": [len(example[0]), len(other[0])]}


def _write_onnx(model: nn.Module, path: Path, inputs: Inputs, expected: Any,
                plan: PruningPlan | None) -> tuple[float | None, str | None, dict[str, Any]]:
    data, names, info = onnx_bytes(model, _tensors(inputs.example), _metadata(plan))
    ran = run_onnx(data, names, inputs.batch)
    if ran is None:
        atomic_write_bytes(path, data)
        return None, None, info
    got, runtime = ran
    diff = _diff(got, expected)
    if not diff <= ONNX_TOLERANCE:  # NaN never passes
        raise _mismatch("onnx", diff, ONNX_TOLERANCE)
    atomic_write_bytes(path, data)
    return diff, runtime, info

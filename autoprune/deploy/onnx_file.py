"""``autoprune export --format onnx``: the ONNX file, its metadata and its check in ONNX Runtime.

The dynamo exporter (``torch.onnx.export(..., dynamo=True)``, built on ``torch.export``) is used
when ``onnxscript`` is importable; otherwise, or when it cannot capture the model, the legacy
TorchScript-based exporter (``dynamo=False``, deprecated upstream) writes the file. Which one did is
returned as ``onnx_exporter`` (``"dynamo"`` | ``"legacy"``) for the export's metrics. Both export
a dynamic batch dimension. The file carries the pruning plan (JSON) and the autoprune version in
its ``metadata_props`` (:data:`PLAN_KEY`, :data:`VERSION_KEY`); with ``onnxruntime`` installed it
is run on a test batch and must match PyTorch within :data:`ONNX_TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from autoprune.errors import BackendUnavailable, ConfigError
from autoprune.interrupts import raise_if_pressed

__all__ = ["ONNX_HINT", "ONNX_TOLERANCE", "PLAN_KEY", "VERSION_KEY", "onnx_bytes", "onnx_module",
           "ort_session", "run_onnx"]

log = logging.getLogger(__name__)

#: Largest |ONNX Runtime - PyTorch| accepted on a test batch.
ONNX_TOLERANCE = 1e-4
#: ``metadata_props`` keys of the exported file: the plan (JSON) and the autoprune version.
PLAN_KEY = "autoprune.plan"
VERSION_KEY = "autoprune.version"
ONNX_HINT = 'pip install "autoprune[onnx]"'


def onnx_module() -> Any:
    """The ``onnx`` package, or :class:`BackendUnavailable` naming the extra to install."""
    try:
        return importlib.import_module("onnx")
    except ImportError as exc:
        raise BackendUnavailable(f"--format onnx needs the 'onnx' package; install it with "
                                 f"{ONNX_HINT}") from exc


def onnx_bytes(model: nn.Module, tensors: Sequence[torch.Tensor], metadata: Mapping[str, str],
               dynamic_batch: bool = True) -> tuple[bytes, list[str], dict[str, Any]]:
    """The model as checked ONNX bytes with ``metadata`` in its ``metadata_props``, the names of
    its inputs, and what to add to the metrics (``onnx_exporter``, and why the dynamo exporter
    was not used when it was not).

    ``dynamic_batch=False`` fixes every shape to ``tensors``' (what latency timing runs): the
    same operators as the dynamic file, so the same ONNX Runtime speed at that batch, for half
    the dynamo export's time (1.8 s against 4.1 s for a small MobileNetV2 on this CPU).
    """
    onnx = onnx_module()
    names = ["input"] if len(tensors) == 1 else [f"input_{i}" for i in range(len(tensors))]
    info: dict[str, Any] = {"onnx_exporter": "legacy"}
    data = None
    if importlib.util.find_spec("onnxscript") is not None:
        try:
            data = _dynamo(model, tuple(tensors), names, dynamic_batch)
            info["onnx_exporter"] = "dynamo"
        except Exception as exc:  # an op the dynamo exporter cannot capture or translate
            raise_if_pressed(exc)  # not the exporter's fault: the user's Ctrl-C, swallowed
            info["onnx_exporter_fallback"] = _why(exc)
            log.warning("the dynamo ONNX exporter failed (%s); using the legacy TorchScript-based "
                        "one", _why(exc))
    else:
        info["onnx_exporter_fallback"] = "onnxscript is not installed"
    try:
        if data is None:
            data = _legacy(model, tuple(tensors), names, dynamic_batch)
        proto = onnx.load_from_string(data)
        _set_metadata(proto, metadata)
        onnx.checker.check_model(proto)
        data = proto.SerializeToString()
    except Exception as exc:  # an op without an ONNX form, a model the checker refuses
        raise ConfigError(f"--format onnx: the model does not export to a valid ONNX file "
                          f"({_why(exc)}); use --format pt2 or --format pt") from exc
    return data, names, info


def run_onnx(data: bytes, names: Sequence[str],
             batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, str] | None:
    """The file's first output on ``batch`` in ONNX Runtime and the runtime's name (``None``
    when onnxruntime is not installed)."""
    if importlib.util.find_spec("onnxruntime") is None:
        log.warning("onnxruntime is not installed: the ONNX file was not compared with PyTorch "
                    "(%s)", ONNX_HINT)
        return None
    import onnxruntime

    session = ort_session(data)
    got = session.run(None, {n: x.numpy() for n, x in zip(names, batch)})[0]
    del session
    return torch.from_numpy(got), f"onnxruntime {onnxruntime.__version__}"


def ort_session(data: bytes) -> Any:
    """An ONNX Runtime CPU session on ``data`` with as many intra-op threads as torch uses, one
    inter-op thread, and no spinning threads left behind in this process."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _dynamo(model: nn.Module, tensors: tuple[torch.Tensor, ...], names: list[str],
            dynamic_batch: bool = True) -> bytes:
    """The dynamo exporter; with a dynamic batch, on a batch of 2 (``torch.export`` fixes a
    batch of 1 as a constant)."""
    shapes = None
    if dynamic_batch:
        tensors = tuple(t[:1].repeat(2, *[1] * (t.dim() - 1)) if t.dim() else t for t in tensors)
        shapes = tuple({0: torch.export.Dim.AUTO} if t.dim() else None for t in tensors)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
        warnings.simplefilter("ignore")  # its progress and deprecation chatter
        program = torch.onnx.export(model, tensors, input_names=names, output_names=["output"],
                                    dynamic_shapes=shapes, dynamo=True, verbose=False)
    if program is None:  # pragma: no cover - torch returns the program when f is None
        raise RuntimeError("torch.onnx.export returned no program")
    return bytes(program.model_proto.SerializeToString())


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """The exporter's optimiser passes log every pass at INFO (``onnx_ir``, ``onnxscript``):
    silenced while it runs, whatever the application's logging level."""
    loggers = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _legacy(model: nn.Module, tensors: tuple[torch.Tensor, ...], names: list[str],
            dynamic_batch: bool = True) -> bytes:
    buffer = io.BytesIO()
    axes = {n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch else None
    with warnings.catch_warnings():  # the TorchScript-based exporter warns it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, tensors, buffer, input_names=names, output_names=["output"],
                          dynamic_axes=axes, dynamo=False)
    return buffer.getvalue()


def _set_metadata(proto: Any, metadata: Mapping[str, str]) -> None:
    """Put ``metadata`` into ``proto.metadata_props``, replacing entries with the same keys."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def _why(exc: Exception) -> str:
    """The exception's type and first line (one line whatever it holds)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:120]}" if lines else type(exc).__name__

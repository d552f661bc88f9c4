"""Tracing a model with torch-pruning's :class:`DependencyGraph`, and counting it.

One forward builds the dependency graph while hooks record every layer call that torch-pruning's
counter counts (module, input and output shapes, autograd node): the analytic cost model is
extracted from those calls. Failures become :class:`~autoprune.errors.UnsupportedModelError`
naming the op (and the nearest layer feeding it) where tracing stopped.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils.op_counter import MODULES_MAPPING

from autoprune.engine.count import attention_types, count_conv_subclasses
from autoprune.engine.custom import registered_pruners
from autoprune.engine.inputs import as_args
from autoprune.errors import ConfigError, UnsupportedModelError

__all__ = ["ROOT_TYPES", "UNSUPPORTED", "LayerCall", "Trace", "check_supported",
           "resolve_ignore", "torch_pruning_version", "trace"]

ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
UNSUPPORTED: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)


def torch_pruning_version() -> str:
    """The installed torch-pruning's version (for run environments and reports), from its
    package metadata: the 1.6.1 wheel's ``__version__`` still says 1.6.0."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-pruning")
    except PackageNotFoundError:  # an unpacked source tree
        return str(tp.__version__)


def check_supported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, UNSUPPORTED):
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) is not supported yet: recurrent "
                "layers need hidden-size pruning, which autoprune does not search; it prunes "
                "convolution and linear channels and attention heads. Move the recurrent "
                "block out of the model you analyse."
            )


@dataclass
class LayerCall:
    """One counted layer call of the tracing forward."""

    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    grad_fn: Any


@dataclass
class Trace:
    """What one tracing forward saw: torch-pruning's graph, the counted layer calls, the conv/
    linear layers in call order, and the input shape of each attention module asked for."""

    graph: tp.DependencyGraph
    calls: list[LayerCall]
    roots_called: list[nn.Module]
    attention_inputs: dict[nn.Module, tuple[int, ...]]


def _counted(module: nn.Module) -> bool:
    """Layers :func:`~autoprune.engine.count.count_macs_params` counts by their own call."""
    kind = type(module)
    return kind in MODULES_MAPPING and (kind is nn.MultiheadAttention
                                        or kind not in attention_types())


@dataclass
class _Recorder:
    """Forward hooks that record the calls of the one tracing forward only."""

    calls: list[LayerCall]
    roots_called: list[nn.Module]
    attention_inputs: dict[nn.Module, tuple[int, ...]]
    active: bool = False
    done: bool = False

    def start(self, module: nn.Module, inputs: Any, kwargs: Any = None) -> None:
        self.active = not self.done

    def stop(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.active, self.done = False, True

    def hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not self.active:  # only the one tracing forward, not torch-pruning's extra calls
            return
        first = inputs[0] if isinstance(inputs, tuple) and inputs else None
        out = output[0] if isinstance(output, (tuple, list)) else output
        if _counted(module) and isinstance(out, torch.Tensor):
            in_shape = tuple(first.shape) if isinstance(first, torch.Tensor) else ()
            self.calls.append(LayerCall(module, in_shape, tuple(out.shape), out.grad_fn))
        if isinstance(module, ROOT_TYPES):
            self.roots_called.append(module)

    def attention(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if not self.active or module in self.attention_inputs:
            return
        first = next((t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)), None)
        if first is not None:
            self.attention_inputs[module] = tuple(first.shape)


def trace(model: nn.Module, example_inputs: Any,
          attention: Sequence[nn.Module] = ()) -> Trace:
    """Build the dependency graph while recording every counted layer call (same forward), and
    the input shape of each module in ``attention``."""
    count_conv_subclasses(model)
    rec = _Recorder([], [], {})
    handles = [m.register_forward_hook(rec.hook) for m in model.modules()]
    handles += [m.register_forward_pre_hook(rec.attention, with_kwargs=True) for m in attention]
    handles.append(model.register_forward_pre_hook(rec.start))
    handles.append(model.register_forward_hook(rec.stop))
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=as_args(example_inputs), verbose=False,
                customized_pruners=registered_pruners(model) or None,
            )
    except (UnsupportedModelError, ConfigError):  # ConfigError: a misregistered custom layer
        raise
    except Exception as exc:  # torch-pruning raises bare errors on untraceable ops
        raise UnsupportedModelError(
            f"torch-pruning could not trace {type(model).__name__}{_culprit(exc, model)}: "
            f"{type(exc).__name__}: {exc}. Check that example_inputs match forward(); ops that "
            "reshuffle channels (channel shuffle, view/chunk across the channel dim) are not "
            "supported: move the block containing them to `ignore=`."
        ) from exc
    finally:
        for h in handles:
            h.remove()
    return Trace(dg, rec.calls, rec.roots_called, rec.attention_inputs)


def _culprit(exc: BaseException, model: nn.Module) -> str:
    """Name the op (and the nearest layer feeding it) where torch-pruning failed, if known."""
    names = {m: n for n, m in model.named_modules()}
    tb = exc.__traceback__
    node = None
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("node")
        if isinstance(candidate, tp.dependency.Node):
            node = candidate
        tb = tb.tb_next
    if node is None:
        return ""
    op = type(node.grad_fn).__name__ if node.grad_fn is not None else node.name
    stack, seen = list(node.inputs), set()
    while stack:
        n = stack.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if n.module in names:
            return f" at op {op} after layer {names[n.module]!r}"
        stack.extend(n.inputs)
    return f" at op {op}"


def resolve_ignore(model: nn.Module, ignore: Sequence[str] | None) -> set[str]:
    """Names of the layers matched by the ``ignore`` patterns (fnmatch); each must match one."""
    names = [n for n, _ in model.named_modules() if n]
    matched: set[str] = set()
    for pattern in ignore or ():
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(
                f"ignore pattern {pattern!r} matches no layer; layer names look like "
                f"{', '.join(names[:6])}, ... (see `autoprune inspect`)"
            )
        matched.update(hits)
    return matched

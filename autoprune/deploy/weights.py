"""Unstructured (weight) pruning: zero single weights, the companion of channel pruning.

Channel pruning (:mod:`autoprune.engine`) makes a network smaller *and faster*; weight pruning
makes its checkpoint smaller to store and ship. :func:`prune_weights` zeroes exactly the requested
fraction, :class:`WeightMask` keeps those zeros through fine-tuning, :func:`sparsity_schedule`
gives the gradual (Zhu & Gupta) schedule, :func:`save_sparse` stores sparse weights as CSR tensors.

Latency, honestly: zeroed weights do **not** speed up dense kernels; a 90 %-sparse ResNet runs
no faster than the dense one, on CPU or GPU. Only 2:4 semi-structured sparsity (2 zeros in
every 4 weights) on an NVIDIA GPU with compute capability 8.0+ (sm80, Ampere or newer) has kernels
that use it (``torch.sparse.to_sparse_semi_structured``, see :func:`to_semi_structured_24`).
For speed anywhere else, remove channels instead.
"""

from __future__ import annotations

import copy
import fnmatch
import io
import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from autoprune.errors import ConfigError

__all__ = [
    "DEFAULT_LAYERS", "SizeReport", "WeightMask", "load_sparse", "mask_24", "prune_weights",
    "save_sparse", "sparse_size", "sparsity_schedule", "to_semi_structured_24", "zeroed_copy",
]

DEFAULT_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_MASK_FORMAT = "autoprune.weight_mask"
_SPARSE_FORMAT = "autoprune.sparse_state_dict"
_QUIET = ("Sparse CSR tensor support is in beta", "Validating sparse tensor invariants")


class WeightMask:
    """Which weights survived: one boolean ``keep`` mask (True = kept) per pruned module name.

    Pruned weights come back as soon as an optimizer updates them. While fine-tuning, either call
    :meth:`apply` after every ``optimizer.step()`` (always safe), or :meth:`attach` once, which
    zeroes masked gradients; that suffices for SGD/Adam/AdamW whose state was created after
    pruning (momentum from before pruning would still move pruned weights).
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]) -> None:
        for name, mask in masks.items():
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise ConfigError(f"mask for {name!r} is not a bool tensor; build masks with "
                                  "prune_weights() or WeightMask.from_state()")
        self._masks = dict(masks)
        self._handles: list[RemovableHandle] = []

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return dict(self._masks)

    def _weights(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs, modules = [], dict(model.named_modules())
        for name, mask in self._masks.items():
            weight = getattr(modules.get(name), "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.shape != mask.shape:
                raise ConfigError(f"the mask has layer {name!r} of shape {tuple(mask.shape)} but "
                                  "the model has no such weight; apply the mask to the model it "
                                  "was made for")
            pairs.append((weight, mask.to(weight.device)))
        return pairs

    def apply(self, model: nn.Module) -> None:
        """Re-zero the pruned weights (call after each optimizer step while retraining)."""
        with torch.no_grad():
            for weight, keep in self._weights(model):
                weight.masked_fill_(~keep, 0)

    def attach(self, model: nn.Module) -> None:
        """Zero the pruned weights and register hooks that zero their gradients."""
        self.detach()
        self.apply(model)
        for weight, keep in self._weights(model):
            drop = ~keep
            self._handles.append(weight.register_hook(lambda g, drop=drop: g.masked_fill(drop, 0)))

    def detach(self) -> None:
        """Remove the gradient hooks registered by :meth:`attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def sparsity(self, model: nn.Module) -> float:
        """Actual fraction of zeros among the masked layers' weights of ``model``."""
        pairs = self._weights(model)
        total = sum(w.numel() for w, _ in pairs)
        zeros = sum(w.numel() - int(torch.count_nonzero(w)) for w, _ in pairs)
        return zeros / total if total else 0.0

    def state(self) -> dict[str, Any]:
        """A plain dict (str keys, CPU bool tensors) for ``torch.save``; loads with weights_only."""
        masks = {n: m.detach().cpu().clone() for n, m in self._masks.items()}
        return {"format": _MASK_FORMAT, "version": 1, "masks": masks}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> WeightMask:
        ok = isinstance(state, Mapping) and isinstance(state.get("masks"), Mapping)
        if not ok or state.get("format") != _MASK_FORMAT:
            raise ConfigError(f"state={type(state).__name__} is not a WeightMask state; pass the "
                              "dict returned by WeightMask.state()")
        return cls(state["masks"])


def _check_sparsity(name: str, value: float) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name}={value!r} is not a fraction in [0, 1); pass e.g. {name}=0.8 "
                          "to zero 80 % of the weights")
    return float(value)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not supported; use one of {', '.join(choices)}")


def _select(model: nn.Module, layers: Sequence[type[nn.Module]],
            ignore: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of each matching layer, shared weights once, ignore globs applied."""
    if isinstance(ignore, str):
        raise ConfigError(f"ignore={ignore!r} must be a sequence of globs: ignore=({ignore!r},)")
    classes = isinstance(layers, Sequence) and all(isinstance(t, type) for t in layers)
    if not layers or not classes or not all(issubclass(t, nn.Module) for t in layers):
        raise ConfigError(f"layers={layers!r} must be a non-empty sequence of nn.Module classes, "
                          "e.g. (nn.Conv2d, nn.Linear)")
    found, seen = [], set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        typed = isinstance(module, tuple(layers)) and isinstance(weight, nn.Parameter)
        if typed and id(weight) not in seen:
            seen.add(id(weight))
            found.append((name, weight))
    names = [n for n, _ in found]
    for pattern in ignore:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(f"ignore pattern {pattern!r} matches no prunable layer; use module "
                              f"names such as {', '.join(repr(n) for n in names[:5])}")
    kept = [(n, w) for n, w in found if not any(fnmatch.fnmatchcase(n, p) for p in ignore)]
    if not kept:
        raise ConfigError(f"no layer of types {[t.__name__ for t in layers]} is left to prune "
                          f"(ignore={list(ignore)}); widen layers= or shorten ignore=")
    return kept


def _scores(name: str, weight: nn.Parameter, criterion: str) -> torch.Tensor:
    w = weight.detach()
    if criterion == "taylor":
        if weight.grad is None:
            raise ConfigError(f"criterion='taylor' needs gradients but {name or 'model'}.weight "
                              "has no .grad; run a forward and backward pass (loss.backward()) on "
                              "a few batches first, or use criterion='l1'")
        w = w * weight.grad.detach()
    return w.abs().float().flatten()


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of exactly ``k`` lowest scores; ties go to the lowest flat index (stable)."""
    pruned = torch.zeros_like(scores, dtype=torch.bool)
    if k == 0:
        return pruned
    threshold = scores.kthvalue(k).values  # NaN sorts last: NaN scores are never pruned
    if bool(threshold.isnan()):
        raise ConfigError("more than 1 - sparsity of the weights (or gradients) are NaN; fix the "
                          "model, or prune to a lower sparsity")
    pruned = scores < threshold
    need = k - int(pruned.sum())
    pruned[torch.nonzero(scores == threshold).flatten()[:need]] = True
    return pruned


def prune_weights(
    model: nn.Module, sparsity: float, scope: str = "global", criterion: str = "l1",
    layers: Sequence[type[nn.Module]] = DEFAULT_LAYERS, ignore: Sequence[str] = (),
    grads: bool = False,
) -> WeightMask:
    """Zero the least important weights of ``layers`` in place; return the mask.

    Exactly ``round(sparsity * n)`` weights are pruned: ``n`` counts all selected weights for
    ``scope="global"`` (one ranking across layers), each layer's own for ``scope="layer"``.
    Biases and norms are never touched. Weights already zero rank lowest, so pruning again to a
    higher sparsity keeps earlier zeros (gradual pruning). ``criterion="l1"`` ranks by |w|;
    ``"taylor"`` by |w * grad| and needs ``.grad`` from a backward pass. The classifier head and
    first layer are *not* ignored by default: pass e.g. ``ignore=("conv1", "fc")`` (fnmatch globs
    over ``named_modules()`` names). ``grads=True`` also zeroes the pruned entries of existing
    ``.grad`` tensors and calls :meth:`WeightMask.attach`, so the next optimizer steps keep them 0.
    """
    sparsity = _check_sparsity("sparsity", sparsity)
    _check_choice("scope", scope, ("global", "layer"))
    _check_choice("criterion", criterion, ("l1", "taylor"))
    selected = _select(model, layers, ignore)
    scores = [_scores(name, weight, criterion) for name, weight in selected]
    if scope == "global":
        device = scores[0].device
        flat = torch.cat([s.to(device) for s in scores])
        pruned = _lowest(flat, round(sparsity * flat.numel())).split([s.numel() for s in scores])
    else:
        pruned = tuple(_lowest(s, round(sparsity * s.numel())) for s in scores)
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for (name, weight), drop in zip(selected, pruned):
            drop = drop.to(weight.device).reshape(weight.shape)
            weight.masked_fill_(drop, 0)
            if grads and weight.grad is not None:
                weight.grad.masked_fill_(drop, 0)
            masks[name] = ~drop
    mask = WeightMask(masks)
    if grads:
        mask.attach(model)
    return mask


def zeroed_copy(model: nn.Module, level: float, dense_params: float
                ) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``model`` with its smallest weights zeroed (one global L1 ranking) so that at
    most ``level`` of ``dense_params`` stay nonzero, a gradient mask keeping them zero through
    fine-tuning; and its counts (``params``: the nonzeros, ``params_ratio``,
    ``weight_sparsity``). :class:`~autoprune.errors.BudgetError` when no sparsity reaches it."""
    from autoprune.errors import BudgetError

    model = copy.deepcopy(model)
    prunable = sum(m.weight.numel() for m in model.modules() if isinstance(m, DEFAULT_LAYERS))
    sparsity = (1.0 - level) * dense_params / prunable
    if not 0.0 <= sparsity < 1.0:
        raise BudgetError(f"keeping {level:.3f} of the parameters nonzero needs a weight "
                          f"sparsity of {sparsity:.3f}; only [0, 1) is possible")
    prune_weights(model, sparsity, scope="global").attach(model)
    nonzeros = sparse_size(model).nonzeros
    return model, {"params": float(nonzeros), "params_ratio": nonzeros / dense_params,
                   "weight_sparsity": sparsity}


def sparsity_schedule(final: float, steps: int, kind: str = "cubic") -> list[float]:
    """Sparsities s_1..s_n for gradual pruning with retraining between steps.

    ``"cubic"`` is Zhu & Gupta (2017): s_t = final * (1 - (1 - t/n)^3), pruning fast while many
    redundant weights remain and gently near the end; ``"linear"`` is final * t/n.
    """
    final = _check_sparsity("final", final)
    _check_choice("kind", kind, ("cubic", "linear"))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps!r} must be a positive integer, e.g. steps=5")
    power = 3 if kind == "cubic" else 1
    values = [final * (1.0 - (1.0 - t / steps) ** power) for t in range(1, steps + 1)]
    values[-1] = final
    return values


@dataclass(frozen=True)
class SizeReport:
    """Parameter counts and measured ``torch.save`` sizes, dense vs sparse-compressed."""

    nonzeros: int  # nonzero parameters
    params: int  # all parameters
    sparsity: float  # fraction of parameters that are zero
    dense_bytes: int  # torch.save(model.state_dict())
    compressed_bytes: int  # torch.save of the save_sparse() payload

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.dense_bytes


def _csr_if_smaller(tensor: torch.Tensor) -> torch.Tensor | None:
    """A CSR copy of ``tensor`` viewed as (dim0, rest), or None when dense storage is smaller.

    Built by hand: ``to_sparse_csr`` over-allocates column indices, and int32 indices make CSR pay
    from ~33 % density instead of ~17 %. COO (an int64 index per dim) never beats it, so it is out.
    """
    flat = tensor.detach().cpu().reshape(tensor.shape[0], -1)
    nonzero = flat != 0
    nnz = int(nonzero.sum())
    index = torch.int32 if max(flat.shape[1], nnz) < 2**31 else torch.int64
    isize = 4 if index == torch.int32 else 8
    csr_bytes = (flat.shape[0] + 1) * isize + nnz * (isize + flat.element_size())
    if csr_bytes >= flat.numel() * flat.element_size():
        return None
    crow = torch.zeros(flat.shape[0] + 1, dtype=index)
    crow[1:] = nonzero.sum(1).cumsum(0)
    col = nonzero.nonzero()[:, 1].to(index)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_QUIET[0])
        return torch.sparse_csr_tensor(crow, col, flat[nonzero], size=flat.shape,
                                       check_invariants=False)


def _payload(model: nn.Module) -> dict[str, Any]:
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for key, tensor in model.state_dict().items():
        sparse = tensor.dim() >= 2 and tensor.is_floating_point()
        csr = _csr_if_smaller(tensor) if sparse else None
        tensors[key] = tensor if csr is None else csr
        shapes.update({} if csr is None else {key: list(tensor.shape)})
    return {"format": _SPARSE_FORMAT, "version": 1, "tensors": tensors, "shapes": shapes}


def _saved_bytes(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


def sparse_size(model: nn.Module) -> SizeReport:
    """Measure what pruning saves on disk: dense ``state_dict`` vs the :func:`save_sparse` form.

    Every floating tensor of 2+ dims is stored as CSR when that is smaller, else dense.
    """
    params = sum(p.numel() for p in model.parameters())
    nonzeros = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    sparsity = 1.0 - nonzeros / params if params else 0.0
    return SizeReport(nonzeros, params, sparsity, _saved_bytes(model.state_dict()),
                      _saved_bytes(_payload(model)))


def save_sparse(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write the compressed state dict atomically (:func:`autoprune.results.atomic_write_bytes`)."""
    from autoprune.results import atomic_write_bytes  # pandas; only needed when writing

    buffer = io.BytesIO()
    torch.save(_payload(model), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_sparse(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Densify a :func:`save_sparse` file into ``model`` (same architecture); return ``model``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_QUIET[1])
        payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _SPARSE_FORMAT:
        raise ConfigError(f"path={str(path)!r} is not an autoprune sparse checkpoint; write it "
                          "with autoprune.save_sparse(model, path)")
    state = {}
    for key, tensor in payload["tensors"].items():
        if tensor.layout == torch.sparse_csr:
            tensor = tensor.to_dense().reshape(payload["shapes"][key])
        state[key] = tensor
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"path={str(path)!r} does not fit model {type(model).__name__}: "
                          f"{exc}; pass a model built like the one that was saved") from exc
    return model


def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """2:4 keep mask of a (out, in) weight: the 2 largest |w| of every 4 along ``in``.

    Ties go to the lower index, so the mask is deterministic and keeps exactly half.
    """
    if weight.dim() != 2 or weight.shape[1] % 4:
        raise ConfigError(f"weight of shape {tuple(weight.shape)} cannot take the 2:4 pattern; "
                          "it needs 2 dims with the input dim a multiple of 4")
    groups = weight.detach().abs().float().reshape(weight.shape[0], -1, 4)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :2], True)
    return keep.reshape(weight.shape)


def to_semi_structured_24(model: nn.Module, ignore: Sequence[str] = ()) -> nn.Module:
    """Prune every Linear weight to 2:4 and convert it for sparse GPU kernels; return ``model``.

    For inference (weights become non-trainable). Needs the model on a CUDA GPU with compute
    capability 8.0+ and, with the default cuSPARSELt backend, float16/bfloat16/int8 weights whose
    shapes meet torch's minimum tile sizes. Nothing is changed unless every layer converts.
    """
    if not torch.cuda.is_available():
        raise ConfigError("to_semi_structured_24 needs a CUDA GPU with compute capability 8.0+ "
                          "(sm80, Ampere or newer) and torch.cuda.is_available() is False; on "
                          "CPU use mask_24() to study 2:4 accuracy (zeros do not speed up CPU)")
    from torch.sparse import to_sparse_semi_structured

    converted = {}
    for name, weight in _select(model, (nn.Linear,), ignore):
        if not weight.is_cuda or torch.cuda.get_device_capability(weight.device) < (8, 0):
            raise ConfigError(f"{name}.weight is on {weight.device}; 2:4 kernels need it on a "
                              "CUDA GPU with compute capability 8.0+ (sm80+): model.cuda().half()")
        try:
            dense = weight.detach().masked_fill(~mask_24(weight), 0).contiguous()
            converted[name] = to_sparse_semi_structured(dense)
        except (ConfigError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"layer {name!r} {tuple(weight.shape)} {weight.dtype} cannot use "
                              f"2:4 kernels ({exc}); cast with model.half() or pass "
                              f"ignore=[{name!r}]") from exc
    for name, sparse in converted.items():
        model.get_submodule(name).weight = nn.Parameter(sparse, requires_grad=False)
    return model

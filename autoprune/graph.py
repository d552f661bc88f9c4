"""Coupled channel groups and pruning: the ONLY module that imports torch_pruning.

torch-pruning's :class:`DependencyGraph` finds which channels must go together (residual adds,
concats, depthwise/grouped convs, flatten into linear). Its module-keyed dicts and its many-argument
pruner stay in here: the rest of autoprune speaks in group *names* (``named_modules()`` names of
the root layer), kept-channel counts and plain data.

One traced pass (:func:`analyze`) yields the groups and a :class:`~autoprune.cost.CostModel`;
:meth:`PrunableModel.apply` prunes a deep copy to a :class:`~autoprune.plan.PruningPlan`.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils.op_counter import MODULES_MAPPING

from autoprune.cost import CostModel
from autoprune.errors import ConfigError, UnsupportedModelError
from autoprune.plan import PruningPlan, kept_channels

__all__ = ["Group", "PrunableModel", "analyze", "apply_plan", "prunable_groups", "replay_history"]

log = logging.getLogger(__name__)

ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_UNSUPPORTED: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
          nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_IMPORTANCE: dict[str, Callable[[], Any]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}


@dataclass(frozen=True)
class Group:
    """A set of channels that must be removed together, named by its root layer.

    ``macs_share`` is the fraction of the dense model's MACs that disappears if this group alone
    loses all its channels: how much a ratio on this group can buy.
    """

    name: str
    channels: int
    macs_share: float
    params_share: float
    channel_groups: int = 1
    layers: tuple[str, ...] = ()

    @property
    def quantum(self) -> int:
        """Channels can only be removed in multiples of this (grouped convs)."""
        return self.channel_groups


def call_model(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def _as_args(example_inputs: Any) -> Any:
    """torch-pruning calls ``model(*inputs)`` first: a bare tensor would be unpacked on dim 0."""
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs


def _batch_of(example_inputs: Any) -> int:
    """The batch torch-pruning's counter divides by: len() of the first positional input."""
    if isinstance(example_inputs, dict):
        return 1
    first = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    return len(first)


def _check_supported(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, _UNSUPPORTED):
            raise UnsupportedModelError(
                f"layer {name!r} ({type(module).__name__}) is not supported yet: attention heads "
                "and recurrent layers need head/hidden-size pruning, which autoprune does not "
                "search yet; autoprune prunes convolution and linear channels (CNNs, MLPs)."
            )


@dataclass
class _Call:
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    grad_fn: Any


def _trace(model: nn.Module, example_inputs: Any) -> tuple[tp.DependencyGraph, list[_Call], list]:
    """Build the dependency graph while recording every counted layer call (same forward)."""
    calls: list[_Call] = []
    roots_called: list[nn.Module] = []

    state = {"active": False, "done": False}

    def start(module: nn.Module, inputs: Any, kwargs: Any = None) -> None:
        state["active"] = not state["done"]

    def stop(module: nn.Module, inputs: Any, output: Any) -> None:
        state["active"], state["done"] = False, True

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if not state["active"]:  # only the one tracing forward, not torch-pruning's extra calls
            return
        first = inputs[0] if isinstance(inputs, tuple) and inputs else None
        out = output[0] if isinstance(output, (tuple, list)) else output
        if type(module) in MODULES_MAPPING and isinstance(out, torch.Tensor):
            in_shape = tuple(first.shape) if isinstance(first, torch.Tensor) else ()
            calls.append(_Call(module, in_shape, tuple(out.shape), out.grad_fn))
        if isinstance(module, ROOT_TYPES):
            roots_called.append(module)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    handles.append(model.register_forward_pre_hook(start))
    handles.append(model.register_forward_hook(stop))
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(
                model, example_inputs=_as_args(example_inputs), verbose=False
            )
    except UnsupportedModelError:
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
    return dg, calls, roots_called


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


def _resolve_ignore(model: nn.Module, ignore: Sequence[str] | None) -> set[str]:
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


class _DimTable:
    """Channel dims of layers, each with its dense size and removal per group."""

    def __init__(self, n_groups: int) -> None:
        self.n_groups = n_groups
        self.index: dict[tuple[int, str], int] = {}
        self.dense: list[float] = []
        self.removal: list[dict[int, float]] = []

    def dim(self, key: tuple[int, str], dense: float, removal: dict[int, float]) -> int:
        if key not in self.index:
            self.index[key] = len(self.dense)
            self.dense.append(float(dense))
            self.removal.append(removal)
        return self.index[key]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        rem = np.zeros((len(self.dense), self.n_groups))
        for d, entries in enumerate(self.removal):
            for g, scale in entries.items():
                rem[d, g] = scale
        return np.asarray(self.dense), rem


class PrunableModel:
    """One traced analysis of a dense model: its groups, cost model, and how to prune it.

    Build it once (:func:`analyze`) and reuse it for every candidate of a search: costs of plans
    are analytic, and :meth:`apply` prunes a fresh deep copy each time.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, ignore: Sequence[str] | None = None,
                 ignore_head: bool = True) -> None:
        _check_supported(model)
        self.model = model
        self.example_inputs = example_inputs
        self.ignore = tuple(ignore or ())
        self.ignore_head = ignore_head
        traced = copy.deepcopy(model).eval()
        traced.requires_grad_(True)
        dg, calls, roots_called = _trace(traced, example_inputs)
        names = {m: n for n, m in traced.named_modules()}
        ignored = _resolve_ignore(traced, ignore)
        self.head: str | None = None
        if ignore_head and roots_called:
            self.head = names.get(roots_called[-1])
            ignored.add(self.head or "")
        ignored_modules = [m for n, m in traced.named_modules() if n in ignored]
        ignored_modules = [s for m in ignored_modules for s in m.modules()]
        self._dg, self._names = dg, names
        self._raw_groups = self._collect_groups(ignored_modules)
        self.cost_model = self._build_cost_model(calls)
        self.groups = self._describe_groups()
        self._by_name = {g.name: g for g in self.groups}

    def __reduce__(self) -> tuple[Any, ...]:
        # the traced graph holds autograd nodes, which do not pickle: ship the inputs and
        # trace again on unpickling (a Ray worker gets the same groups and cost model)
        return (type(self), (self.model, self.example_inputs, self.ignore, self.ignore_head))

    # -- groups -----------------------------------------------------------------------------
    def _channel_groups(self, group: Any) -> int:
        counts = [1]
        for dep, _ in group:
            m = dep.target.module
            if not isinstance(m, nn.Module) or (
                isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels
            ):
                continue
            pruner = self._dg.get_pruner_of_module(m)
            if pruner is None:
                continue
            out_fn = self._dg.is_out_channel_pruning_fn(dep.handler)
            fn = pruner.get_out_channel_groups if out_fn else pruner.get_in_channel_groups
            counts.append(int(fn(m) or 1))
        return max(counts)

    def _collect_groups(self, ignored_modules: list[nn.Module]) -> list[dict[str, Any]]:
        raw = []
        for group in self._dg.get_all_groups(ignored_layers=ignored_modules,
                                             root_module_types=ROOT_TYPES):
            root = group[0].dep.target.module
            channels = len(group[0].idxs)
            if channels <= 1:
                continue
            members: dict[tuple[int, str], float] = {}
            for dep, idxs in group:
                direction = "out" if self._dg.is_out_channel_pruning_fn(dep.handler) else "in"
                members[(id(dep.target), direction)] = len(idxs) / channels
                if isinstance(dep.target.module, _UNSUPPORTED):
                    _check_supported(self.model)
            layers = tuple(
                self._names[dep.target.module] for dep, _ in group
                if dep.target.module in self._names
                and self._dg.is_out_channel_pruning_fn(dep.handler)
                and isinstance(dep.target.module, ROOT_TYPES)
            )
            raw.append({
                "name": self._names[root], "root": root, "handler": group[0].dep.handler,
                "channels": channels, "ch_groups": self._channel_groups(group),
                "members": members, "nodes": [dep.target for dep, _ in group], "layers": layers,
            })
        return raw

    def _removal(self, node: Any, directions: tuple[str, ...]) -> dict[int, float]:
        out: dict[int, float] = {}
        for g, raw in enumerate(self._raw_groups):
            for d in directions:
                scale = raw["members"].get((id(node), d))
                if scale is not None:
                    out[g] = scale
                    break
        return out

    # -- analytic cost --------------------------------------------------------------------------
    def _build_cost_model(self, calls: list[_Call]) -> CostModel:
        dg = self._dg
        table = _DimTable(len(self._raw_groups))
        node_of_grad = {n.grad_fn: n for n in dg.module2node.values() if n.grad_fn is not None}

        def module_dim(m: nn.Module, direction: str, dense: float) -> int:
            node = dg.module2node.get(m)
            removal = self._removal(node, (direction,)) if node is not None else {}
            return table.dim((id(m), direction), dense, removal)

        macs: list[tuple[float, int, int]] = []
        for call in calls:
            macs.extend(self._call_terms(call, module_dim, table, node_of_grad))
        params: list[tuple[float, int, int]] = []
        for term in self._param_terms(module_dim, table):
            params.append(term)
        dense, removal = table.arrays()
        return CostModel(
            group_channels=np.asarray([r["channels"] for r in self._raw_groups], dtype=float),
            dense=dense, removal=removal,
            mac_terms=np.asarray(macs, dtype=float).reshape(-1, 3),
            param_terms=np.asarray(params, dtype=float).reshape(-1, 3),
            batch=_batch_of(self.example_inputs),
        )

    def _call_terms(self, call: _Call, module_dim: Callable, table: _DimTable,
                    node_of_grad: dict) -> list[tuple[float, int, int]]:
        m = call.module
        numel_in = float(np.prod(call.in_shape)) if call.in_shape else 0.0
        numel_out = float(np.prod(call.out_shape))
        if isinstance(m, nn.modules.conv._ConvNd):
            positions = numel_out / m.out_channels
            k = float(np.prod(m.kernel_size))
            i = module_dim(m, "in", m.in_channels)
            o = module_dim(m, "out", m.out_channels)
            bias = [(positions, o, -1)] if m.bias is not None else []
            if _depthwise(m):  # groups follow the channels; torch-pruning prunes it via "out"
                return [(k * positions, o, -1), *bias]
            return [(k * positions / m.groups, i, o), *bias]
        if isinstance(m, nn.Linear):
            i = module_dim(m, "in", m.in_features)
            o = module_dim(m, "out", m.out_features)
            bias = [(1.0, o, -1)] if m.bias is not None else []
            return [(numel_in / m.in_features, i, o), *bias]
        if isinstance(m, _NORMS):
            channels = _norm_channels(m)
            affine = getattr(m, "affine", getattr(m, "elementwise_affine", False))
            d = module_dim(m, "out", channels)
            return [((2.0 if affine else 1.0) * numel_in / channels, d, -1)]
        # activations, pools, upsample: linear in the channels of the tensor they touch
        numel = numel_out if type(m) in (nn.Upsample,) or "relu" in type(m).__name__.lower() \
            or isinstance(m, (nn.GELU, nn.ELU, nn.PReLU)) else numel_in
        node = node_of_grad.get(call.grad_fn) or self._dg.module2node.get(m)
        removal = self._removal(node, ("out", "in")) if node is not None else {}
        if not removal:
            return [(numel, -1, -1)]
        total = sum(self._raw_groups[g]["channels"] * s for g, s in removal.items())
        shape = call.out_shape
        channels = total if total in shape[1:] else (shape[1] if len(shape) > 1 else 1)
        d = table.dim((id(node), "elementwise"), channels, removal)
        return [(numel / channels, d, -1)]

    def _param_terms(self, module_dim: Callable, table: _DimTable) -> list[tuple[float, int, int]]:
        terms: list[tuple[float, int, int]] = []
        seen: set[int] = set()
        param_nodes = {id(n.module): n for n in self._dg.module2node.values()
                       if n.type == tp.ops.OPTYPE.PARAMETER}
        for m in self._dg.model.modules():
            direct = [p for p in m.parameters(recurse=False) if id(p) not in seen]
            if not direct:
                continue
            seen.update(id(p) for p in direct)
            if isinstance(m, nn.modules.conv._ConvNd):
                k = float(np.prod(m.kernel_size))
                i = module_dim(m, "in", m.in_channels)
                o = module_dim(m, "out", m.out_channels)
                if _depthwise(m):
                    terms.append((k, o, -1))
                else:
                    terms.append((k / m.groups, i, o))
                if m.bias is not None:
                    terms.append((1.0, o, -1))
            elif isinstance(m, nn.Linear):
                i = module_dim(m, "in", m.in_features)
                o = module_dim(m, "out", m.out_features)
                terms.append((1.0, i, o))
                if m.bias is not None:
                    terms.append((1.0, o, -1))
            elif isinstance(m, (*_NORMS, nn.PReLU)):
                channels = _norm_channels(m) if isinstance(m, _NORMS) else m.num_parameters
                d = module_dim(m, "out", channels)
                for p in direct:
                    terms.append((p.numel() / channels, d, -1) if p.numel() >= channels
                                 else (float(p.numel()), -1, -1))
            else:
                for p in direct:
                    terms.append(self._unwrapped_term(p, param_nodes, table))
        return terms

    def _unwrapped_term(self, p: nn.Parameter, param_nodes: dict, table: _DimTable
                        ) -> tuple[float, int, int]:
        node = param_nodes.get(id(p))
        removal = self._removal(node, ("out", "in")) if node is not None else {}
        if not removal:
            return (float(p.numel()), -1, -1)
        size = float(p.shape[node.pruning_dim]) if node.pruning_dim is not None else p.numel()
        d = table.dim((id(p), "param"), size, removal)
        return (p.numel() / size, d, -1)

    def _describe_groups(self) -> list[Group]:
        cm = self.cost_model
        dense_kept = cm.group_channels
        macs0, params0 = cm.dense_macs(), cm.dense_params()
        groups = []
        for g, raw in enumerate(self._raw_groups):
            kept = dense_kept.copy()
            kept[g] = 0
            groups.append(Group(
                name=raw["name"], channels=raw["channels"],
                macs_share=(macs0 - cm.macs(kept)) / macs0 if macs0 else 0.0,
                params_share=(params0 - cm.params(kept)) / params0 if params0 else 0.0,
                channel_groups=raw["ch_groups"], layers=raw["layers"],
            ))
        return groups

    # -- plans -----------------------------------------------------------------------------------
    def check_plan(self, plan: PruningPlan) -> None:
        unknown = [n for n in plan.ratios if n not in self._by_name]
        if unknown:
            import difflib

            name = unknown[0]
            close = difflib.get_close_matches(name, list(self._by_name), n=3, cutoff=0.4)
            names = list(self._by_name)
            hint = (f"did you mean {', '.join(close)}?" if close else
                    f"available groups: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
            raise ConfigError(f"plan names group {name!r}, which this model does not have; {hint}")

    def kept(self, plan: PruningPlan) -> list[int]:
        """Kept root channels per group (in ``self.groups`` order) under ``plan``."""
        self.check_plan(plan)
        return [
            kept_channels(g.channels, plan.ratios.get(g.name, 0.0), plan.round_to, g.quantum)
            for g in self.groups
        ]

    def macs(self, plan: PruningPlan) -> float:
        return self.cost_model.macs(self.kept(plan))

    def params(self, plan: PruningPlan) -> float:
        return self.cost_model.params(self.kept(plan))

    def importance_scores(self, criterion: str = "l2") -> list[np.ndarray]:
        """Per-channel importance of each group's root channels on the dense weights.

        Normalised by the group's mean (torch-pruning's default), so scores compare across groups:
        this is what global ranking thresholds. Grouped convs get one score per channel group.
        """
        if criterion == "taylor":
            raise ConfigError("importance_scores(): 'taylor' needs gradients; use l1/l2/bn")
        importance = _IMPORTANCE[criterion]()
        scores = []
        for raw in self._raw_groups:
            group = self._dg.get_pruning_group(raw["root"], raw["handler"],
                                               list(range(raw["channels"])))
            with torch.no_grad():
                imp = importance(group)
            if imp is None:
                imp = torch.ones(raw["channels"])
            imp = imp.detach().float().cpu()
            if raw["ch_groups"] > 1:
                imp = imp.view(raw["ch_groups"], -1).mean(0)
            scores.append((imp / imp.mean().clamp_min(1e-12)).numpy())
        return scores

    def apply(self, plan: PruningPlan, taylor_batch: tuple[Any, Any] | None = None,
              loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
              inplace: bool = False) -> nn.Module:
        """A pruned deep copy of the dense model (``.autoprune_history`` holds its history).

        ``inplace=True`` prunes the analysed model itself (for hooks in a training loop); its
        pruned parameters become new tensors.
        """
        kept = self.kept(plan)
        if plan.importance == "taylor" and taylor_batch is None:
            raise ConfigError("importance='taylor' needs a batch: pass taylor_batch=(inputs, "
                              "targets) (and loss_fn, default cross-entropy)")
        pruned = self.model if inplace else copy.deepcopy(self.model)
        was_training = pruned.training
        pruned.eval()
        grad_flags = [p.requires_grad for p in pruned.parameters()]
        pruned.requires_grad_(True)
        dg, _, _ = _trace(pruned, self.example_inputs)
        name_to_module = dict(pruned.named_modules())
        if plan.importance == "taylor":
            inputs, targets = taylor_batch  # type: ignore[misc]
            pruned.zero_grad()
            (loss_fn or nn.functional.cross_entropy)(call_model(pruned, inputs), targets).backward()
        importance = _IMPORTANCE[plan.importance]()
        work = []
        for g, raw in enumerate(self._raw_groups):
            remove = raw["channels"] - kept[g]
            if remove <= 0:
                continue
            root = name_to_module[raw["name"]]
            full = dg.get_pruning_group(root, raw["handler"].__func__.__get__(
                dg.get_pruner_of_module(root)), list(range(raw["channels"])))
            idxs = _pick(importance, full, raw["channels"], raw["ch_groups"], remove)
            work.append((root, idxs))
        for root, idxs in work:  # all importances first (dense weights), then prune
            pruner = dg.get_pruner_of_module(root)
            group = dg.get_pruning_group(root, pruner.prune_out_channels, idxs)
            group.prune()
        pruned.zero_grad(set_to_none=True)
        for p, flag in zip(pruned.parameters(), grad_flags):
            p.requires_grad_(flag)
        pruned.train(was_training)
        history = [(n, bool(o), [int(i) for i in idx]) for n, o, idx in dg.pruning_history()]
        # a model pruned before (gradual pruning) keeps its earlier steps: replay needs them all
        pruned.__dict__["autoprune_history"] = [*pruned.__dict__.get("autoprune_history", []),
                                                *history]
        _verify(pruned, self.example_inputs)
        return pruned


def _depthwise(m: nn.modules.conv._ConvNd) -> bool:
    return m.groups > 1 and m.groups == m.in_channels


def _norm_channels(m: nn.Module) -> int:
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[-1])
    return int(m.num_features)


def _pick(importance: Any, group: Any, channels: int, ch_groups: int, remove: int) -> list[int]:
    """Indices of the ``remove`` least important root channels (equal per channel group)."""
    with torch.no_grad():
        imp = importance(group)
    if imp is None:  # e.g. bn criterion on a group without BatchNorm: fall back to L2
        with torch.no_grad():
            imp = tp.importance.GroupMagnitudeImportance(p=2)(group)
    imp = imp.detach().float().cpu()
    if ch_groups > 1:
        size = channels // ch_groups
        order = torch.argsort(imp.view(ch_groups, -1).mean(0))[: remove // ch_groups]
        return sorted(int(i) + g * size for g in range(ch_groups) for i in order)
    return sorted(int(i) for i in torch.argsort(imp)[:remove])


def _verify(model: nn.Module, example_inputs: Any) -> None:
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            call_model(model, example_inputs)
            model.train(was)
    except Exception as exc:
        raise UnsupportedModelError(
            f"the pruned {type(model).__name__} no longer runs ({type(exc).__name__}: {exc}); "
            "an op outside torch-pruning's coverage depends on a channel count. Add the layer "
            "feeding it to `ignore=`."
        ) from exc


def analyze(model: nn.Module, example_inputs: Any, ignore: Sequence[str] | None = None,
            ignore_head: bool = True) -> PrunableModel:
    """Trace ``model`` once: its groups, analytic cost model, and a pruner for plans."""
    return PrunableModel(model, example_inputs, ignore=ignore, ignore_head=ignore_head)


def prunable_groups(model: nn.Module, example_inputs: Any, ignore: Sequence[str] | None = None,
                    ignore_head: bool = True) -> list[Group]:
    """Every coupled channel group of ``model``; the classifier head is ignored by default."""
    return analyze(model, example_inputs, ignore=ignore, ignore_head=ignore_head).groups


def apply_plan(model: nn.Module, example_inputs: Any, plan: PruningPlan,
               ignore: Sequence[str] | None = None, **kwargs: Any) -> nn.Module:
    """A pruned copy of ``model`` under ``plan``; ``model`` itself is untouched."""
    return analyze(model, example_inputs, ignore=ignore).apply(plan, **kwargs)


def replay_history(model: nn.Module, example_inputs: Any, history: list) -> nn.Module:
    """Prune ``model`` in place by replaying a recorded pruning history (for loading archives)."""
    was = model.training
    model.eval()
    dg, _, _ = _trace(model, example_inputs)
    dg.load_pruning_history([(n, bool(o), list(i)) for n, o, i in history])
    model.train(was)
    return model

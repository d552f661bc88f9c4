"""Extracting the analytic :class:`CostModel` from one traced pass.

Every counted layer call becomes MAC terms and every parameter tensor a param term: a product of
at most two channel *dims* (a layer's input or output channels, or the channels of an elementwise
op), each of which shrinks linearly with the channels its coupled groups remove. Attention adds
its tokens² matmuls (``batch x tokens² x heads x (qk_dim + head_dim)``), which are no layer call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch_pruning as tp
from torch import nn

from autoprune.engine.attention import per_head_params
from autoprune.engine.costmodel import ATTENTION, ELEMENTWISE, LAYER, CostModel
from autoprune.engine.custom import channel_params, linked_dims
from autoprune.engine.groups import CoupledGroup, removal_of
from autoprune.engine.trace import LayerCall, Trace

__all__ = ["LayerDims", "build_cost_model", "layer_dims"]

Term = tuple[float, int, int, int]  # coef, dim 1, dim 2 (-1: the constant 1), kind

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
         nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def depthwise(m: nn.modules.conv._ConvNd) -> bool:
    return m.groups > 1 and m.groups == m.in_channels


def _norm_channels(m: nn.Module) -> int:
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[-1])
    return int(m.num_features)


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


class _Builder:
    """The terms of one traced model, over the dims of its coupled groups."""

    def __init__(self, dg: tp.DependencyGraph, groups: Sequence[CoupledGroup]) -> None:
        self.dg, self.groups = dg, groups
        self.table = _DimTable(len(groups))
        self.node_of_grad = {n.grad_fn: n for n in dg.module2node.values()
                             if n.grad_fn is not None}
        # layers inside a registered custom layer: no graph node of their own
        self.links = linked_dims(dg.model)
        self.inside = {id(m) for m in dg.IGNORED_LAYERS_IN_TRACING}
        self.head_roots = {id(g.root): i for i, g in enumerate(groups) if g.heads is not None}
        self.head_params: set[int] = set()

    def module_dim(self, m: nn.Module, direction: str, dense: float) -> int:
        node = self.dg.module2node.get(m)
        link = self.links.get((id(m), direction))
        if node is None and link is not None:  # follows the custom layer it sits in
            parent, per = link
            found = removal_of(self.groups, self.dg.module2node.get(parent), ("out", "in"))
            removal = {g: s * per for g, s in found.items()}
        else:
            removal = removal_of(self.groups, node, (direction,)) if node is not None else {}
        return self.table.dim((id(m), direction), dense, removal)

    def conv_terms(self, m: nn.modules.conv._ConvNd, per: float, bias_per: float) -> list[Term]:
        """``per`` x kernel MACs (or params) per channel product; ``bias_per`` per output."""
        k = float(np.prod(m.kernel_size))
        i = self.module_dim(m, "in", m.in_channels)
        o = self.module_dim(m, "out", m.out_channels)
        bias = [(bias_per, o, -1, ELEMENTWISE)] if m.bias is not None else []
        if depthwise(m):  # groups follow the channels; torch-pruning prunes it via "out"
            return [(k * per, o, -1, LAYER), *bias]
        return [(k * per / m.groups, i, o, LAYER), *bias]

    def linear_terms(self, m: nn.Linear, per: float, bias_per: float) -> list[Term]:
        i = self.module_dim(m, "in", m.in_features)
        o = self.module_dim(m, "out", m.out_features)
        bias = [(bias_per, o, -1, ELEMENTWISE)] if m.bias is not None else []
        return [(per, i, o, LAYER), *bias]

    def call_terms(self, call: LayerCall) -> list[Term]:
        m = call.module
        numel_in = float(np.prod(call.in_shape)) if call.in_shape else 0.0
        numel_out = float(np.prod(call.out_shape))
        if isinstance(m, nn.modules.conv._ConvNd):
            positions = numel_out / m.out_channels
            return self.conv_terms(m, positions, positions)
        if isinstance(m, nn.Linear):
            return self.linear_terms(m, numel_in / m.in_features, 1.0)
        if isinstance(m, nn.MultiheadAttention):  # heads and width stay: constants
            return _mha_terms(m, call)
        if isinstance(m, NORMS):
            channels = _norm_channels(m)
            affine = getattr(m, "affine", getattr(m, "elementwise_affine", False))
            d = self.module_dim(m, "out", channels)
            return [((2.0 if affine else 1.0) * numel_in / channels, d, -1, ELEMENTWISE)]
        # activations, pools, upsample: linear in the channels of the tensor they touch
        numel = numel_out if type(m) in (nn.Upsample,) or "relu" in type(m).__name__.lower() \
            or isinstance(m, (nn.GELU, nn.ELU, nn.PReLU)) else numel_in
        node = None if id(m) in self.inside else \
            self.node_of_grad.get(call.grad_fn) or self.dg.module2node.get(m)
        removal = removal_of(self.groups, node, ("out", "in")) if node is not None else {}
        if not removal:
            return [(numel, -1, -1, ELEMENTWISE)]
        total = sum(self.groups[g].channels * s for g, s in removal.items())
        shape = call.out_shape
        channels = total if total in shape[1:] else (shape[1] if len(shape) > 1 else 1)
        d = self.table.dim((id(node), "elementwise"), channels, removal)
        return [(numel / channels, d, -1, ELEMENTWISE)]

    def attention_terms(self, attention_inputs: dict[nn.Module, tuple[int, ...]]) -> list[Term]:
        """``batch x tokens² x heads x (qk_dim + head_dim)`` per head group (self-attention;
        the layout reads batch and tokens off the input shape, e.g. per window)."""
        terms: list[Term] = []
        for g, group in enumerate(self.groups):
            shape = attention_inputs.get(group.root)
            if group.heads is None or not group.heads.matmul_width or shape is None or \
                    len(shape) < 3:
                continue
            layout = group.heads
            batch, tokens = layout.tokens(shape)
            d = self.table.dim((id(group.root), "heads"), layout.heads * layout.matmul_width,
                               {g: float(layout.heads_per_unit * layout.matmul_width)})
            terms.append((batch * tokens * tokens, d, -1, ATTENTION))
        return terms

    def head_param_terms(self, m: nn.Module) -> list[Term]:
        """Per-head parameters of a head group's attention (e.g. a relative-position bias table):
        they shrink with its heads."""
        g = self.head_roots.get(id(m))
        if g is None:
            return []
        layout = self.groups[g].heads
        assert layout is not None
        d = self.table.dim((id(m), "head-params"), layout.heads,
                           {g: float(layout.heads_per_unit)})
        terms: list[Term] = []
        for pname, _ in per_head_params(layout, m):
            p = getattr(m, pname)
            self.head_params.add(id(p))
            terms.append((p.numel() / layout.heads, d, -1, LAYER))
        return terms

    def param_terms(self) -> list[Term]:
        terms: list[Term] = []
        seen: set[int] = set()
        param_nodes = {id(n.module): n for n in self.dg.module2node.values()
                       if n.type == tp.ops.OPTYPE.PARAMETER}
        for m in self.dg.model.modules():
            direct = [p for p in m.parameters(recurse=False) if id(p) not in seen]
            if not direct:
                continue
            seen.update(id(p) for p in direct)
            terms.extend(self.head_param_terms(m))
            direct = [p for p in direct if id(p) not in self.head_params]
            per_channel = {id(p): dim for p, dim in channel_params(m)}  # registered layers
            for p in direct:
                if id(p) in per_channel:
                    size = p.shape[per_channel[id(p)]]
                    terms.append((p.numel() / size, self.module_dim(m, "out", size), -1, LAYER))
            direct = [p for p in direct if id(p) not in per_channel]
            if isinstance(m, nn.modules.conv._ConvNd):
                terms.extend(self.conv_terms(m, 1.0, 1.0))
            elif isinstance(m, nn.Linear):
                terms.extend(self.linear_terms(m, 1.0, 1.0))
            elif isinstance(m, (*NORMS, nn.PReLU)):
                channels = _norm_channels(m) if isinstance(m, NORMS) else m.num_parameters
                d = self.module_dim(m, "out", channels)
                for p in direct:
                    terms.append((p.numel() / channels, d, -1, LAYER) if p.numel() >= channels
                                 else (float(p.numel()), -1, -1, LAYER))
            else:
                terms.extend(self.unwrapped_term(p, param_nodes) for p in direct)
        return terms

    def unwrapped_term(self, p: nn.Parameter, param_nodes: dict[int, Any]) -> Term:
        node = param_nodes.get(id(p))
        removal = removal_of(self.groups, node, ("out", "in")) if node is not None else {}
        if not removal:
            return (float(p.numel()), -1, -1, LAYER)
        size = float(p.shape[node.pruning_dim]) if node.pruning_dim is not None else p.numel()
        d = self.table.dim((id(p), "param"), size, removal)
        return (p.numel() / size, d, -1, LAYER)


def _mha_terms(m: nn.MultiheadAttention, call: LayerCall) -> list[Term]:
    """An ``nn.MultiheadAttention`` call as constants (its width and heads are never pruned):
    projections as :func:`~autoprune.engine.count.count_macs_params` counts them, and the
    attention matmuls."""
    shape = call.in_shape
    if len(shape) != 3:
        return []
    seq, batch = (shape[1], shape[0]) if m.batch_first else (shape[0], shape[1])
    e = float(m.embed_dim)
    proj = 4 * seq * e * e * batch
    bias = (3 * seq * e if m.in_proj_bias is not None else 0.0) + \
        (seq * e if m.out_proj.bias is not None else 0.0)
    return [(proj, -1, -1, LAYER), (bias * batch, -1, -1, ELEMENTWISE),
            (2.0 * batch * seq * seq * e, -1, -1, ATTENTION)]


def build_cost_model(dg: tp.DependencyGraph, groups: Sequence[CoupledGroup], traced: Trace,
                     batch: int, constant_matmuls: float = 0.0) -> CostModel:
    """The cost model of the traced model ``dg`` over ``groups``; MACs divided by ``batch``.
    ``constant_matmuls`` (MACs per image) are matmuls outside layer calls that no group
    changes."""
    builder = _Builder(dg, groups)
    macs = [term for call in traced.calls for term in builder.call_terms(call)]
    macs += builder.attention_terms(traced.attention_inputs)
    if constant_matmuls:
        macs.append((constant_matmuls * batch, -1, -1, ATTENTION))
    params = builder.param_terms()
    dense, removal = builder.table.arrays()
    return CostModel(
        group_channels=np.asarray([g.channels for g in groups], dtype=float),
        dense=dense, removal=removal,
        mac_terms=np.asarray(macs, dtype=float).reshape(-1, 4),
        param_terms=np.asarray(params, dtype=float).reshape(-1, 4)[:, :3],
        batch=batch,
    )


@dataclass(frozen=True)
class LayerDims:
    """One conv/linear call of the tracing forward and the channel dims its widths follow:
    indices into the ``(dense, removal)`` arrays :func:`layer_dims` returns with it (dim ``d``
    keeps ``dense[d] - removal[d] @ removed`` channels); ``in_dim`` is -1 for a depthwise conv,
    whose input channels follow its output."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_dim: int
    out_dim: int


def layer_dims(dg: tp.DependencyGraph, groups: Sequence[CoupledGroup], traced: Trace
               ) -> tuple[list[LayerDims], np.ndarray, np.ndarray]:
    """The conv/linear calls of ``traced`` with their dims, and the dims' dense sizes and
    removal per root channel of each group (what a per-layer latency table needs to read a
    plan's layer widths without building the pruned model)."""
    builder = _Builder(dg, groups)
    names = {m: n for n, m in dg.model.named_modules()}
    out = []
    for call in traced.calls:
        m = call.module
        conv = isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        if not (conv or isinstance(m, nn.Linear)) or not call.in_shape:
            continue
        cin, cout = (m.in_channels, m.out_channels) if conv else (m.in_features, m.out_features)
        in_dim = -1 if conv and depthwise(m) else builder.module_dim(m, "in", cin)
        out.append(LayerDims(names.get(m, ""), m, tuple(call.in_shape), tuple(call.out_shape),
                             in_dim, builder.module_dim(m, "out", cout)))
    dense, removal = builder.table.arrays()
    return out, dense, removal

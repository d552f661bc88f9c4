"""Attention heads as prunable units: finding them, ranking them, removing them (and the hidden
units of gated MLPs, which share the layout: rows of an input projection in two slices, columns
of an output projection).

torch-pruning's graph couples a fused ``qkv`` projection's output straight onto the output
projection's input, which is wrong by a factor of three and by the head layout. autoprune handles
attention itself: a :class:`HeadLayout` names the input projections whose output rows belong to
each head, the output projection whose input columns do, and how to tell the module its new head
count. Removing a *unit* (one head, or one key/value head with its query heads under grouped-query
attention) removes its rows and columns everywhere, so the pruned block still runs with
``num_heads`` and ``head_dim`` consistent. Recognised layouts:

- a fused ``qkv`` + ``proj`` pair with ``num_heads`` (timm ``Attention``, timm Swin's
  ``WindowAttention`` and look-alikes; per-head parameters such as a relative-position bias table
  are pruned along their heads dim);
- separate ``q_proj``/``k_proj``/``v_proj`` + ``o_proj`` with ``head_dim`` (Hugging Face LLaMA,
  ViT and others; grouped-query attention prunes whole key/value groups);
- ``query``/``key``/``value`` with ``attention_head_size`` whose parent has ``output.dense``
  (Hugging Face BERT-style).

``nn.MultiheadAttention`` and torchvision's Swin attention are first swapped for equivalents
whose heads can go (:mod:`autoprune.engine.adapters`); attention whose head count still cannot
change is reported with the reason. Whatever is recognised here is still verified by the
engine's probe: a layout whose pruned copy fails or miscounts is frozen.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["HeadLayout", "find_attention", "head_scores", "per_head_params", "prune_heads"]


@dataclass(frozen=True)
class Projection:
    """A linear layer whose output rows are ``slices`` blocks of ``heads x rows`` rows (``rows``
    0: the layout's ``head_dim``; TinyViT interleaves ``2 x key_dim + val_dim`` rows per head,
    Swin V2's bias MLP has one)."""

    name: str
    slices: int = 1
    heads_per_unit: int = 1
    rows: int = 0


def token_grid(shape: tuple[int, ...]) -> tuple[float, float]:
    """(batch, tokens) of a ``(..., tokens, channels)`` attention input."""
    return float(math.prod(shape[:-2])), float(shape[-2])


@dataclass(frozen=True)
class HeadLayout:
    """One attention block's heads, by ``named_modules()`` names (valid in any deep copy)."""

    name: str  # the attention module
    inputs: tuple[Projection, ...]
    output: str
    units: int  # prunable units: heads (or key/value heads under grouped-query attention)
    head_dim: int
    heads_per_unit: int  # query heads per unit
    set_heads: Callable[[nn.Module, int], None]  # (attention module, kept units) -> None
    qk_dim: int = 0  # query/key width per head (0: head_dim, the value width)
    # (batch, tokens) of self-attention from the module's input shape
    tokens: Callable[[tuple[int, ...]], tuple[float, float]] = token_grid
    kind: str = "heads"  # or "glu": the hidden units of a gated MLP (no attention matmuls)

    @property
    def heads(self) -> int:
        return self.units * self.heads_per_unit

    @property
    def matmul_width(self) -> int:
        """Per query head, ``q @ k^T`` and ``attn @ v`` cost ``tokens² x`` this many MACs."""
        if self.kind != "heads":
            return 0
        return (self.qk_dim or self.head_dim) + self.head_dim

    def rows_per_unit(self, proj: Projection) -> int:
        """Output rows of ``proj`` per unit, in each of its slices."""
        return proj.heads_per_unit * (proj.rows or self.head_dim)

    def input_rows(self, proj: Projection, units: list[int], layer: nn.Linear) -> list[int]:
        width = layer.out_features // proj.slices
        per = self.rows_per_unit(proj)
        return [s * width + u * per + j for s in range(proj.slices) for u in units
                for j in range(per)]

    def output_cols(self, units: list[int]) -> list[int]:
        per = self.heads_per_unit * self.head_dim
        return [u * per + j for u in units for j in range(per)]


def _set_attrs(**scaled: int) -> Callable[[nn.Module, int], None]:
    """A ``set_heads`` writing ``attr = kept * factor`` for each attribute the module has."""

    def set_heads(module: nn.Module, kept: int) -> None:
        for attr, factor in scaled.items():
            owner_name, _, leaf = attr.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            if hasattr(owner, leaf):
                setattr(owner, leaf, kept * factor)

    return set_heads


def _is_linear(m: object) -> bool:
    return isinstance(m, nn.Linear)


def _tokens(m: nn.Module) -> Callable[[tuple[int, ...]], tuple[float, float]]:
    """The module's own (batch, tokens) reading (windowed or sequence-first attention)."""
    own = getattr(m, "attention_tokens", None)
    return own if callable(own) else token_grid


def _interleaved(name: str, m: nn.Module) -> HeadLayout | str | None:
    """TinyViT/EfficientFormer: per head, qkv rows are ``key_dim, key_dim, val_dim``."""
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    heads, kd, vd = (getattr(m, a, 0) for a in ("num_heads", "key_dim", "val_dim"))
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)
            and all(isinstance(v, int) and v > 0 for v in (heads, kd, vd)) and heads > 1):
        return None
    if qkv.out_features != heads * (2 * kd + vd) or proj.in_features != heads * vd:
        return (f"its qkv ({qkv.out_features}) / proj ({proj.in_features}) do not split into "
                f"{heads} heads of key_dim {kd} and val_dim {vd}")
    return HeadLayout(name, (Projection(f"{name}.qkv", rows=2 * kd + vd),), f"{name}.proj",
                      heads, vd, 1, _set_attrs(num_heads=1, out_dim=vd, val_attn_dim=vd,
                                               key_attn_dim=kd), qk_dim=kd, tokens=_tokens(m))


def _glu(name: str, m: nn.Module) -> HeadLayout | None:
    """A gated MLP (timm ``GluMlp``: ``fc1`` then ``chunk(2)``, one half gating the other, then
    ``fc2``): hidden unit ``j`` is ``fc1`` rows ``j`` and ``hidden + j`` and ``fc2`` column ``j``,
    which torch-pruning's split mapping gets wrong."""
    fc1, fc2, norm = getattr(m, "fc1", None), getattr(m, "fc2", None), getattr(m, "norm", None)
    if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
            and getattr(m, "chunk_dim", None) == -1 and isinstance(norm, (nn.Identity, type(None)))
            and fc1.out_features == 2 * fc2.in_features and fc2.in_features > 1):
        return None
    return HeadLayout(name, (Projection(f"{name}.fc1", 2),), f"{name}.fc2", fc2.in_features, 1,
                      1, _set_attrs(), kind="glu")


def _bias_mlp(name: str, m: nn.Module, heads: int) -> tuple[Projection, ...]:
    """Swin V2's continuous position-bias MLP, whose last layer has one output per head."""
    mlp = getattr(m, "cpb_mlp", None)
    last = mlp[-1] if isinstance(mlp, nn.Sequential) and len(mlp) else None
    if isinstance(last, nn.Linear) and last.out_features == heads:
        return (Projection(f"{name}.cpb_mlp.{len(mlp) - 1}", rows=1),)
    return ()


def _fused(name: str, m: nn.Module) -> HeadLayout | str | None:
    qkv, proj, heads = getattr(m, "qkv", None), getattr(m, "proj", None), getattr(m, "num_heads", 0)
    if not (isinstance(qkv, nn.Module) and isinstance(heads, int) and heads > 1):
        return None
    if not (_is_linear(qkv) and _is_linear(proj)):
        return f"its qkv/proj are {type(qkv).__name__}/{type(proj).__name__}, not linear layers"
    assert isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)
    inner = proj.in_features
    if qkv.out_features != 3 * inner or inner % heads:
        return f"its qkv ({qkv.out_features}) is not 3 x proj's input ({inner}) in {heads} heads"
    norm, gate = getattr(m, "norm", None), getattr(m, "gate", None)
    if not (norm is None or isinstance(norm, nn.Identity)) or gate is not None:
        return "a norm or gate over all heads sits between attention and proj"
    hd = inner // heads
    return HeadLayout(name, (Projection(f"{name}.qkv", 3), *_bias_mlp(name, m, heads)),
                      f"{name}.proj", heads, hd, 1, _set_attrs(num_heads=1, attn_dim=hd),
                      tokens=_tokens(m))


def _separate(name: str, m: nn.Module) -> HeadLayout | str | None:
    projs = [getattr(m, p, None) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    hd = getattr(m, "head_dim", 0)
    if not (all(_is_linear(p) for p in projs) and isinstance(hd, int) and hd > 0):
        return None
    q, k, v, _o = projs
    assert isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and isinstance(v, nn.Linear)
    heads, kv = q.out_features // hd, k.out_features // hd
    if q.out_features % hd or k.out_features % hd or kv == 0 or heads % kv or \
            v.out_features != k.out_features:
        return f"q/k/v widths {q.out_features}/{k.out_features}/{v.out_features} do not split " \
               f"into heads of {hd}"
    rep = heads // kv
    return HeadLayout(name, (Projection(f"{name}.q_proj", 1, rep), Projection(f"{name}.k_proj"),
                             Projection(f"{name}.v_proj")),
                      f"{name}.o_proj", kv, hd, rep,
                      _set_attrs(num_heads=rep, num_attention_heads=rep,
                                 num_key_value_heads=1))


def _bert(name: str, m: nn.Module, modules: dict[str, nn.Module]) -> HeadLayout | str | None:
    size = getattr(m, "attention_head_size", 0)
    if not (all(_is_linear(getattr(m, p, None)) for p in ("query", "key", "value"))
            and isinstance(size, int) and size > 0):
        return None
    parent, _, _ = name.rpartition(".")
    out_name = f"{parent}.output.dense" if parent else "output.dense"
    if not _is_linear(modules.get(out_name)):
        return f"no output projection {out_name!r} next to it"
    heads = getattr(m, "num_attention_heads", 0)
    return HeadLayout(name, tuple(Projection(f"{name}.{p}") for p in ("query", "key", "value")),
                      out_name, int(heads), size, 1,
                      _set_attrs(num_attention_heads=1, all_head_size=size))


def find_attention(model: nn.Module) -> tuple[list[HeadLayout], dict[str, str]]:
    """Head layouts of ``model``, and attention modules whose heads stay (name -> reason)."""
    modules = dict(model.named_modules())
    layouts: list[HeadLayout] = []
    fixed: dict[str, str] = {}
    for name, m in modules.items():
        if isinstance(m, nn.MultiheadAttention):  # the adaptable ones are HeadAttention now
            fixed[name] = ("this nn.MultiheadAttention has separate key/value widths, bias_k/"
                           "bias_v or add_zero_attn, which autoprune's HeadAttention lacks")
            continue
        found = (_interleaved(name, m) or _fused(name, m) or _separate(name, m)
                 or _bert(name, m, modules) or _glu(name, m))
        if isinstance(found, HeadLayout):
            if found.units > 1:
                layouts.append(found)
        elif isinstance(found, str):
            fixed[name] = found
    return layouts, fixed


def per_head_params(layout: HeadLayout, attn: nn.Module) -> list[tuple[str, int]]:
    """Direct parameters of the attention module with a dim of size ``heads`` (last such dim)."""
    found = []
    for pname, p in attn.named_parameters(recurse=False):
        dims = [d for d, n in enumerate(p.shape) if n == layout.heads]
        if dims:
            found.append((pname, dims[-1]))
    return found


def prune_heads(model: nn.Module, layout: HeadLayout, units: list[int]) -> None:
    """Remove ``units`` (indices) of ``layout`` from ``model`` in place."""
    if not units:
        return
    modules = dict(model.named_modules())
    attn = modules[layout.name]
    per_head = per_head_params(layout, attn)
    for proj in layout.inputs:
        layer = modules[proj.name]
        assert isinstance(layer, nn.Linear)
        tp.prune_linear_out_channels(layer, layout.input_rows(proj, units, layer))
    out = modules[layout.output]
    assert isinstance(out, nn.Linear)
    tp.prune_linear_in_channels(out, layout.output_cols(units))
    heads = [u * layout.heads_per_unit + h for u in units for h in range(layout.heads_per_unit)]
    for pname, dim in per_head:
        p = getattr(attn, pname)
        keep = [i for i in range(p.shape[dim]) if i not in set(heads)]
        setattr(attn, pname, nn.Parameter(p.data.index_select(dim, torch.tensor(keep)).clone(),
                                          requires_grad=p.requires_grad))
    layout.set_heads(attn, layout.units - len(units))
    if isinstance(getattr(attn, "attention_bias_cache", None), dict):  # timm caches biases
        attn.attention_bias_cache = {}


def head_scores(model: nn.Module, layout: HeadLayout) -> torch.Tensor:
    """L2 norm of each unit's projection rows and output columns, normalised by the mean."""
    modules = dict(model.named_modules())
    score = torch.zeros(layout.units)
    for u in range(layout.units):
        total = torch.zeros(())
        for proj in layout.inputs:
            layer = modules[proj.name]
            assert isinstance(layer, nn.Linear)
            total = total + layer.weight.detach()[layout.input_rows(proj, [u], layer)].pow(2).sum()
        out = modules[layout.output]
        assert isinstance(out, nn.Linear)
        total = total + out.weight.detach()[:, layout.output_cols([u])].pow(2).sum()
        score[u] = total.sqrt()
    return score / score.mean().clamp_min(1e-12)

"""Attention whose head count cannot change, swapped for equivalent attention whose can.

``nn.MultiheadAttention`` checks ``embed_dim == num_heads x head_dim`` and keeps its packed
in-projection as a bare parameter; torchvision's Swin attention calls its projections' weights
functionally and derives ``head_dim`` from the input width. Neither runs once a head is gone, and
neither shows its projections to the traced graph as layer calls. :func:`adapt_attention` swaps
them for modules with the same weights and outputs whose projections are ``qkv`` / ``proj`` layer
calls and whose inner width follows the heads, so :mod:`autoprune.engine.attention` finds them as
the fused layout:

- ``nn.MultiheadAttention`` (packed in-projection; no ``bias_k``/``bias_v``/``add_zero_attn``)
  becomes :class:`HeadAttention`, with the same call signature and outputs;
- torchvision's ``ShiftedWindowAttention`` / ``ShiftedWindowAttentionV2`` become subclasses from
  :mod:`autoprune.engine.tv_swin` (same attributes and state, a head-count-agnostic forward).

A pruned model therefore holds these classes instead of the originals (its state-dict keys follow:
``in_proj_weight`` becomes ``qkv.weight``).
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HeadAttention", "adapt_attention", "adapted_name", "needs_adapting"]

TV_SWIN = "torchvision.models.swin_transformer"


class HeadAttention(nn.Module):
    """``nn.MultiheadAttention`` with its packed in-projection as a ``qkv`` layer and its output
    projection as ``proj``: the same call (``query, key, value, key_padding_mask, need_weights,
    attn_mask, average_attn_weights, is_causal``) and outputs, any number of heads."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True,
                 out_bias: bool = True, dropout: float = 0.0, batch_first: bool = False) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.qkv = nn.Linear(embed_dim, 3 * num_heads * head_dim, bias=bias)
        self.proj = nn.Linear(num_heads * head_dim, embed_dim, bias=out_bias)
        self.dropout, self.batch_first = dropout, batch_first

    @classmethod
    def from_multihead(cls, m: nn.MultiheadAttention) -> HeadAttention:
        """The same attention as ``m`` (weights copied)."""
        new = cls(m.embed_dim, m.num_heads, m.head_dim, bias=m.in_proj_bias is not None,
                  out_bias=m.out_proj.bias is not None, dropout=m.dropout,
                  batch_first=m.batch_first)
        new.to(device=m.out_proj.weight.device, dtype=m.out_proj.weight.dtype)
        with torch.no_grad():
            new.qkv.weight.copy_(m.in_proj_weight)
            new.proj.weight.copy_(m.out_proj.weight)
            if m.in_proj_bias is not None:
                new.qkv.bias.copy_(m.in_proj_bias)
            if m.out_proj.bias is not None:
                new.proj.bias.copy_(m.out_proj.bias)
        new.train(m.training)
        return new

    def attention_tokens(self, shape: tuple[int, ...]) -> tuple[float, float]:
        """(batch, tokens) of a self-attention call whose query has ``shape``."""
        if len(shape) == 2:
            return 1.0, float(shape[0])
        return (float(shape[0]), float(shape[1])) if self.batch_first else \
            (float(shape[1]), float(shape[0]))

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 same: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (batch, heads, tokens, head_dim); inputs batch-first."""
        if same:  # self-attention: one layer call, as the traced graph should see it
            b, n, _ = query.shape
            qkv = self.qkv(query).reshape(b, n, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            return q, k, v
        w = self.qkv.weight.chunk(3)
        b3 = self.qkv.bias.chunk(3) if self.qkv.bias is not None else (None, None, None)
        out = []
        for x, wi, bi in zip((query, key, value), w, b3):
            y = F.linear(x, wi, bi)
            out.append(y.reshape(y.shape[0], y.shape[1], self.num_heads, self.head_dim)
                       .transpose(1, 2))
        return out[0], out[1], out[2]

    def _mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
              batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        """One additive float mask broadcastable to (batch, heads, queries, keys)."""
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, dtype)
            if mask.dim() == 3:  # (batch x heads, queries, keys)
                mask = mask.view(batch, self.num_heads, *mask.shape[-2:])
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask, dtype).view(batch, 1, 1, -1)
            mask = pad if mask is None else mask + pad
        return mask

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        same = query is key and key is value
        unbatched = query.dim() == 2
        q_in, k_in, v_in = (t.unsqueeze(0 if self.batch_first else 1) if unbatched else t
                            for t in (query, key, value))
        if not self.batch_first:
            q_in, k_in, v_in = (t.transpose(0, 1) for t in (q_in, k_in, v_in))
        if same:
            k_in = v_in = q_in
        if unbatched and key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        q, k, v = self._project(q_in, k_in, v_in, same)
        mask = self._mask(attn_mask, key_padding_mask, q.shape[0], q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            if mask is not None:
                attn = attn + mask
            elif is_causal:
                attn = attn + _causal(attn.shape[-2], attn.shape[-1], attn.dtype, attn.device)
            attn = F.dropout(attn.softmax(dim=-1), p=p, training=self.training)
            out = attn @ v
            weights = attn.mean(dim=1) if average_attn_weights else attn
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
        b, _, n, _ = out.shape
        out = self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


def _causal(n: int, s: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.full((n, s), float("-inf"), dtype=dtype, device=device).triu(1)


def _adaptable_mha(m: nn.Module) -> bool:
    return (isinstance(m, nn.MultiheadAttention) and m._qkv_same_embed_dim
            and m.bias_k is None and m.bias_v is None and not m.add_zero_attn)


def _tv_swin_class(m: nn.Module) -> type[nn.Module] | None:
    """The head-prunable subclass for a torchvision Swin attention module, if ``m`` is one."""
    cls = type(m)
    if cls.__module__ != TV_SWIN or cls.__name__ not in (
            "ShiftedWindowAttention", "ShiftedWindowAttentionV2"):
        return None
    swin = importlib.import_module("autoprune.engine.tv_swin")
    found: type[nn.Module] = getattr(swin, f"Head{cls.__name__}")
    return found


def needs_adapting(model: nn.Module) -> bool:
    return any(_adaptable_mha(m) or _tv_swin_class(m) is not None for m in model.modules())


def adapt_attention(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with its adaptable attention swapped (a deep copy unless ``inplace``; the model
    itself when there is nothing to adapt)."""
    if not needs_adapting(model):
        return model
    if not inplace:
        model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if not name:  # the model itself: nothing holds it to swap it in
            continue
        swin = _tv_swin_class(m)
        if swin is not None:
            m.__class__ = swin
        elif _adaptable_mha(m):
            assert isinstance(m, nn.MultiheadAttention)
            _set_module(model, name, HeadAttention.from_multihead(m))
    return model


#: nn.MultiheadAttention parameter -> its name in HeadAttention
RENAMED = {"in_proj_weight": "qkv.weight", "in_proj_bias": "qkv.bias",
           "out_proj.weight": "proj.weight", "out_proj.bias": "proj.bias"}


def adapted_name(model: nn.Module, name: str) -> str:
    """The name parameter ``name`` of the original model has in ``model`` once adapted (e.g. to
    find an optimizer's parameters again)."""
    for old, new in RENAMED.items():
        if name == old or name.endswith("." + old):
            owner = name[:len(name) - len(old)].rstrip(".")
            if isinstance(model.get_submodule(owner) if owner else model, HeadAttention):
                return name[:len(name) - len(old)] + new
    return name


def _set_module(model: nn.Module, name: str, new: Any) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)

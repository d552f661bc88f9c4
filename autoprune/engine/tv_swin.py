"""torchvision's Swin attention with a forward that works for any number of heads.

torchvision's ``shifted_window_attention`` calls the projections' weights functionally and takes
``head_dim = C / num_heads`` from the input width ``C``. These subclasses keep every attribute,
parameter and the relative-position bias of the originals, call ``self.qkv`` / ``self.proj`` as
layers and take the inner width from ``proj``: with all heads they compute what torchvision's
forward computes; with fewer heads they still run. :func:`autoprune.engine.adapters.
adapt_attention` swaps them in (the module is imported only for models that hold Swin).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.swin_transformer import (
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
)

__all__ = ["HeadShiftedWindowAttention", "HeadShiftedWindowAttentionV2"]


def _windows(x: torch.Tensor, window: list[int], shift: list[int]
             ) -> tuple[torch.Tensor, tuple[int, int], list[int]]:
    """Pad, roll and partition (B, H, W, C) into (B x windows, tokens, C); padded size, shift."""
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, (window[1] - w % window[1]) % window[1],
                  0, (window[0] - h % window[0]) % window[0]))
    _, ph, pw, _ = x.shape
    shift = [0 if window[0] >= ph else shift[0], 0 if window[1] >= pw else shift[1]]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = x.view(b, ph // window[0], window[0], pw // window[1], window[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)
    return x, (ph, pw), shift


def _shift_mask(x: torch.Tensor, padded: tuple[int, int], window: list[int],
                shift: list[int]) -> torch.Tensor:
    """torchvision's additive mask separating the regions a cyclic shift brings together."""
    ph, pw = padded
    mask = x.new_zeros((ph, pw))
    h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            mask[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    num_windows = (ph // window[0]) * (pw // window[1])
    mask = mask.view(ph // window[0], window[0], pw // window[1], window[1])
    mask = mask.permute(0, 2, 1, 3).reshape(num_windows, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _scores(m: nn.Module, x: torch.Tensor, logit_scale: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention logits (windows, heads, tokens, tokens) and values of windowed ``x``."""
    heads = m.num_heads
    qkv = m.qkv(x)
    if logit_scale is not None and m.qkv.bias is not None:
        third = m.qkv.bias.numel() // 3
        k_bias = m.qkv.bias[third:2 * third]
        if bool(k_bias.any()):  # V2 never uses the key bias (torchvision zeroes it per call)
            qkv = qkv - F.pad(k_bias, (third, third))
    head_dim = m.proj.in_features // heads
    q, k, v = qkv.reshape(x.size(0), x.size(1), 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    if logit_scale is not None:  # V2: cosine attention
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * head_dim ** -0.5).matmul(k.transpose(-2, -1))
    return attn, v


def window_attention(m: nn.Module, inputs: torch.Tensor, bias: torch.Tensor,
                     logit_scale: torch.Tensor | None) -> torch.Tensor:
    """torchvision's ``shifted_window_attention`` with the inner width read off ``m.proj``."""
    b, _, _, c = inputs.shape
    window, heads = list(m.window_size), m.num_heads
    x, padded, shift = _windows(inputs, window, list(m.shift_size))
    attn, v = _scores(m, x, logit_scale)
    attn = attn + bias
    if sum(shift) > 0:
        mask = _shift_mask(x, padded, window, shift)
        nw = mask.shape[0]
        attn = attn.view(x.size(0) // nw, nw, heads, x.size(1), x.size(1))
        attn = (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, heads, x.size(1), x.size(1))
    attn = F.dropout(F.softmax(attn, dim=-1), p=m.attention_dropout, training=m.training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), m.proj.in_features)
    x = F.dropout(m.proj(x), p=m.dropout, training=m.training)
    ph, pw = padded
    x = x.view(b, ph // window[0], pw // window[1], window[0], window[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :inputs.shape[1], :inputs.shape[2], :].contiguous()


def _tokens(m: nn.Module, shape: tuple[int, ...]) -> tuple[float, float]:
    """(batch x windows, tokens per window) of a (B, H, W, C) input: windows are padded."""
    window = list(m.window_size)
    windows = math.ceil(shape[1] / window[0]) * math.ceil(shape[2] / window[1])
    return float(shape[0] * windows), float(window[0] * window[1])


class HeadShiftedWindowAttention(ShiftedWindowAttention):
    """torchvision's Swin V1 attention, any number of heads."""

    def attention_tokens(self, shape: tuple[int, ...]) -> tuple[float, float]:
        return _tokens(self, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_attention(self, x, self.get_relative_position_bias(), None)


class HeadShiftedWindowAttentionV2(ShiftedWindowAttentionV2):
    """torchvision's Swin V2 attention (cosine attention, bias MLP), any number of heads."""

    def attention_tokens(self, shape: tuple[int, ...]) -> tuple[float, float]:
        return _tokens(self, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return window_attention(self, x, self.get_relative_position_bias(), self.logit_scale)

"""HeadAttention and the torchvision Swin subclasses against the modules they replace (oracle:
the original module's own forward on the same weights)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from autoprune.engine.adapters import HeadAttention, adapt_attention, needs_adapting
from autoprune.engine.attention import find_attention, prune_heads


def _mha(batch_first, **kwargs):
    torch.manual_seed(0)
    return nn.MultiheadAttention(32, 4, batch_first=batch_first, **kwargs).eval()


def _inputs(batch_first, tokens=5):
    x = torch.randn(2, tokens, 32)
    return x if batch_first else x.transpose(0, 1).contiguous()


CALLS = {
    "plain": {"need_weights": False},
    "weights": {"need_weights": True},
    "per-head weights": {"need_weights": True, "average_attn_weights": False},
    "padding": {"key_padding_mask": torch.tensor([[False] * 4 + [True], [False] * 5]),
                "need_weights": False},
    "causal bool mask": {"attn_mask": torch.ones(5, 5, dtype=torch.bool).triu(1)},
    "float mask": {"attn_mask": torch.randn(5, 5), "need_weights": False},
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_head_attention_matches_multihead_attention(batch_first, call):
    m = _mha(batch_first)
    h = HeadAttention.from_multihead(m)
    x = _inputs(batch_first)
    with torch.no_grad():
        want, want_w = m(x, x, x, **CALLS[call])
        got, got_w = h(x, x, x, **CALLS[call])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    if want_w is None:
        assert got_w is None
    else:
        torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-4)


def test_head_attention_matches_cross_and_unbatched_attention():
    m = _mha(True)
    h = HeadAttention.from_multihead(m)
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(h(q, kv, kv)[0], m(q, kv, kv)[0], atol=1e-5, rtol=1e-4)
        u = torch.randn(5, 32)
        torch.testing.assert_close(h(u, u, u)[0], m(u, u, u)[0], atol=1e-5, rtol=1e-4)


def test_pruned_head_attention_runs_with_fewer_heads():
    model = nn.Sequential(_mha(True))
    adapted = adapt_attention(model)
    assert isinstance(adapted[0], HeadAttention) and isinstance(model[0], nn.MultiheadAttention)
    layouts, fixed = find_attention(adapted)
    assert [lay.name for lay in layouts] == ["0"] and not fixed
    prune_heads(adapted, layouts[0], [1, 3])
    x = torch.randn(2, 5, 32)
    out, _ = adapted[0](x, x, x, need_weights=False)
    assert adapted[0].num_heads == 2 and adapted[0].qkv.out_features == 3 * 2 * 8
    assert out.shape == x.shape


def test_multihead_attention_that_cannot_be_adapted_says_why():
    model = nn.Sequential(nn.MultiheadAttention(32, 4, add_bias_kv=True))
    assert not needs_adapting(model)
    layouts, fixed = find_attention(model)
    assert not layouts and "bias_k" in fixed["0"]


@pytest.mark.parametrize("builder", ["swin_t", "swin_v2_t"])
def test_swin_subclasses_compute_what_torchvision_computes(builder):
    torch.manual_seed(0)
    model = getattr(torchvision.models, builder)(weights=None, num_classes=10).eval()
    for m in model.modules():  # non-zero biases, so every term of the forward matters
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.normal_(m.bias, std=0.1)
    x = torch.randn(1, 3, 72, 56)  # not a multiple of the window: padding and cropping
    adapted = adapt_attention(model)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), model(x), atol=1e-4, rtol=1e-4)
    names = {type(m).__name__ for m in adapted.modules()}
    assert {"HeadShiftedWindowAttention", "HeadShiftedWindowAttentionV2"} & names

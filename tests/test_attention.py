"""Attention heads and MLP widths of real transformers, pruned to a FLOPs budget.

Oracles: ``FlopCounterMode`` for the matmuls (attention's tokens² products included),
torch-pruning's counter for layers and elementwise ops, the model's own forward for shapes.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

import autoprune as ap
from autoprune.engine import count_macs_params
from autoprune.engine.count import count_matmul_macs
from autoprune.engine.prune import replay_history
from autoprune.errors import ConfigError

timm = pytest.importorskip("timm")


def _timm(name, **kwargs):
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def _check_half_flops(model, x):
    """Prune to 0.5 FLOPs and check it against both counters; the analysis and plan."""
    torch.manual_seed(0)
    a = ap.analyze(model, x)
    plan = ap.fit_budget(model, x, 1.0, flops=0.5, analysis=a)
    pruned = a.apply(plan)
    kept = a.kept(plan)
    cm = a.cost_model
    assert abs(a.macs(plan) / cm.dense_macs() - 0.5) <= 0.005
    assert cm.matmul_macs(kept) == pytest.approx(count_matmul_macs(pruned, x), rel=0.005)
    macs, params = count_macs_params(pruned, x)
    assert cm.counter_macs(kept) == pytest.approx(macs, rel=0.005)
    assert a.params(plan) == pytest.approx(params, rel=0.005)
    with torch.no_grad():
        out, dense = _logits(pruned, x), _logits(model, x)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    return a, plan, pruned


def _logits(model, x):
    out = model(**x) if isinstance(x, dict) else model(x)
    return out.logits if hasattr(out, "logits") else out


def _pruned_heads(a, plan):
    return [(g, k) for g, k in zip(a.groups, a.kept(plan)) if g.kind == "heads" and k < g.channels]


TIMM_VITS = {
    "vit_tiny_patch16_224": (_timm("vit_tiny_patch16_224", img_size=32), 32),
    "deit_tiny_patch16_224": (_timm("deit_tiny_patch16_224", img_size=32), 32),
    "swin_tiny_patch4_window7_224": (
        _timm("swin_tiny_patch4_window7_224", img_size=64, window_size=4), 64),
    "tiny_vit_5m_224": (_timm("tiny_vit_5m_224"), 64),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM_VITS))
def test_timm_heads_and_mlp_land_on_half_the_flops(name):
    build, size = TIMM_VITS[name]
    model = build().eval()
    a, plan, pruned = _check_half_flops(model, torch.randn(1, 3, size, size))
    assert _pruned_heads(a, plan), "no head was pruned"
    assert any(g.kind == "channels" and ".mlp." in g.name for g in a.groups)
    # round_to rounds the width a head group gives its layers (a head's width), not its count
    assert {g.unit_width > 1 for g in a.groups if g.kind == "heads"} == {True}
    assert {g.unit_width for g in a.groups if g.kind == "channels"} == {1}
    for module in pruned.modules():
        if type(module).__name__ in ("Attention", "WindowAttention") and \
                not hasattr(module, "key_dim"):  # TinyViT's heads: checked below
            inner = module.qkv.out_features // 3
            assert inner == module.proj.in_features and inner % module.num_heads == 0
            if hasattr(module, "head_dim"):
                assert inner == module.num_heads * module.head_dim
            table = getattr(module, "relative_position_bias_table", None)
            if table is not None:  # Swin: one bias column per remaining head
                assert table.shape[-1] == module.num_heads
        if hasattr(module, "key_dim") and hasattr(module, "attention_biases"):  # TinyViT
            assert module.qkv.out_features == module.num_heads * (
                2 * module.key_dim + module.val_dim)
            assert module.proj.in_features == module.out_dim == module.num_heads * module.val_dim
            assert module.attention_biases.shape[0] == module.num_heads
    # the embedding width stays, and says so
    assert any("embedding width" in f.reason for f in a.frozen)


@pytest.mark.slow
def test_gated_mlp_hidden_units_land_on_half_the_flops():
    # EVA-02's GluMlp: fc1 -> chunk(2) -> gate -> fc2; one hidden unit is two fc1 rows
    torch.manual_seed(0)
    model = _timm("eva02_tiny_patch14_224", img_size=64)().eval()
    a, _, pruned = _check_half_flops(model, torch.randn(1, 3, 64, 64))
    glu = [g for g in a.groups if g.kind == "glu"]
    assert glu and {g.name for g in glu} == {f"blocks.{i}.mlp" for i in range(12)}
    for block in pruned.blocks:
        assert block.mlp.fc1.out_features == 2 * block.mlp.fc2.in_features


TORCHVISION = {  # nn.MultiheadAttention, Swin's functional V1 and V2 window attention
    "vit_b_16": (lambda: torchvision.models.vit_b_16(weights=None, num_classes=10,
                                                     image_size=32), 32),
    "swin_t": (lambda: torchvision.models.swin_t(weights=None, num_classes=10), 64),
    "swin_v2_t": (lambda: torchvision.models.swin_v2_t(weights=None, num_classes=10), 64),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_heads_and_mlp_land_on_half_the_flops(name):
    build, size = TORCHVISION[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(1, 3, size, size)
    a, plan, pruned = _check_half_flops(model, x)
    assert _pruned_heads(a, plan), "no head was pruned"
    assert not [f for f in a.frozen if "heads stay" in f.reason]
    assert any(type(m).__name__ in ("HeadAttention", "HeadShiftedWindowAttention",
                                    "HeadShiftedWindowAttentionV2") for m in pruned.modules())
    # the caller's model is untouched (analysis adapts a copy) and the history replays onto it
    assert not any(type(m).__name__.startswith("Head") for m in model.modules())
    fresh = replay_history(build().eval(), x, pruned.autoprune_history)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x), pruned(x), atol=1e-5)


transformers = pytest.importorskip("transformers")


def _hf(kind):
    torch.manual_seed(0)
    common = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128}
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=100, max_position_embeddings=32, **common)
        return (transformers.BertForSequenceClassification(cfg).eval(),
                {"input_ids": torch.randint(0, 100, (1, 16))})
    if kind == "vit":
        cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_labels=10, **common)
        return (transformers.ViTForImageClassification(cfg).eval(),
                {"pixel_values": torch.randn(1, 3, 32, 32)})
    cfg = transformers.LlamaConfig(vocab_size=100, max_position_embeddings=64,
                                   num_key_value_heads=2, **common)
    return (transformers.LlamaForCausalLM(cfg).eval(),
            {"input_ids": torch.randint(0, 100, (1, 16)), "use_cache": False})


@pytest.mark.parametrize("kind", ["bert", "vit", "llama"])
def test_hugging_face_heads_and_mlp_land_on_half_the_flops(kind):
    model, x = _hf(kind)
    a, plan, pruned = _check_half_flops(model, x)
    heads = _pruned_heads(a, plan)
    assert heads, "no head was pruned"
    if kind == "llama":  # grouped-query attention: whole key/value groups with their queries
        attn = pruned.model.layers[0].self_attn
        kv = attn.k_proj.out_features // attn.head_dim
        assert attn.q_proj.out_features == 2 * kv * attn.head_dim  # 4 heads over 2 kv heads


def test_head_history_replays_onto_a_fresh_model():
    build, size = TIMM_VITS["vit_tiny_patch16_224"]
    x = torch.randn(2, 3, size, size)
    torch.manual_seed(0)
    model = build().eval()
    a = ap.analyze(model, x)
    pruned = a.apply(ap.fit_budget(model, x, 1.0, flops=0.5, analysis=a))
    history = pruned.autoprune_history
    assert any(step[0].startswith("heads:") for step in history)
    fresh = replay_history(build().eval(), x, history)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


def test_trace_timeout_is_checked():
    with pytest.raises(ConfigError, match="trace_timeout"):
        ap.analyze(torch.nn.Linear(4, 4), torch.randn(1, 4), trace_timeout=0)


def test_the_vit_space_caps_heads_and_mlp_widths():
    from autoprune.space import load_space

    build, size = TIMM_VITS["vit_tiny_patch16_224"]
    a = ap.analyze(build().eval(), torch.randn(1, 3, size, size))
    names = [g.name for g in a.groups]
    caps = dict(zip(names, load_space("vit").resolve(names).caps()))
    assert caps["blocks.0.attn"] == pytest.approx(0.5)
    assert caps["blocks.0.mlp.fc1"] == pytest.approx(0.75)

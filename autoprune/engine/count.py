"""Counting a model's MACs and params as it is: the oracles the analytic cost model must match.

- :func:`count_macs_params` is torch-pruning's counter (layers and elementwise ops, MACs per
  image) with its attention-module hooks replaced by plain projection counts: torch-pruning's
  hooks for timm ``Attention`` / ``WindowAttention`` count the inner ``qkv``/``proj`` layers a
  second time, and its ``nn.MultiheadAttention`` hook folds scaling and softmax in.
- :func:`count_matmul_macs` is ``torch.utils.flop_counter.FlopCounterMode`` (halved: MACs), with
  the CPU flash-attention kernel of ``scaled_dot_product_attention`` counted like the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from torch_pruning.utils import op_counter

from autoprune.engine.inputs import batch_size_of, call_model

__all__ = ["attention_types", "count_macs_params", "count_matmul_macs"]


def _mha_projection_hook(module: nn.MultiheadAttention, inputs: Any, output: Any) -> None:
    """Projection MACs of an ``nn.MultiheadAttention`` call (the matmuls between tokens are
    attention MACs, which torch-pruning's module counter does not see for other layers either)."""
    q, k, v = inputs[:3]
    seq_dim = 1 if module.batch_first else 0
    e = module.embed_dim
    tokens = q.shape[seq_dim] + k.shape[seq_dim] + v.shape[seq_dim]
    macs = tokens * e * e + (tokens * e if module.in_proj_bias is not None else 0)
    out = module.out_proj
    macs += q.shape[seq_dim] * e * e + (q.shape[seq_dim] * e if out.bias is not None else 0)
    batch = q.shape[1 - seq_dim] if q.dim() == 3 else 1
    module.__flops__ += int(macs * batch)  # type: ignore[operator]


def attention_types() -> list[type[nn.Module]]:
    """The attention modules torch-pruning's counter has hooks for."""
    return [t for t in op_counter.MODULES_MAPPING
            if t is nn.MultiheadAttention or t.__name__ in ("Attention", "WindowAttention")]


@contextmanager
def _plain_attention_hooks() -> Iterator[None]:
    mapping = op_counter.MODULES_MAPPING
    saved = {t: mapping.pop(t) for t in attention_types()}
    mapping[nn.MultiheadAttention] = _mha_projection_hook
    try:
        yield
    finally:
        mapping.pop(nn.MultiheadAttention, None)
        mapping.update(saved)


def count_conv_subclasses(model: nn.Module) -> None:
    """Count conv subclasses (timm's ``ScaledStdConv2d``, ``StdConv2d``, ``Conv2dSame``) like
    their base conv: torch-pruning's counter looks layers up by exact type."""
    mapping = op_counter.MODULES_MAPPING
    for m in model.modules():
        kind = type(m)
        if kind not in mapping and isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            base = next(b for b in kind.__mro__ if b in (nn.Conv1d, nn.Conv2d, nn.Conv3d))
            mapping[kind] = mapping[base]


def count_macs_params(model: nn.Module, example_inputs: Any) -> tuple[float, float]:
    """MACs per image and parameters of ``model`` as it is (torch-pruning's counter, attention
    modules counted by their projections only)."""
    was = model.training
    count_conv_subclasses(model)
    try:
        with _plain_attention_hooks():
            macs, params = tp.utils.count_ops_and_params(model.eval(), example_inputs)
    finally:
        model.train(was)
    return float(macs), float(params)


def _cpu_flash_flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    # FlopCounterMode hands custom formulas shapes (torch.Size), not tensors
    return int(sdpa_flop_count(query, key, value))


_CUSTOM_FLOPS: dict[Any, Any] = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_flops


def count_matmul_macs(model: nn.Module, example_inputs: Any) -> float:
    """Matmul MACs per image of one forward (``FlopCounterMode`` / 2 / batch)."""
    # with gradients on: nn.MultiheadAttention's no-grad fast path is one fused kernel the
    # counter does not know
    was = model.training
    try:
        with torch.enable_grad(), FlopCounterMode(display=False,
                                                  custom_mapping=_CUSTOM_FLOPS) as counter:
            call_model(model.eval(), example_inputs)
    finally:
        model.train(was)
    return counter.get_total_flops() / 2 / batch_size_of(example_inputs)

"""Quantizing a pruned, trained CIFAR-style ResNet: int8 agrees with float, is smaller, and errors
are one clear line. The model is trained (Fashion-MNIST when installed, else separable synthetic
images): an untrained net's near-tied logits would make agreement meaningless."""

from __future__ import annotations

import importlib.util
import itertools
import operator
import sys
from pathlib import Path

import pytest
import torch

import autoprune as ap
from autoprune.deploy.quantize import MODES, QuantizedModel, compare, load, quantize, save_program
from autoprune.errors import BackendUnavailable, ConfigError
from autoprune.pipeline import finetune_model, reestimate_bn
from autoprune.settings import FinetuneSettings
from autoprune.tasks import FashionMNISTTask, TaskOptions, cifar_resnet
from autoprune.tasks.fashion_mnist import DEFAULT_DATA_DIR

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason='int8 needs torchao: pip install "autoprune[quant]"')


def _synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten fixed random 28x28 templates plus noise: separable, so a few epochs train a real net."""
    templates = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    return templates[y] + 0.8 * torch.randn(n, 1, 28, 28, generator=g), y


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A trained ResNet-8 pruned to 50 % FLOPs, briefly fine-tuned; its train batches, a test set.

    Trained here with AdamW (~40 steps of 32 images: ~65 % on Fashion-MNIST) rather than by the
    task's own SGD recipe, which needs several epochs to beat that on 2,000 images.
    """
    torch.manual_seed(0)
    if Path(DEFAULT_DATA_DIR).is_dir():
        task = FashionMNISTTask(subset=2000, options=TaskOptions(
            epochs=1, batch_size=32, cache_dir=tmp_path_factory.mktemp("cache")))
        train = task.splits().train
        test = [torch.cat(parts) for parts in zip(*task.splits().test)]
    else:
        x, y = _synthetic(1280, seed=1)
        train = list(zip(x.split(32), y.split(32)))
        test = list(_synthetic(300, seed=2))
    recipe = FinetuneSettings(steps=40, lr=3e-3, optimizer="adamw", weight_decay=1e-4)
    dense = cifar_resnet(depth=8, in_channels=1)
    finetune_model(dense, train, recipe)
    example = test[0][:1]
    model = ap.apply_plan(dense, example, ap.fit_budget(dense, example, 1.0, flops=0.5))
    reestimate_bn(model, train, 10, "cpu")
    finetune_model(model, train, recipe, steps=20)
    return {"model": model.eval(), "train": train, "test": test, "example": example}


@pytest.fixture(scope="module")
def int8(pruned: dict) -> QuantizedModel:
    return quantize(pruned["model"], pruned["example"], "int8", calibration=pruned["train"])


@needs_torchao
def test_int8_of_a_pruned_resnet_agrees_with_float(pruned: dict, int8: QuantizedModel) -> None:
    x, y = pruned["test"]
    with torch.no_grad():
        accuracy = float((pruned["model"](x).argmax(1) == y).float().mean())
    assert accuracy > 0.3, f"the float model is barely trained ({accuracy:.2f}); agreement is moot"
    assert int8.mode == "int8"
    assert int8.module(x).shape == (len(x), 10)
    assert int8(x[:1]).shape == (1, 10)  # the batch dimension is dynamic
    int8.module.eval()  # evaluate() / measure() call it; a raw exported graph would raise
    assert compare(pruned["model"], int8, (x, y)) >= 0.95


@needs_torchao
def test_int8_file_is_less_than_half_the_float_file(
    pruned: dict, int8: QuantizedModel, tmp_path: Path
) -> None:
    int8_bytes = int8.size_bytes(tmp_path / "int8.pt2")
    torch.save(pruned["model"].state_dict(), tmp_path / "float.pt")
    plain = (tmp_path / "float.pt").stat().st_size
    program = save_program(pruned["model"], pruned["example"], tmp_path / "float.pt2")
    assert int8_bytes < 0.5 * plain
    assert int8_bytes < 0.5 * program.stat().st_size
    x = pruned["test"][0][:64]
    reloaded = load(tmp_path / "int8.pt2")
    torch.testing.assert_close(reloaded(x), int8.module(x))


@needs_torchao
def test_int8_weights_are_stored_as_int8(int8: QuantizedModel) -> None:
    graph = int8.module.graph
    read = {str(n.target): operator.attrgetter(str(n.target))(int8.module)
            for n in graph.nodes if n.op == "get_attr"}
    tensors = [t for t in read.values() if isinstance(t, torch.Tensor)]
    int8_bytes = sum(t.numel() for t in tensors if t.dtype == torch.int8)
    float_bytes = sum(t.numel() * t.element_size() for t in tensors if t.is_floating_point())
    assert int8_bytes > float_bytes > 0  # int8 weights; float only for biases and scales
    held = itertools.chain(int8.module.named_parameters(), int8.module.named_buffers())
    assert {name for name, _ in held} <= set(read)  # the replaced float weights are not kept


def test_bf16_runs_and_returns_float32(pruned: dict, tmp_path: Path) -> None:
    x = pruned["test"][0][:64]
    bf16 = quantize(pruned["model"], pruned["example"], "bf16")
    out = bf16(x)
    assert out.dtype == torch.float32 and out.shape == (64, 10)
    assert next(bf16.module.parameters()).dtype == torch.bfloat16
    assert next(pruned["model"].parameters()).dtype == torch.float32  # the input is untouched
    assert compare(pruned["model"], bf16, x) >= 0.9
    assert load(bf16.save(tmp_path / "bf16.pt2"))(x).shape == (64, 10)


def test_unsupported_mode_is_one_clear_line(pruned: dict) -> None:
    with pytest.raises(ConfigError) as info:
        quantize(pruned["model"], pruned["example"], "int4")
    assert str(info.value) == "--quantize 'int4' is not supported; use one of int8, fp16, bf16"
    assert MODES == ("int8", "fp16", "bf16")


@needs_torchao
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"calibration": None}, "calibration=None"), ({"calibration_batches": 0}, "calibration_b")],
)
def test_int8_argument_errors_name_the_argument(pruned: dict, kwargs: dict, needle: str) -> None:
    settings = {"calibration": pruned["train"], **kwargs}
    with pytest.raises(ConfigError, match=needle):
        quantize(pruned["model"], pruned["example"], "int8", **settings)


@needs_torchao
def test_empty_calibration_is_a_config_error(pruned: dict) -> None:
    with pytest.raises(ConfigError, match="no batch"):
        quantize(pruned["model"], pruned["example"], "int8", calibration=[])


class _NoHalfOnCpu(torch.nn.Module):
    """Fails in float16 the way some CPU kernels do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:
            raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'Half'")
        return x


def test_fp16_without_kernels_says_use_a_gpu_or_bf16() -> None:
    with pytest.raises(ConfigError, match=r"fp16 needs a GPU here \(use bf16 on CPU\)"):
        quantize(_NoHalfOnCpu(), torch.randn(1, 4), "fp16")


def test_missing_torchao_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e", None)
    with pytest.raises(BackendUnavailable, match=r'pip install "autoprune\[quant\]"'):
        quantize(torch.nn.Linear(4, 2), torch.randn(1, 4), "int8", calibration=[torch.randn(8, 4)])


def test_load_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "absent.pt2")

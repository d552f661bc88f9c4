"""The candidate pipeline: BN re-estimation, fine-tuning, and failure handling."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from autoprune.engine import analyze
from autoprune.errors import ConfigError
from autoprune.pipeline import (
    CandidateFailed,
    Pipeline,
    _guarded,
    finetune_model,
    reestimate_bn,
)
from autoprune.plan import PruningPlan
from autoprune.settings import FinetuneSettings

Batch = tuple[torch.Tensor, torch.Tensor]


pytestmark = pytest.mark.usefixtures("one_thread")

# -- BatchNorm re-estimation ---------------------------------------------------------------

MU = torch.tensor([1.0, -2.0, 0.5])
SIGMA = torch.tensor([0.5, 2.0, 1.0])


def gaussian_batches(n: int = 4, size: int = 32, seed: int = 0) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (MU.view(1, 3, 1, 1) + SIGMA.view(1, 3, 1, 1) * torch.randn(size, 3, 6, 6, generator=gen),
         torch.zeros(size, dtype=torch.long))
        for _ in range(n)
    ]


def bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    model[0].momentum = 0.3
    with torch.no_grad():  # stale statistics that re-estimation must replace
        for bn in (model[0], model[2]):
            bn.running_mean.fill_(7.0)
            bn.running_var.fill_(9.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model


def batch_stats(xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The cumulative average (momentum=None) of per-batch mean and unbiased variance."""
    means = torch.stack([x.mean((0, 2, 3)) for x in xs])
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(1, unbiased=True) for x in xs])
    return means.mean(0), variances.mean(0)


def test_reestimate_bn_matches_batch_statistics() -> None:
    model = bn_model().train()
    batches = gaussian_batches()
    assert reestimate_bn(model, batches, batches=len(batches), device="cpu") is True

    xs = [x for x, _ in batches]
    mean, var = batch_stats(xs)
    bn0, conv, bn1 = model[0], model[1], model[2]
    torch.testing.assert_close(bn0.running_mean, mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn0.running_var, var, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn0.running_mean, MU, atol=0.15, rtol=0)  # the data's law
    torch.testing.assert_close(bn0.running_var, SIGMA**2, atol=0, rtol=0.1)
    # the second BN saw the first one normalising with *batch* statistics (train mode)
    with torch.no_grad():
        hidden = [conv(F.batch_norm(x, None, None, bn0.weight, bn0.bias, training=True,
                                    eps=bn0.eps)) for x in xs]
    mean1, var1 = batch_stats(hidden)
    torch.testing.assert_close(bn1.running_mean, mean1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn1.running_var, var1, atol=1e-5, rtol=1e-4)
    assert int(bn0.num_batches_tracked) == len(batches)

    assert bn0.momentum == 0.3 and bn1.momentum == 0.1  # restored, each its own
    assert not any(m.training for m in model.modules())


def test_reestimate_bn_uses_only_the_first_batches() -> None:
    model = bn_model()
    batches = gaussian_batches(n=5)
    batches[2:] = [(x * 10 + 50, y) for x, y in batches[2:]]  # would wreck the statistics
    assert reestimate_bn(model, batches, batches=2, device="cpu")
    mean, var = batch_stats([x for x, _ in batches[:2]])
    torch.testing.assert_close(model[0].running_mean, mean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model[0].running_var, var, atol=1e-5, rtol=1e-4)
    assert int(model[0].num_batches_tracked) == 2


def test_reestimate_bn_without_bn_or_batches_is_a_no_op() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()).train()
    assert reestimate_bn(plain, gaussian_batches(), batches=4, device="cpu") is False
    model = bn_model()
    before = model[0].running_mean.clone()
    assert reestimate_bn(model, gaussian_batches(), batches=0, device="cpu") is False
    assert torch.equal(model[0].running_mean, before)


def test_reestimate_bn_rejects_bare_tensor_batches() -> None:
    with pytest.raises(ConfigError, match="pairs"):
        reestimate_bn(bn_model(), [torch.randn(4, 3, 6, 6)], batches=1, device="cpu")


# -- fine-tuning ---------------------------------------------------------------------------


def blobs(n: int = 256, seed: int = 0) -> Batch:
    """Two Gaussian blobs in 2-D, linearly separable up to a little overlap."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=gen) * 0.7 + (y.float() * 2 - 1).unsqueeze(1) * 1.5
    return x, y


def blob_batches(size: int = 32) -> list[Batch]:
    x, y = blobs()
    return list(zip(x.split(size), y.split(size)))


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))


def full_loss(model: nn.Module) -> float:
    x, y = blobs()
    with torch.no_grad():
        return float(F.cross_entropy(model.eval()(x), y))


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.05), ("adamw", 0.02)])
def test_finetune_decreases_training_loss(optimizer: str, lr: float) -> None:
    model = mlp()
    before = full_loss(model)
    settings = FinetuneSettings(steps=40, lr=lr, optimizer=optimizer)
    last = finetune_model(model, blob_batches(), settings)
    after = full_loss(model)
    assert math.isfinite(last)
    assert after < 0.5 * before
    assert not model.training


def test_finetune_with_teacher_decreases_loss() -> None:
    teacher = mlp(seed=1)
    finetune_model(teacher, blob_batches(), FinetuneSettings(steps=40, lr=0.05))
    student = mlp()
    before = full_loss(student)
    settings = FinetuneSettings(steps=40, lr=0.05, distill=True)
    finetune_model(student, blob_batches(), settings, teacher=teacher.train())
    assert full_loss(student) < 0.5 * before
    assert not teacher.training


def test_finetune_zero_steps_leaves_weights_unchanged() -> None:
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    assert math.isnan(finetune_model(model, blob_batches(), FinetuneSettings(steps=0)))
    assert math.isnan(finetune_model(model, blob_batches(), FinetuneSettings(), steps=0))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


class Counting:
    """A re-iterable loader that counts the batches it hands out."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches, self.served = batches, 0

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.batches:
            self.served += 1
            yield batch


def test_finetune_steps_override_and_cycle_the_loader() -> None:
    loader = Counting(blob_batches(size=64))  # 4 batches
    finetune_model(mlp(), loader, FinetuneSettings(steps=100), steps=6)
    assert loader.served == 6


@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
def test_finetune_non_finite_loss_raises_candidate_failed(fill: float) -> None:
    model = mlp()
    with torch.no_grad():
        model[0].weight.fill_(fill)
    with pytest.raises(CandidateFailed, match=r"loss is .* at fine-tune step 0"):
        finetune_model(model, blob_batches(), FinetuneSettings(steps=5))


class GoesNaN(nn.Module):
    """Finite until its ``bad``-th forward call, NaN from then on."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.net, self.calls, self.bad = mlp(), 0, bad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.calls += 1
        return out * float("nan") if self.calls > self.bad else out


def test_finetune_failure_names_the_step() -> None:
    with pytest.raises(CandidateFailed, match=r"loss is nan at fine-tune step 3\b"):
        finetune_model(GoesNaN(bad=3), blob_batches(), FinetuneSettings(steps=10))


class Spinning:
    """An empty loader that gives up after many passes instead of hanging the test."""

    def __init__(self) -> None:
        self.passes = 0

    def __iter__(self) -> Iterator[Batch]:
        self.passes += 1
        if self.passes > 100:
            raise RuntimeError(f"iterated an empty loader {self.passes} times")
        return iter(())


def test_finetune_empty_loader_is_an_error_not_a_hang() -> None:
    with pytest.raises((ConfigError, CandidateFailed)):
        finetune_model(mlp(), Spinning(), FinetuneSettings(steps=3))


@pytest.mark.parametrize("kwargs", [
    {"optimizer": "adam"},
    {"optimizer": "SGD"},
    {"steps": -1},
    {"bn_batches": -1},
    {"lr": 0},
    {"lr": -0.1},
    {"lr": float("nan")},
])
def test_finetune_settings_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        FinetuneSettings(**kwargs)


def test_finetune_settings_defaults_are_valid() -> None:
    settings = FinetuneSettings()
    assert settings.optimizer == "sgd" and settings.steps > 0 and settings.lr > 0
    FinetuneSettings(steps=0, bn_batches=0, optimizer="adamw")


# -- the pipeline --------------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


PLAN = PruningPlan({"conv1": 0.5, "conv2": 0.25})


@pytest.fixture(scope="module")
def analysis() -> Any:
    torch.manual_seed(0)
    return analyze(SmallNet().eval(), torch.randn(1, 3, 8, 8))


def image_batches(n: int = 3, size: int = 8) -> list[Batch]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=gen), torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n)]


class Evaluate:
    def __init__(self, result: float | None = None) -> None:
        self.calls: list[tuple[int, str, bool]] = []
        self.result = result
        self.x, self.y = image_batches(1, 16)[0]

    def __call__(self, model: nn.Module, split: str) -> float:
        self.calls.append((model.conv1.out_channels, split, model.training))
        if self.result is not None:
            return self.result
        with torch.no_grad():
            return float((model(self.x).argmax(1) == self.y).float().mean())


def test_pipeline_records_every_stage(analysis: Any) -> None:
    evaluate = Evaluate()
    dense = copy.deepcopy(analysis.model.state_dict())
    settings = FinetuneSettings(steps=3, bn_batches=2, lr=0.01)
    result = Pipeline(analysis, evaluate, image_batches(), settings).run(PLAN)
    assert set(result.stages) == {"prune_s", "proxy_s", "finetune_s", "evaluate_s"}
    assert all(v >= 0 for v in result.stages.values())
    assert result.proxy_acc is not None and 0.0 <= result.proxy_acc <= 1.0
    assert 0.0 <= result.val_acc <= 1.0
    assert evaluate.calls == [(4, "val", False), (4, "val", False)]  # proxy, then validation
    assert result.model.conv2.out_channels == 12 and not result.model.training
    for key, value in analysis.model.state_dict().items():  # the dense model is untouched
        assert torch.equal(value, dense[key])


def test_pipeline_without_loader_has_no_proxy(analysis: Any) -> None:
    seen: list[tuple[int, bool]] = []

    def finetune(model: nn.Module, steps: int) -> None:
        seen.append((steps, model.training))

    evaluate = Evaluate()
    pipeline = Pipeline(analysis, evaluate, None, FinetuneSettings(steps=5), finetune)
    result = pipeline.run(PLAN)
    assert result.proxy_acc is None
    assert set(result.stages) == {"prune_s", "finetune_s", "evaluate_s"}
    assert pipeline.run(PLAN, steps=2).proxy_acc is None
    assert seen == [(5, True), (2, True)]
    assert len(evaluate.calls) == 2 and not result.model.training


def test_pipeline_steps_zero_without_loader(analysis: Any) -> None:
    result = Pipeline(analysis, Evaluate(), None, FinetuneSettings(steps=0)).run(PLAN)
    assert result.proxy_acc is None and "finetune_s" in result.stages


def test_pipeline_without_loader_or_finetune_is_a_config_error(analysis: Any) -> None:
    with pytest.raises(ConfigError, match="finetune"):
        Pipeline(analysis, Evaluate(), None, FinetuneSettings(steps=5))


def test_pipeline_user_finetune_error_becomes_candidate_failed(analysis: Any) -> None:
    def finetune(model: nn.Module, steps: int) -> None:
        raise ValueError("boom\nsecond line")

    pipeline = Pipeline(analysis, Evaluate(), image_batches(), FinetuneSettings(), finetune)
    with pytest.raises(CandidateFailed) as info:
        pipeline.run(PLAN)
    assert "ValueError: boom" in str(info.value)
    assert "second line" not in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_pipeline_error_without_message_names_its_type(analysis: Any) -> None:
    def finetune(model: nn.Module, steps: int) -> None:
        raise KeyError

    pipeline = Pipeline(analysis, Evaluate(), None, FinetuneSettings(), finetune)
    with pytest.raises(CandidateFailed, match=r"^KeyError$"):
        pipeline.run(PLAN)


def test_pipeline_distill_with_user_finetune_is_a_config_error(analysis: Any) -> None:
    with pytest.raises(ConfigError, match="distil"):
        Pipeline(analysis, Evaluate(), image_batches(), FinetuneSettings(distill=True),
                 lambda model, steps: None)


def test_pipeline_distill_uses_a_copy_of_the_dense_model(analysis: Any) -> None:
    settings = FinetuneSettings(steps=2, bn_batches=1, distill=True)
    pipeline = Pipeline(analysis, Evaluate(), image_batches(), settings)
    result = pipeline.run(PLAN)
    assert math.isfinite(result.val_acc)
    teacher = pipeline.teacher()
    assert teacher is not analysis.model and teacher.conv1.out_channels == 8
    assert not teacher.training


@pytest.mark.parametrize("loader", [image_batches(), None])
def test_pipeline_nan_evaluate_is_candidate_failed(analysis: Any, loader: Any) -> None:
    pipeline = Pipeline(analysis, Evaluate(result=float("nan")), loader,
                        FinetuneSettings(steps=1), None if loader else lambda m, s: None)
    with pytest.raises(CandidateFailed, match="NaN"):
        pipeline.run(PLAN)


def test_pipeline_nan_finetune_loss_is_candidate_failed(analysis: Any) -> None:
    batches = [(x * float("nan"), y) for x, y in image_batches()]
    settings = FinetuneSettings(steps=2, bn_batches=0)
    with pytest.raises(CandidateFailed, match="step 0"):
        Pipeline(analysis, Evaluate(), batches, settings).run(PLAN)


def test_a_user_finetune_leaving_nan_weights_fails_the_candidate(analysis: Any) -> None:
    """argmax of NaN logits still 'scores' (class 0): such a candidate must fail, not complete."""

    def poison(model: nn.Module, steps: int) -> None:
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))

    pipeline = Pipeline(analysis, Evaluate(), None, FinetuneSettings(steps=1), poison)
    with pytest.raises(CandidateFailed, match=r"non-finite values in .* after fine-tuning"):
        pipeline.run(PLAN)


def test_a_stage_out_of_memory_is_a_failed_candidate_named_by_its_first_line():
    def oom() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    with pytest.raises(CandidateFailed, match=r"^out of memory: CUDA out of memory\. Tried to "
                                              r"allocate 2\.00 GiB$"):
        _guarded(oom)

"""Unstructured pruning: exact counts, masks through training, sparse storage, 2:4 masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from autoprune.deploy.weights import (
    WeightMask,
    load_sparse,
    mask_24,
    prune_weights,
    save_sparse,
    sparse_size,
    sparsity_schedule,
    to_semi_structured_24,
)
from autoprune.errors import ConfigError


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


LAYERS = ("conv1", "conv2", "fc")


def small() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet()


def zeros(model: nn.Module, names: tuple[str, ...] = LAYERS) -> int:
    return sum(int((model.get_submodule(n).weight == 0).sum()) for n in names)


def total(model: nn.Module, names: tuple[str, ...] = LAYERS) -> int:
    return sum(model.get_submodule(n).weight.numel() for n in names)


def resnet_convs(model: nn.Module) -> tuple[str, ...]:
    return tuple(n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.5, 0.9])
def test_global_exact_and_only_weights(sparsity: float) -> None:
    model = small()
    biases = {n: model.get_submodule(n).bias.clone() for n in LAYERS}
    bn = model.bn.weight.clone()
    mask = prune_weights(model, sparsity)
    assert zeros(model) == round(sparsity * total(model))
    assert mask.sparsity(model) == pytest.approx(round(sparsity * total(model)) / total(model))
    assert all(torch.equal(model.get_submodule(n).bias, b) for n, b in biases.items())
    assert torch.equal(model.bn.weight, bn)
    assert sorted(mask.masks) == sorted(LAYERS)


def test_layer_scope_exact_per_layer() -> None:
    model = small()
    prune_weights(model, 0.3, scope="layer")
    for name in LAYERS:
        weight = model.get_submodule(name).weight
        assert int((weight == 0).sum()) == round(0.3 * weight.numel())


@pytest.fixture(scope="module")
def pruned_resnet() -> nn.Module:
    """resnet18 pruned to 80 % globally; tests only read it."""
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    prune_weights(model, 0.8)
    return model


def test_resnet18_exact_global_and_layer(pruned_resnet: nn.Module) -> None:
    names = resnet_convs(pruned_resnet)
    assert zeros(pruned_resnet, names) == round(0.8 * total(pruned_resnet, names))
    model = resnet18(num_classes=10)
    names = resnet_convs(model)
    prune_weights(model, 0.55, scope="layer", ignore=("fc",))
    for name in names:
        weight = model.get_submodule(name).weight
        expected = 0 if name == "fc" else round(0.55 * weight.numel())
        assert int((weight == 0).sum()) == expected


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_ties_are_exact_and_deterministic(scope: str) -> None:
    model = small()
    with torch.no_grad():
        for name in LAYERS:
            model.get_submodule(name).weight.fill_(0.5)
        model.conv2.weight[:2] = 0.0  # some weights already zero, fewer than requested
    first = prune_weights(model, 0.45, scope=scope)
    if scope == "global":
        assert zeros(model) == round(0.45 * total(model))
    else:
        assert all(
            int((model.get_submodule(n).weight == 0).sum())
            == round(0.45 * model.get_submodule(n).weight.numel())
            for n in LAYERS
        )
    twin = small()
    with torch.no_grad():
        for name in LAYERS:
            twin.get_submodule(name).weight.fill_(0.5)
        twin.conv2.weight[:2] = 0.0
    second = prune_weights(twin, 0.45, scope=scope)
    assert all(torch.equal(first.masks[n], second.masks[n]) for n in LAYERS)
    assert not bool(first.masks["conv2"][:2].any())  # existing zeros are pruned first


def test_monotone_and_idempotent() -> None:
    model = small()
    half = prune_weights(model, 0.5)
    again = prune_weights(model, 0.5)
    assert all(torch.equal(half.masks[n], again.masks[n]) for n in LAYERS)
    more = prune_weights(model, 0.8)
    for name in LAYERS:
        assert not bool((more.masks[name] & ~half.masks[name]).any())  # old zeros stay zero
    assert zeros(model) == round(0.8 * total(model))


def test_taylor_needs_grads_and_ranks_by_w_times_grad() -> None:
    model = small()
    with pytest.raises(ConfigError, match="backward"):
        prune_weights(model, 0.5, criterion="taylor")
    model(torch.randn(4, 3, 8, 8)).square().mean().backward()
    score = (model.fc.weight * model.fc.weight.grad).abs().detach().flatten()
    mask = prune_weights(model, 0.5, criterion="taylor", layers=(nn.Linear,))
    assert list(mask.masks) == ["fc"]
    pruned = ~mask.masks["fc"].flatten()
    assert int(pruned.sum()) == 80
    assert score[pruned].max() <= score[~pruned].min()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.5"])
def test_bad_sparsity(bad: object) -> None:
    with pytest.raises(ConfigError, match="sparsity="):
        prune_weights(small(), bad)  # type: ignore[arg-type]


def test_bad_scope_criterion_layers_ignore() -> None:
    with pytest.raises(ConfigError, match="scope='local'"):
        prune_weights(small(), 0.5, scope="local")
    with pytest.raises(ConfigError, match="criterion='l2'"):
        prune_weights(small(), 0.5, criterion="l2")
    for layers in ((), nn.Linear, (nn.Linear, int)):
        with pytest.raises(ConfigError, match="layers="):
            prune_weights(small(), 0.5, layers=layers)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ignore='fc'"):
        prune_weights(small(), 0.5, ignore="fc")
    with pytest.raises(ConfigError, match="'head'"):
        prune_weights(small(), 0.5, ignore=("head",))
    with pytest.raises(ConfigError, match="no layer"):
        prune_weights(small(), 0.5, ignore=("*",))
    model = small()
    fc = model.fc.weight.clone()
    prune_weights(model, 0.5, ignore=("f*",))
    assert torch.equal(model.fc.weight, fc)


def train(model: nn.Module, steps: int, mask: WeightMask | None = None) -> None:
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 3, 8, 8)).square().mean().backward()
        opt.step()
        if mask is not None:
            mask.apply(model)


def dropped_are_zero(model: nn.Module, mask: WeightMask) -> bool:
    return all(
        bool((model.get_submodule(n).weight[~m] == 0).all()) for n, m in mask.masks.items()
    )


def test_mask_apply_keeps_zeros_through_sgd() -> None:
    model = small()
    mask = prune_weights(model, 0.6)
    train(model, 3)
    assert not dropped_are_zero(model, mask)  # without the mask, SGD revives weights
    mask.apply(model)
    train(model, 3, mask)
    assert dropped_are_zero(model, mask)
    assert mask.sparsity(model) == pytest.approx(round(0.6 * total(model)) / total(model))


def test_mask_attach_and_detach() -> None:
    model = small()
    mask = prune_weights(model, 0.6)
    mask.attach(model)
    train(model, 3)
    assert dropped_are_zero(model, mask)
    mask.detach()
    train(model, 1)
    assert not dropped_are_zero(model, mask)


def test_grads_true_attaches_and_clears_existing_grads() -> None:
    model = small()
    model(torch.randn(4, 3, 8, 8)).square().mean().backward()
    mask = prune_weights(model, 0.6, criterion="taylor", grads=True)
    assert all(bool((model.get_submodule(n).weight.grad[~m] == 0).all())
               for n, m in mask.masks.items())
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    train(model, 2)
    assert dropped_are_zero(model, mask)
    mask.detach()


def test_mask_state_round_trip(tmp_path) -> None:
    model = small()
    mask = prune_weights(model, 0.7)
    torch.save(mask.state(), tmp_path / "mask.pt")
    back = WeightMask.from_state(torch.load(tmp_path / "mask.pt", weights_only=True))
    assert all(torch.equal(back.masks[n], mask.masks[n]) for n in LAYERS)
    fresh = small()
    back.apply(fresh)
    assert dropped_are_zero(fresh, mask)
    with pytest.raises(ConfigError, match="WeightMask"):
        WeightMask.from_state({"masks": {}})
    with pytest.raises(ConfigError, match="'nope'"):
        WeightMask({"nope": torch.ones(3, dtype=torch.bool)}).apply(fresh)


def test_sparse_size_resnet18(pruned_resnet: nn.Module) -> None:
    dense = sparse_size(resnet18(num_classes=10))
    assert dense.compressed_bytes <= 1.03 * dense.dense_bytes
    assert dense.sparsity < 0.001  # only the zero-initialised BatchNorm biases
    report = sparse_size(pruned_resnet)
    assert (report.params, report.dense_bytes) == (dense.params, dense.dense_bytes)
    assert report.sparsity == pytest.approx(0.8, abs=0.01)
    assert report.ratio < 0.6


def test_save_load_sparse_round_trip(tmp_path, pruned_resnet: nn.Module) -> None:
    path = tmp_path / "sub" / "sparse.pt"
    save_sparse(pruned_resnet, path)
    dense_bytes = 4 * sum(p.numel() for p in pruned_resnet.parameters())
    assert path.stat().st_size < 0.6 * dense_bytes
    torch.manual_seed(1)
    fresh = load_sparse(path, resnet18(num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pruned_resnet(x), fresh(x))
    assert [p.name for p in path.parent.iterdir()] == ["sparse.pt"]  # no temp file left


def test_load_sparse_rejects_foreign_files(tmp_path) -> None:
    torch.save(small().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match="save_sparse"):
        load_sparse(tmp_path / "plain.pt", small())
    save_sparse(small(), tmp_path / "s.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        load_sparse(tmp_path / "s.pt", nn.Linear(3, 3))


def test_sparsity_schedule() -> None:
    values = sparsity_schedule(0.8, 4)
    expected = [0.8 * (1 - (1 - t / 4) ** 3) for t in range(1, 5)]
    assert values == pytest.approx(expected)
    assert values[-1] == 0.8
    assert values == sorted(values)
    assert sparsity_schedule(0.9, 3, kind="linear") == pytest.approx([0.3, 0.6, 0.9])
    assert sparsity_schedule(0.5, 1) == [0.5]
    for kwargs in ({"steps": 0}, {"steps": 2.5}, {"final": 1.0}, {"kind": "exp"}):
        with pytest.raises(ConfigError):
            sparsity_schedule(**{"final": 0.8, "steps": 4, **kwargs})  # type: ignore[arg-type]


def test_mask_24_keeps_two_largest_of_four() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 16)
    keep = mask_24(weight)
    groups = keep.reshape(6, 4, 4)
    assert bool((groups.sum(-1) == 2).all())
    mags = weight.abs().reshape(6, 4, 4)
    assert bool((mags[groups].reshape(6, 4, 2).min(-1).values
                 >= mags[~groups].reshape(6, 4, 2).max(-1).values).all())
    ties = mask_24(torch.ones(2, 8))
    assert ties.tolist() == [[True, True, False, False] * 2] * 2
    with pytest.raises(ConfigError, match="multiple of 4"):
        mask_24(torch.ones(3, 6))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_semi_structured_refuses_on_cpu() -> None:
    model = small()
    before = model.fc.weight.clone()
    with pytest.raises(ConfigError, match="sm80"):
        to_semi_structured_24(model)
    assert torch.equal(model.fc.weight, before)

"""Data, models, dense training, the proxy-ranking study and table helpers for
``search_quality.py``.

Everything lives in memory as float32 tensors: a seeded stratified train subset, a validation
split carved from the *training* images (disjoint from the subset) and the test set. The
:class:`TensorLoader` reshuffles with its own seeded generator on every pass; it is much faster
than a ``DataLoader`` for 28x28 images on one thread.
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.tasks._data import stratified_split
from autoprune.tasks.fashion_mnist import find_files, read_idx
from autoprune.tasks.models import cifar_resnet, vgg_small, vit_small

# MobileNetV2's inverted residuals for 28x28 inputs: (expansion, channels, blocks, stride)
MBV2_SETTING = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 2, 1), (4, 96, 1, 1))


def mobilenet_v2_small(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNetV2 (width 1.0, last conv 1280) with a stride-1 stem for 1-channel
    28x28 images and four inverted-residual stages (28 -> 14 -> 7): 15 MMACs, 0.27 M params."""
    from torchvision.models import MobileNetV2

    model = MobileNetV2(num_classes=num_classes,
                        inverted_residual_setting=[list(row) for row in MBV2_SETTING])
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    return model

MEAN, STD = 0.2860, 0.3530
BATCH = 64
CACHE_VERSION = 1  # bump when the data split or the dense recipe changes
CACHE_DIR = Path(__file__).parent / ".cache"
#: Dense weights this script trained, committed so a fresh checkout need not train them again
#: (MobileNetV2: 98 min on one core of a slow machine); looked up by the cache's file name and
#: scored again on load, so ``search_regime.py``'s dense check still compares what they score.
KEPT_DIR = Path(__file__).parent / "dense"


@dataclass(frozen=True)
class Arch:
    build: Callable[[], nn.Module]
    lr: float  # dense training learning rate
    widths: tuple[int, ...]
    relative_cost: float  # wall time of one seed, relative (schedules the longest units first)
    optimizer: str = "sgd"  # dense and fine-tune optimizer: sgd (Nesterov) | adamw
    weight_decay: float = 5e-4  # dense and fine-tune weight decay
    ft_lr: float = 0.01  # fine-tune learning rate (searches and the final fine-tune)
    shape: str = ""  # a one-line description for the report (default: the widths)
    batch: int = BATCH  # dense-training batch size


    def recipe(self) -> str:
        """The dense-training recipe in words."""
        if self.optimizer == "adamw":
            return (f"AdamW lr {self.lr:g}, wd {self.weight_decay:g} (not on biases/norms), "
                    "one-cycle (15 % warm-up, cosine)")
        return f"SGD lr {self.lr:g} (Nesterov, wd {self.weight_decay:g}, cosine)"


ARCHS: dict[str, Arch] = {
    "resnet": Arch(functools.partial(cifar_resnet, depth=8, widths=(16, 32, 64), in_channels=1),
                   0.1, (16, 32, 64), 1.0),
    "vgg": Arch(functools.partial(vgg_small, widths=(16, 32, 64, 64, 128, 128), in_channels=1),
                0.05, (16, 32, 64, 64, 128, 128), 1.6),
    # the deployment regime (search_regime.py): trained to convergence on the full training set
    "resnet20": Arch(functools.partial(cifar_resnet, depth=20, widths=(16, 32, 64),
                                       in_channels=1), 0.1, (16, 32, 64), 2.0, batch=128,
                     shape="CIFAR ResNet-20, widths 16/32/64"),
    "mbv2": Arch(mobilenet_v2_small, 0.1, (16, 24, 32, 64, 96, 1280), 2.0, weight_decay=1e-4,
                 batch=128, shape="MobileNetV2 inverted residuals (expansion 4), 16..96, "
                 "last conv 1280"),
    "vgg8": Arch(functools.partial(vgg_small, widths=(32, 32, 64, 64, 128, 128, 256, 256),
                                   in_channels=1), 0.05, (32, 32, 64, 64, 128, 128, 256, 256),
                 2.0, batch=128, shape="VGG, 8 convs 32..256 (over-parameterised)"),
    # autoprune's own Fashion-MNIST recipe for the ViT (tasks/fashion_mnist.py RECIPES)
    "vit": Arch(functools.partial(vit_small, img_size=28, in_channels=1), 2e-3, (128,), 3.0,
                optimizer="adamw", weight_decay=0.05, ft_lr=5e-4,
                shape="patch 4, embedding 128 (frozen), 5 blocks x 4 heads (dim 32), MLP 256"),
}


SIDE = {"fashion-mnist": 28, "digits": 8}  # image side per task


def example_input(task: str = "fashion-mnist") -> torch.Tensor:
    side = SIDE[task]
    return torch.randn(1, 1, side, side, generator=torch.Generator().manual_seed(0))


class TensorLoader:
    """Re-iterable ``(x, y)`` batches over in-memory tensors, reshuffled on every pass."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = BATCH,
                 seed: int = 0) -> None:
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.x[idx], self.y[idx]

    def fresh(self, seed: int | None = None) -> TensorLoader:
        """The same data with a newly seeded order: every user of ``fresh(s)`` sees the same
        batches."""
        return TensorLoader(self.x, self.y, self.batch_size, self.seed if seed is None else seed)


@dataclass
class Data:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}

    def loader(self, seed: int, batch: int = BATCH) -> TensorLoader:
        return TensorLoader(self.train_x, self.train_y, batch, seed)


@functools.lru_cache(maxsize=2)
def _arrays(data_dir: str) -> dict[str, np.ndarray]:
    return {key: read_idx(path) for key, path in find_files(data_dir).items()}


def _tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32)[:, None, :, :])
    return ((x / 255.0 - MEAN) / STD).contiguous()


def load_digits_data(seed: int) -> Data:
    """scikit-learn's 1,797 bundled 8x8 digits: 20 % test, 20 % validation, the rest train
    (stratified, seeded) -- for the CI run of the whole pipeline."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images, labels = raw.images.astype(np.float32), raw.target.astype(np.int64)
    rest, test = stratified_split(labels, 0.2, seed)
    fit, val = stratified_split(labels[rest], 0.25, seed)
    train, val = rest[fit], rest[val]
    mean, std = float(images[train].mean()), float(images[train].std())

    def x(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((images[idx][:, None] - mean) / std).contiguous()

    def y(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels[idx])

    return Data(x(train), y(train), x(val), y(val), x(test), y(test))


def load_data(data_dir: str, seed: int, n_train: int, n_val: int, n_test: int | None,
              task: str = "fashion-mnist") -> Data:
    """Validation (``n_val``) first, then a train subset (``n_train``) of the rest, both
    stratified and seeded; the test set whole unless ``n_test`` is smaller. (``digits``: its
    own fixed split, the sizes are ignored.)"""
    if task == "digits":
        return load_digits_data(seed)
    arrays = _arrays(data_dir)
    images, labels = arrays["train_images"], arrays["train_labels"]
    rest, val = stratified_split(labels, n_val, seed)
    if n_train < len(rest):
        _, pick = stratified_split(labels[rest], n_train, seed)
        train = rest[pick]
    else:
        train = rest
    test_x, test_y = arrays["test_images"], arrays["test_labels"]
    if n_test is not None and n_test < len(test_y):
        _, pick = stratified_split(test_y, n_test, seed)
        test_x, test_y = test_x[pick], test_y[pick]

    def lab(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    return Data(_tensor(images[train]), lab(labels[train]), _tensor(images[val]), lab(labels[val]),
                _tensor(test_x), lab(test_y))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    was = model.training
    model.eval()
    correct = 0
    device = next(model.parameters()).device  # data stays on the CPU; batches move
    for start in range(0, len(y), batch):
        logits = model(x[start:start + batch].to(device))
        correct += int((logits.argmax(1).cpu() == y[start:start + batch]).sum())
    model.train(was)
    return correct / len(y)


def make_evaluate(data: Data, dense: nn.Module | None = None) -> Callable[[nn.Module, str], float]:
    """``evaluate(model, split)`` on "val" or "test"; the dense model's scores are memoised
    (every search evaluates it again)."""
    memo: dict[str, float] = {}

    def evaluate(model: nn.Module, split: str) -> float:
        if split not in ("val", "test"):
            raise ValueError(f"split {split!r}: use val or test")
        if dense is not None and model is dense and split in memo:
            return memo[split]
        x, y = (data.val_x, data.val_y) if split == "val" else (data.test_x, data.test_y)
        value = accuracy(model, x, y)
        if dense is not None and model is dense:
            memo[split] = value
        return value

    return evaluate


def train_dense(arch: str, data: Data, seed: int, epochs: int,
                log: Callable[[str], None] = print, device: str = "cpu") -> nn.Module:
    """The dense model of ``arch`` trained on ``data`` (cached under ``benchmarks/.cache``)."""
    spec = ARCHS[arch]
    sizes = data.sizes()
    side = int(data.train_x.shape[-1])
    key = (f"v{CACHE_VERSION}-{arch}{'' if side == 28 else f'-x{side}'}-s{seed}-e{epochs}"
           f"-n{sizes['train']}-v{sizes['val']}-lr{spec.lr:g}")
    if spec.optimizer != "sgd":  # the SGD keys (resnet, vgg) stay as they were
        key += f"-{spec.optimizer}-wd{spec.weight_decay:g}"
    if spec.batch != BATCH:
        key += f"-b{spec.batch}-wd{spec.weight_decay:g}"
    path = CACHE_DIR / f"dense-{key}.pt"
    CACHE_DIR.mkdir(exist_ok=True)
    ignore = CACHE_DIR / ".gitignore"
    if not ignore.is_file():
        ignore.write_text("*\n")
    # two units of one arch that start together (one unit per cell) train it once: the second
    # waits for the first's file instead of training the same weights again
    with open(CACHE_DIR / f"dense-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _load_or_train(arch, data, seed, epochs, path, log, device)


def _load_or_train(arch: str, data: Data, seed: int, epochs: int, path: Path,
                   log: Callable[[str], None], device: str) -> nn.Module:
    spec = ARCHS[arch]
    torch.manual_seed(seed)
    model = spec.build()
    for found in (path, KEPT_DIR / path.name):
        if found.is_file():
            model.load_state_dict(torch.load(found, weights_only=True))
            log(f"dense {arch} seed {seed}: {'cached' if found == path else 'committed'} "
                f"{found.name}")
            return model.eval()
    loader = data.loader(seed, spec.batch)
    steps = epochs * len(loader)
    model.to(device)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    if spec.optimizer == "adamw":  # as autoprune's own trainer (tasks/_train.py)
        params = list(model.parameters())
        opt = torch.optim.AdamW([
            {"params": [p for p in params if p.ndim > 1], "weight_decay": spec.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}], lr=spec.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps,
                                                    pct_start=0.15, anneal_strategy="cos")
    else:
        opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9, nesterov=True,
                              weight_decay=spec.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if epochs >= 5:  # long trainings say how they go
            log(f"dense {arch} seed {seed}: epoch {epoch + 1}/{epochs} val "
                f"{accuracy(model, data.val_x, data.val_y):.4f} "
                f"({time.perf_counter() - start:.0f} s)")
    model.cpu().eval()  # analysed and pruned on the CPU; candidates move to the device
    fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    log(f"dense {arch} seed {seed}: trained {steps} steps in {time.perf_counter() - start:.0f} s")
    return model


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho, NaN with fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def random_plans(analysis: Any, space_name: str, budget: float, count: int,
                 seed: int) -> list[Any]:
    """``count`` random allocations from the space, each fitted onto ``budget`` of the dense
    MACs (within 1 %), as plans; the space's caps are lifted toward 0.95 (as the searcher
    does) only when the budget is out of their reach."""
    from autoprune.errors import BudgetError
    from autoprune.plan import FitOptions, PruningPlan, Widths, fit_allocation_lifting_caps
    from autoprune.space import load_space

    groups = analysis.groups
    cm = analysis.cost_model
    resolved = load_space(space_name).resolve([g.name for g in groups])
    widths = Widths.of(cm, groups)
    rng = np.random.default_rng(seed)
    caps = resolved.caps()
    plans: list[Any] = []
    for _ in range(count * 20):
        if len(plans) == count:
            break
        values = {p.name: float(rng.uniform(p.low, p.high)) for p in resolved.params}
        try:  # caps rise toward 0.95 only if the budget needs it, as in the searcher
            kept = fit_allocation_lifting_caps(widths, resolved.allocation(values),
                                               budget * cm.dense_macs(), FitOptions("macs", caps))
        except BudgetError:
            continue
        plans.append(PruningPlan({g.name: 1.0 - k / g.channels for g, k in zip(groups, kept)
                                  if k < g.channels}, "l2"))
    return plans


def proxy_study(analysis: Any, data: Data, space_name: str, budget: float, count: int,
                seed: int, search_steps: int, short_fidelities: list[float], lr: float,
                log: Callable[[str], None] = print, device: str = "cpu", optimizer: str = "sgd",
                weight_decay: float = 5e-4, ceiling: bool = False, distill: bool = False,
                batch: int = BATCH, bn_batches: int = 20) -> dict[str, Any]:
    """How well the cheap scores rank candidates at one budget: for ``count`` random plans, the
    adaptive-BN proxy, short fine-tunes (one per fidelity) and the search's full fine-tune (each
    from a fresh prune, each candidate on the same batches) on the validation split; Spearman
    rho of each cheap score against the full one.

    ``ceiling``: also the full fine-tune again under another seed (other batches, other torch
    seed): its rho against the first is the noise ceiling no cheap score can beat.
    ``distill``: each short fine-tune also with distillation from the dense model.
    ``bn_batches``: BatchNorm is re-estimated on that many batches before every score.
    """
    from autoprune.pipeline import finetune_model, reestimate_bn
    from autoprune.settings import FinetuneSettings

    evaluate = make_evaluate(data)
    shorts = {f"short@{f:g}": max(1, round(f * search_steps)) for f in short_fidelities}
    settings = FinetuneSettings(steps=search_steps, lr=lr, optimizer=optimizer,  # type: ignore[arg-type]
                                weight_decay=weight_decay, bn_batches=bn_batches, device=device)
    teacher = analysis.model.to(device).eval() if distill else None
    # (score, steps, batch seed, distil): the full fine-tune last, its repeat after it
    plan_of: list[tuple[str, int, int, bool]] = [("proxy", 0, 1, False)]
    plan_of += [(k, n, 1, False) for k, n in shorts.items()]
    plan_of += [(f"{k}+kd", n, 1, True) for k, n in shorts.items() if distill]
    plan_of.append(("full", search_steps, 1, False))
    if ceiling:
        plan_of.append(("full (other seed)", search_steps, 2, False))
    rows: list[dict[str, Any]] = []
    dense_macs = analysis.cost_model.dense_macs()
    start = time.perf_counter()
    for i, plan in enumerate(random_plans(analysis, space_name, budget, count, seed)):
        row: dict[str, Any] = {"flops_ratio": analysis.macs(plan) / dense_macs,
                               "plan": plan.to_dict()}
        for key, steps, batch_seed, kd in plan_of:
            model = analysis.apply(plan).to(device)
            loader = TensorLoader(data.train_x, data.train_y, batch,  # same batches for all
                                  seed * 7919 + batch_seed)
            torch.manual_seed(seed * 1000 + i + 100_000 * (batch_seed - 1))
            reestimate_bn(model, loader, settings.bn_batches, device)
            if steps:
                finetune_model(model, loader, settings, teacher if kd else None, steps=steps)
            row[key] = evaluate(model, "val")
        rows.append(row)
        log(f"  spearman candidate {i + 1}: flops {row['flops_ratio']:.3f} "
            + " ".join(f"{k} {row[k]:.4f}" for k, *_ in plan_of)
            + f" ({time.perf_counter() - start:.0f} s)")
    full = [r["full"] for r in rows]
    flops = [r["flops_ratio"] for r in rows]
    return {"n": len(rows), "budget": budget, "space": space_name,
            "full_steps": search_steps, "bn_batches": bn_batches,
            "rho_proxy": spearman([r["proxy"] for r in rows], full),
            "rho_short": {f"{k} ({n} steps)": spearman([r[k] for r in rows], full)
                          for k, n, _, _ in plan_of[1:-1 - int(ceiling)]},
            "rho_ceiling": spearman([r["full (other seed)"] for r in rows], full)
            if ceiling else None,
            "flops_min": min(flops, default=float("nan")),
            "flops_max": max(flops, default=float("nan")),
            "seconds": time.perf_counter() - start, "rows": rows}


# -- table helpers ------------------------------------------------------------------------------
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def mean_std(raw: list[Any], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` of the finite values, scaled (just the mean for one value)."""
    values = [float(v) for v in raw if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def curve(run: dict[str, Any]) -> list[float | None]:
    """Best full-fidelity val acc after 25/50/75/100 % of the full-fidelity trials (by number)."""
    full = sorted((t for t in run.get("trials", []) if t["state"] == "COMPLETE"
                   and (t["fidelity"] or 0) >= 1 and t["val_acc"] is not None),
                  key=lambda t: t["trial"])
    if not full:
        return [None] * len(FRACTIONS)
    return [max(t["val_acc"] for t in full[:max(1, math.ceil(f * len(full)))]) for f in FRACTIONS]


def within_rho(run: dict[str, Any], key: str) -> float:
    full = [t for t in run.get("trials", []) if t["state"] == "COMPLETE"
            and (t["fidelity"] or 0) >= 1 and t["val_acc"] is not None and t[key] is not None]
    return spearman([t[key] for t in full], [t["val_acc"] for t in full])


def picked(runs: list[dict[str, Any]]) -> str:
    """How many seeds' choices were a baseline the search enqueued itself, by label."""
    labels = Counter(r["chosen_baseline"] for r in runs if r.get("chosen_baseline"))
    if not labels:
        return f"0/{len(runs)}"
    return f"{sum(labels.values())}/{len(runs)} (" + ", ".join(
        f"{k} {v}" for k, v in sorted(labels.items())) + ")"

"""The candidate pipeline: plan -> prune -> BN re-estimation -> proxy -> fine-tune -> validation.

Every stage's result and wall time is recorded, so a trial row says where its time went. The
proxy (accuracy right after pruning + BatchNorm re-estimation on a few training batches,
EagleEye's adaptive-BN evaluation) costs seconds; without the re-estimation accuracy right after
pruning collapses to ~10 % and ranks candidates poorly.

Anything a candidate does wrong — raises, NaN loss, out of memory — becomes
:class:`CandidateFailed` with a one-line reason; the search records it and goes on.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autoprune.engine.inputs import call_model
from autoprune.engine.inputs import to_device as _to
from autoprune.errors import ConfigError
from autoprune.interrupts import raise_if_pressed
from autoprune.plan import PruningPlan
from autoprune.settings import FinetuneSettings

__all__ = ["CandidateFailed", "CandidateResult", "Pipeline",
           "finetune_model", "make_optimizer", "reestimate_bn", "training_pairs"]

log = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module, str], float]
UserFinetune = Callable[[nn.Module, int], Any]


class CandidateFailed(Exception):
    """A candidate could not be evaluated; ``str(exc)`` is the reason recorded on the trial."""


@dataclass
class CandidateResult:
    model: nn.Module
    proxy_acc: float | None
    val_acc: float
    stages: dict[str, float] = field(default_factory=dict)


def _batches(loader: Iterable[Any]) -> Iterable[tuple[Any, Any]]:
    for batch in loader:
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            yield batch[0], batch[1]
        else:
            raise ConfigError("training batches must be (inputs, targets) pairs; give the task "
                              "its own finetune() for other batch formats")


def _cycle(loader: Iterable[Any]) -> Iterable[Any]:
    """Loop over ``loader`` forever; an empty pass (empty or one-shot loader) is an error."""
    while True:
        seen = False
        for batch in loader:
            seen = True
            yield batch
        if not seen:
            raise CandidateFailed("the training loader yielded no batch; give a non-empty, "
                                  "re-iterable loader (e.g. a DataLoader)")


def training_pairs(loader: Iterable[Any]) -> Iterable[tuple[Any, Any]]:
    """``(inputs, targets)`` from ``loader``, passing over it again and again: the batches a
    fine-tune of ``steps`` steps trains on, in order."""
    return _batches(_cycle(loader))


@torch.no_grad()
def reestimate_bn(model: nn.Module, loader: Iterable[Any], batches: int, device: str) -> bool:
    """Recompute BatchNorm running statistics from ``batches`` training batches (in place)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return False
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in norms]
    seen = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches seen
        model.train()
        for x, _ in itertools.islice(_batches(loader), batches):
            model(_to(x, device))
            seen += 1
    finally:
        for m, (momentum, state) in zip(norms, saved):
            m.momentum = momentum
            if not seen:  # nothing seen (or it failed first): keep the old statistics
                m.load_state_dict(state)
        model.eval()
    return seen > 0


def make_optimizer(model: nn.Module, settings: FinetuneSettings) -> torch.optim.Optimizer:
    """The fine-tune's optimizer over ``model``'s trainable parameters (SGD: Nesterov, momentum
    0.9; else AdamW), at ``settings.lr`` and ``settings.weight_decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True,
                               weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def finetune_model(model: nn.Module, loader: Iterable[Any], settings: FinetuneSettings,
                   teacher: nn.Module | None = None, steps: int | None = None) -> float:
    """Fine-tune ``model`` in place for ``steps`` steps (cosine LR); returns the last loss."""
    steps = settings.steps if steps is None else steps
    if steps <= 0:
        return float("nan")
    opt = make_optimizer(model, settings)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    if teacher is not None:
        teacher.eval()
    loss_value = float("nan")
    for step, (x, y) in zip(range(steps), training_pairs(loader)):
        x, y = _to(x, settings.device), _to(y, settings.device)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():
                target = teacher(x)
            t = settings.temperature
            kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=1),
                                      nn.functional.softmax(target / t, dim=1),
                                      reduction="batchmean") * t * t
            loss = (1 - settings.distill_alpha) * loss + settings.distill_alpha * kd
        if not torch.isfinite(loss):
            raise CandidateFailed(f"loss is {loss.item()} at fine-tune step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.item())
    model.eval()
    return loss_value


class Pipeline:
    """Runs one plan through every stage; the same object serves a whole search."""

    def __init__(self, analysis: Any, evaluate: Evaluate, train_loader: Iterable[Any] | None,
                 settings: FinetuneSettings, user_finetune: UserFinetune | None = None) -> None:
        self.analysis = analysis
        self.evaluate = evaluate
        self.train_loader = train_loader
        self.settings = settings
        self.user_finetune = user_finetune
        self._teacher: nn.Module | None = None
        if settings.distill and user_finetune is not None:
            raise ConfigError("distill=True uses autoprune's fine-tune; drop the task's own "
                              "finetune() or distil inside it")
        if train_loader is None and user_finetune is None and settings.steps > 0:
            raise ConfigError("no training data and no finetune(): give the task a train split "
                              "or its own finetune(model, steps), or set steps=0")

    def steps(self) -> int:
        """Fine-tune steps per candidate: ``epochs`` passes over the loader, else ``steps``."""
        s = self.settings
        if s.epochs is None:
            return s.steps
        try:
            per_epoch = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError("epochs= needs a train loader with len(); use steps=") from exc
        return max(1, round(s.epochs * per_epoch))

    def teacher(self) -> nn.Module:
        if self._teacher is None:
            import copy

            self._teacher = copy.deepcopy(self.analysis.model).to(self.settings.device).eval()
        return self._teacher

    def run(self, plan: PruningPlan, steps: int | None = None,
            model: nn.Module | None = None, proxy: bool = True) -> CandidateResult:
        """Every stage for ``plan``; ``model`` is the already pruned copy, if the caller has it.
        ``proxy=False`` skips the adaptive-BN score (a screened candidate already has it)."""
        return _guarded(lambda: self._run(plan, steps, model, proxy))

    def proxy(self, plan: PruningPlan, model: nn.Module | None = None) -> CandidateResult:
        """Only the cheap stages: prune, re-estimate BatchNorm, score on validation (seconds).
        ``val_acc`` of the result is the proxy score (NaN when there is nothing to re-estimate)."""
        def score() -> CandidateResult:
            stages: dict[str, float] = {}
            pruned = self._prune(plan, model, stages)
            value = self._proxy(pruned, stages)
            return CandidateResult(pruned, value, float("nan") if value is None else value,
                                   stages)

        return _guarded(score)

    def score(self, plan: PruningPlan) -> float:
        """Prune by ``plan``, re-estimate BatchNorm (where there is any, on training batches)
        and score on validation: the sensitivity analysis' score (NaN with no evaluate())."""
        def run() -> CandidateResult:
            pruned = self._prune(plan, None, {})
            self._proxy(pruned, {}, score=False)
            value = self.evaluate(pruned, "val")
            return CandidateResult(pruned, None, float("nan") if value is None else value, {})

        return _guarded(run).val_acc

    def _prune(self, plan: PruningPlan, model: nn.Module | None,
               stages: dict[str, float]) -> nn.Module:
        t0 = time.perf_counter()
        model = (model if model is not None else self.analysis.apply(plan)).to(self.settings.device)
        stages["prune_s"] = time.perf_counter() - t0
        return model

    def _proxy(self, model: nn.Module, stages: dict[str, float],
               score: bool = True) -> float | None:
        """Re-estimate BatchNorm (always: a short fine-tune from the dense statistics scores
        near chance) and, with ``score``, return the validation accuracy: the proxy."""
        s = self.settings
        if self.train_loader is None or s.bn_batches <= 0:
            return None
        t0 = time.perf_counter()
        value = None
        if reestimate_bn(model, self.train_loader, s.bn_batches, s.device) and score:
            value = float(self.evaluate(model, "val"))
        stages["proxy_s" if score else "bn_s"] = time.perf_counter() - t0
        return value

    def _run(self, plan: PruningPlan, steps: int | None,
             model: nn.Module | None, with_proxy: bool) -> CandidateResult:
        s = self.settings
        stages: dict[str, float] = {}
        model = self._prune(plan, model, stages)
        proxy = self._proxy(model, stages, score=with_proxy)
        t0 = time.perf_counter()
        n = self.steps() if steps is None else steps
        if self.user_finetune is not None:
            model.train()
            self.user_finetune(model, n)
            model.eval()
        elif n > 0:
            finetune_model(model, self.train_loader, s,  # type: ignore[arg-type]
                           self.teacher() if s.distill else None, steps=n)
        stages["finetune_s"] = time.perf_counter() - t0
        check_finite(model, self.analysis.example_inputs, s.device)
        t0 = time.perf_counter()
        val = float(self.evaluate(model, "val"))
        stages["evaluate_s"] = time.perf_counter() - t0
        if val != val:  # NaN
            raise CandidateFailed("evaluate() returned NaN")
        return CandidateResult(model=model, proxy_acc=proxy, val_acc=val, stages=stages)


def check_finite(model: nn.Module, example_inputs: Any, device: str) -> None:
    """Fail a candidate whose weights or outputs are not finite: argmax of NaN logits still
    'scores' (class 0), so such a model would otherwise complete and could reach the front."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CandidateFailed(f"non-finite values in {name} after fine-tuning (diverged; "
                                  "lower the learning rate)")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = call_model(model, _to(example_inputs, device))
    model.train(was_training)
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in _tensors(out)):
        raise CandidateFailed("non-finite outputs on the example inputs after fine-tuning")


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or tuples / lists / dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value \
        if isinstance(value, (list, tuple)) else ()
    return [t for item in items for t in _tensors(item)]


def _guarded(stage: Callable[[], CandidateResult]) -> CandidateResult:
    """Run one stage; anything a candidate does wrong becomes :class:`CandidateFailed`."""
    try:
        return stage()
    except Exception as exc:  # a user's finetune/evaluate may raise anything
        raise_if_pressed(exc)  # ... or a library swallowed the user's Ctrl-C
        if isinstance(exc, CandidateFailed):
            raise
        if isinstance(exc, torch.OutOfMemoryError):
            raise CandidateFailed(f"out of memory: {str(exc).splitlines()[0][:200]}") from exc
        raise CandidateFailed(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                              if str(exc) else type(exc).__name__) from exc

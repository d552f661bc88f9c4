"""The peers of ``search_regime.py`` that are not in ``search_quality.py``, and its statistics.

- :func:`groupnorm_recipe`: torch-pruning's strongest recipe, as its ``reproduce/`` scripts run it
  (DepGraph, "group_sl"): ``GroupNormPruner`` with group-L2 importance, global pruning and the
  group sparsity regulariser during a sparsity-learning phase, then progressive pruning in
  1/400 steps until the counted MACs meet the budget.
- :func:`latency_matched_uniform`: the uniform plan whose **measured** latency meets a latency
  budget (the FLOPs fraction of a uniform plan bisected on latency timed alternately with dense).
- :func:`group_sensitivity`: the classic per-layer sensitivity analysis
  (:mod:`autoprune.sensitivity`: each coupled group pruned alone, BatchNorm re-estimated, the
  validation drop measured), which ``sensitivity_allocation`` turns into per-group ratios.
- :func:`paired_interval`: mean and 95 % t-interval half-width of paired differences.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

REG = 5e-4  # reproduce/main.py --reg default for CIFAR
SL_LR = 0.01  # reproduce/main.py --sl-lr default
ITERATIVE_STEPS = 400  # reproduce/main.py --iterative-steps default
#: ``groupnorm-sl-cap``: the per-layer cap torch-pruning's own VGG-19 group_sl script passed
#: (``--max-sparsity 0.7``; reproduce/main.py's ``--max-pruning-ratio`` defaults to 1.0)
CAPPED_RATIO = 0.7


def paired_interval(diffs: list[float]) -> tuple[float, float]:
    """Mean of ``diffs`` and the half-width of its two-sided 95 % t-interval (NaN for n < 2)."""
    from scipy.stats import t

    values = [d for d in diffs if d is not None and not math.isnan(d)]
    if not values:
        return float("nan"), float("nan")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    half = float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, half


def _classifier_heads(model: nn.Module, num_classes: int) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)
            and m.out_features == num_classes]


def groupnorm_recipe(dense: nn.Module, example: torch.Tensor, batches: Iterable[Any],
                     flops: float, sl_steps: int, log: Callable[[str], None] = print,
                     num_classes: int = 10, max_ratio: float = 1.0,
                     after_sl: Callable[[nn.Module], None] | None = None,
                     ) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``dense`` after ``sl_steps`` of group-sparsity learning (train mode, SGD lr
    0.01, momentum 0.9, no weight decay, cosine; ``pruner.regularize`` after every backward) and
    progressive global group-L2 pruning (scores normalised by each group's maximum) down to
    ``flops`` of the dense MACs (torch-pruning's own counter), a layer no longer pruned once it
    lost more than ``max_ratio`` of its channels (one step may take it a little further):
    ``reproduce/main.py --method group_sl --global-pruning --max-pruning-ratio max_ratio``,
    with a shorter sparsity phase. ``after_sl`` sees the model between the two (in eval mode);
    the info's ``kept`` is each conv's share of its channels."""
    import torch_pruning as tp

    start = time.perf_counter()
    model = copy.deepcopy(dense)  # put in train mode after the pruner traces it (below)
    pruner = tp.pruner.GroupNormPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2, normalizer="max"),
        global_pruning=True, pruning_ratio=1.0, max_pruning_ratio=max_ratio,
        iterative_steps=ITERATIVE_STEPS, reg=REG,
        ignored_layers=_classifier_heads(model, num_classes))
    # torch-pruning traces the model in eval mode and leaves it there: sparsity learning in eval
    # mode froze BatchNorm's statistics, and on the dense ResNet-20 of 2026-12-07 it diverged to
    # NaN within 30 steps on 3 seeds of 5 (reproduce/main.py trains in train mode, and without
    # weight decay while the regulariser runs)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=SL_LR, momentum=0.9, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, sl_steps))
    for x, y in itertools.islice(itertools.cycle(batches), sl_steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        pruner.regularize(model)
        opt.step()
        sched.step()
    sl_s = time.perf_counter() - start
    model.eval()
    if after_sl is not None:
        after_sl(model)
    base, _ = tp.utils.count_ops_and_params(model, example_inputs=example)
    macs, steps = float(base), 0
    while macs > flops * base and pruner.current_step < pruner.iterative_steps:
        pruner.step()
        steps += 1
        macs = float(tp.utils.count_ops_and_params(model, example_inputs=example)[0])
    log(f"group-norm recipe: {sl_steps} sparsity steps ({sl_s:.0f} s), {steps} pruning steps "
        f"to {macs / base:.3f} of the MACs")
    return model, {"search_s": time.perf_counter() - start, "sl_steps": sl_steps,
                   "prune_steps": steps, "kept": conv_kept(model, dense)}


def conv_kept(model: nn.Module, dense: nn.Module) -> dict[str, float]:
    """Each conv of ``model``: its output channels over those of the same conv in ``dense``."""
    widths = {n: m.out_channels for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
    return {n: round(m.out_channels / widths[n], 4) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and n in widths}


def measured_ratio(model: nn.Module, dense: nn.Module, example: torch.Tensor, target: Any,
                   rounds: int = 5, repeats: int = 20) -> tuple[float, float, float]:
    """(latency ratio to dense, model ms, dense ms), timed alternately on ``target``."""
    from autoprune.latency import time_alternating

    res = time_alternating({"dense": dense, "model": model}, example, target, rounds=rounds,
                           repeats=repeats)
    return res["model"][0] / res["dense"][0], res["model"][0], res["dense"][0]


def group_sensitivity(analysis: Any, evaluate: Callable[[nn.Module, str], float],
                      loader: Iterable[Any], ratio: float = 0.5,
                      bn_batches: int = 20) -> dict[str, float]:
    """:func:`autoprune.sensitivity.group_drops` of every coupled group, scored as a search
    scores them (``Pipeline.score``): pruned (L2), BatchNorm re-estimated on ``bn_batches``
    batches of ``loader``, ``evaluate(model, "val")``."""
    from autoprune.pipeline import Pipeline
    from autoprune.sensitivity import group_drops
    from autoprune.settings import FinetuneSettings

    pipeline = Pipeline(analysis, evaluate, loader, FinetuneSettings(bn_batches=bn_batches))
    return group_drops([g.name for g in analysis.groups], pipeline.score, "l2", ratio)


def latency_matched_uniform(analysis: Any, dense: nn.Module, example: torch.Tensor,
                            budget: float, target: Any, round_to: int, iters: int = 7,
                            log: Callable[[str], None] = print, drop: tuple[str, ...] = (),
                            allocation: Mapping[str, float] | float = 1.0,
                            ) -> tuple[Any, dict[str, Any]]:
    """The uniform L2 plan with the largest FLOPs fraction whose latency, measured alternately
    with ``dense`` on ``target``, is at most ``budget`` of dense (bisection over the fraction;
    ``None`` when even the smallest uniform plan is over). ``drop``: the blocks removed first
    (the fraction is then of the model without them); ``allocation``: relative per-group
    ratios instead of uniform ones (as :func:`autoprune.fit_budget` takes them)."""
    import autoprune as ap
    from autoprune.errors import BudgetError

    if drop and not isinstance(allocation, float):
        raise ValueError("allocation: per-group ratios are named for the model with every "
                         "block; give drop=() with them")
    start = time.perf_counter()
    part, names = analysis.without(drop) if drop else (analysis, {})

    def plan_at(fraction: float) -> Any:
        plan = ap.fit_budget(part.model, example, allocation=allocation, flops=fraction,
                             caps=0.95, importance="l2", round_to=round_to, analysis=part)
        if not drop:
            return plan
        return ap.PruningPlan({names[n]: r for n, r in plan.ratios.items()}, plan.importance,
                              plan.round_to, drop)

    lo, hi, best, tried = 0.0, 1.0, None, []
    for _ in range(iters):
        mid = (lo + hi) / 2
        try:
            plan = plan_at(mid)
        except BudgetError:  # below the smallest uniform model
            lo = mid
            continue
        ratio = measured_ratio(analysis.apply(plan).eval(), dense, example, target)[0]
        tried.append((round(mid, 4), round(ratio, 4)))
        if ratio <= budget:
            lo, best = mid, plan
        else:
            hi = mid
    shape = "uniform" if isinstance(allocation, float) else "sensitivity-weighted"
    log(f"latency-matched {shape}{' without ' + str(len(drop)) + ' blocks' if drop else ''} "
        f"at {budget:g}: fraction {lo:.3f} ({len(tried)} timings: "
        f"{tried})")
    info: dict[str, Any] = {"search_s": time.perf_counter() - start, "bisection": tried,
                            "uniform_flops_fraction": lo if best is not None else None}
    if best is None:
        fastest = min(tried, key=lambda t: t[1], default=None)
        info["error"] = (f"no {shape} plan is within {budget:g} of the dense latency"
                         + (f" (the fastest timed, at {fastest[0]:g} of the FLOPs, takes "
                            f"{fastest[1]:.3f})" if fastest else ""))
    return best, info

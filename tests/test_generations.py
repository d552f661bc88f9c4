"""Screening and staging: pure selection maths against brute force, then a whole staged search
whose recorded proxy / short / full scores are checked against the selection rules."""

from __future__ import annotations

import itertools
import zlib
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.backends.base import Asked
from autoprune.errors import ConfigError
from autoprune.generations import Schedule, allot, duplicates, top_per_level
from autoprune.neighbours import perturb, plan_key
from autoprune.settings import check_schedule
from autoprune.trial import ParamSpec, TrialRecord, TrialState

#: These nets are 8-16 channels wide: the default rounding to 8 leaves them a handful of plans,
#: and these tests are about the schedule, not rounding.
UNROUNDED = ap.SearchSpace(round_to=1)


@pytest.mark.parametrize("sizes,k", [([3, 5, 2], 4), ([1, 1, 1], 2), ([4], 9), ([0, 6], 3),
                                     ([2, 2, 2, 2], 8), ([7, 1], 1)])
def test_allot_is_proportional_and_exact(sizes, k):
    out = allot(sizes, k)
    assert sum(out) == min(k, sum(sizes))
    assert all(0 <= o <= s for o, s in zip(out, sizes))
    total = sum(sizes)
    assert all(abs(o - k * s / total) < 1 + 1e-9 for o, s in zip(out, sizes) if k <= total)


def _oracle(levels, scores, k, forced):
    """Brute force: the earliest forced ones (at most k), then per level the best of the rest,
    the slots left allotted by how many others each level holds."""
    must = [i for i, f in enumerate(forced) if f][:k]
    keys = sorted({v for i, v in enumerate(levels) if not forced[i]})
    sizes = [sum(v == key and not forced[i] for i, v in enumerate(levels)) for key in keys]
    kept = set(must)
    for key, n in zip(keys, allot(sizes, k - len(must))):
        rest = [i for i, v in enumerate(levels) if v == key and not forced[i]]
        best = max(itertools.combinations(rest, min(n, len(rest))),
                   key=lambda c: (sum(-1e9 if scores[i] is None else scores[i] for i in c),
                                  [-i for i in c]))
        kept |= set(best)
    return sorted(kept)


@pytest.mark.parametrize("seed", range(60))
def test_top_per_level_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    levels = [float(rng.choice([0.2, 0.3])) for _ in range(n)]
    scores = [None if rng.random() < 0.15 else float(rng.random()) for _ in range(n)]
    forced = [bool(rng.random() < 0.3) for _ in range(n)]
    k = int(rng.integers(1, n + 1))
    kept = top_per_level(levels, scores, k, forced)
    assert kept == _oracle(levels, scores, k, forced)
    assert len(kept) == k  # exactly the generation's full fine-tunes, baselines or not


def test_baselines_on_their_own_level_take_slots_from_the_total():
    # two baselines at the budget's level, six sampled at another: keeping k=2 keeps just the
    # baselines (it used to keep them plus the other level's share: three full fine-tunes)
    levels = [0.4, 0.4] + [0.3] * 6
    forced = [True, True] + [False] * 6
    assert top_per_level(levels, [0.1] * 8, 2, forced) == [0, 1]
    assert top_per_level(levels, [None, None, 0.1, 0.9, 0.2, 0.3, 0.4, 0.5], 3, forced) == [0, 1, 3]


def test_schedule_counts_and_errors():
    assert Schedule(4, 0.25, 2, 2).counts(2) == (8, 4, 2)
    assert Schedule(0, 0.25, 2, 2).counts(2) == (4, 4, 2)  # no proxy cut: all proxied go short
    assert Schedule(3, 0.0, 2, 2).counts(2) == (6, 2, 2)  # no short stage: proxy picks the 2
    assert Schedule(1, 0.0, 2, 1).counts(1) == (1, 1, 1)  # plain search
    for kwargs, needle in [({"screen": -1}, "--screen"), ({"short_fidelity": 1.0}, "--short"),
                           ({"promote": 0.5}, "--promote"), ({"generation": 0}, "--generation")]:
        with pytest.raises(ConfigError, match=needle):
            check_schedule(**{"screen": 4, "short_fidelity": 0.35, "promote": 2,
                              "generation": 2, **kwargs})
        with pytest.raises(ConfigError, match=needle):
            ap.SearchSettings(**kwargs)


def test_perturb_stays_in_range_and_on_grid():
    specs = [ParamSpec("a", 0.0, 0.8, 0.05), ParamSpec("b", 0.1, 0.5, None)]
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = perturb({"a": 0.8, "b": 0.1}, specs, rng, sigma=0.5)
        assert 0.0 <= out["a"] <= 0.8 and 0.1 <= out["b"] <= 0.5
        assert abs(out["a"] / 0.05 - round(out["a"] / 0.05)) < 1e-6


def test_duplicates_names_the_earlier_trial_of_the_same_plan():
    plan = {"a": 0.1, "cost_level": 0.5}
    records = [TrialRecord(0, TrialState.COMPLETE, searched=dict(plan)),
               TrialRecord(1, TrialState.SCREENED, searched={"a": 0.2, "cost_level": 0.5}),
               TrialRecord(2, TrialState.FAIL, searched={"a": 0.3, "cost_level": 0.5})]
    asked = [Asked(3, {"a": 0.1 + 1e-12, "cost_level": 0.5}),   # trial 0's plan
             Asked(4, {"a": 0.3, "cost_level": 0.5}),            # a failed plan: tried again
             Asked(5, {"a": 0.3, "cost_level": 0.5}),            # ...but once per generation
             Asked(6, {"a": 0.2, "cost_level": 0.5}, {"retry_of": 1}),  # a retry is no copy
             Asked(7, {"a": 0.4, "cost_level": 0.5})]
    assert duplicates(records, asked) == {3: 0, 5: 4}


def test_trained_widths_names_the_trial_with_the_same_model():
    """Different ratios that round to the same kept channels are one model: the oracle is the
    engine's kept count per group, compared by hand. A fully fine-tuned trial wins, then
    baselines, then the better stage score."""
    from autoprune.budget import ResolvedBudget
    from autoprune.generations import trained_widths
    from autoprune.plan import Budget, PruningPlan
    from autoprune.problem import Problem
    from autoprune.stages import Prepared

    analysis = ap.analyze(Net(), torch.zeros(1, 1, 8, 8))
    names = [g.name for g in analysis.groups]
    cm = analysis.cost_model
    problem = Problem(analysis, ap.SearchSpace(round_to=4), ResolvedBudget(
        Budget(flops=0.5), cm.dense_macs(), cm.dense_params()), ap.SearchSettings())

    def plan(ratio: float) -> PruningPlan:
        return PruningPlan(dict.fromkeys(names, ratio), round_to=4)

    kept = {r: tuple(analysis.kept(plan(r))) for r in (0.20, 0.24, 0.45, 0.80)}
    assert kept[0.20] == kept[0.24] != kept[0.45] != kept[0.80]  # the oracle, by hand
    records = [TrialRecord(0, TrialState.COMPLETE, plan=plan(0.20).to_dict(), val_acc=0.5,
                           fidelity=1.0),
               TrialRecord(1, TrialState.SCREENED, plan=plan(0.45).to_dict())]

    def prep(n: int, ratio: float, score: float, baseline: bool = False) -> Prepared:
        return Prepared(plan(ratio), {"short_acc": score}, n, 0.5, 0.0, baseline=baseline)

    alive = [prep(2, 0.24, 0.9), prep(3, 0.45, 0.3), prep(4, 0.45, 0.7), prep(5, 0.80, 0.1),
             prep(6, 0.80, 0.0, baseline=True)]
    # 2: trial 0 was fully fine-tuned; 3: 4 scored better (screened 1 does not count);
    # 5: the baseline 6 goes first
    assert trained_widths(problem, records, alive, "short_acc") == {2: 0, 3: 4, 5: 6}
    weights = Problem(analysis, ap.SearchSpace(), problem.budget,
                      ap.SearchSettings(mode="weights"))
    assert trained_widths(weights, records, alive, "short_acc") == {}  # plans are empty there


def _rounded_search(tmp_path, short_fidelity: float):
    """16-32 channels rounded to 8 at half the FLOPs, 8 trials: a handful of models, many
    searched values for each."""
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    settings = ap.SearchSettings(progress=False, latency=False, screen=2,
                                 short_fidelity=short_fidelity, promote=1, generation=2, seed=1)
    result = ap.search(Net(16), torch.zeros(1, 1, 8, 8), evaluate=lambda m, split: _score(m),
                       finetune=lambda m, steps: None, train_loader=loader,
                       budget=ap.Budget(flops=0.5), trials=8, run_dir=tmp_path / "run",
                       settings=settings, finetune_settings=ap.FinetuneSettings(steps=1),
                       space=ap.SearchSpace(round_to=8))
    return result, ap.analyze(Net(16), torch.zeros(1, 1, 8, 8))


@pytest.mark.usefixtures("one_thread")
def test_a_rounded_search_never_trains_the_same_widths_twice(tmp_path):
    """16-32 channels rounded to 8 at half the FLOPs: a handful of models, many searched values
    for each; every model is fully fine-tuned at most once, and the search still ends."""
    result, analysis = _rounded_search(tmp_path, short_fidelity=0)
    full = [tuple(analysis.kept(ap.PruningPlan.from_dict(r.plan))) for r in result.trials
            if r.is_full]
    assert full and len(full) == len(set(full))  # each model fully fine-tuned once
    assert any("same channels" in (r.fail_reason or "") for r in result.trials
               if r.state == "SCREENED")  # there were copies, screened out


@pytest.mark.usefixtures("one_thread")
def test_copies_of_trained_models_get_no_short_fine_tune(tmp_path):
    """With a short stage: a candidate whose widths a fully fine-tuned trial already has leaves
    after the proxy (SCREENED, naming that trial) and is never short-tuned; every short-tuned
    candidate is a model not trained before its generation."""
    result, analysis = _rounded_search(tmp_path, short_fidelity=0.5)
    copies = [r for r in result.trials if "same channels" in (r.fail_reason or "")]
    assert copies  # the rounded space makes some
    assert all(r.state == "SCREENED" and r.short_acc is None for r in copies)
    trained: dict[tuple[int, ...], int] = {}  # widths -> first fully fine-tuned trial
    for r in sorted(result.trials, key=lambda r: r.trial):
        if r.plan and r.is_full:
            trained.setdefault(tuple(analysis.kept(ap.PruningPlan.from_dict(r.plan))), r.trial)
    for r in result.trials:
        if r.short_acc is not None:  # short-tuned: not a model fully fine-tuned earlier
            first = trained.get(tuple(analysis.kept(ap.PruningPlan.from_dict(r.plan))))
            assert first is None or first >= r.generation, (r.trial, first)


@pytest.mark.timeout(120)
@pytest.mark.usefixtures("one_thread")
def test_a_space_with_fewer_models_than_trials_ends(tmp_path, caplog):
    """8-16 channels rounded to 8 at half the FLOPs: one model fits ((8, 8, 8)). The search
    trains it once and ends, its copies filling the remaining --trials, instead of asking
    forever."""
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    settings = ap.SearchSettings(progress=False, latency=False, screen=2, short_fidelity=0,
                                 promote=1, generation=2, seed=1, levels=1)  # all at 0.5
    result = ap.search(Net(), torch.zeros(1, 1, 8, 8), evaluate=lambda m, split: _score(m),
                       finetune=lambda m, steps: None, train_loader=loader,
                       budget=ap.Budget(flops=0.5), trials=4, run_dir=tmp_path / "run",
                       settings=settings, finetune_settings=ap.FinetuneSettings(steps=1),
                       space=ap.SearchSpace(round_to=8))
    analysis = ap.analyze(Net(), torch.zeros(1, 1, 8, 8))
    full = {tuple(analysis.kept(ap.PruningPlan.from_dict(r.plan))) for r in result.trials
            if r.is_full}
    assert full == {(8, 8, 8)}
    assert len(result.trials) < 40  # it ended soon after the space ran out
    assert "proposed only models already fully fine-tuned" in caplog.text


@pytest.mark.usefixtures("one_thread")
def test_the_trial_holding_a_generations_slots_is_told_last(tmp_path):
    """Each generation's first trial carries its slot count; it finishes last, so a worker
    with no shared lock never sees the slots free before the generation's trials are done."""
    import optuna

    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    settings = ap.SearchSettings(progress=False, latency=False, screen=2, short_fidelity=0,
                                 promote=1, generation=2, seed=2)
    ap.search(Net(32), torch.zeros(1, 1, 8, 8), evaluate=lambda m, split: _score(m),
              finetune=lambda m, steps: None, train_loader=loader, budget=ap.Budget(flops=0.5),
              trials=4, run_dir=tmp_path / "run", settings=settings, space=UNROUNDED,
              finetune_settings=ap.FinetuneSettings(steps=1))
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal")))
    trials = optuna.load_study(study_name="autoprune", storage=storage).trials
    generations = defaultdict(list)
    for t in trials:
        generations[t.user_attrs["generation"]].append(t)
    assert len(generations) >= 2
    for first, members in generations.items():
        holder = next(t for t in members if t.number == first)
        assert holder.user_attrs["slots"] > 0
        assert holder.datetime_complete == max(t.datetime_complete for t in members)


class Net(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        w, w2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w2, 3, padding=1), nn.BatchNorm2d(w2), nn.ReLU(),
            nn.Conv2d(w2, w2, 3, padding=1), nn.BatchNorm2d(w2), nn.ReLU())
        self.head = nn.Linear(w2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def steps_finetune(model: nn.Module, steps: int) -> None:
    """A stand-in fine-tune: records how long the candidate was trained (see _score)."""
    model.steps_done = steps  # type: ignore[assignment]


def _score(model: nn.Module, split: str = "val") -> float:
    """A deterministic 'accuracy' of the architecture and how long it was fine-tuned: proxy,
    short and full scores differ, so the selection at every stage is observable."""
    widths = tuple(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    key = f"{widths}-{getattr(model, 'steps_done', 0)}".encode()
    return (zlib.crc32(key) % 10_000) / 10_000


@pytest.mark.usefixtures("one_thread")
def test_staged_search_fine_tunes_the_proxys_top_k_and_fronts_only_full(tmp_path):
    torch.manual_seed(0)  # the dense net's weights: the test must not depend on earlier tests
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    settings = ap.SearchSettings(progress=False, latency=False, screen=4, short_fidelity=0.25,
                                 promote=2, generation=2, levels=2, seed=3)
    # 32-64 channels: distinct searched values rarely fit to the same widths (a copy is not
    # proxied, which this test's oracle does not model)
    result = ap.search(Net(32), torch.zeros(1, 1, 8, 8), evaluate=lambda m, split: _score(m),
                       finetune=steps_finetune, train_loader=loader, budget=ap.Budget(flops=0.5),
                       trials=6, run_dir=tmp_path / "run", settings=settings, space=UNROUNDED,
                       finetune_settings=ap.FinetuneSettings(steps=8, bn_batches=1))
    trials = result.trials
    full = [r for r in trials if r.state == "COMPLETE"]
    assert len(full) == 6 and all(r.fidelity == 1.0 for r in full)
    assert all(r.state == "SCREENED" and r.fidelity < 1 for r in trials if r not in full)
    assert result.front and all(r.fidelity == 1.0 for r in result.front)
    generations = defaultdict(list)
    for r in trials:
        generations[r.generation].append(r)
    assert len(generations) == 3
    for members in generations.values():
        assert len(members) == 8  # screen x k proxied
        assert len({round(r.searched["cost_level"], 9) for r in members}) == 1  # one level
        forced = [bool(r.baseline) for r in members]
        proxied = [r.proxy_acc for r in members]
        short = [i for i, r in enumerate(members) if r.short_acc is not None]
        assert short == _oracle([0.0] * 8, proxied, 4, forced)  # the proxy's top 4
        fully = [i for i, r in enumerate(members) if r.state == "COMPLETE"]
        expect = _oracle([0.0] * 4, [members[i].short_acc for i in short], 2,
                         [forced[i] for i in short])
        assert fully == [short[j] for j in expect]  # the short stage's top 2 of those
    assert {r.baseline for r in trials if r.baseline} == {"uniform-l2", "global-l2"}
    levels = {round(r.searched["cost_level"], 6) for r in trials}
    assert len(levels) == 2 and max(levels) == pytest.approx(0.5)
    assert all(r.flops_ratio <= r.searched["cost_level"] + 1e-9 for r in trials)
    evaluated = [plan_key(r.searched) for r in trials]
    assert len(evaluated) == len(set(evaluated))  # no plan was trained twice


@pytest.mark.usefixtures("one_thread")
def test_plain_schedule_runs_every_candidate_at_full_fidelity(tmp_path):
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    settings = ap.SearchSettings(progress=False, latency=False, screen=1, short_fidelity=0,
                                 promote=1, generation=1, priors=False, sampler="random")
    result = ap.search(Net(), torch.zeros(1, 1, 8, 8), evaluate=lambda m, split: _score(m),
                       finetune=lambda m, steps: None, train_loader=loader,
                       budget=ap.Budget(flops=0.5), trials=4, run_dir=tmp_path / "run",
                       settings=settings, finetune_settings=ap.FinetuneSettings(steps=2),
                       space=UNROUNDED)
    assert [r.state for r in result.trials] == ["COMPLETE"] * 4


@pytest.mark.usefixtures("one_thread")
def test_caps_give_way_only_when_the_budget_demands(tmp_path):
    """A 0.3 cap cannot reach 10 % FLOPs (about 0.7^2 of each conv stays); the caps are lifted
    toward 0.95 for such a budget instead of failing every candidate. Sampled candidates only:
    the baselines are torch-pruning's one-liners, capped at 0.95 whatever the budget."""
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    settings = ap.SearchSettings(progress=False, latency=False, screen=1, short_fidelity=0,
                                 promote=1, generation=1, levels=1)
    space = ap.SearchSpace(low=0.0, high=0.3, step=0.05, round_to=1)
    for budget, lifted in ((0.6, False), (0.1, True)):
        result = ap.search(Net(), torch.zeros(1, 1, 8, 8), evaluate=lambda m, split: _score(m),
                           finetune=lambda m, steps: None, train_loader=loader,
                           budget=ap.Budget(flops=budget), trials=4, space=space,
                           run_dir=tmp_path / str(budget), settings=settings,
                           finetune_settings=ap.FinetuneSettings(steps=1))
        done = [r for r in result.trials if r.state == "COMPLETE"]  # (or a copy's FAIL)
        assert done and all(r.flops_ratio <= budget + 1e-9 for r in done)
        sampled = [r for r in done if r.baseline is None]
        assert sampled
        top = max(max(r.plan["ratios"].values()) for r in sampled)
        assert (top > 0.35) == lifted  # 16 channels at a 0.3 cap: 5 of 16 removed (0.3125)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_searches_past_its_startup(sampler, tmp_path):
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    settings = ap.SearchSettings(progress=False, latency=False, sampler=sampler, screen=2,
                                 short_fidelity=0, promote=1, generation=2)
    result = ap.search(Net(), torch.zeros(1, 1, 8, 8), evaluate=lambda m, split: _score(m),
                       finetune=lambda m, steps: None, train_loader=loader,
                       budget=ap.Budget(flops=0.5), trials=12, run_dir=tmp_path / "run",
                       settings=settings, finetune_settings=ap.FinetuneSettings(steps=1),
                       space=UNROUNDED)
    done = [r for r in result.trials if r.state == "COMPLETE"]
    assert len(done) == 12 and all(r.flops_ratio <= 0.5 + 1e-9 for r in done)
    assert len({tuple(sorted(r.searched.items())) for r in done}) >= 10  # it keeps proposing


@pytest.mark.usefixtures("one_thread")
def test_every_baseline_is_fully_tuned_and_the_total_is_exact(tmp_path):
    """More baselines than ``--generation``, at their own cost level: the first generation
    grows to hold them all, each is fully fine-tuned, and exactly ``trials`` trials are (three
    full fine-tunes were counted as two before, one over --trials on every run)."""
    loader = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    settings = ap.SearchSettings(progress=False, latency=False, screen=3, short_fidelity=0,
                                 promote=1, generation=1, seed=0)
    result = ap.search(Net(16), torch.zeros(1, 1, 8, 8), evaluate=lambda m, split: _score(m),
                       finetune=lambda m, steps: None, train_loader=loader,
                       budget=ap.Budget(flops=0.5), trials=4, run_dir=tmp_path / "run",
                       settings=settings, finetune_settings=ap.FinetuneSettings(steps=1),
                       space=UNROUNDED)
    baselines = [r for r in result.trials if r.baseline]
    assert len(baselines) >= 2 and all(r.is_full for r in baselines)
    assert sum(r.is_full for r in result.trials) == 4

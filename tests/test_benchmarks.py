"""The search-quality benchmark's whole pipeline, on the bundled digits with a handful of
trials (the figures come from Fashion-MNIST runs; this only proves the pipeline holds)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(name: str):
    """The benchmark script ``benchmarks/<name>.py`` as a module, imported with the folder on
    ``sys.path`` for the import only (scripts that import siblings put it there themselves)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.slow
def test_search_quality_pipeline_on_digits(tmp_path):
    out = tmp_path / "sq.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/search_quality.py", "--task", "digits", "--quick",
         "--arch", "resnet", "--budgets", "0.3", "--trials", "2", "--dense-epochs", "8",
         "--spearman-arch", "resnet", "--spearman-candidates", "4", "--jobs", "1",
         "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for method in ("uniform-l2", "global-l2", "random", "autoprune"):
        assert f"| resnet | 0.3 | {method} |" in text
    assert "Spearman" in text and "Best-so-far" in text
    raw = json.loads(out.with_suffix(".json").read_text())
    runs = raw["results"][0]["runs"]
    assert len(runs) == 4
    for run in runs:  # every method chose a plan within the budget and was tested
        assert run["test_acc"] is not None and run["flops_ratio"] <= 0.3 * 1.01, run
    searched = [r for r in runs if r["method"] in ("random", "autoprune")]
    for run in searched:
        full = [t for t in run["trials"] if t["state"] == "COMPLETE"]
        assert len(full) >= 2 and all(t["fidelity"] == 1.0 for t in full)
    assert raw["results"][0]["spearman"]["n"] == 4


def _peers():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _regime_peers

    return _regime_peers


def test_paired_interval_matches_scipy_t_interval():
    from scipy import stats

    diffs = [0.012, 0.004, 0.019, -0.002, 0.008]
    mean, half = _peers().paired_interval(diffs)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=stats.tmean(diffs),
                                 scale=stats.sem(diffs))
    assert mean == pytest.approx((low + high) / 2)
    assert half == pytest.approx((high - low) / 2)
    assert _peers().paired_interval([0.01])[1] != _peers().paired_interval([0.01])[1]  # NaN


def test_units_starting_together_train_one_dense_model_at_a_time(tmp_path, monkeypatch):
    """Two units of one arch that start together must not both train its dense model: the
    second waits for the first (and then loads its file)."""
    import threading
    import time
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _quality_data as qd

    spans: list[tuple[float, float]] = []

    def slow_train(*args, **kwargs):
        start = time.perf_counter()
        time.sleep(0.3)
        spans.append((start, time.perf_counter()))

    monkeypatch.setattr(qd, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(qd, "_load_or_train", slow_train)
    data = SimpleNamespace(sizes=lambda: {"train": 10, "val": 2},
                           train_x=qd.torch.zeros(1, 1, 28, 28))
    units = [threading.Thread(target=qd.train_dense, args=("resnet20", data, 0, 1))
             for _ in range(2)]
    for unit in units:
        unit.start()
    for unit in units:
        unit.join()
    assert len(spans) == 2
    first, second = sorted(spans)
    assert second[0] >= first[1]  # the second began after the first ended
    assert (tmp_path / ".gitignore").read_text() == "*\n"  # the lock file is never committed


def test_committed_dense_weights_are_loaded_instead_of_trained(tmp_path, monkeypatch):
    """A dense model missing from the cache but committed under ``benchmarks/dense`` is loaded
    from there: its very weights, and no training step taken."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _quality_data as qd

    monkeypatch.setattr(qd, "KEPT_DIR", tmp_path / "dense")
    (tmp_path / "dense").mkdir()
    kept = qd.ARCHS["resnet20"].build()
    with qd.torch.no_grad():
        for param in kept.parameters():
            param.fill_(0.25)
    qd.torch.save(kept.state_dict(), tmp_path / "dense" / "dense-x.pt")

    def no_training(*args, **kwargs):
        raise AssertionError("a committed dense model was trained again")

    model = qd._load_or_train("resnet20", SimpleNamespace(loader=no_training), 0, 1,
                              tmp_path / "cache" / "dense-x.pt", lambda _: None, "cpu")
    assert all(bool((p == 0.25).all()) for p in model.parameters())
    assert not model.training


def test_every_committed_dense_model_loads_into_its_arch():
    """``benchmarks/dense`` holds only weights that load, strictly, into the arch their cache
    name says (``dense-v<version>-<arch>-...``)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _quality_data as qd

    files = sorted(qd.KEPT_DIR.glob("dense-*.pt"))
    assert files, "benchmarks/dense holds no dense model"
    for path in files:
        version, arch = path.stem.split("-")[1:3]
        assert version == f"v{qd.CACHE_VERSION}", path.name
        qd.ARCHS[arch].build().load_state_dict(qd.torch.load(path, weights_only=True))


def _regime():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import search_regime

    return search_regime


def test_verdicts_pair_only_rows_fine_tuned_with_the_same_seed():
    def row(method, seed, acc, final_seed):
        return {"arch": "a", "kind": "flops", "budget": 0.1, "method": method, "seed": seed,
                "test_acc": acc, "final_seed": final_seed}

    runs = [row("autoprune", 0, 0.90, 2), row("uniform-l2", 0, 0.89, 2),
            row("autoprune", 1, 0.91, 1002), row("uniform-l2", 1, 0.80, 1000),  # another seed
            row("autoprune", 2, 0.92, 2002), row("uniform-l2", 2, 0.90, 2002)]
    (v,) = _regime().verdicts([{"runs": runs}])
    assert v["n"] == 2 and v["unpaired"] == 1
    assert v["diffs"] == pytest.approx([0.01, 0.02])


def test_only_rows_of_an_earlier_search_are_footnoted():
    regime = _regime()
    cfg = {"arch": ["a"], "flops": [0.1], "latency": [], "methods": None, "refine": 0,
           "sensitivity": True, "random_in": "none"}

    def row(method, **extra):
        return {"arch": "a", "kind": "flops", "budget": 0.1, "method": method, "seed": 0,
                "test_acc": 0.9, "flops_ratio": 0.1, "search_s": 1.0, **extra}

    current = {"global_baseline": "exact", "baselines_kind": "one-liners"}
    lines = regime.accuracy_lines([row("uniform-l2"), row("autoprune", **current),
                                   row("sensitivity")], cfg)  # a peer: no baselines to mark
    assert not any("†" in line or "‡" in line for line in lines)
    lines = regime.accuracy_lines([row("autoprune"), row("sensitivity")], cfg)
    assert [line.split(" | ")[2] for line in lines if line.startswith("| a |")] == [
        "autoprune†", "sensitivity"]
    assert any(line.startswith("† measured before") for line in lines)


def test_a_peer_over_its_flops_budget_is_flagged_in_both_tables():
    regime = _regime()
    cfg = {"arch": ["a"], "flops": [0.07], "latency": [], "methods": None, "refine": 0,
           "sensitivity": False, "random_in": "none"}

    def row(method, seed, flops, **extra):
        return {"arch": "a", "kind": "flops", "budget": 0.07, "method": method, "seed": seed,
                "test_acc": 0.9, "flops_ratio": flops, "search_s": 1.0, "final_seed": seed,
                "global_baseline": "exact", "baselines_kind": "one-liners", **extra}

    runs = [row("autoprune", s, 0.07) for s in (0, 1)] + [
        row("uniform-l2", s, 0.0701) for s in (0, 1)] + [
        row("groupnorm-sl", 0, 0.069), row("groupnorm-sl", 1, 0.088)]  # seed 1 stopped short
    names = [line.split(" | ")[2] for line in regime.accuracy_lines(runs, cfg)
             if line.startswith("| a |")]
    assert names == ["uniform-l2", "groupnorm-sl◊", "autoprune"]
    over = {v["peer"]: v["over"] for v in regime.verdicts([{"runs": runs}])}
    assert over == {"uniform-l2": 0, "groupnorm-sl": 1}


def test_variants_of_ours_are_compared_with_the_peers_and_with_autoprune():
    def row(method, seed, acc):
        return {"arch": "a", "kind": "latency", "budget": 0.3, "method": method, "seed": seed,
                "test_acc": acc, "final_seed": seed}

    runs = [row(m, s, acc + s / 100) for s in (0, 1) for m, acc in (
        ("uniform-lat", 0.80), ("autoprune", 0.81), ("autoprune-depth", 0.83))]
    pairs = {(v["ours"], v["peer"]): v["diff"] for v in _regime().verdicts([{"runs": runs}])}
    assert pairs == pytest.approx({("autoprune", "uniform-lat"): 0.01,
                                   ("autoprune-depth", "uniform-lat"): 0.03,
                                   ("autoprune-depth", "autoprune"): 0.02})


def test_a_new_method_is_fine_tuned_with_the_seed_its_cells_kept_rows_used(tmp_path):
    """A method added to a cell later pairs with the kept rows whatever the cell's position in
    the new run's --flops/--latency list (the position only seeds a cell with no rows yet)."""
    regime = _regime()
    from _regime_cache import keep, row_key

    cfg = {k: str(v) if isinstance(v, Path) else v
           for k, v in vars(regime.parse_args(["--cache", str(tmp_path)])).items()}
    assert regime.final_seed_of(cfg, "mbv2", 2, 4, "latency", 0.3) == 2004  # nothing kept
    keep(cfg, row_key(cfg, "mbv2", 2, "latency", 0.3, "uniform-lat"),
         {"method": "uniform-lat", "final_seed": 2001})  # ran when the cell was index 1
    assert regime.final_seed_of(cfg, "mbv2", 2, 4, "latency", 0.3) == 2001
    assert regime.final_seed_of(cfg, "mbv2", 2, 3, "latency", 0.5) == 2003  # another cell
    assert regime.final_seed_of(cfg, "mbv2", 1, 4, "latency", 0.3) == 1004  # another seed


def test_a_run_with_more_trials_reuses_the_kept_peers_and_dense_scores_not_the_searches():
    """--trials, --search-steps and --distill change what a search picks, not a uniform plan
    or the dense model: those rows keep their keys, the searching methods' rows do not."""
    regime = _regime()
    from _regime_cache import header_key, row_key

    six = vars(regime.parse_args(["--trials", "6"]))
    twelve = vars(regime.parse_args(["--trials", "12"]))
    longer = vars(regime.parse_args(["--trials", "6", "--final-epochs", "3"]))
    for method in ("uniform-lat", "uniform-lat-depth", "uniform-l2", "global-l2", "groupnorm-sl"):
        assert row_key(six, "mbv2", 0, "latency", 0.3, method) == \
            row_key(twelve, "mbv2", 0, "latency", 0.3, method)
        assert row_key(six, "mbv2", 0, "latency", 0.3, method) != \
            row_key(longer, "mbv2", 0, "latency", 0.3, method)  # the final fine-tune counts
    for method in ("autoprune", "autoprune-depth", "autoprune-refine", "random"):
        assert row_key(six, "mbv2", 0, "latency", 0.3, method) != \
            row_key(twelve, "mbv2", 0, "latency", 0.3, method)
    assert header_key(six, "mbv2", 0) == header_key(twelve, "mbv2", 0)


def test_a_kept_search_row_from_another_space_is_searched_again(tmp_path):
    """A row's key does not hold the space's contents: a search row restored from a results
    file made before the space was edited came back as the new space's. Rows now record the
    digest of the space they searched; a stale one (or one kept before rows recorded it) is
    searched again, a peer that reads no space is reused, --kept-only renders them all."""
    import dataclasses

    regime = _regime()
    from _regime_cache import keep, kept_row, row_key, space_digest

    cfg = {k: str(v) if isinstance(v, Path) else v
           for k, v in vars(regime.parse_args(["--cache", str(tmp_path), "--arch", "mbv2",
                                               "--flops", "--latency", "0.3"])).items()}
    space = regime._space("mbv2", "latency")
    now = space_digest(space)
    assert now == space_digest(regime._space("mbv2", "latency"))  # a function of contents
    assert now != space_digest(dataclasses.replace(space, round_to=1))
    assert regime._digest("mbv2", "latency", "autoprune") == now
    assert regime._digest("mbv2", "latency", "uniform-lat") is None
    done = {"test_acc": 0.9, "latency_ratio": 0.3}
    for method in regime.methods_of(cfg, "latency"):
        keep(cfg, row_key(cfg, "mbv2", 0, "latency", 0.3, method), {"method": method, **done})
    auto = row_key(cfg, "mbv2", 0, "latency", 0.3, "autoprune")
    uni = row_key(cfg, "mbv2", 0, "latency", 0.3, "uniform-lat")
    assert kept_row(cfg, uni, None) is not None  # a peer reads no space: reused
    assert kept_row(cfg, auto, now) is None  # kept before rows recorded their space
    assert regime._has_work(cfg, "mbv2", 0, "latency", 0.3)
    keep(cfg, auto, {"method": "autoprune", "space_digest": "0" * 16, **done})
    assert kept_row(cfg, auto, now) is None  # searched in another space
    assert kept_row({**cfg, "kept_only": True}, auto, now) is not None  # rendered as kept
    for method in ("autoprune", "autoprune-depth", "random"):
        keep(cfg, row_key(cfg, "mbv2", 0, "latency", 0.3, method),
             {"method": method, "space_digest": now, **done})
    assert kept_row(cfg, auto, now) is not None
    # rows kept before they recorded how the pick was made were picked on validation alone:
    # the default --selection one-se searches them again, random search (no baselines) not
    assert cfg["selection"] == "one-se" and regime._chosen_by(cfg, "autoprune") == "one-se"
    assert regime._chosen_by(cfg, "random") == "best-val"
    assert regime._chosen_by(cfg, "uniform-lat") is None
    assert kept_row(cfg, auto, now, "one-se") is None
    assert kept_row(cfg, auto, now, "best-val") is not None
    assert regime._has_work(cfg, "mbv2", 0, "latency", 0.3)
    assert not regime._has_work({**cfg, "selection": "best-val"}, "mbv2", 0, "latency", 0.3)
    for method in ("autoprune", "autoprune-depth"):
        keep(cfg, row_key(cfg, "mbv2", 0, "latency", 0.3, method),
             {"method": method, "space_digest": now, "chosen_by": "one-se", **done})
    assert not regime._has_work(cfg, "mbv2", 0, "latency", 0.3)


def test_a_search_with_no_pick_is_kept_as_picked_by_the_rule_and_not_searched_again(
        tmp_path, monkeypatch):
    # a cell where the search finds no feasible pick (or raises) is a finished row: a rerun
    # with the same --selection reuses it (it searched again once, because the row lacked
    # `chosen_by` and read as picked on validation alone)
    regime = _regime()
    cfg = vars(regime.parse_args(["--quick", "--cache", str(tmp_path), "--methods", "autoprune"]))
    calls = []

    def no_pick(method, *args):
        calls.append(method)
        raise RuntimeError("no candidate met the latency budget")

    monkeypatch.setattr(regime, "_choose", no_pick)
    logs: list[str] = []
    for _ in range(2):
        rows = regime.run_cell(cfg, {}, "resnet20", 0, 0, "latency", 0.9, logs.append)
    assert calls == ["autoprune"]  # the second run reused the kept row
    assert rows[0]["chosen_by"] == "one-se" and "no candidate" in rows[0]["error"]
    assert not any("searching again" in line for line in logs)
    assert not regime._has_work(cfg, "resnet20", 0, "latency", 0.9)


def test_quick_runs_every_peer_once_without_the_depth_variants_unless_asked():
    regime = _regime()
    quick = vars(regime.parse_args(["--quick"]))
    assert regime.methods_of(quick, "flops") == ["uniform-l2", "global-l2", "groupnorm-sl",
                                                 "autoprune"]
    assert regime.methods_of(quick, "latency") == ["uniform-lat", "autoprune"]
    asked = vars(regime.parse_args(["--quick", "--methods", "autoprune-depth", "autoprune"]))
    assert regime.methods_of(asked, "latency") == ["autoprune", "autoprune-depth"]
    # FLOPs cells search depth (--depth on) only when it is named
    assert regime.methods_of(asked, "flops") == ["autoprune", "autoprune-depth"]
    full = vars(regime.parse_args([]))
    assert regime.methods_of(full, "latency") == ["uniform-lat", "uniform-lat-depth", "random",
                                                  "autoprune", "autoprune-depth"]
    assert "autoprune-depth" not in regime.methods_of(full, "flops")
    # the capped group-norm recipe: FLOPs cells only, and only when named
    assert "groupnorm-sl-cap" not in regime.methods_of(full, "flops")
    capped = vars(regime.parse_args(["--methods", "groupnorm-sl", "groupnorm-sl-cap"]))
    assert regime.methods_of(capped, "flops") == ["groupnorm-sl", "groupnorm-sl-cap"]
    assert regime.methods_of(capped, "latency") == []


def test_bn_batches_enters_a_rows_key_only_when_not_the_value_every_kept_row_used():
    regime = _regime()
    from _regime_cache import BN_BATCHES, header_key, row_key

    cfg = vars(regime.parse_args(["--cache", "kept"]))
    before = {k: v for k, v in cfg.items() if k != "bn_batches"}  # a config from before the flag
    assert cfg["bn_batches"] == BN_BATCHES == 20
    for key in (lambda c: row_key(c, "mbv2", 0, "latency", 0.3, "autoprune"),
                lambda c: header_key(c, "mbv2", 0)):
        assert key(cfg) == key(before)  # rows kept before the flag are still found
        assert key({**cfg, "bn_batches": 4}) != key(cfg)
    assert vars(regime.parse_args(["--quick"]))["bn_batches"] == 4


def test_merge_units_gives_one_result_per_arch_and_seed_with_its_cells_in_order():
    head = {"sizes": {"train": 1}, "dense": {"test_acc": 0.9}}
    units = [{"arch": "a", "seed": 0, **head, "runs": [{"ci": 0}]},
             {"arch": "a", "seed": 0, **head, "runs": [{"ci": 1}, {"ci": 1.5}]},
             {"arch": "b", "seed": 0, **head, "runs": [{"ci": 0}]},
             {"arch": "a", "seed": 1, **head, "runs": []},
             {"arch": "a", "seed": 0, **head, "runs": [{"ci": 2}]},
             {"arch": "a", "proxy": {"n": 3}}]
    merged = _regime().merge_units(units)
    assert [(r["arch"], r.get("seed")) for r in merged] == [("a", 0), ("b", 0), ("a", 1),
                                                             ("a", None)]
    assert [r["ci"] for r in merged[0]["runs"]] == [0, 1, 1.5, 2]
    assert merged[0]["dense"] == head["dense"] and units[0]["runs"] == [{"ci": 0}]  # a copy


def test_groupnorm_recipe_lands_under_the_flops_budget_and_runs():
    import torch
    import torch_pruning as tp

    from autoprune.tasks.models import cifar_resnet

    torch.manual_seed(0)
    dense = cifar_resnet(8, (8, 16, 16)).eval()
    x = torch.randn(1, 1, 12, 12)
    batches = [(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))) for _ in range(3)]
    before = [p.clone() for p in dense.parameters()]
    model, info = _peers().groupnorm_recipe(dense, x, batches, 0.5, sl_steps=3, log=lambda m: None)
    base = tp.utils.count_ops_and_params(dense, example_inputs=x)[0]
    macs = tp.utils.count_ops_and_params(model, example_inputs=x)[0]
    assert 0.4 < macs / base <= 0.5  # 1/400 steps: it stops on the first step under
    assert model(x).shape == (1, 10) and info["sl_steps"] == 3
    assert all(torch.equal(a, b) for a, b in zip(before, dense.parameters()))  # dense untouched


def test_groupnorm_recipe_learns_sparsity_in_train_mode():
    """torch-pruning's tracing leaves the model in eval mode; the recipe must train in train
    mode (BatchNorm's running statistics move), as torch-pruning's reproduce/ scripts do."""
    import torch

    from autoprune.tasks.models import cifar_resnet

    torch.manual_seed(0)
    dense = cifar_resnet(8, (8, 16, 16)).eval()
    x = torch.randn(1, 1, 12, 12)
    batches = [(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))) for _ in range(2)]
    model, info = _peers().groupnorm_recipe(dense, x, batches, 1.0, sl_steps=2, log=lambda m: None)
    assert info["prune_steps"] == 0 and not model.training  # flops 1.0: nothing pruned
    moved = [not torch.equal(a.running_mean, b.running_mean)
             for a, b in zip(model.modules(), dense.modules())
             if isinstance(a, torch.nn.BatchNorm2d)]
    assert moved and all(moved)


def test_latency_matched_uniform_finds_the_largest_fraction_within_budget(monkeypatch):
    import torch

    from autoprune.engine import analyze
    from autoprune.tasks.models import cifar_resnet

    peers = _peers()
    dense = cifar_resnet(8, (8, 16, 16)).eval()
    x = torch.randn(1, 1, 12, 12)
    an = analyze(dense, x)
    dense_macs = an.cost_model.dense_macs()

    def fake_ratio(model, dense_model, example, target):  # latency = 0.2 + 0.8 x FLOPs share
        from autoprune.engine.count import count_macs_params

        share = count_macs_params(model, example)[0] / count_macs_params(dense_model, example)[0]
        return 0.2 + 0.8 * share, 0.0, 0.0

    monkeypatch.setattr(peers, "measured_ratio", fake_ratio)
    plan, info = peers.latency_matched_uniform(an, dense, x, 0.6, None, round_to=1, iters=8,
                                               log=lambda m: None)
    share = an.macs(plan) / dense_macs
    assert 0.2 + 0.8 * share <= 0.6  # within the budget ...
    assert share > 0.5 - 0.05  # ... and close to the largest share that is (0.5)
    assert info["bisection"] and info["uniform_flops_fraction"] > 0.45



def test_group_sensitivity_measures_each_group_pruned_alone():
    import torch

    from autoprune.engine import analyze
    from autoprune.tasks.models import cifar_resnet

    torch.manual_seed(0)
    dense = cifar_resnet(8, (8, 16, 16)).eval()
    x = torch.randn(1, 1, 12, 12)
    an = analyze(dense, x)
    seen: list[int] = []

    def evaluate(model, split):  # "accuracy" falls with the parameters a plan removes
        assert split == "val" and not model.training
        seen.append(sum(p.numel() for p in model.parameters()))
        return seen[-1] / seen[0]

    loader = [(torch.randn(4, 1, 12, 12), torch.zeros(4, dtype=torch.long))]
    drops = _peers().group_sensitivity(an, evaluate, loader, ratio=0.5, bn_batches=1)
    assert list(drops) == [g.name for g in an.groups] and len(seen) == len(drops) + 1
    assert drops == pytest.approx({g.name: 1 - n / seen[0] for g, n in zip(an.groups, seen[1:])})
    assert all(d > 0 for d in drops.values())

@pytest.mark.slow
def test_search_regime_pipeline_on_a_fashion_mnist_slice(tmp_path):
    """Every kind of cell and peer once, tiny; then the same command again only renders what
    the first kept (no cell is run twice)."""
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "regime.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    regime = _regime()
    cmd = [sys.executable, "benchmarks/search_regime.py", "--quick", "--train-size", "1500",
           "--val-size", "300", "--test-size", "300", "--trials", "1", "--search-steps", "4",
           "--final-epochs", "0.3", "--flops", "0.3", "--latency", "0.9", "--bisect-iters", "2",
           "--latency-runtime", "eager",
           "--proxy-candidates", "3", "--random-in", "none", "--jobs", "1",
           "--refine", "2", "--refine-epochs", "0.05", "--sensitivity",
           "--methods", *sorted({*regime.FLOPS_METHODS, *regime.LATENCY_METHODS, regime.REFINE,
                                 regime.SENS, regime.SENS_COST}),
           "--cache", str(tmp_path / "kept"), "--out", str(out)]
    # timeouts are a net against hangs: the first run took over 900 s on a CPU ~3x slower than usual
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    raw = json.loads(out.with_suffix(".json").read_text())
    runs = [r for res in raw["results"] for r in res.get("runs", [])]
    assert {(r["kind"], r["method"]) for r in runs} == {
        ("flops", "uniform-l2"), ("flops", "global-l2"), ("flops", "groupnorm-sl"),
        ("flops", "autoprune"), ("latency", "uniform-lat"), ("latency", "autoprune"),
        ("flops", "autoprune-refine"), ("latency", "autoprune-refine"),
        ("latency", "uniform-lat-depth"), ("latency", "autoprune-depth"),
        ("flops", "autoprune-depth"), ("flops", "sensitivity"), ("latency", "sensitivity"),
        ("flops", "sensitivity-cost"), ("latency", "sensitivity-cost")}
    assert first.stdout.count("sensitivity: 12 groups") == 2  # measured once per cell's process
    sens = next(r for r in runs if (r["kind"], r["method"]) == ("flops", "sensitivity"))
    assert set(sens["sensitivity_drops"]) >= set(sens["plan"]["ratios"])
    for kind in ("flops", "latency"):  # the cost-weighted peer: same drops, savings beside
        cost = next(r for r in runs if (r["kind"], r["method"]) == (kind, "sensitivity-cost"))
        assert set(cost["sensitivity_savings"]) == set(cost["sensitivity_drops"])
        assert all(v >= 0 for v in cost["sensitivity_savings"].values())
    # the cell's first search measures the drops; the other two take them from its baseline.json
    searches = [r for r in runs if r["kind"] == "latency" and "drops_shared" in r]
    assert sorted(r["drops_shared"] for r in searches) == [False, True, True], searches
    deep = next(r for r in runs if r["method"] == "uniform-lat-depth")
    assert "without 7 blocks" in first.stdout  # ResNet-20's removable blocks, all removed
    assert deep.get("test_acc") is None or len(deep["plan"]["drop"]) == 7
    refined = next(r for r in runs if (r["kind"], r["method"]) == ("flops", "autoprune-refine"))
    assert refined["top"] and all("refine_val" in c for c in refined["top"])
    assert refined["chosen_val"] == max(c["refine_val"] for c in refined["top"])
    for run in runs:
        if run.get("test_acc") is not None:  # pairs only with rows fine-tuned the same way
            assert run["final_seed"] == run["seed"] * 1000 + (run["kind"] == "latency"), run
        if run["kind"] == "flops":  # every FLOPs pick is tested within its budget
            assert run["test_acc"] is not None and run["flops_ratio"] <= 0.3 * 1.01, run
    lat = next(r for r in runs if r["method"] == "uniform-lat")
    if lat.get("test_acc") is not None:  # timed beside dense after the fine-tune
        assert lat["latency_ratio"] > 0 and lat["bisection"]
    proxy = next(res["proxy"] for res in raw["results"] if "proxy" in res)
    assert proxy["n"] == 3 and "rho_ceiling" in proxy
    text = out.read_text()
    assert "| resnet20 | flops 0.3 | groupnorm-sl |" in text and "Proxy study" in text
    assert "autoprune-depth in FLOPs cells: autoprune with `--depth on`" in text
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "sparsity steps (" in first.stdout
    assert "sparsity steps (" not in again.stdout  # kept: not run again
    assert "dense resnet20 seed 0:" in first.stdout  # a run with work loads the dense model,
    assert "dense resnet20 seed 0:" not in again.stdout  # one with none does not
    assert "autoprune minus each peer" in out.read_text()
    _restore_renders_the_same_table(cmd[:-4], env, out, tmp_path / "fresh")


def _restore_renders_the_same_table(cmd: list[str], env: dict[str, str], out: Path,
                                    cache: Path) -> None:
    """A fresh checkout (an empty cache): --restore the results file, and --kept-only renders
    the same rows and verdicts without the dense model; a run that trains a dense model
    scoring otherwise than the kept rows' refuses to add rows to them."""
    def table(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if line.startswith("| resnet20")]

    restored = out.with_name("restored.md")
    render = subprocess.run([*cmd, "--cache", str(cache), "--out", str(restored), "--restore",
                             str(out.with_suffix(".json")), "--kept-only"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert render.returncode == 0, render.stderr[-3000:]
    assert "dense resnet20 seed 0:" not in render.stdout  # no dense model needed
    assert table(restored) and table(restored) == table(out)
    (header,) = [f for f in cache.glob("*.json") if "sizes" in json.loads(f.read_text())]
    kept = json.loads(header.read_text())
    kept["dense"]["test_acc"] += 0.01  # as if pruned from weights trained elsewhere
    header.write_text(json.dumps(kept))
    mixed = subprocess.run([*cmd, "--cache", str(cache), "--out", str(restored), "--random-in",
                            "all"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)  # random search: a new row, so the dense model loads
    assert mixed.returncode != 0 and "new rows would not pair" in mixed.stderr, mixed.stderr


_POOL = """
import os, sys, time
sys.path.insert(0, {bench!r})
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from _common import die_with_parent

def work(out):
    open(os.path.join(out, str(os.getpid())), "w").close()
    time.sleep(120)

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"),
                             initializer=die_with_parent) as pool:
        pool.submit(work, {out!r}).result()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_killed_benchmark_takes_its_pool_workers_with_it(tmp_path):
    """Killed benchmark parents left spawn workers computing (and writing kept rows) for an hour."""
    import time

    script = tmp_path / "pool.py"
    script.write_text(_POOL.format(bench=str(ROOT / "benchmarks"), out=str(tmp_path)))
    parent = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 60
    while not [p for p in tmp_path.iterdir() if p.name.isdigit()] and time.time() < deadline:
        time.sleep(0.1)
    (marker,) = [p for p in tmp_path.iterdir() if p.name.isdigit()]
    parent.kill()
    parent.wait()
    child = int(marker.name)
    stat = Path(f"/proc/{child}/stat")
    for _ in range(100):
        try:  # gone, or a zombie no init has reaped yet
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.1)
    os.kill(child, 9)
    pytest.fail("the pool worker outlived its benchmark")


def test_search_rank_reads_a_kept_run_and_ranks_each_score_against_the_final(tmp_path,
                                                                              monkeypatch):
    """search_rank.py on a hand-made run directory: only fully fine-tuned trials are ranked
    (a screened one is not), a peer row joins the table, and the rhos are the orderings' by
    hand: the search's own val reversed (-1), the 300-step val and the second seed in order."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import search_rank

    run = tmp_path / "run"
    (run / "plans").mkdir(parents=True)
    rows = ["trial,state,val_acc,fidelity,baseline,flops_ratio",
            "0,COMPLETE,0.80,1.0,uniform-l2,0.20", "1,COMPLETE,0.82,1.0,,0.25",
            "2,SCREENED,,0.35,,0.3", "3,COMPLETE,0.84,1.0,,0.15", "4,INFEASIBLE,0.86,1.0,,0.3"]
    (run / "trials.csv").write_text("\n".join(rows) + "\n")
    for t in range(5):
        (run / "plans" / f"{t}.json").write_text(json.dumps({"ratios": {"a": t / 10}}))
    peer = tmp_path / "peer.json"
    peer.write_text(json.dumps({"method": "uniform-lat", "plan": {"ratios": {"a": 0.5}}}))
    args = search_rank.parse_args([str(run), "--arch", "mbv2", "--peer", str(peer),
                                   "--tie", "3", "--out", str(tmp_path / "r.md")])
    plans, scores = search_rank.plans_of(args)
    assert list(plans) == ["0 (uniform-l2)", "1", "3", "4", "uniform-lat"]
    assert scores["search val"] == {"0 (uniform-l2)": 0.80, "1": 0.82, "3": 0.84, "4": 0.86}
    assert scores["FLOPs kept"] == {"0 (uniform-l2)": 0.20, "1": 0.25, "3": 0.15, "4": 0.30}
    assert scores["kept"] == {"0 (uniform-l2)": 1.0, "1": 1.0, "3": 1.0, "4": 0.0}
    final = {"0 (uniform-l2)": 0.93, "1": 0.92, "3": 0.91, "4": 0.89,
             "uniform-lat": 0.90}  # the search val reversed
    done = {f"300-7-{n}": {"val": v - 0.05} for n, v in final.items()}
    done.update({f"final-{s}-{n}": {"val": v, "test": v + d}
                 for s, d in ((1001, 0.0), (5003, 0.001)) for n, v in final.items()})
    text = search_rank.report(args, plans, scores, done)
    assert "| uniform-lat | - | - | 0.8500 | 0.9000 | 0.9010 |" in text
    assert "| 4 (dropped by the search) | 0.8600 | 0.300 | 0.8400 |" in text
    # 4 was dropped by the search: ranked, never picked (the best val, 0.86, picks 3)
    assert "- search val: -1.00; picks 3, 0.9105" in text
    assert "- 300-step val: +1.00; picks 0 (uniform-l2), 0.9305" in text
    # FLOPs kept orders 4 > 1 > 0 > 3 (final: 0 > 1 > 3 > 4): sum d^2 = 14, rho 1 - 84/60
    assert "- FLOPs kept: -0.40; picks 1, 0.9205" in text
    # within 3 points of the best kept val (0.84): 1, 3 and 4, ordered by FLOPs 4 > 1 > 3,
    # then 0 by val: sum d^2 = 18, rho 1 - 108/60; the pick among the kept: 1
    assert "- search val, ties within 3 pt to FLOPs kept: -0.80; picks 1, 0.9205" in text
    assert "(the noise ceiling): +1.00" in text


def test_drift_replay_applies_the_ledgers_rule_to_a_kept_runs_figures(tmp_path):
    """Three models searched at 0.45 / 0.48 / 0.49 of a 2 ms dense model; re-timed beside a
    4 ms dense one at 0.575 / 0.53 / 0.625 (moved x1.278 / x1.104 / x1.276). The ledger's
    rule (the median move, x1.276) lifts the 0.5 budget to 0.638 and keeps all three, picking
    trial 2 (best on validation); the least move (x1.104) lifts it to 0.552 and keeps trial 1
    alone; the budget as measured keeps none. A FLOPs-budget run is skipped."""
    drift_replay = _bench("drift_replay")
    run = tmp_path / "run"
    run.mkdir()
    ops = [{"op_code": 8, "trial_id": t, "user_attr": {"latency_ms": ms}}
           for t, ms in ((0, 0.9), (1, 0.96), (2, 0.98))]
    (run / "study.journal").write_text("".join(json.dumps(op) + "\n" for op in ops))
    (run / "baseline.json").write_text(json.dumps({"dense": {"latency_ms": 2.0}}))
    (run / "budget.json").write_text(json.dumps({"budget": {"latency": 0.5}}))
    (run / "latency_remeasured.json").write_text(json.dumps(
        {"dense": 4.0, "iqr:dense": 0.1, "0": 2.3, "1": 2.12, "2": 2.5}))
    (run / "trials.csv").write_text(
        "trial,state,baseline,val_acc,flops_ratio\n0,INFEASIBLE,uniform-l2,0.90,0.45\n"
        "1,COMPLETE,,0.91,0.47\n2,INFEASIBLE,,0.95,0.49\n")
    tally: dict[str, list[int]] = {}
    lines = drift_replay.replay(run, tally)
    assert "median (now) x1.276, least (before) x1.104, none x1.000" in lines[0]
    assert [line.split("val ")[1].split()[1:4] for line in lines[1:4]] == [
        ["kept", "dropped", "dropped"], ["kept", "kept", "dropped"], ["kept", "dropped", "dropped"]]
    assert lines[4:] == ["  pick, median (now): trial 2 (searched, val 0.95, final 0.625 of dense)",
                         "  pick, least (before): trial 1 (searched, val 0.91, final 0.530 of "
                         "dense)", "  pick, none: none"]
    assert tally == {"median (now)": [0, 1, 1], "least (before)": [2, 0, 1], "none": [3, 0, 1]}
    (run / "budget.json").write_text(json.dumps({"budget": {"flops": 0.4}}))
    assert drift_replay.replay(run, tally) == ["run: not under a latency budget, skipped"]


def _finetune_plans():
    return _bench("finetune_plans")


def test_finetune_plans_names_a_bad_plan_argument_and_the_fix(tmp_path, capsys):
    """A PLAN.json:SEED argument without a seed, or naming no file, is refused before any
    dense model is loaded, with the expected form in the message."""
    finetune_plans = _finetune_plans()
    plan = tmp_path / "2.json"
    plan.write_text("{}")
    for bad in (str(plan), f"{tmp_path / 'missing.json'}:3000", f"{plan}:seed"):
        with pytest.raises(SystemExit):
            finetune_plans.main([bad, "--out", str(tmp_path / "o.json")])
        assert "expected PLAN.json:SEED" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_gradual_prune_events_spread_over_the_first_part_of_the_fine_tune():
    prune_events = _finetune_plans().prune_events
    assert prune_events(860, 4, 0.5) == [1, 109, 216, 323]  # 1 + round(j * 107.5)
    assert prune_events(10, 1, 0.5) == [1]  # one event: pruned after the first step
    assert prune_events(8, 8, 1.0) == list(range(1, 9))
    for steps, k, until in ((860, 0, 0.5), (860, 4, 0.0), (3, 4, 0.5), (8, 8, 0.5)):
        with pytest.raises(ValueError, match=r"gradual pruning|do not fit"):
            prune_events(steps, k, until)


def test_gradual_finetune_ends_at_the_plans_architecture_and_leaves_dense_alone():
    """Pruned in 3 events while it trains, the model ends with exactly the widths a one-shot
    prune to the plan gives, each event closer to them; the dense model is not touched."""
    import torch

    import autoprune as ap
    from autoprune.engine import analyze
    from autoprune.tasks.models import cifar_resnet

    torch.manual_seed(0)
    dense = cifar_resnet(8, (8, 16, 16)).eval()
    x = torch.randn(1, 1, 12, 12)
    an = analyze(dense, x)
    plan = ap.PruningPlan({g.name: 0.25 + 0.25 * (i % 2) for i, g in enumerate(an.groups)}, "l2")
    batches = [(torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))) for _ in range(3)]

    class Data:
        def loader(self, seed, batch):
            return batches

    ctx = {"dense": dense, "example": x, "data": Data(), "batch": 4, "epoch_steps": 3,
           "ft": {"lr": 0.01, "optimizer": "sgd", "weight_decay": 5e-4}}
    before = [p.clone() for p in dense.parameters()]
    model, steps, history = _finetune_plans().gradual_finetune(
        plan, {"final_epochs": 4.0, "gradual": 3, "gradual_until": 0.5}, ctx, seed=0)
    assert steps == 12 and [h["step"] for h in history] == [1, 3, 5]
    shares = [h["flops_ratio"] for h in history]
    assert shares[0] > shares[1] > shares[2] == pytest.approx(an.macs(plan) /
                                                               an.cost_model.dense_macs())
    assert [p.shape for p in model.parameters()] == [p.shape for p in an.apply(plan).parameters()]
    assert not model.training and model(x).shape == (1, 10)
    assert all(torch.equal(a, b) for a, b in zip(before, dense.parameters()))


def test_finetune_plans_takes_a_cells_plans_from_rows_and_pairs_them_by_seed(tmp_path):
    fp = _finetune_plans()
    runs = [{"kind": "flops", "budget": 0.07, "method": m, "seed": s, "plan": {"ratios": {}},
             "final_seed": 1000 * s, "test_acc": acc}
            for s, m, acc in ((0, "autoprune", 0.90), (0, "uniform-l2", 0.89),
                              (1, "uniform-l2", 0.88), (1, "autoprune", 0.89),
                              (1, "global-l2", 0.70))]
    runs.append({**runs[0], "budget": 0.15})  # another cell: not taken
    runs.append({**runs[0], "seed": 2, "test_acc": None})  # an errored row: not taken either
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"results": [{"runs": runs}]}))
    jobs = fp.jobs_from_rows(str(path), "flops:0.07", ["uniform-l2", "autoprune"])
    assert [(j["seed"], j["method"], j["final_seed"]) for j in jobs] == [
        (0, "uniform-l2", 0), (0, "autoprune", 0), (1, "uniform-l2", 1000),
        (1, "autoprune", 1000)]
    rows = [{**j, "test_acc": j["row_test_acc"] + (0.01 if j["method"] == "autoprune" else 0)}
            for j in jobs]
    lines = fp.paired_lines(rows, ["uniform-l2", "autoprune"])
    assert "| uniform-l2 (2 seeds) | +2.00 [+2.00, +2.00] | +1.00 [+1.00, +1.00] |" in lines
    assert lines[-2:] == ["| uniform-l2 (2 seeds) | +0.00 [+0.00, +0.00] |",  # here - the row
                          "| autoprune (2 seeds) | +1.00 [+1.00, +1.00] |"]
    with pytest.raises(SystemExit, match="no rows"):
        fp.jobs_from_rows(str(path), "latency:0.5", ["autoprune"])
    with pytest.raises(SystemExit, match="expected KIND:BUDGET"):
        fp.jobs_from_rows(str(path), "latency", ["autoprune"])


def test_groupnorm_recipe_stops_each_layer_near_max_ratio():
    """``groupnorm-sl-cap``: torch-pruning stops pruning a layer once it is below ``max_ratio``
    (uncapped, one epoch of sparsity learning left VGG-8's first conv 2 channels of 32); one
    global step may take it past the cap, not further."""
    import torch

    from autoprune.tasks.models import cifar_resnet

    torch.manual_seed(0)
    dense = cifar_resnet(8, (8, 16, 16)).eval()
    x = torch.randn(1, 1, 12, 12)
    batches = [(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))) for _ in range(2)]
    widths = {n: m.out_channels for n, m in dense.named_modules()
              if isinstance(m, torch.nn.Conv2d)}
    kept = {}
    for cap in (1.0, 0.5):
        _, info = _peers().groupnorm_recipe(dense, x, batches, 0.05, sl_steps=1,
                                            log=lambda m: None, max_ratio=cap)
        kept[cap] = info["kept"]  # each conv's share of its channels
    assert set(kept[1.0]) == set(widths)
    floor = {n: 0.5 - 1 / w for n, w in widths.items()}  # the cap, less one channel
    assert all(kept[0.5][n] >= floor[n] for n in widths)  # capped: none far past 0.5 ...
    assert any(kept[1.0][n] < floor[n] for n in widths)  # ... as the uncapped recipe goes here


def test_selection_replay_swaps_to_the_peer_fine_tuned_with_the_same_plan_and_seed():
    """benchmarks/selection_replay.py: where the one-SE rule keeps a one-liner, a FLOPs cell
    reads that one-liner's final accuracy off the peer row of the same final seed, and a
    latency cell off --finetuned (or says it is not measured)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import selection_replay as sel

    base = {"kind": "flops", "budget": 0.15, "method": "autoprune", "final_seed": 7,
            "chosen_trial": 9, "chosen_baseline": None, "flops_ratio": 0.15,
            "baselines": {"uniform-l2": {"state": "COMPLETE", "val": 0.9170},  # 0.30 behind
                          "global-l2": {"state": "COMPLETE", "val": 0.9190}}}
    peers = {"uniform-l2": {"test_acc": 0.9300}, "global-l2": {"test_acc": 0.9280}}
    # 5000 validation images at 0.92: one SE = 0.38 point, so uniform (0.30 behind) is kept
    near = sel.replay_row({**base, "chosen_val": 0.9200, "test_acc": 0.9290}, 5000, peers, {},
                          ("vgg8", "flops", 0.15, 0))
    assert near["rule"] == "uniform-l2" and near["rule_test"] == 0.9300
    far = sel.replay_row({**base, "chosen_val": 0.9250, "test_acc": 0.9290}, 5000, peers, {},
                         ("vgg8", "flops", 0.15, 0))  # 0.80 ahead of uniform, 0.60 of global
    assert far["rule"] == "the same" and far["rule_test"] == 0.9290
    lat = {**base, "kind": "latency", "budget": 0.5, "chosen_val": 0.9200, "test_acc": 0.9290}
    key = ("vgg8", "latency", 0.5, 0)
    assert sel.replay_row(lat, 5000, {}, {}, key)["rule_test"] is None
    assert sel.replay_row(lat, 5000, {}, {(*key, "uniform-l2"): 0.9311}, key)["rule_test"] \
        == 0.9311
    cell = sel.summarise(("vgg8", "flops", 0.15), [{**near, "peers": {"uniform-l2": 0.93,
                                                                      "global-l2": 0.928}}])
    assert cell["best_peer"] == "uniform-l2" and cell["swapped"] == 1
    assert cell["before"][0] == pytest.approx(-0.10) and cell["after"][0] == pytest.approx(0.0)


def test_front_check_replay_finds_the_runs_whose_pick_the_front_check_changes(tmp_path):
    """benchmarks/front_check_replay.py reads kept run directories: a run where a cheaper
    candidate matches the uniform baseline on validation changes its pick, one where none does
    keeps it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import front_check_replay as fcr

    from autoprune.results import RunDir
    from autoprune.trial import TrialRecord

    def run(name: str, cheap_flops: float) -> None:
        r = RunDir.create(tmp_path / name)
        r.write_config({"budget": {"flops": 0.4}})
        r.write_baseline({"dense": {"macs": 1e6, "params": 1e4, "val_size": 216},
                          "budget": {"flops": 0.4}})
        r.write_trials([
            TrialRecord(0, "COMPLETE", 0.398, 0.35, val_acc=0.963, fidelity=1.0,
                        baseline="uniform-l2"),
            TrialRecord(1, "COMPLETE", cheap_flops, 0.2, val_acc=0.963, fidelity=1.0),
            TrialRecord(2, "COMPLETE", 0.39, 0.35, val_acc=0.9676, fidelity=1.0)])

    run("digits-cheap", 0.235)
    run("digits-close", 0.39)  # 2 % cheaper: within the margin
    out = tmp_path / "replay.md"
    fcr.main([str(tmp_path), "--out", str(out)])
    rows = {r["run"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    cheap = rows["digits-cheap"]
    assert cheap["one_se"] == 0 and cheap["changed"] == ["0.02", "0.05", "0.1"]
    assert cheap["front_checked"]["0.05"] == 2  # the best: there is no global baseline
    assert rows["digits-close"]["changed"] == ["0.02"] and rows["digits-close"]["one_se"] == 0
    assert "margin 0.05: the front check changes the pick in 1 of 2" in out.read_text()


def test_refit_keeps_the_kept_shares_in_proportion_and_lands_on_the_budget():
    """On a linear cost (each group's FLOPs share times its kept share) the refit has a closed
    form: s = (target - fixed cost) / sum(w * kept), unless a group reaches a bound."""
    refit_kept = _bench("refit_plans").refit_kept
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}

    def flops_of(ratios):
        return sum(w * (1.0 - ratios[n]) for n, w in weights.items())

    ratios = refit_kept({"a": 0.5, "b": 0.2, "c": 0.0}, flops_of, 0.3)
    s = 0.3 / (0.5 * 0.5 + 0.3 * 0.8 + 0.2 * 1.0)
    assert ratios == pytest.approx({"a": 1 - 0.5 * s, "b": 1 - 0.8 * s, "c": 1 - s}, abs=1e-9)
    assert flops_of(ratios) <= 0.3
    held = refit_kept({"a": 0.5, "b": 0.2, "c": 0.0}, flops_of, 0.3, fixed={"a": 0.9})
    s = (0.3 - 0.5 * 0.1) / (0.3 * 0.8 + 0.2 * 1.0)
    assert held == pytest.approx({"a": 0.9, "b": 1 - 0.8 * s, "c": 1 - s}, abs=1e-9)
    grown = refit_kept({"a": 0.0, "b": 0.5, "c": 0.5}, flops_of, 0.9)  # a cannot grow past 1
    assert grown["a"] == 0.0 and grown["b"] == pytest.approx(grown["c"])
    assert flops_of(grown) == pytest.approx(0.9, abs=1e-9)
    with pytest.raises(ValueError, match="below the plan's floor"):
        refit_kept({"a": 0.5, "b": 0.2, "c": 0.0}, flops_of, 0.01, floor=0.05)


def test_refit_plans_refuses_a_bad_fix_or_cell_before_loading_a_model(tmp_path, capsys):
    """Each bad argument is named with the expected form, and nothing is written."""
    main = _bench("refit_plans").main
    common = ["--rows", str(tmp_path / "rows.json"), "--flops", "0.15", "--out-dir",
              str(tmp_path / "out")]
    for fix, said in (("features.10.0=1.5", "the ratio must be in [0, 1)"),
                      ("features.10.0", "expected NAME=RATIO")):
        with pytest.raises(SystemExit):
            main([*common, "--cell", "flops:0.3", "--fix", fix])
        assert said in capsys.readouterr().err
    row = {"kind": "flops", "budget": 0.3, "method": "autoprune", "seed": 1, "final_seed": 1000,
           "plan": {"ratios": {}}, "test_acc": 0.9}  # seed 1's plan only
    (tmp_path / "rows.json").write_text(json.dumps({"results": [{"runs": [row]}]}))
    with pytest.raises(SystemExit, match="expected KIND:BUDGET"):
        main([*common, "--cell", "flops"])
    with pytest.raises(SystemExit, match=r"no autoprune plan in cell flops:0.3 for seeds \[0\]"):
        main([*common, "--cell", "flops:0.3"])
    assert not (tmp_path / "out").exists()

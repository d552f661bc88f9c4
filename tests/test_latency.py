"""measure(): counted costs, latency statistics, the shape-signature cache."""

from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch
import torch_pruning as tp
from conftest import Residual

import autoprune as ap
from autoprune.errors import ConfigError
from autoprune.latency import LatencyCache, shape_signature


def test_measure_counts_like_torch_pruning_and_times(image):
    model = Residual().eval()
    cost = ap.measure(model, image, repeats=5, warmup=1)
    macs, params = tp.utils.count_ops_and_params(model, image)
    assert cost.macs == macs and cost.params == params
    assert cost.flops == 2 * macs
    assert cost.latency_ms > 0 and cost.latency_iqr_ms >= 0
    assert cost.to_dict()["latency_cv"] is not None


def test_measure_batch_and_dtype_and_no_side_effects(image):
    model = Residual().train()
    cost = ap.measure(model, image, batch_size=4, dtype="bfloat16", repeats=3, warmup=1)
    assert cost.batch_size == 4 and cost.dtype == "bfloat16"
    assert model.training and next(model.parameters()).dtype == torch.float32


def test_cache_by_shape_signature(image):
    cache = LatencyCache()
    a, b = Residual(), Residual()  # same architecture, different weights
    assert shape_signature(a) == shape_signature(b)
    first = ap.measure(a, image, repeats=3, warmup=1, cache=cache)
    second = ap.measure(b, image, repeats=3, warmup=1, cache=cache)
    assert len(cache) == 1 and first.latency_ms == second.latency_ms
    pruned = ap.apply_plan(a, image, ap.PruningPlan({"mid": 0.5}))
    assert shape_signature(pruned) != shape_signature(a)


def test_bad_arguments(image):
    with pytest.raises(ConfigError, match="dtype='int4'"):
        ap.measure(Residual(), image, dtype="int4")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            ap.measure(Residual(), image, device="cuda")


needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime")),
    reason='pip install "autoprune[onnx]"')


@needs_onnx
def test_onnxruntime_times_the_exported_model_and_caches_per_runtime(image):
    cache = LatencyCache()
    model = Residual()
    eager = ap.measure(model, image, repeats=3, warmup=1, cache=cache)
    ort = ap.measure(model, image, repeats=3, warmup=1, cache=cache, runtime="onnxruntime")
    assert len(cache) == 2 and ort.runtime == "onnxruntime" and eager.runtime == "eager"
    assert ort.latency_ms > 0 and ort.extra["prepare_s"] > 0 and "prepare_s" not in eager.extra
    assert ort.to_dict()["runtime"] == "onnxruntime"
    again = ap.measure(Residual(), image, repeats=3, warmup=1, cache=cache, runtime="onnxruntime")
    assert again.latency_ms == ort.latency_ms and again.extra["prepare_s"] == 0.0  # cached


def test_runtime_is_checked(image):
    with pytest.raises(ConfigError, match="'tensorrt' is not one of eager, compile, onnxruntime"):
        ap.measure(Residual(), image, runtime="tensorrt")
    from autoprune.latency.runtimes import check_runtime

    with pytest.raises(ConfigError, match="times on the CPU, not 'cuda:0'"):
        check_runtime("onnxruntime", "cuda:0")
    with pytest.raises(ConfigError, match="float32"):
        ap.measure(Residual(), image, dtype="bfloat16", runtime="onnxruntime")
    # counting alone runs in no runtime: a search that does not time (FLOPs cells fine-tuned on
    # a GPU with the CPU runtime configured) must not be refused for it
    counted = ap.measure(Residual(), image, dtype="bfloat16", runtime="onnxruntime",
                         latency=False)
    assert counted.latency_ms is None and counted.macs > 0


@pytest.mark.slow
def test_compile_runtime_compiles_every_candidate_past_dynamos_recompile_limit():
    # a search's candidates share their classes' forward code; dynamo compiles one code object
    # 8 times, then silently runs it eager: the 9th candidate on was timed eager
    from torch._dynamo.utils import counters

    from autoprune.latency.runtimes import prepare

    x = torch.randn(1, 3, 8, 8)
    graphs = []
    with torch.inference_mode():
        for width in range(1, 12):
            model = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(),
                                        torch.nn.Conv2d(width, 2, 3)).eval()
            prepared = prepare(model, x, "compile")
            torch.testing.assert_close(prepared.run(), model(x))
            graphs.append(counters["stats"]["unique_graphs"])
    assert [b - a for a, b in itertools.pairwise(graphs)] == [1] * 10, graphs


@pytest.mark.slow
def test_compile_runtime_compiles_once_and_times(image):
    from autoprune.latency.runtimes import prepare

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    with torch.inference_mode():
        prepared = prepare(model, image, "compile")
        torch.testing.assert_close(prepared.run(), model(image))
    assert prepared.prepare_s > 0 and prepared.runtime == "compile"


def _counting_prepare(monkeypatch) -> list[str]:
    """Replace the runtimes' ``prepare`` (an export or a compile) by one that records the
    architecture it prepares and runs the model eagerly."""
    from autoprune.latency import runtimes, timing

    calls: list[str] = []

    def prepare(model, inputs, runtime):
        calls.append(shape_signature(model))
        return runtimes.Prepared(lambda: model(inputs), 0.0, runtime)

    monkeypatch.setattr(timing, "prepare", prepare)
    return calls


def test_prepared_models_prepare_an_architecture_timed_again_once(monkeypatch, image):
    from autoprune.latency import LatencyTarget, PreparedModels, time_alternating

    calls = _counting_prepare(monkeypatch)
    target, kept = LatencyTarget(runtime="compile"), PreparedModels()
    a, b = Residual().eval(), Residual().eval()  # two objects, one architecture
    wide = ap.analyze(Residual().eval(), image)
    narrow = wide.apply(ap.PruningPlan({g.name: 0.5 for g in wide.groups})).eval()
    for models in ({"a": a}, {"a": a, "b": b}, {"n": narrow}, {"b": b, "n": narrow}):
        kept.time_alternating(models, image, target, rounds=1, repeats=1)
    assert calls == [shape_signature(a), shape_signature(narrow)] and kept.hits == 4
    time_alternating({"a": a}, image, target, rounds=1, repeats=1)  # none given: prepared anew
    kept.time_alternating({"a": a}, image, LatencyTarget(runtime="eager"), rounds=1,
                          repeats=1)  # eager: nothing worth keeping
    assert len(calls) == 4 and len(kept) == 2 and kept.hits == 4


def test_prepared_models_keep_the_most_recent_within_their_capacity(monkeypatch, image):
    import pickle

    from autoprune.latency import LatencyTarget, PreparedModels

    calls = _counting_prepare(monkeypatch)
    wide = Residual().eval()
    an = ap.analyze(wide, image)
    narrow = an.apply(ap.PruningPlan({g.name: 0.5 for g in an.groups})).eval()
    params = sum(p.numel() for p in wide.parameters())
    kept = PreparedModels(capacity=params)  # room for one of the two

    def time(model):
        kept.time_alternating({"m": model}, image, LatencyTarget(runtime="compile"),
                              rounds=1, repeats=1)

    for model in (wide, narrow, wide, wide):
        time(model)
    assert len(calls) == 3 and len(kept) == 1 and kept.hits == 1  # narrow evicted wide
    again = pickle.loads(pickle.dumps(kept))
    assert again.capacity == params and len(again) == 0
    with pytest.raises(ConfigError, match="capacity=-1"):
        PreparedModels(capacity=-1)


def test_a_pinned_architecture_is_never_evicted(monkeypatch, image):
    """The dense reference is timed beside every candidate: pinned, a candidate that fills the
    capacity evicts the others, never it (unpinned, the test above prepares it again)."""
    import pickle

    from autoprune.latency import LatencyTarget, PreparedModels

    calls = _counting_prepare(monkeypatch)
    wide = Residual().eval()
    an = ap.analyze(wide, image)
    half, third = (an.apply(ap.PruningPlan({g.name: r for g in an.groups})).eval()
                   for r in (0.5, 0.7))
    kept = PreparedModels(capacity=sum(p.numel() for p in wide.parameters()))
    kept.pin(wide)
    for model in (wide, half, third, wide, half):
        kept.time_alternating({"m": model}, image, LatencyTarget(runtime="compile"),
                              rounds=1, repeats=1)
    signatures = [shape_signature(m) for m in (wide, half, third, half)]
    assert calls == signatures and kept.hits == 1 and len(kept) == 2  # wide and the newest
    assert pickle.loads(pickle.dumps(kept))._pinned == {shape_signature(wide)}

"""The export formats on a small pruned model (no search): ``pt2`` reloads exactly at two batch
sizes and carries its plan; ONNX files carry plan and version in ``metadata_props`` and say which
exporter wrote them; TorchScript is labelled legacy; every file is mode 0644 under umask 022."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import autoprune as ap
from autoprune.deploy import onnx_file
from autoprune.deploy.formats import PT2_EXTRA, RELOAD_TOLERANCE, Inputs, write
from autoprune.deploy.onnx_file import ONNX_TOLERANCE, PLAN_KEY, VERSION_KEY
from autoprune.tasks.models import lenet5

needs_onnx = pytest.mark.skipif(
    None in (importlib.util.find_spec("onnx"), importlib.util.find_spec("onnxruntime")),
    reason='needs onnx and onnxruntime (pip install "autoprune[onnx]")')


@pytest.fixture(scope="module")
def pruned() -> tuple[torch.nn.Module, ap.PruningPlan, Inputs]:
    torch.manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    plan = ap.PruningPlan({"conv1": 0.5, "conv2": 0.25})
    model = ap.apply_plan(lenet5(), x[:1], plan).eval()
    return model, plan, Inputs(x[:1], (x,))


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_pt2_reloads_and_matches_at_two_batch_sizes_with_its_plan(pruned, tmp_path, umask_022):
    model, plan, inputs = pruned
    path = tmp_path / "m.pt2"
    metrics = write("pt2", model, path, inputs, plan=plan)
    assert metrics["checked_with"] == "torch.export.load"
    assert metrics["check_batches"] == [1, 32] and metrics["max_abs_diff"] <= RELOAD_TOLERANCE
    assert metrics["format_status"] == "recommended"
    assert _mode(path) == 0o644
    extra = {PT2_EXTRA: ""}
    program = torch.export.load(path, extra_files=extra).module()
    meta = json.loads(extra[PT2_EXTRA])
    assert ap.PruningPlan.from_dict(meta["plan"]) == plan
    assert meta["autoprune"] == ap.__version__
    for n in (1, 5, 32):  # sizes it was never checked at too: the batch is dynamic
        x = torch.randn(n, 1, 28, 28)
        with torch.no_grad():
            assert (program(x) - model(x)).abs().max() <= RELOAD_TOLERANCE
    assert program(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_pt2_mismatch_is_refused_and_nothing_written(pruned, tmp_path):
    _, plan, inputs = pruned
    bad = ap.apply_plan(lenet5(), inputs.example, plan).eval()
    with torch.no_grad():
        bad.fc3.bias.fill_(float("nan"))
    path = tmp_path / "nan.pt2"
    with pytest.raises(ap.UnsupportedModelError, match=r"pt2.*differs from PyTorch by nan"):
        write("pt2", bad, path, inputs, plan=plan)
    assert not path.exists()


def _metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


@needs_onnx
def test_onnx_carries_plan_and_version_and_names_its_exporter(pruned, tmp_path, umask_022):
    model, plan, inputs = pruned
    path = tmp_path / "m.onnx"
    metrics = write("onnx", model, path, inputs, plan=plan)
    want = "dynamo" if importlib.util.find_spec("onnxscript") else "legacy"
    assert metrics["onnx_exporter"] == want, metrics.get("onnx_exporter_fallback")
    assert metrics["max_abs_diff"] <= ONNX_TOLERANCE
    meta = _metadata(path)
    assert ap.PruningPlan.from_json(meta[PLAN_KEY]) == plan
    assert meta[VERSION_KEY] == ap.__version__
    assert _mode(path) == 0o644
    x = torch.randn(3, 1, 28, 28)  # the batch is dynamic
    with torch.no_grad():
        assert (_ort(path, x) - model(x)).abs().max() <= ONNX_TOLERANCE


@needs_onnx
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_a_fixed_batch_export_has_the_dynamic_files_operators_and_outputs(pruned, monkeypatch,
                                                                          exporter):
    """What latency timing exports (``dynamic_batch=False``): the batch is a constant, and the
    operators and the outputs are the deployed (dynamic) file's, so it runs as fast."""
    import onnx

    model, _, inputs = pruned
    if exporter == "legacy":
        monkeypatch.setitem(sys.modules, "onnxscript", None)
    x = inputs.example
    files = {dynamic: onnx.load_from_string(onnx_file.onnx_bytes(model, (x,), {}, dynamic)[0])
             for dynamic in (True, False)}
    dims = {dynamic: f.graph.input[0].type.tensor_type.shape.dim[0] for dynamic, f in
            files.items()}
    dims = {dynamic: d.dim_value or d.dim_param for dynamic, d in dims.items()}
    assert isinstance(dims[True], str) and dims[False] == 1
    ops = {dynamic: sorted(n.op_type for n in f.graph.node if n.op_type != "Constant")
           for dynamic, f in files.items()}
    assert ops[False] == ops[True]
    out = onnx_file.run_onnx(files[False].SerializeToString(), ["input"], (x,))
    with torch.no_grad():
        assert out is not None and (out[0] - model(x)).abs().max() <= ONNX_TOLERANCE


@needs_onnx
@pytest.mark.parametrize("why", ["no onnxscript", "dynamo fails"])
def test_onnx_falls_back_to_the_legacy_exporter_and_says_so(pruned, tmp_path, monkeypatch, why):
    model, plan, inputs = pruned
    if why == "no onnxscript":
        monkeypatch.setitem(sys.modules, "onnxscript", None)  # find_spec -> None
    else:
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())

        def broken(*args: object) -> bytes:
            raise RuntimeError("an op the dynamo exporter cannot translate")

        monkeypatch.setattr(onnx_file, "_dynamo", broken)
    path = tmp_path / "legacy.onnx"
    metrics = write("onnx", model, path, inputs, plan=plan)
    assert metrics["onnx_exporter"] == "legacy"
    assert ("onnxscript" if why == "no onnxscript" else "cannot translate") \
        in metrics["onnx_exporter_fallback"]
    assert ap.PruningPlan.from_json(_metadata(path)[PLAN_KEY]) == plan


def test_torchscript_is_labelled_legacy(pruned, tmp_path, umask_022):
    model, plan, inputs = pruned
    path = tmp_path / "m.torchscript.pt"
    metrics = write("torchscript", model, path, inputs, plan=plan)
    assert metrics["format_status"] == "legacy"
    assert _mode(path) == 0o644

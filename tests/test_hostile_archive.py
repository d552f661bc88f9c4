"""Issue 15, item 8 and the TorchScript part of item 7: crafted archives and hostile layer names.

Every crafted archive is a real, small archive (LeNet-5 pruned by ``apply_plan``) with one part
edited; each must end in one :class:`ConfigError` line that names the file, never in a raw
exception, a download, a code execution or a huge allocation.
"""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.deploy import archive, archive_checks
from autoprune.deploy.archive_checks import INPUT_DTYPES, check_input_spec, make_inputs
from autoprune.deploy.formats import Archived, Inputs, write
from autoprune.errors import ConfigError, UnsupportedModelError
from autoprune.tasks.models import lenet5

LENET = "autoprune.tasks.models:lenet5"


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A real archive and its contents (the crafted files are edits of it)."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    plan = ap.PruningPlan({"conv1": 0.5, "fc1": 0.5})
    pruned = ap.apply_plan(lenet5(), x, plan).eval()
    path = ap.save_pruned(pruned, tmp_path_factory.mktemp("real") / "real.pt", x, LENET,
                          {"num_classes": 10}, plan=plan)
    return path, torch.load(path, weights_only=True)


def _craft(real: tuple[Path, dict[str, Any]], tmp_path: Path, drop: str = "",
           **changes: Any) -> Path:
    archive = {k: v for k, v in real[1].items() if k != drop}
    archive.update(changes)
    path = tmp_path / "crafted.pt"
    torch.save(archive, path)
    return path


def _refused(path: Path, match: str, **kwargs: Any) -> str:
    """``load_pruned(path)`` raises ConfigError: one line, naming the file, matching ``match``."""
    with pytest.raises(ConfigError, match=match) as info:
        ap.load_pruned(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


def test_the_real_archive_loads_and_matches(real):
    """The oracle the crafted files are edited from: unedited, it loads and reproduces."""
    path, archive = real
    model = ap.load_pruned(path)
    assert model.conv1.out_channels == 3 and model.fc1.out_features == 60
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in archive["state_dict"].items())
    assert model.autoprune_plan == ap.PruningPlan({"conv1": 0.5, "fc1": 0.5})


def _zip_without_torch_layout() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("x", "y")
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["empty", "truncated", "text", "random", "zip", "tail"])
def test_unreadable_files_are_one_line(real, tmp_path, damage):
    data = real[0].read_bytes()
    content = {"empty": b"", "truncated": data[: len(data) // 2], "text": b"hello\n",
               "random": os.urandom(4096), "zip": _zip_without_torch_layout(),
               "tail": data[:-200]}[damage]
    path = tmp_path / f"{damage}.pt"
    path.write_bytes(content)
    _refused(path, r"not a readable torch file|refusing to load|not an autoprune archive")


def test_malicious_reduce_does_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"format": "autoprune.pruned/1", "payload": Evil()}, path)
    _refused(path, "refusing to load")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the oracle: the payload is real and does run
    assert marker.exists()


@pytest.mark.parametrize("content", [[1, 2], {"format": "other/1"}, "text", 5])
def test_not_an_autoprune_archive(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    _refused(path, "not an autoprune archive")


@pytest.mark.parametrize("key", ["builder", "builder_kwargs", "example_inputs", "history",
                                 "state_dict"])
def test_missing_keys_are_named(real, tmp_path, key):
    _refused(_craft(real, tmp_path, drop=key), f"archive key '{key}' is missing")


WRONG_TYPES = [
    ("builder", 5, "'builder' holds int"),
    ("builder", "no-colon", "not a 'module:callable'"),
    ("builder", "a:b:c", "not a 'module:callable'"),
    ("builder_kwargs", [1, 2], "'builder_kwargs' holds list"),
    ("builder_kwargs", {"num_classes": torch.ones(1)}, "holds Tensor"),
    ("builder_kwargs", {1: 2}, "int key"),
    ("example_inputs", "x", "'example_inputs' holds str"),
    ("example_inputs", {"shape": "abc", "dtype": "torch.float32"}, "shape"),
    ("example_inputs", {"shape": [1, 1, 28, 28]}, "example_inputs holds dict"),
    ("example_inputs", {"shape": [1, 1, 28, 28], "dtype": 5}, "dtype '5'"),
    ("example_inputs", {"__dict__": {1: {"shape": [1], "dtype": "float32"}}}, "non-str keys"),
    ("history", "conv1", "'history' holds str"),
    ("history", [["conv1", "yes", [0]]], r"history\[0\]"),
    ("history", [["conv1", True, [-1]]], r"history\[0\]"),
    ("history", [["conv1", True, ["a"]]], r"history\[0\]"),
    ("history", [["conv1", True]], r"history\[0\]"),
    ("history", [5], r"history\[0\]"),
    ("state_dict", [1], "'state_dict' holds list"),
    ("state_dict", {"conv1.weight": 5}, "not a tensor"),
    ("plan", 5, "'plan' holds int"),
    ("plan", "not json", "state_dict or plan"),
    ("plan", '{"bad": 1}', "state_dict or plan"),
    ("format", 5, "not an autoprune archive"),
]


@pytest.mark.parametrize(("key", "value", "match"), WRONG_TYPES,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(WRONG_TYPES)])
def test_wrong_types_for_every_key(real, tmp_path, key, value, match):
    _refused(_craft(real, tmp_path, **{key: value}), match)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"nonsense": 1}, "TypeError"),
    ({"num_classes": "ten"}, "TypeError"),
    ({"num_classes": -3}, "at least 2 classes"),
])
def test_wrong_builder_kwargs(real, tmp_path, kwargs, match):
    _refused(_craft(real, tmp_path, builder_kwargs=kwargs), rf"rejects builder_kwargs.*{match}")


def test_state_dict_and_history_that_do_not_fit(real, tmp_path):
    state = dict(real[1]["state_dict"])
    state["fc3.weight"] = torch.zeros(3, 3)
    _refused(_craft(real, tmp_path, state_dict=state), "size mismatch")
    state = {k: v for k, v in real[1]["state_dict"].items() if k != "conv1.bias"}
    _refused(_craft(real, tmp_path, state_dict=state), "Missing key")
    _refused(_craft(real, tmp_path, history=[["nope", True, [0]]]), "does not fit")
    _refused(_craft(real, tmp_path, history=[["conv1", True, [10**9]]]), "does not fit")
    spec = {"shape": [1, 3, 28, 28], "dtype": "torch.float32"}  # 3 channels into a 1-channel net
    _refused(_craft(real, tmp_path, example_inputs=spec), "does not fit")


@pytest.mark.parametrize("builder", ["os:system", "builtins:eval", "subprocess:Popen",
                                     "torchvision.models:__builtins__.eval",
                                     "autoprune.tasks.models:torch.load"])
def test_builders_outside_the_allow_list(real, tmp_path, builder):
    _refused(_craft(real, tmp_path, builder=builder), "refusing to call it")


# -- no network --------------------------------------------------------------------------------
class NetworkAttempt(BaseException):  # not an Exception: no `except Exception` hides it
    """Raised by every patched network entry point."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise NetworkAttempt(repr(args)[:200])

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached weights
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", refuse)


FETCHING = [
    ("torchvision.models:resnet18", {"weights": "IMAGENET1K_V1"}),
    ("torchvision.models:resnet18", {"weights": "DEFAULT"}),
    ("torchvision.models:resnet18", {"weights": "ResNet18_Weights.IMAGENET1K_V1"}),
    ("torchvision.models:resnet18", {"pretrained": True}),
    ("torchvision.models.detection:fasterrcnn_resnet50_fpn", {"weights_backbone": "IMAGENET1K_V1"}),
    ("torchvision.models.detection:fasterrcnn_resnet50_fpn", {"pretrained_backbone": True}),
    ("torchvision.models:resnet18", {"num_classes": 10, "other": ["IMAGENET1K_V2"]}),
    ("torchvision.models:resnet18", {"norm": {"w": "https://example.com/w.pth"}}),
]


@pytest.mark.parametrize(("builder", "kwargs"), FETCHING, ids=[str(k) for _, k in FETCHING])
def test_weight_fetching_kwargs_are_refused_before_any_network(real, tmp_path, no_network,
                                                               builder, kwargs):
    path = _craft(real, tmp_path, builder=builder, builder_kwargs=kwargs)
    _refused(path, r"would download pretrained weights.*trust=True")
    _refused(path, "would download", builders={builder: lenet5})  # the kwargs are the file's


def test_trust_true_is_what_lets_a_download_through(real, tmp_path, no_network):
    """The oracle: with trust=True the same file does reach the (patched) network."""
    path = _craft(real, tmp_path, builder="torchvision.models:resnet18",
                  builder_kwargs={"weights": "IMAGENET1K_V1"})
    with pytest.raises(NetworkAttempt):
        ap.load_pruned(path, trust=True)


def test_weights_none_and_false_are_no_fetch(real, tmp_path, no_network):
    seen = []

    def make(weights: Any = None, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        seen.append((weights, pretrained))
        return lenet5(**kwargs)

    path = _craft(real, tmp_path, builder="mine:make",
                  builder_kwargs={"num_classes": 10, "weights": None, "pretrained": False})
    model = ap.load_pruned(path, builders={"mine:make": make})
    assert seen == [(None, False)] and model.conv1.out_channels == 3


# -- example inputs and model size ---------------------------------------------------------------
class Allocation(BaseException):  # not an Exception: no `except Exception` hides it
    """Raised by the patched steps that would allocate inputs or build the model."""


@pytest.fixture
def no_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example inputs are never made and the model never built for real."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise Allocation(f"{args!r:.100}")

    monkeypatch.setattr(archive, "make_inputs", refuse)
    monkeypatch.setattr(archive, "_rebuild", refuse)


def test_no_allocation_fixture_does_intercept(real, no_allocation):
    """The oracle of the two tests below: a sound archive does reach the patched steps."""
    with pytest.raises(Allocation):
        ap.load_pruned(real[0])


HUGE_INPUTS = [
    ({"shape": [1024, 1024, 1024, 1024], "dtype": "torch.float32"}, "1099511627776 elements"),
    ({"shape": [1, 3, 2**20, 2**20], "dtype": "torch.float32"}, "shape"),  # 12 TB
    ({"shape": [5, 4096, 4096], "dtype": "torch.float32"}, "elements"),
    ({"shape": [1, 1, 4097, 28], "dtype": "torch.float32"}, "shape"),
    ({"shape": [1, -1, 28, 28], "dtype": "torch.float32"}, "shape"),
    ({"shape": [True, 1, 28, 28], "dtype": "torch.float32"}, "shape"),
    ({"shape": [1] * 9, "dtype": "torch.float32"}, "shape"),
    ([{"shape": [4096, 4096], "dtype": "uint8"}] * 5, "elements"),
    ([{"shape": [1], "dtype": "float32"}] * 65, "more than 64"),
    ([[[[[[{"shape": [1], "dtype": "float32"}]]]]]], "nested deeper"),
    ({"shape": [1, 1, 28, 28], "dtype": "torch.complex64"}, "dtype"),
    ({"shape": [1, 1, 28, 28], "dtype": "torch.Tensor"}, "dtype"),
    ({"shape": [1, 1, 28, 28], "dtype": "__class__"}, "dtype"),
]


@pytest.mark.parametrize(("spec", "match"), HUGE_INPUTS,
                         ids=[f"{i}-{m}" for i, (_, m) in enumerate(HUGE_INPUTS)])
def test_example_inputs_are_bounded_before_allocation(real, tmp_path, no_allocation, spec,
                                                      match):
    _refused(_craft(real, tmp_path, example_inputs=spec), match)


def test_every_allowed_dtype_and_the_largest_shape_pass():
    for dtype in sorted(INPUT_DTYPES):
        spec = {"shape": [2, 3], "dtype": f"torch.{dtype}"}
        check_input_spec(spec, "x")
        assert make_inputs(spec).dtype == getattr(torch, dtype)
    check_input_spec({"shape": [4, 4096, 4096], "dtype": "uint8"}, "x")  # exactly 2**26
    check_input_spec({"__dict__": {"a": {"shape": [1], "dtype": "int64"}}}, "x")
    assert archive_checks.MAX_INPUT_ELEMENTS == 2**26


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = lenet5()
    with pytest.raises(ConfigError, match="dtype complex64"):
        ap.save_pruned(model, tmp_path / "c.pt", torch.zeros(1, 1, 28, 28, dtype=torch.complex64),
                       LENET, history=[])
    with pytest.raises(ConfigError, match="shape"):
        ap.save_pruned(model, tmp_path / "c.pt", torch.zeros(1, 1, 5000, 1), LENET, history=[])
    assert not (tmp_path / "c.pt").exists()


def test_a_dense_model_of_any_size_is_refused_before_it_is_built(real, tmp_path, no_allocation):
    path = _craft(real, tmp_path, builder_kwargs={"num_classes": 10**9})  # 84e9 weights
    _refused(path, r"dense model of \d+ elements, more than")


# -- export: hostile layer names and NaN ---------------------------------------------------------
class Named(nn.Module):
    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.d = nn.ModuleDict({key: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())})
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.d[self.key](x).mean((2, 3)))


def _inputs() -> Inputs:
    x = torch.randn(2, 1, 8, 8)
    return Inputs(x, (x,))


@pytest.mark.parametrize("key", ["x<'=\"y", "a\nb", 'say "hi"', "back\\slash"])
def test_torchscript_of_hostile_layer_names_is_one_line(tmp_path, key):
    path = tmp_path / "m.torchscript.pt"
    with pytest.raises(ConfigError, match=r"--format torchscript: .*use --format onnx") as info:
        write("torchscript", Named(key).eval(), path, _inputs())
    assert "\n" not in str(info.value) and repr(f"d.{key}") in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize("key", ["<'=", "<script>'x'</script>", "a'=b"])
def test_torchscript_of_names_it_can_spell_still_exports(tmp_path, key):
    path = tmp_path / "m.torchscript.pt"
    metrics = write("torchscript", Named(key).eval(), path, _inputs())
    assert path.is_file() and metrics["max_abs_diff"] <= 1e-5


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs onnx")
def test_the_suggested_onnx_format_takes_the_hostile_name(tmp_path):
    path = tmp_path / "m.onnx"
    write("onnx", Named("x<'=\"y").eval(), path, _inputs())
    assert path.is_file()


def _nan_lenet() -> tuple[nn.Module, Archived]:
    plan = ap.PruningPlan({"conv1": 0.5})
    model = ap.apply_plan(lenet5(), torch.randn(1, 1, 28, 28), plan).eval()
    return model, Archived((LENET, {"num_classes": 10}), plan)


@pytest.mark.parametrize("fmt", ["pt", "torchscript", "onnx"])
def test_nan_output_is_a_mismatch_in_every_format(tmp_path, fmt):
    if fmt == "onnx" and None in (importlib.util.find_spec("onnx"),
                                  importlib.util.find_spec("onnxruntime")):
        pytest.skip("needs onnx and onnxruntime")
    model, archived = _nan_lenet()
    x = torch.randn(2, 1, 28, 28)
    inputs = Inputs(x[:1], (x,))
    finite = tmp_path / f"finite.{fmt}"
    assert write(fmt, model, finite, inputs, archived)["max_abs_diff"] <= 1e-4  # the oracle
    with torch.no_grad():
        model.fc3.bias.fill_(float("nan"))
    path = tmp_path / f"nan.{fmt}"
    with pytest.raises(UnsupportedModelError, match=r"differs from PyTorch by nan"):
        write(fmt, model, path, inputs, archived)
    assert not path.exists()

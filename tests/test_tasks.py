"""Tests of autoprune.tasks: splits, dense training + cache, models, IDX parsing, task loading."""

from __future__ import annotations

import gzip
import json
import shlex
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.tasks import (
    ClassificationTask,
    DigitsTask,
    FashionMNISTTask,
    Splits,
    Task,
    TaskOptions,
    _train,
    cifar_resnet,
    lenet5,
    load_task,
    vgg_small,
)
from autoprune.tasks.fashion_mnist import DEFAULT_DATA_DIR, FILES, read_idx

# --------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("autoprune-cache")


@pytest.fixture(scope="session")
def digits_task(digits_cache: Path) -> DigitsTask:
    """Trains the digits dense model once per test session (seconds) into a temporary cache."""
    task = DigitsTask(seed=0, cache_dir=digits_cache)
    task.dense_model()
    return task


def test_digits_splits_are_disjoint_stratified_and_deterministic() -> None:
    a, b, other = DigitsTask(seed=0), DigitsTask(seed=0), DigitsTask(seed=1)
    sizes = {k: len(v) for k, v in a.indices.items()}
    assert sizes == {"train": 1221, "val": 216, "test": 360}
    train, val, test = (set(a.indices[k].tolist()) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(range(1797))
    for key in a.indices:
        np.testing.assert_array_equal(a.indices[key], b.indices[key])
    assert not np.array_equal(a.indices["test"], other.indices["test"])
    labels = torch.cat([y for _, y in a.splits().test])
    assert torch.bincount(labels).min() >= 35  # stratified: every digit is in the test split
    assert len(a.splits().train.dataset) == 1221


def test_digits_is_a_task_with_example_inputs(digits_task: DigitsTask) -> None:
    assert isinstance(digits_task, Task)
    assert isinstance(digits_task.splits(), Splits)
    x = digits_task.example_inputs()
    assert x.shape == (1, 1, 8, 8) and x.dtype == torch.float32
    assert digits_task.finetune is None
    with pytest.raises(ConfigError, match="split='train'"):
        digits_task.evaluate(digits_task.dense_model(), split="train")


def test_digits_dense_model_is_accurate(digits_task: DigitsTask) -> None:
    model = digits_task.dense_model()
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"
    assert digits_task.evaluate(model, "val") >= 0.95
    assert digits_task.evaluate(model, "test") >= 0.9


def test_digits_second_construction_loads_from_cache(
    digits_task: DigitsTask, digits_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = digits_task.cache_path
    assert path.parent == digits_cache and path.is_file()
    mtime = path.stat().st_mtime_ns

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached dense model was retrained")

    monkeypatch.setattr(_train, "train", no_training)
    again = DigitsTask(seed=0, cache_dir=digits_cache)
    assert again.cache_path == path
    first, second = digits_task.dense_model(), again.dense_model()
    assert path.stat().st_mtime_ns == mtime
    for (name, p), (_, q) in zip(first.state_dict().items(), second.state_dict().items(),
                                 strict=True):
        assert torch.equal(p, q), name
    assert not list(digits_cache.glob("*.tmp"))
    assert DigitsTask(seed=1, cache_dir=digits_cache).cache_path != path


def test_dense_model_is_a_fresh_copy(digits_task: DigitsTask) -> None:
    model = digits_task.dense_model()
    with torch.no_grad():
        model.fc.weight.zero_()
    assert digits_task.dense_model().fc.weight.abs().sum() > 0


def test_unreadable_cache_file_is_retrained(tmp_path: Path) -> None:
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    spec = _train.TrainingSpec(_train.TrainConfig(epochs=1, lr=0.01, batch_size=8), 0, 1)
    path = tmp_path / "tiny.pt"
    path.write_bytes(b"not a checkpoint")
    state = _train.load_or_train(path, lambda: nn.Linear(4, 2), data, spec)
    assert set(state) == {"weight", "bias"}
    assert torch.equal(torch.load(path, weights_only=True)["weight"], state["weight"])
    again = _train.load_or_train(path, lambda: nn.Linear(4, 2), data, spec)
    assert torch.equal(again["weight"], state["weight"])


def test_concurrent_first_use_trains_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_train = _train.train

    def counting_train(*args: object, **kwargs: object) -> None:
        calls.append(1)
        time.sleep(0.2)  # hold the lock long enough for the other worker to wait on it
        real_train(*args, **kwargs)

    monkeypatch.setattr(_train, "train", counting_train)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    spec = _train.TrainingSpec(_train.TrainConfig(epochs=1, lr=0.01, batch_size=8), 0, 1)
    path = tmp_path / "shared.pt"

    def first_use() -> dict:
        return _train.load_or_train(path, lambda: nn.Linear(4, 2), data, spec)

    with ThreadPoolExecutor(2) as pool:
        states = list(pool.map(lambda _: first_use(), range(2)))
    assert len(calls) == 1
    assert torch.equal(states[0]["weight"], states[1]["weight"])


def test_train_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="epochs=0"):
        _train.TrainConfig(epochs=0, lr=0.1)
    with pytest.raises(ConfigError, match=r"TaskOptions\(batch_size=0\).*positive int"):
        TaskOptions(batch_size=0)
    options = TaskOptions(seed=3, epochs=2)
    assert (options.epochs_or(30), options.batch_size_or(128)) == (2, 128)


def test_classification_task_trains_once_with_a_training_spec(tmp_path: Path) -> None:
    """A user's task gets the built-ins' train-once-and-cache by passing ``training=``."""
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    spec = _train.TrainingSpec(_train.TrainConfig(epochs=1, lr=0.01, batch_size=8), seed=0,
                               code_version=1, recipe={"width": 4}, cache_dir=tmp_path)
    task = ClassificationTask("tiny", lambda: nn.Linear(4, 2), Splits(loader, loader, loader), 2,
                              training=spec)
    assert task.cache_path == spec.path_for("tiny") and task.cache_path.parent == tmp_path
    model = task.dense_model()
    assert task.cache_path.is_file()
    saved = torch.load(task.cache_path, weights_only=True)
    assert torch.equal(model.weight, saved["weight"])
    untrained = ClassificationTask("tiny", lambda: nn.Linear(4, 2), task.splits(), 2)
    assert untrained.cache_path is None and untrained.dense_state_dict() is None


# --------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize(
    ("build", "classes"),
    [
        (lambda: cifar_resnet(depth=8), 10),
        (lambda: cifar_resnet(depth=14, widths=(8, 16, 32), num_classes=7), 7),
        (lambda: vgg_small(), 10),
        (lambda: vgg_small(widths=(8, 8, 16, 16, 32, 32, 32, 32), num_classes=7), 7),
    ],
    ids=["resnet8", "resnet14", "vgg", "vgg8layers"],
)
def test_models_take_digits_and_mnist_sizes(build, classes: int, size: int) -> None:
    model = build().eval()
    assert model(torch.randn(2, 1, size, size)).shape == (2, classes)


def test_model_layer_names_follow_torchvision() -> None:
    names = dict(cifar_resnet(depth=14).named_modules())
    for name in ("conv1", "bn1", "layer1.0.conv1", "layer1.1.conv2", "layer2.0.downsample.0",
                 "layer3.1.bn2", "fc"):
        assert name in names
    assert "layer1.0.downsample" not in names  # same shape: identity shortcut
    assert isinstance(vgg_small().classifier, nn.Linear)
    lenet = lenet5()
    assert {"conv1", "conv2", "fc1", "fc2", "fc3"} <= set(dict(lenet.named_modules()))
    assert lenet(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert lenet5(in_channels=3)(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert cifar_resnet(in_channels=3)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_models_reject_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="depth=10"):
        cifar_resnet(depth=10)
    with pytest.raises(ConfigError, match="widths"):
        cifar_resnet(widths=(16, 32))
    with pytest.raises(ConfigError, match="num_classes=1"):
        vgg_small(num_classes=1)


# ---------------------------------------------------------------------------------- IDX + fmnist


def _write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def test_read_idx_plain_gz_and_int32(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "images-idx3-ubyte", images)
    _write_idx(tmp_path / "images-idx3-ubyte.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "images-idx3-ubyte"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "images-idx3-ubyte.gz"), images)
    ints = np.array([1, -2, 70000], dtype=np.int32)
    _write_idx(tmp_path / "ints", ints, code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), ints)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x08\x08\x08\x01")
    with pytest.raises(ConfigError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "short", np.zeros(10, dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as info:
        FashionMNISTTask(data_dir=missing)
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "apt-get install -y dataset-fashion-mnist" in message and "--data-dir" in message
    _write_idx(tmp_path / f"{FILES['train_images']}.gz", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ConfigError, match=FILES["train_labels"]):
        FashionMNISTTask(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="model='mlp'"):
        FashionMNISTTask(data_dir=tmp_path, model="mlp")


@pytest.mark.skipif(
    not Path(DEFAULT_DATA_DIR).is_dir(),
    reason=f"Fashion-MNIST not installed at {DEFAULT_DATA_DIR} "
    "(apt-get install -y dataset-fashion-mnist)",
)
def test_fashion_mnist_real_data_subset(tmp_path: Path) -> None:
    task = FashionMNISTTask(subset=1000, model="lenet",
                            options=TaskOptions(epochs=2, cache_dir=tmp_path))
    split = task.splits()
    sizes = [len(loader.dataset) for loader in (split.train, split.val, split.test)]
    assert sizes == [900, 100, 166]
    assert task.example_inputs().shape == (1, 1, 28, 28)
    model = task.dense_model()
    assert isinstance(model.fc1, nn.Linear)
    assert task.evaluate(model, "val") > 0.3  # chance is 0.1
    assert 0.0 <= task.evaluate(model, "test") <= 1.0
    assert task.cache_path.is_file()


@pytest.mark.skipif(
    not Path(DEFAULT_DATA_DIR).is_dir(),
    reason=f"Fashion-MNIST not installed at {DEFAULT_DATA_DIR} "
    "(apt-get install -y dataset-fashion-mnist)",
)
def test_fashion_mnist_vit_trains_and_exposes_heads_and_mlp_widths(tmp_path: Path) -> None:
    import autoprune as ap

    task = FashionMNISTTask(subset=400, model="vit", options=TaskOptions(epochs=1,
                                                                         cache_dir=tmp_path))
    model, x = task.dense_model(), task.example_inputs()
    assert 0.0 <= task.evaluate(model, "val") <= 1.0
    a = ap.analyze(model.eval(), x)
    assert 34e6 < a.cost_model.dense_macs() < 37e6  # the issue's ~35 MMACs ViT
    kinds = {g.name: g.kind for g in a.groups}
    assert kinds["blocks.0.attn"] == "heads" and kinds["blocks.0.mlp.fc1"] == "channels"
    plan = ap.fit_budget(model, x, 1.0, flops=0.3, analysis=a)
    assert abs(a.macs(plan) / a.cost_model.dense_macs() - 0.3) <= 0.003
    assert a.apply(plan)(x).shape == (1, 10)


# ---------------------------------------------------------------------------------- load_task

USER_TASK = '''
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from autoprune.tasks import Splits


class TinyTask:
    name = "tiny"

    def __init__(self, model="conv"):
        self.model = model
        data = TensorDataset(torch.randn(8, 1, 4, 4), torch.randint(0, 2, (8,)))
        loader = DataLoader(data, batch_size=4)
        self._splits = Splits(loader, loader, loader)

    def dense_model(self):
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(16, 2)).eval()

    def example_inputs(self):
        return torch.randn(1, 1, 4, 4)

    def splits(self):
        return self._splits

    def evaluate(self, model, split="val"):
        return 0.5
'''


def test_load_task_from_file_with_task_object(tmp_path: Path) -> None:
    path = tmp_path / "my_task.py"
    path.write_text(USER_TASK + "\ntask = TinyTask()\n")
    task = load_task(str(path))
    assert isinstance(task, Task) and task.name == "tiny"
    model = task.dense_model()
    assert model(task.example_inputs()).shape == (1, 2)
    assert task.evaluate(model) == 0.5


def test_load_task_from_file_with_factory_gets_options(tmp_path: Path) -> None:
    path = tmp_path / "factory_task.py"
    path.write_text(USER_TASK + "\ndef make_task(model='conv'):\n    return TinyTask(model)\n")
    assert load_task(str(path), model="wide").model == "wide"
    with pytest.raises(ConfigError, match="--data-dir '/data' cannot be passed"):
        load_task(str(path), data_dir="/data")


def test_load_task_from_module_attr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_tasks_mod.py").write_text(USER_TASK + "\ndef get_task():\n"
                                                "    return TinyTask()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_task("user_tasks_mod:get_task").name == "tiny"
    assert load_task("user_tasks_mod:TinyTask").name == "tiny"
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        load_task("user_tasks_mod:nope")
    with pytest.raises(ConfigError, match="ModuleNotFoundError"):
        load_task("no_such_module_xyz:task")


def test_load_task_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_task(str(tmp_path / "absent.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1 / 0\n")
    with pytest.raises(ConfigError) as info:
        load_task(str(broken))
    message = str(info.value)
    assert "ZeroDivisionError: division by zero" in message and "Traceback" not in message
    assert "\n" not in message
    partial = tmp_path / "partial.py"
    partial.write_text("class T:\n    name = 't'\n    def splits(self): ...\ntask = T()\n")
    with pytest.raises(ConfigError, match="lacks dense_model, example_inputs, evaluate"):
        load_task(str(partial))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines none of task, make_task, get_task"):
        load_task(str(empty))


def test_load_task_builtin_names_and_errors(tmp_path: Path) -> None:
    assert isinstance(load_task("digits"), DigitsTask)
    with pytest.raises(ConfigError, match="digits, fashion-mnist, cifar10, imagefolder"):
        load_task("mnist")
    with pytest.raises(ConfigError, match="--model 'vgg' does not apply to --task digits"):
        load_task("digits", model="vgg")
    with pytest.raises(ConfigError, match="needs --data-dir"):
        load_task("cifar10")
    with pytest.raises(ConfigError, match="apt-get install"):
        load_task("fashion-mnist", data_dir=tmp_path)


# ------------------------------------------------------------------------------------ vision


def _image_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_task_with_user_weights(tmp_path: Path) -> None:
    from autoprune.tasks import imagefolder_task
    from autoprune.tasks.vision import build_model

    _image_folder(tmp_path / "data")
    weights = tmp_path / "resnet18.pt"
    torch.save(build_model("resnet18", 2).state_dict(), weights)
    task = imagefolder_task(tmp_path / "data", model="resnet18", weights=weights, image_size=32)
    assert isinstance(task, ClassificationTask) and task.num_classes == 2
    split = task.splits()
    assert [len(loader.dataset) for loader in (split.train, split.val, split.test)] == [10, 2, 4]
    assert task.example_inputs().shape == (1, 3, 32, 32)
    model = task.dense_model()
    expected = torch.load(weights, weights_only=True)["fc.weight"]
    assert torch.equal(model.fc.weight, expected)
    assert 0.0 <= task.evaluate(model, "test") <= 1.0
    loaded = load_task("imagefolder", data_dir=tmp_path / "data", weights=weights)
    assert loaded.name == "imagefolder-resnet18"


def test_vision_errors(tmp_path: Path) -> None:
    from autoprune.tasks import cifar10_task, imagefolder_task

    with pytest.raises(ConfigError, match="holds no CIFAR-10"):
        cifar10_task(tmp_path)
    with pytest.raises(ConfigError, match="resnet18"):
        cifar10_task(tmp_path, model="resnet181")
    with pytest.raises(ConfigError, match="no train/ subfolder"):
        imagefolder_task(tmp_path)
    _image_folder(tmp_path / "data")
    wrong = tmp_path / "wrong.pt"
    torch.save(nn.Linear(2, 2).state_dict(), wrong)
    task = imagefolder_task(tmp_path / "data", weights=wrong, image_size=32)
    with pytest.raises(ConfigError, match="does not fit"):
        task.dense_model()


def _image_folder(root: Path, per_class: int = 6, size: int = 40) -> Path:
    """A small ImageNet-style folder of generated PNGs (two classes told apart by colour)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(colour, 25, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_cache_dir_follows_autoprune_cache_then_xdg(monkeypatch, tmp_path: Path) -> None:
    from autoprune.tasks._train import default_cache_dir

    monkeypatch.delenv("AUTOPRUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "autoprune"
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("AUTOPRUNE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "autoprune"


@pytest.mark.slow
def test_search_a_timm_model_on_an_image_folder(tmp_path: Path, monkeypatch) -> None:
    """`autoprune search --model timm:resnet18 --task imagefolder`, then export the archive
    and rebuild it with ap.load_pruned (timm's builder is trusted; nothing is downloaded)."""
    timm = pytest.importorskip("timm", reason="timm missing: pip install 'autoprune[test]'")
    import autoprune as ap
    from autoprune.cli import main

    data = _image_folder(tmp_path / "images")
    weights = tmp_path / "dense.pt"
    torch.save(timm.create_model("resnet18", num_classes=2).state_dict(), weights)
    monkeypatch.chdir(tmp_path)
    # the README's command as printed there (images/ and dense.pt are the files made above)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- readme-test: timm -->", 1)[1].split("```", 2)[1]
    command = shlex.split(block.removeprefix("bash").strip())
    assert command[:2] == ["autoprune", "search"] and "timm:resnet18" in command
    data.rename(tmp_path / "images")
    weights.rename(tmp_path / "dense.pt")
    small = ["--num-workers", "1", "--trials", "2", "--finetune-steps", "2", "--bn-batches",
             "1", "--screen", "0", "--short-fidelity", "0", "--no-latency", "--quiet",
             "--out", "run"]
    assert main(command[1:] + small) == 0
    front = json.loads((tmp_path / "run" / "front.json").read_text())
    assert front and all(f["flops_ratio"] <= 0.505 for f in front)
    trial = front[0]["trial"]
    before = (tmp_path / "run" / "report.html").read_text()
    assert main(["export", "run", "--trial", str(trial), "--quiet"]) == 0
    after = (tmp_path / "run" / "report.html").read_text()  # export refreshed the report
    assert f"trial_{trial}.pruned.pt" in after and f"trial_{trial}.pruned.pt" not in before
    model = ap.load_pruned(tmp_path / "run" / "models" / f"trial_{trial}.pruned.pt")
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 2)

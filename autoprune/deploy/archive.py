"""Pruned-model files that load again without hand surgery, and safely.

The portable form (DESIGN decision 7) is the dense model's constructor reference
(``module:callable`` + JSON-like kwargs) + torch-pruning's pruning history + the pruned
``state_dict``. Loading rebuilds the dense model, replays the history (channel indices per root
layer) and loads the weights. The file holds only tensors, numbers, strings and lists, so it is
read with ``torch.load(weights_only=True)``; the constructor reference is resolved only from
torchvision's builders, autoprune's own model builders, builders the caller passes, or with an
explicit ``trust=True``. A crafted file cannot run ``os:system``.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.deploy.archive_checks import (
    INPUT_DTYPES,
    check_archive,
    check_input_spec,
    damaged,
    fetching_kwarg,
    make_inputs,
)
from autoprune.errors import ConfigError
from autoprune.plan import PruningPlan

__all__ = ["FORMAT", "builder_reference", "is_trusted", "load_pruned", "save_pruned"]

FORMAT = "autoprune.pruned/1"
_OWN_BUILDERS = ("cifar_resnet", "vgg_small", "lenet5")
_PLAIN = (str, int, float, bool, type(None))
#: Most parameter + buffer elements of a dense model an archive may ask a trusted builder for.
MAX_DENSE_ELEMENTS = 2**31
#: loader.py imports a user's task.py under this prefix: such a module is not importable later.
_USER_FILE_MODULE = "autoprune_user_task_"


def _reference(builder: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(builder, str):
        return builder, {}
    if isinstance(builder, functools.partial):
        ref, kwargs = _reference(builder.func)
        if builder.args:
            raise ConfigError("builder partial has positional args; bind them as keywords")
        return ref, {**kwargs, **builder.keywords}
    if callable(builder) and hasattr(builder, "__module__") and hasattr(builder, "__qualname__"):
        if "<" in builder.__qualname__:
            raise ConfigError(
                f"builder {builder.__qualname__!r} is a local function or lambda; pass a "
                "module-level function or a 'package.module:function' string"
            )
        return f"{builder.__module__}:{builder.__qualname__}", {}
    raise ConfigError(f"builder={builder!r} must be a callable or a 'module:callable' string")


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where)
        return
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        for v in value.values():
            _check_plain(v, where)
        return
    raise ConfigError(f"{where} holds {type(value).__name__}; only numbers, strings, lists "
                      "and str-keyed dicts can be archived")


def _input_spec(example_inputs: Any) -> Any:
    if isinstance(example_inputs, torch.Tensor):
        dtype = str(example_inputs.dtype).removeprefix("torch.")
        if dtype not in INPUT_DTYPES:
            raise ConfigError(f"example_inputs of dtype {dtype} cannot be archived; use one of "
                              f"{sorted(INPUT_DTYPES)}")
        return {"shape": list(example_inputs.shape), "dtype": f"torch.{dtype}"}
    if isinstance(example_inputs, (tuple, list)):
        return [_input_spec(x) for x in example_inputs]
    if isinstance(example_inputs, dict):
        return {"__dict__": {k: _input_spec(v) for k, v in example_inputs.items()}}
    raise ConfigError(f"example_inputs of type {type(example_inputs).__name__} cannot be archived")


def save_pruned(model: nn.Module, path: str | os.PathLike[str], example_inputs: Any,
                builder: Any, builder_kwargs: Mapping[str, Any] | None = None,
                plan: PruningPlan | None = None, history: list | None = None) -> Path:
    """Write the portable archive of a model pruned by :func:`autoprune.apply_plan`.

    ``builder`` rebuilds the *dense* model: a ``'module:callable'`` string, a module-level
    function or a ``functools.partial``; ``builder_kwargs`` must be plain data.
    """
    history = history if history is not None else model.__dict__.get("autoprune_history")
    if history is None:
        raise ConfigError("model has no pruning history: prune it with ap.apply_plan (which "
                          "records one) or pass history=")
    ref, kwargs = _reference(builder)
    kwargs.update(builder_kwargs or {})
    _check_plain(kwargs, "builder_kwargs")
    spec = _input_spec(example_inputs)
    check_input_spec(spec, "save_pruned")  # what load_pruned would refuse is not written
    archive = {
        "format": FORMAT,
        "builder": ref,
        "builder_kwargs": kwargs,
        "example_inputs": spec,
        "history": [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history],
        "plan": plan.to_json() if plan is not None else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    from autoprune.results import atomic_write_bytes  # pandas; only needed when writing

    buffer = io.BytesIO()
    torch.save(archive, buffer)
    atomic_write_bytes(path, buffer.getvalue())  # mode 0o644: an exported model is for sharing
    return Path(path)


def _resolve(ref: str, builders: Mapping[str, Callable[..., nn.Module]] | None,
             trust: bool, where: str = "archive") -> Callable[..., nn.Module]:
    if builders and ref in builders:
        return builders[ref]
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{where}: builder reference {ref!r} is not of the form "
                          "'module:callable'")
    if not (is_trusted(ref) or trust):
        raise ConfigError(
            f"{where} asks to build the model with {ref!r}, which is not a torchvision or "
            "autoprune builder; refusing to call it. Pass builders={ref: your_function} (or "
            "trust=True if you trust the file)"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot import builder {ref!r} ({_first_line(exc)}); pass "
                          "builders={ref: your_function}") from exc
    return obj


def is_trusted(ref: str) -> bool:
    """Whether :func:`load_pruned` calls builder ``ref`` without ``builders=`` or ``trust=True``:
    a torchvision model builder, ``timm:create_model`` (its kwargs pass the same download
    checks: ``pretrained`` must be false) or one of autoprune's own."""
    module_name, _, attr = ref.partition(":")
    return ((module_name.startswith("torchvision.models") and attr in _torchvision_builders())
            or ref == "timm:create_model"
            or (module_name == "autoprune.tasks.models" and attr in _OWN_BUILDERS))


@functools.cache
def _torchvision_builders() -> frozenset[str]:
    import torchvision

    return frozenset(torchvision.models.list_models())


def load_pruned(path: str | os.PathLike[str],
                builders: Mapping[str, Callable[..., nn.Module]] | None = None,
                trust: bool = False, map_location: str = "cpu") -> nn.Module:
    """Rebuild a pruned model from :func:`save_pruned`'s archive: dense build, history, weights.

    Anything wrong with the file (damaged, crafted, or made for another model) raises one
    :class:`ConfigError` line. Without ``trust=True`` no builder kwarg may fetch weights
    (``weights=``, ``pretrained=``, a torchvision weights name or a URL): nothing is downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no pruned-model archive at {str(path)!r}")
    where = repr(str(path))
    archive = _read(path, where, map_location)
    check_archive(archive, where)
    ref, kwargs = archive["builder"], archive["builder_kwargs"]
    build = _resolve(ref, builders, trust, where)
    fetch = None if trust else fetching_kwarg(kwargs)
    if fetch is not None:
        raise ConfigError(
            f"{where}: builder_kwargs {fetch[0]}={str(fetch[1])[:60]!r} would download "
            "pretrained weights; refusing (load_pruned makes no network access); pass "
            "trust=True if you trust the file, or save it with that kwarg set to None")
    if not trust and not (builders and ref in builders):  # a torchvision or autoprune builder
        _check_dense_size(build, kwargs, where)
    return _rebuild(build, archive, where)


def _read(path: Path, where: str, map_location: str) -> dict[str, Any]:
    try:
        archive = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only: anything beyond plain data and tensors
        raise ConfigError(
            f"{where} is not a plain-data autoprune archive (it would need to unpickle objects: "
            f"{_first_line(exc)}); refusing to load it") from exc
    except Exception as exc:  # empty, truncated, not a torch file: torch raises many kinds
        raise damaged(where, f"not a readable torch file ({_first_line(exc)})") from exc
    if not isinstance(archive, dict) or archive.get("format") != FORMAT:
        raise ConfigError(f"{where} is not an autoprune archive (format {FORMAT!r}); save one "
                          "with autoprune.save_pruned or autoprune export --format pt")
    return archive


def _first_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines())
    return f"{type(exc).__name__}: {text[:240]}" if text else type(exc).__name__


def _check_dense_size(build: Callable[..., nn.Module], kwargs: Mapping[str, Any],
                      where: str) -> None:
    """Build on the meta device first (no memory): kwargs such as ``num_classes=10**9`` would
    otherwise allocate and initialise a dense model of any size."""
    try:
        with torch.device("meta"):
            dense = build(**kwargs)
        size = sum(t.numel() for t in (*dense.parameters(), *dense.buffers()))
    except Exception:  # the real build in _rebuild reports what is wrong, in one line
        return
    if size > MAX_DENSE_ELEMENTS:
        raise ConfigError(f"{where}: builder_kwargs {str(dict(kwargs))[:120]} build a dense "
                          f"model of {size} elements, more than {MAX_DENSE_ELEMENTS}; refusing "
                          "to allocate it; check the file's builder_kwargs")


def _rebuild(build: Callable[..., nn.Module], archive: Mapping[str, Any],
             where: str) -> nn.Module:
    from autoprune.engine import replay_history

    ref, history, kwargs = archive["builder"], archive["history"], archive["builder_kwargs"]
    try:
        model = build(**kwargs)
    except Exception as exc:  # TypeError for wrong kwargs, anything the builder raises
        raise damaged(where, f"builder {ref!r} rejects builder_kwargs {sorted(kwargs)[:8]} "
                             f"({_first_line(exc)})") from exc
    if not isinstance(model, nn.Module):
        raise damaged(where, f"builder {ref!r} returned {type(model).__name__}, not an nn.Module")
    try:
        replay_history(model, make_inputs(archive["example_inputs"]), history)
    except Exception as exc:  # KeyError, IndexError, RuntimeError from tracing or replaying
        raise damaged(where, f"its pruning history does not fit the model {ref!r} builds "
                             f"({_first_line(exc)})") from exc
    try:
        model.load_state_dict(archive["state_dict"])
        plan = PruningPlan.from_json(archive["plan"]) if archive.get("plan") else None
    except Exception as exc:  # RuntimeError: missing keys or shapes; ConfigError: a bad plan
        raise damaged(where, f"its state_dict or plan does not fit the pruned model "
                             f"({_first_line(exc)})") from exc
    model.__dict__["autoprune_history"] = history
    if plan is not None:
        model.__dict__["autoprune_plan"] = plan
    return model.eval()


# -- the builder reference of a task -------------------------------------------------------------
def builder_reference(task: Any) -> tuple[str, dict[str, Any]]:
    """``('module:callable', kwargs)`` that rebuilds ``task``'s dense architecture in any process.

    Taken, in order, from the task's ``builder`` (+ ``builder_kwargs``) attributes, from a
    torchvision task (``torchvision.models:<name>``), or from ``model_factory`` when it is a
    module-level function or a keyword-only ``functools.partial`` of one.
    """
    explicit = getattr(task, "builder", None)
    factory = getattr(task, "model_factory", None)
    try:
        if explicit is not None:
            ref, kwargs = _reference(explicit)
            kwargs.update(getattr(task, "builder_kwargs", None) or {})
        elif factory is not None and _is_torchvision_factory(factory):
            args, kw = factory.args, factory.keywords
            name = args[0] if args else kw["name"]
            classes = args[1] if len(args) > 1 else kw["num_classes"]
            ref, kwargs = f"torchvision.models:{name}", {"num_classes": int(classes)}
        elif factory is not None:
            ref, kwargs = _reference(factory)
        else:
            raise ConfigError("it has neither a `builder` nor a `model_factory`")
        module = ref.partition(":")[0]
        if module == "__main__" or module.startswith(_USER_FILE_MODULE):
            raise ConfigError(f"{ref.partition(':')[2]!r} lives in a script, which another "
                              "process cannot import")
    except ConfigError as exc:
        raise ConfigError(
            f"--format pt: task {getattr(task, 'name', '?')!r} gives no importable builder of its "
            f"dense model ({exc}); give the task a `builder` attribute ('pkg.module:function' "
            "building the dense architecture) plus `builder_kwargs` (a dict of plain values), "
            "or export with --format torchscript or onnx") from exc
    return ref, kwargs


def _is_torchvision_factory(factory: Any) -> bool:
    """Vision tasks build with ``partial(autoprune.tasks.vision.build_model, name, classes)``."""
    func = getattr(factory, "func", None)
    return (isinstance(factory, functools.partial)
            and getattr(func, "__module__", "") == "autoprune.tasks.vision"
            and getattr(func, "__name__", "") == "build_model")

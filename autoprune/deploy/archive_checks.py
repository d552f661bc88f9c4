"""What :func:`autoprune.load_pruned` checks before it builds anything from an archive.

An archive is data from anywhere: every key is checked for type and size before use, so a
damaged or crafted file ends in one :class:`~autoprune.errors.ConfigError` line, never in a raw
exception, a download or a huge allocation.

- :func:`check_archive`: the keys and the types of their values.
- :func:`check_input_spec` / :func:`make_inputs`: the recorded example inputs, bounded in shape,
  element count, nesting and dtype (checked before one byte is allocated).
- :func:`fetching_kwarg`: a builder kwarg that would make a builder download weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch

from autoprune.errors import ConfigError

__all__ = ["INPUT_DTYPES", "MAX_DIM", "MAX_INPUT_ELEMENTS", "check_archive", "check_input_spec",
           "damaged", "fetching_kwarg", "make_inputs"]

#: Dtypes an archive's example inputs may ask for.
INPUT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8",
                          "bool"})
#: Largest size of one dimension of a recorded example input.
MAX_DIM = 4096
#: Most elements of all recorded example inputs together (256 MiB as float32).
MAX_INPUT_ELEMENTS = 2**26
MAX_INPUT_NDIM = 8
MAX_INPUT_DEPTH = 4
MAX_INPUT_ITEMS = 64
MAX_KWARGS_DEPTH = 16
_REQUIRED = {"builder": str, "builder_kwargs": dict, "example_inputs": (dict, list),
             "history": list, "state_dict": dict}
_FETCH_KEYS = frozenset({"weights", "weights_backbone", "pretrained", "pretrained_backbone"})
_FIX = ("the file is damaged or was not written by autoprune.save_pruned; export the model again "
        "(autoprune export RUN --trial N --format pt)")


def damaged(where: str, what: str) -> ConfigError:
    """One line: the file, what is wrong with it, and the fix."""
    return ConfigError(f"{where}: {what}; {_FIX}")


def check_archive(archive: Mapping[str, Any], where: str) -> None:
    """Refuse an archive whose keys are missing or hold values of the wrong type."""
    for key, kind in _REQUIRED.items():
        if key not in archive:
            raise damaged(where, f"archive key {key!r} is missing")
        if not isinstance(archive[key], kind):
            raise damaged(where, f"archive key {key!r} holds {type(archive[key]).__name__}, "
                                 f"not {_names(kind)}")
    ref = archive["builder"]
    if not 0 < len(ref) <= 300 or ref.count(":") != 1:
        raise damaged(where, f"builder {ref[:80]!r} is not a 'module:callable' reference")
    _check_kwargs(archive["builder_kwargs"], where, "builder_kwargs", 0)
    check_input_spec(archive["example_inputs"], where)
    for i, step in enumerate(archive["history"]):
        _check_step(step, where, i)
    for name, value in archive["state_dict"].items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise damaged(where, f"state_dict entry {str(name)[:80]!r} holds "
                                 f"{type(value).__name__}, not a tensor under a str name")
    plan = archive.get("plan")
    if plan is not None and not isinstance(plan, str):
        raise damaged(where, f"archive key 'plan' holds {type(plan).__name__}, not a JSON str")


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _check_kwargs(value: Any, where: str, at: str, depth: int) -> None:
    if depth > MAX_KWARGS_DEPTH:
        raise damaged(where, f"{at} is nested deeper than {MAX_KWARGS_DEPTH} levels")
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_kwargs(v, where, f"{at}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise damaged(where, f"{at} has a {type(k).__name__} key; keys must be str")
            _check_kwargs(v, where, f"{at}[{k[:40]!r}]", depth + 1)
        return
    raise damaged(where, f"{at} holds {type(value).__name__}; builder kwargs are plain numbers, "
                         "strings, lists and dicts")


def _check_step(step: Any, where: str, i: int) -> None:
    ok = (isinstance(step, (list, tuple)) and len(step) == 3 and isinstance(step[0], str)
          and isinstance(step[1], bool) and isinstance(step[2], (list, tuple))
          and all(type(j) is int and j >= 0 for j in step[2]))
    if not ok:
        raise damaged(where, f"history[{i}] is not [layer name, is_out_channel, [indices >= 0]] "
                             f"({type(step).__name__})")


def check_input_spec(spec: Any, where: str) -> None:
    """Refuse example inputs too large, too deep, or of a dtype outside :data:`INPUT_DTYPES`."""
    total = _spec_elements(spec, where, 0)
    if total > MAX_INPUT_ELEMENTS:
        raise ConfigError(
            f"{where}: example_inputs ask for {total} elements in all, more than "
            f"{MAX_INPUT_ELEMENTS}; record a smaller example input (batch 1) when saving")


def _spec_elements(spec: Any, where: str, depth: int) -> int:
    if depth > MAX_INPUT_DEPTH:
        raise damaged(where, f"example_inputs are nested deeper than {MAX_INPUT_DEPTH} levels")
    if isinstance(spec, list):
        items = spec
    elif isinstance(spec, dict) and set(spec) == {"__dict__"} and isinstance(spec["__dict__"],
                                                                               dict):
        items = list(spec["__dict__"].values())
        if not all(isinstance(k, str) for k in spec["__dict__"]):
            raise damaged(where, "example_inputs has a dict with non-str keys")
    elif isinstance(spec, dict) and set(spec) == {"shape", "dtype"}:
        return _leaf_elements(spec, where)
    else:
        raise damaged(where, f"example_inputs holds {type(spec).__name__} {str(spec)[:60]!r}, "
                             "not a {'shape', 'dtype'} entry, a list or a {'__dict__': ...}")
    if len(items) > MAX_INPUT_ITEMS:
        raise damaged(where, f"example_inputs holds {len(items)} inputs, more than "
                             f"{MAX_INPUT_ITEMS}")
    return sum(_spec_elements(s, where, depth + 1) for s in items)


def _leaf_elements(spec: Mapping[str, Any], where: str) -> int:
    shape, dtype = spec["shape"], spec["dtype"]
    if not isinstance(dtype, str) or dtype.removeprefix("torch.") not in INPUT_DTYPES:
        raise damaged(where, f"example_inputs dtype {str(dtype)[:40]!r} is not one of "
                             f"{sorted(INPUT_DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_INPUT_NDIM
            or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)):
        raise ConfigError(
            f"{where}: example_inputs shape {str(shape)[:80]} is not a list of at most "
            f"{MAX_INPUT_NDIM} sizes in [0, {MAX_DIM}]; refusing to allocate it; record a "
            "smaller example input when saving")
    return math.prod(shape)


def make_inputs(spec: Any) -> Any:
    """Zero tensors of the recorded shapes and dtypes (``spec`` passed :func:`check_input_spec`)."""
    if isinstance(spec, list):
        return tuple(make_inputs(s) for s in spec)
    if "__dict__" in spec:
        return {k: make_inputs(v) for k, v in spec["__dict__"].items()}
    dtype = getattr(torch, spec["dtype"].removeprefix("torch."))
    return torch.zeros(spec["shape"], dtype=dtype)


def fetching_kwarg(kwargs: Mapping[str, Any]) -> tuple[str, Any] | None:
    """The first builder kwarg (``name``, value) that would make a builder fetch weights: one of
    ``weights``/``weights_backbone``/``pretrained``/``pretrained_backbone`` set to anything but
    None or False, or anywhere a string naming torchvision weights (``"IMAGENET1K_V1"``,
    ``"DEFAULT"``, ``"ResNet18_Weights.IMAGENET1K_V1"``) or a URL."""
    for key, value in kwargs.items():
        if key.lower() in _FETCH_KEYS and value is not None and value is not False:
            return key, value
        if _names_weights(value):
            return key, value
    return None


def _names_weights(value: Any) -> bool:
    if isinstance(value, str):
        return "://" in value or value.rsplit(".", 1)[-1] in _torchvision_weight_names()
    if isinstance(value, (list, tuple)):
        return any(_names_weights(v) for v in value)
    if isinstance(value, dict):
        return any(_names_weights(v) for v in value.values())
    return False


@functools.cache
def _torchvision_weight_names() -> frozenset[str]:
    """Member names of every torchvision weights enum (``IMAGENET1K_V1``, ``DEFAULT``, ...)."""
    import torchvision

    names = {"DEFAULT"}
    for model in torchvision.models.list_models():
        try:
            names.update(torchvision.models.get_model_weights(model).__members__)
        except (ValueError, KeyError, AttributeError):  # a builder without a weights enum
            continue
    return frozenset(names)

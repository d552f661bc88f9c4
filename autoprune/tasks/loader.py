"""Resolve ``--task`` into a Task: a built-in name, a ``task.py`` file or ``package.module:attr``.

Every failure is one ConfigError line naming the value and the fix, so the CLI can exit 2
without a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from autoprune.errors import ConfigError
from autoprune.tasks._train import TaskOptions
from autoprune.tasks.base import Task

__all__ = ["BUILTIN_TASKS", "REQUIRED", "check_task_file", "load_task", "task_file_record"]

BUILTIN_TASKS = ("digits", "fashion-mnist", "cifar10", "imagefolder")
IMAGE_TASKS = ("cifar10", "imagefolder")
REQUIRED = ("name", "dense_model", "example_inputs", "splits", "evaluate")
FILE_ENTRY_POINTS = ("task", "make_task", "get_task")


def load_task(
    spec: str = "digits",
    *,
    data_dir: str | Path | None = None,
    model: str | None = None,
    weights: str | Path | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> Task:
    """The task named by ``spec`` (see the module docstring), built with the given options.

    For a user's file or ``module:attr``, options that are set are passed to the factory when its
    signature accepts them; a set option it cannot take is an error rather than silently ignored.
    """
    options = {"data_dir": data_dir, "model": model, "weights": weights, "seed": seed}
    if num_workers and spec not in IMAGE_TASKS:
        raise ConfigError(f"--num-workers {num_workers} is for the image tasks "
                          f"({', '.join(IMAGE_TASKS)}), whose loaders decode files; drop it")
    if spec in BUILTIN_TASKS:
        return _builtin(spec, {**options, "num_workers": num_workers})
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        return _from_file(spec, options)
    if ":" in spec:
        return _from_module(spec, options)
    raise ConfigError(
        f"--task {spec!r}: unknown task; use one of {', '.join(BUILTIN_TASKS)}, a file "
        f"path/to/task.py, or package.module:attr"
    )


def _builtin(name: str, options: dict[str, Any]) -> Task:
    data_dir, model, weights, seed = (options[k] for k in ("data_dir", "model", "weights", "seed"))
    if name == "digits":
        for key, flag in (("data_dir", "--data-dir"), ("model", "--model")):
            if options[key] is not None:
                raise ConfigError(
                    f"{flag} {options[key]!r} does not apply to --task digits (its data ships with "
                    f"scikit-learn, its model is fixed); drop {flag} or use --task fashion-mnist, "
                    f"cifar10 or imagefolder"
                )
        from autoprune.tasks.digits import DigitsTask

        return DigitsTask(seed=seed, weights=weights)
    if name == "fashion-mnist":
        from autoprune.tasks.fashion_mnist import DEFAULT_DATA_DIR, FashionMNISTTask

        return FashionMNISTTask(data_dir or DEFAULT_DATA_DIR, model=model or "resnet",
                                weights=weights, options=TaskOptions(seed=seed))
    if data_dir is None:
        raise ConfigError(
            f"--task {name} needs --data-dir FOLDER ("
            + ("holding cifar-10-batches-py" if name == "cifar10" else "with train/ and val/")
            + "); autoprune never downloads data"
        )
    from autoprune.tasks import vision

    build = vision.cifar10_task if name == "cifar10" else vision.imagefolder_task
    return build(data_dir, model=model or "resnet18", weights=weights,
                 options=TaskOptions(seed=seed, num_workers=options["num_workers"]))


def _from_file(spec: str, options: dict[str, Any]) -> Task:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--task {spec!r}: no such file; pass the path of a .py file that defines `task` or "
            f"make_task()"
        )
    module_name = f"autoprune_user_task_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--task {spec!r}: cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up here
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[module_name]
        raise ConfigError(
            f"--task {spec!r} raised {type(exc).__name__}: {_one_line(exc)} while importing; "
            f"fix the file (run `python {spec}` to see the traceback)"
        ) from exc
    return _from_namespace(module, spec, options)


def _from_namespace(module: ModuleType, spec: str, options: dict[str, Any]) -> Task:
    for attr in FILE_ENTRY_POINTS:
        if hasattr(module, attr):
            return _resolve(getattr(module, attr), f"{spec}:{attr}", options)
    raise ConfigError(
        f"--task {spec!r} defines none of {', '.join(FILE_ENTRY_POINTS)}; add `task = MyTask()` "
        f"or `def make_task(): return MyTask()`"
    )


def _from_module(spec: str, options: dict[str, Any]) -> Task:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--task {spec!r}: write package.module:attr, e.g. mypkg.tasks:task")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        raise ConfigError(
            f"--task {spec!r}: importing {module_name} raised {type(exc).__name__}: "
            f"{_one_line(exc)}; install it or put it on PYTHONPATH"
        ) from exc
    if not hasattr(module, attr):
        raise ConfigError(f"--task {spec!r}: module {module_name} has no attribute {attr!r}")
    return _resolve(getattr(module, attr), spec, options)


def _resolve(obj: object, where: str, options: dict[str, Any]) -> Task:
    """A Task as is, or the Task a factory returns; then check that it has the Task methods."""
    if isinstance(obj, type) or (callable(obj) and _missing(obj)):
        obj = _call_factory(obj, where, options)
    else:
        _reject_unused(where, options, accepted=())
    missing = _missing(obj)
    if missing:
        raise ConfigError(
            f"--task {where!r} gave a {type(obj).__name__} that lacks {', '.join(missing)}; "
            f"a task needs {', '.join(REQUIRED)} (see autoprune.tasks.Task)"
        )
    return obj  # type: ignore[return-value]


def _call_factory(factory: Callable[..., object], where: str, options: dict[str, Any]) -> object:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = tuple(k for k in options if takes_all or k in params)
    _reject_unused(where, options, accepted)
    kwargs = {k: options[k] for k in accepted if options[k] is not None}
    try:
        return factory(**kwargs)
    except (Exception, SystemExit) as exc:
        raise ConfigError(
            f"--task {where!r} raised {type(exc).__name__}: {_one_line(exc)} while building the "
            f"task; fix the factory"
        ) from exc


def _reject_unused(where: str, options: dict[str, Any], accepted: tuple[str, ...]) -> None:
    for key in ("data_dir", "model", "weights"):
        if options[key] is not None and key not in accepted:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{flag} {str(options[key])!r} cannot be passed to --task {where!r}; add a "
                f"`{key}` parameter to its make_task() or drop {flag}"
            )


def _missing(obj: object) -> list[str]:
    return [name for name in REQUIRED if not hasattr(obj, name)]


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"sys.exit({exc.code!r}) (a task must not exit the process)"
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _is_file_spec(spec: str) -> bool:
    return spec not in BUILTIN_TASKS and (spec.endswith(".py") or "/" in spec or "\\" in spec)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def task_file_record(spec: str) -> dict[str, str]:
    """For a task given as a ``.py`` file: its absolute path and sha256, written to
    config.yaml so that a later ``--resume`` / ``export`` / ``worker`` runs the same code."""
    if not _is_file_spec(spec):
        return {}
    path = Path(spec).expanduser()
    if not path.is_file():
        return {}  # load_task names the missing file
    return {"file": str(path.resolve()), "sha256": _sha256(path)}


def check_task_file(task: dict[str, Any], run_dir: object, trust: bool) -> None:
    """The trust boundary of a run folder: it may execute only the task file it was started
    with. Refuse (one line) a task file that moved or changed since, unless ``trust``."""
    spec = str(task.get("spec") or "")
    if trust or not _is_file_spec(spec):
        return
    recorded = task.get("sha256")
    path = Path(spec).expanduser()
    fix = (f"check the file, then pass --trust-task to run it (a run folder executes the task "
           f"file named in {run_dir}/config.yaml)")
    if not recorded:
        raise ConfigError(f"{run_dir}/config.yaml names task file {spec!r} without its sha256 "
                          f"(written by an older autoprune or edited); {fix}")
    if not path.is_file():
        raise ConfigError(f"task file {spec!r} of {run_dir} is missing here; {fix}")
    if str(path.resolve()) != task.get("file"):
        raise ConfigError(f"task file {spec!r} of {run_dir} resolves to {path.resolve()}, not "
                          f"{task.get('file')} where the run was started; {fix}")
    if _sha256(path) != recorded:
        raise ConfigError(f"task file {spec!r} of {run_dir} changed since the run started "
                          f"(sha256 differs); {fix}")

"""The ``autoprune`` command line: argparse front over the library.

User errors (bad values, missing files, unsupported models) exit with code 2 and one line naming
the argument, the value and the fix; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoprune._cli_args import build_parser, given_flags, settings_from_args
from autoprune.errors import AutopruneError, ConfigError
from autoprune.interrupts import watching
from autoprune.settings import FinetuneSettings, RunSettings, SearchSettings

if TYPE_CHECKING:
    from autoprune.plan import Budget
    from autoprune.space import SearchSpace

__all__ = ["build_parser", "main"]

log = logging.getLogger("autoprune")


def _torchvision_model(name: str, num_classes: int) -> Any:
    """``--model``: a torchvision classification builder or ``timm:<name>``, untrained."""
    import torchvision

    if name.startswith("timm:"):
        from autoprune.tasks.vision import build_model

        return build_model(name, num_classes).eval()
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(close)}?" if close
                else "see torchvision.models.list_models() or timm:<name>")
        raise ConfigError(f"--model {name!r} is not a torchvision classification builder; {hint}")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes).eval()


def _cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from autoprune.engine import analyze

    if args.model:
        model = _torchvision_model(args.model, args.num_classes)
        example = torch.randn(*(args.input or (1, 3, 224, 224)))
    else:
        from autoprune.tasks import load_task

        task = load_task(args.task or "digits", data_dir=args.data_dir, seed=args.seed,
                         num_workers=args.num_workers)
        model, example = task.dense_model(), task.example_inputs()
    analysis = analyze(model, example, ignore=args.ignore)
    cm = analysis.cost_model
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    groups = sorted(analysis.groups, key=lambda g: order.get(g.name, len(order)))
    print(f"{'group':<40} {'kind':<8} {'channels':>8} {'MACs share':>10} {'params share':>12}")
    for g in groups:  # in the model's own layer order
        print(f"{g.name:<40} {g.kind:<8} {g.channels:>8} {g.macs_share:>10.2%} "
              f"{g.params_share:>12.2%}")
    print(f"\n{len(analysis.groups)} groups (kind heads: the channels are attention heads); "
          f"head (not pruned): {analysis.head}")
    if analysis.frozen:
        print(f"\n{len(analysis.frozen)} groups left at full width:")
        for f in analysis.frozen:
            print(f"  {f.name:<38} {f.reason}")
    print("a share is what pruning that group alone to nothing would remove; a layer between "
          "two groups counts in both, so shares add up to more than 100 %")
    print(f"dense: {cm.dense_macs() / 1e6:.2f} MMACs ({2 * cm.dense_macs() / 1e6:.2f} MFLOPs) "
          f"per image, {cm.dense_params() / 1e6:.3f} M params")
    return 0


@dataclass(frozen=True)
class RunInputs:
    """Everything a search run is started from: a new run's flags or a run's config.yaml."""

    task: dict[str, Any]
    budget: Budget
    space: SearchSpace
    finetune: FinetuneSettings
    search: SearchSettings
    trials: int


def _from_config(run_dir: str, quiet: bool) -> RunInputs:
    """The inputs of an existing run, read from its directory."""
    from autoprune.plan import Budget
    from autoprune.results import RunDir

    config = RunDir.open(run_dir).read_config()
    task_cfg = config.get("task")
    if not isinstance(task_cfg, dict):
        raise ConfigError(f"{run_dir}/config.yaml is damaged (no task section); restore it from "
                          "a copy or start a new run")
    if task_cfg.get("python"):
        raise ConfigError(f"{run_dir!r} was started from Python; continue it with "
                          "ap.search(..., run_dir=..., resume=True)")
    try:
        return RunInputs(task_cfg, Budget(**config["budget"]),
                         load_space_from_config(config["space"]),
                         FinetuneSettings(**config["finetune"]),
                         SearchSettings(**{**config["search"], "progress": not quiet}),
                         int(config["trials"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(f"{run_dir}/config.yaml is damaged ({what}); restore it from a copy "
                          "or start a new run") from exc


def _from_args(args: argparse.Namespace) -> RunInputs:
    """The inputs of a new run, from the command line (defaults: autoprune.settings)."""
    from autoprune.plan import DEFAULT_BUDGET, Budget
    from autoprune.space import load_space

    budget = Budget(flops=args.budget_flops, params=args.budget_params,
                    latency=args.budget_latency, latency_ms=args.budget_latency_ms)
    if budget.is_empty:
        budget = DEFAULT_BUDGET
    from autoprune.tasks.loader import task_file_record

    spec = args.task or "digits"
    task_cfg = {"spec": spec, "data_dir": args.data_dir, "model": args.model,
                "weights": args.weights, "seed": args.seed, "num_workers": args.num_workers,
                **task_file_record(spec)}
    trials = RunSettings.trials if args.trials is None else args.trials
    run = settings_from_args(RunSettings, args, trials=trials)
    space = load_space(run.space)
    if run.round_to is not None:  # 1 stays 1: no rounding, not even the default 8
        space = dataclasses.replace(space, round_to=run.round_to)
    ft = settings_from_args(FinetuneSettings, args)
    settings = settings_from_args(SearchSettings, args, workers=_workers(args))
    return RunInputs(task_cfg, budget, space, ft, settings, run.trials)


def _open_run(inputs: RunInputs, run_dir: Any, trust_task: bool = True) -> Any:
    """Load the task (its dense model is trained once, then cached) and build the run on
    ``run_dir`` (a :class:`~autoprune.results.RunDir`). A run folder's own task file runs only
    if it is the file the run was started with, or ``trust_task``."""
    from autoprune.run import Recipe, Run, Target
    from autoprune.tasks import load_task
    from autoprune.tasks.loader import check_task_file

    task_cfg = inputs.task
    check_task_file(task_cfg, run_dir.path, trust_task)
    _check_device(inputs.finetune.device)
    if inputs.search.latency_device is not None:
        _check_device(inputs.search.latency_device, "--latency-device")
    task = load_task(task_cfg["spec"], data_dir=task_cfg.get("data_dir"),
                     model=task_cfg.get("model"), weights=task_cfg.get("weights"),
                     seed=int(task_cfg.get("seed") or 0),
                     num_workers=int(task_cfg.get("num_workers") or 0))
    target = Target(task.dense_model(), task.example_inputs(), task.evaluate,
                    task.splits().train, getattr(task, "finetune", None), _val_size(task))
    recipe = Recipe(inputs.space, inputs.search, inputs.finetune)
    return Run(run_dir, target, inputs.budget, recipe)


def _val_size(task: Any) -> int | None:
    """The size of a task's validation split (the one-standard-error rule's n), when its
    loader's dataset has a length (an iterable dataset has none: None)."""
    try:
        n = len(task.splits().val.dataset)
    except (AttributeError, TypeError):
        return None
    return n if n >= 1 else None


# what --resume may be given beside it: everything else would change the run's meaning
RESUME_FLAGS = {"resume", "trials", "progress", "verbose", "command", "trust_task", "storage",
                "threads"}


def _cmd_search(args: argparse.Namespace) -> int:
    from autoprune.driver import run_search
    from autoprune.run import Recipe, open_run_dir, release_unstarted, resolved_config

    resume = bool(args.resume)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if resume:
        _refuse_with_resume(args)
        inputs = _from_config(args.resume, not args.progress)
        _storage_again(args.storage, inputs.search.storage)
        trials = RunSettings(trials=args.trials or inputs.trials).trials  # validates
        if trials < inputs.trials:
            raise ConfigError(f"--trials {trials} is below the run's {inputs.trials}; --resume "
                              "may only extend a run")
    else:
        _check_out(args.out)
        inputs = _from_args(args)
        trials = inputs.trials
    recipe = Recipe(inputs.space, inputs.search, inputs.finetune)
    config = resolved_config(inputs.task, inputs.budget, trials, recipe)
    run_dir = open_run_dir(args.resume or args.out, config, resume, inputs.budget)
    try:
        run = _open_run(inputs, run_dir, trust_task=args.trust_task)
    except BaseException:
        if not resume:  # a start that failed leaves no run folder to block the corrected command
            release_unstarted(run_dir)
        raise
    if resume and trials != inputs.trials:
        run_dir.write_config({**run_dir.read_config(), "trials": trials})
    _warn_if_busy()
    result = run_search(run, trials, resume, rebuildable=True)
    code = _cmd_report(argparse.Namespace(run_dir=str(result.run_dir)))
    if not any(r.is_full for r in result.trials):
        failed = [r for r in result.trials if r.fail_reason]
        first = f"; first failure: {failed[0].fail_reason}" if failed else ""
        print(f"autoprune: error: no trial completed ({len(failed)} failed{first}); see "
              f"{result.run_dir}/trials.csv", file=sys.stderr)
        return 1
    return code


def _warn_if_busy() -> None:
    """Warn when fewer cores are idle than the threads torch will run (``--threads``)."""
    import torch

    from autoprune.cpu_load import busy_warning, idle_cores

    warning = busy_warning(torch.get_num_threads(), idle_cores(), os.cpu_count() or 1)
    if warning:
        log.warning("%s", warning)


def _check_out(out: str | None) -> None:
    """An ``--out`` that holds a run is refused before anything is loaded (the exclusive claim
    comes later, once the settings are known)."""
    from autoprune.results import RunDir

    if out and RunDir.holds_run(out):
        raise ConfigError(f"{out!r} already holds a run; pass --resume {out} to continue it or "
                          "choose another --out")


def _storage_again(given: str | None, stored: str | None) -> None:
    """``--storage URL`` beside ``--resume``: the run's own storage again, with the password
    that config.yaml does not keep (else AUTOPRUNE_STORAGE_PASSWORD, PGPASSWORD, ~/.pgpass)."""
    from autoprune.storage_url import mask_url, remember

    if given is None:
        return
    if mask_url(given) != stored:
        raise ConfigError(f"--storage {mask_url(given)!r} is not this run's storage "
                          f"({stored!r}); give the run's own URL or drop --storage")
    remember(given)


def _refuse_with_resume(args: argparse.Namespace) -> None:
    extra = sorted(set(getattr(args, "given", {})) - RESUME_FLAGS)
    if extra:
        flags = ", ".join(args.given[d] for d in extra)
        raise ConfigError(f"--resume {args.resume} continues the run as configured in its "
                          f"config.yaml; drop {flags} (only --trials may extend it) or start a "
                          f"new run with --out")


def _workers(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return int(args.workers)
    if args.device.startswith("cuda") and args.backend == "optuna":
        import torch

        return max(1, torch.cuda.device_count()) * max(1, args.workers_per_gpu)
    return 1


def _cmd_worker(args: argparse.Namespace) -> int:
    from autoprune.driver import join_study, work
    from autoprune.results import RunDir
    from autoprune.workers import WorkerArgs

    run_dir = args.run_dir
    if args.storage or args.study:
        if not (args.storage and args.study):
            raise ConfigError("a worker on another machine needs both --storage URL and "
                              "--study NAME")
        run_dir = str(join_study(args.storage, args.study, run_dir).path)
    elif not run_dir:
        raise ConfigError("autoprune worker needs --run-dir RUN_DIR (same machine) or "
                          "--storage URL --study NAME (another machine)")
    run = RunDir.open(run_dir)
    if not run.has_baseline():
        raise ConfigError(f"{run.path} has no baseline.json yet; start workers after the "
                          "launching search has begun")
    inputs = _from_config(run_dir, True)
    done = work(_open_run(inputs, run, trust_task=args.trust_task), inputs.trials,
                WorkerArgs(args.threads, args.worker_index, args.workers_per_gpu))
    log.info("worker finished %d trials", done)
    return 0


def load_space_from_config(data: dict[str, Any]) -> SearchSpace:
    from autoprune.space import SearchSpace

    data = dict(data)
    source = data.pop("source", "config")
    return SearchSpace.from_dict(data, source=source)


def _check_device(device: str, flag: str = "--device") -> None:
    """The settings checked the name; here: is there a CUDA device to run on?"""
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{flag} {device!r} but no CUDA device is available; use {flag} cpu")


def _cmd_export(args: argparse.Namespace) -> int:
    from autoprune.deploy.export import export_trial

    result = export_trial(args.run_dir, args.trial, fmt=args.format, out=args.out,
                          finetune_epochs=args.finetune_epochs, progress=not args.quiet,
                          sparsity=args.sparsity, quantize=args.quantize,
                          trust_task=args.trust_task)
    m = result.metrics
    print(f"trial {args.trial}: test accuracy {m['test_acc']:.2%}, "
          f"{m['flops_ratio']:.1%} of the dense FLOPs, {m['params']:,.0f} params")
    print(f"model:   {result.model_path}\nmetrics: {result.metrics_path}")
    if "weights" in m:
        w = m["weights"]
        print(f"weights: {w['sparsity']:.1%} of all parameters zero, sparse file "
              f"{w['compressed_bytes']:,} bytes (dense {w['dense_bytes']:,}); {w['note']}")
    if "quantized" in m:
        q = m["quantized"]
        print(f"{q['mode']}:    test accuracy {q['test_acc']:.2%}, {q['file_bytes']:,} bytes, "
              f"{q['latency_ms']:.2f} ms at batch {q['latency_batch']} ({q['file']})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """One run: report.html and the terminal summary; several: one comparison page."""
    from pathlib import Path

    dirs = args.run_dir if isinstance(args.run_dir, list) else [args.run_dir]
    if len(dirs) > 1:
        from autoprune.report_compare import write_comparison

        out = getattr(args, "out", None) or Path(dirs[0]).resolve().parent / "comparison.html"
        print(f"comparison: {write_comparison(dirs, out)}")
        return 0
    from autoprune.report import terminal_summary, write_report

    report = write_report(dirs[0])
    print(f"report: {report}\n")
    print(terminal_summary(dirs[0]))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "inspect": _cmd_inspect, "search": _cmd_search, "export": _cmd_export,
    "worker": _cmd_worker, "report": _cmd_report}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 nothing completed or an internal error (a bug:
    ``-v`` shows its traceback), 2 bad input (one stderr line naming what and how to fix it),
    130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.given = given_flags(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    # torch warns about a missing CUDA toolkit when its benchmark timer loads; not our user's issue
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        with watching():  # a Ctrl-C that a library swallowed still stops the command
            return int(COMMANDS[args.command](args) or 0)
    except AutopruneError as exc:
        return _fail(exc, 2)
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a read-only or vanished folder: the user's to fix
        return _fail(_os_error(exc, args), 2)
    except Exception as exc:
        if args.verbose:
            raise
        return _fail(f"internal error {type(exc).__name__}: {exc} (a bug in autoprune; rerun "
                     "with -v for the traceback and report it)", 1)


def _fail(message: object, code: int) -> int:
    text = " ".join(str(message).split())  # one line, whatever the message held
    print(f"autoprune: error: {text}", file=sys.stderr)
    return code


def _os_error(exc: OSError, args: argparse.Namespace) -> str:
    where = exc.filename or "the run directory"
    if exc.errno == errno.ENOSPC:
        run = getattr(args, "resume", None) or getattr(args, "out", None) or "RUN"
        return (f"disk full while writing {where}; free space and run "
                f"`autoprune search --resume {run}`")
    return f"{exc.strerror or type(exc).__name__} at {where}; check the path and its permissions"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

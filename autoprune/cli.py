"""The ``autoprune`` command line: argparse front over the library.

User errors (bad values, missing files, unsupported models) exit with code 2 and one line naming
the argument, the value and the fix; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from autoprune.errors import AutopruneError, ConfigError
from autoprune.evaluate import FinetuneSettings
from autoprune.plan import Budget
from autoprune.searcher import SearchSettings

__all__ = ["main"]

log = logging.getLogger("autoprune")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"autoprune: error: {message}\n")


def _fraction(name: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} {text!r} is not a number; give a fraction of the dense model in (0, 1], "
                "e.g. 0.4"
            ) from None
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(
                f"{name} {text!r} is outside (0, 1]; it is a fraction of the dense model, e.g. "
                "0.4 keeps at most 40 %"
            )
        return value

    return parse


def _positive(name: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} {text!r} must be > 0")
        return value

    return parse


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input {text!r} must look like 1,3,224,224") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"--input {text!r} must look like 1,3,224,224")
    return shape


def _torchvision_model(name: str, num_classes: int) -> Any:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(close)}?" if close
                else "see torchvision.models.list_models()")
        raise ConfigError(f"--model {name!r} is not a torchvision classification builder; {hint}")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes).eval()


def _cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from autoprune.graph import analyze

    if args.model:
        model = _torchvision_model(args.model, args.num_classes)
        example = torch.randn(*(args.input or (1, 3, 224, 224)))
    else:
        from autoprune.tasks import load_task

        task = load_task(args.task or "digits", data_dir=args.data_dir, seed=args.seed)
        model, example = task.dense_model(), task.example_inputs()
    analysis = analyze(model, example, ignore=args.ignore)
    cm = analysis.cost_model
    print(f"{'group':<40} {'channels':>8} {'MACs share':>10} {'params share':>12}")
    for g in analysis.groups:
        print(f"{g.name:<40} {g.channels:>8} {g.macs_share:>10.2%} {g.params_share:>12.2%}")
    print(f"\n{len(analysis.groups)} groups; head (not pruned): {analysis.head}")
    print(f"dense: {cm.dense_macs() / 1e6:.2f} MMACs ({2 * cm.dense_macs() / 1e6:.2f} MFLOPs) "
          f"per image, {cm.dense_params() / 1e6:.3f} M params")
    return 0


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None,
                   help="digits (default) | fashion-mnist | cifar10 | imagefolder | PATH.py | "
                        "package.module:attr")
    p.add_argument("--data-dir", default=None, help="folder with the task's data")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autoprune", description="Search per-layer structured pruning under "
                     "FLOPs / params / latency budgets and keep the Pareto front.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("inspect", help="list the prunable groups and dense costs (a dry run)")
    p.add_argument("--model", help="a torchvision builder, e.g. resnet18 (weights=None)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes for --model")
    p.add_argument("--input", type=_shape, help="example input shape for --model, e.g. 1,3,224,224")
    p.add_argument("--ignore", action="append", help="glob of layer names never pruned "
                   "(repeatable)")
    _add_task_args(p)
    p.set_defaults(func=_cmd_inspect)
    _add_search(sub)
    p = sub.add_parser("export", help="rebuild a trial's pruned model, test it, write the file")
    p.add_argument("run_dir", help="a folder written by `autoprune search`")
    p.add_argument("--trial", type=int, required=True, help="the trial number (see the front)")
    p.add_argument("--format", default="pt", help="pt (default; ap.load_pruned) | torchscript | "
                   "onnx")
    p.add_argument("--finetune-epochs", type=float, default=0.0,
                   help="fine-tune further before export (default 0: the searched weights)")
    p.add_argument("-o", "--out", help="output file or folder (default RUN_DIR/models/)")
    p.add_argument("--sparsity", type=float, default=0.0,
                   help="hybrid: also zero this fraction of the remaining weights, in [0, 1)")
    p.add_argument("--quantize", help="also write a quantized copy: int8 | fp16 | bf16")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_export)
    p = sub.add_parser("worker", help="join a running search as one more worker process")
    p.add_argument("--run-dir", help="the run directory of the search to join (same machine); "
                   "with --storage: where this worker keeps its own files")
    p.add_argument("--storage", help="the search's storage URL (another machine)")
    p.add_argument("--study", help="the study name (config.yaml: study_name) with --storage")
    p.set_defaults(func=_cmd_worker)
    p = sub.add_parser("report", help="write report.html of a run and print its summary")
    p.add_argument("run_dir", help="a folder written by `autoprune search`")
    p.set_defaults(func=_cmd_report)
    return parser


BUDGET_HELP = """budgets (fractions of the dense model; the pruned model keeps AT MOST this much):
  --budget-flops 0.4    keep at most 40 % of the dense model's FLOPs (= MACs x 2; same ratio)
  --budget-params 0.5   keep at most 50 % of the dense model's parameters
  --budget-latency 0.6  at most 60 % of the dense model's latency, measured on --device at
                        --latency-batch and --latency-dtype
  --budget-latency-ms   an absolute latency in milliseconds, measured the same way
FLOPs and params are exact before training: every candidate is fitted onto the budget, so none
is over it. Latency is measured: a candidate over a latency budget is recorded INFEASIBLE and
never fine-tuned, and every front member is timed again at the end."""


def _add_search(sub: Any) -> None:
    p = sub.add_parser(
        "search", help="search per-group pruning ratios under a budget (the main job)",
        description="Search one pruning ratio per coupled channel group under a budget; keep "
                    "the Pareto front of validation accuracy vs cost.",
        epilog=BUDGET_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_task_args(p)
    p.add_argument("--model", help="torchvision builder for cifar10/imagefolder tasks")
    p.add_argument("--weights", help="state_dict file of the dense model (your checkpoint)")
    g = p.add_argument_group("budget (fractions of the dense model; see below)")
    g.add_argument("--budget-flops", type=_fraction("--budget-flops"), metavar="F",
                   help="keep at most F of the dense FLOPs, e.g. 0.4 = at most 40 %%")
    g.add_argument("--budget-params", type=_fraction("--budget-params"), metavar="F",
                   help="keep at most F of the dense parameters")
    g.add_argument("--budget-latency", type=_fraction("--budget-latency"), metavar="F",
                   help="at most F of the dense measured latency")
    g.add_argument("--budget-latency-ms", type=_positive("--budget-latency-ms"), metavar="MS",
                   help="at most MS milliseconds measured latency")
    p.add_argument("--trials", type=int, default=None, help="trials to run (default 40)")
    p.add_argument("--space", default="default",
                   help="search space: default | resnet | mobilenet | plain | PATH.yaml")
    g = p.add_argument_group("search strategy (cheap first, expensive last)")
    g.add_argument("--sampler", default="tpe", help="tpe (default) | nsga2 | gp | random")
    g.add_argument("--screen", type=float, default=4.0, metavar="R",
                   help="candidates scored by the adaptive-BN proxy per fully fine-tuned one "
                        "(default 4; 0: no proxy screening)")
    g.add_argument("--short-fidelity", type=float, default=0.35, metavar="F",
                   help="share of the full fine-tune in the short stage (default 0.35; 0: none)")
    g.add_argument("--promote", type=float, default=2.0, metavar="E",
                   help="short fine-tunes per full one (default 2)")
    g.add_argument("--generation", type=int, default=2, metavar="K",
                   help="full fine-tunes per generation (default 2)")
    g.add_argument("--levels", type=int, default=3,
                   help="cost levels searched, from the budget down to 0.6 x budget (default 3)")
    g.add_argument("--no-priors", action="store_true",
                   help="do not seed the search with the uniform and global-ranking plans")
    p.add_argument("--importance", default="l2", help="l2 (default) | l1 | bn | random")
    p.add_argument("--storage", help="Optuna storage URL (default: study.journal in the run dir)")
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="fine-tune steps per candidate (default 120)")
    p.add_argument("--finetune-epochs", type=float, default=None,
                   help="fine-tune epochs per candidate (instead of --finetune-steps)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tune learning rate")
    p.add_argument("--optimizer", default="sgd", help="sgd (default) | adamw")
    p.add_argument("--distill", action="store_true", help="distil from the dense model")
    p.add_argument("--bn-batches", type=int, default=20,
                   help="batches for BatchNorm re-estimation (proxy score)")
    p.add_argument("--no-latency", action="store_true", help="do not time candidates")
    p.add_argument("--latency-batch", type=int, default=1,
                   help="batch size latency is measured at (default 1)")
    p.add_argument("--latency-dtype", default="float32",
                   help="float32 (default) | float16 | bfloat16")
    p.add_argument("--out", help="run directory (default results/<task>-<budget>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its directory")
    p.add_argument("--mode", default="channels",
                   help="channels (default: structured, real speed-ups) | weights (unstructured: "
                        "zeroed weights, needs --budget-params; smaller files, no speed-up)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes sharing the study (default: 1 on CPU, where the "
                        "threads are split evenly; one per visible GPU on CUDA)")
    p.add_argument("--workers-per-gpu", type=int, default=1,
                   help="on CUDA: processes sharing one GPU, each capped at 1/K of its memory")
    p.add_argument("--backend", default="optuna",
                   help="optuna (default, embedded) | ray (pip install 'autoprune[ray]')")
    p.add_argument("--ray-address", help="with --backend ray: 'auto' joins a running cluster")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="with --backend ray")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="with --backend ray, e.g. 0.5 (fractions do not cap memory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)


def _from_config(run_dir: str, quiet: bool) -> tuple[Any, ...]:
    """(task config, budget, space, fine-tune settings, search settings, trials) of a run."""
    from autoprune.results import RunDir

    config = RunDir.open(run_dir).read_config()
    task_cfg = config["task"]
    if task_cfg.get("python"):
        raise ConfigError(f"{run_dir!r} was started from Python; continue it with "
                          "ap.search(..., run_dir=..., resume=True)")
    return (task_cfg, Budget(**config["budget"]), load_space_from_config(config["space"]),
            FinetuneSettings(**config["finetune"]),
            SearchSettings(**{**config["search"], "progress": not quiet}), int(config["trials"]))


def _search_factory(task_cfg: dict[str, Any], budget: Budget, space: Any,
                    ft: FinetuneSettings, settings: SearchSettings) -> Any:
    """Load the task (its dense model is trained once, then cached) and return the factory
    ``run_dir -> Search`` the runner calls."""
    from autoprune.searcher import Search
    from autoprune.tasks import load_task

    _check_device(ft.device)
    task = load_task(task_cfg["spec"], data_dir=task_cfg.get("data_dir"),
                     model=task_cfg.get("model"), weights=task_cfg.get("weights"),
                     seed=int(task_cfg.get("seed") or 0))
    log.info("task %s: preparing the dense model (trained once, then cached)", task.name)
    model, example = task.dense_model(), task.example_inputs()
    return lambda run: Search(model, example, task.evaluate, task.splits().train, budget, run,
                              getattr(task, "finetune", None), space, ft, settings)


def _cmd_search(args: argparse.Namespace) -> int:
    from autoprune.runner import run_search
    from autoprune.space import load_space

    if args.resume:
        task_cfg, budget, space, ft, settings, trials = _from_config(args.resume, args.quiet)
        trials = args.trials or trials
        out = args.resume
    else:
        budget = Budget(flops=args.budget_flops, params=args.budget_params,
                        latency=args.budget_latency, latency_ms=args.budget_latency_ms)
        if budget.is_empty:
            budget = Budget(flops=0.4)
        task_cfg = {"spec": args.task or "digits", "data_dir": args.data_dir,
                    "model": args.model, "weights": args.weights, "seed": args.seed}
        trials = args.trials if args.trials is not None else 40
        space = load_space(args.space)
        ft = FinetuneSettings(steps=120 if args.finetune_steps is None else args.finetune_steps,
                              epochs=args.finetune_epochs, lr=args.lr,
                              optimizer=args.optimizer, distill=args.distill,
                              bn_batches=args.bn_batches, device=args.device)
        settings = SearchSettings(sampler=args.sampler, seed=args.seed,
                                  importance=args.importance, latency=not args.no_latency,
                                  latency_batch=args.latency_batch,
                                  latency_dtype=args.latency_dtype,
                                  workers=_workers(args), workers_per_gpu=args.workers_per_gpu,
                                  mode=args.mode,
                                  backend=args.backend, ray_address=args.ray_address,
                                  cpus_per_trial=args.cpus_per_trial,
                                  gpus_per_trial=args.gpus_per_trial,
                                  storage=args.storage, progress=not args.quiet,
                                  screen=args.screen, short_fidelity=args.short_fidelity,
                                  promote=args.promote, generation=args.generation,
                                  levels=args.levels, priors=not args.no_priors)
        out = args.out
    if trials < 1:
        raise ConfigError(f"--trials {trials} must be >= 1")
    result = run_search(
        _search_factory(task_cfg, budget, space, ft, settings),
        budget=budget, trials=trials, run_dir=out, config={"task": task_cfg},
        resume=bool(args.resume), settings=settings, space=space, finetune_settings=ft)
    from autoprune.report import terminal_summary, write_report

    report = write_report(str(result.run_dir))
    print(terminal_summary(str(result.run_dir)))
    print(f"\nreport: {report}")
    return 0


def _workers(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return int(args.workers)
    if args.device.startswith("cuda") and args.backend == "optuna":
        import torch

        return max(1, torch.cuda.device_count()) * max(1, args.workers_per_gpu)
    return 1


def _cmd_worker(args: argparse.Namespace) -> int:
    from autoprune.runner import run_worker

    run_dir = args.run_dir
    if args.storage or args.study:
        if not (args.storage and args.study):
            raise ConfigError("a worker on another machine needs both --storage URL and "
                              "--study NAME")
        from autoprune.runner import join_study

        run_dir = str(join_study(args.storage, args.study, run_dir).path)
    elif not run_dir:
        raise ConfigError("autoprune worker needs --run-dir RUN_DIR (same machine) or "
                          "--storage URL --study NAME (another machine)")
    task_cfg, budget, space, ft, settings, trials = _from_config(run_dir, True)
    done = run_worker(run_dir, _search_factory(task_cfg, budget, space, ft, settings),
                      settings, trials)
    log.info("worker finished %d trials", done)
    return 0


def load_space_from_config(data: dict[str, Any]) -> Any:
    from autoprune.space import SearchSpace

    data = dict(data)
    source = data.pop("source", "config")
    return SearchSpace.from_dict(data, source=source)


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    import torch

    if not device.startswith("cuda"):
        raise ConfigError(f"--device {device!r}; use cpu or cuda")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r} but no CUDA device is available; use --device cpu")


def _cmd_export(args: argparse.Namespace) -> int:
    from autoprune.export import export_trial

    result = export_trial(args.run_dir, args.trial, fmt=args.format, out=args.out,
                          finetune_epochs=args.finetune_epochs, progress=not args.quiet,
                          sparsity=args.sparsity, quantize=args.quantize)
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
    from autoprune.report import terminal_summary, write_report

    report = write_report(args.run_dir)
    print(terminal_summary(args.run_dir))
    print(f"\nreport: {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    # torch warns about a missing CUDA toolkit when its benchmark timer loads; not our user's issue
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except AutopruneError as exc:
        print(f"autoprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``autoprune`` argument parser. The search's options are generated from the fields of
:mod:`autoprune.settings` (type, choices, default and help), so a default is written once.

Imports nothing heavy: ``autoprune --help`` never loads torch.
"""

from __future__ import annotations

import argparse
import math
import re
import types
from dataclasses import Field, fields
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from autoprune.errors import ConfigError
from autoprune.settings import (
    FinetuneSettings,
    RunSettings,
    SearchSettings,
    check_choice,
    check_number,
    choices_of,
)

__all__ = ["build_parser", "given_flags", "settings_from_args"]

TRUST_HELP = ("run the task file named in the run folder's config.yaml even if it changed or "
              "moved since the run started (a run folder executes its task file: trust it first)")

S = TypeVar("S")

GROUPS = {
    "strategy": "search strategy (cheap first, expensive last)",
    "finetune": "fine-tuning (the same for every candidate)",
    "latency": "latency measurement",
    "parallel": "parallel trials and backends",
}

BUDGET_HELP = """budgets (fractions of the dense model; the pruned model keeps AT MOST this much):
  --budget-flops 0.4    keep at most 40 % of the dense model's FLOPs (= MACs x 2; same ratio)
  --budget-params 0.5   keep at most 50 % of the dense model's parameters
  --budget-latency 0.6  at most 60 % of the dense model's latency, measured on --device at
                        --latency-batch and --latency-dtype
  --budget-latency-ms   an absolute latency in milliseconds, measured the same way
FLOPs and params are exact before training: every candidate is fitted onto the budget, so none
is over it. Latency is measured: a candidate over a latency budget is recorded INFEASIBLE and
never fine-tuned, and every front member is timed again at the end."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        # "argument --x: --x 'v' is ..." -> "--x 'v' is ...": our messages name the flag already
        message = re.sub(r"^argument (\S+): (?=\1 )", "", message)
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


def _number(flag: str, kind: type = float, **spec: Any) -> Any:
    """argparse type of a number: parsed as ``kind``, finite and within ``spec``
    (:func:`autoprune.settings.check_number`), with the same one-line message as the settings."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not {what}") from None
        try:
            check_number(flag, value, spec)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


class _Once(argparse.Action):
    """A flag that may be given once: a repeated ``--budget-flops`` is an error, not "last wins"."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} is given twice ({getattr(namespace, self.dest)} and "
                         f"{values}); give it once")
        setattr(namespace, self.dest, values)


def _choice(flag: str, choices: tuple[str, ...]) -> Any:
    """argparse type of a ``Literal`` field: the same one-line message as the dataclass."""
    def parse(text: str) -> str:
        try:
            check_choice(flag, text, choices)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return parse


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input {text!r} must look like 1,3,224,224") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"--input {text!r} must look like 1,3,224,224")
    if len(shape) > 6 or shape[0] > 256 or math.prod(shape) > 2**26:
        raise argparse.ArgumentTypeError(
            f"--input {text!r} is too large for an example input (at most 6 dims, batch 256 and "
            f"{2**26:,} values); one image is enough, e.g. 1,3,224,224")
    return shape


_METAVARS = {int: "N", float: "X"}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _scalar(hint: Any) -> Any:
    """``int``/``float``/``str`` of a field type (``X | None`` -> ``X``)."""
    if get_origin(hint) in (Union, types.UnionType):
        return next(a for a in get_args(hint) if a is not type(None))
    return hint


def field_help(f: Field[Any], cli_default: Any) -> str:
    """A field's help on the command line, with its default (``%(default)s`` where argparse's
    default is the field's, the field's own default where the CLI derives the value)."""
    meta = f.metadata
    text = str(meta.get("flag_help") or meta["help"]).replace("%", "%%")
    if f.default is None or isinstance(f.default, bool) or not meta.get("show_default", True):
        return text
    return f"{text} (default {'%(default)s' if cli_default is f.default else f.default})"


def add_setting(target: Any, cls: type, f: Field[Any]) -> None:
    """``add_argument`` for one settings field, from its type and metadata."""
    meta, flag = f.metadata, f.metadata["flag"]
    hint = _hints(cls)[f.name]
    if hint is bool:
        target.add_argument(flag, dest=f.name, help=field_help(f, f.default),
                            action="store_false" if meta.get("negate") else "store_true")
        return
    default = meta.get("cli_default", f.default)
    kwargs: dict[str, Any] = {"dest": f.name, "default": default,
                              "help": field_help(f, default)}
    choices = choices_of(cls).get(f.name)
    if choices:
        kwargs.update(type=_choice(flag, choices), choices=choices)
    else:
        kind = _scalar(hint)
        if kind in (int, float):
            kind = _number(flag, kind, **{k: meta[k] for k in ("low", "high", "above", "below")
                                          if k in meta})
        kwargs.update(type=kind, metavar=meta.get("metavar") or _METAVARS.get(kind) or
                      flag.lstrip("-").upper().replace("-", "_"))
    target.add_argument(flag, **kwargs)


def add_settings(p: argparse.ArgumentParser, cls: type, groups: dict[str, Any],
                 skip: tuple[str, ...] = ()) -> None:
    """One argument per field of ``cls`` that has a flag, in its ``group`` (else on ``p``)."""
    for f in fields(cls):
        if f.metadata.get("flag") and f.name not in skip:
            add_setting(groups.get(f.metadata.get("group"), p), cls, f)


def settings_from_args(cls: type[S], args: argparse.Namespace, **override: Any) -> S:
    """``cls`` built from the parsed flags of its fields (``override`` wins)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls)  # type: ignore[arg-type]
              if f.metadata.get("flag") and hasattr(args, f.name)}
    return cls(**{**values, **override})


def _field(cls: type, name: str) -> Field[Any]:
    return next(f for f in fields(cls) if f.name == name)


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None,
                   help="digits (default) | fashion-mnist | cifar10 | imagefolder | PATH.py | "
                        "package.module:attr")
    p.add_argument("--data-dir", default=None, help="folder with the task's data")
    p.add_argument("--num-workers", type=_number("--num-workers", int, low=0, high=256),
                   default=0, help="loader processes decoding images (cifar10, imagefolder; "
                   "default %(default)s: in this process)")
    add_setting(p, SearchSettings, _field(SearchSettings, "seed"))


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser("inspect", help="list the prunable groups and dense costs (a dry run)")
    p.add_argument("--model", help="a torchvision builder, e.g. resnet18, or timm:<name> "
                   "(untrained)")
    p.add_argument("--num-classes", type=_number("--num-classes", int, low=1, high=1_000_000),
                   default=1000, help="classes for --model")
    p.add_argument("--input", type=_shape, help="example input shape for --model, e.g. 1,3,224,224")
    p.add_argument("--ignore", action="append", help="glob of layer names never pruned "
                   "(repeatable)")
    _add_task_args(p)


def _add_budget(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("budget (fractions of the dense model; see below)")
    g.add_argument("--budget-flops", type=_fraction("--budget-flops"), metavar="F",
                   action=_Once, help="keep at most F of the dense FLOPs, e.g. 0.4 = at most 40 %%")
    g.add_argument("--budget-params", type=_fraction("--budget-params"), metavar="F",
                   action=_Once, help="keep at most F of the dense parameters")
    g.add_argument("--budget-latency", type=_fraction("--budget-latency"), metavar="F",
                   action=_Once, help="at most F of the dense measured latency")
    g.add_argument("--budget-latency-ms", metavar="MS", action=_Once,
                   type=_number("--budget-latency-ms", above=0, high=3_600_000),
                   help="at most MS milliseconds measured latency")


def _add_search(sub: Any) -> None:
    p = sub.add_parser(
        "search", help="search per-group pruning ratios under a budget (the main job)",
        description="Search one pruning ratio per coupled channel group under a budget; keep "
                    "the Pareto front of validation accuracy vs cost.",
        epilog=BUDGET_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_task_args(p)
    p.add_argument("--model", help="cifar10/imagefolder: a torchvision builder (resnet18) or "
                   "timm:<name> (pip install timm), built untrained; see --weights")
    p.add_argument("--weights", help="state_dict file of the dense model (your checkpoint)")
    _add_budget(p)
    add_setting(p, RunSettings, _field(RunSettings, "trials"))
    add_setting(p, RunSettings, _field(RunSettings, "space"))
    add_setting(p, RunSettings, _field(RunSettings, "round_to"))
    p.add_argument("--out", help="run directory (default results/<task>-<budget>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its directory "
                   "(only --trials may change: it extends the run)")
    p.add_argument("--trust-task", action="store_true", help=TRUST_HELP)
    groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    groups["parallel"].add_argument(
        "--threads", type=_number("--threads", int, low=1, high=4096),
        help="torch CPU threads of this process (default: torch's choice, one per core; "
             "fewer on a machine other jobs keep busy: a warning says so)")
    add_settings(p, SearchSettings, groups, skip=("seed",))
    add_settings(p, FinetuneSettings, groups)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="rebuild a trial's pruned model, test it, write the file")
    p.add_argument("run_dir", help="a folder written by `autoprune search`")
    p.add_argument("--trial", type=_number("--trial", int, low=0, high=10**9), required=True,
                   help="the trial number (see the front)")
    p.add_argument("--format", default="pt", choices=("pt", "pt2", "torchscript", "onnx"),
                   help="pt (default; ap.load_pruned reads it) | pt2 (recommended for deployment: "
                        "torch.export program, dynamic batch, torch alone loads it) | torchscript "
                        "(legacy, deprecated upstream) | onnx (dynamo exporter when onnxscript is "
                        "installed; plan and version in its metadata)")
    p.add_argument("--finetune-epochs", type=_number("--finetune-epochs", low=0, high=100_000),
                   default=0.0,
                   help="fine-tune further before export (default 0: the searched weights)")
    p.add_argument("-o", "--out", help="output file or folder (default RUN_DIR/models/)")
    p.add_argument("--sparsity", type=_number("--sparsity", low=0, below=1), default=0.0,
                   help="hybrid: also zero this fraction of the remaining weights, in [0, 1)")
    p.add_argument("--quantize", help="also write a quantized copy: int8 | fp16 | bf16")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--trust-task", action="store_true", help=TRUST_HELP)


def given_flags(argv: list[str]) -> dict[str, str]:
    """``{dest: flag}`` of the options given explicitly in ``argv`` (not their defaults)."""
    parser = build_parser(suppress_defaults=True)
    args = vars(parser.parse_args(argv))
    flags = {a.dest: a.option_strings[-1] for p in _subparsers(parser) for a in p._actions
             if a.option_strings}
    return {dest: flags.get(dest, dest) for dest in args if dest != "command"}


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for p in a.choices.values()]


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The ``autoprune`` parser; ``suppress_defaults``: a namespace of the given flags only."""
    parser = _Parser(prog="autoprune", description="Search per-layer structured pruning under "
                     "FLOPs / params / latency budgets and keep the Pareto front.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_inspect(sub)
    _add_search(sub)
    _add_export(sub)
    p = sub.add_parser("worker", help="join a running search as one more worker process")
    p.add_argument("--run-dir", help="the run directory of the search to join (same machine); "
                   "with --storage: where this worker keeps its own files")
    p.add_argument("--storage", help="the search's storage URL (another machine)")
    p.add_argument("--study", help="the study name (config.yaml: study_name) with --storage")
    p.add_argument("--trust-task", action="store_true", help=TRUST_HELP)
    p.add_argument("--threads", type=_number("--threads", int, low=1, high=4096),
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--worker-index", type=_number("--worker-index", int, low=0, high=100_000),
                   default=1,
                   help="1..N-1: seeds this worker's sampler apart from the others "
                        "(default %(default)s)")
    p.add_argument("--workers-per-gpu", type=_number("--workers-per-gpu", int, low=1, high=64),
                   default=1,
                   help="processes sharing this worker's GPU; each is capped at 1/K of its "
                        "memory (default %(default)s)")
    p = sub.add_parser("report", help="write report.html of a run and print its summary; "
                       "with two or more runs, one page comparing their fronts")
    p.add_argument("run_dir", nargs="+", help="a folder written by `autoprune search` (two or "
                   "more: a comparison page)")
    p.add_argument("--out", help="the comparison page's path (default: comparison.html beside "
                   "the first run)")
    if suppress_defaults:
        for action in (a for p in [parser, *_subparsers(parser)] for a in p._actions):
            action.default = argparse.SUPPRESS
    return parser

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
    _add_more_commands(sub)
    return parser


def _add_more_commands(sub: Any) -> None:
    """Commands whose implementation lives beside the search (added as they land)."""
    try:
        from autoprune import commands
    except ImportError:  # pragma: no cover - during partial installs
        return
    commands.register(sub, _Parser, _fraction, _add_task_args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
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

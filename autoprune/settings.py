"""Every setting of a run, declared once: its type, default, help text and command-line flag.

The CLI (``autoprune search``) generates its arguments from these dataclasses' fields, and
``ap.search`` / ``Session`` take the same objects, so a default is written in one place and every
entry point agrees. A field's ``metadata`` carries ``help`` and, when it is on the command line,
``flag`` (plus ``group``, ``metavar``, ``negate`` for a flag that sets a True default to False,
``flag_help`` for that flag's own wording, and ``cli_default`` where the CLI derives the value).

Fields typed with a ``Literal`` accept exactly its values; a wrong one is a one-line
:class:`~autoprune.errors.ConfigError` naming the flag and the choices. This module imports
nothing heavy (no torch, no backend, no staging), so ``autoprune --help`` stays fast.
"""

from __future__ import annotations

import math
import re
from dataclasses import Field, dataclass, field, fields
from functools import cache
from typing import Any, Literal, get_args, get_origin, get_type_hints

from autoprune.errors import ConfigError

__all__ = ["SAMPLERS", "Backend", "Dtype", "FinetuneSettings", "Importance", "Mode", "Optimizer",
           "RunSettings", "Sampler", "SearchSettings", "check_choice", "check_schedule",
           "choices_of", "flag_of", "meta"]

Sampler = Literal["tpe", "nsga2", "gp", "random"]
Mode = Literal["channels", "weights"]
Backend = Literal["optuna", "ray"]
Dtype = Literal["float32", "float16", "bfloat16"]
LatencyRuntime = Literal["eager", "compile", "onnxruntime"]
Importance = Literal["l2", "l1", "bn", "random"]
Optimizer = Literal["sgd", "adamw"]
Depth = Literal["off", "latency", "on"]
Sensitivity = Literal["off", "latency", "on"]

SAMPLERS: tuple[str, ...] = get_args(Sampler)
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def meta(help: str, flag: str | None = None, **cli: Any) -> dict[str, Any]:
    """A field's metadata: its help text and (when it is on the command line) its flag.

    Numeric fields carry their range: ``low`` / ``high`` (inclusive), ``above`` / ``below``
    (exclusive); every float must also be finite.
    """
    return {"help": help, "flag": flag, **cli}


def check_number(flag: str, value: Any, spec: dict[str, Any]) -> None:
    """One-line ConfigError unless ``value`` is a finite number within ``spec``'s range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{flag} {value!r} is not a number")
    low, high, above, below = (spec.get(k) for k in ("low", "high", "above", "below"))
    if not math.isfinite(value):
        raise ConfigError(f"{flag} {value} must be a finite number")
    if above is not None and not value > above:
        raise ConfigError(f"{flag} {value} must be > {above}")
    if below is not None and not (value < below and (low is None or value >= low)):
        raise ConfigError(f"{flag} {value} must be in [{low}, {below})")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"in [{low}, {high}]" if low is not None and high is not None else \
            (f">= {low}" if low is not None else f"<= {high}")
        raise ConfigError(f"{flag} {value} must be {span}")


def _check_numbers(obj: Any) -> None:
    """Every numeric field of a settings object within its declared range."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None or isinstance(value, (bool, str)):
            continue
        check_number(flag_of(f), value, f.metadata)


def flag_of(f: Field[Any]) -> str:
    """The flag a field is set with (its name when it has no flag: the Python API only)."""
    return str(f.metadata.get("flag") or f.name)


@cache
def choices_of(cls: type) -> dict[str, tuple[str, ...]]:
    """``{field name: allowed values}`` of the ``Literal``-typed fields of ``cls``."""
    hints = get_type_hints(cls)
    return {f.name: get_args(hints[f.name]) for f in fields(cls)
            if get_origin(hints[f.name]) is Literal}


def check_choice(flag: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} {value!r} is unknown; use one of {', '.join(choices)}")


def _check_choices(obj: Any) -> None:
    by_name = {f.name: f for f in fields(obj)}
    for name, choices in choices_of(type(obj)).items():
        check_choice(flag_of(by_name[name]), getattr(obj, name), choices)


def check_schedule(screen: float, short_fidelity: float, promote: float,
                   generation: int) -> None:
    """The staged search's schedule: proxy screening, short stage, promotion, generation."""
    if screen < 0 or not math.isfinite(screen):
        raise ConfigError(f"--screen {screen} must be >= 0 (0 or 1: no proxy screening)")
    if not 0.0 <= short_fidelity < 1.0:
        raise ConfigError(f"--short-fidelity {short_fidelity} must be in [0, 1) "
                          "(0: no short fine-tune stage)")
    if promote < 1:
        raise ConfigError(f"--promote {promote} must be >= 1")
    if generation < 1:
        raise ConfigError(f"--generation {generation} must be >= 1")


@dataclass(frozen=True)
class RunSettings:
    """What one run does (the budget, task and run directory are given beside it)."""

    trials: int = field(default=40, metadata=meta(
        "fully fine-tuned candidates to run; the proxy-screened and short-stage candidates "
        "recorded beside them do not count", "--trials",
        cli_default=None, low=1, high=1_000_000))  # None until given: --resume keeps the count
    space: str = field(default="default", metadata=meta(
        "search space: default | resnet | mobilenet | plain | PATH.yaml", "--space"))
    round_to: int | None = field(default=None, metadata=meta(
        "keep every group's layer width a multiple of N channels (a group of heads: its "
        "attention width); overrides the space's round_to; 1: no rounding (default: the "
        "space's; 8 when the space leaves it open)", "--round-to", low=1, high=1024))

    def __post_init__(self) -> None:
        _check_numbers(self)


@dataclass(frozen=True)
class FinetuneSettings:
    """How each candidate is fine-tuned (the same for every candidate of a run)."""

    steps: int = field(default=120, metadata=meta(
        "fine-tune steps per candidate", "--finetune-steps", group="finetune", low=0,
        high=10_000_000))
    epochs: float | None = field(default=None, metadata=meta(
        "fine-tune epochs per candidate (instead of --finetune-steps: epochs x batches per "
        "epoch)", "--finetune-epochs", group="finetune", above=0, high=100_000))
    lr: float = field(default=0.01, metadata=meta(
        "fine-tune learning rate", "--lr", group="finetune", above=0, high=100))
    optimizer: Optimizer = field(default="sgd", metadata=meta(
        "fine-tune optimizer (sgd: Nesterov momentum 0.9)", "--optimizer", group="finetune"))
    weight_decay: float = field(default=5e-4, metadata=meta(
        "fine-tune weight decay", low=0, high=1))
    distill: bool = field(default=False, metadata=meta(
        "distil from the dense model (KL on softened logits)", "--distill", group="finetune"))
    distill_alpha: float = field(default=0.7, metadata=meta(
        "weight of the distillation loss (1 - alpha: the cross-entropy)", low=0, high=1))
    temperature: float = field(default=4.0, metadata=meta(
        "softmax temperature of the distillation loss", above=0, high=1000))
    bn_batches: int = field(default=20, metadata=meta(
        "batches for BatchNorm re-estimation (the proxy score)", "--bn-batches",
        group="finetune", low=0, high=1_000_000))
    device: str = field(default="cpu", metadata=meta(
        "cpu | cuda | cuda:N: where candidates are fine-tuned (and timed, unless "
        "--latency-device says otherwise)", "--device"))

    def __post_init__(self) -> None:
        _check_choices(self)
        _check_numbers(self)
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"--device {self.device!r}; use cpu or cuda")


@dataclass(frozen=True)
class SearchSettings:
    """How the search is run (the budget, trial count and run directory are arguments)."""

    sampler: Sampler = field(default="tpe", metadata=meta(
        "Optuna sampler of the per-group ratios", "--sampler", group="strategy"))
    seed: int = field(default=0, metadata=meta("random seed", "--seed", low=0, high=2**32 - 1))
    importance: Importance = field(default="l2", metadata=meta(
        "channel importance: which channels of a group are removed", "--importance"))
    level_low: float = field(default=0.6, metadata=meta(
        "lowest cost level sampled, as a fraction of the budget", above=0, high=1))
    latency: bool = field(default=True, metadata=meta(
        "measure each candidate's latency (CPU timer / CUDA events)", "--no-latency",
        negate=True, flag_help="do not time candidates", group="latency"))
    latency_batch: int = field(default=1, metadata=meta(
        "batch size latency is measured at", "--latency-batch", group="latency", low=1,
        high=65_536))
    latency_dtype: Dtype = field(default="float32", metadata=meta(
        "dtype latency is measured in", "--latency-dtype", group="latency"))
    latency_runtime: LatencyRuntime = field(default="eager", metadata=meta(
        "runtime latency is measured in: eager PyTorch | compile (torch.compile) | "
        "onnxruntime (the ONNX export in ONNX Runtime, CPU; pip install \"autoprune[onnx]\")",
        "--latency-runtime", group="latency"))
    latency_device: str | None = field(default=None, metadata=meta(
        "cpu | cuda | cuda:N: where latency is measured (default: the fine-tune --device); "
        "e.g. fine-tune on cuda and time for a CPU deployment with --latency-device cpu",
        "--latency-device", group="latency"))
    latency_table: bool = field(default=True, metadata=meta(
        "under a latency-only budget, time each layer at a few widths first (seconds) and fit "
        "candidates onto latency levels on that table, so they are within the budget by "
        "construction", "--no-latency-table", negate=True, group="latency",
        flag_help="fit FLOPs levels instead and drop candidates found over the latency budget"))
    depth: Depth = field(default="off", metadata=meta(
        "also search which residual blocks to remove whole (a block's layers and the work "
        "around them go, which channel pruning cannot do): off | latency (under a latency "
        "budget fitted on the latency table) | on", "--depth", group="strategy"))
    sensitivity: Sensitivity = field(default="latency", metadata=meta(
        "also start from the sensitivity plan: each group pruned alone at 0.5, BatchNorm "
        "re-estimated, its validation drop measured (one proxy score per group), and the groups "
        "that lose least pruned most: off | latency (under a latency budget fitted on the "
        "latency table; on MobileNetV2 it beat the latency-matched uniform plan by 1-2 points) "
        "| on", "--sensitivity", group="strategy"))
    latency_max_cv: float = field(default=0.10, metadata=meta(
        "a timing whose robust CV (IQR / 1.349 / median) is above this is taken again (twice "
        "at most) and flagged noisy if it stays above", "--latency-max-cv", group="latency",
        above=0, high=10))
    latency_drift: bool = field(default=True, metadata=meta(
        "keep a front member whose end-of-run latency is over the budget by no more than the "
        "re-timed models' median move relative to dense (the machine's load moved, not the "
        "model), flagged", "--no-latency-drift", negate=True, group="latency",
        flag_help="drop every model whose end-of-run latency is over the budget, however the "
        "machine's load moved: the budget as a hard line"))
    storage: str | None = field(default=None, metadata=meta(
        "Optuna storage URL (default: study.journal in the run dir)", "--storage",
        group="parallel"))
    mode: Mode = field(default="channels", metadata=meta(
        "channels: structured, real speed-ups | weights: unstructured, zeroed weights, needs "
        "--budget-params; smaller files, no speed-up", "--mode"))
    workers: int = field(default=1, metadata=meta(
        "local worker processes sharing the study (CLI default: 1 on CPU, where the threads "
        "are split evenly; one per visible GPU on CUDA)", "--workers", group="parallel",
        cli_default=None, show_default=False, low=1, high=1024))
    workers_per_gpu: int = field(default=1, metadata=meta(
        "on CUDA: processes sharing one GPU, each capped at 1/K of its memory",
        "--workers-per-gpu", group="parallel", low=1, high=64))
    backend: Backend = field(default="optuna", metadata=meta(
        "optuna: embedded | ray: pip install 'autoprune[ray]'", "--backend", group="parallel"))
    ray_address: str | None = field(default=None, metadata=meta(
        "with --backend ray: 'auto' joins a running cluster (default: a local Ray instance)",
        "--ray-address", group="parallel"))
    cpus_per_trial: float = field(default=1.0, metadata=meta(
        "with --backend ray: CPUs per trial", "--cpus-per-trial", group="parallel",
        above=0, high=4096))
    gpus_per_trial: float = field(default=0.0, metadata=meta(
        "with --backend ray: GPUs per trial, e.g. 0.5 (fractions do not cap memory)",
        "--gpus-per-trial", group="parallel", low=0, high=64))
    progress: bool = field(default=True, metadata=meta(
        "show a progress bar", "--quiet", negate=True, flag_help="no progress bar"))
    # cheap first, expensive last (autoprune.generations); defaults: benchmarks/search_quality
    screen: float = field(default=4.0, metadata=meta(
        "candidates scored by the adaptive-BN proxy per fully fine-tuned one (0: no proxy "
        "screening)", "--screen", group="strategy", metavar="R", low=0, high=1000))
    short_fidelity: float = field(default=0.35, metadata=meta(
        "share of the full fine-tune in the short stage (0: none)", "--short-fidelity",
        group="strategy", metavar="F", low=0, below=1))
    promote: float = field(default=2.0, metadata=meta(
        "short fine-tunes per full one", "--promote", group="strategy", metavar="E", low=1,
        high=1000))
    generation: int = field(default=2, metadata=meta(
        "full fine-tunes per generation", "--generation", group="strategy", metavar="K",
        low=1, high=10_000))
    priors: bool = field(default=True, metadata=meta(
        "start around the uniform / global-ranking plans and the incumbents", "--no-priors",
        negate=True, group="strategy",
        flag_help="do not seed the search with the uniform and global-ranking plans"))
    levels: int = field(default=3, metadata=meta(
        "cost levels searched, from the budget down to level_low (0.6) x budget", "--levels",
        group="strategy", low=1, high=100))

    def __post_init__(self) -> None:
        _check_numbers(self)
        check_schedule(self.screen, self.short_fidelity, self.promote, self.generation)
        _check_choices(self)
        if self.latency_device is not None and not _DEVICE.fullmatch(self.latency_device):
            raise ConfigError(f"--latency-device {self.latency_device!r}; use cpu, cuda or cuda:N")
        if self.backend == "ray" and self.workers > 1:
            raise ConfigError("--workers is for the optuna backend; with --backend ray, Ray "
                              "runs trials in parallel (--cpus-per-trial, --gpus-per-trial)")


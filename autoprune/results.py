"""The run directory ``results/<run>/``: every file a search writes, written atomically.

Backends hand over :class:`TrialRecord` values (never Optuna or Ray objects), so everything
here is backend-blind, and the report renders from these files alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from autoprune.errors import ConfigError

__all__ = [
    "COLUMNS",
    "STATES",
    "RunDir",
    "TrialRecord",
    "atomic_write_bytes",
    "atomic_write_text",
    "records_to_frame",
]

STATES = ("COMPLETE", "SCREENED", "FAIL", "RUNNING", "INFEASIBLE")

#: trials.csv / front.csv columns, in order; searched parameters follow as ``p:<name>`` columns.
COLUMNS = (
    "trial", "state", "flops_ratio", "params_ratio", "macs", "params", "latency_ms",
    "proxy_acc", "short_acc", "val_acc", "test_acc", "fidelity", "seconds", "fail_reason",
    "baseline", "generation",
)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as autoprune records it, whatever backend ran it."""

    trial: int
    state: str  # COMPLETE | SCREENED (not promoted to a full fine-tune) | INFEASIBLE | FAIL
    flops_ratio: float | None = None
    params_ratio: float | None = None
    macs: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    proxy_acc: float | None = None
    short_acc: float | None = None  # validation accuracy after the short fine-tune stage
    val_acc: float | None = None
    test_acc: float | None = None
    fidelity: float | None = None  # fraction of the full fine-tune this trial received
    seconds: float | None = None
    fail_reason: str | None = None
    baseline: str | None = None  # "uniform-l2" / "global-l2" for the enqueued baselines
    generation: float | None = None  # first trial number of its staged generation
    searched: dict[str, float] = field(default_factory=dict)  # the sampler's parameters
    plan: dict[str, Any] | None = None  # PruningPlan.to_dict()
    stages: dict[str, float] = field(default_factory=dict)  # seconds per pipeline stage


#: Columns parsed back as text; every other column of ``COLUMNS`` except ``trial`` is a float.
_TEXT_COLUMNS = frozenset({"state", "fail_reason", "baseline"})
_PARAM_PREFIX = "p:"
_STAGE_PREFIX = "s:"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never half of either.

    The temp file lives in the same folder (``os.replace`` is atomic only within a filesystem) and
    is removed if anything fails; an existing file keeps its permission bits.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8 text through :func:`atomic_write_bytes`; newlines are written as given."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    """Let numpy scalars/arrays and paths through ``json.dumps`` (backends hand both over)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dump_json(data: Any, *, sort_keys: bool = False) -> str:
    return json.dumps(data, indent=2, sort_keys=sort_keys, default=_json_default) + "\n"


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def records_to_frame(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """The one table layout of trials.csv and front.csv.

    ``COLUMNS`` in order, then one ``p:<name>`` column per searched parameter (union over records,
    sorted), then one ``s:<stage>`` column per pipeline stage time in seconds; rows sorted by
    ``trial``; missing values are ``None``/NaN and written as empty cells.
    """
    names = sorted({name for record in records for name in record.searched})
    stages = sorted({name for record in records for name in record.stages})
    rows = []
    for record in sorted(records, key=lambda r: r.trial):
        row: dict[str, Any] = {column: getattr(record, column) for column in COLUMNS}
        row.update({_PARAM_PREFIX + name: record.searched.get(name) for name in names})
        row.update({_STAGE_PREFIX + name: record.stages.get(name) for name in stages})
        rows.append(row)
    return pd.DataFrame(rows, columns=[*COLUMNS, *(_PARAM_PREFIX + name for name in names),
                                       *(_STAGE_PREFIX + name for name in stages)])


def _parse_row(row: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments of a TrialRecord from one CSV row read as text (empty cell -> None)."""
    kwargs: dict[str, Any] = {}
    for column in COLUMNS:
        cell = row.get(column, "")
        if column == "trial":
            kwargs[column] = int(cell)
        elif column == "state":
            kwargs[column] = cell
        elif cell == "":
            kwargs[column] = None
        else:
            kwargs[column] = cell if column in _TEXT_COLUMNS else float(cell)
    kwargs["searched"] = {
        key[len(_PARAM_PREFIX):]: float(cell)
        for key, cell in row.items()
        if key.startswith(_PARAM_PREFIX) and cell != ""
    }
    kwargs["stages"] = {
        key[len(_STAGE_PREFIX):]: float(cell)
        for key, cell in row.items()
        if key.startswith(_STAGE_PREFIX) and cell != ""
    }
    return kwargs


@dataclass(frozen=True)
class RunDir:
    """A ``results/<run>/`` folder; every write is atomic so a crash never leaves half a file.

    An empty ``fail_reason``/``baseline`` and a NaN metric read back as ``None``.
    """

    path: Path

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> RunDir:
        """Make (or reuse, for ``--resume``) a run directory with its ``plans/`` and ``models/``."""
        run = cls(Path(path))
        run.plans_dir.mkdir(parents=True, exist_ok=True)
        run.models_dir.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """An existing run directory, as ``report``/``export`` take it from the user."""
        run = cls(Path(path))
        if not run.path.is_dir() or not run.config_path.is_file():
            raise ConfigError(
                f"{run.path} is not an autoprune run directory (no config.yaml); "
                "pass the folder a search wrote, e.g. results/<run>"
            )
        return run

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def baseline_path(self) -> Path:
        return self.path / "baseline.json"

    @property
    def journal_path(self) -> Path:
        return self.path / "study.journal"

    @property
    def trials_path(self) -> Path:
        return self.path / "trials.csv"

    @property
    def front_csv_path(self) -> Path:
        return self.path / "front.csv"

    @property
    def front_json_path(self) -> Path:
        return self.path / "front.json"

    @property
    def plans_dir(self) -> Path:
        return self.path / "plans"

    @property
    def models_dir(self) -> Path:
        return self.path / "models"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def plan_path(self, trial: int) -> Path:
        return self.plans_dir / f"{int(trial)}.json"

    def write_config(self, config: dict[str, Any]) -> None:
        """The fully resolved config, in the caller's key order (plain YAML types only)."""
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        try:
            config = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"{self.config_path} is not valid YAML ({exc}); fix or rewrite the file"
            ) from exc
        if not isinstance(config, dict):
            raise ConfigError(
                f"{self.config_path} holds {type(config).__name__}, not a mapping; "
                "rewrite it with the config a search wrote"
            )
        return config

    def write_baseline(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.baseline_path, _dump_json(data))

    def read_baseline(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.baseline_path.read_text(encoding="utf-8"))
        return data

    def write_plan(self, trial: int, plan: dict[str, Any]) -> None:
        """``plans/<trial>.json`` with sorted keys, so plans diff cleanly between runs."""
        atomic_write_text(self.plan_path(trial), _dump_json(plan, sort_keys=True))

    def read_plan(self, trial: int) -> dict[str, Any]:
        plan: dict[str, Any] = json.loads(self.plan_path(trial).read_text(encoding="utf-8"))
        return plan

    def _plan_or_none(self, trial: int) -> dict[str, Any] | None:
        return self.read_plan(trial) if self.plan_path(trial).is_file() else None

    def write_trials(self, records: Sequence[TrialRecord]) -> None:
        """Rewrite ``trials.csv`` whole (it is small); floats keep full precision."""
        atomic_write_text(self.trials_path, _frame_to_csv(records_to_frame(records)))

    def read_trials(self) -> list[TrialRecord]:
        """Records from ``trials.csv`` (``[]`` before the first write), plans from ``plans/``."""
        if not self.trials_path.is_file():
            return []
        frame = pd.read_csv(self.trials_path, dtype=str, keep_default_na=False, na_filter=False)
        records = []
        for row in frame.to_dict(orient="records"):
            kwargs = _parse_row({str(key): str(cell) for key, cell in row.items()})
            records.append(TrialRecord(**kwargs, plan=self._plan_or_none(kwargs["trial"])))
        return records

    def write_front(self, records: Sequence[TrialRecord]) -> None:
        """``front.csv`` (the trials.csv layout) and ``front.json`` (rows with their plans).

        A record without a plan takes the one in ``plans/<trial>.json`` when present.
        """
        atomic_write_text(self.front_csv_path, _frame_to_csv(records_to_frame(records)))
        rows = []
        for record in sorted(records, key=lambda r: r.trial):
            row: dict[str, Any] = {c: _none_if_nan(getattr(record, c)) for c in COLUMNS}
            row["searched"] = dict(record.searched)
            row["plan"] = record.plan if record.plan is not None else self._plan_or_none(
                record.trial
            )
            rows.append(row)
        atomic_write_text(self.front_json_path, _dump_json(rows))

    def read_front(self) -> list[dict[str, Any]]:
        """The rows of ``front.json`` (``[]`` before the first write)."""
        if not self.front_json_path.is_file():
            return []
        rows: list[dict[str, Any]] = json.loads(self.front_json_path.read_text(encoding="utf-8"))
        return rows


def _frame_to_csv(frame: pd.DataFrame) -> str:
    return str(frame.to_csv(index=False, na_rep="", lineterminator="\n"))

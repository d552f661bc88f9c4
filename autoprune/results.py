"""The run directory ``results/<run>/``: every file a search writes, written atomically.

Backends hand over :class:`TrialRecord` values (never Optuna or Ray objects), so everything
here is backend-blind, and the report renders from these files alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from autoprune import run_files
from autoprune.errors import ConfigError
from autoprune.run_files import FileCheck
from autoprune.trial import TrialRecord, TrialState

__all__ = [
    "COLUMNS",
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_text",
    "records_to_frame",
]

#: trials.csv / front.csv columns, in order; searched parameters follow as ``p:<name>`` columns.
COLUMNS = (
    "trial", "state", "flops_ratio", "params_ratio", "macs", "params", "latency_ms",
    "latency_cv", "latency_flag", "refits", "proxy_acc", "short_acc", "val_acc", "test_acc",
    "fidelity", "seconds", "fail_reason", "baseline", "generation",
)


#: Columns parsed back as text; every other column of ``COLUMNS`` except ``trial`` is a float.
_TEXT_COLUMNS = frozenset({"state", "fail_reason", "baseline", "latency_flag"})
_NUMBER_COLUMNS = tuple(c for c in COLUMNS if c not in _TEXT_COLUMNS and c != "trial")
_PARAM_PREFIX = "p:"
_STAGE_PREFIX = "s:"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never half of either.

    The temp file lives in the same folder (``os.replace`` is atomic only within a filesystem) and
    is removed if anything fails. A new file gets the mode ``open()`` would give it (``0o666``
    less the umask: 0644 under the usual umask 022, so a shared cache or an exported model is
    readable by others; never the 0600 of the temp file); an existing file keeps its bits.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno and exc.filename is None:  # name the file
            exc.filename = str(target)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else set and
    restored at once."""
    with contextlib.suppress(OSError, ValueError), \
            open("/proc/self/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def _dtypes(header: Sequence[str]) -> dict[str, Any]:
    """pandas dtypes of a trials.csv/front.csv header: text columns, the trial number, floats."""
    return {c: (str if c in _TEXT_COLUMNS else "Int64" if c == "trial" else float)
            for c in header}


def _record_from_row(row: dict[str, Any], plan: dict[str, Any] | None) -> TrialRecord:
    """A TrialRecord from one typed CSV row (NaN / empty cell -> None)."""
    kwargs: dict[str, Any] = {c: _none_if_nan(row.get(c)) for c in COLUMNS}
    kwargs["trial"] = int(row["trial"])
    for column in _TEXT_COLUMNS:
        if kwargs[column] == "":
            kwargs[column] = None
    for column in set(COLUMNS) - _TEXT_COLUMNS - {"trial"}:
        if kwargs[column] is not None:
            kwargs[column] = float(kwargs[column])

    def prefixed(prefix: str) -> dict[str, float]:
        return {key[len(prefix):]: float(v) for key, v in row.items()
                if key.startswith(prefix) and _none_if_nan(v) is not None}

    return TrialRecord(**kwargs, searched=prefixed(_PARAM_PREFIX),
                       stages=prefixed(_STAGE_PREFIX), plan=plan)


@dataclass(frozen=True)
class Remeasured:
    """What the end-of-run re-timing wrote (latency_remeasured.json)."""

    ms: dict[int, float]  # trial -> final median ms
    iqr: dict[str, float]  # "<trial>" or "dense" -> the spread beside each median
    drift: float  # the re-timed models' median move relative to dense (Ledger.remeasure)


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

    @classmethod
    def holds_run(cls, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` already holds a run (its config.yaml)."""
        return cls(Path(path)).config_path.is_file()

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

    @property
    def budget_path(self) -> Path:
        return self.path / "budget.json"

    @property
    def test_scores_path(self) -> Path:
        return self.path / "test_scores.json"

    @property
    def remeasured_path(self) -> Path:
        return self.path / "latency_remeasured.json"

    @property
    def workers_dir(self) -> Path:
        """Logs of local worker processes."""
        return self.path / "workers"

    def plan_path(self, trial: int) -> Path:
        return self.plans_dir / f"{int(trial)}.json"

    def model_path(self, trial: int) -> Path:
        """The fine-tuned weights (state dict) of a trial: ``models/trial_<N>.pt``."""
        return self.models_dir / f"trial_{int(trial)}.pt"

    def export_path(self, trial: int, suffix: str) -> Path:
        """Where ``autoprune export`` writes a trial in a format (``suffix`` e.g. ``.onnx``)."""
        return self.models_dir / f"trial_{int(trial)}{suffix}"

    def saved_models(self) -> dict[int, Path]:
        """Trials whose fine-tuned weights are on disk."""
        out = {}
        for path in self.models_dir.glob("trial_*.pt"):
            number = path.stem.split("_", 1)[1]
            if number.isdigit():
                out[int(number)] = path
        return out

    @property
    def latency_table_path(self) -> Path:
        return self.path / "latency_table.json"

    @property
    def timing_log_path(self) -> Path:
        return self.path / "latency_log.jsonl"

    def log_timing(self, entry: dict[str, Any]) -> None:
        """Append one timing (interval, process, figures) to latency_log.jsonl; callers hold
        the device's timing lock, so lines never interleave."""
        with open(self.timing_log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=_json_default) + "\n")

    def read_timing_log(self) -> list[dict[str, Any]]:
        """The entries of :meth:`log_timing`, oldest first (a torn last line is skipped)."""
        if not self.timing_log_path.is_file():
            return []
        out = []
        for line in self.timing_log_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def lock_path(self, name: str) -> Path:
        """An inter-process lock file of the run (``ask``, ``latency-cpu``, ...)."""
        return self.path / f".{name}.lock"

    def write_model(self, trial: int, data: bytes) -> None:
        atomic_write_bytes(self.model_path(trial), data)

    def write_budget(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.budget_path, _dump_json(data))

    def read_budget(self) -> dict[str, Any] | None:
        """The resolved budget (``None`` for runs written before it was recorded)."""
        if not self.budget_path.is_file():
            return None
        check = FileCheck(self.budget_path)
        return run_files.check_budget(check, check.json())

    def write_scores(self, which: str, scores: dict[Any, float]) -> None:
        """``test_scores.json`` (``which="test"``) or ``latency_remeasured.json``
        (``which="latency"``): a figure per trial number (and ``"dense"``)."""
        atomic_write_text(self._scores_path(which), _dump_json({str(k): v for k, v in
                                                                scores.items()}))

    def read_scores(self, which: str) -> dict[int, float]:
        """The per-trial figures of :meth:`write_scores` (``{}`` before the first write)."""
        return _per_trial(_checked_scores(self._scores_path(which)))

    def read_remeasured(self) -> Remeasured:
        """latency_remeasured.json in one read: the final figures, their spreads and the drift
        (empty, empty and 1 before the end-of-run re-timing)."""
        data = _checked_scores(self.remeasured_path)
        return Remeasured(_per_trial(data),
                          {k[4:]: float(v) for k, v in data.items() if k.startswith("iqr:")},
                          float(data.get("latency_drift", 1.0)))

    def _scores_path(self, which: str) -> Path:
        paths = {"test": self.test_scores_path, "latency": self.remeasured_path}
        if which not in paths:
            raise ValueError(f"scores {which!r}: use one of {sorted(paths)}")
        return paths[which]

    def write_config(self, config: dict[str, Any]) -> None:
        """The fully resolved config, in the caller's key order (plain YAML types only)."""
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        """config.yaml, its sections type-checked (damage: one ConfigError line)."""
        check = FileCheck(self.config_path)
        return run_files.check_config(check, check.yaml())

    def write_baseline(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.baseline_path, _dump_json(data))

    def read_baseline(self) -> dict[str, Any]:
        """baseline.json, its figures type-checked (missing or damaged: one ConfigError line)."""
        check = FileCheck(self.baseline_path)
        return run_files.check_baseline(check, check.json())

    def has_baseline(self) -> bool:
        return self.baseline_path.is_file()

    def write_plan(self, trial: int, plan: dict[str, Any]) -> None:
        """``plans/<trial>.json`` with sorted keys, so plans diff cleanly between runs."""
        atomic_write_text(self.plan_path(trial), _dump_json(plan, sort_keys=True))

    def read_plan(self, trial: int) -> dict[str, Any]:
        """``plans/<trial>.json``, type-checked (missing or damaged: one ConfigError line)."""
        check = FileCheck(self.plan_path(trial))
        return run_files.check_plan(check, check.json())

    def _plan_or_none(self, trial: int) -> dict[str, Any] | None:
        return self.read_plan(trial) if self.plan_path(trial).is_file() else None

    def write_trials(self, records: Sequence[TrialRecord]) -> None:
        """Rewrite ``trials.csv`` whole (it is small); floats keep full precision."""
        atomic_write_text(self.trials_path, _frame_to_csv(records_to_frame(records)))

    def read_trials(self) -> list[TrialRecord]:
        """Records from ``trials.csv`` (``[]`` before the first write), plans from ``plans/``."""
        if not self.trials_path.is_file():
            return []
        records = _read_table(FileCheck(self.trials_path))
        return [dataclasses.replace(r, plan=self._plan_or_none(r.trial)) for r in records]

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
        check = FileCheck(self.front_json_path)
        return run_files.check_front(check, check.json(), _NUMBER_COLUMNS, _TEXT_COLUMNS,
                                     [s.value for s in TrialState])


def _checked_scores(path: Path) -> dict[str, Any]:
    """A scores file (test_scores.json, latency_remeasured.json) checked; ``{}`` if absent."""
    if not path.is_file():
        return {}
    check = FileCheck(path)
    return run_files.check_scores(check, check.json())


def _per_trial(data: dict[str, Any]) -> dict[int, float]:
    return {int(k): float(v) for k, v in data.items() if k.isdigit()}


def _read_table(check: FileCheck) -> list[TrialRecord]:
    """trials.csv's rows as records (without plans); any damage names the file.

    Rows end in ``\n`` only (as written), so a lone ``\r`` in a text cell stays text; a file
    saved with CRLF endings throughout is read too."""
    text = check.text()  # missing, empty, unreadable or not UTF-8
    if text.count("\r\n") == text.count("\n"):
        text = text.replace("\r\n", "\n")
    try:
        header = [str(c) for c in pd.read_csv(io.StringIO(text), nrows=0,
                                              lineterminator="\n").columns]
        missing = [c for c in ("trial", "state") if c not in header]
        if missing:
            raise check.fail(f"no {missing[0]!r} column")
        frame = pd.read_csv(io.StringIO(text), dtype=_dtypes(header), keep_default_na=False,
                            lineterminator="\n",
                            na_values={c: [""] for c in header if c not in _TEXT_COLUMNS})
        return [_record_from_row(row, None) for row in frame.to_dict(orient="records")]
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError, pd.errors.ParserError) as exc:
        raise check.fail(str(exc) or type(exc).__name__) from exc


def _frame_to_csv(frame: pd.DataFrame) -> str:
    return str(frame.to_csv(index=False, na_rep="", lineterminator="\n"))

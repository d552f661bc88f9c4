"""Checks on a run directory's files as they are read back (the read side of :mod:`results`).

A run folder can be copied, hand-edited, cut short by a full disk or planted with hostile text,
so nothing read from it is trusted: every file is parsed and its known fields are type-checked
here, and anything wrong becomes one :class:`~autoprune.errors.ConfigError` line,
``<path> is damaged (<what>); <fix>``, where the fix says how that file is rebuilt. Numbers that
the report formats or draws (trial numbers, ratios, accuracies) are checked to be numbers, so
only text fields ever carry text; the report escapes those (:func:`autoprune._svg.esc`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import ConfigError

__all__ = ["BUDGET_KEYS", "FileCheck", "check_baseline", "check_budget", "check_config",
           "check_front", "check_plan", "check_scores", "fix_for"]

#: The fields of a budget (``Budget``), as config.yaml, baseline.json and budget.json hold it.
BUDGET_KEYS = frozenset({"flops", "params", "latency", "latency_ms"})
#: Numbers of baseline.json's ``dense`` entry (what the report formats and draws).
_DENSE_NUMBERS = ("macs", "flops", "params", "latency_ms", "latency_iqr_ms", "latency_cv",
                  "batch_size", "val_acc", "test_acc", "latency_final_ms", "latency_final_iqr_ms",
                  "prepare_s")
_MAX_WHAT = 160


def fix_for(path: Path) -> str:
    """How a damaged run file is rebuilt (or why it cannot be), for its one-line error."""
    name, run = path.name, path.parent.parent if path.parent.name in ("plans", "models") \
        else path.parent
    resume = f"`autoprune search --resume {run}`"
    if name == "config.yaml":
        return "restore it from a copy of the run (it cannot be rebuilt; or start a new search)"
    if name == "baseline.json":
        return f"restore it, or delete it and run {resume} to measure the dense model again"
    if name == "budget.json":
        return f"restore it, or delete it and run {resume} to write it again"
    if name in ("trials.csv", "front.json"):
        return f"restore it, or run {resume}, which rewrites it from the study journal"
    if name in ("test_scores.json", "latency_remeasured.json"):
        return f"delete it and run {resume} to score and time the front again"
    if path.parent.name == "plans":
        return (f"restore it from a copy of the run, or delete it (trial {path.stem} then "
                "shows without its plan and cannot be exported)")
    if name.endswith(".metrics.json"):
        return f"delete it, or rerun `autoprune export {run}` for that trial"
    return "restore it from a copy of the run"


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_WHAT else text[:_MAX_WHAT - 3] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return f"the text {_one_line(repr(value))}"
    name = {"dict": "mapping", "str": "text", "NoneType": "null"}.get(type(value).__name__,
                                                                      type(value).__name__)
    return "null" if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


@dataclass(frozen=True)
class FileCheck:
    """Reads one run file and checks its fields; every failure names the file and its fix."""

    path: Path

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.path} is damaged ({_one_line(what)}); {fix_for(self.path)}")

    def text(self) -> str:
        """The file's text; a missing, unreadable or non-UTF-8 file is damaged."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{self.path} is missing; {fix_for(self.path)}") from None
        except OSError as exc:
            raise self.fail(f"cannot be read: {exc.strerror or exc}") from exc
        if not data.strip():
            raise self.fail("empty file")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"not UTF-8 text: byte {exc.start}") from exc

    def json(self) -> Any:
        try:
            return json.loads(self.text())
        except json.JSONDecodeError as exc:
            raise self.fail(f"not JSON: {exc}") from exc
        except RecursionError as exc:
            raise self.fail("JSON nested too deeply") from exc

    def yaml(self) -> Any:
        try:
            return yaml.safe_load(self.text())
        except yaml.YAMLError as exc:
            mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise self.fail(f"not valid YAML: {where}{problem or exc}") from exc
        except RecursionError as exc:
            raise self.fail("YAML nested too deeply") from exc

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{where} is {_kind(value)}, not a mapping")
        odd = next((k for k in value if not isinstance(k, str)), None)
        if odd is not None:
            raise self.fail(f"{where} has the key {odd!r}, not a name")
        return value

    def number(self, value: Any, where: str, *, integer: bool = False,
               required: bool = False) -> Any:
        """``value`` if it is a number (a whole one with ``integer``); ``None`` unless
        ``required``. Booleans and text are not numbers."""
        if value is None and not required:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and integer:
            ok = math.isfinite(value) and float(value).is_integer()
        if not ok:
            raise self.fail(f"{where} is {_kind(value)}, not a {'whole ' if integer else ''}"
                            "number")
        return int(value) if integer else value

    def numbers(self, data: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
        for key in keys:
            self.number(data.get(key), f"{where}{key}")

    def words(self, data: Mapping[str, Any], keys: Iterable[str], where: str) -> None:
        """Text fields: text or null (a number or a list is damage)."""
        for key in keys:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise self.fail(f"{where}{key} is {_kind(value)}, not text")

    def budget(self, value: Any, where: str) -> dict[str, Any]:
        data = self.mapping(value, where)
        unknown = sorted(set(data) - BUDGET_KEYS)
        if unknown:
            raise self.fail(f"{where} has unknown keys {unknown}")
        self.numbers(data, data, f"{where}.")
        return data


def check_config(check: FileCheck, config: Any) -> dict[str, Any]:
    """config.yaml: a mapping whose sections have the types a search writes."""
    data = check.mapping(config, "the file")
    if "task" in data:
        task = check.mapping(data["task"], "task")
        check.words(task, ("spec", "data_dir", "model", "weights"), "task.")
        check.number(task.get("seed"), "task.seed", integer=True)
    if "budget" in data:
        check.budget(data["budget"], "budget")
    for section in ("space", "finetune", "search"):
        if section in data:
            check.mapping(data[section], section)
    check.number(data.get("trials"), "trials", integer=True)
    check.words(data, ("study_name", "autoprune_version"), "")
    return data


def check_baseline(check: FileCheck, value: Any) -> dict[str, Any]:
    """baseline.json: the dense model's figures, the budget, the group count, the environment."""
    data = check.mapping(value, "the file")
    if data.get("dense") is not None:
        dense = check.mapping(data["dense"], "dense")
        check.numbers(dense, _DENSE_NUMBERS, "dense.")
        check.words(dense, ("device", "dtype", "runtime"), "dense.")
    if data.get("budget") is not None:
        check.budget(data["budget"], "budget")
    check.number(data.get("groups"), "groups", integer=True)
    if data.get("group_channels") is not None:  # {group: {"channels": C, "quantum": q, ...}}
        widths = check.mapping(data["group_channels"], "group_channels")
        for name, item in widths.items():
            where = f"group_channels[{name!r}]"
            entry = check.mapping(item, where)
            if check.number(entry.get("channels"), f"{where}.channels", integer=True,
                            required=True) < 1:
                raise check.fail(f"{where}.channels is {entry['channels']}, not >= 1")
            for key in ("quantum", "unit_width"):  # optional, 1 when absent
                if (check.number(entry.get(key), f"{where}.{key}", integer=True) or 1) < 1:
                    raise check.fail(f"{where}.{key} is {entry[key]}, not >= 1")
    if data.get("frozen") is not None:  # [{"name": group, "reason": why}]
        if not isinstance(data["frozen"], list):
            raise check.fail(f"frozen is {_kind(data['frozen'])}, not a list")
        for i, item in enumerate(data["frozen"]):
            check.words(check.mapping(item, f"frozen[{i}]"), ("name", "reason"), f"frozen[{i}].")
    if data.get("sensitivity") is not None:  # {group: validation drop pruned alone}
        drops = check.mapping(data["sensitivity"], "sensitivity")
        for name, drop in drops.items():
            check.number(drop, f"sensitivity[{name!r}]", required=True)
    check.number(data.get("sensitivity_s"), "sensitivity_s")  # seconds measuring them
    if data.get("environment") is not None:
        env = check.mapping(data["environment"], "environment")
        for key, item in env.items():
            if isinstance(item, (dict, list)):
                raise check.fail(f"environment.{key} is {_kind(item)}, not a value")
    return data


def check_budget(check: FileCheck, value: Any) -> dict[str, Any]:
    """budget.json: the budget and the dense figures it was resolved against."""
    data = check.mapping(value, "the file")
    check.budget(data.get("budget", {}), "budget")
    for key in ("dense_macs", "dense_params"):
        check.number(data.get(key), key, required=True)
    check.number(data.get("dense_latency_ms"), "dense_latency_ms")
    return data


def check_plan(check: FileCheck, value: Any, where: str = "the plan") -> dict[str, Any]:
    """A pruning plan (``PruningPlan.to_dict()``): ratios per group name, importance, round_to."""
    plan = check.mapping(value, where)  # other keys are PruningPlan.from_dict's to refuse
    ratios = check.mapping(plan.get("ratios", {}), f"{where}'s ratios")
    check.numbers(ratios, ratios, f"{where}'s ratio of ")
    check.words(plan, ("importance",), f"{where}'s ")
    check.number(plan.get("round_to"), f"{where}'s round_to", integer=True)
    return plan


def check_scores(check: FileCheck, value: Any) -> dict[str, Any]:
    """test_scores.json / latency_remeasured.json: a number per trial (and ``"dense"``); the
    latter's ``iqr:<trial>`` / ``iqr:dense`` entries (the spread of each timing) and its
    ``latency_drift`` too."""
    data = check.mapping(value, "the file")
    check.numbers(data, [k for k in data if k.isdigit() or k in ("dense", "latency_drift")
                         or k.startswith("iqr:")], "the figure of ")
    return data


def check_front(check: FileCheck, value: Any, numbers: Iterable[str], words: Iterable[str],
                states: Iterable[str]) -> list[dict[str, Any]]:
    """front.json: a list of rows, each a trial's figures (``numbers``), text (``words``),
    state (one of ``states``), searched parameters and plan; trial numbers come back as ints."""
    if not isinstance(value, list):
        raise check.fail(f"the file is {_kind(value)}, not a list of rows")
    numbers, words, states = tuple(numbers), tuple(words), frozenset(states)
    for i, item in enumerate(value):
        row = check.mapping(item, f"row {i}")
        row["trial"] = check.number(row.get("trial"), f"row {i} trial", integer=True,
                                    required=True)
        if row.get("state") not in states:
            raise check.fail(f"row {i} state is {_kind(row.get('state'))}, not one of "
                             f"{sorted(states)}")
        check.numbers(row, numbers, f"row {i} ")
        check.words(row, words, f"row {i} ")
        searched = check.mapping(row.get("searched") or {}, f"row {i} searched")
        check.numbers(searched, searched, f"row {i} searched ")
        if row.get("plan") is not None:
            check_plan(check, row["plan"], f"row {i} plan")
    return value


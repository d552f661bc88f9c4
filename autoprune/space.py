"""Search spaces: what is prunable for a model family and how the search is shaped.

A space file (``autoprune/search_spaces/*.yaml``, package data) says which layers are never
pruned, the default range of each group's *relative allocation* (its upper end is also the
group's ratio cap), per-pattern ranges, and ``shared: true`` to tie every group a pattern matches
to one searched parameter (stages). Budget, backend and trial count belong to the run, not
here. Pure: no torch, no optuna.

Example::

    ignore: []
    round_to: null
    ratio: {low: 0.0, high: 0.8, step: 0.05}
    rules:
      - {pattern: "layer1.*", shared: true, name: stage1, high: 0.6}
      - {pattern: "layer4.*", shared: true, name: stage4, optional: true}
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from autoprune.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; annotations only

__all__ = ["Param", "ResolvedSpace", "Rule", "SearchSpace", "builtin_spaces", "load_space",
           "with_target_rounding"]

#: The layer width a search rounds to when the space leaves it open (round_to: null). Odd widths
#: are slow where models ship: tensor cores on CUDA (DESIGN decision 4), and ONNX Runtime on the
#: CPU, where unrounded uniform plans at half and 0.3 of the FLOPs ran 0.38-0.82x as fast as
#: dense on MobileNetV2 and the digits ResNet-8 while rounded to 8 every one ran faster than
#: dense, 1.04-11.7x (benchmarks/results/latency.md). A model searched with eager timing is
#: still usually exported to ONNX, and in eager PyTorch rounding helped in 9 of the 12 cells
#: (lost 3, by 0.07-0.25x), so every target rounds by default; ``--round-to 1`` turns it off.
TARGET_ROUND_TO = 8

# Package data (pyproject's [tool.setuptools.package-data]), so a wheel carries the YAML too; the
# repository's top-level ``search_spaces`` is a symlink to this folder.
_SPACES_PACKAGE = "autoprune"
_SPACES_FOLDER = "search_spaces"
_RULE_KEYS = {"pattern", "shared", "name", "low", "high", "step", "optional"}
_TOP_KEYS = {"description", "ignore", "round_to", "ratio", "rules", "family"}


@dataclass(frozen=True)
class Rule:
    pattern: str
    shared: bool = False
    name: str | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    optional: bool = False


@dataclass(frozen=True)
class Param:
    """One searched value: a relative allocation in [low, high] for one or more groups."""

    name: str
    low: float
    high: float
    step: float | None
    groups: tuple[str, ...]


@dataclass(frozen=True)
class SearchSpace:
    ignore: tuple[str, ...] = ()
    round_to: int | None = None
    low: float = 0.0
    high: float = 0.8
    step: float | None = 0.05
    rules: tuple[Rule, ...] = ()
    source: str = "default"

    def __post_init__(self) -> None:
        _check_range(f"search space {self.source}: ratio", self.low, self.high, self.step)
        for rule in self.rules:
            _check_range(f"search space {self.source}: rule {rule.pattern!r}",
                         rule.low if rule.low is not None else self.low,
                         rule.high if rule.high is not None else self.high, rule.step)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> SearchSpace:
        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise ConfigError(f"search space {source}: unknown keys {sorted(unknown)}; allowed: "
                              f"{', '.join(sorted(_TOP_KEYS))}")
        check = _Checker(source)
        ratio = check.mapping("ratio", data.get("ratio") or {})
        rules = []
        for raw in check.sequence("rules", data.get("rules")):
            if not isinstance(raw, Mapping) or "pattern" not in raw:
                raise ConfigError(
                    f"search space {source}: each rule needs a 'pattern'; got {raw!r}")
            bad = set(raw) - _RULE_KEYS
            if bad:
                raise ConfigError(f"search space {source}: rule {raw['pattern']!r} has unknown "
                                  f"keys {sorted(bad)}; allowed: {', '.join(sorted(_RULE_KEYS))}")
            rules.append(check.rule(raw))
        ignore = tuple(check.text(f"ignore[{i}]", v)
                       for i, v in enumerate(check.sequence("ignore", data.get("ignore"))))
        return cls(ignore=ignore, round_to=check.round_to(data.get("round_to")),
                   low=check.number("ratio.low", ratio.get("low", 0.0)),
                   high=check.number("ratio.high", ratio.get("high", 0.8)),
                   step=check.number("ratio.step", ratio.get("step", 0.05), optional=True),
                   rules=tuple(rules), source=source)

    def to_dict(self) -> dict[str, Any]:
        rules = [{k: v for k, v in vars(r).items() if v is not None and v is not False}
                 for r in self.rules]
        return {"ignore": list(self.ignore), "round_to": self.round_to,
                "ratio": {"low": self.low, "high": self.high, "step": self.step}, "rules": rules}

    def resolve(self, group_names: Sequence[str]) -> ResolvedSpace:
        """Map every group to a searched parameter; a rule that matches nothing is an error."""
        assigned: dict[str, str] = {}
        params: dict[str, dict[str, Any]] = {}
        for rule in self.rules:
            hits = [g for g in group_names
                    if fnmatch.fnmatchcase(g, rule.pattern) and g not in assigned]
            if not hits and not rule.optional:
                close = difflib.get_close_matches(rule.pattern, list(group_names), n=3, cutoff=0.3)
                listing = ", ".join(close or list(group_names)[:8])
                raise ConfigError(
                    f"search space {self.source}: pattern {rule.pattern!r} matches no group; "
                    f"groups look like {listing} (see `autoprune inspect`), or mark the rule "
                    "optional: true"
                )
            low = rule.low if rule.low is not None else self.low
            high = rule.high if rule.high is not None else self.high
            step = rule.step if rule.step is not None else self.step
            for g in hits:
                name = (rule.name or rule.pattern) if rule.shared else g
                params.setdefault(name, {"low": low, "high": high, "step": step, "groups": []})
                params[name]["groups"].append(g)
                assigned[g] = name
        for g in group_names:
            if g not in assigned:
                params[g] = {"low": self.low, "high": self.high, "step": self.step, "groups": [g]}
                assigned[g] = g
        return ResolvedSpace(
            params=tuple(Param(n, v["low"], v["high"], v["step"], tuple(v["groups"]))
                         for n, v in params.items()),
            group_names=tuple(group_names), round_to=self.round_to,
        )


@dataclass(frozen=True)
class ResolvedSpace:
    """A space bound to one model's groups: parameter values -> per-group allocation and caps."""

    params: tuple[Param, ...]
    group_names: tuple[str, ...]
    round_to: int | None = None
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({g: i for i, g in enumerate(self.group_names)})

    def allocation(self, values: Mapping[str, float]) -> np.ndarray:
        alloc = np.zeros(len(self.group_names))
        for p in self.params:
            if p.name not in values:
                raise ConfigError(f"no value for searched parameter {p.name!r}")
            for g in p.groups:
                alloc[self._index[g]] = float(values[p.name])
        return alloc

    def caps(self) -> np.ndarray:
        caps = np.zeros(len(self.group_names))
        for p in self.params:
            for g in p.groups:
                caps[self._index[g]] = p.high
        return caps

    def uniform(self) -> dict[str, float]:
        """Equal allocation for every parameter: torch-pruning's uniform ratio, at the budget."""
        value = min(p.high for p in self.params)
        return {p.name: _on_grid(value, p) for p in self.params}

    def from_group_ratios(self, ratios: Mapping[str, float]) -> dict[str, float]:
        """Parameter values closest to per-group ratios (shared params take the mean)."""
        out = {}
        for p in self.params:
            mean = float(np.mean([ratios.get(g, 0.0) for g in p.groups]))
            out[p.name] = _on_grid(min(max(mean, p.low), p.high), p)
        return out


@dataclass(frozen=True)
class _Checker:
    """Types of a space file's values: one line naming the key, the value and the fix."""

    source: str

    def fail(self, key: str, value: Any, want: str) -> ConfigError:
        return ConfigError(f"search space {self.source}: {key} is {value!r}; it must be {want}")

    def mapping(self, key: str, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, value, "a mapping, e.g. {low: 0.0, high: 0.8, step: 0.05}")
        return value

    def sequence(self, key: str, value: Any) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, value, "a list")
        return value

    def text(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(key, value, "a text (a glob of layer names)")
        return value

    def number(self, key: str, value: Any, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not np.isfinite(value):
            raise self.fail(key, value, "a finite number" + (" or null" if optional else ""))
        return float(value)

    def round_to(self, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
            raise self.fail("round_to", value, "a whole number of channels in [1, 1024] or null")
        return value

    def rule(self, raw: Mapping[str, Any]) -> Rule:
        where = f"rule {raw['pattern']!r}"
        flags = {}
        for key in ("shared", "optional"):
            if not isinstance(raw.get(key, False), bool):
                raise self.fail(f"{where}: {key}", raw[key], "true or false")
            flags[key] = raw.get(key, False)
        name = raw.get("name")
        return Rule(pattern=self.text(f"{where}: pattern", raw["pattern"]),
                    name=None if name is None else self.text(f"{where}: name", name),
                    **{k: self.number(f"{where}: {k}", raw.get(k), optional=True)
                       for k in ("low", "high", "step")}, **flags)


def _on_grid(value: float, p: Param) -> float:
    if not p.step:
        return value
    n = round((value - p.low) / p.step)
    n_max = int(np.floor((p.high - p.low) / p.step + 1e-9))
    return round(p.low + min(max(n, 0), n_max) * p.step, 10)


def _check_range(what: str, low: float, high: float, step: float | None) -> None:
    if not (0.0 <= low <= high < 1.0):
        raise ConfigError(f"{what}: range [{low}, {high}] must satisfy 0 <= low <= high < 1 "
                          "(high is the largest fraction of a group's channels ever removed)")
    if step is not None and not (0 < float(step) <= 1):
        raise ConfigError(f"{what}: step={step} must be in (0, 1] or null")


def builtin_spaces() -> dict[str, Traversable]:
    """The shipped spaces by name (file stem), read from the installed package's data."""
    folder = files(_SPACES_PACKAGE) / _SPACES_FOLDER
    if not folder.is_dir():
        return {}
    found = (f for f in folder.iterdir() if f.is_file() and f.name.endswith(".yaml"))
    return {f.name.removesuffix(".yaml"): f for f in sorted(found, key=lambda f: f.name)}


def load_space(spec: str | Path | None = None) -> SearchSpace:
    """A built-in space by name (``default``, ``resnet``, ...) or a YAML file path."""
    spec = spec or "default"
    builtin = builtin_spaces()
    path: Traversable | Path = builtin.get(str(spec)) or Path(spec)
    if not path.is_file():
        raise ConfigError(f"--space {str(spec)!r} is neither a built-in space "
                          f"({', '.join(builtin) or 'none found'}) nor a YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"search space {path}: invalid YAML ({problem})") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"search space {path}: expected a mapping at the top level")
    return SearchSpace.from_dict(data, source=str(spec))


def with_target_rounding(space: SearchSpace) -> SearchSpace:
    """``space`` with :data:`TARGET_ROUND_TO` when it leaves ``round_to`` open (every target:
    see the measurements above ``TARGET_ROUND_TO``); otherwise ``space`` itself."""
    if space.round_to is None:
        return dataclasses.replace(space, round_to=TARGET_ROUND_TO)
    return space

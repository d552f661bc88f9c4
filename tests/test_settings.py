"""Settings declared once: every field has help, every entry point shows the same default."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from dataclasses import fields

import pytest

import autoprune as ap
from autoprune.errors import ConfigError
from autoprune.settings import (
    SAMPLERS,
    FinetuneSettings,
    RunSettings,
    SearchSettings,
    choices_of,
    flag_of,
)

ALL = (RunSettings, FinetuneSettings, SearchSettings)


def search_help() -> dict[str, str]:
    """``autoprune search --help`` as ``{flag: its help text, whitespace collapsed}``."""
    out = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", "--help"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    entries = re.split(r"^  (?=-)", out, flags=re.MULTILINE)[1:]
    return {e.split()[0]: " ".join(e.split()) for e in entries}


@pytest.mark.parametrize("cls", ALL)
def test_every_field_has_help(cls):
    for f in fields(cls):
        assert len(f.metadata.get("help", "")) > 10, f"{cls.__name__}.{f.name} has no help"
        flag = f.metadata.get("flag")
        assert flag is None or flag.startswith("--"), flag


def test_cli_help_shows_the_dataclass_defaults():
    helps = search_help()
    for cls in ALL:
        for f in fields(cls):
            flag = f.metadata.get("flag")
            if flag is None:
                continue
            assert flag in helps, f"{flag} is not on `autoprune search`"
            if f.default is not None and not isinstance(f.default, bool) \
                    and f.metadata.get("show_default", True):
                assert f"(default {f.default})" in helps[flag], (flag, helps[flag])
    assert "(default 40)" in helps["--trials"] and "fully fine-tuned" in helps["--trials"]
    assert "(default 120)" in helps["--finetune-steps"]
    assert "(default 0.01)" in helps["--lr"] and "(default 20)" in helps["--bn-batches"]
    assert "{tpe,nsga2,gp,random}" in helps["--sampler"]


def test_parsed_defaults_are_the_dataclass_defaults():
    from autoprune._cli_args import build_parser, settings_from_args

    args = build_parser().parse_args(["search"])
    assert settings_from_args(FinetuneSettings, args) == FinetuneSettings()
    assert settings_from_args(SearchSettings, args, workers=1) == SearchSettings()
    assert args.trials is None  # --resume keeps the run's count; a new run takes RunSettings'


def test_python_api_defaults_agree():
    params = inspect.signature(ap.search).parameters
    assert params["trials"].default == RunSettings().trials == 40
    assert params["space"].default == RunSettings().space
    assert FinetuneSettings().steps == 120
    assert ap.SearchSettings is SearchSettings and ap.FinetuneSettings is FinetuneSettings


LITERALS = [(cls, name, choices) for cls in ALL for name, choices in choices_of(cls).items()]


def test_literal_fields():
    assert {name for _, name, _ in LITERALS} == {
        "sampler", "importance", "latency_dtype", "latency_runtime", "mode", "backend",
        "optimizer", "depth", "sensitivity"}
    assert choices_of(SearchSettings)["sampler"] == SAMPLERS


@pytest.mark.parametrize("cls,name,choices", LITERALS, ids=[n for _, n, _ in LITERALS])
def test_literal_rejects_bad_value_naming_flag_and_choices(cls, name, choices):
    with pytest.raises(ConfigError) as info:
        cls(**{name: "bogus"})
    msg = str(info.value)
    flag = flag_of(next(f for f in fields(cls) if f.name == name))
    assert "\n" not in msg and msg.startswith(f"{flag} 'bogus'")
    assert all(c in msg for c in choices), msg
    for value in choices:
        cls(**{name: value})


@pytest.mark.parametrize("kwargs,needle", [
    ({"screen": -1}, "--screen -1 must be in [0, 1000]"),
    ({"screen": float("inf")}, "--screen inf must be a finite number"),
    ({"short_fidelity": 1.0}, "--short-fidelity 1.0 must be in [0, 1)"),
    ({"promote": 0.5}, "--promote 0.5 must be in [1, 1000]"),
    ({"promote": float("nan")}, "--promote nan must be a finite number"),
    ({"generation": 0}, "--generation 0 must be in [1, 10000]"),
    ({"levels": 0}, "--levels 0 must be in [1, 100]"),
    ({"level_low": 0.0}, "level_low 0.0 must be > 0"),
    ({"workers": 0}, "--workers 0 must be in [1, 1024]"),
    ({"backend": "ray", "workers": 2}, "--workers is for the optuna backend"),
    ({"latency_batch": 0}, "--latency-batch 0 must be in [1, 65536]"),
    ({"seed": 2**64}, "--seed 18446744073709551616 must be in [0, 4294967295]"),
])
def test_search_settings_validation(kwargs, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        SearchSettings(**kwargs)


@pytest.mark.parametrize("device,ok", [("cpu", True), ("cuda", True), ("cuda:1", True),
                                       ("gpu", False), ("cuda:x", False)])
def test_device_names(device, ok):
    if ok:
        assert FinetuneSettings(device=device).device == device
    else:
        with pytest.raises(ConfigError, match=f"--device '{device}'; use cpu or cuda"):
            FinetuneSettings(device=device)


@pytest.mark.parametrize("device,ok", [(None, True), ("cpu", True), ("cuda:1", True),
                                       ("gpu", False), ("", False)])
def test_latency_device_names(device, ok):
    if ok:
        assert SearchSettings(latency_device=device).latency_device == device
    else:
        with pytest.raises(ConfigError, match=f"--latency-device '{device}'; use cpu"):
            SearchSettings(latency_device=device)


def test_candidates_are_timed_where_latency_device_says_else_where_they_are_fine_tuned():
    from autoprune.run import timing_device

    assert timing_device(SearchSettings(), FinetuneSettings(device="cuda:1")) == "cuda:1"
    assert timing_device(SearchSettings(latency_device="cpu"),
                         FinetuneSettings(device="cuda")) == "cpu"


def test_run_settings_validation():
    with pytest.raises(ConfigError, match=re.escape("--trials 0 must be in [1, 1000000]")):
        RunSettings(trials=0)


def test_settings_and_help_import_nothing_heavy():
    code = ("import sys\nfrom autoprune.cli import main\n"
            "try:\n    main(['search', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'optuna', 'ray', 'autoprune.generations', "
            "'autoprune.backends') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


NUMERIC = [(cls, f) for cls in (RunSettings, FinetuneSettings, SearchSettings) for f in fields(cls)
           if any(k in f.metadata for k in ("low", "high", "above", "below"))]


@pytest.mark.parametrize("cls,f", NUMERIC, ids=[f.name for _, f in NUMERIC])
def test_every_numeric_setting_refuses_non_finite_and_out_of_range(cls, f):
    """Oracle: the range each field declares; NaN/inf and values just outside it are refused
    with one line naming the flag, the value inside the range is accepted."""
    low, high, above, below = (f.metadata.get(k) for k in ("low", "high", "above", "below"))
    bad = [float("nan"), float("inf"), -float("inf")]
    bad += [low - 1] if low is not None else []
    bad += [above] if above is not None else []
    bad += [high + 1] if high is not None else []
    bad += [below] if below is not None else []
    for value in bad:
        with pytest.raises(ConfigError) as info:
            cls(**{f.name: value})
        assert "\n" not in str(info.value) and str(info.value).startswith(flag_of(f))

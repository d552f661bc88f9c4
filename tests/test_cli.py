"""The CLI as a user meets it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoprune.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_inspect_prints_groups_and_dense_costs(capsys):
    assert main(["inspect", "--model", "resnet18", "--num-classes", "10", "--input",
                 "1,3,64,64"]) == 0
    out = capsys.readouterr().out
    assert "layer1.0.conv1" in out and "MACs share" in out
    assert "head (not pruned): fc" in out and "MMACs" in out


def test_inspect_unknown_model_is_one_line_exit_2():
    proc = run("inspect", "--model", "nosuchnet")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "'nosuchnet'" in proc.stderr and "Traceback" not in proc.stderr


def test_inspect_bad_input_shape():
    proc = run("inspect", "--model", "resnet18", "--input", "abc")
    assert proc.returncode == 2 and "1,3,224,224" in proc.stderr


def test_every_search_flag_reaches_its_setting():
    from autoprune._cli_args import build_parser, settings_from_args
    from autoprune.settings import FinetuneSettings, RunSettings, SearchSettings

    args = build_parser().parse_args([
        "search", "--seed", "7", "--trials", "9", "--space", "resnet", "--round-to", "8",
        "--sampler", "nsga2",
        "--importance", "l1", "--no-latency", "--latency-batch", "4", "--latency-dtype",
        "float16", "--latency-runtime", "compile", "--latency-device", "cpu",
        "--no-latency-drift", "--storage",
        "sqlite:///s.db", "--mode", "weights", "--workers", "2",
        "--workers-per-gpu", "3", "--ray-address", "auto", "--cpus-per-trial", "2",
        "--gpus-per-trial", "0.5", "--quiet", "--screen", "3", "--short-fidelity", "0.2",
        "--promote", "1.5", "--generation", "3", "--no-priors", "--levels", "2",
        "--finetune-steps", "50", "--finetune-epochs", "1.5", "--lr", "0.1", "--optimizer",
        "adamw", "--distill", "--bn-batches", "5", "--device", "cuda:1"])
    assert settings_from_args(RunSettings, args) == RunSettings(trials=9, space="resnet",
                                                               round_to=8)
    assert settings_from_args(SearchSettings, args) == SearchSettings(
        sampler="nsga2", seed=7, importance="l1", latency=False, latency_batch=4,
        latency_dtype="float16", latency_runtime="compile", latency_device="cpu",
        latency_drift=False, storage="sqlite:///s.db",
        mode="weights", workers=2,
        workers_per_gpu=3, ray_address="auto", cpus_per_trial=2.0, gpus_per_trial=0.5,
        progress=False, screen=3.0, short_fidelity=0.2, promote=1.5, generation=3,
        priors=False, levels=2)
    assert settings_from_args(FinetuneSettings, args) == FinetuneSettings(
        steps=50, epochs=1.5, lr=0.1, optimizer="adamw", distill=True, bn_batches=5,
        device="cuda:1")


def test_bad_choice_is_one_line_naming_flag_and_choices(capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", "--mode", "bogus"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("autoprune: error: --mode 'bogus' is unknown; use one of "
                                       "channels, weights\n")


@pytest.mark.parametrize(("flag", "want"), [([], None), (["--round-to", "8"], 8),
                                            (["--round-to", "1"], 1)])
def test_round_to_flag_overrides_the_space(flag, want):
    from autoprune._cli_args import build_parser
    from autoprune.cli import _from_args

    args = build_parser().parse_args(["search", "--space", "default", *flag])
    assert _from_args(args).space.round_to == want  # the default space rounds nothing


def test_round_to_flag_is_checked(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--round-to", "0"])
    assert exit_.value.code == 2
    assert "--round-to 0 must be in [1, 1024]" in capsys.readouterr().err

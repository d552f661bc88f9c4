"""The CLI as a user meets it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

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

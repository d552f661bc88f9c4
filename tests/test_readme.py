"""The README's copy-paste snippets run as printed (each marked ``<!-- readme-test: NAME -->``;
the timm command is run by tests/test_tasks.py, the Hugging Face block by
tests/test_integration_hf.py, the Lightning block by tests/test_integration_lightning.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoprune.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def snippet(name: str) -> str:
    """The fenced block after ``<!-- readme-test: NAME -->``, without its fence."""
    text = README.read_text()
    marker = f"<!-- readme-test: {name} -->"
    assert text.count(marker) == 1, f"README.md must mark exactly one {name!r} snippet"
    block = text.split(marker, 1)[1].split("```", 2)[1]
    return block.split("\n", 1)[1]  # drop the language tag


@pytest.mark.slow
def test_optuna_snippet_reads_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "results" / "my-run"
    assert main(["search", "--budget-flops", "0.5", "--trials", "2", "--finetune-steps", "4",
                 "--bn-batches", "2", "--screen", "0", "--short-fidelity", "0", "--no-latency",
                 "--quiet", "--out", str(run)]) == 0
    proc = subprocess.run([sys.executable, "-c", snippet("optuna")], cwd=tmp_path, text=True,
                          capture_output=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    names, best = proc.stdout.splitlines()[:2]
    assert names == "['val_acc', 'flops_ratio']"
    assert "'ratio:" in best  # the real per-group ratios, as flat attributes

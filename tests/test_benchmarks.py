"""The search-quality benchmark's whole pipeline, on the bundled digits with a handful of
trials (the figures come from Fashion-MNIST runs; this only proves the pipeline holds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_search_quality_pipeline_on_digits(tmp_path):
    out = tmp_path / "sq.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "benchmarks/search_quality.py", "--task", "digits", "--quick",
         "--arch", "resnet", "--budgets", "0.3", "--trials", "2", "--dense-epochs", "8",
         "--spearman-arch", "resnet", "--spearman-candidates", "4", "--jobs", "1",
         "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for method in ("uniform-l2", "global-l2", "random", "autoprune"):
        assert f"| resnet | 0.3 | {method} |" in text
    assert "Spearman" in text and "Best-so-far" in text
    raw = json.loads(out.with_suffix(".json").read_text())
    runs = raw["results"][0]["runs"]
    assert len(runs) == 4
    for run in runs:  # every method chose a plan within the budget and was tested
        assert run["test_acc"] is not None and run["flops_ratio"] <= 0.3 * 1.01, run
    searched = [r for r in runs if r["method"] in ("random", "autoprune")]
    for run in searched:
        full = [t for t in run["trials"] if t["state"] == "COMPLETE"]
        assert len(full) >= 2 and all(t["fidelity"] == 1.0 for t in full)
    assert raw["results"][0]["spearman"]["n"] == 4

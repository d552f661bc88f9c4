"""The examples stay true: each runs as a user would run it (small settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_search_with_my_functions(tmp_path):
    out = run("search_with_my_functions.py", "--trials", "3", "--out", "run", cwd=tmp_path)
    assert "front of 3 fine-tuned trials" in out and (tmp_path / "run" / "front.json").exists()


@pytest.mark.slow
def test_ask_tell_session(tmp_path):
    out = run("ask_tell_session.py", "--candidates", "3", "--out", "run", cwd=tmp_path)
    assert out.count("candidate ") == 3 and (tmp_path / "run" / "report.html").exists()


@pytest.mark.slow
def test_prune_hook_in_loop(tmp_path):
    out = run("prune_hook_in_loop.py", cwd=tmp_path)
    assert "step 250: pruned to" in out and "final:" in out

"""Worker placement and run names (no search needed)."""

from __future__ import annotations

import pytest

from autoprune.errors import ConfigError
from autoprune.plan import Budget
from autoprune.run import default_run_name
from autoprune.workers import gpu_plan, worker_threads


def test_gpu_plan_one_process_per_gpu_or_shared(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_plan(2, 1) == ["3", "5"]
    assert gpu_plan(4, 2) == ["3", "3", "5", "5"]
    assert gpu_plan(3, 2) == ["3", "3", "5"]
    with pytest.raises(ConfigError, match="--workers 5 > 2 GPU"):
        gpu_plan(5, 2)


def test_worker_threads_split_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [worker_threads(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_run_names_say_the_budget():
    name = default_run_name("my/task.py", Budget(flops=0.4, latency_ms=3.5))
    assert name.startswith("my_task-flops0.4-latencyms3.5-")

"""Shared fixtures: small hand-written models that exercise each kind of channel coupling."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

# -- running under pytest-xdist (pyproject's addopts: -n auto --dist loadgroup) ---------------
# Each worker runs one test at a time on one thread. Tests that use more than one core (--workers
# 2, Ray, DDP, a launcher plus a joining worker) or time the CPU against a threshold are marked
# ``@pytest.mark.xdist_group("multicore")``: they run one after another on one worker, never two
# at once (that would oversubscribe the cores and skew the timings; `ray stop` ends every Ray).
# Tests sharing a module- or session-scoped fixture of their module are grouped per module
# below, so that fixture (a real search, mostly) runs once.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def _cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus or 1, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus or 1)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent without it
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per usable CPU, at most 4 (each holds ~3 GB);
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides it, ``-n 0`` runs the tests in this process."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    return int(env) if env and env.isdigit() else min(4, _cpus())


@pytest.fixture(autouse=True)
def _no_busy_cpu_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Searches run in a test's process do not sample the CPU: the other xdist worker keeps it
    busy, and tests count stderr lines (tests/test_cpu_load.py checks the warning itself)."""
    monkeypatch.setattr("autoprune.cpu_load.idle_cores", lambda sample_s=0.3: None)


def _groups(item: pytest.Item) -> str:
    return "_".join(sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                            for m in item.iter_markers("xdist_group")}))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not WORKER:
        return
    for item in items:  # a module's own module/session fixtures: one group per module
        info = getattr(item, "_fixtureinfo", None)
        shared = {d.baseid for defs in (info.name2fixturedefs.values() if info else ())
                  for d in defs if d.scope in ("module", "session") and d.baseid.endswith(".py")}
        if shared and not _groups(item):
            item.add_marker(pytest.mark.xdist_group(sorted(shared)[0].rsplit("/", 1)[-1]))
    # xdist hands out work units (one test, or one group) in this order
    # (--no-loadscope-reorder): the multicore group (the longest unit) first, then the units
    # holding a slow test, so that no long end-to-end test starts last while the other worker
    # idles. The sort is stable: tests keep their collection order within each of the three.
    slow = {_groups(i) or i.nodeid for i in items if i.get_closest_marker("slow")}
    items.sort(key=lambda i: (_groups(i) != "multicore", (_groups(i) or i.nodeid) not in slow))


if WORKER:
    # The workers already fill the CPUs: each one (and each CLI search, example or benchmark it
    # starts, which inherit this environment) gets its share of the threads, instead of every
    # worker taking 2 threads on a 2-core machine (see one_thread below on what that costs).
    _threads = max(1, _cpus() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_threads)
    torch.set_num_threads(_threads)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class Residual(nn.Module):
    """Two convs whose outputs are added: they must land in one group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 1)
        self.mid = nn.Conv2d(16, 24, 3, padding=1)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.a(x) + self.b(x)
        x = torch.relu(self.mid(x))
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    """DenseNet-like: two branches concatenated, then a conv reads the concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 12, 3, padding=1)
        self.right = nn.Conv2d(8, 20, 1)
        self.fuse = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(torch.relu(self.fuse(x)).mean((2, 3)))


class DepthwiseGrouped(nn.Module):
    """A depthwise conv (coupled in/out) and a grouped conv (pruned evenly per group)."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 32, 1)
        self.bn1 = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.bn2 = nn.BatchNorm2d(32)
        self.grouped = nn.Conv2d(32, 64, 3, padding=1, groups=4)
        self.bn3 = nn.BatchNorm2d(64)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.expand(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = torch.relu(self.bn3(self.grouped(x)))
        return self.head(x.mean((2, 3)))


class TwoBranches(nn.Module):
    """One conv feeding two branches (both branches' inputs shrink with it)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.Conv2d(16, 8, 3, padding=1)
        self.down = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.shared(x))
        x = torch.cat([self.up(s).mean((2, 3)), self.down(s).mean((2, 3))], 1)
        return self.head(x)


class FlattenHead(nn.Module):
    """conv -> pool to 4x4 -> flatten -> linear: one channel is 16 linear inputs."""

    def __init__(self, concat: bool = False) -> None:
        super().__init__()
        self.concat = concat
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.side = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear((16 if concat else 8) * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.concat:
            y = torch.cat([y, self.side(x)], 1)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 4), 1))


class DictInput(nn.Module):
    """forward() takes one dict (as many data pipelines hand batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.relu(self.conv(batch["image"]))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models and tracing: a second intra-op thread only adds contention (up to 100x
    slower on a loaded 2-core machine). Use with ``pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def steady_clock(mp: pytest.MonkeyPatch) -> None:
    """Make latency tables from a clock no other job on the machine disturbs: a fixed cost per
    call plus one per parameter. Tests of the predictor's and the refit's logic use it (a busy
    machine's timings made them fail: non-monotone tables, unreachable targets); measured
    tables' accuracy is `benchmarks/latency_model.py`'s."""
    from autoprune.latency import layer_table

    mp.setattr(layer_table._Clock, "time", lambda self, model, inputs, config=None:
               0.01 + 1e-5 * sum(p.numel() for p in model.parameters()))


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 3, 16, 16)

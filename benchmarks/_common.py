"""Small helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def environment() -> str:
    import torch
    import torch_pruning

    return (f"{datetime.date.today()} · {platform.machine()} · {platform.python_version()} · "
            f"torch {torch.__version__} · torch-pruning {torch_pruning.__version__} · "
            f"{torch.get_num_threads()} threads")


def write(name: str, command: str, table: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(f"# {name}\n\n`{command}`\n\n{environment()}\n\n{table}\n")
    return path


def save_report(out: Path, text: str, payload: dict[str, Any]) -> None:
    """Write a benchmark's markdown report to ``out`` and its raw figures beside it (.json)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
    print(f"written to {out} and {out.with_suffix('.json')}", flush=True)


def die_with_parent() -> None:
    """A pool worker's initializer: on Linux the worker gets SIGTERM when the process that
    started it dies, so killing a benchmark never leaves its workers computing (and writing kept
    results) behind it. Elsewhere a no-op."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)

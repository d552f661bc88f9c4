"""Small helpers shared by the benchmark scripts (not part of the library)."""

from __future__ import annotations

import datetime
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

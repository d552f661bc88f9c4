"""Whether the CPU is free for the threads torch will run: contending threads spin.

On a 2-core machine already running two single-threaded jobs, a tiny search with torch's
default of 2 threads timed the digits ResNet-8 at 236-264 ms instead of ~1.5 ms (every figure
flagged noisy) and took 4 min 46 s; with one thread the same test suite file ran in 65 s
instead of over 15 min. The check reads ``/proc/stat`` twice (Linux; elsewhere it says
nothing): a snapshot, so a job that starts later is not seen.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["busy_warning", "idle_cores"]

_STAT = Path("/proc/stat")


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies of all CPUs together, or None where /proc/stat is not there."""
    try:
        fields = _STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [float(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return idle, sum(values[:8])  # guest time is already inside user time


def idle_cores(sample_s: float = 0.3) -> float | None:
    """How many cores were idle over ``sample_s`` seconds (None where it cannot be read)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(sample_s)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def busy_warning(threads: int, idle: float | None, cores: int) -> str | None:
    """The warning to print when fewer cores are idle than the ``threads`` torch will run
    (half a core of slack), else None."""
    if idle is None or idle >= threads - 0.5:
        return None
    fit = max(1, int(idle + 0.5))
    fewer = f"pass --threads {fit} (or set OMP_NUM_THREADS={fit}) or " if fit < threads else ""
    return (f"the CPU is busy: about {idle:.1f} of {cores} cores are idle and torch will run "
            f"{threads} thread{'s' if threads > 1 else ''}; contending threads spin, which "
            "slows fine-tunes and makes latency timings unreliable (a search here timed a "
            f"1.5 ms model at over 200 ms): {fewer}run it on a quiet machine")

"""The machine latency figures were measured on: its CPU model and how many CPUs it may use.

Latencies are only comparable on the same CPU with the same thread count, so ``baseline.json``
records :func:`cpu_info` beside the thread count torch used.
"""

from __future__ import annotations

import os
import platform
import subprocess

__all__ = ["cpu_info", "cpu_model"]

#: /proc/cpuinfo keys naming the CPU: x86, then the ones ARM, POWER and others use.
_CPUINFO_KEYS = ("model name", "hardware", "cpu model", "processor", "cpu")


def cpu_model() -> str:
    """The CPU's model name (e.g. ``"AMD EPYC 7B13"``): /proc/cpuinfo on Linux, sysctl on
    macOS, else :func:`platform.processor` or the architecture; ``"unknown"`` if none says."""
    found = _from_cpuinfo()
    if not found and platform.system() == "Darwin":
        try:
            found = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
    return " ".join((found or platform.processor() or platform.machine() or "unknown").split())


def cpu_info() -> dict[str, object]:
    """``cpu_model`` and ``cpu_count`` (the CPUs this process may run on) for baseline.json."""
    try:
        count: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count()
    return {"cpu_model": cpu_model(), "cpu_count": count}


def _from_cpuinfo() -> str:
    """The first CPU-naming line of /proc/cpuinfo ("" where there is none); a ``processor``
    line that is only a number (the x86 CPU index) does not name anything."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return ""
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if sep and value and key not in fields and not value.isdigit():
            fields[key] = value
    return next((fields[k] for k in _CPUINFO_KEYS if k in fields), "")

"""Local worker processes on one study: CPU threads split evenly, one GPU (or a share) each.

Each worker is ``autoprune worker --run-dir RUN`` with its thread count, index and GPU share as
arguments; it rebuilds the run from the run directory and runs generations until the study's
trial count is reached (the launching process writes the results: one writer).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

from autoprune.errors import ConfigError
from autoprune.results import RunDir

__all__ = ["WorkerArgs", "gpu_plan", "pin_gpu", "spawn", "stop", "worker_threads"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerArgs:
    """What a worker process is told on its command line."""

    threads: int | None = None  # torch CPU threads
    index: int = 1  # 1..N-1: seeds its sampler apart from the others
    per_gpu: int = 1  # processes sharing its GPU (each capped at 1/K of its memory)

    def argv(self) -> list[str]:
        out = ["--worker-index", str(self.index), "--workers-per-gpu", str(self.per_gpu)]
        return out + (["--threads", str(self.threads)] if self.threads else [])


def worker_threads(workers: int) -> int:
    """CPU threads per worker process: the cores split evenly."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def gpu_plan(workers: int, per_gpu: int) -> list[str]:
    """The CUDA device each of ``workers`` processes sees: ``per_gpu`` processes per GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    import torch

    ids = [d for d in visible.split(",") if d] if visible else \
        [str(i) for i in range(torch.cuda.device_count())]
    if not ids:
        raise ConfigError("--device cuda but no GPU is visible; use --device cpu")
    if workers > len(ids) * per_gpu:
        raise ConfigError(f"--workers {workers} > {len(ids)} GPU(s) x --workers-per-gpu "
                          f"{per_gpu}; raise --workers-per-gpu or lower --workers")
    return [ids[i // per_gpu] for i in range(workers)]


def pin_gpu(per_gpu: int) -> None:
    """Cap this process's share of its GPU (fractional sharing does not cap memory itself)."""
    import torch

    if per_gpu > 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1.0 / per_gpu)


def spawn(run: RunDir, workers: int, per_gpu: int, device: str,
          rebuildable: bool) -> list[subprocess.Popen[bytes]]:
    """Start ``workers - 1`` worker processes on the run's study (this process is the first):
    on CPU the cores are split evenly; on CUDA each process gets its GPU."""
    gpus = gpu_plan(workers, per_gpu) if device.startswith("cuda") else []
    if gpus:
        pin_gpu(per_gpu)
    if workers <= 1:
        return []
    if not rebuildable:
        raise ConfigError("workers > 1 need a task the workers can rebuild (the CLI's --task); "
                          "from Python, run several processes with ap.search on one storage")
    import torch

    threads = worker_threads(workers)
    torch.set_num_threads(threads)
    run.workers_dir.mkdir(exist_ok=True)
    secret = _storage_secret(run)
    procs = []
    for i in range(1, workers):
        env = {**os.environ, **secret}
        if gpus:  # the parent keeps the first GPU; the child sees its own as cuda:0
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
        argv = [sys.executable, "-m", "autoprune.cli", "worker", "--run-dir", str(run.path),
                *WorkerArgs(threads, i, per_gpu).argv()]
        with open(run.workers_dir / f"worker_{i}.log", "ab") as out:
            procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
    log.info("started %d worker processes (logs in %s)", len(procs), run.workers_dir)
    return procs


def _storage_secret(run: RunDir) -> dict[str, str]:
    """The storage password for the workers (config.yaml holds the URL masked), passed in
    their environment, never on their command line."""
    from autoprune.storage_url import resolve_password, secret_env

    url = (run.read_config().get("search") or {}).get("storage")
    return secret_env(resolve_password(str(url))) if url else {}


def stop(procs: list[subprocess.Popen[bytes]], wait: bool = False) -> None:
    """End worker processes: with ``wait``, let each finish its generation first."""
    for p in procs:
        if wait:
            try:
                p.wait(timeout=600)
                continue
            except subprocess.TimeoutExpired:
                pass
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()

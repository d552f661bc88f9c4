"""The run loop: run directory, config, storage, resume, progress, and the final front.

Resume rules: trials a killed process left RUNNING (or Ctrl-C left failed) are marked failed and
their parameters enqueued again; completed trials are never rerun; the run continues until the
requested number of trials has finished.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autoprune.errors import ConfigError
from autoprune.evaluate import FinetuneSettings
from autoprune.plan import Budget
from autoprune.results import RunDir, TrialRecord
from autoprune.space import SearchSpace

__all__ = ["default_run_name", "run_search"]

log = logging.getLogger(__name__)

STUDY = "autoprune"


def study_name(run: RunDir, settings: Any) -> str:
    """The journal in a run dir holds one study; a shared server holds many, one per run (a
    random suffix: two runs both called ``results/run`` must never share a study)."""
    if settings.storage is None:
        return STUDY
    import secrets

    return f"autoprune-{run.path.resolve().name}-{secrets.token_hex(4)}"


def default_run_name(task: str, budget: Budget) -> str:
    parts = [task.replace("/", "_").replace(":", "_").removesuffix(".py")]
    for key in ("flops", "params", "latency", "latency_ms"):
        value = getattr(budget, key)
        if value is not None:
            parts.append(f"{key.replace('_', '')}{value:g}")
    parts.append(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    return "-".join(parts)


def resolved_config(config: dict[str, Any], budget: Budget, trials: int, settings: Any,
                    space: SearchSpace, finetune_settings: FinetuneSettings) -> dict[str, Any]:
    import autoprune

    return {
        "autoprune_version": autoprune.__version__,
        **config,
        "budget": {k: v for k, v in asdict(budget).items() if v is not None},
        "trials": trials,
        "space": {"source": space.source, **space.to_dict()},
        "finetune": asdict(finetune_settings),
        "search": asdict(settings),
        "study_name": None,  # filled in by run_search
    }


def run_search(make_search: Callable[[RunDir], Any], *, budget: Budget, trials: int,
               run_dir: str | Path | None, config: dict[str, Any], resume: bool, settings: Any,
               space: SearchSpace, finetune_settings: FinetuneSettings) -> Any:
    """Create (or resume) the run directory, run the study, and write every result file."""
    from autoprune.backends.optuna import OptunaBackend, make_storage
    from autoprune.searcher import SearchResult

    if trials < 1:
        raise ConfigError(f"--trials {trials} must be >= 1")
    if resume:
        if run_dir is None:
            raise ConfigError("resume needs the run directory to continue")
        run = RunDir.open(run_dir)
    else:
        path = Path(run_dir) if run_dir else Path("results") / default_run_name(
            str(config.get("task", {}).get("spec", "python")), budget)
        if (path / "config.yaml").exists():
            raise ConfigError(f"{str(path)!r} already holds a run; pass --resume {path} to "
                              "continue it or choose another --out")
        run = RunDir.create(path)
        resolved = resolved_config(config, budget, trials, settings, space, finetune_settings)
        resolved["study_name"] = study_name(run, settings)
        run.write_config(resolved)
    search = make_search(run)
    baseline = search.baseline()
    search.bind_baseline(baseline)
    storage = make_storage(settings.storage, run.journal_path)
    name = run.read_config().get("study_name") or study_name(run, settings)
    if settings.backend == "ray":
        from autoprune.backends.ray import RayBackend

        backend: Any = RayBackend(storage, name, settings.sampler, settings.seed,
                                  ("maximize", "minimize"), run_dir=run.path,
                                  address=settings.ray_address,
                                  cpus_per_trial=settings.cpus_per_trial,
                                  gpus_per_trial=settings.gpus_per_trial)
    else:
        backend = OptunaBackend(storage, name, settings.sampler, settings.seed,
                                ("maximize", "minimize"))
    if resume:
        for params, attrs in backend.recover():
            backend.enqueue(params, attrs)
    elif not backend.study.trials and settings.priors:
        for params, attrs in search.baseline_params():
            backend.enqueue(params, attrs)
    if settings.storage is not None:  # workers on other machines rebuild the run from these
        backend.study.set_user_attr("autoprune_config", run.read_config())
        backend.study.set_user_attr("autoprune_baseline", run.read_baseline())
    records = search.write(backend.records())
    remaining = max(0, trials - backend.done())
    bar = _progress(trials, trials - remaining, settings.progress)

    def on_trial() -> None:
        nonlocal records
        records = search.write(backend.records())
        bar.update(max(0, backend.done() - bar.n))
        best = _best(records, search)
        if best is not None:
            bar.set_postfix_str(f"best val {best.val_acc:.2%} at {search.cost_of(best):.1%}")

    from filelock import FileLock

    lock = FileLock(str(run.path / ".ask.lock"))
    procs = _spawn_workers(run, settings, {**config, "device": search.ft.device}) \
        if remaining else []
    try:
        if settings.backend == "ray" and remaining:
            backend.optimize(search.specs(), search.evaluate_trial, remaining, on_trial)
        while settings.backend == "optuna" and backend.done() < trials:
            _optimize(backend, search, trials, on_trial, lock)
            if backend.done() >= trials:
                break
            alive = [p for p in procs if p.poll() is None]
            if not alive and backend.running() == 0:
                continue  # nothing left running: the next round reaps and runs the rest
            time.sleep(0.5)  # other workers' trials are still running
            on_trial()
    except KeyboardInterrupt:
        _stop(procs)
        records = search.write(backend.records())
        bar.close()
        log.warning("interrupted: %d trials are written to %s; continue with "
                    "`autoprune search --resume %s`", backend.done(), run.path, run.path)
        raise
    _stop(procs, wait=True)
    bar.close()
    records = search.write(backend.records())
    search.remeasure_front(backend.records())
    records = search.write(backend.records())
    search.score_front_on_test(search.front_of(records))
    records = search.write(backend.records())
    return SearchResult(run.path, records, search.front_of(records), baseline)


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


def _pin_gpu(per_gpu: int) -> None:
    """Cap this process's share of its GPU (fractional sharing does not cap memory itself)."""
    import torch

    if per_gpu > 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1.0 / per_gpu)


def _spawn_workers(run: RunDir, settings: Any, config: dict[str, Any]) -> list[Any]:
    """Start ``settings.workers - 1`` local worker processes on the run's study: on CPU the
    cores are split evenly; on CUDA each process gets its GPU (``workers_per_gpu`` share one,
    each with a memory cap)."""
    workers = int(getattr(settings, "workers", 1) or 1)
    device = str(config.get("device") or "cpu")
    per_gpu = int(getattr(settings, "workers_per_gpu", 1) or 1)
    gpus = gpu_plan(workers, per_gpu) if device.startswith("cuda") else []
    if gpus:
        _pin_gpu(per_gpu)
    if workers <= 1:
        return []
    if "spec" not in config.get("task", {}):
        raise ConfigError("workers > 1 need a task the workers can rebuild (the CLI's --task); "
                          "from Python, run several processes with ap.search on one storage")
    import torch

    torch.set_num_threads(worker_threads(workers))
    logs = run.path / "workers"
    logs.mkdir(exist_ok=True)
    procs = []
    for i in range(1, workers):
        env = {**os.environ, "AUTOPRUNE_THREADS": str(worker_threads(workers)),
               "AUTOPRUNE_WORKER_INDEX": str(i)}
        if gpus:  # the parent keeps the first GPU; the child sees its own as cuda:0
            env.update(CUDA_VISIBLE_DEVICES=gpus[i], AUTOPRUNE_WORKERS_PER_GPU=str(per_gpu))
        with open(logs / f"worker_{i}.log", "ab") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "autoprune.cli", "worker", "--run-dir", str(run.path)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    log.info("started %d worker processes (logs in %s)", len(procs), logs)
    return procs


def _stop(procs: list[Any], wait: bool = False) -> None:
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


def join_study(storage: str, study: str, run_dir: str | Path | None) -> RunDir:
    """A local run directory for a worker on another machine, from the study's attributes."""
    import optuna

    try:
        attrs = optuna.load_study(study_name=study, storage=storage).user_attrs
    except KeyError as exc:
        raise ConfigError(f"--study {study!r} does not exist on --storage {storage!r}; the "
                          "launching `autoprune search` prints and records its study name "
                          "(config.yaml: study_name)") from exc
    if "autoprune_config" not in attrs:
        raise ConfigError(f"study {study!r} was not started by autoprune search --storage")
    run = RunDir.create(Path(run_dir) if run_dir else Path("results") / f"worker-{study}")
    run.write_config(attrs["autoprune_config"])
    run.write_baseline(attrs["autoprune_baseline"])
    return run


def run_worker(run_dir: str | Path, make_search: Callable[[RunDir], Any], settings: Any,
               trials: int) -> int:
    """One extra worker on a run's study: runs trials until the total is reached; the
    launching process writes the results files (one writer)."""
    from filelock import FileLock

    from autoprune.backends.optuna import OptunaBackend, make_storage

    threads = os.environ.get("AUTOPRUNE_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    _pin_gpu(int(os.environ.get("AUTOPRUNE_WORKERS_PER_GPU", "1")))
    run = RunDir.open(run_dir)
    search = make_search(run)
    if not run.baseline_path.is_file():
        raise ConfigError(f"{run.path} has no baseline.json yet; start workers after the "
                          "launching search has begun")
    search.bind_baseline(run.read_baseline())
    # each worker samples with its own seed: same-seeded samplers would propose the same plans
    seed = settings.seed + 1000 * int(os.environ.get("AUTOPRUNE_WORKER_INDEX", "1"))
    name = run.read_config().get("study_name") or study_name(run, settings)
    backend = OptunaBackend(make_storage(settings.storage, run.journal_path), name,
                            settings.sampler, seed, ("maximize", "minimize"))
    before = backend.done()
    _optimize(backend, search, trials, None, FileLock(str(run.path / ".ask.lock")))
    return backend.done() - before


def _optimize(backend: Any, search: Any, total: int, on_trial: Callable[[], None] | None,
              lock: Any) -> None:
    """Staged generations (proxy screening, short then full fine-tunes) where the search
    supports them, else one full-fidelity candidate per trial."""
    if search.staged:
        from autoprune.staging import optimize

        optimize(backend, search, total, on_trial, lock)
    else:
        backend.optimize(search.specs(), search.evaluate_trial, total, on_trial, lock)


def _best(records: list[TrialRecord], search: Any) -> TrialRecord | None:
    done = [r for r in records if r.state == "COMPLETE" and r.val_acc is not None]
    return max(done, key=lambda r: r.val_acc, default=None)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="search", unit="trial", disable=not enabled,
                dynamic_ncols=True, leave=True)

"""Trials per hour with 1 and 2 local worker processes on the same task, side by side.

Each configuration runs ``--repeats`` times, alternating, so machine noise hits both; the
throughput of a run is its trial count over the span from the first trial's start to the last
trial's end in the journal (process start-up and the final report are not trials). Medians.

    python benchmarks/parallel.py [--trials 40] [--repeats 2] [--finetune-steps 300]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from _common import write


def throughput(run_dir: Path) -> float:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal")))
    trials = [t for t in optuna.load_study(study_name="autoprune", storage=storage).trials
              if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in trials)
            - min(t.datetime_start for t in trials)).total_seconds()
    return len(trials) / span * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--finetune-steps", type=int, default=300)
    args = parser.parse_args()
    results: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for workers in (1, 2):
                out = Path(tmp) / f"w{workers}-{r}"
                subprocess.run([sys.executable, "-m", "autoprune.cli", "search", "--trials",
                                str(args.trials), "--workers", str(workers), "--finetune-steps",
                                str(args.finetune_steps), "--no-latency", "--quiet", "--out",
                                str(out)], check=True, capture_output=True)
                results[workers].append(throughput(out))
                print(f"run {r}: {workers} worker(s): {results[workers][-1]:.0f} trials/hour")
    one, two = statistics.median(results[1]), statistics.median(results[2])
    table = ("| workers | trials/hour (median) | runs |\n|---|---|---|\n"
             f"| 1 | {one:.0f} | {', '.join(f'{v:.0f}' for v in results[1])} |\n"
             f"| 2 | {two:.0f} | {', '.join(f'{v:.0f}' for v in results[2])} |\n\n"
             f"**2 workers / 1 worker: {two / one:.2f}x**")
    print("\n" + table)
    path = write("parallel.md", "python " + " ".join(sys.argv), table)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()

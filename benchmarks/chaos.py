"""Chaos: SIGKILL a default search at >= 10 random moments over its phases; resume after each kill.

Runs ``autoprune search --budget-flops 0.4 --out RUN`` (default settings, a fresh
``AUTOPRUNE_CACHE`` so the dense model trains inside the run) and kills it at a random moment of
each planned phase (dense training, baseline, the resume's recovery, proxy, short and full
fine-tunes, a generation's tells, final re-timing, test scoring, report); after each kill
``autoprune search --resume RUN``, killed again at the next moment; the last process runs to
the end. Checks: requested full-fidelity trials completed; 0 completed trials lost (COMPLETE in
the journal after a kill -> same values and params at the end); 0 reruns (params of a finished
trial evaluated again; re-enqueued trials a kill left RUNNING are fine); journal == trials.csv ==
front.json. A probe around the CLI logs ``time phase`` / ``time -phase`` as stage functions start
and end (it changes nothing); a kill lands at a phase's start + a seeded random share of its
typical duration (a miss is retried up to 3 times). Each search process: OMP_NUM_THREADS=1 and
a copy of the package taken at the start. Asserts no timing.

    python benchmarks/chaos.py [--trials 6 --finetune-steps 20] [--seed 0] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from _common import write

REPO = Path(__file__).resolve().parents[1]
PROBE = r"""
import functools, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
def wrap(owner, name, phase, when=lambda *args: True):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        on = when(*args)
        on and os.write(fd, f"{time.time():.6f} {phase}\n".encode())
        try:
            return original(*args, **kwargs)
        finally:
            on and os.write(fd, f"{time.time():.6f} -{phase}\n".encode())
    setattr(owner, name, functools.wraps(original)(wrapper))
from autoprune import cli, ledger, report, run, stages
from autoprune.backends.optuna import OptunaBackend
from autoprune.tasks import _train
for owner, name, phase in ((_train, "train", "dense"), (stages.Stages, "proxy", "proxy"),
        (stages.Stages, "short", "short"), (stages.Stages, "full", "full"),
        (OptunaBackend, "recover", "recover"), (OptunaBackend, "tell", "tell"),
        (ledger.Ledger, "remeasure", "retime"), (ledger.Ledger, "score_on_test", "test"),
        (report, "write_report", "report")):
    wrap(owner, name, phase)
wrap(run.Run, "_baseline", "baseline", lambda self, *args: not self.dir.has_baseline())
sys.exit(cli.main(sys.argv[2:]))
"""
#: the order phases come in within one process; a later one means an earlier one is past
RANK = {"dense": 0, "baseline": 1, "recover": 2, "proxy": 3, "short": 3, "full": 3, "tell": 3,
        "retime": 4, "test": 5, "report": 6}
#: seconds, until a phase has been seen to end (then: the median of its observed durations)
GUESS = {"dense": 8.0, "baseline": 0.12, "recover": 0.05, "proxy": 0.2, "short": 0.5,
         "full": 1.5, "tell": 0.01, "retime": 0.5, "test": 0.1, "report": 0.5}


@dataclass
class Target:
    phase: str
    min_done: int = 0  # completed full-fidelity trials before this kill may land
    attempts: int = 0


@dataclass(frozen=True)
class Kill:
    target: str
    phase: str
    delay: float
    process_s: float
    run_s: float
    completed: int
    trials: int
    running: int
    lock: bool  # the kill left Optuna's journal lock behind (the resume waits out its grace)


def plan(trials: int, generation: int = 2) -> list[Target]:
    """The kill moments: every phase once early, the search phases again spread over the run."""
    cap = max(0, trials - generation)
    search = [Target(phase, min(cap, int(share * trials))) for phase, share in (
        ("short", 0.1), ("full", 0.2), ("tell", 0.3), ("proxy", 0.45), ("short", 0.6),
        ("full", 0.75), ("tell", 0.9))]
    return [Target("dense"), Target("baseline"), Target("proxy"), Target("recover"), *search,
            Target("retime"), Target("test"), Target("report")]


class PhaseLog:
    """One process's phase markers, read as they are appended."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.lines: list[tuple[float, str]] = []

    def poll(self) -> list[tuple[float, str]]:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        data = data[:data.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(data)
        new = [(float(t), p) for t, p in (x.split(" ", 1) for x in data.decode().splitlines())]
        self.lines.extend(new)
        return new

    def landed(self) -> str:
        """The phase the process was in when it stopped writing markers."""
        phase = self.lines[-1][1] if self.lines else "startup"
        return f"between ({phase[1:]} ended)" if phase.startswith("-") else phase


def typical(logs: list[PhaseLog], phase: str) -> float:
    """Median observed duration of ``phase`` over every process so far (else a guess); for the
    recovery the longest (it is instant when a kill left nothing running)."""
    seen = [t2 - t1 for log in logs for (t1, p1), (t2, p2) in zip(log.lines, log.lines[1:])
            if p1 == phase and p2 == "-" + phase]  # phases do not nest
    if not seen:
        return GUESS[phase]
    return max(seen) if phase == "recover" else sorted(seen)[len(seen) // 2]


def completed_in_csv(run_dir: Path) -> int:
    """Full-fidelity COMPLETE rows of trials.csv (rewritten atomically after each generation)."""
    if not (run_dir / "trials.csv").is_file():
        return 0
    with open(run_dir / "trials.csv", newline="") as handle:
        return sum(r["state"] == "COMPLETE" and float(r["fidelity"] or 0) >= 1
                   for r in csv.DictReader(handle))


def snapshot(journal: Path) -> dict[int, dict[str, Any]]:
    """Every trial of the journal (read from a copy): state, values, params, attributes."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not journal.is_file():
        return {}
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(journal, copy := Path(tmp) / "study.journal")
        storage = JournalStorage(JournalFileBackend(str(copy)))
        study = optuna.load_study(study_name="autoprune", storage=storage)
        return {t.number: {"state": t.state.name, "values": tuple(t.values or ()),
                           "params": tuple(sorted(t.params.items())), "attrs": dict(t.user_attrs)}
                for t in study.get_trials(deepcopy=False)}


def is_full(t: dict[str, Any]) -> bool:
    return t["state"] == "COMPLETE" and t["attrs"].get("state") != "INFEASIBLE" \
        and float(t["attrs"].get("fidelity") or 0) >= 1


class Chaos:
    """Launch, watch, kill and resume one search until the kill plan is done."""

    def __init__(self, work: Path, argv: list[str], seed: int, timeout: float) -> None:
        self.work, self.run_dir, self.argv, self.timeout = work, work / "run", argv, timeout
        self.rng, self.start = random.Random(seed), time.time()
        self.rc: int | None = None
        self.logs: list[PhaseLog] = []
        self.kills: list[Kill] = []
        self.notes: list[str] = []
        self.snapshots: list[dict[int, dict[str, Any]]] = []
        # the package as it was at the start: others may edit the tree while this runs
        shutil.copytree(REPO / "autoprune", work / "src" / "autoprune",
                        ignore=shutil.ignore_patterns("__pycache__"))
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "AUTOPRUNE_CACHE": str(work / "cache"),
                    "PYTHONPATH": str(work / "src")}

    def launch(self, argv: list[str]) -> subprocess.Popen[bytes]:
        index = len(self.logs)
        self.logs.append(PhaseLog(self.work / f"phases-{index}.log"))
        self.logs[-1].path.touch()
        with open(self.work / f"process-{index}.log", "wb") as out:
            return subprocess.Popen([sys.executable, "-c", PROBE, str(self.logs[-1].path), *argv],
                                    cwd=self.work, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, targets: list[Target]) -> int:
        """Kill at each target, resume after each kill; the last process's exit code."""
        proc = self.launch(self.argv)
        while True:
            kill = self.drive(proc, targets)
            if kill is None:
                return int(proc.returncode)
            self.kills.append(kill)
            print(f"kill {len(self.kills):2d}: {kill.phase:<22} at {kill.run_s:6.1f} s, "
                  f"{kill.completed} completed", flush=True)
            proc = self.launch(["search", "--resume", str(self.run_dir), "--quiet"])

    def drive(self, proc: subprocess.Popen[bytes], targets: list[Target]) -> Kill | None:
        """Watch ``proc``; kill it at the first target's moment (None: it ended by itself)."""
        log, begun, armed = self.logs[-1], time.time(), None
        while True:
            for t, phase in log.poll():
                while targets and armed is None and not phase.startswith("-"):
                    target = targets[0]
                    if phase == target.phase:
                        if completed_in_csv(self.run_dir) >= target.min_done:
                            # a tell is one trial's: aim anywhere in the generation's batch
                            span = typical(self.logs, phase) * (7 if phase == "tell" else 1)
                            delay = self.rng.uniform(0.05, 0.95) * span
                            armed = (t + delay, delay)
                        break
                    if RANK[phase] <= RANK[target.phase]:
                        break
                    self.notes.append(f"{target.phase} (>= {target.min_done} completed): the "
                                      f"run was past it, skipped")
                    targets.pop(0)
            if proc.poll() is not None:
                return None
            if time.time() - begun > self.timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RuntimeError(f"process {len(self.logs) - 1} ran > {self.timeout:.0f} s "
                                   f"(hung?); see {self.work}")
            if armed is not None and time.time() >= armed[0]:
                return self.kill(proc, targets, armed[1], begun)
            time.sleep(0.002)

    def kill(self, proc: subprocess.Popen[bytes], targets: list[Target], delay: float,
             begun: float) -> Kill:
        now = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log, target = self.logs[-1], targets[0]
        log.poll()
        phase = log.landed()
        target.attempts += 1
        if phase == target.phase or target.attempts >= 3:
            targets.pop(0)
        snap = snapshot(self.run_dir / "study.journal")
        self.snapshots.append(snap)
        return Kill(target.phase, phase, delay, now - begun, now - self.start,
                    sum(is_full(t) for t in snap.values()), len(snap),
                    sum(t["state"] == "RUNNING" for t in snap.values()),
                    (self.run_dir / "study.journal.lock").exists())


def lost(snapshots: list[dict[int, dict[str, Any]]],
         final: dict[int, dict[str, Any]]) -> tuple[set[int], set[int]]:
    """Trials COMPLETE (and, second, other finished ones) after a kill but changed at the end."""
    complete, finished = set[int](), set[int]()
    for snap in snapshots:
        for n, t in snap.items():
            if t["state"] not in ("RUNNING", "WAITING") and not t["attrs"].get("retry") and any(
                    final.get(n, {}).get(k) != t[k] for k in ("state", "values", "params")):
                (complete if t["state"] == "COMPLETE" else finished).add(n)
    return complete, finished


def reruns(snapshots: list[dict[int, dict[str, Any]]],
           final: dict[int, dict[str, Any]]) -> set[int]:
    """Trials that evaluate again the params of a trial already finished: a retry of a finished
    trial, or a trial created after a kill with the params of one finished before it."""
    def done(t: dict[str, Any]) -> bool:
        return t["state"] in ("COMPLETE", "PRUNED") or (t["state"] == "FAIL"
                                                        and not t["attrs"].get("retry"))

    out = {n for n, t in final.items() if t["attrs"].get("retry_of") is not None
           and done(final.get(int(t["attrs"]["retry_of"]), {"state": "?", "attrs": {}}))}
    for snap in snapshots:
        before = {t["params"]: n for n, t in snap.items() if done(t) and t["params"]}
        out |= {n for n, t in final.items() if n not in snap and t["params"] in before}
    return out


def agree(run_dir: Path, final: dict[int, dict[str, Any]]) -> list[str]:
    """Where journal, trials.csv and front.json disagree (empty: they agree)."""
    names = {"COMPLETE": "COMPLETE", "PRUNED": "SCREENED", "FAIL": "FAIL",
             "RUNNING": "RUNNING", "WAITING": "RUNNING"}
    with open(run_dir / "trials.csv", newline="") as handle:
        rows = {int(r["trial"]): r for r in csv.DictReader(handle)}
    bad = [f"trial numbers differ: journal only {sorted(set(final) - set(rows))}, csv only "
           f"{sorted(set(rows) - set(final))}"] if set(rows) != set(final) else []
    for n in sorted(set(final) & set(rows)):
        t, row = final[n], rows[n]
        state = "INFEASIBLE" if t["attrs"].get("state") == "INFEASIBLE" else names[t["state"]]
        if row["state"] != state:
            bad.append(f"trial {n}: journal {state}, trials.csv {row['state']}")
        if t["state"] == "COMPLETE" and state == "COMPLETE" and not (
                math.isclose(float(row["val_acc"]), t["values"][0], rel_tol=1e-12)
                and math.isclose(float(row["flops_ratio"]), t["values"][1], rel_tol=1e-12)):
            bad.append(f"trial {n}: values {t['values']} vs trials.csv "
                       f"({row['val_acc']}, {row['flops_ratio']})")
    front = json.loads((run_dir / "front.json").read_text())
    full = {n: t["values"] for n, t in final.items() if is_full(t)}
    pareto = {n for n, (a, c) in full.items() if not any(
        a2 >= a and c2 <= c and (a2, c2) != (a, c) for a2, c2 in full.values())}
    members = {int(m["trial"]) for m in front}
    if members != pareto:
        bad.append(f"front.json {sorted(members)} != non-dominated full trials of the journal "
                   f"{sorted(pareto)}")
    bad += [f"front member {m['trial']}: val_acc {m['val_acc']} != journal {full[m['trial']][0]}"
            for m in front if m["trial"] in full and m["val_acc"] != full[m["trial"]][0]]
    return bad


def verify(chaos: Chaos, requested: int) -> list[tuple[str, str, bool, bool]]:
    """The end checks: (what, figure, ok, part of acceptance check 3)."""
    run_dir, final = chaos.run_dir, snapshot(chaos.run_dir / "study.journal")
    full = [t for t in final.values() if is_full(t)]
    counted = sum(t["state"] in ("COMPLETE", "FAIL") and not t["attrs"].get("retry")
                  and t["attrs"].get("counts", True) for t in final.values())
    gone, changed = lost(chaos.snapshots, final)
    again = reruns(chaos.snapshots, final)
    retried = sum(t["attrs"].get("retry_of") is not None for t in final.values())
    baselines = sorted({str(t["attrs"]["baseline"]) for t in full if t["attrs"].get("baseline")})
    bad = agree(run_dir, final) if (run_dir / "front.json").is_file() else ["no front.json"]
    left = sorted(n for n, t in final.items() if t["state"] in ("RUNNING", "WAITING"))
    return [
        ("last process exit code", str(chaos.rc), chaos.rc == 0, True),
        ("full-fidelity COMPLETE trials (requested)", f"{len(full)} ({requested}); counted "
         f"toward --trials: {counted}", len(full) >= requested and counted == requested, True),
        ("completed trials lost", f"{len(gone)} {sorted(gone)}; screened/failed ones changed: "
         f"{len(changed)} {sorted(changed)}", not gone and not changed, True),
        ("finished trials rerun", f"{len(again)} {sorted(again)} (re-enqueued trials a kill "
         f"left running: {retried})", not again, True),
        ("journal == trials.csv == front.json", "; ".join(bad[:5])
         or f"agree ({len(final)} trials, {len(full)} full-fidelity)", not bad, True),
        ("trials RUNNING/WAITING in the journal at the end", f"{len(left)} {left}", not left,
         False),
        ("baselines evaluated (issue 15 item 6)", ", ".join(baselines) or "none",
         len(baselines) >= 2, False),
    ]


def tables(chaos: Chaos, checks: list[tuple[str, str, bool, bool]]) -> str:
    kills = ["| # | target phase | landed in | delay s | s into process | s into run | "
             "completed | trials | running (retried) | journal lock left |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    kills += [f"| {i} | {k.target} | {k.phase} | {k.delay:.3f} | {k.process_s:.1f} | "
              f"{k.run_s:.1f} | {k.completed} | {k.trials} | {k.running} | "
              f"{'yes' if k.lock else ''} |" for i, k in enumerate(chaos.kills, 1)]
    rows = ["| check | figure | ok |", "|---|---|---|"]
    rows += [f"| {what}{'' if main else ' (further)'} | {fig} | {'yes' if ok else '**NO**'} |"
             for what, fig, ok, main in checks]
    passed = all(ok for *_, ok, main in checks if main) and len(chaos.kills) >= 10
    further = [what for what, _, ok, main in checks if not main and not ok]
    notes = "".join(f"\n- {n}" for n in chaos.notes)
    return ("\n".join(kills) + f"\n\n{len(chaos.kills)} SIGKILLs, landed in: "
            f"{', '.join(sorted({k.phase for k in chaos.kills}))}; {len(chaos.logs)} processes, "
            f"{time.time() - chaos.start:.0f} s in all; every process OMP_NUM_THREADS=1"
            + (f"\n\nnotes:{notes}" if notes else "") + "\n\n" + "\n".join(rows)
            + f"\n\n**verdict (acceptance check 3): {'PASS' if passed else 'FAIL'}** "
            f"({len(chaos.kills)} kills)" + (f"; further checks failing: {', '.join(further)}"
                                             if further else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, help="--trials of the search (default: its own)")
    parser.add_argument("--finetune-steps", type=int, help="--finetune-steps (quick mode)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    work = Path(tempfile.mkdtemp(prefix="autoprune-chaos-"))
    argv = ["search", "--budget-flops", "0.4", "--out", str(work / "run"), "--quiet"]
    argv += ["--trials", str(args.trials)] if args.trials else []
    argv += ["--finetune-steps", str(args.finetune_steps)] if args.finetune_steps else []
    print(f"work folder {work}; command: autoprune {' '.join(argv)}", flush=True)
    chaos = Chaos(work, argv, args.seed, args.timeout)
    try:
        from autoprune.settings import RunSettings

        chaos.rc = chaos.run(plan(args.trials or RunSettings.trials))
        requested = int(yaml.safe_load((work / "run" / "config.yaml").read_text())["trials"])
        table = tables(chaos, verify(chaos, requested))
    except Exception as exc:
        table = tables(chaos, [("chaos run", f"{type(exc).__name__}: {exc}", False, True)])
        args.keep = True
    print("\n" + table)
    if chaos.rc not in (0, None):
        args.keep = True
        print((work / f"process-{len(chaos.logs) - 1}.log").read_text()[-3000:])
    path = write("chaos.md", "python " + " ".join(sys.argv), table)
    print(f"\nwritten to {path}" + (f"; work folder kept: {work}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""autoprune.results: the run directory round-trips records exactly and writes atomically."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest

from autoprune.errors import ConfigError
from autoprune.results import (
    COLUMNS,
    Remeasured,
    RunDir,
    atomic_write_bytes,
    atomic_write_text,
    records_to_frame,
)
from autoprune.trial import TrialRecord, TrialState

PLAN = {"ratios": {"layer1.0.conv1": 0.25, "layer2": 0.5}, "importance": "l2", "round_to": 8}


def _records() -> list[TrialRecord]:
    rng = random.Random(0)
    return [
        TrialRecord(
            trial=2,
            state="COMPLETE",
            flops_ratio=1 / 3,
            params_ratio=0.1 + 0.2,
            macs=123456789.0,
            params=1.5e-300,
            latency_ms=rng.random(),
            refits=2.0,
            proxy_acc=rng.random(),
            val_acc=rng.random(),
            test_acc=None,
            fidelity=1.0,
            seconds=12.000000000000002,
            searched={"b": rng.random(), "a": 0.05},
            plan=PLAN,
        ),
        TrialRecord(trial=0, state="FAIL", fail_reason='CUDA OOM, "batch" 64\nretry', seconds=0.5),
        TrialRecord(
            trial=1,
            state="COMPLETE",
            flops_ratio=0.4,
            val_acc=0.9,
            baseline="uniform-l2",
            searched={"c": 1e20},
        ),
        TrialRecord(trial=3, state="RUNNING"),
    ]


def _run(tmp_path: Path, records: list[TrialRecord]) -> RunDir:
    run = RunDir.create(tmp_path / "run")
    for record in records:
        if record.plan is not None:
            run.write_plan(record.trial, record.plan)
    return run


def test_create_makes_folders_and_open_accepts_it(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "results" / "r1")
    assert run.plans_dir.is_dir() and run.models_dir.is_dir()
    run.write_config({"model": "resnet18", "budget": {"flops": 0.4}})
    opened = RunDir.open(run.path)
    assert opened == run
    assert os.fspath(opened) == str(run.path)
    names = [
        run.config_path, run.baseline_path, run.journal_path, run.trials_path, run.front_csv_path,
        run.front_json_path, run.report_path,
    ]
    assert [p.name for p in names] == [
        "config.yaml", "baseline.json", "study.journal", "trials.csv", "front.csv", "front.json",
        "report.html",
    ]


@pytest.mark.parametrize("make", ["empty_dir", "missing", "file"])
def test_open_rejects_non_run_dir(tmp_path: Path, make: str) -> None:
    path = tmp_path / "not_a_run"
    if make == "empty_dir":
        path.mkdir()
    elif make == "file":
        path.write_text("x")
    with pytest.raises(ConfigError) as info:
        RunDir.open(path)
    message = str(info.value)
    assert str(path) in message and "config.yaml" in message and "results/<run>" in message
    assert "\n" not in message


def test_config_and_baseline_round_trip(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run")
    config = {"zeta": 1, "alpha": [0.1, 0.2], "budget": {"flops": 0.4, "latency": None}}
    run.write_config(config)
    assert run.read_config() == config
    assert list(run.read_config()) == ["zeta", "alpha", "budget"]  # not sorted
    baseline = {"macs": 1.0e9, "acc": 0.93, "env": {"torch": "2.4", "cuda": None}}
    run.write_baseline(baseline)
    assert run.read_baseline() == baseline
    assert run.baseline_path.read_text().startswith("{\n  ")  # indent 2


def test_read_config_rejects_non_mapping(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run")
    run.config_path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        run.read_config()


def test_plan_round_trip_with_sorted_keys(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run")
    run.write_plan(7, {"z": 1, "a": {"y": 2, "b": 3}})
    assert (run.plans_dir / "7.json").is_file()
    assert run.read_plan(7) == {"z": 1, "a": {"y": 2, "b": 3}}
    text = (run.plans_dir / "7.json").read_text()
    assert text.index('"a"') < text.index('"z"') and text.index('"b"') < text.index('"y"')


def test_trials_round_trip_exactly(tmp_path: Path) -> None:
    records = _records()
    run = _run(tmp_path, records)
    run.write_trials(records)
    back = run.read_trials()
    assert back == sorted(records, key=lambda r: r.trial)
    assert all(type(r.trial) is int for r in back)
    assert back[2].flops_ratio == 1 / 3 and back[2].params == 1.5e-300
    assert back[0].test_acc is None and back[0].searched == {}
    assert back[2].plan == PLAN and back[1].plan is None


def test_trials_round_trip_many_random_floats(tmp_path: Path) -> None:
    rng = random.Random(1)
    records = [
        TrialRecord(
            trial=i,
            state="COMPLETE",
            flops_ratio=rng.random(),
            macs=rng.uniform(0, 1e12),
            seconds=rng.expovariate(1e-3),
            searched={"x": rng.random() * 10 ** rng.randint(-12, 12)},
        )
        for i in range(50)
    ]
    run = RunDir.create(tmp_path / "run")
    run.write_trials(records)
    assert run.read_trials() == records


def test_csv_header_is_columns_then_sorted_params(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run")
    run.write_trials(_records())
    with run.trials_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [*COLUMNS, "p:a", "p:b", "p:c"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2", "3"]
    running = dict(zip(rows[0], rows[4]))
    assert running["state"] == "RUNNING" and running["val_acc"] == "" and running["p:a"] == ""


def test_empty_trials_header_only_and_missing_file(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run")
    assert run.read_trials() == [] and run.read_front() == []
    run.write_trials([])
    assert run.trials_path.read_text().strip().split(",") == list(COLUMNS)
    assert run.read_trials() == []


def test_records_to_frame_layout() -> None:
    frame = records_to_frame(_records())
    assert list(frame.columns) == [*COLUMNS, "p:a", "p:b", "p:c"]
    assert list(frame["trial"]) == [0, 1, 2, 3]


def test_write_trials_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run")
    run.write_trials(_records())
    run.write_trials([TrialRecord(trial=9, state="FAIL")])
    assert [r.trial for r in run.read_trials()] == [9]
    run.write_front(_records()[:2])
    run.write_config({"a": 1})
    assert sorted(p.name for p in run.path.iterdir()) == [
        "config.yaml", "front.csv", "front.json", "models", "plans", "trials.csv",
    ]


def test_failed_write_keeps_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old\n")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_atomic_write_creates_parents_and_keeps_bytes(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "blob.bin"
    atomic_write_bytes(target, b"\x00\r\n\xff")
    assert target.read_bytes() == b"\x00\r\n\xff"
    atomic_write_text(target, "é\n")
    assert target.read_bytes() == "é\n".encode()


def test_front_json_keys_and_plans(tmp_path: Path) -> None:
    records = _records()
    run = _run(tmp_path, records)
    front = [records[0], records[2]]  # trials 2 and 1
    run.write_front(front)
    rows = run.read_front()
    assert [row["trial"] for row in rows] == [1, 2]
    for row in rows:
        assert set(row) == {*COLUMNS, "searched", "plan"}
    assert rows[1]["plan"] == PLAN and rows[1]["searched"] == records[0].searched
    assert rows[0]["plan"] is None and rows[0]["test_acc"] is None
    assert json.loads(run.front_json_path.read_text()) == rows
    with run.front_csv_path.open(newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [*COLUMNS, "p:a", "p:b", "p:c"]


def test_front_json_takes_plan_from_plans_dir(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "run")
    run.write_plan(4, PLAN)
    run.write_front([TrialRecord(trial=4, state="COMPLETE", val_acc=float("nan"))])
    (row,) = run.read_front()
    assert row["plan"] == PLAN and row["val_acc"] is None


def test_states_round_trip_as_the_enum(tmp_path):
    """trials.csv holds plain state names; they read back as TrialState members."""
    run = _run(tmp_path, _records())
    run.write_trials(_records())
    assert "TrialState" not in run.trials_path.read_text()
    states = {r.trial: r.state for r in run.read_trials()}
    assert all(isinstance(s, TrialState) for s in states.values())
    assert states[0] is TrialState.FAIL and states[3] is TrialState.RUNNING


def test_run_dir_owns_model_and_score_paths(tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.write_model(7, b"weights")
    assert run.model_path(7).read_bytes() == b"weights"
    assert run.saved_models() == {7: run.model_path(7)}
    run.write_scores("test", {7: 0.5, "dense": 0.9})
    assert run.read_scores("test") == {7: 0.5}  # per-trial figures only
    assert run.read_scores("latency") == {}
    with pytest.raises(ValueError, match="scores 'val'"):
        run.read_scores("val")


def test_remeasured_figures_spreads_and_drift_come_from_one_file(tmp_path):
    run = RunDir.create(tmp_path / "run")
    assert run.read_remeasured() == Remeasured({}, {}, 1.0)  # before the end-of-run re-timing
    run.write_scores("latency", {"dense": 2.0, "iqr:dense": 0.1, 3: 1.2, "iqr:3": 0.05,
                                 "latency_drift": 1.15})
    assert run.read_remeasured() == Remeasured({3: 1.2}, {"dense": 0.1, "3": 0.05}, 1.15)
    assert run.read_scores("latency") == run.read_remeasured().ms

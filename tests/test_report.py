"""The HTML report: structure from a real run, self-containment, and a headless-browser render."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import autoprune as ap
from autoprune._svg import nice_ticks
from autoprune.budget import ResolvedBudget
from autoprune.pareto import hypervolume_2d, hypervolume_progress, non_dominated
from autoprune.plan import Budget
from autoprune.report import terminal_summary, write_report
from autoprune.report_data import hypervolume_points, load
from autoprune.results import RunDir
from autoprune.trial import TrialRecord

EVIL = 'RuntimeError: <script>alert("x")</script> & diverged'


class _Elements(HTMLParser):
    """Every start tag as (tag, attrs), plus the page text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def with_class(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if name in a.get("class", "").split()]


def parse(path: Path) -> _Elements:
    parser = _Elements()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) search through the CLI, as a user would run it."""
    out = tmp_path_factory.mktemp("search") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", "--trials", "4", "--finetune-steps",
         "10", "--bn-batches", "4", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def failed_run(real_run: Path, tmp_path: Path) -> Path:
    """A copy of the real run with a failed, an infeasible and a running trial appended."""
    path = tmp_path / "with-failures"
    shutil.copytree(real_run, path)
    run = RunDir.open(path)
    records = run.read_trials()
    n = max(r.trial for r in records) + 1
    run.write_trials([*records,
                      TrialRecord(trial=n, state="FAIL", fail_reason=EVIL),
                      TrialRecord(trial=n + 1, state="INFEASIBLE", flops_ratio=0.4,
                                  params_ratio=0.5, fail_reason="params ratio 0.5 over 0.3"),
                      TrialRecord(trial=n + 2, state="RUNNING")])
    return path


def test_report_shows_every_trial_front_dense_export_and_environment(real_run: Path):
    path = write_report(real_run)
    assert path == real_run / "report.html" and path.is_file()
    page, run = parse(path), RunDir.open(real_run)
    records, front = run.read_trials(), run.read_front()
    baseline = run.read_baseline()
    points = Counter(a["data-trial"] for a in page.with_class("trial-point"))
    done = [r for r in records if r.state == "COMPLETE" and r.val_acc is not None]
    assert done
    retimed = set(run.read_scores("latency"))  # the latency plot: the final figures only
    assert retimed >= {f["trial"] for f in front}
    for r in done:  # one point per plot: FLOPs, params, and latency where re-timed at the end
        assert points[str(r.trial)] == 2 + (r.trial in retimed), r
    assert set(points) == {str(r.trial) for r in done}
    assert {a["data-trial"] for a in page.with_class("front-point")} == \
        {str(f["trial"]) for f in front}
    assert len(page.with_class("front-line")) == 3
    assert len(page.with_class("dense-point")) == 3
    assert {a["data-trial"] for a in page.with_class("baseline-point")} == \
        {str(r.trial) for r in done if r.baseline}
    assert len(page.with_class("budget-line")) == 1  # FLOPs budget only
    text = "".join(page.text)
    for f in front:
        assert f"autoprune export {real_run.name} --trial {f['trial']}" in text
        assert f"trial {f['trial']} (on the front)\nval acc" in text  # the hover <title>
    env = baseline["environment"]
    assert any(a.get("id") == "environment" for _, a in page.elements)
    for value in (env["torch"], env["torch_pruning"], env["optuna"], env["device"]):
        assert str(value) in text
    assert env["finetune_device"] == "cpu" and "fine-tune device" in text
    assert "FLOPs ≤ 40% of dense" in text
    rows = [a["data-trial"] for tag, a in page.elements  # the trials table's rows
            if tag == "tr" and "data-trial" in a and "state-" in a.get("class", "")]
    assert sorted(rows, key=int) == [str(r.trial) for r in records]
    assert sum(tag == "script" for tag, _ in page.elements) == 1
    assert "dense" in terminal_summary(str(real_run))  # the CLI's summary still works


def test_failed_trials_show_their_escaped_reason(failed_run: Path):
    raw = write_report(failed_run).read_text(encoding="utf-8")
    assert EVIL not in raw and "<script>alert" not in raw
    page = parse(failed_run / "report.html")
    text = "".join(page.text)
    assert EVIL in text and "params ratio 0.5 over 0.3" in text
    assert page.with_class("state-fail") and page.with_class("state-infeasible")
    assert page.with_class("state-running")
    assert len(page.with_class("failure")) == 2


def test_copied_run_renders_without_paths_or_network(real_run: Path, tmp_path: Path):
    copy = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(real_run, copy)
    raw = write_report(copy).read_text(encoding="utf-8")
    for location in (real_run.resolve(), copy.resolve(), tmp_path.resolve()):
        assert str(location) not in raw
    assert "http://" not in raw and "https://" not in raw and "file:" not in raw
    assert "<link" not in raw and " src=" not in raw  # everything inline
    assert "autoprune export copied-run --trial" in raw


def test_report_without_front_latency_or_baseline_file(tmp_path: Path):
    """An interrupted run: one completed trial, no latency, no front or baseline.json yet."""
    run = RunDir.create(tmp_path / "partial")
    run.write_config({"task": {"spec": "/home/someone/tasks/mine.py"}, "budget": {"params": 0.5}})
    run.write_trials([TrialRecord(trial=0, state="COMPLETE", flops_ratio=0.6, params_ratio=0.45,
                                  val_acc=0.9, fidelity=1.0),
                      TrialRecord(trial=1, state="FAIL", fail_reason="out of memory")])
    raw = write_report(run.path).read_text(encoding="utf-8")
    page = parse(run.report_path)
    assert len(page.with_class("trial-point")) == 2 and not page.with_class("front-point")
    assert len(page.with_class("budget-line")) == 1  # on the params plot
    assert "no completed trial has a latency" in raw and "No front yet" in raw
    assert "/home/someone" not in raw and "mine.py" in raw


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 1.05) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(-0.5, 11.5, integer=True) == [0.0, 5.0, 10.0]
    assert nice_ticks(-0.5, 1.5, integer=True) == [0.0, 1.0]


# -- the cost axis: the one the front was built on (issue 11) ---------------------------------

DENSE = {"val_acc": 0.95, "test_acc": 0.94, "macs": 1e6, "flops": 2e6, "params": 1e4,
         "latency_ms": 2.0, "latency_final_ms": 2.0}
# FLOPs, params and latency orderings disagree, so each axis has its own front and hypervolume
AXIS_RECORDS = (
    TrialRecord(trial=0, state="COMPLETE", flops_ratio=0.30, params_ratio=0.60, latency_ms=1.5,
                val_acc=0.90, fidelity=1.0),
    TrialRecord(trial=1, state="COMPLETE", flops_ratio=0.50, params_ratio=0.40, latency_ms=1.0,
                val_acc=0.88, fidelity=1.0),
    TrialRecord(trial=2, state="SCREENED", flops_ratio=0.10, params_ratio=0.10, latency_ms=0.2,
                proxy_acc=0.99, fidelity=0.1),
    TrialRecord(trial=3, state="COMPLETE", flops_ratio=0.10, params_ratio=0.10, latency_ms=0.2,
                val_acc=0.99, fidelity=0.5),  # partial fine-tune: drawn, never on the front
    TrialRecord(trial=4, state="COMPLETE", flops_ratio=0.45, params_ratio=0.35, latency_ms=1.7,
                val_acc=0.80, fidelity=1.0),
)
FULL = [r for r in AXIS_RECORDS if r.is_full]
AXIS_COST = {  # what each budget's front is built on, for the full trials above
    "latency": [r.latency_ms / DENSE["latency_ms"] for r in FULL],  # type: ignore[operator]
    "FLOPs": [r.flops_ratio for r in FULL],
    "params": [r.params_ratio for r in FULL],
}


def hand_built_run(path: Path, budget: Budget) -> RunDir:
    """A run directory written as a search writes it: config, baseline, budget.json, trials, and
    the front of the full trials on the resolved budget's axis."""
    resolved = ResolvedBudget(budget, DENSE["macs"], DENSE["params"], DENSE["latency_final_ms"])
    run = RunDir.create(path)
    budget_dict = {k: v for k, v in dataclasses.asdict(budget).items() if v is not None}
    run.write_config({"task": {"spec": "digits"}, "budget": budget_dict})
    run.write_baseline({"budget": budget_dict, "dense": DENSE, "groups": 3})
    run.write_budget(resolved.to_dict())
    run.write_trials(AXIS_RECORDS)
    keep = non_dominated([(r.val_acc, resolved.cost_of(r)) for r in FULL], ("max", "min"))
    run.write_front([FULL[i] for i in keep])
    return run


def hypervolume_chart(raw: str) -> tuple[str, list[tuple[int, str]]]:
    """The progress page's hypervolume chart: its cost name and its (trial, value) points."""
    match = re.search(r'aria-label="hypervolume \(acc × (\w+) saved\)">(.*?)</svg>', raw)
    assert match, "no hypervolume chart in the page"
    points = re.findall(r"<title>trial (\d+): ([0-9.]+)</title>", match[2])
    return match[1], [(int(t), v) for t, v in points]


@pytest.mark.parametrize(("budget", "cost"), [(Budget(latency=0.8), "latency"),
                                               (Budget(flops=0.6), "FLOPs"),
                                               (Budget(params=0.6), "params")])
def test_hypervolume_uses_the_axis_the_front_was_built_on(tmp_path: Path, budget: Budget,
                                                           cost: str):
    """Under a latency-only budget the front is built on the latency ratio, so the report's
    hypervolume must be too (it used FLOPs before issue 11)."""
    volumes = {name: hypervolume_2d(list(zip([r.val_acc for r in FULL], costs)), ("max", "min"),
                                    (0.0, 1.0)) for name, costs in AXIS_COST.items()}
    assert len({round(v, 3) for v in volumes.values()}) == 3  # the data tells the axes apart
    run = hand_built_run(tmp_path / "run", budget)
    view = load(run)
    expected = iter(AXIS_COST[cost])
    assert hypervolume_points(view) == [(float(r.val_acc), pytest.approx(next(expected)))
                                        if r.is_full else pytest.approx((float("nan"),) * 2,
                                                                        nan_ok=True)
                                        for r in AXIS_RECORDS]
    raw = write_report(run.path).read_text(encoding="utf-8")
    name, shown = hypervolume_chart(raw)
    assert name == cost and f"validation accuracy vs {cost} ratio" in raw
    progress = hypervolume_progress(hypervolume_points(view), ("max", "min"), (0.0, 1.0))
    # x: full fine-tunes done (what --trials counts), one point per fully fine-tuned trial
    full = [v for r, v in zip(AXIS_RECORDS, progress) if r.is_full]
    assert shown == [(k + 1, f"{v:.3f}") for k, v in enumerate(full) if v > 0]
    assert shown[-1][1] == f"{volumes[cost]:.3f}"
    assert "trial 3 (on the front)" not in raw  # the partial fine-tune is drawn, not on the front
    assert 'data-trial="3" cx' in raw and 'data-trial="2" cx' not in raw


def _fake_latency(model: Any, inputs: Any, timing: Any) -> tuple[float, float, float]:
    """(median, IQR) ms and preparation seconds: the parameter count squared, so no timing noise
    on a shared CPU can put a candidate over the budget, and the latency ratio (~ params ratio²)
    is not FLOPs'."""
    return (sum(p.numel() for p in model.parameters()) / 1e4) ** 2, 0.0, 0.0


@pytest.mark.slow
def test_latency_budget_search_report_uses_the_latency_ratio(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    """Issue 11's end-to-end check: a latency-budget search, then its report's front and
    hypervolume, both on the latency ratio."""
    from autoprune.tasks import load_task

    monkeypatch.setattr("autoprune.latency.timing._latency", _fake_latency)  # the dense model
    monkeypatch.setattr("autoprune.latency.PreparedModels.time_alternating",  # candidates,
                        lambda self, models, *a, **k: {  # final re-timing (the run's Timer)
                            label: _fake_latency(m, None, None)[:2]
                            for label, m in models.items()})
    task = load_task("digits")
    result = ap.search(task.dense_model(), task.example_inputs(), evaluate=task.evaluate,
                       train_loader=task.splits().train, budget=ap.Budget(latency=0.9), trials=2,
                       run_dir=tmp_path / "run",
                       finetune_settings=ap.FinetuneSettings(steps=10, bn_batches=2),
                       settings=ap.SearchSettings(progress=False))
    run = RunDir.open(result.run_dir)
    saved = run.read_budget()
    assert saved is not None
    resolved = ResolvedBudget.from_dict(saved)
    assert resolved.axis == "latency_ratio"
    full = [r for r in run.read_trials() if r.is_full]
    assert full, "no trial was fully fine-tuned within the latency budget"
    latency = [(float(r.val_acc or 0.0), float(resolved.cost_of(r) or 1.0)) for r in full]
    flops = [(float(r.val_acc or 0.0), float(r.flops_ratio or 1.0)) for r in full]
    by_latency = hypervolume_2d(latency, ("max", "min"), (0.0, 1.0))
    assert f"{by_latency:.3f}" != f"{hypervolume_2d(flops, ('max', 'min'), (0.0, 1.0)):.3f}"
    # the front: the non-dominated full trials on (val acc, latency ratio)
    front = {f["trial"] for f in run.read_front()}
    assert front == {full[i].trial for i in non_dominated(latency, ("max", "min"))}
    # the report's hypervolume: on the same latency ratios
    view = load(run)
    assert [p for p in hypervolume_points(view) if not math.isnan(p[0])] == \
        [pytest.approx(p) for p in latency]
    raw = write_report(run.path).read_text(encoding="utf-8")
    name, shown = hypervolume_chart(raw)
    assert name == "latency" and shown[-1][1] == f"{by_latency:.3f}"
    page = parse(run.report_path)
    assert {a["data-trial"] for a in page.with_class("front-point")} == {str(t) for t in front}


# -- headless browser ------------------------------------------------------------------------

def _chromium() -> str:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if os.environ.get("CI"):
        pytest.fail("chromium not installed but CI is set; .ci/run installs it (apt-get)")
    pytest.skip("chromium not installed (apt-get install chromium); CI installs it")


def _browse(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    """Console output of the page (the report logs nothing, so any of it is a problem)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_report_renders_in_headless_chromium(real_run: Path, tmp_path: Path):
    binary = _chromium()
    report = write_report(real_run).resolve()
    png = tmp_path / "report.png"
    shot = _browse(binary, tmp_path / "profile1", f"--screenshot={png}",
                   "--window-size=1400,2400", report.as_uri())
    assert png.is_file() and png.stat().st_size > 20_000, shot.stderr[-2000:]
    dump = _browse(binary, tmp_path / "profile2", "--enable-logging=stderr", "--v=0",
                   "--dump-dom", report.as_uri())
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert 'data-ready="1"' in dump.stdout  # the inline script ran to its end
    assert dump.stdout.count('class="trial-point') >= 2
    assert not _console_errors(dump.stderr), _console_errors(dump.stderr)

    broken = tmp_path / "broken.html"  # the console check itself must catch a script error
    broken.write_text(report.read_text(encoding="utf-8").replace(
        '"use strict";', '"use strict"; undefinedFunction();', 1), encoding="utf-8")
    bad = _browse(binary, tmp_path / "profile3", "--enable-logging=stderr", "--v=0",
                  "--dump-dom", broken.as_uri())
    assert _console_errors(bad.stderr) and 'data-ready="1"' not in bad.stdout


def test_a_planted_trial_number_in_front_json_is_refused_not_rendered(tmp_path):
    """A text ``trial`` in front.json once went raw into the page (a stored XSS)."""
    import json

    from autoprune.errors import ConfigError
    from autoprune.report import write_report
    from autoprune.results import RunDir

    run = RunDir.create(tmp_path / "run")
    run.write_config({"task": {"spec": "digits"}, "budget": {"flops": 0.5}})
    payload = '1"><script>alert(1)</script>'
    run.front_json_path.write_text(json.dumps([{"trial": payload, "state": "COMPLETE"}]))
    with pytest.raises(ConfigError, match=r"front\.json is damaged"):
        write_report(run.path)
    assert not run.report_path.exists()

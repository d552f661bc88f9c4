"""The decision-first report (issue 16): the summary table and its Δ values, unique tick labels,
labelled front points, kept/total channels, the comparison page, the terminal summary, and a
headless-Chromium check of the page at 900 px. Every run here is fabricated (no search): fast."""

from __future__ import annotations

import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report import _browse, _chromium, _console_errors

from autoprune._svg import fixed, nice_ticks, percent, tick_labels
from autoprune.errors import ConfigError
from autoprune.pareto import non_dominated
from autoprune.report import terminal_summary, write_report
from autoprune.report_compare import write_comparison
from autoprune.report_data import load, summary_rows
from autoprune.results import RunDir
from autoprune.trial import DRIFT_FLAG, HARD_LINE, LEGACY_DRIFT_FLAG, TrialRecord

# -- tick labels --------------------------------------------------------------------------------


def test_accuracy_ticks_at_half_points_get_one_decimal():
    """The issue's axis: ticks every 0.5 pt used to read "97%, 98%, 98%"."""
    ticks = nice_ticks(0.97, 0.985)
    assert ticks == [0.97, 0.975, 0.98, 0.985]
    assert tick_labels(ticks, percent) == ["97.0%", "97.5%", "98.0%", "98.5%"]
    assert tick_labels([0.0, 0.25, 0.5, 1.0], percent) == ["0%", "25%", "50%", "100%"]


@pytest.mark.parametrize(("lo", "hi"), [(0.97, 0.985), (0.9, 0.99), (0.951, 0.9535),
                                        (0.5, 1.0), (0.99991, 0.99999), (0.1234, 0.1236)])
def test_tick_labels_are_unique_with_the_fewest_decimals(lo: float, hi: float):
    ticks = nice_ticks(lo, hi)
    assert len(ticks) >= 2
    for fmt in (percent, fixed):
        labels = tick_labels(ticks, fmt)
        assert len(set(labels)) == len(labels), labels
        decimals = len(labels[0].rstrip("%").partition(".")[2])
        if decimals:  # one decimal fewer would repeat a label
            fewer = [fmt(t, decimals - 1) for t in ticks]
            assert len(set(fewer)) < len(fewer), (labels, fewer)


# -- a fabricated run ---------------------------------------------------------------------------

GROUPS = ("conv1", "layer1.0.conv1", "layer1.1.conv2", "layer2.0.conv1", "layer2.0.downsample.0",
          "layer3.0.conv1", "layer3.0.downsample.0", "layer4.1.very_long_block_name.conv2")
WIDTHS = {g: {"channels": 8 * (i + 1)} for i, g in enumerate(GROUPS)}
DENSE = {"val_acc": 0.985, "test_acc": 0.95, "macs": 1e6, "flops": 2e6, "params": 1e4,
         "latency_ms": 2.1, "latency_iqr_ms": 0.2, "latency_final_ms": 2.0}


def _plan(ratio: float, tilt: float = 0.0) -> dict:
    return {"ratios": {g: round(min(0.9, max(0.0, ratio + tilt * (i - 3.5) / 10)), 4)
                       for i, g in enumerate(GROUPS)}, "importance": "l2", "round_to": None}


def _record(trial: int, val: float, flops: float, test: float | None = None,
            latency: float | None = None, **kw) -> TrialRecord:
    return TrialRecord(trial=trial, state="COMPLETE", flops_ratio=flops, params_ratio=flops * 0.9,
                       val_acc=val, test_acc=test, latency_ms=latency, fidelity=1.0, **kw)


RECORDS = (  # val accuracies in 0.97-0.985: the range whose ticks used to repeat
    _record(0, 0.975, 0.398, test=0.90, latency=1.50, baseline="uniform-l2"),
    _record(1, 0.975, 0.399, test=0.89, latency=1.40, baseline="global-l2"),  # under uniform
    _record(2, 0.971, 0.30, test=0.88, latency=1.00),
    _record(3, 0.980, 0.3995, test=0.92, latency=2.50),  # the best; slower than dense
    _record(4, 0.970, 0.36),  # dominated by trial 2
    TrialRecord(trial=5, state="SCREENED", flops_ratio=0.2, params_ratio=0.2, proxy_acc=0.5,
                fidelity=0.0),
    TrialRecord(trial=6, state="SCREENED", flops_ratio=0.25, params_ratio=0.2, proxy_acc=0.6,
                fidelity=0.0),
)


def fabricated_run(path: Path, widths: bool = True, name_dense: dict | None = None) -> RunDir:
    run = RunDir.create(path)
    run.write_config({"task": {"spec": "digits"}, "budget": {"flops": 0.4}})
    baseline = {"dense": name_dense or DENSE, "groups": len(GROUPS), "budget": {"flops": 0.4}}
    if widths:
        baseline["group_channels"] = WIDTHS
    run.write_baseline(baseline)
    for r in RECORDS:
        if r.state == "COMPLETE":
            run.write_plan(r.trial, _plan(0.5 if r.baseline else 0.45, tilt=r.trial % 3))
    run.write_trials(RECORDS)
    full = [r for r in RECORDS if r.is_full]
    keep = non_dominated([(r.val_acc, r.flops_ratio) for r in full], ("max", "min"))
    run.write_front([full[i] for i in keep])
    (run.path / "latency_remeasured.json").write_text(json.dumps(
        {"dense": 2.0, "3": 2.5, "2": 1.0, "0": 1.5, "1": 1.4, "iqr:3": 0.125,
         "iqr:dense": 0.25}))  # the end-of-run re-timing: dense, front and baselines
    return run


def test_summary_rows_hold_hand_computed_deltas(tmp_path: Path):
    view = load(fabricated_run(tmp_path / "run"))
    assert sorted(view.front_ids) == [0, 2, 3]  # global (1) is dominated by uniform (0)
    rows = {row.name: row for row in summary_rows(view)}
    assert list(rows) == ["dense", "trial 2", "trial 0", "trial 3", "trial 1"]
    # dense test 95 %, uniform test 90 %: Δ in points of test accuracy
    assert rows["trial 3"].vs_dense == pytest.approx(-3.0)  # 92 - 95
    assert rows["trial 3"].vs_uniform == pytest.approx(2.0)  # 92 - 90
    assert rows["trial 2"].vs_dense == pytest.approx(-7.0)
    assert rows["trial 2"].vs_uniform == pytest.approx(-2.0)
    assert rows["trial 1"].vs_uniform == pytest.approx(-1.0) and rows["trial 1"].kind == "global-l2"
    assert rows["dense"].vs_uniform == pytest.approx(5.0)
    assert rows["trial 0"].kind == "front · uniform-l2" and rows["trial 0"].vs_uniform == 0.0
    assert [n for n, r in rows.items() if r.slower] == ["trial 3"]  # 2.5 ms > dense 2.0 ms
    assert rows["trial 3"].latency_iqr == 0.125 and rows["dense"].latency_iqr == 0.25
    assert rows["dense"].latency_ms == 2.0  # the final re-timing, not the first 2.1 ms


class _Page(HTMLParser):
    def __init__(self, raw: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(raw)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def classed(self, name: str) -> list[dict[str, str]]:
        return [a for _, a in self.tags if name in a.get("class", "").split()]


def test_page_opens_with_the_decision_table_and_labels_every_front_point(tmp_path: Path):
    run = fabricated_run(tmp_path / "run")
    raw = write_report(run.path).read_text(encoding="utf-8")
    assert raw.index('id="summary"') < raw.index("<svg") < raw.index('id="overview"')
    table = raw[raw.index('id="summary"'):raw.index("</table>", raw.index('id="summary"'))]
    cells = re.findall(r'<td class="delta[^"]*">([^<]*)</td>', table)
    assert cells == ["+0.00 pt", "+5.00 pt", "-7.00 pt", "-2.00 pt", "-5.00 pt", "+0.00 pt",
                     "-3.00 pt", "+2.00 pt", "-6.00 pt", "-1.00 pt"]
    assert "2.500 (0.125)" in table and table.count("slower than dense") == 1
    assert "autoprune export run --trial 3" in table
    page = _Page(raw)
    points = [a["data-trial"] for a in page.classed("front-point")]
    labels = [a["data-trial"] for a in page.classed("front-label")]
    assert points and sorted(points) == sorted(labels)  # one label per front point and plot
    assert len(page.classed("baseline-uniform")) == len(page.classed("baseline-global")) == 3
    assert 'aria-pressed="true"' in raw and 'class="sortable hide-screened"' in raw
    assert len(page.classed("pc-line")) == 5  # the fully fine-tuned trials, 0-4
    # kept/total from baseline.json's widths: conv1 has 8 channels, trial 3's ratio 0.45
    assert "4/8 kept" in raw  # round(8 * 0.55) = 4


def test_without_recorded_widths_the_bars_say_so(tmp_path: Path):
    run = fabricated_run(tmp_path / "run", widths=False)
    raw = write_report(run.path).read_text(encoding="utf-8")
    assert "does not record the dense channel count" in raw and " kept<" not in raw


def test_damaged_group_widths_are_refused(tmp_path: Path):
    run = fabricated_run(tmp_path / "run")
    data = json.loads(run.baseline_path.read_text())
    data["group_channels"]["conv1"]["channels"] = "8\"><script>"
    run.baseline_path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"baseline\.json is damaged.*channels"):
        write_report(run.path)


def test_frozen_groups_are_listed_with_their_reason_escaped(tmp_path: Path):
    run = fabricated_run(tmp_path / "run")
    data = json.loads(run.baseline_path.read_text())
    assert "Groups left at full width" not in write_report(run.path).read_text(encoding="utf-8")
    data["frozen"] = [{"name": "blocks.0.attn", "reason": "attention <heads> stay"}]
    run.baseline_path.write_text(json.dumps(data))
    raw = write_report(run.path).read_text(encoding="utf-8")
    assert "Groups left at full width (1)" in raw
    assert "<code>blocks.0.attn</code></td><td>attention &lt;heads&gt; stay</td>" in raw
    data["frozen"] = [{"name": 3, "reason": "x"}]
    run.baseline_path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"baseline\.json is damaged.*frozen\[0\]\.name"):
        write_report(run.path)


def test_terminal_summary_shows_baselines_and_the_next_step(tmp_path: Path):
    run = fabricated_run(tmp_path / "run")
    text = terminal_summary(str(run.path))
    lines = text.splitlines()
    assert lines[-1] == f"next: autoprune export {run.path} --trial 3"
    row = next(line for line in lines if "global-l2" in line)
    assert "89.00%" in row and "39.90%" in row and "-1.00 pt" in row and "not on the front" in row
    assert "+2.00 pt" in next(line for line in lines if line.split()[:1] == ["3"])


@pytest.mark.parametrize("val_size, trial, why", [
    (None, 3, "pass val_size to apply the one-standard-error rule"),
    # trial 3 leads uniform (trial 0) by 0.5 point of validation accuracy, 0.980 against 0.975
    (5000, 3, "no one-liner on the front within one standard error (0.20 point on 5000 "
              "examples)"),
    (500, 0, "uniform-l2 within one standard error (0.63 point on 500 examples) of the best "
             "validation accuracy, trial 3's 98.00%"),
])
def test_the_recommended_model_follows_the_one_standard_error_rule(tmp_path: Path, val_size,
                                                                   trial, why):
    dense = DENSE if val_size is None else {**DENSE, "val_size": val_size}
    run = fabricated_run(tmp_path / "run", name_dense=dense)
    lines = terminal_summary(str(run.path)).splitlines()
    assert lines[-1] == f"next: autoprune export {run.path} --trial {trial}"
    assert lines[-2].startswith(f"recommended: trial {trial}, ") and why in lines[-2]
    raw = write_report(run.path).read_text(encoding="utf-8")
    assert f"Recommended: trial {trial} (" in raw


def test_a_one_liner_best_on_validation_is_recommended_as_itself(tmp_path: Path):
    run = fabricated_run(tmp_path / "run", name_dense={**DENSE, "val_size": 5000})
    run.write_trials([r.updated(val_acc=0.99) if r.trial == 1 else r for r in RECORDS])
    lines = terminal_summary(str(run.path)).splitlines()
    assert lines[-2] == ("recommended: trial 1, the best validation accuracy, and the global-l2 "
                         "baseline itself")  # uniform (0.975) is 1.5 points, > 1 SE, behind


def test_a_one_liner_off_the_front_is_not_recommended_and_the_summary_says_why(tmp_path: Path):
    # both one-liners are within one SE (0.63 point on 500 examples) of trial 3, but trial 2
    # now scores as well as they do at 30 % FLOPs against their 39.8-39.9 %
    run = fabricated_run(tmp_path / "run", name_dense={**DENSE, "val_size": 500})
    run.write_trials([r.updated(val_acc=0.975) if r.trial == 2 else r for r in RECORDS])
    lines = terminal_summary(str(run.path)).splitlines()
    assert lines[-1] == f"next: autoprune export {run.path} --trial 3"
    assert lines[-2] == (
        "recommended: trial 3, the best validation accuracy; no one-liner on the front within "
        "one standard error (0.63 point on 500 examples); uniform-l2 (trial 0) is within it but "
        "off the front: trial 2 scores as well on validation at 30.00% FLOPs against 39.80%; "
        "global-l2 (trial 1) is within it but off the front: trial 2 scores as well on "
        "validation at 30.00% FLOPs against 39.90%")


def test_terminal_summary_counts_the_models_the_final_re_timing_dropped(tmp_path: Path):
    run = fabricated_run(tmp_path / "run")
    assert "measured over the budget" not in terminal_summary(str(run.path))
    over = {2: 0.9, 1: 0.7}  # final latency ms (dense 2.0), over a budget the search met
    run.write_trials([r.updated(state="INFEASIBLE", latency_ms=over[r.trial],
                                fail_reason="re-measured latency over the budget")
                      if r.trial in over else r for r in RECORDS])
    note = next(line for line in terminal_summary(str(run.path)).splitlines()
                if "measured over the budget" in line)
    # 4 models were re-timed (dense aside): trials 0-3; the two dropped at 0.35 and 0.45 of dense
    assert note.startswith("latency: 2 of 4 models re-timed at the end")
    assert "(0.350-0.450 of dense)" in note and "autoprune export RUN --trial N" in note
    assert HARD_LINE not in note


def test_the_dropped_note_says_a_hard_latency_line_dropped_what_the_drift_would_keep(
        tmp_path: Path):
    """A run made with --no-latency-drift: the ledger's fail_reason names it, and the note
    says the models within the re-timed models' common move were dropped too."""
    run = fabricated_run(tmp_path / "run")
    reason = f"re-measured latency 0.9 ms over the budget 0.85 ms (the re-timed models moved " \
        f"x1.100; {HARD_LINE})"
    run.write_trials([r.updated(state="INFEASIBLE", latency_ms=0.9, fail_reason=reason)
                      if r.trial == 2 else r for r in RECORDS])
    run.write_scores("latency", {"dense": 2.0, **{str(r.trial): 1.0 for r in RECORDS},
                                 "latency_drift": 1.1})
    note = next(line for line in terminal_summary(str(run.path)).splitlines()
                if "measured over the budget" in line)
    assert f"made with {HARD_LINE}" in note and "(x1.100) were dropped too" in note


def test_comparison_draws_every_runs_front_on_one_chart(tmp_path: Path):
    a = fabricated_run(tmp_path / "a")
    b = fabricated_run(tmp_path / "b", name_dense={**DENSE, "val_acc": 0.99})
    out = write_comparison([a.path, b.path], tmp_path / "compare.html")
    page = _Page(raw := out.read_text(encoding="utf-8"))
    assert {x["data-run"] for x in page.classed("run-point")} == {"0", "1"}
    assert len(page.classed("run-point")) == 2 * 3 and len(page.classed("run-line")) == 2
    assert ">A3<" in raw and ">B3<" in raw and "dense models score differently" in raw
    assert "autoprune export b --trial 3" in raw and "http" not in raw
    with pytest.raises(ConfigError, match="run_dirs="):
        write_comparison([a.path], tmp_path / "one.html")


# -- headless Chromium at 900 px ---------------------------------------------------------------

MEASURE = """<script>
(function () {
  var out = {}, d = document.documentElement;
  out.scroll = [d.scrollWidth, window.innerWidth];
  out.charts = Array.prototype.map.call(document.querySelectorAll("svg"), function (svg) {
    return Array.prototype.map.call(svg.querySelectorAll("text.ytick"),
                                    function (t) { return t.textContent; });
  });
  out.front = Array.prototype.map.call(document.querySelectorAll("svg"), function (svg) {
    var pts = Array.prototype.map.call(svg.querySelectorAll(".front-point"),
                                       function (p) { return p.getAttribute("data-trial"); });
    var labels = Array.prototype.map.call(svg.querySelectorAll(".front-label"),
                                          function (p) { return p.getAttribute("data-trial"); });
    return [pts.sort(), labels.sort()];
  });
  out.heads = Array.prototype.map.call(document.querySelectorAll("#summary th"),
                                       function (t) { return t.textContent; });
  function shown() {
    return Array.prototype.filter.call(document.querySelectorAll("#trials tr.state-screened"),
                                       function (r) { return r.offsetParent !== null; }).length;
  }
  out.screened = [shown()];
  document.getElementById("hide-toggle").click();
  out.screened.push(shown());
  var pre = document.createElement("pre");
  pre.id = "measure";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script></body>"""








def test_report_at_900px_in_headless_chromium(tmp_path: Path):
    binary = _chromium()
    run = fabricated_run(tmp_path / "run")
    raw = write_report(run.path).read_text(encoding="utf-8")
    probe = run.path / "probe.html"
    probe.write_text(raw.replace('data-for="trials"', 'id="hide-toggle" data-for="trials"', 1)
                     .replace("</body>", MEASURE, 1), encoding="utf-8")
    dom = _browse(binary, tmp_path / "profile", "--window-size=900,1000", "--enable-logging=stderr",
                  "--v=0", "--dump-dom", probe.resolve().as_uri())
    assert dom.returncode == 0 and not _console_errors(dom.stderr), dom.stderr[-2000:]
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stdout[-2000:]
    m = json.loads(found[1].replace("&quot;", '"').replace("&amp;", "&"))
    width, inner = m["scroll"]
    assert inner <= 900 and width <= inner, m["scroll"]  # no horizontal page scroll
    ticked = [labels for labels in m["charts"] if labels]
    assert len(ticked) >= 6  # 3 scatter plots, 2 progress charts, parallel coordinates
    for labels in ticked:
        assert len(set(labels)) == len(labels), labels
    fronts = [pair for pair in m["front"] if pair[0]]
    assert len(fronts) == 3 and all(pts == labels for pts, labels in fronts), fronts
    assert "Δ vs dense" in m["heads"] and "Δ vs uniform" in m["heads"]
    assert m["screened"] == [0, 2]  # hidden at first; the toggle shows them
    assert not math.isnan(width)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.mark.parametrize("flag", [DRIFT_FLAG, LEGACY_DRIFT_FLAG])  # a run from before too
def test_terminal_summary_says_which_models_were_kept_over_the_budget_by_a_common_drift(
        tmp_path: Path, flag: str):
    run = fabricated_run(tmp_path / "run")
    assert "load moved" not in terminal_summary(str(run.path))
    flag = f"{flag} (x1.100)"
    run.write_trials([r.updated(latency_flag=flag) if r.trial in (1, 2) else r for r in RECORDS])
    figures = {"dense": 2.0, **{str(r.trial): 1.0 for r in RECORDS}, "latency_drift": 1.1}
    run.write_scores("latency", figures)
    note = next(line for line in terminal_summary(str(run.path)).splitlines()
                if "load moved" in line)
    word = "median" if flag.startswith(DRIFT_FLAG) else "at least"  # what the run's rule was
    assert note.startswith(f"latency: the models re-timed at the end ran x1.100 ({word})")
    assert "2 over the budget by no more than that were kept" in note

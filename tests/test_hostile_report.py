"""Hostile run folders (issue 15): payloads in every field of every file the report reads, and
damaged files, each refused with one line that names the file and its fix."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from test_report import _chromium

from autoprune import _svg
from autoprune.cli import main
from autoprune.errors import ConfigError
from autoprune.report import terminal_summary, write_report
from autoprune.results import RunDir

JS = "document.title='PWNED';document.documentElement.setAttribute('data-pwned','1')"
PAYLOADS = (
    f'<img src=x onerror="{JS}">',
    f'"><script>{JS}</script>',
    f"'><svg onload=\"{JS}\"></svg>",
    f"</script><script>{JS}</script><!--",
    f"javascript:{JS}",
    f'" tabindex="1" autofocus onfocus="{JS}" onmouseover="{JS}" x="',  # fires unaided
    f"' tabindex='1' autofocus onfocus='{JS.replace(chr(39), chr(34))}' x='",
    f'<iframe srcdoc="<script>parent.{JS}</script>"></iframe>',
    f"\u2028<!--<script>{JS}</script>-->",
    f'<a href="javascript:{JS}">x</a><style>*{{}}</style>',
)
NAME = f"\"><svg onload=\"{JS.replace('/', '')}\">"  # a run folder name (no slash)
ONE_SCRIPT_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "div",
                   "p", "span", "b", "code", "table", "thead", "tbody", "tr", "th", "td", "ul",
                   "li", "figure", "figcaption", "svg", "g", "path", "circle", "rect", "line",
                   "text", "script"}

URL_ATTRIBUTES = {"href", "xlink:href", "src", "srcdoc", "action", "formaction", "style"}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) search through the CLI; tests tamper with copies of it."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", "--trials", "4", "--finetune-steps",
         "10", "--bn-batches", "4", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (out / "report.html").unlink()
    metrics = {"file": "trial_0.onnx", "format": "onnx", "trial": 0, "test_acc": 0.9,
               "flops_ratio": 0.4, "file_bytes": 1234, "latency_ms": 0.5, "parent": None,
               "weights": {"sparsity": 0.1}}
    (out / "models" / "trial_0.onnx.metrics.json").write_text(json.dumps(metrics))
    return out


def copy_run(real_run: Path, where: Path, name: str = "run") -> RunDir:
    shutil.copytree(real_run, where / name)
    return RunDir.open(where / name)


# -- planting payloads -------------------------------------------------------------------------

class Poison:
    """Every text value (and every group / parameter name) replaced by the next payload."""

    NAME_MAPS = frozenset({"ratios", "searched"})  # mappings keyed by group / parameter names
    KEEP = frozenset({"state"})  # an enum: a payload there is refused (see the next section)

    def __init__(self) -> None:
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return PAYLOADS[self.count % len(PAYLOADS)]

    def __call__(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            return {(self.next() if key in self.NAME_MAPS else k): self(v, k)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, key) for v in value]
        return self.next() if isinstance(value, str) and key not in self.KEEP else value


def poison_json(path: Path, poison: Poison, extra: dict[str, Any] | None = None) -> None:
    data = poison(json.loads(path.read_text(encoding="utf-8")))
    path.write_text(json.dumps({**data, **(extra or {})} if extra else data), encoding="utf-8")


def poison_trials(run: RunDir, poison: Poison) -> None:
    """Text cells, the searched / stage column names, and a failed and an infeasible trial."""
    frame = pd.read_csv(run.trials_path, dtype=str, keep_default_na=False)
    n = int(frame["trial"].astype(int).max()) + 1
    extra = pd.DataFrame([{"trial": str(n), "state": "FAIL"},
                          {"trial": str(n + 1), "state": "INFEASIBLE", "flops_ratio": "0.3"}])
    frame = pd.concat([frame, extra], ignore_index=True).fillna("")
    for column in ("fail_reason", "baseline"):
        frame[column] = [poison.next() for _ in range(len(frame))]
    frame = frame.rename(columns={c: c[:2] + poison.next() for c in frame.columns
                                  if c.startswith(("p:", "s:"))})
    run.trials_path.write_text(frame.to_csv(index=False), encoding="utf-8")


def poison_run(run: RunDir) -> Poison:
    """Payloads into every text field of every file the report reads."""
    poison = Poison()
    config = poison(yaml.safe_load(run.config_path.read_text(encoding="utf-8")))
    config["space"]["ignore"] = [poison.next(), poison.next()]
    run.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    poison_json(run.baseline_path, poison)
    poison_json(run.budget_path, poison)
    poison_json(run.front_json_path, poison)
    for path in run.plans_dir.glob("*.json"):
        poison_json(path, poison)
    for path in (run.test_scores_path, run.remeasured_path):
        poison_json(path, poison, {poison.next(): 1.0})
    for path in run.models_dir.glob("*.metrics.json"):
        poison_json(path, poison, {"parent": poison.next()})
    poison_trials(run, poison)
    return poison


class Page(HTMLParser):
    """Start tags, attributes, script bodies and the head's title of a page."""

    def __init__(self, raw: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.scripts: list[str] = []
        self._in: list[str] = []
        self.feed(raw)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        if self._in and self._in[-1] == "script":
            self.scripts.append(data)


def test_payloads_in_every_run_file_field_stay_text(real_run: Path, tmp_path: Path):
    run = copy_run(real_run, tmp_path, NAME)
    poison = poison_run(run)
    assert poison.count > 150  # every file got its share
    raw = write_report(run.path).read_text(encoding="utf-8")
    for payload in PAYLOADS:
        assert payload not in raw, payload
        assert _svg.esc(payload) in raw, payload  # shown, as text
    assert NAME not in raw and f"<title>autoprune report: {_svg.esc(NAME)}</title>" in raw
    page = Page(raw)
    assert {tag for tag, _ in page.tags} <= ONE_SCRIPT_TAGS
    assert [tag for tag, _ in page.tags].count("script") == 1
    assert page.scripts == [_svg.SCRIPT]  # the one script is ours, and it holds no data
    for tag, attrs in page.tags:  # no handler, and no attribute that loads or runs a URL
        for key, _ in attrs:
            assert not key.startswith("on") and key not in URL_ATTRIBUTES, (tag, key)
    assert "\u2028" not in raw.split("<script>")[1]  # nothing planted reaches the script


# -- headless browser --------------------------------------------------------------------------



def _dom(binary: str, profile: Path, page: Path) -> str:
    """The page's DOM after its scripts (and any planted handler) had 3 s of virtual time."""
    proc = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom",
         page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _executed(dom: str) -> bool:
    title = re.search(r"<title>(.*?)</title>", dom, re.S)
    return 'data-pwned="1"' in dom or title is None or title[1].strip() == "PWNED"


def test_no_payload_executes_in_headless_chromium(real_run: Path, tmp_path: Path):
    binary = _chromium()
    run = copy_run(real_run, tmp_path, NAME)
    poison_run(run)
    report = write_report(run.path)
    dom = _dom(binary, tmp_path / "profile1", report)
    assert 'data-ready="1"' in dom  # the page's own script ran to its end
    assert not _executed(dom)
    assert dom.count('class="trial-point') >= 2  # the page is all there
    # the check can fail: one payload left unescaped runs, and is caught
    raw = report.read_text(encoding="utf-8")
    unsafe = tmp_path / "unsafe.html"
    unsafe.write_text(raw.replace(_svg.esc(PAYLOADS[1]), PAYLOADS[1], 1), encoding="utf-8")
    assert _executed(_dom(binary, tmp_path / "profile2", unsafe))


# -- payloads where a number or a state belongs: refused, naming the file ----------------------

def _json_edit(name: str, edit: Callable[[Any], None]) -> Callable[[RunDir], Path]:
    def apply(run: RunDir) -> Path:
        path = run.path / name
        data = json.loads(path.read_text(encoding="utf-8"))
        edit(data)
        path.write_text(json.dumps(data), encoding="utf-8")
        return path
    return apply


def _yaml_edit(edit: Callable[[Any], None]) -> Callable[[RunDir], Path]:
    def apply(run: RunDir) -> Path:
        data = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
        edit(data)
        run.config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return run.config_path
    return apply


def _csv_edit(column: str) -> Callable[[RunDir], Path]:
    def apply(run: RunDir) -> Path:
        frame = pd.read_csv(run.trials_path, dtype=str, keep_default_na=False)
        column_name = column if column in frame else next(c for c in frame if c.startswith("p:"))
        frame.loc[0, column_name] = PAYLOADS[1]
        run.trials_path.write_text(frame.to_csv(index=False), encoding="utf-8")
        return run.trials_path
    return apply


def _first_plan(data: dict[str, Any]) -> None:
    data["ratios"][next(iter(data["ratios"]))] = PAYLOADS[0]


P = PAYLOADS[1]
REFUSED = {
    "front trial": _json_edit("front.json", lambda d: d[0].update(trial=P)),
    "front state": _json_edit("front.json", lambda d: d[0].update(state=P)),
    "front val_acc": _json_edit("front.json", lambda d: d[0].update(val_acc=P)),
    "front searched": _json_edit("front.json", lambda d: d[0]["searched"].update(x=P)),
    "front plan ratio": _json_edit("front.json", lambda d: _first_plan(d[0]["plan"])),
    "trials trial": _csv_edit("trial"),
    "trials state": _csv_edit("state"),
    "trials val_acc": _csv_edit("val_acc"),
    "trials searched": _csv_edit("p:"),
    "plan ratio": _json_edit("plans/0.json", _first_plan),
    "plan round_to": _json_edit("plans/0.json", lambda d: d.update(round_to=P)),
    "baseline dense": _json_edit("baseline.json", lambda d: d["dense"].update(val_acc=P)),
    "baseline budget": _json_edit("baseline.json", lambda d: d["budget"].update(flops=P)),
    "baseline groups": _json_edit("baseline.json", lambda d: d.update(groups=P)),
    "baseline env": _json_edit("baseline.json", lambda d: d["environment"].update(x=[P])),
    "budget dense": _json_edit("budget.json", lambda d: d.update(dense_macs=P)),
    "budget budget": _json_edit("budget.json", lambda d: d["budget"].update(flops=P)),
    "config budget": _yaml_edit(lambda d: d["budget"].update(flops=P)),
    "config budget key": _yaml_edit(lambda d: d["budget"].update({P: 0.5})),
    "config seed": _yaml_edit(lambda d: d["task"].update(seed=P)),
    "config trials": _yaml_edit(lambda d: d.update(trials=P)),
    "config task": _yaml_edit(lambda d: d.update(task=P)),
    "metrics acc": _json_edit("models/trial_0.onnx.metrics.json",
                              lambda d: d.update(test_acc=P)),
    "metrics trial": _json_edit("models/trial_0.onnx.metrics.json",
                                lambda d: d.update(trial=P)),
}


def assert_one_line_naming(message: str, path: Path) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert f"{path} is damaged (" in message or f"{path} is missing;" in message, message
    assert "); " in message or "missing; " in message, message  # ... and the fix


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_payload_where_a_number_belongs_is_refused(real_run: Path, tmp_path: Path, case: str):
    run = copy_run(real_run, tmp_path)
    path = REFUSED[case](run)
    with pytest.raises(ConfigError) as info:
        write_report(run.path)
    assert_one_line_naming(str(info.value), path)
    assert not run.report_path.exists()


# -- damaged files through the CLI: exit 2, one stderr line naming the file and the fix --------

GARBAGE = b"\x89PNG\r\n\x1a\n\x00\xff\xfe}{ not, a: [run file\n\"\x00"
TEXT_GARBAGE = b"}{ not json ]: [\n, - \"half"
WRONG = {  # per file: valid syntax, wrong shape or a text where a number belongs
    "config.yaml": [b"- a list\n- not a mapping\n", b"task: {spec: digits\nbudget: [",
                    b"budget: 5\n", b"task: digits\n"],
    "baseline.json": [b"[1, 2]", b'{"dense": {"val_acc": "high"}}', b'"a string"'],
    "trials.csv": [b"trial,state,val_acc\nabc,COMPLETE,0.5\n", b"trial,state,val_acc\n"
                   b"1,COMPLETE,high\n", b"state,val_acc\nCOMPLETE,0.5\n", b"trial,state\n,\n"],
    "front.json": [b'{"trial": 1}', b'[{"trial": "7", "state": "COMPLETE"}]', b"[[1]]",
                   b'[{"trial": 1.5, "state": "COMPLETE"}]'],
    "plans/0.json": [b"[]", b'{"ratios": {"conv1": "half"}}', b'{"ratios": [0.5]}'],
    "budget.json": [b"[]", b'{"dense_macs": "many", "dense_params": 1}', b"{}",
                    b'{"dense_macs": 1, "dense_params": 1, "budget": {"flops": -1}}'],
    "models/trial_0.onnx.metrics.json": [b"[]", b'{"test_acc": "good"}',
                                         b'{"weights": {"sparsity": "x"}}'],
}
DAMAGE = [(name, kind, data) for name, wrong in WRONG.items()
          for kind, data in [("garbage", GARBAGE), ("text-garbage", TEXT_GARBAGE),
                             ("empty", b""), *((f"wrong-{i}", w) for i, w in enumerate(wrong))]
          if not (name.endswith(".yaml") and kind == "text-garbage")]  # valid YAML: a string


def run_report(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["report", str(run)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("name", "kind", "data"), DAMAGE,
                         ids=[f"{n}-{k}" for n, k, _ in DAMAGE])
def test_a_damaged_run_file_names_itself(real_run: Path, tmp_path: Path, name: str, kind: str,
                                         data: bytes, capsys: pytest.CaptureFixture[str]):
    run = copy_run(real_run, tmp_path)
    (run.path / name).write_bytes(data)
    code, err = run_report(run.path, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("autoprune: error: "), err
    assert_one_line_naming(err, run.path / name)
    assert not run.report_path.exists()


def test_a_missing_config_names_the_folder_and_other_missing_files_are_fine(
        real_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = copy_run(real_run, tmp_path)
    for path in (run.baseline_path, run.budget_path, run.front_json_path, run.trials_path,
                 *run.plans_dir.glob("*.json"), run.test_scores_path, run.remeasured_path):
        path.unlink()
    code, err = run_report(run.path, capsys)
    assert code == 0 and not err and run.report_path.is_file(), err
    run.config_path.unlink()
    code, err = run_report(run.path, capsys)
    assert code == 2 and err.count("\n") == 1 and "no config.yaml" in err, err


def test_the_cli_process_prints_one_line_for_a_damaged_file(real_run: Path, tmp_path: Path):
    run = copy_run(real_run, tmp_path)
    run.front_json_path.write_bytes(GARBAGE)
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", "report", str(run.path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert_one_line_naming(proc.stderr, run.front_json_path)


@pytest.mark.parametrize("which", ["test", "latency"])
@pytest.mark.parametrize("data", [GARBAGE, b"", b"[]", b'{"0": "good"}', b'{"dense": [1]}'])
def test_damaged_scores_name_themselves(real_run: Path, tmp_path: Path, which: str,
                                        data: bytes):
    """Read on resume (the ledger), not by the report."""
    run = copy_run(real_run, tmp_path)
    path = run.test_scores_path if which == "test" else run.remeasured_path
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        run.read_scores(which)
    assert_one_line_naming(str(info.value), path)
    assert "--resume" in str(info.value)


def test_export_and_resume_reads_name_missing_and_damaged_files(real_run: Path, tmp_path: Path):
    run = copy_run(real_run, tmp_path)
    run.plan_path(0).unlink()
    with pytest.raises(ConfigError, match=r"plans/0\.json is missing; restore it"):
        run.read_plan(0)
    run.baseline_path.unlink()
    with pytest.raises(ConfigError, match=r"baseline\.json is missing; "):
        run.read_baseline()
    run.config_path.write_text("task: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        run.read_config()
    assert_one_line_naming(str(info.value), run.config_path)
    assert "not valid YAML" in str(info.value)


def test_the_report_escapes_in_one_place():
    """One escape function; no other module of the report escapes by itself."""
    root = Path(__file__).resolve().parent.parent / "autoprune"
    sources = {name: (root / name).read_text(encoding="utf-8")
               for name in ("report.py", "report_data.py", "report_plots.py", "_svg.py")}
    assert sum(s.count("html.escape(") for s in sources.values()) == 1
    assert "def esc(" in sources["_svg.py"] and "html.escape(str(value), quote=True)" in \
        sources["_svg.py"]
    assert _svg.esc("\"'<>&") == "&quot;&#x27;&lt;&gt;&amp;"


def test_the_terminal_summary_prints_no_control_characters(real_run: Path, tmp_path: Path):
    run = copy_run(real_run, tmp_path)
    front = json.loads(run.front_json_path.read_text(encoding="utf-8"))
    front[0]["baseline"] = "\x1b]0;PWNED\x07\x1b[2J\r"
    run.front_json_path.write_text(json.dumps(front), encoding="utf-8")
    text = terminal_summary(str(run.path))
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "\\x1b]0;PWNED\\x07" in text  # shown, not acted on


def test_carriage_returns_in_text_cells_read_back(tmp_path: Path):
    """A bare ``\\r`` in a failure reason once ended a CSV row on read-back."""
    from autoprune.trial import TrialRecord

    run = RunDir.create(tmp_path / "run")
    records = [TrialRecord(trial=0, state="FAIL", fail_reason="a\rb\r\nc"),
               TrialRecord(trial=1, state="COMPLETE", baseline="x\ry", val_acc=0.5)]
    run.write_trials(records)
    assert run.read_trials() == records

"""autoprune.cpu_load: the busy-CPU warning (pure) and the /proc/stat reading behind it."""

from __future__ import annotations

import pytest

from autoprune import cpu_load
from autoprune.cpu_load import busy_warning, idle_cores


@pytest.mark.parametrize(("threads", "idle", "warned"), [
    (2, 2.0, False), (2, 1.6, False), (2, 1.4, True), (2, 0.1, True), (1, 0.6, False),
    (1, 0.4, True), (4, None, False)])
def test_a_warning_only_when_fewer_cores_are_idle_than_threads_run(threads, idle, warned):
    assert (busy_warning(threads, idle, 2) is not None) is warned


def test_the_warning_names_the_load_and_the_thread_count_that_fits():
    text = busy_warning(2, 0.3, 2)
    assert text is not None
    assert "about 0.3 of 2 cores are idle" in text and "torch will run 2 threads" in text
    assert "--threads 1" in text and "OMP_NUM_THREADS=1" in text  # never 0
    assert "--threads 3" in busy_warning(8, 2.6, 8)  # rounded to the nearest core
    one = busy_warning(1, 0.2, 2)
    assert "torch will run 1 thread;" in one and "--threads" not in one  # nothing fewer


def test_search_takes_threads_and_warns_when_the_cpu_is_busy(monkeypatch, caplog):
    import torch

    from autoprune import cli
    from autoprune._cli_args import build_parser

    assert build_parser().parse_args(["search", "--threads", "3"]).threads == 3
    assert "threads" in cli.RESUME_FLAGS  # a machine's setting, not the run's recipe
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(cpu_load, "idle_cores", lambda sample_s=0.3: 0.2)
        with caplog.at_level("WARNING", logger="autoprune"):
            cli._warn_if_busy()
        assert "the CPU is busy: about 0.2" in caplog.text
        caplog.clear()
        monkeypatch.setattr(cpu_load, "idle_cores", lambda sample_s=0.3: 1.0)
        cli._warn_if_busy()  # a free core for its one thread
        assert caplog.text == ""
    finally:
        torch.set_num_threads(before)


def test_idle_cores_compares_two_snapshots_of_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n")
    monkeypatch.setattr(cpu_load, "_STAT", stat)
    assert cpu_load._cpu_times() == (800.0, 1000.0)  # idle + iowait, of all (guest inside)
    snapshots = iter([(800.0, 1000.0), (1000.0, 1400.0)])  # +200 idle of +400
    monkeypatch.setattr(cpu_load, "_cpu_times", lambda: next(snapshots))
    monkeypatch.setattr(cpu_load.os, "cpu_count", lambda: 4)
    assert idle_cores(sample_s=0.0) == pytest.approx(2.0)  # half of 4 cores idle


def test_idle_cores_says_nothing_without_proc_stat(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_load, "_STAT", tmp_path / "missing")
    assert idle_cores(sample_s=0.0) is None

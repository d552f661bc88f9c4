from __future__ import annotations

import signal

import pytest
import torch

from autoprune.interrupts import raise_if_pressed, watching
from autoprune.pipeline import CandidateFailed, _guarded


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handling (pytest-xdist workers ignore SIGINT)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


class _CtrlCWhileParsed:
    """A stride torch reads in C++: Ctrl-C lands while its argument parser runs."""

    def __index__(self) -> int:
        signal.raise_signal(signal.SIGINT)
        return 1


def _conv_with_ctrl_c() -> None:
    torch.nn.functional.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), None,
                               (_CtrlCWhileParsed(), 1))


def test_torch_turns_a_ctrl_c_inside_its_argument_parser_into_a_type_error(python_sigint):
    # the library behaviour this module exists for: if torch ever keeps the interrupt, the
    # module can go
    with pytest.raises(TypeError, match="invalid combination of arguments"):
        _conv_with_ctrl_c()


def test_a_swallowed_ctrl_c_stops_the_candidate_as_an_interrupt(python_sigint):
    with watching(), pytest.raises(KeyboardInterrupt) as caught:
        _guarded(_conv_with_ctrl_c)
    assert isinstance(caught.value.__cause__, TypeError)  # what became of it, kept for -v


def test_without_a_ctrl_c_a_failing_candidate_is_a_failed_candidate(python_sigint):
    def bad() -> None:
        raise TypeError("conv2d() received an invalid combination of arguments")

    with watching(), pytest.raises(CandidateFailed, match="TypeError"):
        _guarded(bad)


def test_a_press_of_an_earlier_search_does_not_stop_the_next(python_sigint):
    with pytest.raises(KeyboardInterrupt), watching():
        signal.raise_signal(signal.SIGINT)
    with watching():
        raise_if_pressed(ValueError("a candidate's own fault"))  # no interrupt: nothing raised


def test_a_press_inside_a_search_does_not_stop_code_after_it(python_sigint):
    # a candidate evaluated after the search (outside any watching block) fails as itself
    with pytest.raises(KeyboardInterrupt), watching():
        signal.raise_signal(signal.SIGINT)
    with pytest.raises(CandidateFailed, match="ValueError"):
        _guarded(lambda: int("x"))


def test_the_default_handler_is_back_after_the_search(python_sigint):
    with watching():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_host_applications_handler_is_left_alone(python_sigint):
    calls: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    with watching():
        signal.raise_signal(signal.SIGINT)
        raise_if_pressed(ValueError("no press was noted"))  # the host handled it
    assert calls == [signal.SIGINT]


def test_a_swallowed_ctrl_c_in_the_dynamo_exporter_is_no_reason_to_fall_back(python_sigint,
                                                                            monkeypatch):
    # timing a candidate in ONNX Runtime exports it; the legacy fallback would carry on
    pytest.importorskip("onnxscript")
    from autoprune.deploy import onnx_file

    monkeypatch.setattr(onnx_file, "_dynamo", lambda *args: _conv_with_ctrl_c())
    legacy_called: list[bool] = []
    monkeypatch.setattr(onnx_file, "_legacy", lambda *args: legacy_called.append(True))
    model = torch.nn.Conv2d(1, 2, 3)
    with watching(), pytest.raises(KeyboardInterrupt):
        onnx_file.onnx_bytes(model, [torch.randn(1, 1, 4, 4)], {})
    assert legacy_called == []


def test_a_swallowed_ctrl_c_while_counting_matmuls_stops_the_analysis(python_sigint,
                                                                     monkeypatch):
    from autoprune.engine import analysis

    monkeypatch.setattr(analysis, "count_matmul_macs", lambda *args: _conv_with_ctrl_c())
    with watching(), pytest.raises(KeyboardInterrupt):
        analysis._counted_matmuls(torch.nn.Linear(2, 2), torch.randn(1, 2))
    # the same failure without a press is "nothing to add"
    monkeypatch.setattr(analysis, "count_matmul_macs", lambda *args: 1 / 0)
    with watching():
        assert analysis._counted_matmuls(torch.nn.Linear(2, 2), torch.randn(1, 2)) is None

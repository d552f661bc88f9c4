"""Ctrl-C that a library swallowed.

A SIGINT raises :class:`KeyboardInterrupt` in whatever Python frame runs when it lands. When
that frame was called back from C++, the exception may not survive: a search pressed with
Ctrl-C while torch-pruning traced a candidate recorded the baseline as failed with
``TypeError: conv2d() received an invalid combination of arguments`` (torch's argument parser
replaced the interrupt) and ran on to the end, exit code 0: 2 of 29 runs of
``tests/test_search.py::test_ctrl_c_stops_cleanly_and_resume_finishes`` on a loaded 2-core
machine, and one CI run.

:func:`watching` notes every SIGINT while a command or ``ap.search`` runs (and still raises
as Python's own handler does); where an exception would be recorded as a candidate's failure
or a frozen group, or taken as the cue for a fallback (the legacy ONNX exporter that times a
candidate in ONNX Runtime, a model without counted matmuls), and the run would go on,
:func:`raise_if_pressed` turns it back into the interrupt the user asked for.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["raise_if_pressed", "watching"]

_pressed = threading.Event()


def _note_and_raise(signum: int, frame: FrameType | None) -> None:
    _pressed.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """Note Ctrl-C while the block runs. Only Python's default handler is replaced (in the main
    thread): a handler the host application installed, or an ignored SIGINT, stays as it is.
    The note lives only as long as the block: a press noted here is no reason to stop code
    that runs after it (a candidate evaluated later, outside any search, whose own error would
    otherwise become a :class:`KeyboardInterrupt`)."""
    _pressed.clear()
    ours = threading.current_thread() is threading.main_thread() \
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, _note_and_raise)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _pressed.clear()


def raise_if_pressed(cause: BaseException) -> None:
    """Raise :class:`KeyboardInterrupt` (from ``cause``) if Ctrl-C was pressed inside
    :func:`watching`: ``cause`` is then what became of the interrupt, not the candidate's
    fault."""
    if _pressed.is_set():
        raise KeyboardInterrupt from cause

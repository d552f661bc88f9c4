"""Healing a damaged Optuna journal (``<run>/study.journal``) before it is opened.

A full disk or a process killed mid-write leaves a line without its newline; another process
appending after it glues its own record to that fragment; a stray write leaves a line that is
not JSON. Optuna refuses to read past any of these, so every later resume and worker crashes.
:func:`heal` (under Optuna's own journal lock, so no process appends meanwhile) drops the
damaged bytes, keeps a copy of them beside the journal (``study.journal.damaged-<time>``) and
logs one line saying what was dropped:

- a partial last line is dropped;
- a line with a complete record glued after a fragment keeps the record, drops the fragment;
- any other bad line is dropped, and the records after it are kept only if they stay
  consistent (each refers only to studies and trials created before it: a lost
  ``create_trial`` would shift every later trial id); otherwise the journal is cut at the first
  bad line and everything after it goes into the copy.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Healed", "heal", "repair"]

log = logging.getLogger(__name__)

_RECORD = b'{"op_code":'


@dataclass(frozen=True)
class Healed:
    """The journal's kept bytes, the dropped bytes and how many lines they held."""

    kept: bytes
    dropped: bytes = b""
    lines: int = 0

    @property
    def damaged(self) -> bool:
        return bool(self.dropped)


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return value if isinstance(value, dict) and isinstance(value.get("op_code"), int) else None


def _consistent(records: list[dict[str, Any]]) -> bool:
    """Every record refers only to studies and trials created before it (replay order)."""
    from optuna.storages.journal._storage import JournalOperation as Op

    studies = trials = 0
    for r in records:
        study, trial = r.get("study_id"), r.get("trial_id")
        if isinstance(study, int) and study >= studies and r["op_code"] != Op.CREATE_STUDY:
            return False
        if isinstance(trial, int) and trial >= trials:
            return False
        studies += r["op_code"] == Op.CREATE_STUDY
        trials += r["op_code"] == Op.CREATE_TRIAL
    return True


def repair(data: bytes) -> Healed:
    """The journal ``data`` without its damage (pure; see the module docstring)."""
    kept: list[bytes] = []
    records: list[dict[str, Any]] = []
    dropped: list[bytes] = []
    first_bad: int | None = None  # how many good lines came before the first damage
    for line in data.splitlines(keepends=True):
        record = _record(line) if line.endswith(b"\n") else None
        if record is not None:
            kept.append(line)
            records.append(record)
            continue
        first_bad = len(kept) if first_bad is None else first_bad
        start = line.rfind(_RECORD)
        tail = _record(line[start:]) if start > 0 and line.endswith(b"\n") else None
        if tail is not None:  # a fragment with a whole record glued after it
            dropped.append(line[:start] + b"\n")
            kept.append(line[start:])
            records.append(tail)
        else:
            dropped.append(line if line.endswith(b"\n") else line + b"\n")
    if first_bad is None:
        return Healed(data)
    if not _consistent(records):  # cut at the first damage; everything after it is copied
        prefix = b"".join(kept[:first_bad])
        rest = data[len(prefix):]
        return Healed(prefix, rest, rest.count(b"\n") + (not rest.endswith(b"\n")))
    return Healed(b"".join(kept), b"".join(dropped), len(dropped))


def _scan_clean(path: Path) -> bool:
    """Whether the journal reads clean (no lock: a cheap look before taking it)."""
    data = path.read_bytes()
    return not data or (data.endswith(b"\n") and not repair(data).damaged)


def heal(path: Path) -> Healed | None:
    """Repair the journal at ``path`` in place under Optuna's journal lock; None when it was
    clean (or absent)."""
    if not path.is_file() or _scan_clean(path):
        return None
    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    # the lock JournalFileBackend takes by default, on the same (absolute) path
    with get_lock_file(JournalFileSymlinkLock(str(path.absolute()))):
        data = path.read_bytes()
        healed = repair(data)
        if not healed.damaged:
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        copy = path.with_name(f"{path.name}.damaged-{stamp}-{os.getpid()}")
        _write(copy, healed.dropped)
        if data.startswith(healed.kept):
            with open(path, "r+b") as handle:  # a cut: same file, nothing rewritten
                handle.truncate(len(healed.kept))
                handle.flush()
                os.fsync(handle.fileno())
        else:
            tmp = path.with_name(f"{path.name}.healing-{os.getpid()}")
            _write(tmp, healed.kept)
            os.replace(tmp, path)
    log.warning("%s was damaged: dropped %d bytes in %d line(s) (copied to %s); kept %d good "
                "lines", path, len(healed.dropped), healed.lines, copy.name,
                healed.kept.count(b"\n"))
    return healed


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())

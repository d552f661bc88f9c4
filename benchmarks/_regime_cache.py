"""What ``search_regime.py`` keeps between runs, and how a committed results file seeds it.

Every finished (arch, seed, cell, method) row, each (arch, seed)'s dense model scores (its
*header*) and each proxy study are one JSON file under ``--cache``, named by a hash of what
they depend on. The cache is not committed; ``--restore results.json`` writes the rows of a
committed results file back into it, so a fresh checkout re-renders the table with
``--kept-only`` (no dense model trained) and a re-run extends it with new rows only, after
checking that the dense model it trains here is the one the kept rows were pruned from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

REFINE = "autoprune-refine"
SENS = "sensitivity"  # per-group sensitivity analysis turned into a plan (no search)
SENS_COST = "sensitivity-cost"  # the same, weighted by each group's cost saved per drop
#: The settings a kept result depends on (beside its own arch, seed, cell and method).
KEY_FIELDS = ("train_size", "val_size", "test_size", "trials", "search_steps", "final_epochs",
              "sl_epochs", "dense_epochs", "latency_runtime", "distill", "device")
#: The search's settings: no part of the key of a dense model's scores or of a peer that does
#: not search, so a run with another ``--trials`` pairs new search rows with the kept peers.
SEARCH_FIELDS = ("trials", "search_steps", "distill")
#: BatchNorm re-estimation batches every kept row used before ``--bn-batches``: only another
#: value is part of a key.
BN_BATCHES = 20
GN_CAP = "groupnorm-sl-cap"  # the group-norm recipe capped at 0.7 per layer (when named)
UNSEARCHED = ("uniform-l2", "global-l2", "groupnorm-sl", GN_CAP, "uniform-lat",
              "uniform-lat-depth", SENS, SENS_COST)

__all__ = ["GN_CAP", "KEY_FIELDS", "REFINE", "SEARCH_FIELDS", "SENS", "SENS_COST", "UNSEARCHED",
           "DenseMismatch", "check_dense", "header_key", "keep", "kept", "kept_row", "proxy_key",
           "restore", "row_key", "space_digest"]


class DenseMismatch(RuntimeError):
    """The dense model trained here is not the one the kept rows were pruned from."""


def _key(cfg: dict[str, Any], *parts: Any, searched: bool = True) -> str:
    wanted = {k: cfg[k] for k in KEY_FIELDS if searched or k not in SEARCH_FIELDS}
    if cfg.get("bn_batches", BN_BATCHES) != BN_BATCHES:  # keys of rows kept before the flag
        wanted["bn_batches"] = cfg["bn_batches"]
    raw = json.dumps([wanted, *parts], sort_keys=True, default=str)
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def row_key(cfg: dict[str, Any], arch: str, seed: int, kind: str, budget: float,
            method: str) -> str:
    """One method's row in one cell (``autoprune-refine`` also depends on its settings; a
    search that starts from the sensitivity plan too on ``--search-sensitivity``, which rows
    kept before it existed read as off)."""
    extra: tuple[Any, ...] = (cfg["refine"], cfg["refine_epochs"]) if method == REFINE else ()
    sens = cfg.get("search_sensitivity", "off")
    if method not in UNSEARCHED and method != "random" and (
            sens == "on" or (sens == "latency" and kind == "latency")):
        extra += ("search-sensitivity",)
    return _key(cfg, arch, seed, kind, budget, method, *extra,
                searched=method not in UNSEARCHED)


def header_key(cfg: dict[str, Any], arch: str, seed: int) -> str:
    """An (arch, seed) unit's header: the data sizes and the dense model's scores."""
    return _key(cfg, "unit", arch, seed, searched=False)


def proxy_key(cfg: dict[str, Any], arch: str) -> str:
    return _key(cfg, "proxy", arch, cfg["proxy_budget"], cfg["proxy_candidates"])


def kept(cfg: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The kept result ``key``; None when there is none or ``--fresh`` ignores it."""
    path = Path(cfg["cache"]) / f"{key}.json"
    if cfg["fresh"] or not path.is_file():
        return None
    return json.loads(path.read_text())


def keep(cfg: dict[str, Any], key: str, value: dict[str, Any]) -> None:
    """Write ``value`` as the result ``key`` (atomically: a killed run leaves no half file)."""
    cache = Path(cfg["cache"])
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(value, fh, default=str)
    os.replace(tmp, cache / f"{key}.json")


def space_digest(space: Any) -> str:
    """A hash of a search space's contents (a frozen dataclass: its rules, caps, rounding), so a
    row searched in one space is never reused as if searched in an edited one."""
    raw = json.dumps(dataclasses.asdict(space), sort_keys=True, default=str)
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def kept_row(cfg: dict[str, Any], key: str, digest: str | None,
             chosen_by: str | None = None) -> dict[str, Any] | None:
    """The kept row ``key`` if it may be reused: a row whose method searched the space
    (``digest`` not None) must have been searched in a space with that digest, and picked the
    way ``chosen_by`` says (``one-se`` / ``best-val``; rows kept before they recorded it read
    as best-val); one from another space or picked otherwise, or kept before rows recorded the
    space, is stale (None: searched again). ``--kept-only`` renders every kept row as it is."""
    row = kept(cfg, key)
    if row is None or digest is None or cfg["kept_only"]:
        return row
    same_pick = chosen_by is None or row.get("chosen_by", "best-val") == chosen_by
    return row if row.get("space_digest") == digest and same_pick else None


def check_dense(header: dict[str, Any] | None, dense: dict[str, Any], arch: str) -> None:
    """Refuse to mix new rows with kept ones pruned from another dense model (CPU training is
    bit-for-bit repeatable only on the same machine, torch build and thread count: equal
    weights give equal scores)."""
    if header is None:
        return
    was, now = header["dense"], dense
    if (was["test_acc"], was["val_acc"]) != (now["test_acc"], now["val_acc"]):
        raise DenseMismatch(
            f"the dense {arch} trained here scores test {now['test_acc']:.4f} / val "
            f"{now['val_acc']:.4f}, the one the kept rows were pruned from {was['test_acc']:.4f}"
            f" / {was['val_acc']:.4f}: new rows would not pair with them; render the kept "
            "rows with --kept-only, or start over with --fresh (or another --cache)")


def restore(cfg: dict[str, Any], path: Path) -> int:
    """Write the headers, rows and proxy studies of the results file ``path`` into the cache
    (keyed by the settings of the run that made them; results already kept stay). Returns
    how many were written."""
    data = json.loads(Path(path).read_text())
    made = {**cfg, **{k: data["config"].get(k) for k in (*KEY_FIELDS, "refine",
                                                            "refine_epochs", "proxy_budget",
                                                            "proxy_candidates")},
            "search_sensitivity": data["config"].get("search_sensitivity", "off")}
    found: list[tuple[str, dict[str, Any]]] = []
    for res in data["results"]:
        if "proxy" in res:
            found.append((proxy_key(made, res["arch"]), res))
            continue
        found.append((header_key(made, res["arch"], res["seed"]),
                      {k: v for k, v in res.items() if k != "runs"}))
        found += [(row_key(made, r["arch"], r["seed"], r["kind"], r["budget"], r["method"]), r)
                  for r in res["runs"]]
    written = 0
    for key, value in found:
        if not (Path(cfg["cache"]) / f"{key}.json").is_file():
            keep(cfg, key, value)
            written += 1
    return written

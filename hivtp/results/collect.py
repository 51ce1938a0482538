"""Run folders (``<runs_root>/<hash>/{accuracy,latency}.json`` + ``DONE``) -> tidy CSVs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..run import write_atomic

IDENTITY = ["model", "method", "params", "budget"]
TAIL = ["profile", "weights", "commit", "date"]
ACCURACY_COLUMNS = IDENTITY + ["benchmark", "metric", "value", "n_samples", "tokens_kept_mean", "tokens_kept_std"] + TAIL
LATENCY_COLUMNS = IDENTITY + TAIL + [
    "stage", "batch", "dtype", "backend", "device", "median_ms", "p10_ms", "p90_ms", "repeats",
    "peak_mem_mb", "flops", "tokens_kept", "tokens_per_s",
]


def finished_runs(runs_root: Path) -> list[Path]:
    """Run folders marked DONE (an unfinished folder from a killed run is ignored)."""
    return sorted(p.parent for p in Path(runs_root).glob("*/DONE"))


def read_rows(runs_root: Path, kind: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for folder in finished_runs(runs_root):
        path = folder / f"{kind}.json"
        if path.exists():
            rows.extend(json.loads(path.read_text()))
    return rows


def tidy(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Harness columns first (missing ones empty), any extra backend columns after, stable order."""
    frame = pd.DataFrame(rows)
    for c in columns:
        if c not in frame.columns:
            frame[c] = None
    extra = sorted(c for c in frame.columns if c not in columns)
    frame = frame[columns + extra]
    if len(frame):
        frame = frame.sort_values([c for c in IDENTITY if c in frame.columns], key=lambda s: s.astype(str), kind="stable")
    return frame.reset_index(drop=True)


#: a latency measurement is one configuration on one device; a later run of it supersedes an earlier one
LATENCY_KEY = IDENTITY + ["profile", "device", "dtype", "batch", "backend", "stage"]


def latest_measurements(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep, per configuration (:data:`LATENCY_KEY`), the rows of its latest run (by ``date``; ISO
    strings sort in time). Without this, a re-run (e.g. after adding a method to an interleaved latency
    run) would leave two runs' numbers under one table row, their medians mixed; ratios are only like
    for like in one run. ``frame`` is a :func:`tidy` latency frame (every column present)."""
    if frame.empty:
        return frame
    when = frame["date"].astype(str)
    latest = when.groupby([frame[c].astype(str) for c in LATENCY_KEY], dropna=False).transform("max")
    return frame[when == latest].reset_index(drop=True)


def write_table_csv(frame: pd.DataFrame, path: Path) -> None:
    write_atomic(Path(path), frame.to_csv(index=False))


def collect(runs_root: Path, results_dir: Path) -> dict[str, pd.DataFrame]:
    """Write results/accuracy.csv and results/latency.csv from every finished run; return the frames."""
    out = {}
    for kind, columns in (("accuracy", ACCURACY_COLUMNS), ("latency", LATENCY_COLUMNS)):
        frame = tidy(read_rows(runs_root, kind), columns)
        if kind == "latency":
            frame = latest_measurements(frame)
        write_table_csv(frame, Path(results_dir) / f"{kind}.csv")
        out[kind] = frame
    return out

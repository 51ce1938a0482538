"""Hand-made tidy rows for the results tests (values chosen so every expected number is checkable by hand)."""

from __future__ import annotations

import json

import pandas as pd

from hivtp.results import ACCURACY_COLUMNS, LATENCY_COLUMNS


def _row(columns: list[str], **kw: object) -> dict:
    base = {c: None for c in columns}
    base.update(profile="offline", weights="trained", commit="abc", date="2026-01-01", model="toy-llava")
    base.update(kw)
    return base


def acc_row(method: str, params: dict, bench: str, value: float, metric: str = "accuracy", tokens: float = 576.0, **kw) -> dict:
    return _row(ACCURACY_COLUMNS, method=method, params=json.dumps(params, sort_keys=True), budget=params.get("budget"),
                benchmark=bench, metric=metric, value=value, n_samples=10, tokens_kept_mean=tokens, tokens_kept_std=0.0, **kw)


def lat_row(method: str, params: dict, stage: str, median_ms: float, tokens: int, tps: float | None = None, **kw) -> dict:
    return _row(LATENCY_COLUMNS, method=method, params=json.dumps(params, sort_keys=True), budget=params.get("budget"),
                stage=stage, batch=1, dtype="float32", backend="sdpa", device="cpu", median_ms=median_ms,
                p10_ms=median_ms * 0.9, p90_ms=median_ms * 1.1, repeats=5, peak_mem_mb=1.0, flops=1e9,
                tokens_kept=tokens, tokens_per_s=tps, weights="random", **kw)


def accuracy_frame() -> pd.DataFrame:
    rows = [
        acc_row("none", {}, "pope", 0.80, metric="f1"), acc_row("none", {}, "pope", 0.70, metric="accuracy"),
        acc_row("none", {}, "gqa", 0.50),
        acc_row("hivtp", {"budget": 64}, "pope", 0.72, metric="f1", tokens=64), acc_row("hivtp", {"budget": 64}, "gqa", 0.40, tokens=64),
        acc_row("hivtp", {"budget": 128}, "pope", 0.88, metric="f1", tokens=128), acc_row("hivtp", {"budget": 128}, "gqa", 0.50, tokens=128),
        acc_row("random", {"budget": 64}, "pope", 0.40, metric="f1", tokens=64), acc_row("random", {"budget": 64}, "gqa", 0.25, tokens=64),
    ]
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


def latency_frame() -> pd.DataFrame:
    rows = [
        lat_row("none", {}, "ttft", 100.0, 576), lat_row("none", {}, "decode", 50.0, 576, tps=20.0),
        lat_row("hivtp", {"budget": 64}, "ttft", 40.0, 64), lat_row("hivtp", {"budget": 64}, "decode", 40.0, 64, tps=30.0),
        lat_row("hivtp", {"budget": 128}, "ttft", 60.0, 128), lat_row("hivtp", {"budget": 128}, "decode", 45.0, 128, tps=25.0),
    ]
    return pd.DataFrame(rows, columns=LATENCY_COLUMNS)


def sweep_frame() -> pd.DataFrame:
    """Layer and geometry sweep rows for the ablation figures."""
    rows = []
    for i, layers in enumerate(["0-1-2", "6-7-8", "9-10-11", "3", "7"]):
        rows.append(acc_row("hivtp", {"budget": 128, "layers": layers}, "pope", 0.5 + 0.05 * i, metric="f1", tokens=128))
    for r in (1, 2):
        for w in (1, 2):
            rows.append(acc_row("hivtp", {"regions": r, "window": w, "keep_ratio": 0.25}, "pope", 0.1 * r + 0.01 * w, metric="f1", tokens=200))
    rows.append(acc_row("fastervlm", {"budget": 128}, "pope", 0.6, metric="f1", tokens=128))
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)

"""Hand-made tidy rows and run folders for the results tests (values chosen so every expected number is
checkable by hand, or follows from answers whose truth the test sets)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hivtp.atomic import write_json, write_text
from hivtp.results import ACCURACY_COLUMNS, LATENCY_COLUMNS
from hivtp.runfolder import write_manifest


def _row(columns: list[str], **kw: object) -> dict:
    base = {c: None for c in columns}
    base.update(profile="offline", weights="trained", commit="abc", date="2026-01-01", model="toy-llava")
    base.update(kw)
    return base


def acc_row(method: str, params: dict, bench: str, value: float, metric: str = "accuracy", tokens: float = 576.0, **kw) -> dict:
    fields = {"n": 10, "tokens_kept_mean": tokens, "tokens_kept_std": 0.0, **kw}
    return _row(ACCURACY_COLUMNS, method=method, params=json.dumps(params, sort_keys=True), budget=params.get("budget"),
                benchmark=bench, metric=metric, value=value, **fields)


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


def with_intervals() -> pd.DataFrame:
    """:func:`accuracy_frame` with intervals and paired differences whose signs are known:
    random@64 is below HIVTP@64 on POPE (interval below 0) and not told apart on GQA (interval holds 0);
    HIVTP@64 is below the unpruned model on GQA and not told apart on POPE; HIVTP at its rule is
    above the unpruned model on POPE."""
    frame = accuracy_frame()
    frame["ci_low"], frame["ci_high"] = frame["value"] - 0.05, frame["value"] + 0.05
    rule = pd.DataFrame([acc_row("hivtp", {}, "pope", 0.90, metric="f1", tokens=270),
                         acc_row("hivtp", {}, "gqa", 0.50, tokens=270)], columns=ACCURACY_COLUMNS)
    rule["ci_low"], rule["ci_high"] = rule["value"] - 0.04, rule["value"] + 0.04
    frame = pd.concat([frame, rule], ignore_index=True)

    def at(method: str, budget, bench: str, metric: str | None = None) -> pd.Series:
        b = frame["budget"].isna() if budget is None else frame["budget"] == budget
        sel = (frame["method"] == method) & b & (frame["benchmark"] == bench)
        return sel & (frame["metric"] == metric) if metric else sel

    frame.loc[at("random", 64, "pope", "f1"), DIFF_HIVTP] = [-0.32, -0.40, -0.20]
    frame.loc[at("random", 64, "gqa"), DIFF_HIVTP] = [-0.15, -0.30, 0.01]
    frame.loc[at("hivtp", 64, "gqa"), DIFF_NONE] = [-0.10, -0.18, -0.02]
    frame.loc[at("hivtp", 64, "pope", "f1"), DIFF_NONE] = [-0.08, -0.20, 0.03]
    frame.loc[at("hivtp", None, "pope", "f1"), DIFF_NONE] = [0.10, 0.02, 0.18]
    frame.loc[at("hivtp", None, "gqa"), DIFF_NONE] = [0.0, -0.05, 0.05]
    return frame


DIFF_HIVTP = ["diff_vs_hivtp", "diff_vs_hivtp_low", "diff_vs_hivtp_high"]
DIFF_NONE = ["diff_vs_none", "diff_vs_none_low", "diff_vs_none_high"]


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


# ----------------------------------------------------------------------------- run folders
POPE_TASK, GQA_TASK = "hivtp_pope_adv", "hivtp_gqa"
POPE_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")


def pope_samples(answers: list[str], truths: list[str]) -> list[dict]:
    """POPE samples as lmms-eval logs them (pope_process_results' dict under each metric)."""
    out = []
    for i, (pred, gt) in enumerate(zip(answers, truths)):
        value = {"question_id": str(i + 1), "score": float(pred == gt), "prediction": pred, "ground_truth": gt}
        out.append({"doc_id": i, "target": gt, "resps": pred, "filtered_resps": pred, **{m: value for m in POPE_METRICS}})
    return out


def mean_samples(correct: list[bool], metric: str = "exact_match") -> list[dict]:
    return [{"doc_id": i, "target": "a", "resps": "a", "filtered_resps": "a", metric: float(c)} for i, c in enumerate(correct)]


def pope_value(answers: list[str], truths: list[str], metric: str) -> float:
    """The POPE metric by hand (lmms-eval's definitions, so the collector's check can pass)."""
    tp = sum(p == "yes" and g == "yes" for p, g in zip(answers, truths))
    fp = sum(p == "yes" and g == "no" for p, g in zip(answers, truths))
    fn = sum(p == "no" and g == "yes" for p, g in zip(answers, truths))
    precision = tp / (tp + fp) if tp + fp else 0
    recall = tp / (tp + fn) if tp + fn else 0
    return {"pope_f1_score": 2 * (precision * recall) / (precision + recall) if precision + recall else 0,
            "pope_accuracy": sum(p == g for p, g in zip(answers, truths)) / len(truths)}[metric]


def write_run(runs: Path, name: str, method: str, params: dict, samples: dict[str, list[dict]],
              rows: list[dict] | None = None, seal: bool = True, limit: int | None = None,
              device: str = "cpu", date: str = "2026-01-01", weights: str | None = None, data: str | None = None,
              checkpoint_files: str | None = None, per_image: int | None = None, identity: dict | None = None) -> Path:
    """A complete accuracy run folder as hivtp.run leaves it: config.json, accuracy.json with one row per
    (task, metric) whose value the samples give, lmms-eval's logged samples, and the DONE manifest
    (naming ``weights``, the checkpoint's sha256, as hivtp.run does, and ``checkpoint_files`` / ``data``
    where given). ``per_image``: the accounting names each question's image, ``per_image`` questions each
    (doc_id // per_image), as the plugins do; None: no image recorded. ``identity``: the recorded identity
    (``hivtp.run.identity``) where it is more than the config."""
    folder = runs / name
    config = {"method": {"name": method, "params": params}, "benchmark": {"limit": limit},
              "accuracy": {"device": device, "dtype": "auto"}}
    write_json(folder / "config.json", {"identity": identity or config, "config": config})
    if rows is None:
        rows = []
        for task, s in samples.items():
            metrics = ["pope_accuracy", "pope_f1_score"] if "pope_f1_score" in s[0] else ["exact_match"]
            for metric in metrics:
                if metric.startswith("pope"):
                    value = pope_value([x["filtered_resps"] for x in s], [x["target"] for x in s], metric)
                else:
                    value = sum(x[metric] for x in s) / len(s)
                rows.append(acc_row(method, params, task, value, metric=metric, tokens=float(params.get("budget", 576)),
                                    n=None, n_samples=len(s), run=name, date=date))
    write_json(folder / "accuracy.json", rows)
    for task, s in samples.items():
        write_text(folder / "lmms" / "lmms" / "toy-llava" / f"20260101_000000_samples_{task}.jsonl",
                   "".join(json.dumps(x) + "\n" for x in s))
        # the plugin's accounting file shares the suffix; the collector must not take it for lmms-eval's
        image = (lambda d: {}) if per_image is None else (lambda d: {"image": f"img{d // per_image}"})
        write_text(folder / "lmms" / "accounting" / f"hivtp_samples_{task}.jsonl",
                   "".join(json.dumps({"doc_id": x["doc_id"], "tokens_kept": 64, **image(x["doc_id"])}) + "\n" for x in s))
    if seal:
        inputs = None if data is None and checkpoint_files is None else {"checkpoint_files": checkpoint_files, "data": data}
        write_manifest(folder, ["accuracy"], weights=weights, inputs=inputs)
    return folder

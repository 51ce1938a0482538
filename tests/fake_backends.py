"""Fake accuracy / latency backends with the contract signatures, for the runner's ORCHESTRATION tests
only (hash folders, skipping, atomic writes, resume). Each call appends one JSON line to $HIVTP_FAKE_LOG;
$HIVTP_FAKE_HANG (a keep_ratio) makes that run hang so a test can kill the sweep mid-way."""

from __future__ import annotations

import json
import os
import time


def _log(kind: str, params: dict) -> None:
    with open(os.environ["HIVTP_FAKE_LOG"], "a") as f:
        f.write(json.dumps({"kind": kind, "params": params}, sort_keys=True) + "\n")


def accuracy(*, pretrained, method, params, tasks, limit, batch_size, output_dir, device, include_path):
    hang = os.environ.get("HIVTP_FAKE_HANG")
    if hang is not None and float(params.get("keep_ratio", -1)) == float(hang):
        time.sleep(600)
    _log("accuracy", params)
    return [{"benchmark": t, "metric": "accuracy", "value": float(params.get("keep_ratio", 1.0)), "n_samples": 1,
             "tokens_kept_mean": 10.0, "tokens_kept_std": 0.0} for t in tasks]


def latency(*, model, methods, random_weights, batch, dtype, attn, device, warmup, repeats, new_tokens,
            prompt_tokens, faithful, progress):
    (name, params), = methods
    _log("latency", params)
    return [{"stage": "ttft", "median_ms": 1.0, "batch": batch, "dtype": dtype, "backend": attn, "device": device,
             "repeats": repeats, "tokens_kept": 10}]

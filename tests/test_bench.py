"""``make bench-gpu`` (hivtp.latency.bench, scripts/bench_gpu.sh): a plan derived from the registry and
the budgets module, jobs within a time budget, three flat files a lent GPU can hand back, resumable,
and one failing job or method never costing the others their rows. Run on CPU at the tiny shapes."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import torch

from hivtp.attach import attach
from hivtp.claims import PAPER_BASELINES, budgets_for
from hivtp.errors import ConfigError
from hivtp.latency import measure, read_csv
from hivtp.latency.bench import FILES, MODELS, Job, main, methods_for, plan, run_plan
from hivtp.methods import METHODS
from hivtp.zoo import build_model

REPO = Path(__file__).resolve().parents[1]
FAST = {"device": "cpu", "dtype": "float32", "warmup": 0, "repeats": 1, "min_repeats": 1, "new_tokens": 2,
        "prompt_tokens": 8, "faithful": False, "progress": False}
#: fastv's default k_layer (2) is past tiny-llava's 2-layer LLM: refused on its first call
METHODS_TINY = (("none", {}), ("hivtp", {"budget": 64}), ("fastv", {"budget": 64}))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_plan_times_the_paper_profiles_methods_at_each_standard_budget_batch_one_first():
    jobs = plan()
    assert [(j.model, j.batch, j.attn) for j in jobs[: len(MODELS)]] == [(m, 1, "sdpa") for m in MODELS]
    assert len(jobs) == len(MODELS) * 2 * 2 and len(set(jobs)) == len(jobs)
    for model in MODELS:
        qwen = "qwen" in model
        methods = methods_for(model)
        deployable = {m for m in ("none", "hivtp", *PAPER_BASELINES) if not (qwen and METHODS[m].needs_cls)}
        assert {name for name, _ in methods} == deployable and not any(METHODS[m].offline_only for m in deployable)
        for name in deployable - {"none"}:
            assert {p["budget"] for n, p in methods if n == name and "budget" in p} == set(budgets_for(model)), name
        assert ("none", {}) in methods and ("hivtp", {}) in methods  # hivtp at its own rule
        assert any("keep" in p for _, p in methods) == qwen


@pytest.mark.parametrize("model", MODELS)
def test_every_planned_method_attaches_to_the_real_shape(model):
    """A lent GPU must not find out that a planned method refuses its model: attach each one to the
    real 7B shape built on the meta device (no memory, no compute), with the LLM stage layers of the
    in-LLM methods inside its depth."""
    net = build_model(model, dtype=torch.float16, device="meta")
    depth = net.config.text_config.num_hidden_layers
    for name, params in methods_for(model):
        recorded = attach(net, method=name, **params).method.params()
        stages = [recorded.get("k_layer")] + list(recorded.get("layers") or [])
        assert all(0 < k < depth for k in stages if k is not None), (name, recorded)


def test_jobs_write_three_flat_files_twice_resume_and_survive_a_refusing_method_and_a_failing_job(tmp_path):
    out, mirror = tmp_path / "out", tmp_path / "mirror"
    jobs = [Job("tiny-llava", 1, "sdpa", METHODS_TINY), Job("no-such-shape", 1, "sdpa", METHODS_TINY),
            Job("tiny-llava", 2, "eager", METHODS_TINY)]
    outcome = run_plan(jobs, out, budget_s=600, mirror=mirror, **FAST)
    assert outcome["measured"] == ["tiny-llava batch 1 sdpa", "tiny-llava batch 2 eager"]
    assert len(outcome["failed"]) == 1 and outcome["failed"][0].startswith("no-such-shape batch 1 sdpa: ConfigError")
    assert [r.split(": ")[:2] for r in outcome["refused"]] == [["tiny-llava batch 1 sdpa", "fastv:budget=64"],
                                                              ["tiny-llava batch 2 eager", "fastv:budget=64"]]
    for folder in (out, mirror):  # a lent GPU hands back <= 8 files <= 2 folders down: three, flat
        assert sorted(p.name for p in folder.iterdir()) == sorted(FILES) and all(p.is_file() for p in folder.iterdir())
    assert (out / "latency.csv").read_text() == (mirror / "latency.csv").read_text()
    rows = read_csv(out / "latency.csv")
    assert {(r["batch"], r["attn"], r["method"]) for r in rows} == {(b, a, m) for b, a in ((1, "sdpa"), (2, "eager")) for m in ("none", "hivtp")}
    fingerprint = (out / "fingerprint.txt").read_text()
    assert "failed: no-such-shape" in fingerprint and "refused: tiny-llava batch 1 sdpa: fastv" in fingerprint
    again = run_plan(jobs, out, budget_s=600, **FAST)  # the same folder: only what is missing runs
    assert again["skipped"] == outcome["measured"] and again["measured"] == [] and len(again["failed"]) == 1
    assert len(read_csv(out / "latency.csv")) == len(rows)


def test_no_job_starts_without_time_and_a_started_one_stops_at_the_deadline(tmp_path):
    outcome = run_plan([Job("tiny-llava", 1, "sdpa", METHODS_TINY[:1])], tmp_path, budget_s=0, **FAST)
    assert outcome["not run"] == ["tiny-llava batch 1 sdpa"] and not (tmp_path / "latency.csv").exists()
    assert "not run: tiny-llava batch 1 sdpa" in (tmp_path / "fingerprint.txt").read_text()
    kw = {k: v for k, v in FAST.items() if k not in ("repeats", "min_repeats")}
    rows = measure(model="tiny-llava", methods=[("none", {})], repeats=5, min_repeats=2, deadline=time.monotonic(), **kw)
    assert {r["repeats"] for r in rows} == {2}  # past the deadline: the least asked for, not all five
    rows = measure(model="tiny-llava", methods=[("none", {})], repeats=3, min_repeats=1, deadline=time.monotonic() + 600, **kw)
    assert {r["repeats"] for r in rows} == {3}


def test_measure_without_refusals_still_stops_at_a_bad_parameter():
    kw = {k: v for k, v in FAST.items() if k != "min_repeats"}
    with pytest.raises(ConfigError, match="k_layer=2"):
        measure(model="tiny-llava", methods=list(METHODS_TINY), **kw)


def test_bench_gpu_sh_writes_to_artifacts_and_mirrors_into_out_on_a_lent_machine(tmp_path):
    """The script as a lent machine runs it, with a stand-in python that says it has a GPU and prints
    the arguments it was given: $OUT gets one flat folder, never results/latency/... (three folders down)."""
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nif [ "$1" = -c ]; then case "$2" in *get_device_name*) echo NVIDIA-H200;; esac; exit 0; fi\necho "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "OUT"), "BUDGET_S": "300", "MODELS": "llava-1.5-7b"}
    got = subprocess.run(["bash", "scripts/bench_gpu.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 0, got.stderr
    args = got.stdout.split()
    assert args[:2] == ["-m", "hivtp.latency.bench"] and args[-1] == "--dry-run"
    assert args[args.index("--mirror") + 1] == f"{tmp_path}/OUT/bench-gpu"
    assert args[args.index("--out") + 1].startswith("artifacts/bench-gpu/gpu-NVIDIA-H200-")
    assert args[args.index("--budget-s") + 1] == "300" and args[args.index("--models") + 1] == "llava-1.5-7b"
    del env["OUT"]
    got = subprocess.run(["bash", "scripts/bench_gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "results/latency/gpu-NVIDIA-H200-" in got.stdout and "--mirror" not in got.stdout


def test_command_line_dry_run_lists_the_plan_and_refuses_bad_repeats(capsys, tmp_path):
    assert main(["--out", str(tmp_path), "--dry-run", "--models", "llava-1.5-7b", "--batches", "1", "--attns", "sdpa"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("llava-1.5-7b batch 1 sdpa: none hivtp hivtp:budget=64 ")
    assert main(["--out", str(tmp_path), "--repeats", "2", "--min-repeats", "3"]) == 2
    assert "--min-repeats" in capsys.readouterr().err


def test_a_jobs_least_run_is_estimated_from_the_closest_measured_one():
    from hivtp.latency.bench import Budget

    budget = Budget(100)
    job = lambda model, batch: Job(model, batch, "sdpa", ())  # noqa: E731
    assert budget.estimate(job("a", 1), 3) is None  # nothing measured yet: start it
    budget.round_s[("a", 1)] = 10.0
    assert budget.estimate(job("a", 1), 3) == 30.0  # the same model and batch
    assert budget.estimate(job("a", 8), 3) == 240.0  # another batch: scaled by the batch ratio
    assert budget.estimate(job("b", 1), 3) == 30.0  # another model at this batch
    assert budget.estimate(job("b", 8), 3) is None

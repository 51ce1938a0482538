"""``make bench-gpu`` (hivtp.latency.bench, scripts/bench_gpu.sh): a plan of the paper profile's methods and
the budgets module, jobs within a time budget, four flat files a lent GPU can hand back, resumable,
and one failing job or method never costing the others their rows. Run on CPU at the tiny shapes."""

from __future__ import annotations

import json
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
    assert (out / "jobs.json").read_text() == (mirror / "jobs.json").read_text()
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
    rows = measure(model="tiny-llava", methods=[("none", {})], repeats=5, min_repeats=1, deadline=time.monotonic(), **kw)
    assert {r["repeats"] for r in rows} == {1}  # past the deadline: the least asked for, not all five
    rows = measure(model="tiny-llava", methods=[("none", {})], repeats=3, min_repeats=1, deadline=time.monotonic() + 600, **kw)
    assert {r["repeats"] for r in rows} == {3}


def test_measure_without_refusals_still_stops_at_a_bad_parameter():
    kw = {k: v for k, v in FAST.items() if k != "min_repeats"}
    with pytest.raises(ConfigError, match="k_layer=2"):
        measure(model="tiny-llava", methods=list(METHODS_TINY), **kw)


def test_bench_gpu_sh_writes_results_and_mirrors_into_out_on_a_lent_machine(tmp_path):
    """The script as a lent machine runs it, with a stand-in python that says it has a GPU and prints
    the arguments it was given: results/latency/gpu-<device>-<date> (resumed from), and $OUT one flat folder."""
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nif [ "$1" = -c ]; then case "$2" in *get_device_name*) echo NVIDIA-H200;; esac; exit 0; fi\necho "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "OUT"), "BUDGET_S": "300", "MODELS": "llava-1.5-7b"}
    got = subprocess.run(["bash", "scripts/bench_gpu.sh", "--quiet"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert got.returncode == 0, got.stderr
    args = got.stdout.split()
    assert args[:2] == ["-m", "hivtp.latency.bench"] and args[-1] == "--quiet"
    assert args[args.index("--mirror") + 1] == f"{tmp_path}/OUT/bench-gpu"
    assert args[args.index("--out") + 1].startswith("results/latency/gpu-NVIDIA-H200-")  # travels back with the tree: resumed
    assert args[args.index("--budget-s") + 1] == "300" and args[args.index("--models") + 1] == "llava-1.5-7b"
    del env["OUT"]
    got = subprocess.run(["bash", "scripts/bench_gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "results/latency/gpu-NVIDIA-H200-" in got.stdout and "--mirror" not in got.stdout


def test_command_line_dry_run_lists_the_plan_and_refuses_bad_repeats(capsys, tmp_path):
    assert main(["--out", str(tmp_path), "--dry-run", "--models", "llava-1.5-7b", "--batches", "1", "--attns", "sdpa"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("llava-1.5-7b batch 1 sdpa: none hivtp hivtp:backend=eager hivtp:budget=64 hivtp:backend=eager:budget=64 ")
    assert main(["--out", str(tmp_path), "--repeats", "2", "--min-repeats", "3"]) == 2
    assert "--min-repeats" in capsys.readouterr().err


def test_a_jobs_least_run_is_estimated_from_the_closest_measured_one():
    from hivtp.latency.bench import Budget

    budget = Budget(100)
    job = lambda model, batch, attn="sdpa": Job(model, batch, attn, ())  # noqa: E731
    assert budget.estimate(job("a", 1), 3) is None  # nothing measured yet: start it
    budget.round_s[("a", 1, "sdpa")] = 10.0
    budget.build_s["a"] = 5.0
    assert budget.estimate(job("a", 1), 3) == 30.0  # the same job
    assert budget.estimate(job("a", 1), 3, build=True) == 35.0  # ... with its model to build first
    assert budget.estimate(job("a", 1, "eager"), 3) == 30.0  # the other kernel until it is measured
    budget.round_s[("a", 1, "eager")] = 12.0
    assert budget.estimate(job("a", 1, "eager"), 3) == 36.0
    assert budget.estimate(job("a", 4), 3) == pytest.approx(3 * 12.0 * 2)  # another batch: sqrt of the ratio
    assert budget.estimate(job("b", 1), 3) == 36.0  # another model at this batch: the slowest measured
    assert budget.estimate(job("b", 8), 3) is None


def test_a_folder_of_another_protocol_is_refused_and_a_job_missing_methods_is_measured_again(tmp_path):
    job = Job("tiny-llava", 1, "sdpa", METHODS_TINY[:2])
    run_plan([job], tmp_path, budget_s=600, **FAST)
    with pytest.raises(ConfigError, match="another protocol.*new_tokens 2 -> 3"):
        run_plan([job], tmp_path, budget_s=600, **{**FAST, "new_tokens": 3})
    # warm-up rounds are in no row: a resume with other warm-up would mix protocols without a trace
    with pytest.raises(ConfigError, match="another protocol.*warmup 0 -> 2"):
        run_plan([job], tmp_path, budget_s=600, **{**FAST, "warmup": 2})
    record = json.loads((tmp_path / "jobs.json").read_text())
    assert record["protocol"]["torch"] == torch.__version__ and "protocol: " in (tmp_path / "fingerprint.txt").read_text()
    older = {**record, "protocol": {**record["protocol"], "torch": "2.0.0"}}  # rows of a folder timed with another torch
    (tmp_path / "jobs.json").write_text(json.dumps(older))
    with pytest.raises(ConfigError, match="another protocol.*torch '2.0.0' -> '"):
        run_plan([job], tmp_path, budget_s=600, **FAST)
    (tmp_path / "jobs.json").write_text(json.dumps(record))
    again = run_plan([job], tmp_path, budget_s=600, **{**FAST, "faithful": True})  # HIVTP's eager twin is new
    assert again["measured"] == [job.name]
    rows = read_csv(tmp_path / "latency.csv")
    labels = sorted({(r["method"], r["params"]) for r in rows})
    assert labels == [("hivtp", '{"backend": "eager", "budget": 64}'), ("hivtp", '{"budget": 64}'), ("none", "{}")]
    assert len(rows) == 3 * 5  # the job's old rows replaced, not kept beside the new ones (5 stages)


def test_a_method_failing_at_any_call_is_dropped_and_the_others_keep_their_rows(tmp_path, monkeypatch):
    from hivtp.methods.random import RandomTokens

    calls = {"n": 0}
    original = RandomTokens.select

    def fail_on_the_second_call(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RandomTokens, "select", fail_on_the_second_call)
    methods = (("none", {}), ("random", {"budget": 64}), ("hivtp", {"budget": 64}))
    outcome = run_plan([Job("tiny-llava", 1, "sdpa", methods)], tmp_path, budget_s=600, **{**FAST, "repeats": 2})
    assert outcome["measured"] == ["tiny-llava batch 1 sdpa"]
    assert outcome["refused"] == ["tiny-llava batch 1 sdpa: random:budget=64: RuntimeError: CUDA out of memory (simulated)"]
    assert {r["method"] for r in read_csv(tmp_path / "latency.csv")} == {"none", "hivtp"}


def test_a_job_whose_least_run_cannot_end_by_the_deadline_is_abandoned(tmp_path):
    from hivtp.latency.measure import OutOfTime

    kw = {k: v for k, v in FAST.items() if k not in ("repeats", "min_repeats", "warmup")}
    with pytest.raises(OutOfTime, match="least run"):
        measure(model="tiny-llava", methods=[("none", {})], warmup=1, repeats=3, min_repeats=2, deadline=time.monotonic() + 0.01, **kw)


def test_one_model_at_a_time_on_the_device(tmp_path, monkeypatch):
    """A stage's peak memory counts every resident tensor: the bench must let go of one model before
    building the next, or the next one's rows count both."""
    import gc
    import weakref

    import hivtp.latency.bench as bench

    alive, real = [], bench.load_model

    def spy(*args, **kwargs):
        gc.collect()
        alive.append(sum(r() is not None for r in refs))
        net, weights = real(*args, **kwargs)
        refs.append(weakref.ref(net))
        return net, weights

    refs: list = []
    monkeypatch.setattr(bench, "load_model", spy)
    jobs = [Job("tiny-llava", 1, "sdpa", METHODS_TINY[:1]), Job("tiny-llava-next", 1, "sdpa", METHODS_TINY[:1]),
            Job("tiny-llava", 2, "sdpa", METHODS_TINY[:1])]
    assert run_plan(jobs, tmp_path, budget_s=600, **FAST)["measured"] == [j.name for j in jobs]
    assert alive == [0, 0, 0]  # no model of an earlier job alive when the next one is built


def test_latency_csv_keeps_text_columns_text(tmp_path):
    """A commit such as 40123e567890 reads as a float (4e+567895 = inf): text columns stay text."""
    from hivtp.latency import write_csv

    write_csv([{"model": "m", "commit": "40123e567890", "date": "2026", "median_ms": 1.5, "batch": 1}], tmp_path / "l.csv")
    (row,) = read_csv(tmp_path / "l.csv")
    assert row["commit"] == "40123e567890" and row["date"] == "2026" and row["median_ms"] == 1.5 and row["batch"] == 1

"""The runner's orchestration (hash folders, skip finished, atomic writes, resume after a kill) with
fake backends, and one end-to-end run through the real latency and accuracy backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from hivtp.errors import ConfigError
from hivtp.run import CONFIG_DIR, REPO, run_weights, execute, identity, plain, run_hash, run_inputs, write_atomic

FAKE = ["backend.accuracy=fake_backends:accuracy", "backend.latency=fake_backends:latency"]


def cfg_of(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def calls(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def fake_log(tmp_path, monkeypatch):
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("HIVTP_FAKE_LOG", str(log))
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    return log


def test_the_word_none_is_a_null_param_only_where_the_default_is_none():
    """``method.params.budget=none`` is HIVTP without a budget, the same run as no override (it used to reach
    the method as the text "none" and be refused); NeXT's ``newline=none`` stays the policy."""
    from hivtp.run import method_params

    base = plain(cfg_of([]))
    assert method_params(plain(cfg_of(["method.params.budget=none"]))) == method_params(base)
    assert run_hash(plain(cfg_of(["method.params.budget=none"]))) == run_hash(base)
    assert method_params(plain(cfg_of(["+method.params.newline=none"])))["newline"] == "none"


def test_one_layer_list_is_one_run_however_it_is_spelled():
    """``layers=[6,7,8]`` (Hydra), ``"6,7,8"`` and ``"6-7-8"`` (configs, lmms-eval) are one computation:
    one run folder, recorded as the configs write it; other layers are another run."""
    from hivtp.run import method_params

    spelled = ["method.params.layers=[6,7,8]", "method.params.layers='6,7,8'", "method.params.layers=6-7-8"]
    cfgs = [plain(cfg_of([ov])) for ov in spelled]
    assert {method_params(c)["layers"] for c in cfgs} == {"6-7-8"}
    assert len({run_hash(c) for c in cfgs}) == 1
    assert run_hash(plain(cfg_of(["method.params.layers=6-7-9"]))) != run_hash(cfgs[0])
    assert method_params(plain(cfg_of(["method.params.layers=7"])))["layers"] == "7"
    with pytest.raises(ConfigError, match="layer numbers"):
        method_params(plain(cfg_of(["method.params.layers=7.5"])))


def test_hash_ignores_non_identity_keys_and_null_params(tmp_path):
    a = plain(cfg_of([f"runs_root={tmp_path}"]))
    b = plain(cfg_of(["runs_root=/elsewhere", "force=true", "progress=false", *FAKE]))
    assert run_hash(a) == run_hash(b)
    c = plain(cfg_of(["method.params.budget=128"]))
    assert run_hash(c) != run_hash(a)
    # accuracy-only runs do not depend on the latency protocol ...
    d = plain(cfg_of(["mode=accuracy", "latency=cpu"]))
    assert run_hash(d) == run_hash(plain(cfg_of(["mode=accuracy", "latency=cpu", "latency.repeats=50", "latency.attn=eager"])))
    # ... but on the device and dtype they run with: a GPU re-run of a CPU run is another run
    assert run_hash(d) != run_hash(plain(cfg_of(["mode=accuracy", "latency=gpu"])))  # accuracy follows latency.device
    assert run_hash(d) != run_hash(plain(cfg_of(["mode=accuracy", "accuracy.device=cuda"])))
    assert run_hash(d) != run_hash(plain(cfg_of(["mode=accuracy", "accuracy.dtype=float16"])))
    # latency-only runs do not depend on how accuracy would run
    f = plain(cfg_of(["mode=latency"]))
    assert run_hash(f) == run_hash(plain(cfg_of(["mode=latency", "accuracy.dtype=float16", "benchmark.limit=3"])))


def test_an_offline_run_is_part_of_the_world_its_benchmarks_were_drawn_in(monkeypatch):
    """Changing the benchmarks' world (hivtp.world.BENCHMARK_WORLD) makes every offline accuracy run a new
    run, so a finished one from the old world is never skipped as current; runs on other benchmarks and
    latency-only runs keep their identity, and the plain world adds nothing (runs made before worlds
    existed keep theirs)."""
    import hivtp.world

    offline = plain(cfg_of(["mode=accuracy"]))
    assert any(t.startswith("hivtp_") for t in offline["benchmark"]["tasks"])
    latency = plain(cfg_of(["mode=latency"]))
    other = json.loads(json.dumps(offline))
    other["benchmark"]["tasks"] = ["pope_adv"]
    monkeypatch.setattr(hivtp.world, "BENCHMARK_WORLD", "plain")
    hashes = [run_hash(c) for c in (offline, latency, other)]
    assert "world" not in json.dumps(identity(offline))
    monkeypatch.setattr(hivtp.world, "BENCHMARK_WORLD", "cluttered")
    assert run_hash(offline) != hashes[0] and [run_hash(latency), run_hash(other)] == hashes[1:]


def test_run_writes_rows_and_skips_when_finished(tmp_path, fake_log):
    cfg = cfg_of([f"runs_root={tmp_path / 'runs'}", "method.params.keep_ratio=0.5", *FAKE])
    folder = execute(cfg)
    assert folder.name == run_hash(plain(cfg))
    assert (folder / "DONE").exists()
    acc = json.loads((folder / "accuracy.json").read_text())
    lat = json.loads((folder / "latency.json").read_text())
    assert {r["benchmark"] for r in acc} == {"hivtp_pope_adv", "hivtp_gqa", "hivtp_mme", "hivtp_scienceqa_img"}
    assert acc[0]["params"] == '{"keep_ratio": 0.5}' and acc[0]["profile"] == "offline" and acc[0]["method"] == "hivtp"
    assert lat[0]["weights"] == "random" and lat[0]["model"] == "tiny-llava"
    assert len(calls(fake_log)) == 2
    execute(cfg)  # finished: nothing runs again
    assert len(calls(fake_log)) == 2
    execute(cfg_of([f"runs_root={tmp_path / 'runs'}", "method.params.keep_ratio=0.5", "force=true", *FAKE]))
    assert len(calls(fake_log)) == 4


def test_a_cuda_latency_part_first_forgets_the_in_process_accuracy_model(tmp_path, fake_log, monkeypatch):
    """mode=both in one process: the in-process accuracy runner keeps its model for the next configuration;
    a CUDA latency part would count that model in every row's peak memory, so it is forgotten first (on the
    CPU, where no peak memory is read, it is kept for the next configuration)."""
    pytest.importorskip("lmms_eval")
    import importlib

    from hivtp.lmms import inprocess

    measure = importlib.import_module("hivtp.latency.measure")  # the module (hivtp.latency.measure is also a function)
    freed = []
    monkeypatch.setattr(measure, "free_device_memory", lambda dev: freed.append(str(dev)))
    for device, kept in (("cpu", True), ("cuda", False)):
        monkeypatch.setattr(inprocess, "_model", "the accuracy model")
        execute(cfg_of([f"runs_root={tmp_path / device}", f"latency.device={device}", *FAKE]))
        assert (inprocess._model == "the accuracy model") is kept, device
    assert freed == ["cuda"] and [c["kind"] for c in calls(fake_log)] == ["accuracy", "latency"] * 2


def _killed(folder: Path, started_on: dict) -> None:
    """A folder as a killed run leaves it: its config (with what it answered on) written first, the
    accuracy part finished, then the process died."""
    write_atomic(folder / "config.json", json.dumps(started_on))
    write_atomic(folder / "accuracy.json", '[{"benchmark": "x", "value": 1.0}]\n')


def test_part_finished_before_a_kill_is_kept(tmp_path, fake_log):
    cfg = cfg_of([f"runs_root={tmp_path}", *FAKE])
    folder = tmp_path / run_hash(plain(cfg))
    _killed(folder, {"weights": run_weights(plain(cfg)), **run_inputs(plain(cfg))})
    execute(cfg)
    assert [c["kind"] for c in calls(fake_log)] == ["latency"]
    assert (folder / "DONE").exists()


def test_part_finished_on_other_inputs_is_redone(tmp_path, fake_log):
    """A killed run's part is kept only when it answered on this run's weights and inputs: one that
    started on other data (or before runs recorded their inputs) is redone."""
    data = tmp_path / "data"
    (data / "pope").mkdir(parents=True)
    (data / "pope" / "dataset_dict.json").write_text("{}\n")
    cfg = cfg_of([f"runs_root={tmp_path / 'runs'}", f"benchmark.data_dir={data}", *FAKE])
    folder = tmp_path / "runs" / run_hash(plain(cfg))
    started_on = {"weights": run_weights(plain(cfg)), **run_inputs(plain(cfg))}
    assert started_on["data"]
    for other in ({**started_on, "data": "0" * 64}, {"weights": started_on["weights"]}):
        _killed(folder, other)
        (folder / "DONE").unlink(missing_ok=True)
        before = len(calls(fake_log))
        execute(cfg)
        assert [c["kind"] for c in calls(fake_log)[before:]] == ["accuracy", "latency"]


def test_the_data_a_run_answers_on_is_the_folder_its_benchmark_reads(tmp_path):
    """benchmark.data_dir, or the runner's default (artifacts/data) for the offline tasks; none for hub
    datasets and for latency-only runs (synthetic prompts and images)."""
    from hivtp.lmms.runner import DATA_DIR
    from hivtp.run import data_digest, data_folder

    assert data_folder(plain(cfg_of([]))) == DATA_DIR
    assert data_folder(plain(cfg_of([f"benchmark.data_dir={tmp_path}"]))) == tmp_path
    assert data_folder(plain(cfg_of(["benchmark=paper"]))) is None
    assert data_folder(plain(cfg_of(["mode=latency"]))) is None
    assert data_digest(plain(cfg_of([f"benchmark.data_dir={tmp_path / 'not-built'}"]))) is None


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    write_atomic(path, "old\n")

    with pytest.raises(TypeError):
        write_atomic(path, None)  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


def test_bad_config_errors_clearly(tmp_path, fake_log):
    with pytest.raises(ConfigError, match="mode must be"):
        execute(cfg_of([f"runs_root={tmp_path}", "mode=speed", *FAKE]))
    with pytest.raises(ConfigError, match="window"):
        execute(cfg_of([f"runs_root={tmp_path}", "method.params.regions=3", "method.params.window=3", *FAKE]))
    with pytest.raises(ConfigError, match="module:function"):
        execute(cfg_of([f"runs_root={tmp_path}", "backend.accuracy=nocolon", "mode=accuracy"]))
    assert calls(fake_log) == []


def test_a_model_whose_name_reads_as_another_family_is_refused(tmp_path, fake_log):
    """Rows name the model by ``model.name`` and the ledger takes its family's claims and budgets from that
    name: a LLaVA-NeXT checkpoint under a name without 'next' would be read as LLaVA-1.5 silently."""
    with pytest.raises(ConfigError, match="reads as family llava15.*model_type of model.pretrained says llava_next.*'next'"):
        execute(cfg_of([f"runs_root={tmp_path}", "model=tiny-llava-next", "model.name=my-model", "model.family=llava15", *FAKE]))
    with pytest.raises(ConfigError, match="model.family says qwen2_5_vl"):
        execute(cfg_of([f"runs_root={tmp_path}", "model.family=qwen2_5_vl", *FAKE]))
    # the latency part times latency_model: a NeXT one under a LLaVA-1.5 name is refused there too
    with pytest.raises(ConfigError, match="model_type of model.latency_model says llava_next"):
        execute(cfg_of([f"runs_root={tmp_path}", "model.latency_model=tiny-llava-next", "mode=latency", *FAKE]))
    assert calls(fake_log) == []
    execute(cfg_of([f"runs_root={tmp_path}", "model=tiny-llava-next", "model.name=my-llava-next", *FAKE]))  # named right: runs
    assert len(calls(fake_log)) > 0


def test_the_offline_only_oracle_is_refused_in_the_paper_profile(tmp_path, fake_log):
    with pytest.raises(ConfigError, match="offline-only reference.*experiment=offline"):
        execute(cfg_of([f"runs_root={tmp_path}", "+experiment=paper_llava15", "method=oracle", *FAKE]))
    assert calls(fake_log) == []


def test_a_paper_run_of_a_small_model_or_on_the_offline_benchmarks_is_refused(tmp_path, fake_log):
    """Rows take the config's profile, and the paper profile's stand beside the paper's claims: the stages
    sweep after a paper experiment ran the 7B on the procedural POPE, and profile=paper on a small model
    would time a toy, both marked paper without an error."""
    from hivtp.run import check_profile

    with pytest.raises(ConfigError, match="hivtp_pope_adv, hivtp_pope_pop, hivtp_pope_random are the offline"):
        execute(cfg_of([f"runs_root={tmp_path}", "+experiment=paper_llava15", "+sweep=stages", *FAKE]))
    with pytest.raises(ConfigError, match="model.pretrained = 'tiny-llava' is a small offline model"):
        execute(cfg_of([f"runs_root={tmp_path}", "profile=paper", "benchmark=paper", "mode=accuracy", *FAKE]))
    with pytest.raises(ConfigError, match="model.latency_model = 'toy-llava' is a small offline model"):
        execute(cfg_of([f"runs_root={tmp_path}", "+experiment=paper_llava15", "model.latency_model=toy-llava",
                        "mode=latency", *FAKE]))
    with pytest.raises(ConfigError, match="latency.device='cpu': the paper's speed claims are GPU"):
        execute(cfg_of([f"runs_root={tmp_path}", "+experiment=paper_llava15", "latency=cpu", *FAKE]))
    assert calls(fake_log) == []
    check_profile(plain(cfg_of(["+experiment=paper_llava15", "latency=cpu"])), "accuracy")  # no latency part: accepted
    check_profile(plain(cfg_of(["+experiment=paper_llava15", "+sweep=stages", "benchmark=paper_pope"])))  # the fix: accepted
    check_profile(plain(cfg_of(["+experiment=paper_llava15", "+sweep=stages", "mode=latency"])), "latency")  # no tasks read
    check_profile(plain(cfg_of(["+sweep=stages"])))  # the offline profile: anything goes


def test_invalid_geometry_is_marked_when_skip_invalid(tmp_path, fake_log):
    folder = execute(cfg_of([f"runs_root={tmp_path}", "method.params.regions=4", "method.params.window=4",
                             "skip_invalid=true", *FAKE]))
    assert "window" in (folder / "INVALID").read_text()
    assert (folder / "DONE").exists() and calls(fake_log) == []


def _sweep(runs: Path, log: Path, hang: str | None) -> subprocess.Popen:
    env = dict(os.environ, HIVTP_FAKE_LOG=str(log), PYTHONPATH=f"{REPO}:{REPO / 'tests'}")
    env.pop("HIVTP_FAKE_HANG", None)
    if hang:
        env["HIVTP_FAKE_HANG"] = hang
    cmd = [sys.executable, "-m", "hivtp.run", "-m", f"runs_root={runs}", "mode=accuracy", *FAKE,
           "method.params.keep_ratio=0.125,0.25,0.5,1.0"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path):
    runs, log = tmp_path / "runs", tmp_path / "calls.jsonl"
    proc = _sweep(runs, log, hang="0.5")  # the third job hangs: kill the sweep there
    deadline = time.time() + 120
    while len(calls(log)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [c["params"]["keep_ratio"] for c in calls(log)] == [0.125, 0.25]
    assert len(list(runs.glob("*/DONE"))) == 2
    proc = _sweep(runs, log, hang=None)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert [c["params"]["keep_ratio"] for c in calls(log)] == [0.125, 0.25, 0.5, 1.0]
    assert out.count("[hivtp.run] skip") == 2
    assert len(list(runs.glob("*/DONE"))) == 4


@pytest.mark.slow
def test_tiny_sweep_end_to_end_with_real_backends(tmp_path):
    """Two methods through the real hivtp.lmms.runner and hivtp.latency, then the collector and reports."""
    from hivtp.results import collect
    from hivtp.results.report import write_reports

    from eval.builders import build_pope, save

    runs, results, data = tmp_path / "runs", tmp_path / "results", tmp_path / "data"
    save(data, {"pope": build_pope(4, seed=0)})
    cmd = [sys.executable, "-m", "hivtp.run", "-m", f"runs_root={runs}", "model=toy-llava", "method=none,hivtp",
           "benchmark.tasks=[hivtp_pope_adv]", "benchmark.limit=2", f"benchmark.data_dir={data}",
           "latency.repeats=1", "latency.warmup=0",
           "latency.new_tokens=2", "progress=false"]
    out = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    frames = collect(runs, results)
    assert set(frames["accuracy"]["method"]) == {"none", "hivtp"}
    assert set(frames["latency"]["method"]) == {"none", "hivtp"}
    assert (frames["accuracy"]["profile"] == "offline").all()
    written = write_reports(results)
    assert (results / "ledger.md").exists() and any(p.suffix == ".png" for p in written)

"""A finished run must really be finished (issue 21, items 2 and 10): the manifest written last, runs
whose files went missing or changed are redone, a forced re-run cannot destroy the run it replaces,
files follow the user's umask, and a run made at another commit says so when it is skipped."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from hivtp.run import CONFIG_DIR, REPO, execute, plain, run_hash
from hivtp.runfolder import IncompleteRunError, check_run, is_complete, read_part, verify_run

# This module's own backends: the accuracy one writes logged samples under its output folder, as
# lmms-eval does, and can fail half-way (a killed run).
BACKENDS = ["backend.accuracy=test_run_folders:accuracy", "backend.latency=fake_backends:latency"]


def accuracy(*, pretrained, method, params, tasks, limit, batch_size, output_dir, device, include_path):
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        (out / f"samples_{t}.jsonl").write_text(json.dumps({"doc_id": 0, "answer": os.environ.get("HIVTP_TEST_ANSWER", "yes")}) + "\n")
    if os.environ.get("HIVTP_TEST_DIE"):
        raise KeyboardInterrupt("killed half-way")  # as a kill would: the samples are written, the rows not
    with open(os.environ["HIVTP_FAKE_LOG"], "a") as f:
        f.write(json.dumps({"kind": "accuracy", "params": params}) + "\n")
    return [{"benchmark": t, "metric": "accuracy", "value": 1.0, "n_samples": 1} for t in tasks]


@pytest.fixture
def env(tmp_path, monkeypatch):
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("HIVTP_FAKE_LOG", str(log))
    monkeypatch.setenv("HIVTP_COMMIT", "aaaa")
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    return log


def n_calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def cfg_of(root: Path, *extra: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"runs_root={root}", "mode=accuracy", "benchmark.tasks=[hivtp_gqa]",
                                            "method.params.budget=64", *BACKENDS, *extra])


def test_run_missing_a_file_is_not_finished_and_is_redone(tmp_path, env):
    cfg = cfg_of(tmp_path)
    folder = execute(cfg)
    assert is_complete(folder) and verify_run(folder) == [] and n_calls(env) == 1
    (folder / "accuracy.json").unlink()
    assert verify_run(folder) == ["accuracy.json is missing"]
    execute(cfg)
    assert n_calls(env) == 2 and is_complete(folder)
    assert read_part(folder, "accuracy")[0]["benchmark"] == "hivtp_gqa"
    (folder / "lmms" / "samples_hivtp_gqa.jsonl").unlink()  # the logged answers are part of the run too
    assert not is_complete(folder)
    execute(cfg)
    assert n_calls(env) == 3 and (folder / "lmms" / "samples_hivtp_gqa.jsonl").is_file()


def test_corrupt_rows_without_done_are_redone_not_sealed(tmp_path, env):
    cfg = cfg_of(tmp_path)
    folder = execute(cfg)
    (folder / "DONE").unlink()
    (folder / "accuracy.json").write_text('[{"benchmark": "hivtp_g')  # truncated
    execute(cfg)
    assert n_calls(env) == 2
    assert read_part(folder, "accuracy")[0]["benchmark"] == "hivtp_gqa"


def test_broken_file_is_named(tmp_path, env):
    folder = execute(cfg_of(tmp_path))
    text = (folder / "accuracy.json").read_text()
    (folder / "accuracy.json").write_text(text[: len(text) // 2])
    with pytest.raises(IncompleteRunError, match="accuracy.json changed after the run finished") as err:
        read_part(folder, "accuracy")
    assert err.value.path == folder / "accuracy.json"
    (folder / "DONE").write_text("2026-11-28T10:00:00\n")  # the marker of an older hivtp: no manifest
    with pytest.raises(IncompleteRunError, match="DONE is not a manifest") as err:
        check_run(folder)
    assert err.value.path == folder / "DONE"


def test_interrupted_forced_rerun_leaves_the_old_run_intact(tmp_path, env, monkeypatch):
    cfg = cfg_of(tmp_path)
    folder = execute(cfg)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    monkeypatch.setenv("HIVTP_TEST_ANSWER", "no")
    monkeypatch.setenv("HIVTP_TEST_DIE", "1")
    with pytest.raises(KeyboardInterrupt):
        execute(cfg_of(tmp_path, "force=true"))
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before and is_complete(folder)
    execute(cfg)  # not forced: the old run is still finished
    assert n_calls(env) == 1
    monkeypatch.delenv("HIVTP_TEST_DIE")
    execute(cfg_of(tmp_path, "force=true"))  # a forced re-run that finishes replaces the run
    assert n_calls(env) == 2 and is_complete(folder)
    assert json.loads((folder / "lmms" / "samples_hivtp_gqa.jsonl").read_text())["answer"] == "no"
    assert [p.name for p in tmp_path.iterdir() if p.name != "calls.jsonl"] == [folder.name, "_incoming"]
    assert list((tmp_path / "_incoming").iterdir()) == []  # the failed attempt's leftovers are gone too


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_follow_the_umask(tmp_path, env, umask):
    old = os.umask(umask)
    try:
        folder = execute(cfg_of(tmp_path))
    finally:
        os.umask(old)
    for name in ("config.json", "accuracy.json", "DONE"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~umask, name


def test_skipping_a_run_made_at_another_commit_says_so(tmp_path, env, monkeypatch, capsys):
    cfg = cfg_of(tmp_path)
    folder = execute(cfg)
    monkeypatch.setenv("HIVTP_COMMIT", "bbbb")
    capsys.readouterr()
    execute(cfg)
    out = capsys.readouterr().out
    assert f"skip {folder.name}: finished at commit aaaa, not this tree's bbbb" in out
    assert n_calls(env) == 1
    assert {r["commit"] for r in read_part(folder, "accuracy")} == {"aaaa"}  # rows keep their commit
    execute(cfg)
    assert "finished at commit" in capsys.readouterr().out  # said on every skip, not once
    monkeypatch.setenv("HIVTP_COMMIT", "aaaa")
    execute(cfg)
    assert f"skip {folder.name}: finished\n" in capsys.readouterr().out


def test_invalid_run_is_complete_and_has_no_rows(tmp_path, env):
    folder = execute(cfg_of(tmp_path, "method.params.regions=4", "method.params.window=4", "method.params.keep_ratio=0.25",
                            "skip_invalid=true"))
    assert is_complete(folder) and read_part(folder, "accuracy") is None and n_calls(env) == 0
    assert json.loads((folder / "DONE").read_text())["status"] == "invalid"


def test_score_layer_past_the_models_feature_layer_is_invalid_before_loading(tmp_path, env):
    """toy-llava's encoder has 12 layers (features = output of layer 10): layer 11 is refused from the
    model's config, before any model loads, and marked INVALID under skip_invalid."""
    from hivtp.errors import ConfigError
    from hivtp.run import check_method

    check_method(plain(cfg_of(tmp_path, "model=toy-llava", "method.params.layers=8-9-10")))
    with pytest.raises(ConfigError, match="past the feature layer"):
        check_method(plain(cfg_of(tmp_path, "model=toy-llava", "method.params.layers=9-10-11")))
    check_method(plain(cfg_of(tmp_path, "model=tiny-llava", "method.params.layers=9-10-11")))  # a 24-layer encoder
    folder = execute(cfg_of(tmp_path, "model=toy-llava", "method.params.layers=11", "skip_invalid=true"))
    assert "past the feature layer" in (folder / "INVALID").read_text() and n_calls(env) == 0


def test_accuracy_dtype_the_backend_cannot_honour_is_refused(tmp_path, env):
    from hivtp.errors import ConfigError

    with pytest.raises(ConfigError, match="accuracy.dtype=float16 .* takes no dtype"):
        execute(cfg_of(tmp_path, "accuracy.dtype=float16"))
    assert n_calls(env) == 0


def test_accuracy_runs_on_its_configured_device(tmp_path, env, monkeypatch):
    seen = {}

    def backend(**kw):
        seen.update(kw)
        return [{"benchmark": "hivtp_gqa", "metric": "accuracy", "value": 1.0}]

    monkeypatch.setattr("hivtp.run.load_callable", lambda spec: backend)
    folder = execute(cfg_of(tmp_path, "accuracy.device=cuda:1"))
    assert seen["device"] == "cuda:1"
    from hivtp.world import BENCHMARK_WORLD

    world = {} if BENCHMARK_WORLD == "plain" else {"world": BENCHMARK_WORLD}  # plain: runs from before worlds (tests/test_run.py)
    assert json.loads((folder / "config.json").read_text())["identity"]["accuracy"] == {"device": "cuda:1", "dtype": "auto", **world}
    assert folder.name == run_hash(plain(cfg_of(tmp_path, "accuracy.device=cuda:1")))


def test_qwen_configs_are_checked_as_attach_checks_them_before_loading(tmp_path, env):
    """Qwen2.5-VL: the family's default score layer (the middle full-attention block) is filled in as
    attach fills it, a score layer past the tower's depth and a CLS-based method are refused from the
    config alone (meta device, no weights), and marked INVALID under skip_invalid."""
    from hivtp.errors import ConfigError
    from hivtp.run import check_method

    check_method(plain(cfg_of(tmp_path, "model=tiny-qwen2.5-vl", "method=hivtp")))  # default layer fits 4 blocks
    check_method(plain(cfg_of(tmp_path, "model=qwen2.5-vl-7b", "method=hivtp", "method.params.layers=15")))
    with pytest.raises(ConfigError, match="past the feature layer"):
        check_method(plain(cfg_of(tmp_path, "model=qwen2.5-vl-7b", "method=hivtp", "method.params.layers=32")))
    with pytest.raises(ConfigError, match=r"\[CLS\]"):
        check_method(plain(cfg_of(tmp_path, "model=tiny-qwen2.5-vl", "method=fastervlm", "method.params.budget=64")))
    folder = execute(cfg_of(tmp_path, "model=tiny-qwen2.5-vl", "method=visionzip", "method.params.budget=64",
                            "skip_invalid=true"))
    assert "[CLS]" in (folder / "INVALID").read_text() and n_calls(env) == 0


def _local_checkpoint(folder: Path, scale: float = 1.0) -> Path:
    """A copy of the shipped toy's files whose weights are the toy's times ``scale`` (other weights,
    same name and shapes: what retraining a model does to its folder)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from hivtp.zoo import trained_dir

    shutil.copytree(trained_dir("toy-llava"), folder, dirs_exist_ok=True)
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v * scale for k, v in tensors.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_a_finished_run_is_redone_when_its_checkpoints_weights_change(tmp_path, env, capsys):
    from hivtp.zoo import weights_digest

    model = _local_checkpoint(tmp_path / "model")
    cfg = cfg_of(tmp_path / "runs", f"model.pretrained={model}")
    folder = execute(cfg)
    first = json.loads((folder / "DONE").read_text())["weights"]
    assert first == weights_digest(str(model)) and n_calls(env) == 1
    execute(cfg)
    assert n_calls(env) == 1  # same weights: skipped
    _local_checkpoint(model, scale=2.0)  # retrained in place: the name (and the run's hash) stay
    capsys.readouterr()
    assert execute(cfg) == folder and n_calls(env) == 2
    assert f"redo {folder.name}: it was measured on weights {first[:12]}" in capsys.readouterr().out
    assert json.loads((folder / "DONE").read_text())["weights"] == weights_digest(str(model)) != first
    assert is_complete(folder)


def test_a_run_sealed_before_weights_were_recorded_is_redone_and_latency_runs_on_random_weights_never_are(tmp_path, env, capsys):
    model = _local_checkpoint(tmp_path / "model")
    cfg = cfg_of(tmp_path / "runs", f"model.pretrained={model}")
    folder = execute(cfg)
    done = json.loads((folder / "DONE").read_text())
    (folder / "DONE").write_text(json.dumps({k: v for k, v in done.items() if k != "weights"}))  # an older hivtp's
    capsys.readouterr()
    execute(cfg)
    assert n_calls(env) == 2 and "weights it did not record" in capsys.readouterr().out
    latency = cfg_of(tmp_path / "runs", f"model.pretrained={model}", "mode=latency")
    latency_folder = execute(latency)
    assert json.loads((latency_folder / "DONE").read_text())["weights"] is None
    _local_checkpoint(model, scale=3.0)
    capsys.readouterr()
    execute(latency)  # it times the shape's random weights (latency_random_weights), not the checkpoint's
    assert f"skip {latency_folder.name}: finished" in capsys.readouterr().out


def test_a_run_answering_with_one_trained_checkpoint_and_timing_another_records_both(tmp_path, env):
    from hivtp.zoo import weights_digest

    model, other = _local_checkpoint(tmp_path / "model"), _local_checkpoint(tmp_path / "other", scale=0.5)
    both = cfg_of(tmp_path / "runs", f"model.pretrained={model}", f"model.latency_model={other}",
                  "model.latency_random_weights=false", "mode=both")
    recorded = _done(execute(both))["weights"]
    assert recorded not in (weights_digest(str(model)), weights_digest(str(other)), None) and n_calls(env) == 2
    execute(both)
    assert n_calls(env) == 2  # skipped
    _local_checkpoint(other, scale=0.25)  # the timed one retrained: the run is redone (both parts)
    execute(both)
    assert n_calls(env) == 4


def killed_latency(**kwargs):
    raise KeyboardInterrupt("killed during the latency part")


def test_a_killed_runs_finished_part_is_not_kept_when_the_weights_changed(tmp_path, env):
    model = _local_checkpoint(tmp_path / "model")
    runs = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):  # the accuracy part finished, the latency part was killed
        execute(cfg_of(runs, f"model.pretrained={model}", "mode=both", "backend.latency=test_run_folders:killed_latency"))
    assert n_calls(env) == 1
    _local_checkpoint(model, scale=2.0)
    folder = execute(cfg_of(runs, f"model.pretrained={model}", "mode=both"))
    assert n_calls(env) == 3  # the accuracy part again (other weights), then the latency part
    assert is_complete(folder)


def test_a_part_from_other_weights_is_gone_before_a_second_kill_can_seal_it(tmp_path, env, monkeypatch):
    model = _local_checkpoint(tmp_path / "model")
    runs = tmp_path / "runs"
    killed = ("mode=both", "backend.latency=test_run_folders:killed_latency")
    with pytest.raises(KeyboardInterrupt):  # weights A: the accuracy part finishes, the latency part is killed
        execute(cfg_of(runs, f"model.pretrained={model}", *killed))
    _local_checkpoint(model, scale=2.0)  # weights B
    monkeypatch.setenv("HIVTP_TEST_DIE", "1")
    with pytest.raises(KeyboardInterrupt):  # killed again, this time during the accuracy part
        execute(cfg_of(runs, f"model.pretrained={model}", *killed))
    monkeypatch.delenv("HIVTP_TEST_DIE")
    folder = execute(cfg_of(runs, f"model.pretrained={model}", "mode=both"))
    assert n_calls(env) == 3  # A's accuracy, then B's accuracy and latency: A's part was not sealed as B's
    assert is_complete(folder)


# ---------------------------------------------------------------------------- inputs besides the weights
def _data(folder: Path, questions: int = 20) -> Path:
    """An offline data folder laid out as ``make data`` lays it out; ``questions`` changes its content
    (the test backends read none of it: what matters is what the runner records)."""
    split = folder / "gqa_instructions" / "testdev"
    split.mkdir(parents=True, exist_ok=True)
    (split / "data-00000-of-00001.arrow").write_text("".join(f"question {i}\n" for i in range(questions)))
    (folder / "gqa_instructions" / "dataset_dict.json").write_text('{"splits": ["testdev"]}\n')
    return folder


def _done(folder: Path) -> dict:
    return json.loads((folder / "DONE").read_text())


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=2) + "\n")


def test_a_finished_run_is_redone_when_its_benchmark_data_changes(tmp_path, env, capsys):
    """Data rebuilt at the same path with other questions (or sizes) keeps the run's hash: the run records
    the data's digest and is redone, so that its rows never sit beside rows on the new questions."""
    data = _data(tmp_path / "data", questions=20)
    cfg = cfg_of(tmp_path / "runs", f"benchmark.data_dir={data}")
    folder = execute(cfg)
    first = _done(folder)["data"]
    assert first and n_calls(env) == 1
    (data / ".DS_Store").write_text("x")  # hidden files and datasets' derived caches are not data
    (data / "gqa_instructions" / "testdev" / "cache-0a1b2c.arrow").write_text("derived")
    capsys.readouterr()
    execute(cfg)
    assert n_calls(env) == 1 and f"skip {folder.name}: finished" in capsys.readouterr().out
    _data(data, questions=100)  # `make data` again, with other questions
    assert execute(cfg) == folder and n_calls(env) == 2
    assert f"redo {folder.name}: its benchmark data in {data} changed: {first[:12]} -> " in capsys.readouterr().out
    second = _done(folder)["data"]
    assert second not in (None, first) and is_complete(folder)
    (data / "pope").mkdir()
    (data / "pope" / "dataset_dict.json").write_text("{}\n")  # a benchmark added beside it
    execute(cfg)
    assert n_calls(env) == 3 and _done(folder)["data"] not in (first, second)


def test_a_finished_run_is_redone_when_its_checkpoints_config_changes(tmp_path, env, capsys):
    """config.json (here the feature layer), the chat template and the generation config change the answers
    with the same weights: a finished run is redone; hivtp's own notes beside the weights do not."""
    model = _local_checkpoint(tmp_path / "model")
    cfg = cfg_of(tmp_path / "runs", f"model.pretrained={model}", f"benchmark.data_dir={_data(tmp_path / 'data')}")
    folder = execute(cfg)
    weights, first = _done(folder)["weights"], _done(folder)["checkpoint_files"]
    assert weights and first and n_calls(env) == 1
    (model / "train_log.jsonl").write_text('{"step": 1}\n')  # the training record: no answer depends on it
    _edit_json(model / "hivtp_build.json", note="copied")
    execute(cfg)
    assert n_calls(env) == 1
    _edit_json(model / "config.json", vision_feature_layer=-3)
    capsys.readouterr()
    assert execute(cfg) == folder and n_calls(env) == 2
    out = capsys.readouterr().out
    assert f"redo {folder.name}: its checkpoint's files besides the weights (config.json" in out and first[:12] in out
    assert _done(folder)["weights"] == weights and _done(folder)["checkpoint_files"] != first  # weights unchanged
    for name, edit in (("chat_template.jinja", "{{ messages }}"), ("generation_config.json", None)):
        if edit is None:
            _edit_json(model / name, max_new_tokens=3)
        else:
            (model / name).write_text(edit)
        before = n_calls(env)
        execute(cfg)
        assert n_calls(env) == before + 1, name
    assert is_complete(folder)


def test_a_run_sealed_before_inputs_were_recorded_is_redone(tmp_path, env, capsys):
    cfg = cfg_of(tmp_path / "runs", f"benchmark.data_dir={_data(tmp_path / 'data')}")
    folder = execute(cfg)
    done = _done(folder)
    assert {"checkpoint_files", "data"} <= set(done)
    (folder / "DONE").write_text(json.dumps({k: v for k, v in done.items() if k not in ("checkpoint_files", "data")}))
    capsys.readouterr()
    execute(cfg)
    assert n_calls(env) == 2
    assert f"redo {folder.name}: it was made before runs recorded their inputs" in capsys.readouterr().out
    assert _done(folder)["data"] == done["data"] and is_complete(folder)


def test_a_latency_run_follows_its_checkpoints_config_and_weights_not_any_data(tmp_path, env, capsys):
    """Latency times synthetic prompts and images: no data. A checkpoint it loads (not random weights)
    brings its config (the architecture timed) and its weights (HIVTP's rule keeps as many tokens as its
    scores' layout gives); random weights bring nothing, so a latency run on them made before inputs were
    recorded is not redone."""
    model = _local_checkpoint(tmp_path / "model")
    cfg = cfg_of(tmp_path / "runs", "mode=latency", f"model.latency_model={model}", "model.latency_random_weights=false")
    folder = execute(cfg)
    assert _done(folder)["data"] is None and _done(folder)["checkpoint_files"] and n_calls(env) == 1
    execute(cfg)
    assert n_calls(env) == 1
    _local_checkpoint(model, scale=2.0)
    execute(cfg)
    assert n_calls(env) == 2
    _edit_json(model / "config.json", vision_feature_layer=-3)
    execute(cfg)
    assert n_calls(env) == 3
    random = cfg_of(tmp_path / "runs", "mode=latency")  # tiny-llava: timed on random weights from its shape
    folder = execute(random)
    done = _done(folder)
    assert (done["weights"], done["checkpoint_files"], done["data"]) == (None, None, None)
    (folder / "DONE").write_text(json.dumps({k: v for k, v in done.items() if k not in ("checkpoint_files", "data")}))
    capsys.readouterr()
    execute(random)
    assert n_calls(env) == 4 and f"skip {folder.name}: finished" in capsys.readouterr().out


@pytest.mark.parametrize("change", ["data", "config.json"])
def test_a_killed_runs_finished_part_is_not_kept_when_its_inputs_changed(tmp_path, env, change):
    model, data = _local_checkpoint(tmp_path / "model"), _data(tmp_path / "data")
    both = (f"model.pretrained={model}", f"benchmark.data_dir={data}", "mode=both")
    killed = (*both, "backend.latency=test_run_folders:killed_latency")
    with pytest.raises(KeyboardInterrupt):  # the accuracy part finished, the latency part was killed
        execute(cfg_of(tmp_path / "runs", *killed))
    with pytest.raises(KeyboardInterrupt):  # killed again, nothing changed: the accuracy part is kept
        execute(cfg_of(tmp_path / "runs", *killed))
    assert n_calls(env) == 1
    if change == "data":
        _data(data, questions=100)
    else:
        _edit_json(model / "config.json", vision_feature_layer=-3)
    folder = execute(cfg_of(tmp_path / "runs", *both))
    assert n_calls(env) == 3  # the accuracy part again (other inputs), then the latency part
    assert is_complete(folder)

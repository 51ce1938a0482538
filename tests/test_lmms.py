"""lmms-eval plugin ``hivtp_llava``, per-sample accounting and the accuracy runner.

Each end-to-end test (marked slow) runs lmms-eval on a tiny random LLaVA and 3 local GQA docs, in this
process (the runner's default; the model is loaded once for all of them) or, where said, in a
subprocess; runs are shared through module fixtures to keep the file to about two minutes on two cores.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest

from eval.builders import build_all, build_pope
from hivtp.errors import ConfigError
from hivtp.lmms.accounting import read_samples
from hivtp.lmms.args import split_model_args
from hivtp.lmms.plugin import MODEL_NAME, manifest
from hivtp.lmms.runner import EvalRunError, _run, _results_file, read_answers, run_accuracy, run_lmms_eval

TASK = "hivtp_gqa"
LIMIT = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    build_all(out, 6, benchmarks=("gqa",), progress=lambda _: None)
    return out


@pytest.fixture(scope="module")
def hivtp_runs(tiny_llava_dir, data_dir, tmp_path_factory):
    """hivtp (keep_ratio 0.5) at batch 1 and batch 2: (rows, out_dir) per batch size."""
    runs = {}
    for bs in (1, 2):
        out = tmp_path_factory.mktemp(f"hivtp_bs{bs}")
        rows = run_accuracy(str(tiny_llava_dir), "hivtp", {"keep_ratio": 0.5, "layers": (6, 7, 8)}, [TASK],
                            limit=LIMIT, batch_size=bs, output_dir=out, data_dir=data_dir)
        runs[bs] = (rows, out)
    return runs


# --- registration ---------------------------------------------------------------------------------
def test_manifest_registers_the_chat_class():
    from hivtp.lmms.cli import register
    from hivtp.lmms.model import HivtpLlava
    from lmms_eval.models import get_model

    m = manifest()
    assert m.model_id == MODEL_NAME == "hivtp_llava"
    register()
    assert get_model("hivtp_llava") is HivtpLlava


def test_entry_point_is_declared():
    """Passes once pyproject declares the entry point and the package is (re)installed (pip install -e .)."""
    eps = importlib.metadata.entry_points(group="lmms_eval.models")
    named = {ep.name: ep.value for ep in eps}
    assert named.get("hivtp_llava") == "hivtp.lmms.plugin:manifest", (
        'add [project.entry-points."lmms_eval.models"] hivtp_llava = "hivtp.lmms.plugin:manifest" to '
        "pyproject.toml and reinstall the package (pip install -e .)"
    )


@pytest.fixture(scope="module")
def task_index():
    """lmms-eval's task index plus the offline YAMLs (indexing reads YAMLs only; nothing is downloaded)."""
    from lmms_eval.tasks import TaskManager

    from hivtp.lmms.runner import TASKS_DIR

    return set(TaskManager("ERROR", include_path=str(TASKS_DIR)).all_tasks)


def test_paper_task_names_exist_in_lmms_eval_index(task_index):
    names = task_index
    for task in ("gqa", "pope_adv", "pope_pop", "pope_random", "mme", "scienceqa_img", "mmbench_en_dev",
                 "textvqa_val", "seedbench", "vqav2_val_lite"):
        assert task in names, task


def test_offline_task_names_exist_with_include_path(task_index):
    names = task_index
    assert {"hivtp_pope_adv", "hivtp_pope_pop", "hivtp_pope_random", "hivtp_gqa", "hivtp_mme",
            "hivtp_scienceqa_img", "hivtp_offline"} <= names


# --- model_args -------------------------------------------------------------------------------------
def test_model_args_are_split_and_typed():
    loader, plugin, params = split_model_args(
        {"device": "cpu", "batch_size": 2, "method": "hivtp", "layers": "6-7-8", "budget": "none", "keep_ratio": 0.25}
    )
    assert loader == {"device": "cpu", "batch_size": 2}
    assert plugin == {"method": "hivtp"}
    assert params == {"layers": "6-7-8", "budget": None, "keep_ratio": 0.25}
    assert split_model_args({"budget": 128.0})[2]["budget"] == 128
    with pytest.raises(ConfigError, match="whole number"):
        split_model_args({"budget": 12.5})


def test_plugin_builds_method_from_model_args(tiny_llava_dir):
    from hivtp.lmms.model import HivtpLlava

    lm = HivtpLlava(pretrained=str(tiny_llava_dir), method="hivtp", keep_ratio=0.5, layers="5-6", device="cpu")
    assert lm.pruned.method.params()["layers"] == [5, 6]
    assert lm.pruned.method.params()["keep_ratio"] == 0.5
    with pytest.raises(ConfigError, match="bogus"):
        HivtpLlava(pretrained=str(tiny_llava_dir), method="hivtp", bogus=1, device="cpu")


# --- end to end -------------------------------------------------------------------------------------
@pytest.mark.slow  # one lmms-eval subprocess (llava_hf, ~15 s on 2 cores) and one in-process run
def test_method_none_answers_equal_llava_hf(tiny_llava_dir, data_dir, tmp_path):
    # the stock class passes device_map="" to from_pretrained, which transformers 5 rejects: name cpu
    ref = run_lmms_eval("llava_hf", f"pretrained={tiny_llava_dir},device_map=cpu", [TASK], tmp_path / "ref", limit=LIMIT,
                        device="cpu", data_dir=data_dir)
    run_accuracy(str(tiny_llava_dir), "none", {}, [TASK], limit=LIMIT, output_dir=tmp_path / "none", data_dir=data_dir)
    expected, got = read_answers(tmp_path / "ref", TASK), read_answers(tmp_path / "none", TASK)
    assert len(expected) == LIMIT and any(expected.values())  # non-trivial: something was generated
    assert got == expected
    assert "exact_match" in json.dumps(ref["results"][TASK])


@pytest.mark.slow  # one in-process lmms-eval run (seconds once the model and tasks are loaded)
def test_hivtp_logs_tokens_kept_per_sample(hivtp_runs):
    rows, out = hivtp_runs[1]
    samples = read_samples(out / "accounting", TASK)
    assert [s["doc_id"] for s in samples] == list(range(LIMIT))
    kept = [s["tokens_kept"] for s in samples]
    assert all(0 < k < 576 for k in kept)
    for s in samples:
        assert s["tokens_global"] + s["tokens_local"] + s["tokens_corrected"] == s["tokens_kept"]
        assert s["select_ms"] >= 0
    mean = sum(kept) / len(kept)
    assert {r["benchmark"] for r in rows} == {TASK}
    assert all(r["tokens_kept_mean"] == pytest.approx(mean) for r in rows)
    results = _results_file(out)
    assert results["hivtp_accounting"][TASK]["tokens_kept_mean"] == pytest.approx(mean)


@pytest.mark.slow  # one in-process lmms-eval run (seconds once the model and tasks are loaded)
def test_tidy_rows_have_harness_columns(hivtp_runs):
    rows, _ = hivtp_runs[1]
    cols = {"model", "method", "params", "budget", "benchmark", "metric", "value", "n_samples", "tokens_kept_mean",
            "tokens_kept_std", "profile", "weights", "commit", "date"}
    assert rows and all(set(r) == cols for r in rows)
    row = next(r for r in rows if r["metric"] == "exact_match")
    assert row["n_samples"] == LIMIT and row["profile"] == "offline" and row["method"] == "hivtp"
    assert json.loads(row["params"]) == {"keep_ratio": 0.5, "layers": [6, 7, 8]}


@pytest.mark.slow  # one in-process lmms-eval run (seconds once the model and tasks are loaded)
def test_batch_two_equals_batch_one(hivtp_runs):
    (_, out1), (_, out2) = hivtp_runs[1], hivtp_runs[2]
    assert read_answers(out2, TASK) == read_answers(out1, TASK)
    keep1 = [s["tokens_kept"] for s in read_samples(out1 / "accounting", TASK)]
    keep2 = [s["tokens_kept"] for s in read_samples(out2 / "accounting", TASK)]
    assert keep1 == keep2


# --- failures -----------------------------------------------------------------------------------------
def _corrupt_pope(tmp_path: Path) -> Path:
    """A POPE dataset whose doc 1 has (lmms-eval itself decodes doc 0 when it builds the task) bytes that are not an image, and a task YAML reading it."""
    pope = build_pope(3, seed=0)["adversarial"]
    rows = pope.to_list()
    rows[1]["image"] = {"bytes": b"this is not a png", "path": None}
    from datasets import Dataset, DatasetDict

    DatasetDict({"adversarial": Dataset.from_list(rows, features=pope.features)}).save_to_disk(str(tmp_path / "pope"))
    from hivtp.lmms.runner import TASKS_DIR, render_tasks

    return render_tasks(TASKS_DIR, tmp_path / "tasks", tmp_path)


@pytest.mark.slow  # one in-process lmms-eval run (seconds once the model and tasks are loaded)
def test_llava_next_checkpoint_through_the_plugin_keeps_exact_image_budgets(tiny_llava_next_dir, data_dir, tmp_path):
    rows = run_accuracy(str(tiny_llava_next_dir), "hivtp", {"budget": 160}, [TASK], limit=LIMIT, batch_size=2,
                        output_dir=tmp_path, data_dir=data_dir)
    samples = read_samples(tmp_path / "accounting", TASK)
    assert [s["doc_id"] for s in samples] == list(range(LIMIT))
    assert all(s["tokens_base"] + s["tokens_tiles"] == 160 for s in samples)  # newlines are not counted
    assert all(s["tokens_kept"] == 160 + s["tokens_newline"] for s in samples)
    assert rows and all(r["benchmark"] == TASK and r["budget"] == 160 for r in rows)


@pytest.mark.slow  # one in-process lmms-eval run (seconds once the model and tasks are loaded)
def test_unreadable_image_names_the_sample(tiny_llava_dir, tmp_path):
    include = _corrupt_pope(tmp_path)
    with pytest.raises(EvalRunError, match=r"hivtp_pope_adv.*doc_id 1"):
        run_accuracy(str(tiny_llava_dir), "none", {}, ["hivtp_pope_adv"], limit=3, output_dir=tmp_path / "run",
                     include_path=include, data_dir=tmp_path)


@pytest.mark.slow  # one in-process lmms-eval run (seconds once the model and tasks are loaded)
def test_failed_run_is_reported_not_scored(tiny_llava_dir, data_dir, tmp_path):
    with pytest.raises(EvalRunError, match="bogus"):
        run_accuracy(str(tiny_llava_dir), "hivtp", {"bogus": 1}, [TASK], limit=1, output_dir=tmp_path, data_dir=data_dir)
    assert not list((tmp_path / "lmms").glob("**/*_results.json"))


def test_error_in_log_with_exit_zero_is_a_failure(tmp_path):
    cmd = [sys.executable, "-c", "print('Traceback (most recent call last):'); print('boom')"]
    with pytest.raises(EvalRunError, match="logged an error"):
        _run(cmd, tmp_path, tmp_path, timeout=60, progress=False)
    # as lmms-eval really logs it: colours, and a traceback glued to a progress bar
    script = ("print('Model Responding:   0%| 0/80 [00:00<?, ?it/s]Traceback (most recent call last):'); "
              "print('\\x1b[31m\\x1b[1mERROR   \\x1b[0m | x - Error during evaluation: k_layer=2 is too deep.')")
    with pytest.raises(EvalRunError, match="logged an error.*: k_layer=2 is too deep"):
        _run([sys.executable, "-c", script], tmp_path, tmp_path, timeout=60, progress=False)


def test_failed_cli_run_reports_the_cause_it_printed(tmp_path):
    """hivtp.lmms.cli exits 1 and prints the cause last; the runner quotes it."""
    from hivtp.lmms.cli import FAILURE_PREFIX

    script = (f"import sys; print('Traceback (most recent call last):'); "
              f"print({FAILURE_PREFIX!r} + 'FileNotFoundError: Directory x not found', file=sys.stderr); sys.exit(1)")
    with pytest.raises(EvalRunError, match="exited with status 1: FileNotFoundError: Directory x not found"):
        _run([sys.executable, "-c", script], tmp_path, tmp_path, timeout=60, progress=False)


@pytest.mark.parametrize("limit, batch_size, key", [(None, 0, "batch_size"), (None, 2.5, "batch_size"),
                                                     (0, 1, "limit"), (-4, 1, "limit")])
def test_bad_limit_or_batch_size_is_a_config_error(tmp_path, limit, batch_size, key):
    """lmms-eval would fail on these with ZeroDivisionError or "did not find any docs"."""
    with pytest.raises(ConfigError, match=f"benchmark.{key} must be"):
        run_accuracy("toy-llava", "none", {}, [TASK], limit=limit, batch_size=batch_size, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_missing_results_file_is_a_failure(tmp_path):
    (tmp_path / "lmms").mkdir()
    with pytest.raises(EvalRunError, match="no results file"):
        _results_file(tmp_path)


def test_accounting_files_per_rank_are_merged(tmp_path):
    from hivtp.lmms.accounting import AccountingWriter, summarize

    for rank, docs in ((0, (0, 2)), (1, (1, 3))):
        writer = AccountingWriter(tmp_path)
        for d in docs:
            writer.add("t", d, {"tokens_kept": 10 * (d + 1), "select_ms": 1.0, "images": [0]})
        assert [p.name for p in writer.flush(rank, world_size=2)] == [f"hivtp_samples_t_rank{rank}.jsonl"]
    AccountingWriter(tmp_path).flush()  # nothing collected: writes nothing
    rows = read_samples(tmp_path, "t")
    assert [r["doc_id"] for r in rows] == [0, 1, 2, 3] and "images" not in rows[0]
    stats = summarize(rows)
    assert stats["tokens_kept_mean"] == 25.0 and stats["tokens_kept_std"] == pytest.approx(11.1803, abs=1e-4)
    assert read_samples(tmp_path, "other") == []


def test_a_later_run_with_another_process_count_is_not_overridden_by_the_earlier_ones_files(tmp_path):
    """The same output folder, first two ranks at 192 tokens, then one process at 64, then three ranks at
    32: each run's counts are what ``read_samples`` gives (the earlier run's rank files would otherwise
    replace the later rows, since every rank's file is read); a task whose name extends this one's is kept."""
    from hivtp.lmms.accounting import AccountingWriter, summarize

    def run(world_size: int, tokens: int) -> float:
        for rank in range(world_size):
            writer = AccountingWriter(tmp_path)
            for d in range(rank, 6, world_size):
                writer.add("t", d, {"tokens_kept": tokens})
            writer.flush(rank, world_size)
        return summarize(read_samples(tmp_path, "t"))["tokens_kept_mean"]

    other = AccountingWriter(tmp_path)
    other.add("t_long", 0, {"tokens_kept": 1})
    other.flush(1, 2)
    assert run(2, 192) == 192.0
    assert run(1, 64) == 64.0
    assert run(3, 32) == 32.0
    assert run(2, 16) == 16.0  # a smaller rank count: rank 2's file from the 3-rank run goes too
    assert read_samples(tmp_path, "t_long") == [{"doc_id": 0, "task": "t_long", "tokens_kept": 1}]


def test_render_tasks_makes_data_paths_absolute(tmp_path):
    from hivtp.lmms.runner import TASKS_DIR, render_tasks

    out = render_tasks(TASKS_DIR, tmp_path / "tasks", tmp_path / "data")
    text = (out / "hivtp_pope_adv.yaml").read_text()
    assert f"dataset_path: {(tmp_path / 'data').resolve()}/pope" in text and "artifacts/data" not in text
    assert (out / "hivtp_utils.py").is_file() and (out / "hivtp_offline.yaml").is_file()


def test_missing_offline_data_says_how_to_build_it(tmp_path):
    with pytest.raises(EvalRunError, match="make data"):
        run_lmms_eval("hivtp_llava", "pretrained=toy-llava", [TASK], tmp_path / "out", data_dir=tmp_path / "nowhere")
    assert not (tmp_path / "out" / "command.txt").exists()  # failed before starting lmms-eval


@pytest.mark.slow  # one in-process lmms-eval run on 4 POPE questions (2 images)
def test_accounting_names_each_questions_image_so_the_bootstrap_can_resample_images(tiny_llava_dir, tmp_path):
    """POPE asks two questions of each image: the accounting rows of one image share its key and two images'
    keys differ, and the collector's units for that run are its two images (four questions)."""
    from datasets import load_from_disk

    from hivtp.results.collect import image_keys, logged_samples_file
    from hivtp.results.stats import read_logged_samples, scores_from_samples

    data = tmp_path / "data"
    build_all(data, 4, benchmarks=("pope",), progress=lambda _: None)
    task = "hivtp_pope_adv"
    run_accuracy(str(tiny_llava_dir), "none", {}, [task], limit=4, batch_size=2, output_dir=tmp_path / "out", data_dir=data)
    sources = load_from_disk(str(data / "pope"))["adversarial"]["image_source"][:4]
    keys = [s["image"] for s in read_samples(tmp_path / "out" / "accounting", task)]
    assert len(keys) == 4 and all(keys)
    assert [a == b for a in keys for b in keys] == [a == b for a in sources for b in sources]
    logged = read_logged_samples(logged_samples_file(tmp_path / "out", task))
    scores = scores_from_samples("pope_f1_score", logged, image_keys(tmp_path / "out", task))
    assert scores.unit == "image" and len(scores.keys) == len(set(sources)) and scores.n == 4

"""The in-process accuracy runner (issue 20 item 1): one model load and one task load per process,
many configurations, the same answers, scores, files and resume behaviour as one subprocess per run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eval.builders import build_all
from hivtp.lmms import inprocess
from hivtp.lmms.accounting import read_samples
from hivtp.lmms.runner import run_accuracy

TASKS = ["hivtp_gqa", "hivtp_mme"]  # equal generation kwargs: they would share batches if allowed
LIMIT = 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    build_all(data, LIMIT, benchmarks=("gqa", "mme"), progress=lambda _: None)
    return data


@pytest.fixture
def fresh_caches():
    inprocess.clear_caches()
    yield
    inprocess.clear_caches()  # free the model for the tests that follow


def _run(model, method, params, out, data_dir, inprocess_):
    rows = run_accuracy(model, method, params, TASKS, limit=LIMIT, batch_size=2, output_dir=out, data_dir=data_dir,
                        inprocess=inprocess_)
    return {
        "rows": [{k: v for k, v in r.items() if k not in ("commit", "date")} for r in rows],
        # lmms-eval's logged samples, whole: answers, filtered answers, per-document metric fields
        "samples": {t: next(out.glob(f"lmms/**/*_samples_{t}.jsonl")).read_text() for t in TASKS},
        "kept": {t: [(s["doc_id"], s["tokens_kept"]) for s in read_samples(out / "accounting", t)] for t in TASKS},
    }


@pytest.mark.slow  # two lmms-eval subprocesses and four in-process runs (~1 min on 2 cores)
def test_inprocess_runs_equal_subprocess_runs(tiny_llava_next_dir, data_dir, tmp_path, monkeypatch, fresh_caches):
    from hivtp.lmms.model import HivtpLlava

    loads = []
    create = HivtpLlava.create_from_arg_string.__func__
    monkeypatch.setattr(HivtpLlava, "create_from_arg_string",
                        classmethod(lambda cls, *a, **k: loads.append(a[0].split(",")[0]) or create(cls, *a, **k)))
    next_dir = str(tiny_llava_next_dir)
    configs = [("toy-llava", "hivtp", {"budget": 64}), ("toy-llava", "fastv", {"budget": 8, "k_layer": 1}),
               (next_dir, "none", {}), (next_dir, "hivtp", {"budget": 160})]
    got = [_run(m, meth, p, tmp_path / f"in{i}", data_dir, True) for i, (m, meth, p) in enumerate(configs)]
    assert len(loads) == 2  # one load per model; the second configuration of each re-attaches
    for i in (1, 3):  # compared: the configurations that ran on a model loaded for another one
        model, method, params = configs[i]
        expected = _run(model, method, params, tmp_path / f"sub{i}", data_dir, False)
        assert got[i] == expected, configs[i]
    # the two toy configurations keep different tokens (their answers to these 8 questions can agree: the
    # shipped toy answers them all alike), so config 1 cannot pass as a copy of config 0's run
    assert got[0]["kept"] != got[1]["kept"]
    assert all(n == 160 + s["tokens_newline"] for s in read_samples(tmp_path / "in3" / "accounting", "hivtp_gqa")
               for n in [s["tokens_kept"]])


def test_run_folder_keeps_the_subprocess_layout(data_dir, tmp_path, fresh_caches):
    out = tmp_path / "run"
    rows = run_accuracy("toy-llava", "hivtp", {"budget": 64}, ["hivtp_gqa"], limit=2, batch_size=2, output_dir=out,
                        data_dir=data_dir)
    assert {r["benchmark"] for r in rows} == {"hivtp_gqa"} and all(r["n_samples"] == 2 for r in rows)
    (results,) = out.glob("lmms/**/*_results.json")
    (samples,) = out.glob("lmms/**/*_samples_hivtp_gqa.jsonl")
    assert "hivtp_gqa" in json.loads(results.read_text())["hivtp_accounting"]
    assert [json.loads(line)["doc_id"] for line in samples.read_text().splitlines()] == [0, 1]
    assert [s["doc_id"] for s in read_samples(out / "accounting", "hivtp_gqa")] == [0, 1]
    assert (out / "tasks" / "hivtp_gqa.yaml").is_file() and (out / "lmms_eval.log").stat().st_size > 0
    assert "--model hivtp_llava" in (out / "command.txt").read_text()


def _cfg(runs: Path, data_dir: Path, budget: int):
    from hivtp.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[
            f"runs_root={runs}", "model=toy-llava", "mode=accuracy", "method=hivtp", f"method.params.budget={budget}",
            "benchmark.tasks=[hivtp_gqa]", "benchmark.limit=2", "benchmark.batch_size=2",
            f"benchmark.data_dir={data_dir}", "progress=false"])


def test_killed_inprocess_sweep_resumes_without_redoing_finished_runs(data_dir, tmp_path, monkeypatch, fresh_caches):
    """A sweep killed while its third configuration was being written (lmms-eval's files there, the
    run not finished) redoes that one only."""
    from hivtp.run import execute

    runs, evaluated = tmp_path / "runs", []
    real = inprocess.evaluate

    def killed_on_third(argv, *args, **kwargs):
        evaluated.append(argv[argv.index("--model_args") + 1])
        results = real(argv, *args, **kwargs)
        if len(evaluated) == 3:
            raise KeyboardInterrupt  # the kill: after lmms-eval wrote its files, before the run finished
        return results

    monkeypatch.setattr(inprocess, "evaluate", killed_on_third)
    budgets = (64, 128, 192)
    for budget in budgets[:2]:
        execute(_cfg(runs, data_dir, budget))
    with pytest.raises(KeyboardInterrupt):
        execute(_cfg(runs, data_dir, budgets[2]))
    finished = {p.parent: p.read_text() for p in runs.glob("*/DONE")}
    assert len(finished) == 2

    def counted(argv, *args, **kwargs):
        evaluated.append(argv[argv.index("--model_args") + 1])
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(inprocess, "evaluate", counted)
    evaluated.clear()
    folders = [execute(_cfg(runs, data_dir, b)) for b in budgets]
    assert len(evaluated) == 1 and "budget=192" in evaluated[0]  # only the unfinished run again
    assert {p.parent: p.read_text() for p in runs.glob("*/DONE") if p.parent in finished} == finished
    assert len(list(runs.glob("*/DONE"))) == 3
    rows = json.loads((folders[2] / "accuracy.json").read_text())
    assert rows and all(r["budget"] == 192 for r in rows)
    assert [s["tokens_kept"] for s in read_samples(folders[2] / "lmms" / "accounting", "hivtp_gqa")] == [192, 192]


def test_a_second_configuration_reads_and_processes_no_document_again(data_dir, tmp_path, monkeypatch, fresh_caches):
    """Configurations of one model answer the same batches of the same task objects: the processor
    outputs of the first are reused (image decoding and processing happen once per batch), and the
    answers are those of a fresh process (the slow test above compares whole sample files)."""
    from hivtp.lmms.model import HivtpLlava

    prompts = []
    real = HivtpLlava._prompts
    monkeypatch.setattr(HivtpLlava, "_prompts", lambda self, *a: prompts.append(a[1:3]) or real(self, *a))
    first = _run("toy-llava", "random", {"budget": 64}, tmp_path / "a", data_dir, True)
    batches = len(prompts)
    assert batches == len(TASKS) * LIMIT // 2  # batch size 2
    second = _run("toy-llava", "hivtp", {"budget": 64}, tmp_path / "b", data_dir, True)
    assert len(prompts) == batches  # nothing read again
    assert inprocess._model[1].input_cache.hits == batches
    assert first["samples"] != second["samples"]  # the cached inputs served another method's answers


def test_cache_budgets_come_from_the_environment_in_gib_and_bad_values_say_what_to_do(monkeypatch):
    from hivtp.errors import ConfigError

    for name, variable in inprocess.CACHE_VARIABLES.items():
        monkeypatch.delenv(variable, raising=False)
        assert inprocess.cache_bytes(name, 123) == 123
        monkeypatch.setenv(variable, "0.5")
        assert inprocess.cache_bytes(name, 123) == 2**29
        for bad in ("six", "-1", "nan", "inf"):
            monkeypatch.setenv(variable, bad)
            with pytest.raises(ConfigError, match=variable):
                inprocess.cache_bytes(name, 123)

"""lmms-eval's command line with ``hivtp_llava``: accounting without arguments, exit status, causes.

Issue 21: a plain ``python -m lmms_eval --model hivtp_llava ... --output_path X`` must record the
per-sample token counts (item 7); ``python -m hivtp.lmms.cli`` must exit non-zero on every error and
name a missing dataset's cause instead of ``RetryError[<Future ...>]`` (item 11).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.builders import build_all
from hivtp.lmms.accounting import DEFAULT_DIRNAME, default_directory, read_samples
from hivtp.lmms.cli import FAILURE_PREFIX, describe, root_cause
from hivtp.lmms.runner import REPO_ROOT, TASKS_DIR, render_tasks

TASK = "hivtp_gqa"


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    """(data dir, include path) of a 4-question offline GQA."""
    data = tmp_path_factory.mktemp("data")
    build_all(data, 4, benchmarks=("gqa",), progress=lambda _: None)
    return data, render_tasks(TASKS_DIR, data / "tasks", data)


def _lmms(module: str, model_args: str, include: Path, data: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HIVTP_DATA_DIR=str(data), HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", module, "--model", "hivtp_llava", "--model_args", model_args, "--tasks", TASK,
           "--include_path", str(include), "--limit", "2", "--batch_size", "2", "--device", "cpu", *extra]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_default_directory_is_beside_the_output_path(tmp_path):
    assert default_directory(["--model", "m", "--output_path", str(tmp_path)]) == tmp_path / DEFAULT_DIRNAME
    assert default_directory([f"--output_path={tmp_path}"]) == tmp_path / DEFAULT_DIRNAME
    assert default_directory(["--model", "m"]) == Path(".") / DEFAULT_DIRNAME


@pytest.mark.slow  # one lmms-eval subprocess (~20 s on 2 cores)
def test_plain_lmms_eval_run_records_tokens_kept_beside_its_output(gqa, tmp_path):
    data, include = gqa
    out = tmp_path / "X"
    proc = _lmms("lmms_eval", "pretrained=toy-llava,method=hivtp,budget=64", include, data, tmp_path,
                 "--output_path", str(out), "--log_samples")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folder = out / DEFAULT_DIRNAME
    samples = read_samples(folder, TASK)
    assert [s["doc_id"] for s in samples] == [0, 1]
    assert all(s["tokens_kept"] == 64 for s in samples)
    assert str(folder.resolve()) in proc.stdout + proc.stderr  # the log says where they are
    (logged,) = [f for f in out.glob(f"**/*_samples_{TASK}.jsonl") if f.parent != folder]  # lmms-eval's own
    assert sorted(json.loads(line)["doc_id"] for line in logged.read_text().splitlines()) == [0, 1]


@pytest.mark.slow  # one lmms-eval subprocess (~15 s on 2 cores)
def test_cli_exits_non_zero_on_a_bad_model_arg(gqa, tmp_path):
    data, include = gqa
    proc = _lmms("hivtp.lmms.cli", "pretrained=toy-llava,method=hivtp,bogus=1", include, data, tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(FAILURE_PREFIX) and "bogus" in last


@pytest.mark.slow  # one lmms-eval subprocess (~15 s on 2 cores)
def test_cli_names_a_missing_dataset_not_a_retry_error(gqa, tmp_path):
    _, include = gqa
    # the repo's own YAMLs name artifacts/data relative to the working directory, which has none here
    proc = _lmms("hivtp.lmms.cli", "pretrained=toy-llava", TASKS_DIR, tmp_path / "nowhere", tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(FAILURE_PREFIX + "FileNotFoundError") and "gqa_instructions" in last
    assert "make data" in last and "RetryError" not in last


def test_root_cause_unwraps_tenacity_retry_errors():
    import tenacity

    @tenacity.retry(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    def load():
        raise FileNotFoundError("Directory artifacts/data/mme not found")

    with pytest.raises(tenacity.RetryError) as info:
        load()
    cause = root_cause(info.value)
    assert isinstance(cause, FileNotFoundError) and "artifacts/data/mme" in str(cause)
    assert describe(info.value).startswith("FileNotFoundError: Directory artifacts/data/mme not found")
    plain = ValueError("x")
    assert root_cause(plain) is plain and describe(plain) == "ValueError: x"

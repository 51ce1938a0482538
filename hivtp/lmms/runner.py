"""Run lmms-eval with ``hivtp_llava`` and return tidy accuracy rows (harness.md).

Two paths, the same command line, the same files:
- in process (default, :mod:`hivtp.lmms.inprocess`): the model and the tasks are loaded once per
  process and every configuration re-attaches its method, so a Hydra multirun or ``make reproduce``
  pays one model load and one task load; errors raise :class:`EvalRunError` with their cause;
- one subprocess ``python -m hivtp.lmms.cli`` per run (``inprocess=False``,
  :func:`run_accuracy_subprocess`, :func:`run_lmms_eval`): for other models (``llava_hf``), a
  ``timeout``, or a run that must not share this process. A run is judged by its artefacts: non-zero
  exit, no results file, a requested task missing from it, or a traceback / ERROR line in the log all
  raise :class:`EvalRunError` -- never a score.

The offline task YAMLs (``eval/tasks``) name their data relative to the repository
(``artifacts/data/...``); the runner renders them with absolute paths into ``<output_dir>/tasks``
so that the run does not depend on the working directory and the exact YAMLs are kept with it.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_text
from ..errors import ConfigError, HivtpError
from ..latency.fingerprint import git_commit
from ..world.builds import is_offline_task
from ..zoo import TRAINED, available_shapes, resolve_checkpoint
from .accounting import read_samples, summarize

__all__ = ["run_accuracy", "run_accuracy_subprocess", "run_lmms_eval", "read_answers", "EvalRunError", "REPO_ROOT",
           "TASKS_DIR", "DATA_DIR", "model_args_string"]

REPO_ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO_ROOT / "eval" / "tasks"
DATA_DIR = REPO_ROOT / "artifacts" / "data"
SKIP_KEYS = ("alias", "samples", "name", "sample_len", "sample_count")
# Matched on the log with ANSI colours removed; a traceback may follow a progress bar on its line.
ERROR_PATTERNS = (re.compile(r"Traceback \(most recent call last\)"), re.compile(r"\|\s*ERROR\s*\|"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Why a run failed: hivtp.lmms.cli's last line (the cause), else lmms-eval's own error line.
REASONS = (re.compile(r"hivtp\.lmms\.cli: evaluation failed: (.*)"), re.compile(r"Error during evaluation: (.*)"))


class EvalRunError(HivtpError, RuntimeError):
    """An lmms-eval run that did not produce valid results (the message holds the log's tail)."""


def plugin_model(path: str) -> str:
    """The lmms-eval model of this package that serves a checkpoint: ``hivtp_qwen2_5_vl`` for Qwen2.5-VL
    (by its config.json's model_type, or a hub id naming it), else ``hivtp_llava``."""
    config = Path(path) / "config.json"
    if config.is_file():
        family = json.loads(config.read_text()).get("model_type")
    else:
        family = "qwen2_5_vl" if "qwen2.5-vl" in str(path).lower() else "llava"
    return "hivtp_qwen2_5_vl" if family == "qwen2_5_vl" else "hivtp_llava"


def model_args_string(pretrained: str, method: str, params: dict[str, Any], accounting_dir: Path,
                      dtype: str = "auto") -> str:
    """``--model_args`` for the plugin models; sequences become dash lists (``layers=6-7-8``). ``dtype`` is
    named only when it is not lmms-eval's default (``auto``: the checkpoint's own)."""
    loading = {} if dtype in (None, "auto") else {"dtype": str(dtype)}
    parts = {"pretrained": pretrained, **loading, "method": method, **params, "accounting_dir": str(accounting_dir)}
    out = []
    for key, value in parts.items():
        if isinstance(value, (list, tuple)):
            value = "-".join(str(v) for v in value)
        text = "none" if value is None else str(value)
        if "," in text or "=" in text:
            raise EvalRunError(f"model_args value {key}={text!r} contains ',' or '=', which lmms-eval cannot parse.")
        out.append(f"{key}={text}")
    return ",".join(out)


def render_tasks(src: Path, dst: Path, data_dir: Path) -> Path:
    """Copy the task folder to ``dst``, with ``artifacts/data`` replaced by ``data_dir`` (absolute)."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.suffix in (".yaml", ".py"):
            text = path.read_text()
            if path.suffix == ".yaml":
                text = text.replace("dataset_path: artifacts/data", f"dataset_path: {data_dir.resolve()}")
            (dst / path.name).write_text(text)
    return dst


def _weights(pretrained: str) -> str:
    if pretrained in TRAINED:
        return "trained"
    if pretrained in available_shapes():
        return "random"
    return "pretrained"


def _command(model: str, model_args: str, tasks: Sequence[str], limit, batch_size: int, device: str, out: Path, include: Path) -> list[str]:
    cmd = [sys.executable, "-m", "hivtp.lmms.cli", "--model", model, "--model_args", model_args,
           "--tasks", ",".join(tasks), "--batch_size", str(batch_size), "--device", device,
           "--output_path", str(out / "lmms"), "--log_samples", "--include_path", str(include), "--verbosity", "INFO"]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd


def _run(cmd: list[str], out: Path, data_dir: Path, timeout: float | None, progress: bool) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HIVTP_DATA_DIR"] = str(data_dir.resolve())
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    log_path = out / "lmms_eval.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:  # stream: long runs show progress, the log is kept either way
            log.write(line)
            if progress:
                sys.stderr.write(line)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            raise EvalRunError(f"lmms-eval timed out after {timeout}s; log: {log_path}") from exc
    text = ANSI.sub("", log_path.read_text())
    if rc != 0:
        raise EvalRunError(f"lmms-eval exited with status {rc}{_reason(text)}; log: {log_path}\n{_tail(text)}")
    for pattern in ERROR_PATTERNS:
        if pattern.search(text):
            raise EvalRunError(f"lmms-eval logged an error (it exits 0 regardless){_reason(text)}; log: {log_path}\n{_tail(text)}")
    return text


def _reason(text: str) -> str:
    for pattern in REASONS:
        found = pattern.search(text)
        if found:
            return f": {found.group(1).strip()}"
    return ""


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def _results_file(out: Path) -> dict[str, Any]:
    files = sorted((out / "lmms").glob("**/*_results.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise EvalRunError(f"lmms-eval wrote no results file under {out / 'lmms'}; log: {out / 'lmms_eval.log'}")
    return json.loads(files[-1].read_text())


def _metric_rows(results: dict[str, Any], tasks: Sequence[str]) -> list[tuple[str, str, float, int]]:
    """(benchmark, metric, value, n_samples) for every numeric metric of every leaf task."""
    per_task = results.get("results", {})
    leaves = [t for t in per_task if t not in results.get("group_subtasks", {}) or not results["group_subtasks"][t]]
    groups = results.get("group_subtasks", {})
    missing = [t for t in tasks if t not in per_task and t not in groups]
    if missing or not leaves:
        raise EvalRunError(f"results file lacks task(s) {missing or list(tasks)}; the run did not evaluate them.")
    rows = []
    for task in sorted(leaves):
        n = int(results.get("n-samples", {}).get(task, {}).get("effective", 0))
        for key, value in per_task[task].items():
            metric, _, _filter = key.partition(",")
            if metric in SKIP_KEYS or "_stderr" in metric or not isinstance(value, (int, float)):
                continue
            rows.append((task, metric, float(value), n))
    if not rows:
        raise EvalRunError("results file holds no numeric metric.")
    return rows


def _check_world(data: Path) -> None:
    """Refuse offline data drawn in another world than the benchmarks' (``hivtp.world.BENCHMARK_WORLD``):
    its answers hold for other images than the ones the toy is measured on."""
    from ..world import BENCHMARK_WORLD
    from ..world.builds import stale_worlds

    stale = stale_worlds(data)
    if stale:
        raise EvalRunError(
            f"the offline mini-benchmarks in {data} were drawn in another world than the benchmarks' "
            f"({BENCHMARK_WORLD}): {stale}. Rebuild them: `make data` (or `python scripts/build_data.py --out {data}`)."
        )


def _prepare(tasks: Sequence[str], output_dir: Path | str, data_dir: Path | str | None,
             include_path: Path | str | None) -> tuple[list[str], Path, Path, Path]:
    """(tasks, output folder, data folder, include path) for one run; the output folder is emptied of an
    earlier run's lmms-eval files. With the repo's YAMLs (``include_path=None``) they are rendered
    against ``data_dir`` into ``<output_dir>/tasks``, the include path returned."""
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise EvalRunError("no tasks given; name lmms-eval tasks, e.g. ['hivtp_pope_adv'].")
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "lmms", ignore_errors=True)  # a reused folder must not lend an old run's results
    data = Path(data_dir) if data_dir is not None else DATA_DIR
    include = Path(include_path).resolve() if include_path is not None else TASKS_DIR
    if include == TASKS_DIR.resolve():  # the repo's YAMLs name data relative to the repo: render them
        offline = [t for t in tasks if is_offline_task(t)]
        if offline and not data.is_dir():
            raise EvalRunError(
                f"the offline mini-benchmarks are not built: {data} does not exist (tasks {offline}). "
                "Run `make data` (or `python scripts/build_data.py --out DIR` and pass data_dir=DIR)."
            )
        if offline:
            _check_world(data)
        include = render_tasks(TASKS_DIR, out / "tasks", data).resolve()  # kept with the run
    return tasks, out, data, include


_SHARED_TASKS: dict[str, Path] = {}


def _shared_tasks(data: Path) -> Path:
    """The repo's YAMLs rendered against ``data`` once per process (removed at exit)."""
    key = str(data.resolve())
    if key not in _SHARED_TASKS:
        folder = Path(tempfile.mkdtemp(prefix="hivtp-tasks-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _SHARED_TASKS[key] = render_tasks(TASKS_DIR, folder, data)
    return _SHARED_TASKS[key]


def run_lmms_eval(
    model: str,
    model_args: str,
    tasks: Sequence[str],
    output_dir: Path | str,
    limit: int | float | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    include_path: Path | str | None = None,
    data_dir: Path | str | None = None,
    timeout: float | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """One lmms-eval subprocess run of any model (``hivtp_llava``, or ``llava_hf`` for reference);
    returns its results file's content. Logged samples are under ``<output_dir>/lmms``. Raises EvalRunError."""
    tasks, out, data, include = _prepare(tasks, output_dir, data_dir, include_path)
    cmd = _command(model, model_args, tasks, limit, batch_size, device, out, include)
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    _run(cmd, out, data, timeout, progress)
    results = _results_file(out)
    _metric_rows(results, tasks)  # validates: every task present, numeric metrics
    return results


def _run_inprocess(model: str, model_args: str, tasks: Sequence[str], output_dir: Path | str, limit, batch_size: int,
                   device: str, include_path, data_dir) -> dict[str, Any]:
    """:func:`run_lmms_eval` for a plugin model in this process (:mod:`hivtp.lmms.inprocess`)."""
    from .cli import describe
    from .inprocess import evaluate

    tasks, out, data, include = _prepare(tasks, output_dir, data_dir, include_path)
    # the run's own rendered YAMLs are named in the command; the tasks are loaded from a per-process
    # copy of the same YAMLs, so that every run shares one task index and one loaded dataset per task
    index = _shared_tasks(data) if include == (out / "tasks").resolve() else include
    cmd = _command(model, model_args, tasks, limit, batch_size, device, out, include)
    (out / "command.txt").write_text("# evaluated in process (hivtp.lmms.inprocess), as if by:\n" + " ".join(cmd) + "\n")
    log_path = out / "lmms_eval.log"
    try:
        evaluate(cmd[3:], data, log_path, task_index=index)  # cmd[3:]: what follows `python -m hivtp.lmms.cli`
    except Exception as exc:  # noqa: BLE001 - any failure is the run's, reported with its cause
        raise EvalRunError(f"lmms-eval failed: {describe(exc)}; log: {log_path}") from exc
    results = _results_file(out)
    _metric_rows(results, tasks)
    return results


def check_run_size(limit: int | float | None, batch_size: int) -> None:
    """A clear error for a limit or batch size lmms-eval would fail on obscurely (ZeroDivisionError,
    "did not find any docs") or misread."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"benchmark.batch_size must be a whole number >= 1, got {batch_size!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise ConfigError(f"benchmark.limit must be a number of questions per task >= 1 (or a fraction in (0, 1), "
                          f"or null for every question), got {limit!r}.")


def run_accuracy(
    pretrained: str,
    method: str = "none",
    params: dict[str, Any] | None = None,
    tasks: Sequence[str] = ("hivtp_offline",),
    limit: int | float | None = None,
    batch_size: int = 1,
    output_dir: Path | str = Path("runs/accuracy"),
    device: str = "cpu",
    include_path: Path | str | None = None,
    data_dir: Path | str | None = None,
    weights: str | None = None,
    timeout: float | None = None,
    progress: bool = False,
    dtype: str = "auto",
    inprocess: bool = True,
) -> list[dict[str, Any]]:
    """Run lmms-eval with ``hivtp_llava`` for (model, method, params, tasks, limit); tidy accuracy rows.

    ``pretrained``: shape name | local dir | hub id (:func:`hivtp.zoo.resolve_checkpoint`).
    ``include_path``: task YAML folder (default: the repo's offline tasks, rendered against ``data_dir``,
    default ``artifacts/data``). Per-sample accounting goes to ``<output_dir>/accounting``; its
    mean / spread per task is added to the results file (``hivtp_accounting``) and to the rows.
    ``dtype``: the weights' dtype (``auto``: the checkpoint's own, lmms-eval's default; else e.g. ``float16``).
    ``inprocess``: evaluate in this process with the cached model and tasks (default); False starts
    one lmms-eval subprocess (the only path that honours ``timeout``).
    Raises :class:`EvalRunError` when the run failed, ConfigError for a bad limit or batch size.
    """
    check_run_size(limit, batch_size)
    params = dict(params or {})
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    out = Path(output_dir).resolve()
    accounting = out / "accounting"
    shutil.rmtree(accounting, ignore_errors=True)
    path = resolve_checkpoint(pretrained)
    model = plugin_model(path)
    model_args = model_args_string(path, method, params, accounting, dtype)
    if inprocess:
        results = _run_inprocess(model, model_args, tasks, out, limit, batch_size, device, include_path, data_dir)
    else:
        results = run_lmms_eval(model, model_args, tasks, out, limit, batch_size, device,
                                include_path, data_dir, timeout, progress)
    _add_accounting(out, results, accounting)
    return _rows(results, tasks, pretrained, method, params, accounting, weights or _weights(pretrained))


#: :func:`run_accuracy` with one lmms-eval subprocess per run (the signature stays inspectable, so the
#: runner passes it the same optional arguments); as a config backend:
#: ``backend.accuracy=hivtp.lmms.runner:run_accuracy_subprocess``
run_accuracy_subprocess = functools.partial(run_accuracy, inprocess=False)


def _add_accounting(out: Path, results: dict[str, Any], accounting: Path) -> None:
    """Add per-task tokens-kept mean / spread to the results file (key ``hivtp_accounting``)."""
    results["hivtp_accounting"] = {t: summarize(read_samples(accounting, t)) for t in results.get("results", {})}
    path = sorted((out / "lmms").glob("**/*_results.json"), key=lambda p: p.stat().st_mtime)[-1]
    write_text(path, json.dumps(results, indent=2, default=str))


def _rows(results, tasks, pretrained, method, params, accounting: Path, weights: str) -> list[dict[str, Any]]:
    commit, date = git_commit(), _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for task, metric, value, n in _metric_rows(results, tasks):
        stats = summarize(read_samples(accounting, task))
        rows.append({
            "model": pretrained, "method": method, "params": json.dumps(params, sort_keys=True),
            "budget": params.get("budget"), "benchmark": task, "metric": metric, "value": value, "n_samples": n,
            "tokens_kept_mean": stats.get("tokens_kept_mean"), "tokens_kept_std": stats.get("tokens_kept_std"),
            "profile": "offline" if is_offline_task(task) else "paper", "weights": weights,
            "commit": commit, "date": date,
        })
    return rows


def read_answers(output_dir: Path | str, task: str) -> dict[int, str]:
    """doc_id -> the model's (filtered) answer, from lmms-eval's logged samples of the last run."""
    files = sorted((Path(output_dir) / "lmms").glob(f"**/*_samples_{task}.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise EvalRunError(f"no logged samples for task {task!r} under {Path(output_dir) / 'lmms'}.")
    answers = {}
    for line in files[-1].read_text().splitlines():
        row = json.loads(line)
        resp = row["filtered_resps"]
        answers[int(row["doc_id"])] = resp[0] if isinstance(resp, list) else resp
    return answers

"""``hivtp_llava`` batches: requests of different tasks never share a batch (issue 21 item 1).

GQA and MME (offline) have identical generation kwargs; with 6 documents each and batch 4 (or 3 per
data-parallel shard and batch 2) a batch grouped by kwargs alone would hold documents of both tasks
and read them all from the first task's dataset. Runs in this process on the shipped toy-llava, so
the answers are real words, not a random model's noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.builders import build_all
from hivtp.lmms.accounting import AccountingWriter, read_samples
from hivtp.lmms.runner import TASKS_DIR, render_tasks

TASKS = ("hivtp_gqa", "hivtp_mme")
N_DOCS = 6  # not a multiple of any batch size used here


@pytest.fixture(scope="module")
def offline_tasks(tmp_path_factory):
    """(task manager, task objects) for GQA and MME with N_DOCS documents each."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    data = tmp_path_factory.mktemp("data")
    build_all(data, N_DOCS, benchmarks=("gqa", "mme"), progress=lambda _: None)
    include = render_tasks(TASKS_DIR, data / "tasks", data)
    mp = pytest.MonkeyPatch()
    mp.setenv("HIVTP_DATA_DIR", str(data))  # GQA's doc_to_visual reads the image dataset from here
    manager = TaskManager("WARNING", include_path=str(include))
    yield manager, get_task_dict(list(TASKS), manager, "chat")
    mp.undo()


@pytest.fixture(scope="module")
def toy_lm():
    from hivtp.lmms.model import HivtpLlava

    return HivtpLlava(pretrained="toy-llava", method="hivtp", budget=64, device="cpu")


def _generate(lm, tasks, batch_size: int, accounting: Path, rank: int = 0, world_size: int = 1) -> dict:
    """(task, doc_id) -> answer for this rank's shard of every task, all requests in one call."""
    lm.batch_size_per_gpu, lm._rank, lm._world_size = batch_size, rank, world_size
    lm.accounting = AccountingWriter(accounting)
    requests = []
    for name, task in tasks.items():
        lm.task_dict[name] = task.dataset
        task.build_all_requests(limit=N_DOCS, rank=rank, world_size=world_size)
        requests += task.instances
    answers = lm.generate_until(requests)
    lm._rank, lm._world_size = 0, 1
    return {(r.task_name, r.doc_id): getattr(a, "text", a) for r, a in zip(requests, answers)}


def _kept(accounting: Path) -> dict:
    return {(t, s["doc_id"]): s["tokens_kept"] for t in TASKS for s in read_samples(accounting, t)}


def test_tasks_with_equal_kwargs_are_never_batched_together(offline_tasks, toy_lm, tmp_path):
    """Batch 4 over 6 + 6 documents, and batch 2 over data-parallel shards of 3 + 3, answer exactly as
    batch 1; every task's accounting holds its own documents."""
    _, tasks = offline_tasks
    expected = _generate(toy_lm, tasks, 1, tmp_path / "b1")
    assert sorted(expected) == sorted((t, d) for t in TASKS for d in range(N_DOCS))
    # meaningful answers: MME's mostly yes / no, GQA's mostly not, so a document answered as the other
    # task's shows
    yes_no = {t: sum(expected[(t, d)].strip() in ("Yes", "No") for d in range(N_DOCS)) for t in TASKS}
    assert yes_no["hivtp_mme"] > N_DOCS // 2 > yes_no["hivtp_gqa"]
    kept = _kept(tmp_path / "b1")
    assert sorted(kept) == sorted(expected)

    assert _generate(toy_lm, tasks, 4, tmp_path / "b4") == expected
    assert _kept(tmp_path / "b4") == kept

    shards = {}
    for rank in (0, 1):
        shards.update(_generate(toy_lm, tasks, 2, tmp_path / "dp", rank=rank, world_size=2))
    assert shards == expected
    assert _kept(tmp_path / "dp") == kept
    assert sorted(p.name for p in (tmp_path / "dp").iterdir()) == sorted(
        f"hivtp_samples_{t}_rank{r}.jsonl" for t in TASKS for r in (0, 1))


def test_lmms_eval_scores_batched_multi_task_runs_like_batch_one(offline_tasks, toy_lm, tmp_path):
    """Through lmms-eval's evaluator (its filters and metrics): batch 4 scores and logs as batch 1."""
    from lmms_eval import evaluator

    manager, _ = offline_tasks
    runs = {}
    for batch_size in (1, 4):
        toy_lm.batch_size_per_gpu = batch_size
        toy_lm.accounting = AccountingWriter(tmp_path / f"acc{batch_size}")
        out = evaluator.simple_evaluate(model=toy_lm, tasks=list(TASKS), limit=N_DOCS, task_manager=manager,
                                        log_samples=True, verbosity="WARNING")
        answers = {(t, s["doc_id"]): s["filtered_resps"] for t in TASKS for s in out["samples"][t]}
        runs[batch_size] = (out["results"], answers)
    assert len(runs[1][1]) == 2 * N_DOCS
    assert runs[4] == runs[1]

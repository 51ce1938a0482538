"""Session fixtures: offline checkpoints built once per test session from the shipped shapes."""

from __future__ import annotations

import os

import pytest
import torch

from hivtp.lmms.inprocess import CACHE_VARIABLES
from hivtp.zoo import build_checkpoint, load_pretrained


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers), each worker gets its share of the cores:
    torch's default (every core per process) would oversubscribe them, and OpenMP threads that wait
    for a busy core spin instead of sleeping."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        # torch's default already honours CPU affinity and OMP_NUM_THREADS; the variable passes the
        # share on to the processes tests start (lmms-eval runs, sweeps)
        threads = max(1, torch.get_num_threads() // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


# The longest test files, longest first (`make test PYTEST_ARGS=--durations=30`: the calibration
# module's measurement takes ~4 min on one thread, test_next's real-shape wiring ~75 s).
LONGEST_FILES = ("test_toy_calibration.py", "test_next.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first, then files by how many `slow` tests they hold (order within a file
    kept). Under pytest-xdist's --dist loadfile a file is one unit of work: starting the longest first
    keeps the last minutes from running on one worker while the other idles."""
    slow = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    rank = lambda item: (LONGEST_FILES.index(item.path.name) if item.path.name in LONGEST_FILES else len(LONGEST_FILES),
                         -slow[item.path])
    items.sort(key=rank)  # stable


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch):
    torch.manual_seed(0)
    # a developer's cache budgets must not change what tests see
    for variable in CACHE_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    yield


def _checkpoint(tmp_path_factory, shape: str):
    return build_checkpoint(shape, tmp_path_factory.mktemp("ckpt") / shape, seed=0)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny LLaVA-1.5 checkpoint on disk (random weights, shipped tokenizer)."""
    return _checkpoint(tmp_path_factory, "tiny-llava")


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_dir):
    return load_pretrained(str(tiny_llava_dir))  # from_pretrained, exactly as a hub checkpoint would be


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory):
    """A tiny LLaVA-NeXT checkpoint on disk (random weights, shipped tokenizer, 3 grid pinpoints)."""
    return _checkpoint(tmp_path_factory, "tiny-llava-next")


@pytest.fixture(scope="session")
def tiny_llava_next(tiny_llava_next_dir):
    return load_pretrained(str(tiny_llava_next_dir))


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL checkpoint on disk (random weights, shipped tokenizer + Qwen special tokens)."""
    return _checkpoint(tmp_path_factory, "tiny-qwen2.5-vl")


@pytest.fixture(scope="session")
def tiny_qwen(tiny_qwen_dir):
    return load_pretrained(str(tiny_qwen_dir))

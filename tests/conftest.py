"""Session fixtures: offline checkpoints built once per test session from the shipped shapes."""

from __future__ import annotations

import pytest
import torch

from hivtp.zoo import build_checkpoint, load_pretrained


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
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

"""Session fixtures: offline checkpoints built once per test session from the shipped shapes."""

from __future__ import annotations

import pytest
import torch

from hivtp.zoo import build_checkpoint


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def _checkpoint(tmp_path_factory, shape: str):
    return build_checkpoint(shape, tmp_path_factory.mktemp("ckpt") / shape, seed=0)


def _load(model_class: str, path):
    """(model, processor) loaded with from_pretrained, exactly as a hub checkpoint would be."""
    import transformers

    model = getattr(transformers, model_class).from_pretrained(path).eval()
    return model, transformers.AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny LLaVA-1.5 checkpoint on disk (random weights, shipped tokenizer)."""
    return _checkpoint(tmp_path_factory, "tiny-llava")


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_dir):
    return _load("LlavaForConditionalGeneration", tiny_llava_dir)


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory):
    """A tiny LLaVA-NeXT checkpoint on disk (random weights, shipped tokenizer, 3 grid pinpoints)."""
    return _checkpoint(tmp_path_factory, "tiny-llava-next")


@pytest.fixture(scope="session")
def tiny_llava_next(tiny_llava_next_dir):
    return _load("LlavaNextForConditionalGeneration", tiny_llava_next_dir)

"""Session fixtures: offline checkpoints built once per test session from the shipped shapes."""

from __future__ import annotations

import pytest
import torch

from hivtp.zoo import build_checkpoint


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny LLaVA-1.5 checkpoint on disk (random weights, shipped tokenizer)."""
    return build_checkpoint("tiny-llava", tmp_path_factory.mktemp("ckpt") / "tiny-llava", seed=0)


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_dir):
    """(model, processor) loaded with from_pretrained, exactly as a hub checkpoint would be."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    return model, processor


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory):
    """A tiny LLaVA-NeXT checkpoint on disk (random weights, shipped tokenizer, 3 grid pinpoints)."""
    return build_checkpoint("tiny-llava-next", tmp_path_factory.mktemp("ckpt") / "tiny-llava-next", seed=0)


@pytest.fixture(scope="session")
def tiny_llava_next(tiny_llava_next_dir):
    """(model, processor) of the tiny LLaVA-NeXT, loaded with from_pretrained."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_next_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_next_dir)
    return model, processor

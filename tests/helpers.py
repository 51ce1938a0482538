"""Shared test utilities: deterministic images and processor inputs for the offline models."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

DEFAULT_PROMPT = "What is in the picture?"


def make_image(seed: int, size: tuple[int, int] = (336, 336)) -> Image.Image:
    """A deterministic picture: a noisy background and a few coloured shapes, so attention maps
    are not uniform. ``size`` is (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        s = int(rng.integers(20, max(21, min(w, h) // 3)))
        colour = tuple(int(c) for c in rng.integers(80, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + s, y0 + s], fill=colour)
        else:
            draw.rectangle([x0, y0, x0 + s, y0 + s], fill=colour)
    return img


def chat_prompt(processor, text: str = DEFAULT_PROMPT, images: int = 1) -> str:
    content = [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": text}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def llava_inputs(processor, seeds, texts=None, sizes=None) -> dict:
    """Processor outputs for one image per prompt (left padded)."""
    seeds = list(seeds)
    texts = texts or [DEFAULT_PROMPT] * len(seeds)
    sizes = sizes or [(336, 336)] * len(seeds)
    images = [make_image(s, size) for s, size in zip(seeds, sizes)]
    prompts = [chat_prompt(processor, t) for t in texts]
    return dict(processor(images=images, text=prompts, return_tensors="pt", padding=True))


def greedy(model, inputs: dict, max_new_tokens: int = 6) -> torch.Tensor:
    return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)

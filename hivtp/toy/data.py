"""The question stream the toy model learns from, tokenised exactly as lmms-eval will prompt it.

Step ``i`` of a run with seed ``s`` draws its scenes from ``default_rng([s, i])``: a batch depends
on nothing but (seed, step), so a resumed run sees the same data as an uninterrupted one, and a
re-run reproduces the logged losses. Held-out scenes use a disjoint stream (``HELD_OUT``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..world import FAMILIES, KINDS, POPE_STRATEGIES, Scene, ask, draw_scene, prompt_text, render, target_text

__all__ = ["QAItem", "Batch", "HELD_OUT", "sample_items", "chat_prompt", "encode_items", "patch_labels"]

HELD_OUT = 10**9  # stream offset of held-out scenes (training streams use step indices < 1e9)


@dataclass
class QAItem:
    image: int  # index into the batch's images
    family: str
    prompt: str  # the user text after the image (lmms-eval's doc_to_text)
    target: str  # what a correct model answers


@dataclass
class Batch:
    """Each question's sequence is ``prefix + suffix``: the prefix (BOS, "USER: ", the image
    placeholder run) is the same for every question, so training runs it once per image."""

    pixel_values: torch.Tensor  # [I, 3, 336, 336]
    image_index: torch.Tensor  # [Q] long: which image each question is about
    input_ids: torch.Tensor  # [Q, L] right-padded full sequences (prefix + suffix)
    attention_mask: torch.Tensor  # [Q, L]
    labels: torch.Tensor  # [Q, L] -100 except the answer tokens (and </s>)
    prefix_len: int  # tokens shared by every row (up to and including the image run)
    patch_labels: torch.Tensor | None = None  # [I, P] long: kind index + 1 under each patch centre, 0 = background


def _one_question(scene, rng: np.random.Generator, families: tuple[str, ...]):
    order = rng.permutation(len(families))
    for i in order:  # a family may have nothing to ask about this scene (e.g. no left/right pair)
        family = families[int(i)]
        kw = {"strategy": POPE_STRATEGIES[int(rng.integers(3))]} if family == "exist" else {}
        qs = ask(scene, family, rng, **kw)
        if qs:
            return qs[int(rng.integers(len(qs)))]
    return None


def sample_items(
    seed: int,
    index: int,
    num_images: int,
    questions_per_image: int,
    families: tuple[str, ...] = FAMILIES,
    with_scenes: bool = False,
):
    """``num_images`` fresh scenes and ``questions_per_image`` questions about each:
    (images, items), plus the scenes when ``with_scenes``."""
    rng = np.random.default_rng([seed, index])
    images, items, scenes = [], [], []
    for _ in range(num_images):
        scene = draw_scene(rng)
        for _ in range(questions_per_image):
            q = _one_question(scene, rng, families)
            if q is not None:
                items.append(QAItem(len(images), q.family, prompt_text(q), target_text(q)))
        images.append(render(scene))
        scenes.append(scene)
    return (images, items, scenes) if with_scenes else (images, items)


def _inside(obj, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h = obj.side / 2
    dx, dy = x - obj.x, y - obj.y
    if obj.shape == "circle":
        return dx**2 + dy**2 <= h**2
    box = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if obj.shape == "square":
        return box
    return box & (np.abs(dx) <= (dy + h) / 2)  # triangle: apex at the top, base at the bottom


def patch_labels(scene: Scene, grid: int = 24, crop: int = 336) -> torch.Tensor:
    """[grid * grid] raster labels: the kind (index + 1) of the object under each patch centre of the
    processor's view (short side resized to ``crop``, centre-cropped), 0 for background. The dense
    target of the encoder's auxiliary loss during training."""
    side = min(scene.width, scene.height)
    centres = (np.arange(grid) + 0.5) * crop / grid * side / crop  # canvas pixels from the view's corner
    ys, xs = np.meshgrid(centres + (scene.height - side) / 2, centres + (scene.width - side) / 2, indexing="ij")
    labels = np.zeros((grid, grid), dtype=np.int64)
    for obj in scene.objects:
        labels[_inside(obj, xs, ys)] = KINDS.index(obj.kind) + 1
    return torch.from_numpy(labels.reshape(-1))


def chat_prompt(processor, prompt: str) -> str:
    """The full prompt string: the processor's chat template over [image, text], as lmms-eval's chat
    ``llava_hf`` model builds it."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def encode_items(processor, images: list[Image.Image], items: list[QAItem], image_tokens: int) -> Batch:
    """Tokenise prompt + " answer</s>" per item; the single <image> id expands to ``image_tokens``
    placeholder ids (as the processor's text expansion does). Labels cover the answer only."""
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    rows, labels = [], []
    for item in items:
        ids = tok(chat_prompt(processor, item.prompt)).input_ids
        at = ids.index(image_id)
        ids = ids[:at] + [image_id] * image_tokens + ids[at + 1 :]
        answer = tok(" " + item.target, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append(ids + answer)
        labels.append([-100] * len(ids) + answer)
    prefix_len = rows[0].index(image_id) + image_tokens
    if any(r[:prefix_len] != rows[0][:prefix_len] for r in rows):  # the chat template puts the image first
        raise ValueError("prompts do not share the image prefix; check the chat template.")
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    label_t = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        label_t[i, : len(l)] = torch.tensor(l)
        mask[i, : len(r)] = 1
    pixel_values = processor.image_processor(images, return_tensors="pt").pixel_values
    return Batch(pixel_values, torch.tensor([it.image for it in items]), input_ids, mask, label_t, prefix_len)

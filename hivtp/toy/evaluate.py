"""Greedy accuracy of a (possibly pruned) model per question family, scored as the benchmarks score."""

from __future__ import annotations

import string
from collections import defaultdict

import torch

from ..world import BENCHMARK_WORLD, FAMILIES
from .data import HELD_OUT, QAItem, chat_prompt, sample_items

__all__ = ["HELD_OUT_SEED", "is_correct", "held_out_items", "evaluate", "family_accuracy"]

HELD_OUT_SEED = 123  # the held-out scenes issue 19 measured on (training evaluates on seed 0's)


def _norm(text: str) -> str:
    return text.strip().lower().translate(str.maketrans("", "", string.punctuation)).strip()


def is_correct(family: str, prediction: str, target: str) -> bool:
    """POPE: exact after lower/strip; MME: starts with yes/no; GQA: case- and punctuation-insensitive
    exact match; ScienceQA: the option letter."""
    pred = prediction.strip()
    if family == "exist":
        return pred.lower() == target.lower()
    if family == "mme":
        return _norm(pred).startswith(target.lower())
    if family == "choice":
        return pred.lower() == target.lower() or (len(pred) >= 2 and pred[1] == "." and pred[0].lower() == target.lower())
    return _norm(pred) == _norm(target)


def held_out_items(seed: int, per_family: int, families: tuple[str, ...] = FAMILIES, with_scenes: bool = False,
                   world: str = BENCHMARK_WORLD):
    """``per_family`` held-out questions of each family: (images, items), plus their scenes when
    ``with_scenes``. The questions are the same in every ``world``; only the images differ."""
    images, items, scenes = [], [], []
    for family in families:
        index, got = 0, 0
        while got < per_family:
            imgs, its, scs = sample_items(seed, HELD_OUT + FAMILIES.index(family) * 10**6 + index, 1, 1, (family,),
                                          with_scenes=True, world=world)
            index += 1
            if its:
                items.append(QAItem(len(images), family, its[0].prompt, its[0].target))
                images.append(imgs[0])
                scenes.append(scs[0])
                got += 1
    return (images, items, scenes) if with_scenes else (images, items)


@torch.no_grad()
def evaluate(model, processor, images, items: list[QAItem], batch_size: int = 16, max_new_tokens: int = 4):
    """Greedy answers for ``items``; ``model`` is an HF LLaVA or a ``hivtp.attach`` wrapper.
    Returns a list of (item, prediction, correct).

    A wrapper is told which question each row is (``sample_ids``: family / image index), so that a
    method with randomness (``random``) draws one selection per question, the same in any batch. Without
    it, ``random`` would key its draws on the batch slot and reuse the same ``batch_size`` draws for
    every batch, leaving the selection's own variance out of the intervals."""
    from ..pruned import PrunedModel

    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        texts = [chat_prompt(processor, it.prompt) for it in chunk]
        inputs = processor(images=[images[it.image] for it in chunk], text=texts, return_tensors="pt", padding=True)
        ids = {"sample_ids": [f"{it.family}/{it.image}" for it in chunk]} if isinstance(model, PrunedModel) else {}
        seqs = model.generate(**inputs, **ids, max_new_tokens=max_new_tokens, do_sample=False)
        answers = processor.batch_decode(seqs[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        out += [(it, a, is_correct(it.family, a, it.target)) for it, a in zip(chunk, answers)]
    return out


def family_accuracy(results) -> dict[str, float]:
    right, total = defaultdict(int), defaultdict(int)
    for item, _, ok in results:
        total[item.family] += 1
        right[item.family] += int(ok)
    return {f: right[f] / total[f] for f in total}

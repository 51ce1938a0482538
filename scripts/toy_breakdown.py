"""Accuracy of the shipped toy LLaVA per MME category and per relation answer, on fresh scenes.

    python scripts/toy_breakdown.py [--scenes 60] [--seed 777] [--model toy-llava]

Finer than the training log's per-family accuracy: it says which kind of statement a family's misses
come from (e.g. MME's left / right pairs).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch


def main() -> None:
    from hivtp.toy.data import QAItem
    from hivtp.toy.evaluate import evaluate
    from hivtp.world import ask, draw_scene, prompt_text, render, target_text
    from hivtp.zoo import load_pretrained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--model", default="toy-llava")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, processor = load_pretrained(args.model)
    rng = np.random.default_rng(args.seed)
    images, items, groups = [], [], []
    for _ in range(args.scenes):
        scene = draw_scene(rng)
        for q in ask(scene, "mme", rng) + ask(scene, "relation", rng):
            items.append(QAItem(len(images), q.family, prompt_text(q), target_text(q)))
            groups.append(f"{q.family} {q.meta.get('category', '')} {q.answer}".replace("  ", " "))
        images.append(render(scene))
    hits = defaultdict(list)
    for group, (_, _, correct) in zip(groups, evaluate(model, processor, images, items)):
        hits[group].append(correct)
    print("| group | n | accuracy |\n|---|---|---|")
    for group in sorted(hits):
        print(f"| {group} | {len(hits[group])} | {np.mean(hits[group]):.2f} |")


if __name__ == "__main__":
    main()

"""Accuracy of the shipped toy LLaVA per MME category, per relation answer and per count, on fresh scenes.

    python scripts/toy_breakdown.py [--scenes 60] [--seed 777] [--model toy-llava] [--method oracle --budget 64]

Finer than the training log's per-family accuracy: it says which kind of statement a family's misses
come from (e.g. MME's left / right pairs). Count questions are grouped by the true count and by whether
an object they count is small (about 2x2 patches), the two things the v9 toy's count misses came from.
``--method`` / ``--budget`` score the model through ``hivtp.attach`` instead.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict

import numpy as np
import torch


def _group(scene, q) -> str:
    if q.family == "count":
        counted = [o for o in scene.objects if o.shape == q.meta["shape"]]
        return f"count {q.answer}" + ("" if not counted else " with a small one" if any(o.size == "small" for o in counted)
                                     else " all large")
    return f"{q.family} {q.meta.get('category', '')} {q.answer}".replace("  ", " ")


def main() -> None:
    from hivtp.toy.data import QAItem
    from hivtp.toy.evaluate import evaluate
    from hivtp.toy.cli import measuring_world
    from hivtp.world import WORLDS, ask, draw_scene, prompt_text, render, target_text
    from hivtp.zoo import load_pretrained

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--model", default="toy-llava")
    ap.add_argument("--method", default="none", help="a registered method, applied with hivtp.attach")
    ap.add_argument("--budget", type=int, default=None, help="the method's token budget")
    ap.add_argument("--world", default=None, choices=WORLDS, help="default: the benchmarks' (hivtp.world.BENCHMARK_WORLD)")
    args = ap.parse_args()
    world = measuring_world(args.model, args.world)
    torch.set_num_threads(1)
    model, processor = load_pretrained(args.model)
    if args.method != "none":
        from hivtp import attach

        model = attach(model, method=args.method, **({} if args.budget is None else {"budget": args.budget}))
    rng = np.random.default_rng(args.seed)
    images, items, groups = [], [], []
    for i in range(args.scenes):
        scene = draw_scene(rng, world=world)
        # count questions draw from their own stream, so the scenes and the other questions stay those
        # of the earlier, count-less breakdown (the README's v8 numbers)
        count = ask(scene, "count", np.random.default_rng([args.seed, i]))
        for q in ask(scene, "mme", rng) + ask(scene, "relation", rng) + count:
            items.append(QAItem(len(images), q.family, prompt_text(q), target_text(q)))
            groups.append(_group(scene, q))
        images.append(render(scene))
    hits, wrong = defaultdict(list), defaultdict(Counter)
    for group, (_, answer, correct) in zip(groups, evaluate(model, processor, images, items)):
        hits[group].append(correct)
        if not correct:
            wrong[group][answer.strip()] += 1
    print("| group | n | accuracy | wrong answers |\n|---|---|---|---|")
    for group in sorted(hits):
        misses = ", ".join(f'"{a}" x{n}' for a, n in wrong[group].most_common())
        print(f"| {group} | {len(hits[group])} | {np.mean(hits[group]):.2f} | {misses} |")


if __name__ == "__main__":
    main()

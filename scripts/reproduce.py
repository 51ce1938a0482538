"""The offline demo: an offline LLaVA, a handful of images, `none` vs `hivtp`, one printed table.

    python scripts/reproduce.py                # after `make models`

Offline numbers come from a small random-weight model on CPU: they show the wiring (tokens kept,
selection overhead, identical outputs when nothing is pruned), not the paper's accuracy or speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hivtp  # noqa: E402
from hivtp.zoo import resolve_checkpoint  # noqa: E402


def demo_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = [(336, 336), (448, 336), (336, 504)][seed % 3]
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y, s = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60)), int(rng.integers(15, 60))
        draw.ellipse([x, y, x + s, y + s], fill=tuple(int(c) for c in rng.integers(90, 256, 3)))
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llava", help="offline shape name, local dir or hub id")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=8)
    args = parser.parse_args()

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = resolve_checkpoint(args.model)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    question = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    prompt = processor.apply_chat_template(question, add_generation_prompt=True)
    images = [demo_image(i) for i in range(args.images)]
    inputs = dict(processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True))

    unmodified = model.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False)
    rows = []
    for method, params in [("none", {}), ("hivtp", {}), ("hivtp", {"budget": 128})]:
        pruned = hivtp.attach(model, method, **params)
        start = time.perf_counter()
        out = pruned.generate(**inputs, max_new_tokens=args.new_tokens, do_sample=False)
        wall = time.perf_counter() - start
        texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, (stats, text) in enumerate(zip(pruned.last_stats, texts)):
            rows.append((f"{method} {params or ''}".strip(), i, stats, text, torch.equal(out[i], unmodified[i]), wall))

    print(f"\nmodel: {path} (profile=offline: random weights, CPU; numbers show the wiring, not the paper's claims)\n")
    print(f"{'method':<24} {'img':>3} {'kept':>5} {'global':>6} {'local':>5} {'corr':>4} {'select ms':>9}  same as unmodified  output")
    for name, i, s, text, same, _ in rows:
        print(
            f"{name:<24} {i:>3} {s['tokens_kept']:>5} {s['tokens_global']:>6} {s['tokens_local']:>5} "
            f"{s['tokens_corrected']:>4} {s['select_ms']:>9.2f}  {str(same):<18}  {text!r}"
        )
    none_same = all(same for name, _, _, _, same, _ in rows if name == "none")
    print(f"\n`none` reproduces the unmodified model exactly: {none_same}")


if __name__ == "__main__":
    main()

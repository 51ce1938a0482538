"""R^2 of a linear read-out of each object patch's (column, row), from the encoder's feature-layer
tokens and from the projected tokens the language model sees, on fresh scenes.

    python scripts/toy_position_probe.py [--model toy-llava | artifacts/toy-train/last.pt] [--scenes 48]

A training state (``last.pt`` of ``scripts/train_toy.py``) is read into the toy shape; anything else
is a llava-hf checkpoint name or directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def load(model: str):
    if model.endswith(".pt") and Path(model).is_file():
        from hivtp.toy.train import build

        net, processor = build(0)
        net.load_state_dict(torch.load(model, weights_only=True)["model"])
        return net.eval(), processor
    from hivtp.zoo import load_pretrained

    return load_pretrained(model)


def main() -> None:
    from hivtp.toy.probe import position_r2

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-llava")
    ap.add_argument("--scenes", type=int, default=48)
    ap.add_argument("--seed", type=int, default=555)
    args = ap.parse_args()
    torch.set_num_threads(1)
    r2 = position_r2(*load(args.model), scenes=args.scenes, seed=args.seed)
    print("| tokens | R^2 column | R^2 row |\n|---|---|---|")
    for name, (col, row) in r2.items():
        print(f"| {name} | {col:.2f} | {row:.2f} |")


if __name__ == "__main__":
    main()

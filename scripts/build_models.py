"""Build the offline checkpoints (random weights, shipped tokenizer) under artifacts/models/.

    python scripts/build_models.py                 # every offline shape
    python scripts/build_models.py tiny-llava      # one
    python scripts/build_models.py --force         # rebuild even if present

Each checkpoint is a normal llava-hf directory (config.json, model.safetensors, processor files):
load it with ``from_pretrained`` exactly as you would load ``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hivtp.zoo import available_shapes, build_checkpoint, checkpoint_dir, shape_spec  # noqa: E402


def offline_shapes() -> list[str]:
    return [s for s in available_shapes() if shape_spec(s)["processor"].get("tokenizer")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="*", help=f"default: {' '.join(offline_shapes())}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild existing checkpoints")
    args = parser.parse_args()
    for name in args.shapes or offline_shapes():
        out = checkpoint_dir(name)
        stamp = out / "hivtp_build.json"
        if stamp.is_file() and not args.force and json.loads(stamp.read_text()).get("seed") == args.seed:
            print(f"{name}: up to date ({out})")
            continue
        build_checkpoint(name, out, seed=args.seed)
        print(f"{name}: built {out}")


if __name__ == "__main__":
    main()

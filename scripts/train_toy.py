"""Train the small LLaVA on the procedural world (``make toy-model``): deterministic, resumable.

    python scripts/train_toy.py                              # full run -> hivtp/zoo/trained/toy-llava
    python scripts/train_toy.py --steps 20 --work-dir /tmp/t --no-save

Interrupt it at any time: the last checkpoint (every --ckpt-every steps, and on Ctrl-C) is resumed
from on the next run with the same --work-dir.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hivtp.toy.objectives import RETRIEVE_TARGETS  # noqa: E402
from hivtp.toy.train import HIDDEN_ANSWERS, TrainConfig, train  # noqa: E402
from hivtp.world import WORLDS  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(TrainConfig):
        choices = {"retrieve_targets": RETRIEVE_TARGETS, "hidden_answers": HIDDEN_ANSWERS, "world": WORLDS}.get(f.name)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, choices=choices)
    parser.add_argument("--work-dir", default=str(ROOT / "artifacts" / "toy-train"), help="checkpoints and logs (resumed from)")
    parser.add_argument("--out", default=str(ROOT / "hivtp" / "zoo" / "trained" / "toy-llava"), help="final checkpoint")
    parser.add_argument("--no-save", action="store_true", help="do not write the final checkpoint")
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    try:
        train(cfg, args.work_dir, None if args.no_save else args.out)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

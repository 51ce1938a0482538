"""Train the small LLaVA on the procedural world (``make toy-model``): deterministic, resumable.

    python scripts/train_toy.py                              # full run -> hivtp/zoo/trained/toy-llava
    python scripts/train_toy.py --steps 20 --work-dir /tmp/t --no-save

Interrupt it at any time: the last checkpoint (every --ckpt-every steps, and on Ctrl-C) is resumed
from on the next run with the same --work-dir.

The recipe is deterministic on one machine and software: the same CPU reproduces the shipped weights
bit for bit, another CPU's floating-point kernels may round one sum differently and train a sibling
(see the README's toy section). So the run ends by saying whether the weights it wrote equal the ones
it replaced, and, if not, how to check the new weights' calibration.
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
from hivtp.zoo import weights_digest  # noqa: E402


def _digest_or_none(folder: Path) -> str | None:
    return weights_digest(str(folder)) if any(folder.glob("*.safetensors")) else None


def compare_weights(before: str | None, out: Path) -> str:
    """What the run wrote, against the weights it replaced (``before``: their digest, or None)."""
    after = weights_digest(str(out))
    if before is None:
        return f"wrote new weights to {out} (sha256 {after[:12]})"
    if after == before:
        return f"the weights written to {out} equal, bit for bit, the ones they replaced (sha256 {after[:12]})"
    return (f"the weights written to {out} (sha256 {after[:12]}) differ from the ones they replaced ({before[:12]}): "
            "the same recipe on another CPU or torch build rounds differently and trains a sibling model. Check its "
            f"calibration before measuring with it: python -m hivtp.toy.calibrate --model {out} (git restores the shipped "
            "weights).")


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
    out = Path(args.out)
    before = None if args.no_save else _digest_or_none(out)
    try:
        train(cfg, args.work_dir, None if args.no_save else out)
    except KeyboardInterrupt:
        sys.exit(130)
    if not args.no_save:
        print(compare_weights(before, out), flush=True)


if __name__ == "__main__":
    main()

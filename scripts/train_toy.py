"""Train the small LLaVA on the procedural world (``make toy-model``): deterministic, resumable.

    python scripts/train_toy.py                              # full run -> hivtp/zoo/trained/toy-llava
    python scripts/train_toy.py --steps 20 --work-dir /tmp/t --no-save
    python scripts/train_toy.py --sibling toy-llava-xeon-seed1   # a shipped sibling (make toy-siblings)

Interrupt it at any time: the last checkpoint (every --ckpt-every steps, and on Ctrl-C) is resumed
from on the next run with the same --work-dir.

The recipe is deterministic on one machine and software: the same CPU reproduces the shipped weights
bit for bit, another CPU's floating-point kernels may round one sum differently and train a sibling
(see the README's toy section). So the run ends by saying whether the weights it wrote equal the ones
it replaced, and, if not, how to check the new weights' calibration.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hivtp.toy.train import BOOKKEEPING, CHOICES, TrainConfig, recipe_changes, train  # noqa: E402
from hivtp.zoo import TOY_SIBLING_RECIPES, TRAINED, TRAINED_DIR, trained_dir, weights_digest  # noqa: E402

SHIPPED = TRAINED_DIR / "toy-llava"  # the weights make reproduce measures


def replaced(out: Path) -> tuple[str, dict | None] | None:
    """The weights ``out`` holds before the run (their digest and the recorded config that trained
    them, if any), or None when it holds none."""
    if not any(out.glob("*.safetensors")):
        return None
    config = out / "train_config.json"
    return weights_digest(str(out)), json.loads(config.read_text()) if config.is_file() else None


def compare_weights(before: tuple[str, dict | None] | None, out: Path, cfg: TrainConfig) -> str:
    """What the run wrote to ``out``, against the weights it replaced (``replaced``)."""
    after = weights_digest(str(out))
    if before is None:
        return f"wrote new weights to {out} (sha256 {after[:12]})"
    digest, saved = before
    if after == digest:
        return f"the weights written to {out} equal, bit for bit, the ones they replaced (sha256 {after[:12]})"
    head = f"the weights written to {out} (sha256 {after[:12]}) differ from the ones they replaced ({digest[:12]})"
    changes = recipe_changes(saved, cfg)
    if changes is None or changes:
        why = "no recorded recipe" if changes is None else "; ".join(changes)
        return f"{head}, which another recipe trained ({why})."
    restore = " (git restores the shipped weights)" if out.resolve() in {trained_dir(n).resolve() for n in TRAINED} else ""
    return (f"{head}, which this recipe trained: on another CPU, torch build or --threads it rounds differently and trains a "
            f"sibling model. Check its calibration before measuring with it: python -m hivtp.toy.calibrate --model {out}"
            f"{restore}.")


def sibling_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--sibling NAME``: ``make toy-model``'s recipe with the sibling's changes (``TOY_SIBLING_RECIPES``),
    its shipped folder and its own work dir. The folders and the bookkeeping (``BOOKKEEPING``: threads,
    logging) can be given otherwise; a recipe field given as another value is refused, since it would
    train another model into the sibling's shipped folder."""
    changes = TOY_SIBLING_RECIPES[args.sibling]
    recipe = {f.name: changes.get(f.name, f.default) for f in fields(TrainConfig) if f.name not in BOOKKEEPING}
    said = ", ".join(f"{field} {value}" for field, value in changes.items())
    for field, value in recipe.items():
        given = getattr(args, field)
        if given not in (None, value):  # given on the command line as another value (the default's included)
            parser.error(f"--sibling {args.sibling} is make toy-model's recipe at {said}; "
                         f"drop --{field.replace('_', '-')} {given}.")
        setattr(args, field, value)
    if args.out == parser.get_default("out"):
        args.out = str(trained_dir(args.sibling))
    if args.work_dir == parser.get_default("work_dir"):
        args.work_dir = str(ROOT / "artifacts" / f"toy-train-{args.sibling}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(TrainConfig):
        # defaults are filled in by parse(), so that --sibling can tell a field given from one not given
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                            choices=CHOICES.get(f.name), help=f"default {f.default}")
    parser.add_argument("--work-dir", default=str(ROOT / "artifacts" / "toy-train"), help="checkpoints and logs (resumed from)")
    parser.add_argument("--out", default=str(SHIPPED), help="final checkpoint")
    parser.add_argument("--no-save", action="store_true", help="do not write the final checkpoint")
    parser.add_argument("--sibling", default=None, choices=list(TOY_SIBLING_RECIPES),
                        help="train this shipped sibling of the toy (hivtp.zoo.TOY_SIBLING_RECIPES: the recipe at its own seed) "
                             "into hivtp/zoo/trained/<name>, work dir artifacts/toy-train-<name>")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sibling:
        sibling_defaults(parser, args)
    for f in fields(TrainConfig):
        if getattr(args, f.name) is None:
            setattr(args, f.name, f.default)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    out = Path(args.out)
    before = None if args.no_save else replaced(out)
    try:
        train(cfg, args.work_dir, None if args.no_save else out)
    except KeyboardInterrupt:
        sys.exit(130)
    if not args.no_save:
        print(compare_weights(before, out, cfg), flush=True)


if __name__ == "__main__":
    main()

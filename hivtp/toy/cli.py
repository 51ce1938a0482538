"""The command-line pieces every held-out measurement of the toy shares (``python -m hivtp.toy.calibrate``,
``scripts/toy_inllm_supervision.py``, ``scripts/toy_selection_anatomy.py``): the same options, the same
model loading, and JSON that names the weights it was measured on (so a result file can be checked
against the shipped model)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["accuracy_summary", "load_model", "measurement_parser", "measuring_world", "progress", "trained_recipe",
           "trained_world", "write_measurement"]


def measurement_parser(description: str, per_family: int, prog: str | None = None,
                       per_family_note: str = "", batch_size: bool = False) -> argparse.ArgumentParser:
    """A parser with ``--per-family`` (default ``per_family``; ``per_family_note`` is added to its help),
    ``--seed``, ``--model``, ``--world``, ``--threads``, ``--out`` and (``batch_size``) ``--batch-size``; a script adds
    its own options."""
    from ..world import WORLDS
    from .evaluate import HELD_OUT_SEED

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--per-family", type=int, default=per_family, help=f"held-out questions per family (default {per_family}{per_family_note})")
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="held-out scene stream")
    ap.add_argument("--model", default="toy-llava", help="checkpoint name or folder")
    ap.add_argument("--world", default=None, choices=WORLDS,
                    help="draw the held-out images in this world (the questions are the same in each; default: the "
                         "benchmarks', hivtp.world.BENCHMARK_WORLD)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="also write the measurement as JSON here (atomically)")
    if batch_size:
        ap.add_argument("--batch-size", type=int, default=16, help="questions per generate call")
    return ap


def progress(text: str) -> None:
    """Progress lines go to stderr, so that stdout holds only the tables."""
    print(text, file=sys.stderr, flush=True)


def accuracy_summary(model, processor, args: argparse.Namespace, configurations, ratios=None):
    """Answer ``args.per_family`` held-out questions per family (stream ``args.seed``) with every
    configuration (:func:`hivtp.toy.calibrate.measure`) and summarise them with ``ratios``."""
    from . import calibrate

    measurement = calibrate.measure(model, processor, configurations, per_family=args.per_family, seed=args.seed,
                                    batch_size=args.batch_size, progress=progress, world=args.world)
    return calibrate.summarise(measurement, ratios=ratios)


def trained_recipe(model: str) -> dict | None:
    """The recipe a toy checkpoint was trained with, from its ``train_config.json``
    (:func:`hivtp.toy.train.recorded_recipe`, with the thread count, which changes how the CPU rounds
    its sums though no formula); None for a checkpoint without that record (not a trained toy)."""
    from pathlib import Path

    from ..zoo import resolve_checkpoint
    from .train import recorded_recipe

    path = Path(resolve_checkpoint(model)) / "train_config.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return {**recorded_recipe(saved), "threads": saved.get("threads")}


def trained_world(model: str) -> str:
    """The world a toy checkpoint was trained on, from its ``train_config.json`` (one trained before worlds
    existed: ``plain``); a checkpoint without that record (not a trained toy): the benchmarks' world.
    A toy is measured in the benchmarks' world unless told otherwise (:func:`measuring_world`)."""
    from ..world import BENCHMARK_WORLD

    recipe = trained_recipe(model)
    return BENCHMARK_WORLD if recipe is None else recipe["world"]


def measuring_world(model: str, world: str | None = None) -> str:
    """The world to draw ``model``'s held-out images in: ``world``, or else the benchmarks'
    (``hivtp.world.BENCHMARK_WORLD``), the testbed every offline number is measured in. Says so on stderr
    when the model learned in another world (the shipped recipe trains on the plain world, on purpose:
    ``hivtp.toy.train.TRAINING_WORLD``)."""
    from ..world import BENCHMARK_WORLD

    if world is not None:
        return world
    learned = trained_world(model)
    if learned != BENCHMARK_WORLD:
        progress(f"[world] {model} was trained on the {learned} world; measuring in the benchmarks' "
                 f"{BENCHMARK_WORLD} world (--world to change)")
    return BENCHMARK_WORLD


def load_model(ap: argparse.ArgumentParser, args: argparse.Namespace):
    """Check the shared options, set torch's threads and load ``args.model``: (model, processor, the
    weights' sha256). The digest is taken first, so a model that cannot be named fails before any work.
    ``args.world`` unset becomes the benchmarks' (:func:`measuring_world`)."""
    import torch

    from ..zoo import load_pretrained, weights_digest

    if args.per_family < 1:
        ap.error(f"--per-family must be >= 1, got {args.per_family}")
    if args.threads:
        torch.set_num_threads(args.threads)
    digest = weights_digest(args.model)
    if hasattr(args, "world"):  # a command with --world
        args.world = measuring_world(args.model, args.world)
    return (*load_pretrained(args.model), digest)


def write_measurement(path: str, model: str, digest: str, doc: dict[str, Any]) -> None:
    """``doc`` as JSON at ``path`` (atomically), led by the model's name and its weights' sha256."""
    from ..atomic import write_text

    write_text(path, json.dumps({"model": model, "weights_sha256": digest, **doc}, indent=1) + "\n")
    print(f"wrote {path}")

"""Which world a folder of offline mini-benchmarks was drawn in (``eval/builders.py`` writes it).

The answers of a build hold for its own images only: a folder drawn in another world than the
benchmarks' (:data:`hivtp.world.BENCHMARK_WORLD`) must be rebuilt, never read (``make reproduce``
rebuilds it; the lmms-eval runner refuses it). ``world.json`` maps each dataset folder to its world.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text
from .scene import BENCHMARK_WORLD

__all__ = ["WORLD_FILE", "OFFLINE_TASK_PREFIX", "is_offline_task", "built_worlds", "record_worlds", "stale_worlds"]

WORLD_FILE = "world.json"
#: the lmms-eval task names of the offline mini-benchmarks (``eval/``), whose images this world draws
OFFLINE_TASK_PREFIX = "hivtp_"


def is_offline_task(task: object) -> bool:
    """Whether an lmms-eval task name is one of the offline mini-benchmarks (``hivtp_pope_adv``, ...)."""
    return str(task).startswith(OFFLINE_TASK_PREFIX)


def _recorded(out_dir: Path) -> dict[str, str]:
    path = out_dir / WORLD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def record_worlds(out_dir: str | Path, names: list[str], world: str = BENCHMARK_WORLD) -> None:
    """Record that the dataset folders ``names`` under ``out_dir`` were just drawn in ``world``."""
    out = Path(out_dir)
    write_text(out / WORLD_FILE, json.dumps({**_recorded(out), **dict.fromkeys(names, world)}, sort_keys=True) + "\n")


def built_worlds(out_dir: str | Path) -> dict[str, str]:
    """Each dataset folder (``save_to_disk`` output) under ``out_dir`` -> the world its images were drawn
    in; a folder built before worlds were recorded is ``plain``, the only world there was."""
    out = Path(out_dir)
    recorded = _recorded(out)
    folders = sorted(p.name for p in out.iterdir() if (p / "dataset_dict.json").is_file()) if out.is_dir() else []
    return {name: recorded.get(name, "plain") for name in folders}


def stale_worlds(out_dir: str | Path) -> dict[str, str]:
    """The dataset folders under ``out_dir`` drawn in another world than the benchmarks' (name -> world)."""
    return {name: world for name, world in built_worlds(out_dir).items() if world != BENCHMARK_WORLD}

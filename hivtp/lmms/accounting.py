"""Per-sample accounting: tokens kept (and selection time) per ``doc_id``, next to lmms-eval's samples.

Files (in ``accounting_dir``; one set per process rank when data-parallel):
  ``hivtp_samples_<task>[_rank<r>].jsonl``  one JSON line per sample: task, doc_id, tokens_kept,
                                             tokens_global, tokens_local, tokens_corrected, select_ms, ...,
                                             and ``image``: :func:`image_key` of the document's images
Without ``accounting_dir`` they go to :func:`default_directory` (``<--output_path>/hivtp_accounting``
for lmms-eval's CLI). A writer replaces a task's file the first time it writes it and appends after,
so a run's files hold that run's samples only.
Use :func:`read_samples` / :func:`summarize` to get mean and spread per task.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

STAT_KEYS = ("tokens_kept", "tokens_global", "tokens_local", "tokens_corrected", "tokens_total", "select_ms")
#: the folder name used when no accounting_dir is given (under lmms-eval's --output_path, or here)
DEFAULT_DIRNAME = "hivtp_accounting"


def default_directory(argv: list[str] | None = None) -> Path:
    """Where per-sample counts go when ``accounting_dir`` is not given: beside lmms-eval's own output
    (``<--output_path>/hivtp_accounting``) when the command line names one -- the model is built
    by lmms-eval's CLI, which passes it nothing else -- otherwise ``./hivtp_accounting``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--output_path", default=None)
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return Path(known.output_path or ".") / DEFAULT_DIRNAME


def image_key(images: Iterable[Any]) -> str | None:
    """A short digest of a document's images (PIL: mode, size and pixels), None for none. Questions that
    ask about the same image share it, so the results' bootstrap can resample images, not questions
    (POPE asks several questions of one image, GQA many: they are not independent draws)."""
    digest, seen = hashlib.sha256(), False
    for image in images:
        digest.update(f"{image.mode} {image.size}".encode())
        digest.update(image.tobytes())
        seen = True
    return digest.hexdigest()[:16] if seen else None


class AccountingWriter:
    """Collects per-sample stats in memory and appends them to per-task JSONL files."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None
        self.records: list[dict[str, Any]] = []
        self._written: set[Path] = set()  # files this writer started (later flushes append to them)

    def add(self, task: str, doc_id: int, stats: dict[str, Any], image: str | None = None) -> None:
        """One sample's row: its stats and ``image`` (:func:`image_key` of its images, if known)."""
        row = {"task": task, "doc_id": int(doc_id)}
        row.update({k: _plain(v) for k, v in stats.items() if k != "images"})
        if image is not None:
            row["image"] = image
        self.records.append(row)

    def flush(self, rank: int = 0, world_size: int = 1) -> list[Path]:
        """Append the records collected so far to their task files; returns the files written.
        Ranks are known only once lmms-eval has set them (after the model is built), hence here."""
        suffix = f"_rank{rank}" if world_size > 1 else ""
        if self.directory is None or not self.records:
            return []
        self.directory.mkdir(parents=True, exist_ok=True)
        by_task: dict[str, list[dict]] = defaultdict(list)
        for row in self.records:
            by_task[row["task"]].append(row)
        written = []
        for task, rows in by_task.items():
            path = self.directory / f"hivtp_samples_{task}{suffix}.jsonl"
            if path not in self._written:  # this run's first rows of the task: an earlier run's files go
                for stale in self._other_layouts(task, world_size):
                    stale.unlink(missing_ok=True)
            with path.open("a" if path in self._written else "w") as f:
                for row in sorted(rows, key=lambda r: r["doc_id"]):
                    f.write(json.dumps(row, sort_keys=True) + "\n")
            self._written.add(path)
            written.append(path)
        self.records = []
        return written

    def _other_layouts(self, task: str, world_size: int) -> list[Path]:
        """``task``'s files that no rank of this run writes: an earlier run with another number of processes
        left them, and :func:`read_samples`, which reads every rank's file, would let their rows replace
        this run's. A run of one process writes no ``_rank`` file; one of N writes no plain file and no
        ``_rank{r}`` with r >= N. (Each rank's own file is rewritten on its first write.)"""
        def written_now(rank: int | None) -> bool:
            return world_size == 1 if rank is None else world_size > 1 and rank < world_size

        return [path for path, rank in task_files(self.directory, task) if not written_now(rank)]


def task_files(directory: str | Path, task: str) -> list[tuple[Path, int | None]]:
    """``task``'s sample files in ``directory`` as (path, rank): rank None for the plain file of a run of
    one process. Another task whose name starts with this one (``pope`` vs ``pope_pop``) is not included."""
    out = []
    for path in sorted(Path(directory).glob(f"hivtp_samples_{task}*.jsonl")):
        rest = path.name[len(f"hivtp_samples_{task}"):]
        rank = re.fullmatch(r"_rank(\d+)\.jsonl", rest)
        if rest == ".jsonl" or rank is not None:
            out.append((path, None if rank is None else int(rank.group(1))))
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def read_samples(directory: str | Path, task: str) -> list[dict[str, Any]]:
    """All ranks' records for ``task``, one per doc_id (later duplicates replace earlier ones)."""
    by_doc: dict[int, dict] = {}
    for path, _ in task_files(directory, task):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            by_doc[row["doc_id"]] = row
    return [by_doc[k] for k in sorted(by_doc)]


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (nan, nan for no values)."""
    xs = [float(v) for v in values]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``{<key>_mean, <key>_std}`` for each stat key present, plus ``n_samples``."""
    out: dict[str, float] = {"n_samples": len(rows)}
    for key in STAT_KEYS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            out[f"{key}_mean"], out[f"{key}_std"] = mean_std(vals)
    return out

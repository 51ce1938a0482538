"""What makes a run folder finished: a manifest of its files, with checksums, written last.

A run folder (``<runs_root>/<hash>/``, see :mod:`hivtp.run`) holds ``config.json``, one rows file per
part (``accuracy.json``, ``latency.json``), the accuracy backend's own output under ``lmms/`` and, for
a config hivtp rejected under ``skip_invalid``, ``INVALID``. When every part has finished, the runner
writes ``DONE``: a JSON manifest naming every file of the folder with its sha256, the parts the run
needed, its status (``done`` or ``invalid``), the commit it ran at and what it ran on (:data:`WEIGHTS`,
:data:`CHECKPOINT_FILES`, :data:`DATA`: digests of the checkpoint and the benchmark data, so that a run
whose inputs changed is redone instead of skipped; see :mod:`hivtp.run`). ``DONE`` is written last and
atomically, so its presence alone says that the run got to the end; :func:`verify_run` then checks
that every file it names is still there with the same content, so that a file deleted, truncated or
edited later turns the run back into an incomplete one instead of a silent hole or a wrong number.

A forced re-run is made in a fresh folder under ``<runs_root>/_incoming/`` and swapped in at the end
(:func:`fresh_folder`, :func:`swap_in`): killing it leaves the old, complete run untouched.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .atomic import write_json
from .errors import HivtpError

__all__ = [
    "CHECKPOINT_FILES",
    "DATA",
    "INCOMING",
    "INPUTS",
    "MANIFEST",
    "WEIGHTS",
    "IncompleteRunError",
    "check_run",
    "files_digest",
    "fresh_folder",
    "is_complete",
    "read_manifest",
    "read_part",
    "readable_rows",
    "inputs_of",
    "recorded_inputs",
    "swap_in",
    "verify_run",
    "write_manifest",
]

#: the manifest's file name (the finished-run marker of earlier versions, now with content)
MANIFEST = "DONE"
#: where fresh folders of forced re-runs are made, next to the run folders (never a run folder itself)
INCOMING = "_incoming"
FORMAT = 1
STATUSES = ("done", "invalid")
# What a run ran on, as the manifest (and the run's config.json) records it: one place for the key names.
#: sha256 of the checkpoint's weights (``hivtp.zoo.local_weights_digest``); None: not a local checkpoint
WEIGHTS = "weights"
#: sha256 of the checkpoint's other files that change its answers (config, processor, tokenizer, chat
#: template: ``hivtp.zoo.local_checkpoint_files_digest``); None: no local checkpoint is loaded
CHECKPOINT_FILES = "checkpoint_files"
#: sha256 of the accuracy benchmark's local data folder (every file, by relative name); None: no local data
DATA = "data"
#: the inputs besides the weights; a manifest without these keys was written before runs recorded them
INPUTS = (CHECKPOINT_FILES, DATA)


class IncompleteRunError(HivtpError, RuntimeError):
    """A run folder that is not (or no longer) a complete run; ``path`` is its first broken file."""

    def __init__(self, folder: str | os.PathLike, problems: list[str], path: str | os.PathLike | None = None):
        self.folder = Path(folder)
        self.problems = list(problems)
        self.path = Path(path) if path is not None else self.folder / MANIFEST
        super().__init__(
            f"run folder {self.folder} is not a complete run: {'; '.join(self.problems)}. "
            "Run its config again with `python -m hivtp.run` (an incomplete run is redone, not skipped), "
            "or delete the folder."
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_temporary(name: str) -> bool:
    """Temp files of :mod:`hivtp.atomic` (``.<name>.<pid>.<token>.tmp``) left by a killed writer."""
    return name.startswith(".") and name.endswith(".tmp")


@lru_cache(maxsize=4096)
def _sha256_of(path: str, state: tuple) -> str:  # ``state`` keys the cache: a rewritten file, a new digest
    return _sha256(Path(path))


def files_digest(root: str | os.PathLike, names: Iterable[str]) -> str:
    """The sha256 over the files ``names`` (paths relative to ``root``): each one's relative POSIX name, size
    and content, in sorted order, so that a file renamed, added, removed or edited changes it, and a copy of
    the folder elsewhere does not. Each file's digest is remembered per process by its state (size, inode,
    mtime, ctime: any write changes the ctime), so a sweep reads each file once (the 1.27 GB of
    ``make data``: 1-2 s on two busy cores, then 10 ms per run)."""
    root = Path(root)
    digest = hashlib.sha256()
    for rel in sorted(Path(n).as_posix() for n in names):
        path = (root / rel).resolve()
        st = path.stat()
        state = (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        digest.update(f"{rel}\0{st.st_size}\0{_sha256_of(str(path), state)}\n".encode())
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` (relative POSIX paths, sorted), without the manifest and
    without Python's byte-code caches (importing a rendered task module may rewrite them any time)."""
    out = []
    for path in folder.rglob("*"):
        if "__pycache__" in path.relative_to(folder).parts:
            continue
        if path.is_file() and not path.is_symlink() and not _is_temporary(path.name):
            rel = path.relative_to(folder).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(folder: str | os.PathLike, parts: Iterable[str], status: str = "done",
                   commit: str | None = None, weights: str | None = None,
                   inputs: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Seal a finished run: checksum every file in ``folder`` and write ``DONE`` (last, atomically).
    ``parts`` are the rows files the run needed (``accuracy``, ``latency``); each must be there.
    ``weights``: the sha256 of the checkpoint the accuracy part answered with (``hivtp.run``);
    ``inputs``: the digests of :data:`INPUTS` (every key recorded, None included); without it the
    manifest records no inputs, as the ones written before they existed."""
    folder = Path(folder)
    parts = sorted(parts)
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}.")
    missing = [p for p in parts if not (folder / f"{p}.json").is_file()]
    if missing:
        raise IncompleteRunError(folder, [f"{p}.json was never written" for p in missing], folder / f"{missing[0]}.json")
    manifest = {
        "format": FORMAT,
        "status": status,
        "parts": parts,
        "commit": commit,
        WEIGHTS: weights,
        **({key: inputs.get(key) for key in INPUTS} if inputs is not None else {}),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {rel: _sha256(folder / rel) for rel in _files(folder)},
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def _manifest_problems(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    path = folder / MANIFEST
    if not folder.is_dir():
        return None, [f"the folder {folder} does not exist"]
    if not path.is_file():
        return None, [f"{MANIFEST} is missing: the run never finished"]
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"{MANIFEST} is not a manifest ({exc}); an older hivtp or a broken write made it"]
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("status") not in STATUSES \
            or not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("parts"), list):
        return None, [f"{MANIFEST} is not a format-{FORMAT} manifest; an older hivtp or a broken write made it"]
    return manifest, []


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed manifest of a run folder; IncompleteRunError when there is none to read."""
    manifest, problems = _manifest_problems(Path(folder))
    if manifest is None:
        raise IncompleteRunError(folder, problems)
    return manifest


def recorded_inputs(folder: str | os.PathLike) -> dict[str, str | None] | None:
    """The :data:`INPUTS` digests a finished run recorded; None for a run sealed before runs recorded them."""
    return inputs_of(read_manifest(folder))


def inputs_of(manifest: dict[str, Any]) -> dict[str, str | None] | None:
    """:func:`recorded_inputs` of a manifest already read."""
    if not all(key in manifest for key in INPUTS):
        return None
    return {key: manifest[key] for key in INPUTS}


def _file_problems(folder: Path, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """(relative path, problem) for every file the manifest names that is gone or changed."""
    out = []
    needed = [f"{p}.json" for p in manifest["parts"]] + (["INVALID"] if manifest["status"] == "invalid" else [])
    for rel in needed:
        if rel not in manifest["files"]:
            out.append((rel, f"{rel} is not in the manifest"))
    for rel, digest in sorted(manifest["files"].items()):
        path = folder / rel
        if not path.is_file():
            out.append((rel, f"{rel} is missing"))
        elif _sha256(path) != digest:
            out.append((rel, f"{rel} changed after the run finished (checksum differs)"))
    return out


def verify_run(folder: str | os.PathLike) -> list[str]:
    """What keeps ``folder`` from being a complete run; an empty list means complete."""
    folder = Path(folder)
    manifest, problems = _manifest_problems(folder)
    if manifest is None:
        return problems
    return [problem for _, problem in _file_problems(folder, manifest)]


def is_complete(folder: str | os.PathLike) -> bool:
    return not verify_run(folder)


def check_run(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete run; IncompleteRunError naming the first broken file otherwise."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    broken = _file_problems(folder, manifest)
    if broken:
        raise IncompleteRunError(folder, [p for _, p in broken], folder / broken[0][0])
    return manifest


def read_part(folder: str | os.PathLike, part: str) -> list[dict[str, Any]] | None:
    """The rows of one part (``accuracy`` / ``latency``) of a complete run, or None when the run has
    no such part (a latency-only run has no accuracy rows; an INVALID run has none)."""
    folder = Path(folder)
    manifest = check_run(folder)
    if part not in manifest["parts"]:
        return None
    rows = readable_rows(folder / f"{part}.json")
    if rows is None:  # the checksum matched, so the runner wrote it this way
        raise IncompleteRunError(folder, [f"{part}.json holds no list of rows"], folder / f"{part}.json")
    return rows


def readable_rows(path: str | os.PathLike) -> list[dict[str, Any]] | None:
    """The rows in a part's rows file, or None when it is missing, unreadable, or not a non-empty
    list of row objects (every backend returns at least one row)."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return rows


# ---------------------------------------------------------------------------- forced re-runs
def fresh_folder(final: str | os.PathLike) -> Path:
    """A new, empty folder for a run that will replace ``final`` (``<runs_root>/_incoming/<hash>-<token>``).
    Leftovers of earlier, killed re-runs of the same run are removed first."""
    final = Path(final)
    incoming = final.parent / INCOMING
    for old in incoming.glob(f"{final.name}-*"):
        shutil.rmtree(old, ignore_errors=True)
    folder = incoming / f"{final.name}-{secrets.token_hex(4)}"
    folder.mkdir(parents=True)
    return folder


def swap_in(fresh: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the finished ``fresh`` folder at ``final``, then delete the run it replaces. Two renames on
    one file system: a kill between them leaves no folder at ``final`` (the run is then simply redone),
    never a mixture of the two runs."""
    fresh, final = Path(fresh), Path(final)
    retired = fresh.with_name(fresh.name + ".old")
    if final.exists():
        os.rename(final, retired)
    os.rename(fresh, final)
    shutil.rmtree(retired, ignore_errors=True)

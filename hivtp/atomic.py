"""The one atomic-write helper: a file appears whole or not at all.

The content goes to a temporary file in the target's folder, which is flushed, synced and then renamed
over the target (``os.replace`` is atomic on POSIX within one file system), so a reader or a killed
writer never sees half a file, and a failed write leaves the old file as it was.

The temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the user's umask,
as for any ordinary file (``tempfile.mkstemp`` would make it 0600, private to the writer, and the
rename would keep that mode).
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_open", "write_bytes", "write_json", "write_text"]


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_open(path, "wb") as f: torch.save(obj, f)``: ``path`` is replaced only when the
    block finishes without an exception. ``mode`` is ``"w"`` or ``"wb"``; ``kwargs`` go to ``open``
    (e.g. ``newline=""`` for csv). Missing parent folders are created."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name that is unique per call; O_EXCL never opens someone else's file.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    if not isinstance(text, str):
        raise TypeError(f"write_text needs a str, got {type(text).__name__}.")
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON (anything JSON cannot hold written with ``str``)."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")

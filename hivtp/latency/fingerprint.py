"""Where a row was measured: device name, library versions, git commit, date."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["fingerprint", "device_name", "git_commit"]

_REPO = Path(__file__).resolve().parents[2]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:  # Linux: the marketing name is more useful than "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    """The short HEAD commit, with ``-dirty`` when tracked files outside ``results/`` differ from it
    (the rows were then measured with code or weights that commit does not hold; ``results/`` is what
    the runs themselves rewrite); ``HIVTP_COMMIT`` overrides."""
    env = os.environ.get("HIVTP_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=_REPO, capture_output=True, text=True, timeout=10
        )
        if out.returncode != 0 or not out.stdout.strip():
            return "unknown"
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":(exclude)results"], cwd=_REPO, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("-dirty" if changed.returncode == 1 else "")


def fingerprint(device: torch.device) -> dict[str, str]:
    import transformers

    return {
        "device_name": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }

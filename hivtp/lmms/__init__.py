"""lmms-eval integration: the ``hivtp_llava`` model plugin, per-sample accounting, and the runner.

Importing this package is cheap; lmms-eval itself is only imported by :mod:`hivtp.lmms.model`
(loaded lazily by lmms-eval through the manifest's class path) and :mod:`hivtp.lmms.runner`.
"""

from .plugin import MODEL_NAME, manifest

__all__ = ["MODEL_NAME", "manifest"]

"""HIVTP: training-free hierarchical visual token pruning for LLaVA, and a harness to measure it.

Public API (stable)::

    keep = hivtp.select(scores, regions=2, keep_ratio=0.25, window=2)   # [B, H, W] -> list of index tensors
    s = hivtp.importance(vision_model, pixel_values, layers=(6, 7, 8), backend="fast")  # [B, 24, 24]
    pruned = hivtp.attach(hf_model, method="hivtp", **params)
    out = pruned.generate(**processor_outputs, max_new_tokens=16)
    pruned.last_stats                                                    # one dict per sample

The core needs only torch and transformers.
"""

from .attach import attach
from .errors import (
    ConfigError,
    DeviceError,
    HivtpError,
    InputMismatchError,
    MissingArtifactError,
    UnknownMethodError,
    UnsupportedModelError,
)
from .importance import importance
from .methods import METHODS, PruningMethod, available_methods, build_method, register_method
from .pruned import PrunedModel
from .selection import select

__version__ = "0.1.0"

__all__ = [
    "select",
    "importance",
    "attach",
    "PrunedModel",
    "PruningMethod",
    "METHODS",
    "available_methods",
    "build_method",
    "register_method",
    "HivtpError",
    "ConfigError",
    "UnknownMethodError",
    "UnsupportedModelError",
    "InputMismatchError",
    "MissingArtifactError",
    "DeviceError",
    "__version__",
]

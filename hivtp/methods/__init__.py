"""Token-reduction methods, resolved by name (see :mod:`hivtp.methods.base`).

Importing this package registers every built-in method.
"""

from .base import (
    METHODS,
    CropBatch,
    CropSelection,
    PruningMethod,
    TowerRequest,
    available_methods,
    build_method,
    parse_layers,
    register_method,
)
from . import hivtp as _hivtp  # noqa: F401  (registers "hivtp")
from . import none as _none  # noqa: F401  (registers "none")

__all__ = [
    "METHODS",
    "CropBatch",
    "CropSelection",
    "PruningMethod",
    "TowerRequest",
    "available_methods",
    "build_method",
    "parse_layers",
    "register_method",
]

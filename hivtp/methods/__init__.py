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
    is_in_llm,
    is_offline_only,
    parse_layers,
    register_method,
)
from . import hivtp as _hivtp  # noqa: F401  (registers "hivtp")
from . import none as _none  # noqa: F401  (registers "none")
from . import random as _random  # noqa: F401  (registers "random")
from . import pool as _pool  # noqa: F401  (registers "pool")
from . import fastervlm as _fastervlm  # noqa: F401  (registers "fastervlm")
from . import visionzip as _visionzip  # noqa: F401  (registers "visionzip")
from . import divprune as _divprune  # noqa: F401  (registers "divprune")
from . import fastv as _fastv  # noqa: F401  (registers "fastv")
from . import pdrop as _pdrop  # noqa: F401  (registers "pdrop", stretch)
from . import hiprune as _hiprune  # noqa: F401  (registers "hiprune", stretch)
from . import oracle as _oracle  # noqa: F401  (registers "oracle", offline only)

__all__ = [
    "METHODS",
    "CropBatch",
    "CropSelection",
    "PruningMethod",
    "TowerRequest",
    "available_methods",
    "build_method",
    "is_offline_only",
    "parse_layers",
    "register_method",
]

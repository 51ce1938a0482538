"""``random``: keep B patch tokens of each crop drawn uniformly without replacement (baselines.md).

Seeding: each crop's draw uses its own ``torch.Generator`` seeded from
``sha256(f"{seed}/{crop_key}")``, where ``crop_key`` is ``CropBatch.crop_keys[c]`` (built by the engine
from ``sample_ids``: ``"<sample id>/<image>/<crop>"``). The same sample therefore keeps the same
tokens whether it runs alone or in any batch, and different samples / crops draw differently.
Without ``sample_ids`` there are no crop keys; the key is then the crop's index in the batch
(``"#<c>"``): reproducible run to run, but not batch-invariant. Pass ``sample_ids`` (the lmms-eval
plugin does) for batch-invariant draws.

Parameters: ``budget`` (default: one third of each crop, 192 of 576), ``seed`` (default 0).
Kept tokens stay in raster order.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from ..errors import ConfigError
from .base import CropBatch, CropSelection, PruningMethod, register_method
from ._common import check_budget, crop_budgets, valid_mask


def crop_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@register_method
class RandomTokens(PruningMethod):
    name = "random"

    def __init__(self, budget: int | None = None, seed: int | None = None) -> None:
        self.budget = check_budget(budget)
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}.")
        self.seed = seed

    def params(self) -> dict[str, Any]:
        return {"budget": self.budget, "seed": self.seed}

    def select(self, crops: CropBatch) -> CropSelection:
        budgets = crop_budgets(crops)
        keys = crops.crop_keys if len(crops.crop_keys) == crops.num_crops else [f"#{c}" for c in range(crops.num_crops)]
        keep = torch.zeros(crops.features.shape[:2], dtype=torch.bool)
        valid = valid_mask(crops).cpu()
        for c, (key, b) in enumerate(zip(keys, budgets)):
            g = torch.Generator().manual_seed(crop_seed(self.seed, key))
            order = torch.randperm(crops.num_patches, generator=g)
            keep[c, order[valid[c, order]][:b]] = True  # the first b valid positions of the permutation
        keep = keep.to(crops.features.device)
        return CropSelection.from_masks(crops.features, keep, [{"tokens_kept": b} for b in budgets])

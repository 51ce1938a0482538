"""``none``: keep every token. The upper-bound row of every table, and the identity check of the
pruning path (it runs the same code as every other method)."""

from __future__ import annotations

import torch

from .base import CropBatch, CropSelection, PruningMethod, register_method


@register_method
class KeepAll(PruningMethod):
    name = "none"

    def __init__(self) -> None:
        pass

    def select(self, crops: CropBatch) -> CropSelection:
        keep = torch.ones(crops.features.shape[:2], dtype=torch.bool, device=crops.features.device)
        stats = [{"tokens_kept": crops.num_patches} for _ in range(crops.num_crops)]
        return CropSelection.from_masks(crops.features, keep, stats)

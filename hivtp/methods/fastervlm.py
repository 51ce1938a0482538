"""``fastervlm``: keep the B patches the [CLS] token attends to most at the feature layer.

FasterVLM ("[CLS] Attention is All You Need for Training-Free Visual Token Pruning", arXiv 2412.01818):
score patch j by the attention of the [CLS] query to it at the LLaVA feature layer (the attention
inside the encoder layer whose output is ``vision_feature_layer = -2``, i.e. 0-based layer 22 of 24),
averaged over heads; keep the top-B; feed them in raster order.

Parameters: ``budget`` (default None -> one third of each crop: 192 of 576), ``backend``:
``fast`` (default: the tower keeps SDPA; only the feature layer's q, k are captured and the one [CLS]
row ``softmax(q_cls k^T / sqrt(d))`` is computed, mean over heads) or ``eager`` (the model's own
eager forward with that layer's probabilities; same result to float rounding).
Ties go to the lower raster index. Scores in float32.
"""

from __future__ import annotations

from typing import Any

import torch

from ..importance import check_backend
from .base import CropBatch, CropSelection, PruningMethod, TowerRequest, register_method
from ._common import (
    attention_request,
    check_budget,
    cls_patch_attention,
    crop_budgets,
    top_k_positions,
    valid_mask,
)


@register_method
class FasterVLM(PruningMethod):
    name = "fastervlm"
    needs_cls = True  # ranks by the [CLS] attention row

    def __init__(self, budget: int | None = None, backend: str | None = None) -> None:
        self.budget = check_budget(budget)
        self.backend = check_backend("fast" if backend is None else backend)
        self.layer: int | None = None

    def params(self) -> dict[str, Any]:
        return {"budget": self.budget, "backend": self.backend}

    def check(self, grid: tuple[int, int], num_layers: int, feature_attention_layer: int) -> None:
        self.layer = feature_attention_layer

    def tower_request(self) -> TowerRequest:
        return attention_request(self.layer, self.backend)

    def scores(self, crops: CropBatch) -> torch.Tensor:
        """[C, P] float32 [CLS] attention per patch (mean over heads)."""
        return cls_patch_attention(crops.tower, crops.feature_attention_layer)

    def select(self, crops: CropBatch) -> CropSelection:
        budgets = crop_budgets(crops)
        scores = self.scores(crops)
        keep = torch.zeros(crops.features.shape[:2], dtype=torch.bool, device=crops.features.device)
        valid = valid_mask(crops)
        for c, b in enumerate(budgets):
            keep[c, top_k_positions(scores[c], b, valid[c])] = True
        return CropSelection.from_masks(crops.features, keep, [{"tokens_kept": b} for b in budgets])

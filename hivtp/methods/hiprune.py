"""``hiprune`` (stretch baseline): anchor, buffer and register tokens from two encoder layers.

HiPrune ("Training-Free Visual Token Pruning via Hierarchical Attention in Vision-Language Models",
arXiv 2508.00553), the closest relative of HIVTP: it too reads middle-layer attention. Per crop with a
budget of B tokens, scores being the attention each patch receives (mean over heads and over all query
rows, [CLS] column dropped: HIVTP's score, :func:`hivtp.importance.scores_from_tower`):

1. anchors: the T = round(B * alpha / 5) patches with the highest score at the object layer;
2. buffers: the 4-neighbours (up, down, left, right) of every anchor, on the crop's grid;
3. registers: the remaining B - |anchors + buffers| patches with the highest score at the deep layer
   (the layer whose output is LLaVA's feature layer).

Kept tokens enter in raster order. Published settings (the authors' LLaVA code): alpha = 0.1, object
layer 9 (1-based) = ``object_layer=8`` (0-based, like HIVTP's ``layers``), deep layer = the
``vision_feature_layer`` (-2) attention. DECISION: the published code takes neighbours as raster
index +-1 / +-24 clamped to [0, 575], so an anchor in the first or last column gets a "neighbour" at
the other end of the adjacent row (and clamping can repeat 0 or 575); this module uses true grid
neighbours, which is what the paper describes. The two differ only for anchors on the left or right
edge.

Parameters: ``budget`` (default None -> one third of each crop: 192 of 576), ``alpha``, ``object_layer``
(None: the published 8 on a CLIP tower; on Qwen2.5-VL, whose blocks but four attend only inside their
112 px window, the family's default, the middle full-attention block, as HIVTP's score layer),
``backend`` (``fast``: q, k of the two layers captured, SDPA tower; ``eager``: the model's eager
attention maps). Ties go to the lower raster index; scores in float32.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..importance import check_backend, scores_from_tower
from .base import CropBatch, CropSelection, PruningMethod, TowerRequest, register_method
from ._common import attention_request, check_budget, crop_budgets, top_k_positions, valid_mask

PUBLISHED = {"alpha": 0.1, "object_layer": 8}


def anchor_count(budget: int, alpha: float) -> int:
    """T = round(B * alpha / 5): anchors plus their 4 neighbours take about alpha of the budget."""
    return round(budget * alpha / 5)


def grid_neighbours(positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[N] raster indices -> [M] unique raster indices of their up / down / left / right neighbours
    that lie on the grid (sorted)."""
    h, w = grid
    rows, cols = positions // w, positions % w
    out = []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = rows + dr, cols + dc
        on_grid = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        out.append((r * w + c)[on_grid])
    return torch.unique(torch.cat(out))


@register_method
class HiPrune(PruningMethod):
    name = "hiprune"
    family_parameters = {"object_layer": int}

    def __init__(
        self,
        budget: int | None = None,
        alpha: float = PUBLISHED["alpha"],
        object_layer: int | None = None,
        backend: str | None = None,
    ) -> None:
        #: left unset, a family with its own default (Qwen2.5-VL's middle full-attention block) gives it
        self.unset_by_caller = frozenset({"object_layer"} if object_layer is None else ())
        object_layer = PUBLISHED["object_layer"] if object_layer is None else object_layer
        self.budget = check_budget(budget)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ConfigError(f"alpha (share of the budget for anchors and their neighbours) must be in [0, 1], got {alpha!r}.")
        if isinstance(object_layer, bool) or not isinstance(object_layer, int) or object_layer < 0:
            raise ConfigError(f"object_layer is a 0-based encoder layer index >= 0, got {object_layer!r}.")
        self.alpha = float(alpha)
        self.object_layer = object_layer
        self.backend = check_backend("fast" if backend is None else backend)
        self.deep_layer: int | None = None

    def params(self) -> dict[str, Any]:
        return {"budget": self.budget, "alpha": self.alpha, "object_layer": self.object_layer, "backend": self.backend}

    def check(self, grid: tuple[int, int], num_layers: int, feature_attention_layer: int) -> None:
        if self.object_layer > feature_attention_layer:
            raise ConfigError(
                f"object_layer {self.object_layer} lies past the feature layer (the output of layer "
                f"{feature_attention_layer}, 0-based, of {num_layers}); pick a 0-based layer <= {feature_attention_layer}."
            )
        self.deep_layer = feature_attention_layer

    def tower_request(self) -> TowerRequest:
        return attention_request(None if self.deep_layer is None else (self.object_layer, self.deep_layer), self.backend)

    def select(self, crops: CropBatch) -> CropSelection:
        budgets = crop_budgets(crops)
        obj = scores_from_tower(crops.tower, [self.object_layer]).flatten(1)  # [C, P] float32
        deep = scores_from_tower(crops.tower, [crops.feature_attention_layer]).flatten(1)  # [C, P]
        valid = valid_mask(crops)
        keep = torch.zeros(crops.features.shape[:2], dtype=torch.bool, device=crops.features.device)
        stats = []
        for c, b in enumerate(budgets):
            anchors = top_k_positions(obj[c], anchor_count(b, self.alpha), valid[c])
            near = grid_neighbours(anchors, crops.grid)
            chosen = torch.unique(torch.cat([anchors, near[valid[c][near]]]))
            if len(chosen) > b:  # only for budgets far below 5 / alpha: keep the best by object score
                chosen = chosen[top_k_positions(obj[c][chosen], b)]
            keep[c, chosen] = True
            registers = top_k_positions(deep[c], b - len(chosen), valid[c] & ~keep[c])
            keep[c, registers] = True
            stats.append({"tokens_kept": b, "anchors": len(anchors), "buffers": len(chosen) - len(anchors)})
        return CropSelection.from_masks(crops.features, keep, stats)

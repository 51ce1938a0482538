"""``divprune``: greedy max-min diversity selection (DivPrune, arXiv 2503.02175).

Distances are cosine distances ``1 - cos(x_i, x_j)`` between the crop's feature-layer patch features,
the vectors the projector receives (DECISION, a known deviation: the release runs the same rule on
the *projected* image embeddings, i.e. the LLM's input embeddings of the image tokens, inside
LLaVA's ``prepare_inputs_labels_for_multimodal``; the method interface hands methods pre-projector
features only, and selecting before the projector also saves the projector's work. Matching the
release exactly needs the engine to pass the projector to methods).

Rule, as in the release: the first token is the one whose nearest other token is farthest (the
largest second-smallest entry of its distance column, the smallest being its zero self-distance);
then repeatedly add the token whose smallest distance to the chosen set is largest, until B tokens.
Ties go to the lower raster index (``argmax`` returns the first maximum); a chosen token is never
chosen again (matters only for duplicate features). Kept tokens are fed in raster order.

Parameters: ``budget`` (default None -> one third of each crop, 192 of 576). Distances in float32.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import CropBatch, CropSelection, PruningMethod, register_method
from ._common import check_budget, crop_budgets, valid_mask


def cosine_distance(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return 1.0 - x @ x.T


def max_min_diverse(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy max-min selection on a [P, P] distance matrix: indices in selection order."""
    p = dist.shape[0]
    chosen = torch.empty(k, dtype=torch.long, device=dist.device)
    if p == 1:
        return torch.zeros(k, dtype=torch.long, device=dist.device)
    first = torch.topk(dist, 2, dim=0, largest=False).values[1]  # nearest *other* token per column
    taken = torch.zeros(p, dtype=torch.bool, device=dist.device)
    scores = first
    nearest = torch.full((p,), float("inf"), device=dist.device)
    for i in range(k):
        idx = int(torch.argmax(scores.masked_fill(taken, float("-inf"))))
        chosen[i] = idx
        taken[idx] = True
        nearest = torch.minimum(nearest, dist[idx])
        scores = nearest
    return chosen


@register_method
class DivPrune(PruningMethod):
    name = "divprune"

    def __init__(self, budget: int | None = None) -> None:
        self.budget = check_budget(budget)

    def params(self) -> dict[str, Any]:
        return {"budget": self.budget}

    def select(self, crops: CropBatch) -> CropSelection:
        budgets = crop_budgets(crops)
        keep = torch.zeros(crops.features.shape[:2], dtype=torch.bool, device=crops.features.device)
        valid = valid_mask(crops)
        for c, b in enumerate(budgets):
            cand = valid[c].nonzero().flatten()  # raster order; all positions unless packing drops some
            keep[c, cand[max_min_diverse(cosine_distance(crops.features[c, cand]), b)]] = True
        return CropSelection.from_masks(crops.features, keep, [{"tokens_kept": b} for b in budgets])

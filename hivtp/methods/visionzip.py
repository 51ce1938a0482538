"""``visionzip``: dominant tokens by [CLS] attention + contextual tokens merged by key similarity.

VisionZip ("Longer is Better but Not Necessary in Vision Language Models", arXiv 2412.04467), rule as
in its release, at the LLaVA feature layer (the encoder layer whose output is ``vision_feature_layer =
-2``, 0-based 22 of 24):

1. Dominant: the top-Kd patches by [CLS] attention at that layer (summed over heads in the release;
   mean over heads here, the same ranking). Ties: lower raster index.
2. Contextual: the remaining R = P - Kd patches, in raster order; targets are every
   ``step = max(1, R // Kc)``-th of them (``arange(0, R, step)[:Kc]``). Every other remaining patch is
   assigned to its most similar target by cosine similarity of that layer's keys (the key projection
   averaged over heads, the release's "metric"); each group becomes one token.
   ``contextual_merge="mean"`` (default, as baselines.md words it): the plain average of the group,
   target included. ``"release"``: the release's arithmetic, ``target + mean(assigned others)``
   (it adds rather than averages). A contextual token stands for its target's position.
3. Kd + Kc = B. ``dominant``/``contextual`` default to the published splits 54+10, 108+20, 162+30 for
   B = 64 / 128 / 192, and otherwise to the same proportion, ``Kc = round(B * 10 / 64)``,
   ``Kd = B - Kc``. Give ``dominant`` (or ``contextual``) with ``budget`` to fix one side; the other
   is B minus it (a side larger than B, or one side without a budget, is a ConfigError, never
   clamped). On LLaVA-NeXT a given split is scaled to each crop's own share of the budget.

Order into the LLM (DECISION): raster order of the positions the tokens stand for (the release
appends the contextual tokens after the dominant ones; raster order keeps the full-budget run
identical to the unpruned model and matches how LLaVA-NeXT places tokens by position).
No [CLS] token is fed (the release keeps it among the dominant tokens; LLaVA drops CLS).

Parameters: ``budget`` (default None -> one third of each crop, 192 of 576, split 162+30),
``dominant``, ``contextual``, ``contextual_merge``. Needs the feature layer's q, k only (the tower
keeps SDPA; no eager attention).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .base import CropBatch, CropSelection, PruningMethod, TowerRequest, register_method
from ._common import (
    attention_request,
    check_budget,
    cls_patch_attention,
    crop_budgets,
    keys_mean_over_heads,
    top_k_positions,
    valid_mask,
)

PUBLISHED_SPLITS = {64: (54, 10), 128: (108, 20), 192: (162, 30)}
MERGES = ("mean", "release")


def split(budget: int, dominant: int | None = None, contextual: int | None = None) -> tuple[int, int]:
    """(Kd, Kc) with Kd + Kc = budget; a given side larger than the budget is a ConfigError (clamping
    it would record a split that was not applied)."""
    check_side(budget, dominant, contextual)
    if dominant is not None:
        return dominant, budget - dominant
    if contextual is not None:
        return budget - contextual, contextual
    if budget in PUBLISHED_SPLITS:
        return PUBLISHED_SPLITS[budget]
    kc = int(round(budget * 10 / 64))
    return budget - kc, kc


def check_side(budget: int, dominant: int | None, contextual: int | None) -> None:
    for name, value in (("dominant", dominant), ("contextual", contextual)):
        if value is not None and value > budget:
            raise ConfigError(
                f"{name}={value} is more than budget={budget}: dominant + contextual = budget, so give "
                f"{name} <= {budget} (the other side is the budget minus it), or a larger budget."
            )


def _check_count(name: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConfigError(f"{name} must be a non-negative integer or None, got {value!r}.")
    return value


@register_method
class VisionZip(PruningMethod):
    name = "visionzip"
    needs_cls = True  # ranks by the [CLS] attention row
    merges_tokens = True  # its contextual tokens merge the patches they absorb

    def __init__(
        self,
        budget: int | None = None,
        dominant: int | None = None,
        contextual: int | None = None,
        contextual_merge: str | None = None,
    ) -> None:
        self.budget = check_budget(budget)
        self.dominant = _check_count("dominant", dominant)
        self.contextual = _check_count("contextual", contextual)
        if dominant is not None and contextual is not None:
            if budget is not None and dominant + contextual != budget:
                raise ConfigError(f"dominant + contextual ({dominant} + {contextual}) must equal budget ({budget}).")
            if budget is None:
                self.budget = check_budget(dominant + contextual)
        elif (dominant is not None or contextual is not None) and budget is None:
            # One side fixes the other only against a budget; without one, each crop's default third
            # (and on NeXT its unpadded share) could be smaller than the side and would clamp it.
            given = f"dominant={dominant}" if dominant is not None else f"contextual={contextual}"
            raise ConfigError(
                f"{given} fixes one side of budget = dominant + contextual: give budget= too (e.g. budget=192), "
                "or both dominant and contextual."
            )
        if self.budget is not None:
            check_side(self.budget, dominant, contextual)
        self.contextual_merge = "mean" if contextual_merge is None else contextual_merge
        if self.contextual_merge not in MERGES:
            raise ConfigError(f"contextual_merge must be one of {MERGES}, got {contextual_merge!r}.")
        self.layer: int | None = None

    def params(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "dominant": self.dominant,
            "contextual": self.contextual,
            "contextual_merge": self.contextual_merge,
        }

    def check(self, grid: tuple[int, int], num_layers: int, feature_attention_layer: int) -> None:
        self.layer = feature_attention_layer

    def tower_request(self) -> TowerRequest:
        return attention_request(self.layer, "fast")

    def select(self, crops: CropBatch) -> CropSelection:
        layer = crops.feature_attention_layer
        budgets = crop_budgets(crops)
        cls = cls_patch_attention(crops.tower, layer)  # [C, P]
        valid = valid_mask(crops)
        metric = keys_mean_over_heads(crops.tower, layer)[:, 1:]  # [C, P, d], CLS dropped
        feats, positions, stats = [], [], []
        for c, b in enumerate(budgets):
            kd, kc = self.crop_split(b)
            f, pos = self.select_crop(crops.features[c], cls[c], metric[c], kd, kc, valid[c])
            feats.append(f)
            positions.append(pos)
            stats.append({"tokens_kept": b, "tokens_dominant": kd, "tokens_contextual": kc})
        return CropSelection(features=feats, positions=positions, stats=stats)

    def crop_split(self, b: int) -> tuple[int, int]:
        """(Kd, Kc) of a crop with budget ``b``. On LLaVA-1.5 ``b`` is the method's budget; on NeXT it is
        the crop's share of the image budget, and a user-fixed split is scaled to it proportionally."""
        if self.dominant is None and self.contextual is None:
            return split(b)
        if b == self.budget:  # a given side always comes with a budget (__init__)
            return split(b, self.dominant, self.contextual)
        _, kc_image = split(self.budget, self.dominant, self.contextual)
        kc = min(b, int(round(b * kc_image / self.budget)))
        return b - kc, kc

    def select_crop(
        self,
        features: torch.Tensor,
        cls: torch.Tensor,
        metric: torch.Tensor,
        kd: int,
        kc: int,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One crop: features [P, D], cls [P], metric [P, d] -> (tokens [Kd+Kc, D], positions).
        ``valid`` [P] bool restricts both kinds of tokens to positions the packing keeps."""
        p = features.shape[0]
        device = features.device
        if valid is None:
            valid = torch.ones(p, dtype=torch.bool, device=device)
        dominant = top_k_positions(cls, kd, valid) if kd else torch.zeros(0, dtype=torch.long, device=device)
        is_rest = valid.clone()
        is_rest[dominant] = False
        rest = is_rest.nonzero().flatten()  # raster order
        r = rest.numel()
        out_pos = [dominant]
        out_feat = [features[dominant]]
        if kc and r:
            kc = min(kc, r)
            step = max(1, r // kc)
            t_local = torch.arange(0, r, step, device=device)[:kc]
            is_target = torch.zeros(r, dtype=torch.bool, device=device)
            is_target[t_local] = True
            m = metric[rest].float()
            m = m / m.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            others = (~is_target).nonzero().flatten()
            sim = m[others] @ m[t_local].T  # [R - Kc, Kc]
            assign = sim.argmax(dim=-1)  # first maximum on ties
            x = features[rest].float()
            sums = torch.zeros(kc, x.shape[1], dtype=torch.float32, device=device).index_add_(0, assign, x[others])
            counts = torch.bincount(assign, minlength=kc).to(torch.float32)[:, None]
            target = x[t_local]
            if self.contextual_merge == "mean":
                merged = (target + sums) / (counts + 1)
            else:  # the release: target + mean of the assigned others (0 when none)
                merged = target + sums / counts.clamp_min(1)
            out_pos.append(rest[t_local])
            out_feat.append(merged.to(features.dtype))
        pos = torch.cat(out_pos)
        feat = torch.cat(out_feat)
        order = torch.argsort(pos)
        return feat[order], pos[order]

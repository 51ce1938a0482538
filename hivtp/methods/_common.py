"""Small helpers shared by the methods (budgets, top-k with deterministic ties, [CLS] rows).

Conventions shared by every baseline:

* ``budget`` is the number of visual tokens kept per 24x24 crop grid (LLaVA-1.5) or per image
  (LLaVA-NeXT; the adapter splits it over the image's crops and hands each crop its share in
  ``CropBatch.budgets``). ``budget=None`` means the method's default, :func:`default_budget`: one third
  of each crop's tokens (192 of 576; of the positions unpadding keeps on a LLaVA-NeXT crop), unless the
  method's docstring says otherwise.
* Ties in any ranking go to the lower raster index (stable descending sort), as in HIVTP.
* Scores are computed in float32 whatever the model dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..importance import cls_attention
from ..vision import TowerOutput
from .base import CropBatch, TowerRequest


def check_budget(budget: Any) -> int | None:
    """A budget parameter: a positive int or None."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ConfigError(f"budget must be a positive integer (visual tokens kept) or None, got {budget!r}.")
    return budget


def default_budget(num_patches: int) -> int:
    """The default budget of a crop: one third of its tokens (192 of a 24x24 grid)."""
    return max(1, round(num_patches / 3))


def valid_mask(crops: CropBatch) -> torch.Tensor:
    """[C, P] bool: the positions a method may choose (``CropBatch.valid``, or all)."""
    if crops.valid is None:
        return torch.ones(crops.features.shape[:2], dtype=torch.bool, device=crops.features.device)
    return crops.valid.to(device=crops.features.device, dtype=torch.bool)


def crop_budgets(crops: CropBatch, default: int | None = None) -> list[int]:
    """Per-crop budgets as ints, with the default filled in and range-checked (at most the crop's
    valid positions)."""
    p = crops.num_patches
    valid = None if crops.valid is None else crops.valid.sum(-1).tolist()
    budgets = list(crops.budgets) if crops.budgets else [None] * crops.num_crops
    if len(budgets) != crops.num_crops:
        raise ConfigError(f"got {len(budgets)} budgets for {crops.num_crops} crops.")
    out = []
    for b in budgets:
        if b is None:  # the default is a third of what the crop can hand on (its valid positions on NeXT)
            b = default_budget(p if valid is None else int(valid[len(out)])) if default is None else default
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= p:
            raise ConfigError(
                f"budget {b!r} is out of range for a crop of {p} tokens: keep between 1 and {p} tokens per "
                "grid (LLaVA-1.5) or at most the image's token count (LLaVA-NeXT)."
            )
        if valid is not None:
            b = min(b, int(valid[len(out)]))
        out.append(b)
    return out


def top_k_positions(scores: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Raster indices of the ``k`` highest scores of a 1-D tensor, ties to the lower index, sorted;
    only ``valid`` positions (bool, same shape) are eligible when given."""
    scores = scores.float()
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
        k = min(k, int(valid.sum()))
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def attention_request(layers: int | tuple[int, ...] | None, backend: str) -> TowerRequest:
    """Capture the attention of ``layers`` (one 0-based layer or several; repeats counted once): their
    q, k (fast, the tower keeps its SDPA kernels) or their probabilities (eager, the faithful path).
    None: the method is not attached yet, so the feature layer is unknown."""
    if layers is None:
        raise ConfigError("attach the method to a model first (its feature layer is not known yet).")
    layers = tuple(dict.fromkeys((layers,) if isinstance(layers, int) else layers))
    if backend == "eager":
        return TowerRequest(attention_layers=layers, eager=True)
    return TowerRequest(qk_layers=layers)


def cls_patch_attention(tower: TowerOutput, layer: int) -> torch.Tensor:
    """[C, P] float32: attention of the [CLS] query to every patch at ``layer``, mean over heads.

    Fast path: ``softmax(q_cls k^T / sqrt(d))`` from the captured projections; eager path: row 0 of
    the materialised probabilities. The two agree to float rounding (tests check 1e-5)."""
    if layer in tower.attentions:
        return tower.attentions[layer][:, :, 0, 1:].float().mean(dim=1)
    if layer not in tower.qk:
        raise ConfigError(f"the tower pass did not capture layer {layer}; the method's tower_request asks for it.")
    q, k = tower.qk[layer]
    return cls_attention(q, k, tower.num_heads)[:, :, 1:].mean(dim=1)


def keys_mean_over_heads(tower: TowerOutput, layer: int) -> torch.Tensor:
    """[C, T, head_dim] float32: the layer's key projections averaged over heads (VisionZip's metric)."""
    if layer not in tower.qk:
        raise ConfigError(f"the tower pass did not capture the keys of layer {layer}.")
    k = tower.qk[layer][1].float()
    c, t, d = k.shape
    return k.view(c, t, tower.num_heads, d // tower.num_heads).mean(dim=2)

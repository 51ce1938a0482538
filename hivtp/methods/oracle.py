"""``oracle``: keep the patches the scene's objects cover (offline only: the testbed's reference row).

It is a reference, not a bound: on the toy a selection that spreads its tokens over the scene can score
above it (README, Offline results).

Images of the procedural world (:mod:`hivtp.world`) draw their objects, and nothing else, in the palette
``COLOURS``; the background (flat with light noise, or in the cluttered world textured, with
distractors in muted ``CLUTTER_COLOURS``) never comes near a palette colour. Which patches hold the
evidence is therefore known by construction; this method reads it off each crop's pixels
(``CropBatch.pixels``, as the processor gives them), never off the model.

**Object pixels.** A pixel is an object pixel when its colour is within ``threshold`` intensity levels
(of 0-255, on every channel; default 24) of a palette colour.

* The pixels come normalised, ``(x / 255 - mean) / std`` with OpenAI CLIP's mean and std
  (``transformers.utils.constants``), which every LLaVA-1.5 / LLaVA-NeXT processor uses; they are
  mapped back to intensity levels first.
* An object's interior is its palette colour exactly (PIL draws without anti-aliasing); where the
  processor resizes (non-336 px canvases, LLaVA-NeXT tiles) an edge pixel blended with the background
  counts once it is mostly object (within 24 levels). Every colour the world draws that is not an
  object's is far from the palette on some channel (``tests/test_world.py``): a distractor at least 80
  levels, any blend of one with the background at least 55, the background (texture included) at least 90.
* Until issue 19's cluttered world the rule was "differs from the crop's median colour by more than
  24 levels": exact on a flat background, but it takes texture and distractors for objects.

**Coverage** of a patch: its number of object pixels (of ``p * p``, ``p`` = crop side / grid side).

**Ranking** (per crop, among valid positions only; ties go to the lower raster index):

1. covered patches (coverage > 0), most covered first;
2. then the fill: uncovered patches by their Chebyshev distance on the grid to the nearest covered
   patch, nearest first (ring 1 is the 8 neighbours of the objects: the context around them);
3. a crop without any covered patch fills in raster order.

Budget semantics as every subset method (``hivtp.methods._common``): ``budget`` tokens per crop grid
(LLaVA-1.5) or per image (LLaVA-NeXT), default a third of each crop; kept tokens stay in raster order.
Stats: ``tokens_kept`` and ``tokens_covered`` (kept tokens that objects cover).

Offline only (``offline_only``): it is the reference row of the offline tables and figures, never
planned for the paper profile, never timed, and not compared with HIVTP as a competing method. It
needs crop images (``needs_crop_pixels``): ``hivtp.attach`` refuses it on Qwen2.5-VL, whose layout
packs patch rows.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from ..errors import ConfigError
from ..world import COLOURS
from ._common import check_budget, crop_budgets, top_k_positions, valid_mask
from .base import CropBatch, CropSelection, PruningMethod, register_method

DEFAULT_THRESHOLD = 24.0


def check_threshold(threshold: Any) -> float:
    """The object-pixel threshold: intensity levels (0-255) strictly between 0 and 255."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 255:
        raise ConfigError(
            f"threshold must be a number of intensity levels between 0 and 255 (exclusive), got {threshold!r}; "
            f"the default {DEFAULT_THRESHOLD:g} tells the world's object colours from everything else it draws."
        )
    return float(threshold)


def coverage(pixels: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int], threshold: float) -> torch.Tensor:
    """[C, P] long: object pixels per patch (0 at invalid positions). ``pixels`` [C, 3, Hs, Ws] normalised."""
    c, _, hs, ws = pixels.shape
    h, w = grid
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float32, device=pixels.device)[None, :, None, None]
    std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32, device=pixels.device)[None, :, None, None]
    levels = (pixels.float() * std + mean) * 255  # [C, 3, Hs, Ws] intensity levels
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32, device=pixels.device)  # [K, 3]
    objects = torch.zeros((c, hs, ws), dtype=torch.bool, device=pixels.device)
    for colour in palette:  # a pixel within threshold of this colour on every channel
        objects |= ((levels - colour[None, :, None, None]).abs() <= threshold).all(dim=1)
    counts = objects.view(c, h, hs // h, w, ws // w).sum(dim=(2, 4)).flatten(1)  # [C, P]
    return counts.masked_fill(~valid.to(pixels.device), 0)


def object_patches(pixels: torch.Tensor, grid: tuple[int, int], threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """[C, P] bool: the patches that hold object pixels, every position valid (one crop per image, as
    LLaVA-1.5 sees it); for diagnostics that ask what a selection keeps."""
    valid = torch.ones(pixels.shape[0], grid[0] * grid[1], dtype=torch.bool, device=pixels.device)
    return coverage(pixels, valid, grid, threshold) > 0


def chebyshev(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """[P, P] long: Chebyshev distance between the raster positions of an (H, W) grid."""
    h, w = grid
    rows = torch.arange(h * w, device=device) // w
    cols = torch.arange(h * w, device=device) % w
    return torch.maximum((rows[:, None] - rows[None]).abs(), (cols[:, None] - cols[None]).abs())


def oracle_scores(counts: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[C, P] float: the ranking as one score, highest first. Covered patches score their coverage
    (> 0); uncovered ones minus their distance to the nearest covered patch (<= -1); in a crop
    without covered patches every position scores -max(H, W), so the stable sort keeps raster order."""
    covered = counts > 0
    far = max(grid)  # more than any distance on the grid
    dist = chebyshev(grid, counts.device).unsqueeze(0).masked_fill(~covered[:, None, :], far)  # [C, P, P]
    nearest = dist.amin(dim=-1)  # [C, P]
    return torch.where(covered, counts.float(), -nearest.float())


@register_method
class Oracle(PruningMethod):
    name = "oracle"
    needs_crop_pixels = True
    offline_only = True

    def __init__(self, budget: int | None = None, threshold: float | None = None) -> None:
        self.budget = check_budget(budget)
        self.threshold = check_threshold(threshold)

    def params(self) -> dict[str, Any]:
        return {"budget": self.budget, "threshold": self.threshold}

    def select(self, crops: CropBatch) -> CropSelection:
        pixels = crops.pixels
        if pixels is None:
            raise ConfigError(
                "oracle reads the crops' pixels (CropBatch.pixels), which the engine fills for LLaVA-1.5 and "
                "LLaVA-NeXT crops only; attach it to such a model (e.g. toy-llava)."
            )
        h, w = crops.grid
        if pixels.dim() != 4 or pixels.shape[0] != crops.num_crops or pixels.shape[2] % h or pixels.shape[3] % w:
            raise ConfigError(
                f"oracle needs pixels [C={crops.num_crops}, 3, S, S] whose sides are a multiple of the {h}x{w} grid, "
                f"got {tuple(pixels.shape)}."
            )
        budgets = crop_budgets(crops)
        valid = valid_mask(crops)
        counts = coverage(pixels, valid, crops.grid, self.threshold).to(crops.features.device)  # [C, P]
        scores = oracle_scores(counts, crops.grid)
        keep = torch.zeros_like(valid)
        stats = []
        for c, b in enumerate(budgets):
            kept = top_k_positions(scores[c], b, valid[c])
            keep[c, kept] = True
            stats.append({"tokens_kept": b, "tokens_covered": int((counts[c, kept] > 0).sum())})
        return CropSelection.from_masks(crops.features, keep, stats)

"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``, anyres): every 336 px crop is a crop.

An image of size (h, w) is cut by the processor into a base crop (the whole image resized) and a
grid of high-resolution tiles; the model stitches the tiles' 24 x 24 feature grids into one canvas,
unpads it to the image's aspect ratio, appends an ``image_newline`` token after every canvas row,
and puts the base crop's tokens first (``LlavaNextModel.pack_image_features``).

The method selects tokens per crop. To place the kept tokens we never re-implement that stitching:
we pack a one-channel tensor of token *ids* (``crop * P + patch + 1``; the newline is id 0) through
the model's own ``pack_image_features`` and read, in packed order, which crop token lands where.
A transformers release that changes the packing is therefore followed automatically, and
``tests/test_next.py`` fails if our placement and the model's packing of the features disagree.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from ..errors import ConfigError, InputMismatchError
from ..methods.base import CropSelection
from .base import CropLayout, ImageFeatures, ModelAdapter

NEWLINE_POLICIES = ("row", "none")
NEWLINE_ID = 0  # id of a newline entry in the packed id map (token ids start at 1)


def split_budget(budget: int, counts: list[int]) -> list[int]:
    """Split ``budget`` over crops in proportion to ``counts``, exactly (largest remainder; ties go
    to the earlier crop), never giving a crop more than it has."""
    total = sum(counts)
    budget = min(budget, total)
    floors = [budget * n // total for n in counts]
    remainders = sorted(range(len(counts)), key=lambda c: (-(budget * counts[c] % total), c))
    for c in remainders[: budget - sum(floors)]:
        floors[c] += 1
    return floors


def least_budget(counts: list[int]) -> int:
    """The smallest image budget from which on :func:`split_budget` gives every crop that has tokens
    at least one (largest-remainder splits need not be monotone, so every larger budget is checked
    up to where each crop's floor alone is 1)."""
    def every_crop_keeps_one(budget: int) -> bool:
        return all(share > 0 for share, n in zip(split_budget(budget, counts), counts) if n > 0)

    total = sum(counts)
    budget = -(-total // min(n for n in counts if n > 0))  # from here on budget * n // total >= 1
    while budget > 1 and every_crop_keeps_one(budget - 1):
        budget -= 1
    return budget


class LlavaNextAdapter(ModelAdapter):
    model_classes = (LlavaNextForConditionalGeneration,)
    adapter_params = ("newline",)

    def __init__(self, model, newline: str = "row", **params: Any) -> None:
        super().__init__(model, **params)
        if newline not in NEWLINE_POLICIES:
            raise ConfigError(f"newline={newline!r}; choose 'row' (default: one newline per kept canvas row) or 'none'.")
        self.newline = newline
        self.crop_size = self.config.vision_config.image_size
        self.pinpoints = self._check_pinpoints(self.config.image_grid_pinpoints, self.crop_size)

    @staticmethod
    def _check_pinpoints(pinpoints: Any, crop: int) -> list[list[int]]:
        try:
            points = [[int(h), int(w)] for h, w in pinpoints]
        except (TypeError, ValueError):
            raise ConfigError(f"image_grid_pinpoints must be a list of [height, width] pairs, got {pinpoints!r}.") from None
        bad = [p for p in points if p[0] <= 0 or p[1] <= 0 or p[0] % crop or p[1] % crop]
        if not points or bad:
            raise ConfigError(
                f"image_grid_pinpoints {bad or points} do not tile into {crop} px crops: every resolution must "
                f"be a positive multiple of the vision tower's image_size ({crop}), e.g. [[{crop}, {2 * crop}]]."
            )
        return points

    # --- crops -------------------------------------------------------------------------------
    def crops(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> CropLayout:
        if image_sizes is None:
            raise InputMismatchError(
                "LLaVA-NeXT needs image_sizes (the processor returns them): pass image_sizes=inputs['image_sizes']."
            )
        image_sizes = torch.as_tensor(image_sizes)
        if image_sizes.dim() != 2 or image_sizes.shape[1] != 2:
            raise InputMismatchError(f"image_sizes must be [num_images, 2] (height, width), got {tuple(image_sizes.shape)}.")
        if pixel_values.dim() != 5 or pixel_values.shape[0] != image_sizes.shape[0]:
            raise InputMismatchError(
                f"LLaVA-NeXT expects pixel_values [num_images, max_crops, 3, H, W] with one image size per image, "
                f"got pixel_values {tuple(pixel_values.shape)} and image_sizes {tuple(image_sizes.shape)}."
            )
        # The model's own count of crops per image (base + tiles); the processor zero-pads the rest.
        counts = [image_size_to_num_patches(s, self.pinpoints, self.crop_size) for s in image_sizes]
        if max(counts) > pixel_values.shape[1]:
            raise InputMismatchError(
                f"image_sizes imply up to {max(counts)} crops per image but pixel_values has {pixel_values.shape[1]}; "
                "build pixel_values and image_sizes with the model's own processor."
            )
        crops = torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)])  # [C, 3, S, S]
        packed = [self._packed_ids(n, size) for n, size in zip(counts, image_sizes)]
        image_of_crop = [i for i, n in enumerate(counts) for _ in range(n)]
        return CropLayout(
            pixel_values=crops,
            image_of_crop=image_of_crop,
            tokens_per_image=[int(p.numel()) for p in packed],
            extra={"image_sizes": image_sizes, "crops_per_image": counts, "packed_ids": packed},
        )

    def _packed_ids(self, num_crops: int, image_size: torch.Tensor) -> torch.Tensor:
        """[L] long: for each packed position of one image, ``crop * P + patch + 1`` or 0 for a
        newline, obtained by packing an id channel through the model's ``pack_image_features``."""
        p = self.grid[0] * self.grid[1]
        ids = torch.arange(1, num_crops * p + 1, dtype=torch.float64).view(num_crops, p, 1)  # exact in float64
        newline = torch.full((1,), float(NEWLINE_ID), dtype=torch.float64)
        packed, _ = self.core.pack_image_features([ids], image_size.view(1, 2), "default", image_newline=newline)
        return packed[0][:, 0].round().long()  # [L]

    # --- budgets -----------------------------------------------------------------------------
    def valid_counts(self, layout: CropLayout) -> list[int]:
        """Per crop: how many of its tokens survive unpadding (the base keeps all of them)."""
        p = self.grid[0] * self.grid[1]
        counts = []
        for ids, n in zip(layout.extra["packed_ids"], layout.extra["crops_per_image"]):
            crop = (ids[ids != NEWLINE_ID] - 1) // p
            counts.extend(torch.bincount(crop, minlength=n).tolist())
        return counts

    def crop_valid_masks(self, layout: CropLayout) -> torch.Tensor:
        """[C, P] bool: the positions of each crop that survive the model's unpadding (read off the
        packed id map), so that methods pick among them and an image budget stays exact."""
        p = self.grid[0] * self.grid[1]
        masks = []
        for ids, n in zip(layout.extra["packed_ids"], layout.extra["crops_per_image"]):
            mask = torch.zeros(n * p, dtype=torch.bool)
            mask[ids[ids != NEWLINE_ID] - 1] = True
            masks.append(mask.view(n, p))
        return torch.cat(masks)

    def crop_budgets(self, layout: CropLayout, budget: int | None) -> list[int | None]:
        """An image budget B (visual tokens, newlines not counted) split over the image's crops in
        proportion to their token counts after unpadding; exact per image. A budget larger than an
        image's visual tokens, or too small to give each of its crops a token (:func:`least_budget`),
        is a ConfigError (the engine asks before the vision tower runs)."""
        if budget is None:
            return [None] * len(layout.image_of_crop)
        valid = self.valid_counts(layout)
        out: list[int | None] = []
        start = 0
        for image, n in enumerate(layout.extra["crops_per_image"]):
            counts = valid[start : start + n]
            if budget > sum(counts):  # split_budget would clamp it: refuse instead of a silent smaller budget
                raise ConfigError(
                    f"budget={budget} is larger than image {image}'s {sum(counts)} visual tokens (a LLaVA-NeXT "
                    "budget counts the tokens kept per image, newlines excluded). Pass a budget of at most "
                    f"{sum(counts)} for this image, or method=none to keep every token."
                )
            shares = split_budget(budget, counts)
            if any(share == 0 and c > 0 for share, c in zip(shares, counts)):
                # a crop left with no token would reach the method as a budget of 0: say what is needed
                least = least_budget(counts)
                raise ConfigError(
                    f"budget={budget} is too small for image {image}: a LLaVA-NeXT budget is split over the image's "
                    f"{n} crops (base + {n - 1} tiles) in proportion to their tokens, and every crop keeps at least "
                    f"one, which for this image needs budget >= {least}. Pass a budget of at least {least}."
                )
            out.extend(shares)
            start += n
        return out

    # --- assembly ----------------------------------------------------------------------------
    def assemble(self, selection: CropSelection, layout: CropLayout) -> ImageFeatures:
        projected = self.project(selection.features)  # per crop [N_c, D]
        p = self.grid[0] * self.grid[1]
        newline = self.core.image_newline  # [D]
        features, stats = [], []
        first = 0
        for ids, n in zip(layout.extra["packed_ids"], layout.extra["crops_per_image"]):
            crops = range(first, first + n)
            first += n
            rows = torch.cat([projected[c] for c in crops] + [newline[None].to(projected[0])])  # [K + 1, D]
            order, counts = self._placement(ids, [selection.positions[c] for c in crops], p, n)
            features.append(rows[order])
            merged = {k: sum(selection.stats[c].get(k, 0) for c in crops) for k in selection.stats[crops[0]]}
            merged.update(counts)
            stats.append(merged)
        return ImageFeatures(features=features, stats=stats)

    def _placement(
        self, ids: torch.Tensor, positions: list[torch.Tensor], p: int, num_crops: int
    ) -> tuple[torch.Tensor, dict[str, int]]:
        """Indices into [crop tokens..., newline] in packed order, and the per-image counters.

        ids: [L] packed id map; positions[k]: [N_k] raster indices kept in crop k."""
        offsets = torch.tensor([0] + [len(x) for x in positions]).cumsum(0)
        newline_row = int(offsets[-1])
        lookup = torch.full((num_crops * p + 1,), -1, dtype=torch.long)  # id -> row in the concatenation
        for k, pos in enumerate(positions):
            lookup[k * p + pos.cpu() + 1] = offsets[k] + torch.arange(len(pos))
        is_newline = ids == NEWLINE_ID
        row = lookup[ids.clamp(min=0)]
        kept = (row >= 0) & ~is_newline
        is_base = (ids >= 1) & (ids <= p) & (num_crops > 1)
        keep_newline = torch.zeros_like(is_newline)
        if self.newline == "row":
            # A newline ends a canvas row: keep it when that row (base crop excluded) kept a token.
            segment = torch.cumsum(is_newline.long(), 0) - is_newline.long()  # row index of each entry
            has_token = torch.zeros(int(is_newline.sum()) + 1, dtype=torch.bool)
            has_token[segment[kept & ~is_base]] = True
            keep_newline = is_newline & has_token[segment]
        order = torch.where(keep_newline, torch.full_like(row, newline_row), row)[kept | keep_newline]
        counts = {
            "tokens_base": int((kept & is_base).sum()) if num_crops > 1 else int(kept.sum()),
            "tokens_tiles": int((kept & ~is_base).sum()) if num_crops > 1 else 0,
            "tokens_newline": int(keep_newline.sum()),
        }
        counts["tokens_kept"] = counts["tokens_base"] + counts["tokens_tiles"] + counts["tokens_newline"]
        return order.to(self.core.image_newline.device), counts

"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one 336 px crop per image, 24 x 24 patches."""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration

from ..errors import InputMismatchError
from ..methods.base import CropSelection
from .base import CropLayout, ImageFeatures, ModelAdapter


class LlavaAdapter(ModelAdapter):
    model_classes = (LlavaForConditionalGeneration,)

    def crops(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> CropLayout:
        if pixel_values.dim() != 4:
            raise InputMismatchError(
                f"LLaVA-1.5 expects pixel_values of shape [num_images, 3, H, W], got {tuple(pixel_values.shape)}."
            )
        n = pixel_values.shape[0]
        tokens = self.grid[0] * self.grid[1]
        return CropLayout(pixel_values=pixel_values, image_of_crop=list(range(n)), tokens_per_image=[tokens] * n)

    def assemble(self, selection: CropSelection, layout: CropLayout) -> ImageFeatures:
        # One crop per image: the projected kept tokens are the image's tokens, in raster order.
        return ImageFeatures(features=self.project(selection.features), stats=[dict(s) for s in selection.stats])

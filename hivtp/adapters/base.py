"""What a model family must provide to the pruning engine (:class:`hivtp.pruned.PrunedModel`).

The engine is model-agnostic: it runs the vision tower on *crops*, lets the method select tokens
per crop, and asks the adapter to turn the selection into per-image LLM features. The adapter
knows how a family cuts images into crops, which hidden state is its feature layer, and how its
projector (and, for LLaVA-NeXT, its packing) turn crop features into image features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedModelError
from ..methods.base import CropSelection
from ..vision import TowerOutput, hidden_state_index, num_encoder_layers

__all__ = ["CropLayout", "ImageFeatures", "ModelAdapter"]


@dataclass
class CropLayout:
    """How the images of a batch were cut into crops for the vision tower."""

    pixel_values: torch.Tensor  # [C, 3, S, S] every crop of every image, image by image
    image_of_crop: list[int]  # [C] image index of each crop
    tokens_per_image: list[int]  # unpruned placeholder count of each image in the prompt
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific (e.g. NeXT image sizes)

    @property
    def num_images(self) -> int:
        return len(self.tokens_per_image)


@dataclass
class ImageFeatures:
    """Projected features, one tensor per image, and per-image counters for ``last_stats``."""

    features: list[torch.Tensor]  # [N_i, D_text]
    stats: list[dict[str, int]]


class ModelAdapter:
    """Base class; subclasses set ``model_classes`` and implement the three hooks."""

    model_classes: ClassVar[tuple[type, ...]] = ()
    #: parameters an adapter accepts from ``attach(**params)`` besides the method's own
    adapter_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, **params: Any) -> None:
        self.model = model
        self.core = model.model  # LlavaModel / LlavaNextModel
        self.config = model.config
        self.vision_tower: nn.Module = self.core.vision_tower
        self.projector: nn.Module = self.core.multi_modal_projector
        self.image_token_id: int = self.config.image_token_id
        self.num_layers = num_encoder_layers(self.vision_tower)
        strategy = self.config.vision_feature_select_strategy
        if strategy != "default":
            raise ConfigError(
                f"vision_feature_select_strategy={strategy!r}: token pruning works on patch tokens only, "
                "so the model must drop CLS ('default', as every llava-hf LLaVA-1.5 / NeXT checkpoint does)."
            )
        layer = self.config.vision_feature_layer
        layers = [layer] if isinstance(layer, int) else list(layer)
        self.feature_indices = [hidden_state_index(x, self.num_layers) for x in layers]
        vc = self.config.vision_config
        side = vc.image_size // vc.patch_size
        self.grid = (side, side)

    @property
    def feature_attention_layer(self) -> int:
        """0-based encoder layer whose output is the (deepest) feature layer: layers after it are
        never run, and methods that use "the feature layer's attention" read this layer."""
        return max(self.feature_indices) - 1

    @property
    def pad_token_id(self) -> int:
        for cfg in (self.config, getattr(self.config, "text_config", None)):
            pad = getattr(cfg, "pad_token_id", None) if cfg is not None else None
            if pad is not None:
                return int(pad)
        return 0

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return isinstance(model, cls.model_classes)

    # --- hooks -------------------------------------------------------------------------------
    def crops(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> CropLayout:
        raise NotImplementedError

    def patch_features(self, tower: TowerOutput) -> torch.Tensor:
        """[C, P, D] feature-layer patch tokens, CLS dropped, feature layers concatenated (as the
        model's own ``get_image_features`` does)."""
        pool = [tower.hidden_states[i][:, 1:] for i in self.feature_indices]
        return pool[0] if len(pool) == 1 else torch.cat(pool, dim=-1)

    def crop_valid_masks(self, layout: CropLayout) -> torch.Tensor | None:
        """[C, P] bool: positions the model's packing keeps; None = all (no unpadding here)."""
        return None

    def crop_budgets(self, layout: CropLayout, budget: int | None) -> list[int | None]:
        return [budget] * len(layout.image_of_crop)

    def assemble(self, selection: CropSelection, layout: CropLayout) -> ImageFeatures:
        raise NotImplementedError

    # --- shared helpers ----------------------------------------------------------------------
    def project(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the projector once on the concatenation of every crop's kept tokens."""
        counts = [f.shape[0] for f in features]
        projected = self.projector(torch.cat(features).unsqueeze(0)).squeeze(0)
        return list(torch.split(projected, counts))


def unsupported(model: nn.Module, families: list[str]) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{type(model).__name__} is not supported: hivtp.attach wraps {', '.join(families)} "
        "(llava-hf checkpoints, e.g. llava-hf/llava-1.5-7b-hf). Load the model with "
        "LlavaForConditionalGeneration / LlavaNextForConditionalGeneration.from_pretrained."
    )

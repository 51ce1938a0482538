"""What a model family must provide to the pruning engine (:class:`hivtp.pruned.PrunedModel`).

The engine is model-agnostic: it runs the vision tower on *crops*, lets the method select tokens
per crop, and asks the adapter to turn the selection into per-image LLM features. The adapter
knows how a family cuts images into crops, how its tower runs (:meth:`ModelAdapter.run_tower`),
which hidden state is its feature layer, each crop's token grid (:meth:`ModelAdapter.crop_grids`; the
engine hands the method one :class:`~hivtp.methods.base.CropBatch` per grid shape), how its projector
(and, for LLaVA-NeXT, its packing) turn crop features into image features, and which extra inputs the
language model needs for the pruned sequence (:meth:`ModelAdapter.llm_inputs`, e.g. Qwen2.5-VL's
M-RoPE position ids). The defaults are the LLaVA family's (a CLIP tower with [CLS], one square grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError, UnsupportedModelError
from ..methods.base import CropSelection, PruningMethod, TowerRequest
from ..vision import TowerOutput, hidden_state_index, num_encoder_layers, run_tower, run_tower_eager

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
    #: per image [N_i] long: the unpruned token index (in the prompt's image run) each feature stands
    #: for; set by families whose LLM positions depend on it (Qwen2.5-VL's M-RoPE), else None
    positions: list[torch.Tensor] | None = None


class ModelAdapter:
    """Base class; subclasses set ``model_classes`` and implement the three hooks."""

    model_classes: ClassVar[tuple[type, ...]] = ()
    #: parameters an adapter accepts from ``attach(**params)`` besides the method's own
    adapter_params: ClassVar[tuple[str, ...]] = ()
    #: processor outputs besides input_ids / attention_mask / pixel_values / image_sizes that the
    #: adapter consumes (they describe the *unpruned* prompt, so they never reach the LLM call)
    layout_inputs: ClassVar[tuple[str, ...]] = ()
    #: a tower pass depends on the crops' pixels alone, so equal pixels may share one pass
    #: (:class:`hivtp.vision.TowerCache`); False where it also depends on layout inputs (Qwen's grid_thw)
    shares_tower_passes: ClassVar[bool] = True
    #: the vision tower has a [CLS] token (methods with ``needs_cls`` are refused otherwise)
    has_cls: ClassVar[bool] = True
    #: grids vary per image: regions / windows that do not divide a grid use the uneven partition
    uneven_partition: ClassVar[bool] = False

    def __init__(self, model: nn.Module, **params: Any) -> None:
        self.model = model
        self.core = model.model  # LlavaModel / LlavaNextModel / Qwen2_5_VLModel
        self.config = model.config
        self.image_token_id: int = self.config.image_token_id
        self._init_vision()

    @classmethod
    def default_method_params(cls, model: nn.Module) -> dict[str, Any]:
        """Method parameters whose default depends on the family (e.g. Qwen2.5-VL's score layers), by
        parameter name; ``attach`` hands them to the method (:meth:`PruningMethod.with_family_defaults`),
        which takes those that mean what the family means (hivtp's vision score ``layers``, not pdrop's
        LLM stage ``layers``) where its caller left them out."""
        return {}

    def check_call_inputs(self, inputs: dict[str, Any]) -> None:
        """Refuse, before any model work, a call's extra inputs (the keyword arguments besides
        input_ids / attention_mask / pixel_values / image_sizes) that this family does not prune.
        Runs before the engine's text-only shortcut, so a prompt without ``pixel_values`` is checked too."""

    def check_method(self, method: PruningMethod) -> None:
        """Refuse, before any model work, a method this family cannot serve."""
        if method.needs_cls and not self.has_cls:
            raise ConfigError(
                f"method {method.name!r} ranks tokens by the vision tower's [CLS] attention, but "
                f"{type(self.model).__name__}'s vision tower has no [CLS] token. Use a CLS-free method "
                "(hivtp, random, pool, divprune, fastv, none)."
            )

    def _init_vision(self) -> None:
        """The LLaVA family: a CLIP tower whose feature layer drops [CLS], one square grid."""
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
        self.grid: tuple[int, int] | None = (side, side)  # None: the grid varies per image

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
    def crops(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None, **layout_inputs: Any) -> CropLayout:
        raise NotImplementedError

    def run_tower(self, layout: CropLayout, request: TowerRequest) -> TowerOutput:
        """The tower on every crop up to the feature layer, with the captures the method asked for."""
        if request.eager:
            return run_tower_eager(self.vision_tower, layout.pixel_values, self.feature_indices, request.attention_layers)
        return run_tower(self.vision_tower, layout.pixel_values, self.feature_indices, request.qk_layers)

    def crop_grids(self, layout: CropLayout) -> list[tuple[int, int]]:
        """(H, W) token grid of every crop."""
        return [self.grid] * len(layout.image_of_crop)

    def llm_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        layout: CropLayout,
        images: ImageFeatures,
        per_sample: list[list[int]],
        merged: Any,
    ) -> dict[str, Any]:
        """Extra keyword arguments of the LLM call on the pruned sequence (``merged``, a
        :class:`hivtp.inputs.MergedInputs`), computed from the caller's unpruned ``input_ids``. The
        LLaVA family needs none: its pruned sequence takes ordinary positions."""
        return {}

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
        "(llava-hf checkpoints, e.g. llava-hf/llava-1.5-7b-hf, or Qwen/Qwen2.5-VL-7B-Instruct). Load the "
        "model with that class's from_pretrained."
    )

"""The pruning engine: a wrapper around a LLaVA instance that prunes image tokens at prefill.

``PrunedModel.generate`` takes exactly what the wrapped model's ``generate`` takes. Inside:

1. ``vision``  the adapter runs the vision tower on every crop, up to the feature layer only,
               capturing what the method asked for (q/k of its score layers, or eager attention maps);
2. ``select``  the method picks tokens per crop (scoring + selection: the method's own overhead),
               one :class:`CropBatch` per grid shape (Qwen2.5-VL's grids differ per image);
3. ``project`` the projector runs on the kept tokens only; the adapter assembles per-image features;
4. ``merge``   placeholder runs are shortened to the kept counts, samples left-padded, features
               written into the embeddings;
5. ``llm``     the wrapped model's own ``generate`` runs on ``inputs_embeds`` (+ the shortened
               ``input_ids`` and whatever the adapter adds, e.g. Qwen2.5-VL's M-RoPE
               ``position_ids``), so decoding, caching and stopping are the model's.

The returned sequences start with the caller's original ``input_ids``, so they compare one to one
with the unmodified model's output (with ``num_beams`` / ``num_return_sequences``, each returned row
starts with its sample's prompt, as transformers repeats it). The wrapped model is never modified:
no class is patched, and any temporary hook or attention switch is undone before returning.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .adapters.base import CropLayout, ImageFeatures, ModelAdapter
from .errors import ConfigError, InputMismatchError
from .inputs import MergedInputs, left_padded, merge_image_tokens, split_images_by_sample
from .methods.base import CropBatch, CropSelection, PruningMethod

__all__ = ["PrunedModel", "PreparedInputs", "STAT_KEYS"]

#: keys every ``last_stats`` entry carries (harness.md), whatever the method
STAT_KEYS = ("tokens_kept", "tokens_global", "tokens_local", "tokens_corrected", "select_ms")


def _check_pixel_values(pixel_values: torch.Tensor) -> None:
    """Refuse what the tower cannot turn into meaningful tokens, before any work: no images at all,
    or NaN / inf pixels (they would surface later as non-finite scores or silently as NaN features)."""
    if pixel_values.dim() == 0 or pixel_values.shape[0] == 0:
        raise InputMismatchError(
            f"pixel_values holds no images (shape {tuple(pixel_values.shape)}): pass at least one image per "
            "<image> in the prompts, or call generate without pixel_values for text-only prompts."
        )
    if pixel_values.is_floating_point() and not bool(torch.isfinite(pixel_values).all()):
        raise InputMismatchError(
            "pixel_values contain NaN or inf; check the image loading and preprocessing (the model's "
            "processor returns finite values)."
        )


def has_crop_images(adapter: ModelAdapter) -> bool:
    """Whether the adapter's layouts hold crop images, ``CropLayout.pixel_values`` [C, 3, S, S]: the
    LLaVA families cut every image into square crops of one grid (``adapter.grid`` set); a family whose
    grid varies per image (Qwen2.5-VL, ``adapter.grid`` None) packs patch rows instead."""
    return adapter.grid is not None


def check_crop_pixels(method: PruningMethod, adapter: ModelAdapter) -> None:
    """Refuse, before any model work, a method that reads crop pixels on a family that has none."""
    if method.needs_crop_pixels and not has_crop_images(adapter):
        raise ConfigError(
            f"method {method.name!r} reads the crops' pixels, but {type(adapter.model).__name__} packs its images "
            "into patch rows, not crop images. Use it with a LLaVA-1.5 or LLaVA-NeXT model (e.g. toy-llava)."
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PreparedInputs:
    """Everything the language model needs for prefill, plus per-sample accounting."""

    merged: MergedInputs
    stats: list[dict[str, Any]]


class PrunedModel:
    """A LLaVA / LLaVA-NeXT model with a token-reduction method attached (see module docstring).

    Attribute access falls through to the wrapped model (``.config``, ``.device``, ``.eval()`` ...),
    so code that holds a ``LlavaForConditionalGeneration`` keeps working with this object.
    """

    def __init__(self, model: nn.Module, method: PruningMethod, adapter: ModelAdapter) -> None:
        check_crop_pixels(method, adapter)
        self.model = model
        self.method = method
        self.adapter = adapter
        self.last_stats: list[dict[str, Any]] = []
        #: optional :class:`hivtp.vision.TowerCache` shared by models attached to the same weights
        self.tower_cache: TowerCache | None = None

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; guard against recursion before __init__ ran.
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"PrunedModel({type(self.model).__name__}, method={self.method!r})"

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # --- stages ------------------------------------------------------------------------------
    def layout(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **layout_inputs: Any) -> CropLayout:
        """The adapter's crops; ``layout_inputs`` are the processor outputs it consumes (e.g. Qwen2.5-VL's
        ``image_grid_thw``)."""
        _check_pixel_values(pixel_values)
        pixel_values = pixel_values.to(self.adapter.vision_tower.device)
        given = {k: v for k, v in layout_inputs.items() if v is not None}
        layout = self.adapter.crops(pixel_values, image_sizes, **given) if given else self.adapter.crops(pixel_values, image_sizes)
        # A budget the images cannot take (LLaVA-NeXT: more than an image's tokens, or fewer than its
        # crops need) is refused here, before the vision tower runs, not after it.
        self.adapter.crop_budgets(layout, self._crop_budget())
        return layout

    @torch.no_grad()
    def run_vision(self, layout: CropLayout):
        """Stage 1: the tower on every crop, up to the feature layer, with the method's captures."""
        request = self.method.tower_request()

        def compute():
            return self.adapter.run_tower(layout, request)

        if self.tower_cache is None or not self.adapter.shares_tower_passes:
            return compute()
        # opt-in (in-process evaluation): reuse an exactly equal batch's pass (see vision.TowerCache)
        adapter = self.adapter
        return self.tower_cache.run(adapter.vision_tower, layout.pixel_values, adapter.feature_indices, request, compute)

    @torch.no_grad()
    def select_tokens(self, tower, layout: CropLayout, crop_keys: list[str] | None = None) -> CropSelection:
        """Stage 2: the method's scoring + selection on every crop, one call per grid shape (crops of
        one shape stack into a dense batch); the selections come back in crop order."""
        features = self.adapter.patch_features(tower)  # [C, P, D], or per crop [P_c, D]
        budgets = self.adapter.crop_budgets(layout, self._crop_budget())
        valid = self.adapter.crop_valid_masks(layout)
        pixels = layout.pixel_values if has_crop_images(self.adapter) else None  # [C, 3, S, S]
        groups: dict[tuple[int, int], list[int]] = {}
        for c, grid in enumerate(self.adapter.crop_grids(layout)):
            groups.setdefault(grid, []).append(c)

        def batch(grid: tuple[int, int], crops: list[int]) -> CropBatch:
            whole = len(crops) == len(budgets)
            return CropBatch(
                features=features if whole and torch.is_tensor(features) else torch.stack([features[c] for c in crops]),
                grid=grid,
                tower=tower if whole else tower.subset(crops),
                budgets=[budgets[c] for c in crops],
                crop_keys=[crop_keys[c] for c in crops] if crop_keys else [],
                feature_attention_layer=self.adapter.feature_attention_layer,
                valid=None if valid is None else valid[crops],
                uneven_partition=self.adapter.uneven_partition,
                pixels=None if pixels is None else pixels if whole else pixels[crops],
            )

        if len(groups) == 1:  # every crop of one shape (always for LLaVA): one call
            ((grid, crops),) = groups.items()
            return self.method.select(batch(grid, crops))
        rows: dict[int, tuple[torch.Tensor, torch.Tensor, dict]] = {}
        for grid, crops in groups.items():
            selection = self.method.select(batch(grid, crops))
            rows.update(zip(crops, zip(selection.features, selection.positions, selection.stats)))
        ordered = [rows[c] for c in range(len(budgets))]
        return CropSelection(
            features=[r[0] for r in ordered], positions=[r[1] for r in ordered], stats=[r[2] for r in ordered]
        )

    @torch.no_grad()
    def encode_images(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        crop_keys: list[str] | None = None,
        **layout_inputs: Any,
    ) -> tuple[ImageFeatures, CropLayout, float]:
        """Stages 1-3: per-image projected features of the kept tokens, and the select time (ms)."""
        layout = self.layout(pixel_values, image_sizes, **layout_inputs)
        return self._encode(layout, crop_keys)

    def _encode(self, layout: CropLayout, crop_keys: list[str] | None) -> tuple[ImageFeatures, CropLayout, float]:
        tower = self.run_vision(layout)
        device = layout.pixel_values.device
        _sync(device)
        start = time.perf_counter()
        selection = self.select_tokens(tower, layout, crop_keys)
        _sync(device)
        select_ms = (time.perf_counter() - start) * 1e3
        return self.adapter.assemble(selection, layout), layout, select_ms

    @torch.no_grad()
    def prepare_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        sample_ids: list[Any] | None = None,
        **layout_inputs: Any,
    ) -> PreparedInputs:
        """Stages 1-4: the shortened, left-padded LLM inputs with image features written in."""
        if pixel_values is None:
            raise InputMismatchError("prepare_inputs needs pixel_values; text-only prompts need no pruning.")
        if input_ids.dim() != 2 or input_ids.shape[0] == 0:
            raise InputMismatchError(
                f"input_ids must be a non-empty batch [batch, length], got shape {tuple(input_ids.shape)}: "
                "pass at least one prompt (build inputs with the model's processor)."
            )
        if sample_ids is not None and len(sample_ids) != input_ids.shape[0]:
            raise InputMismatchError(f"got {len(sample_ids)} sample_ids for a batch of {input_ids.shape[0]}.")
        device = self.device
        input_ids = input_ids.to(device)
        attention_mask = attention_mask.to(device) if attention_mask is not None else None
        layout = self.layout(pixel_values, image_sizes, **layout_inputs)
        # Check the prompt against the images before spending time in the vision tower.
        placeholders = (input_ids == self.adapter.image_token_id)
        if attention_mask is not None:
            placeholders &= attention_mask.bool()
        per_sample = split_images_by_sample(placeholders.sum(-1).tolist(), layout.tokens_per_image)
        crop_keys = self._crop_keys(layout, per_sample, sample_ids)
        images, layout, select_ms = self._encode(layout, crop_keys)
        merged = merge_image_tokens(
            input_ids,
            attention_mask,
            images.features,
            layout.tokens_per_image,
            per_sample,
            self.adapter.image_token_id,
            self.adapter.pad_token_id,
            self.model.get_input_embeddings(),
        )
        merged.llm_kwargs = self.adapter.llm_inputs(input_ids, attention_mask, layout, images, per_sample, merged)
        stats = self._sample_stats(images, layout, per_sample, select_ms)
        return PreparedInputs(merged=merged, stats=stats)

    # --- user-facing calls -------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        sample_ids: list[Any] | None = None,
        **generate_kwargs: Any,
    ):
        """Same call as the wrapped model's ``generate``; prunes image tokens at prefill.

        ``sample_ids`` (optional) names the samples, so methods with randomness can seed per sample.
        Use ``max_new_tokens`` rather than ``max_length``: the pruned prompt is shorter. Beam search and
        ``num_return_sequences`` work as on the wrapped model: images are pruned once per sample and
        transformers repeats the pruned prompt for each beam / returned sequence.
        """
        # before the text-only shortcut: a video-only prompt has no pixel_values but must not run unpruned
        self.adapter.check_call_inputs(generate_kwargs)
        if pixel_values is None:  # text only: nothing to prune
            self.last_stats = []
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        if input_ids is None:
            raise InputMismatchError("generate needs input_ids with image placeholder tokens (use the processor).")
        layout_inputs = self._layout_inputs(generate_kwargs)
        prepared = self.prepare_inputs(input_ids, attention_mask, pixel_values, image_sizes, sample_ids, **layout_inputs)
        self.last_stats = prepared.stats
        merged = prepared.merged
        with self.method.llm_context(self.model, merged, self.last_stats):
            out = self.model.generate(
                input_ids=merged.input_ids,
                inputs_embeds=merged.inputs_embeds,
                attention_mask=merged.attention_mask,
                **merged.llm_kwargs,
                **generate_kwargs,
            )
        return self._restore_prompt(out, input_ids.to(merged.input_ids.device), merged.input_ids.shape[1])

    @torch.no_grad()
    def __call__(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        sample_ids: list[Any] | None = None,
        **kwargs: Any,
    ):
        """One forward pass over the *pruned* sequence (e.g. for log-likelihoods). The logits are
        right-aligned with the caller's sequence: ``logits[:, -k:]`` covers its last k tokens (so the
        inputs must be left-padded; right padding is refused).

        Position ids are those ``generate`` uses (each sample counts from its first real token), so a
        sample's logits do not depend on the left padding its batch needs."""
        self.adapter.check_call_inputs(kwargs)  # as in generate: before the text-only shortcut
        if pixel_values is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        for moved in ("labels", "position_ids"):
            if moved in kwargs:
                raise InputMismatchError(
                    f"{moved} are not supported on a pruned forward (the pruned sequence is shorter and "
                    "re-padded, so positions move); the forward computes its own position ids, and a loss "
                    "comes from the right-aligned logits."
                )
        if attention_mask is not None and not left_padded(attention_mask):
            # The pruned sequence is re-padded on the left, so with right padding ``logits[:, -k:]``
            # would be the caller's pads' positions: a shifted loss, without an error.
            raise InputMismatchError(
                "the pruned forward needs left-padded inputs (every 0 of attention_mask before the row's "
                "first 1): its logits are right-aligned with the caller's sequence. Pad on the left "
                "(processor.tokenizer.padding_side = 'left'); generate takes either side."
            )
        layout_inputs = self._layout_inputs(kwargs)
        prepared = self.prepare_inputs(input_ids, attention_mask, pixel_values, image_sizes, sample_ids, **layout_inputs)
        self.last_stats = prepared.stats
        merged = prepared.merged
        with self.method.llm_context(self.model, merged, self.last_stats):
            return self.model(
                inputs_embeds=merged.inputs_embeds,
                attention_mask=merged.attention_mask,
                # as generate (and the timed prefill) computes them; an adapter's own position ids
                # (Qwen2.5-VL's M-RoPE) come in llm_kwargs and take their place
                **{"position_ids": merged.position_ids, **merged.llm_kwargs},
                **kwargs,
            )

    forward = __call__

    # --- helpers -----------------------------------------------------------------------------
    def _crop_budget(self) -> int | None:
        """The image budget the adapter splits over crops. Only before-projector methods spend their
        budget on crops; an in-LLM method keeps every token here and applies (and checks) its budget
        inside the LLM, in its own unit."""
        return getattr(self.method, "budget", None) if self.method.stage == "projector" else None

    def _layout_inputs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Take the adapter's processor outputs (they describe the unpruned prompt) out of ``kwargs``."""
        return {k: kwargs.pop(k) for k in self.adapter.layout_inputs if k in kwargs}

    @staticmethod
    def _restore_prompt(out, original_ids: torch.Tensor, pruned_len: int):
        """Put the caller's prompt back in front of the generated tokens. ``original_ids`` [B, L];
        the output has B * n rows (n returned sequences per sample, each sample's rows adjacent)."""
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        rows, samples = sequences.shape[0], original_ids.shape[0]
        if rows % samples:
            raise InputMismatchError(f"generate returned {rows} sequences for {samples} prompts; expected a multiple.")
        prompts = original_ids.repeat_interleave(rows // samples, dim=0)  # [B * n, L]
        restored = torch.cat([prompts, sequences[:, pruned_len:]], dim=1)
        if isinstance(out, torch.Tensor):
            return restored
        out.sequences = restored
        return out

    @staticmethod
    def _crop_keys(layout: CropLayout, per_sample: list[list[int]], sample_ids: list[Any] | None) -> list[str]:
        if sample_ids is None:
            return []
        image_key = {}
        for b, images in enumerate(per_sample):
            for j, i in enumerate(images):
                image_key[i] = f"{sample_ids[b]}/{j}"
        seen: dict[int, int] = {}
        keys = []
        for i in layout.image_of_crop:
            keys.append(f"{image_key[i]}/{seen.get(i, 0)}")
            seen[i] = seen.get(i, 0) + 1
        return keys

    @staticmethod
    def _sample_stats(
        images: ImageFeatures, layout: CropLayout, per_sample: list[list[int]], select_ms: float
    ) -> list[dict[str, Any]]:
        """Sum per-image counters per sample; ``select_ms`` is the batch's select time, amortised."""
        out = []
        for images_of_sample in per_sample:
            row: dict[str, Any] = {k: 0 for k in STAT_KEYS}
            row["tokens_total"] = 0
            for i in images_of_sample:
                for key, value in images.stats[i].items():
                    row[key] = row.get(key, 0) + value
                row["tokens_total"] += layout.tokens_per_image[i]
            row["images"] = len(images_of_sample)
            row["select_ms"] = select_ms / len(per_sample)
            out.append(row)
        return out

"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): dynamic resolution, window attention, M-RoPE.

What differs from LLaVA, and what this adapter does about it:

* **Crops.** Every image is one crop; its patches (14 px) are merged 2x2 into the tokens the LLM sees,
  on a grid of ``(h/2, w/2)`` merged tokens that depends on the image's size. Methods select *merged
  tokens*: a token's feature is its four patches' final hidden states concatenated (``[4 * D]``, the
  merger's input before its RMSNorm), and the projector is the model's own merger on the kept tokens.
* **The tower.** :meth:`Qwen2_5_VLAdapter.run_tower` mirrors the model's vision forward with the
  model's own helpers (patch embedding, window permutation, rotary embedding, blocks); tests check
  that its hidden states are bit-identical to ``model.visual``'s. The merger runs in the model's window
  order, so keeping every token reproduces the model's image features exactly.
* **HIVTP's score without [CLS]** (DECISION): at each score layer, the post-softmax attention that a
  patch receives, averaged over heads and over *all* the image's patch rows as queries (in a window
  block a query outside the patch's window pays it 0: the block-diagonal map of that layer); the window
  permutation is undone before the score meets the grid; a merged token scores the **mean** of its four
  patches; layers are averaged. Default score layer: the middle full-attention block,
  ``fullatt_block_indexes[(n - 1) // 2]`` (15 of 7/15/23/31 on the 7B), exposed as ``layers=``.
* **Budgets.** ``budget=B`` (a method parameter) keeps B merged tokens per image; ``keep=r`` (this
  adapter's parameter) keeps ``max(1, floor(r * n_i))`` of image i's n_i tokens, since token counts vary
  with resolution. ``regions`` / ``window`` that do not divide a grid use the uneven partition of
  :mod:`hivtp.selection` (never an error).
* **Positions** (``positions=``). ``"original"`` (default): every kept token keeps the (t, h, w) M-RoPE
  position the model's ``get_rope_index`` gives it in the *unpruned* prompt, and every text token after
  the image keeps its unpruned position too, in prefill and in every decode step (the position ids are
  handed to ``generate``, which continues them by +1 per token, and ``model.model.rope_deltas`` is set to
  the pruned prompt's offsets, as the model's own ``generate`` does). ``"contiguous"``: the pruned
  sequence is numbered 0, 1, 2, ... on all three axes (text-style positions for image tokens too, as a
  pruned LLaVA prompt is), ``rope_deltas`` 0.
* **Refused** before any model work: methods that need [CLS] (``fastervlm``, ``visionzip``), videos,
  and ``keep=`` together with a ``budget`` or with an LLM-stage method.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from typing import Any

import torch
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.utils.generic import get_max_seqlen
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from ..errors import ConfigError, InputMismatchError
from ..importance import received_attention
from ..methods.base import CropSelection, PruningMethod, TowerRequest
from ..selection import region_keep_count
from ..vision import TowerOutput, attention_implementation
from .base import CropLayout, ImageFeatures, ModelAdapter

POSITION_POLICIES = ("original", "contiguous")


def default_score_layer(fullatt_block_indexes: list[int]) -> int:
    """The middle full-attention block (the earlier of the two middle ones for an even count)."""
    blocks = sorted(fullatt_block_indexes)
    return blocks[(len(blocks) - 1) // 2]


def refuse_videos(pixel_values_videos: Any, video_grid_thw: Any) -> None:
    """Videos are never pruned: refuse them rather than run them unpruned under a pruning method's name."""
    given = [name for name, value in (("pixel_values_videos", pixel_values_videos), ("video_grid_thw", video_grid_thw))
             if value is not None]
    if given:
        raise InputMismatchError(
            f"videos are not pruned by hivtp (got {' and '.join(given)}); pass images only, or call the unwrapped "
            "model (pruned.model) for video prompts."
        )


def keep_count(tokens: int, keep: float) -> int:
    """Tokens an image of ``tokens`` merged tokens keeps at keep ratio ``keep``: floor, at least 1."""
    return max(1, region_keep_count(tokens, keep))


class Qwen2_5_VLAdapter(ModelAdapter):
    model_classes = (Qwen2_5_VLForConditionalGeneration,)
    adapter_params = ("keep", "positions")
    layout_inputs = ("image_grid_thw", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw")
    has_cls = False
    uneven_partition = True
    shares_tower_passes = False  # the pass also depends on image_grid_thw

    def __init__(self, model: nn.Module, keep: float | None = None, positions: str = "original", **params: Any) -> None:
        super().__init__(model, **params)
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1):
            raise ConfigError(f"keep must be a ratio in (0, 1] (e.g. keep=0.25), got {keep!r}.")
        if positions not in POSITION_POLICIES:
            raise ConfigError(f"positions={positions!r}; choose 'original' (default, M-RoPE positions of the unpruned prompt) or 'contiguous'.")
        self.keep = keep
        self.positions = positions
        self._warned_small = False  # crop_budgets warns once per model that a budget exceeded an image

    def _init_vision(self) -> None:
        visual = self.core.visual
        vc = self.config.vision_config
        self.vision_tower: nn.Module = visual
        self.projector: nn.Module = visual.merger
        self.num_layers = vc.depth
        self.feature_indices = [vc.depth]  # the merger reads the last block's output
        self.merge = vc.spatial_merge_size
        self.grid = None  # varies per image

    @classmethod
    def default_method_params(cls, model: nn.Module) -> dict[str, Any]:
        # HIVTP's score layers and HiPrune's object layer: a window block's attention never leaves its window
        middle = default_score_layer(model.config.vision_config.fullatt_block_indexes)
        return {"layers": (middle,), "object_layer": middle}

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.config.text_config, "pad_token_id", None)
        return int(pad) if pad is not None else super().pad_token_id

    def check_method(self, method: PruningMethod) -> None:
        super().check_method(method)
        if self.keep is None:
            return
        if method.budget is not None:
            raise ConfigError(f"give either keep={self.keep} (a ratio per image) or budget={method.budget} (tokens per image), not both.")
        if method.stage != "projector":
            raise ConfigError(f"keep= applies to before-projector methods; {method.name!r} acts in the LLM: give it budget= instead.")
        refusal = method.budget_refusal()
        if refusal:  # keep= reaches the method as per-image budgets: one it cannot take would be ignored
            raise ConfigError(f"keep={self.keep} sets a budget per image, but {refusal}; drop keep= or pick a method that takes a budget.")

    def check_call_inputs(self, inputs: dict[str, Any]) -> None:
        refuse_videos(inputs.get("pixel_values_videos"), inputs.get("video_grid_thw"))

    # --- crops -------------------------------------------------------------------------------
    def crops(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
    ) -> CropLayout:
        refuse_videos(pixel_values_videos, video_grid_thw)
        if image_grid_thw is None:
            raise InputMismatchError("Qwen2.5-VL needs image_grid_thw (the processor returns it): pass **processor_outputs.")
        grid_thw = torch.as_tensor(image_grid_thw)
        if grid_thw.dim() != 2 or grid_thw.shape[1] != 3:
            raise InputMismatchError(f"image_grid_thw must be [num_images, 3] (t, h, w), got {tuple(grid_thw.shape)}.")
        if (grid_thw[:, 0] != 1).any():
            raise InputMismatchError("image_grid_thw has t > 1 (a video or stacked frames); only images are pruned.")
        patches = int(grid_thw.prod(-1).sum())
        if pixel_values.dim() != 2 or pixel_values.shape[0] != patches:
            raise InputMismatchError(
                f"Qwen2.5-VL expects pixel_values [total patches, C*T*P*P] with {patches} rows for image_grid_thw "
                f"{grid_thw.tolist()}, got {tuple(pixel_values.shape)}; build both with the model's processor."
            )
        unit = self.merge**2
        return CropLayout(
            pixel_values=pixel_values,
            image_of_crop=list(range(grid_thw.shape[0])),
            tokens_per_image=(grid_thw.prod(-1) // unit).tolist(),
            extra={"grid_thw": grid_thw, "mm_token_type_ids": mm_token_type_ids},
        )

    def crop_grids(self, layout: CropLayout) -> list[tuple[int, int]]:
        return [(int(h) // self.merge, int(w) // self.merge) for _, h, w in layout.extra["grid_thw"].tolist()]

    def crop_budgets(self, layout: CropLayout, budget: int | None) -> list[int | None]:
        if self.keep is not None:
            return [keep_count(n, self.keep) for n in layout.tokens_per_image]
        # An image with fewer merged tokens than the budget keeps them all (nothing to prune), unlike
        # LLaVA's 576 / NeXT's 1,700+ where a larger budget is a mistake and refused: Qwen's counts follow
        # the resolution, and one small image (ScienceQA has many) must not stop a benchmark run. Every
        # method keeps the same count on it, so paired comparisons stay fair; tokens_kept records it.
        if budget is not None and any(budget > n for n in layout.tokens_per_image) and not self._warned_small:
            self._warned_small = True
            small = min(layout.tokens_per_image)
            warnings.warn(f"budget={budget} is more than an image's {small} merged tokens: such an image keeps all of "
                          "its tokens (tokens_kept says so); pass keep=r for a share of every image.", stacklevel=2)
        return [None if budget is None else min(budget, n) for n in layout.tokens_per_image]

    # --- the tower -----------------------------------------------------------------------------
    def run_tower(self, layout: CropLayout, request: TowerRequest) -> TowerOutput:
        layers = sorted(set(request.qk_layers) | set(request.attention_layers))
        return run_qwen_tower(self.vision_tower, layout.pixel_values, layout.extra["grid_thw"], layers, request.eager)

    def patch_features(self, tower: TowerOutput) -> list[torch.Tensor]:
        """Per image [n_i, 4 * D]: each merged token's four patches, raster order on its grid."""
        return tower.extra["features"]

    # --- projection and assembly ---------------------------------------------------------------
    def assemble(self, selection: CropSelection, layout: CropLayout) -> ImageFeatures:
        return ImageFeatures(
            features=self._project(selection, layout),
            stats=[dict(s) for s in selection.stats],
            positions=[p.long() for p in selection.positions],
        )

    def _project(self, selection: CropSelection, layout: CropLayout) -> list[torch.Tensor]:
        """The merger on every image's kept tokens at once, fed in the model's window order (so that
        keeping every token gives the model's own features bit for bit), returned per image in the
        method's order."""
        counts = [f.shape[0] for f in selection.features]
        if sum(counts) == 0:
            return [f.new_zeros(0, self.config.vision_config.out_hidden_size) for f in selection.features]
        offsets = [0] + torch.tensor(layout.tokens_per_image).cumsum(0).tolist()[:-1]
        raster = torch.cat([p.to("cpu") + o for p, o in zip(selection.positions, offsets)])  # global unit index
        window_pos = torch.argsort(self._window_index(layout))[raster]  # unit -> its window slot (index: slot -> unit)
        order = torch.argsort(window_pos)
        flat = torch.cat(selection.features)  # [N, 4D]
        d = flat.shape[-1] // self.merge**2
        projected = self.projector(flat[order.to(flat.device)].reshape(-1, d))  # [N, D_text]
        restored = torch.empty_like(projected)
        restored[order.to(flat.device)] = projected
        return list(torch.split(restored, counts))

    def _window_index(self, layout: CropLayout) -> torch.Tensor:
        visual = self.vision_tower
        index, _ = get_vision_window_index(
            layout.extra["grid_thw"].cpu(), spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size, patch_size=visual.patch_size,
        )
        return index

    # --- positions -----------------------------------------------------------------------------
    def llm_inputs(self, input_ids, attention_mask, layout, images, per_sample, merged) -> dict[str, Any]:
        """``position_ids`` [4, B, L'] for the pruned sequence (row 0: the text positions ``generate``
        would use for masking; rows 1-3: M-RoPE t, h, w) and ``model.model.rope_deltas``."""
        mask = merged.attention_mask
        text = merged.position_ids  # [B, L'] generate's text positions (0 on left padding)
        if self.positions == "contiguous":
            rope = text[None].expand(3, -1, -1).clone()
        else:
            rope = self.original_positions(input_ids, attention_mask, layout, images, per_sample, merged)
        deltas = (rope.amax(dim=(0, 2)) + 1 - mask.sum(-1)).unsqueeze(1)  # [B, 1]
        self.core.rope_deltas = deltas  # what the model's own generate keeps for its decode steps
        return {"position_ids": torch.cat([text[None], rope])}

    def original_positions(self, input_ids, attention_mask, layout, images, per_sample, merged) -> torch.Tensor:
        """[3, B, L'] the unpruned prompt's M-RoPE positions (the model's ``get_rope_index``) of every
        token the pruned prompt keeps; 0 on padding (as ``get_rope_index`` leaves it)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        is_image = input_ids == self.image_token_id
        types = layout.extra.get("mm_token_type_ids")
        types = is_image.int() if types is None else types.to(input_ids.device)
        unpruned, _ = self.core.get_rope_index(
            input_ids, types, image_grid_thw=layout.extra["grid_thw"].to(input_ids.device), attention_mask=attention_mask
        )  # [3, B, L]
        out = torch.zeros(3, *merged.input_ids.shape, dtype=unpruned.dtype, device=unpruned.device)
        valid = attention_mask.bool()
        for b, image_ids in enumerate(per_sample):
            text_src = (valid[b] & ~is_image[b]).nonzero().flatten()
            runs = torch.split((valid[b] & is_image[b]).nonzero().flatten(), [layout.tokens_per_image[i] for i in image_ids])
            image_src = [run[images.positions[i].to(run.device)] for run, i in zip(runs, image_ids)]
            src = torch.cat([text_src] + image_src) if image_src else text_src
            dst_text = (merged.attention_mask[b].bool() & ~merged.image_positions[b]).nonzero().flatten()
            dst_image = merged.image_positions[b].nonzero().flatten()
            dst = torch.cat([dst_text, dst_image])
            out[:, b, dst.to(out.device)] = unpruned[:, b, src]
        return out


@torch.no_grad()
def run_qwen_tower(
    visual: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor, layers=(), eager: bool = False
) -> TowerOutput:
    """The model's vision forward up to (not including) the merger, capturing each score layer's received
    attention per merged token (module docstring). ``eager`` runs the tower's eager attention kernel.

    Returns a :class:`TowerOutput` with ``received[layer]`` = per image [n_i] float32 (mean over heads,
    query rows and the token's patches), ``grids`` per image, and ``extra["features"]`` = per image
    [n_i, unit * D] (a merged token's patches' last hidden states, raster order on its grid)."""
    cfg = visual.config
    depth = len(visual.blocks)
    layers = sorted({int(x) for x in layers})
    bad = [x for x in layers if not 0 <= x < depth]
    if bad:
        raise ConfigError(f"score layer(s) {bad} out of range: the vision tower has {depth} blocks (0-based 0..{depth - 1}).")
    grid_thw = torch.as_tensor(grid_thw).to(pixel_values.device)
    kernel = "eager" if eager else cfg._attn_implementation
    with attention_implementation(visual, kernel):
        hidden, received, window_index = _forward(visual, pixel_values, grid_thw, layers)
    unit = visual.spatial_merge_size**2
    to_raster = torch.argsort(window_index)  # window_index[slot] = raster unit, so this lists slots in raster order
    features = hidden.reshape(-1, unit * hidden.shape[-1])[to_raster]  # [n_units, unit * D], raster order
    counts = (grid_thw.prod(-1) // unit).tolist()
    heads = cfg.num_heads
    scores = {}
    for layer, col in received.items():  # col: [S] window order, summed over heads and query rows
        per_unit = col.reshape(-1, unit)[to_raster].mean(-1)  # mean over the token's patches
        scores[layer] = [x / (heads * n * unit) for x, n in zip(torch.split(per_unit, counts), counts)]
    merge = visual.spatial_merge_size
    return TowerOutput(
        hidden_states={},
        num_heads=heads,
        head_dim=cfg.hidden_size // heads,
        received=scores,
        grids=[(int(h) // merge, int(w) // merge) for _, h, w in grid_thw.tolist()],
        extra={"features": list(torch.split(features, counts))},
    )


def _forward(visual: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor, layers: list[int]):
    """``Qwen2_5_VisionTransformerPretrainedModel.forward`` without the merger, with the model's own
    helpers: (last hidden states [S, D] in window order, {layer: [S] received-attention column sums},
    window_index)."""
    cfg = visual.config
    position_ids = get_vision_position_ids(grid_thw, visual.spatial_merge_size)
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid_thw, cfg)
    window_index, cu_window = get_vision_window_index(
        grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size, patch_size=visual.patch_size
    )
    max_window = get_max_seqlen(cu_window, cfg, kwarg_name="max_window_seqlen")
    hidden = visual.patch_embed(pixel_values.type(visual.dtype))
    seq_len = hidden.shape[0]
    hidden = visual.permute_input_for_window_attn(hidden, window_index, seq_len=seq_len)
    embeddings = visual.rotary_pos_emb(hidden, position_ids)
    embeddings = tuple(visual.permute_input_for_window_attn(f, window_index, seq_len=seq_len) for f in embeddings)
    rotary = sys.modules[type(visual.blocks[0].attn).__module__].apply_rotary_pos_emb_vision  # the model's own
    received: dict[int, torch.Tensor] = {}
    for i, block in enumerate(visual.blocks):
        full = i in visual.fullatt_block_indexes
        cu, longest = (cu_seqlens, max_seqlen) if full else (cu_window, max_window)
        if i in layers:
            qkv = block.attn.qkv(block.norm1(hidden))  # what the block's attention computes; [S, 3D]
            received[i] = _received(qkv, embeddings, cu, cfg.num_heads, rotary)
        hidden = block(hidden, cu_seqlens=cu, max_seqlen=longest, position_embeddings=embeddings)
    return hidden, received, window_index.to(hidden.device)


def _received(qkv: torch.Tensor, embeddings, cu_seqlens: torch.Tensor, heads: int, rotary) -> torch.Tensor:
    """[S] float32: per token, the attention it receives summed over heads and over the query rows of
    its attention chunk (an image in a full block, a window otherwise), window order."""
    s = qkv.shape[0]
    q, k, _ = qkv.reshape(s, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)  # [S, heads, d] each
    cos, sin = embeddings
    q, k = rotary(q, k, cos, sin)
    bounds = cu_seqlens.tolist()
    out = torch.zeros(s, dtype=torch.float32, device=qkv.device)
    for a, b in itertools.pairwise(bounds):
        if b > a:  # received_attention takes [C, T, heads * d]
            out[a:b] = received_attention(q[a:b].reshape(1, b - a, -1), k[a:b].reshape(1, b - a, -1), heads)[0]
    return out

"""Models and inputs for timing, without a tokenizer or a download.

Every measurement uses synthesised inputs (also for shapes that ship a tokenizer, so that CPU and
GPU rows are made the same way): ``prompt_tokens`` text ids drawn from the ordinary vocabulary
(never a special id or the image id), split around the image placeholder run, as a chat prompt
wraps an image; random ``pixel_values`` of the processor's size; for LLaVA-NeXT ``image_sizes``
(default 672 x 672: a 2 x 2 tile grid + the base image = 5 crops); for Qwen2.5-VL the image size is
rounded as its processor does (``smart_resize``: multiples of 28 px within the processor's default
pixel bounds), so 672 x 672 gives 48 x 48 patches = 576 merged tokens, and ``image_grid_thw`` is passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["SyntheticBatch", "load_model", "synthesise", "DEFAULT_PROMPT_TOKENS", "DTYPES"]

DEFAULT_PROMPT_TOKENS = 60
#: ids below this are special in every shipped tokenizer (unk, bos, eos, pad, image)
_FIRST_ORDINARY_ID = 5
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SyntheticBatch:
    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long, all ones
    pixel_values: torch.Tensor  # LLaVA: [B, 3, S, S]; NeXT: [B, crops, 3, S, S]
    image_sizes: torch.Tensor | None  # NeXT: [B, 2] (height, width)
    text_tokens: int  # non-image tokens per sample
    layout_inputs: dict[str, Any] = field(default_factory=dict)  # Qwen2.5-VL: image_grid_thw [B, 3]

    def model_inputs(self) -> dict[str, Any]:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "pixel_values": self.pixel_values}
        if self.image_sizes is not None:
            out["image_sizes"] = self.image_sizes
        return {**out, **self.layout_inputs}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}.")
    return DTYPES[name]


def load_model(model: str, random_weights: bool, dtype: torch.dtype, attn: str, device: torch.device):
    """(model, weights label). A shipped shape with ``random_weights`` is built directly (any size,
    no files); anything else goes through ``resolve_checkpoint`` and ``from_pretrained``."""
    from .. import zoo

    if random_weights:
        if model not in zoo.available_shapes():
            raise ConfigError(
                f"--random-weights needs a shipped shape name, got {model!r}; shapes: {', '.join(zoo.available_shapes())}."
            )
        return zoo.build_model(model, dtype=dtype, device=device, attn_implementation=attn), "random"
    path = zoo.resolve_checkpoint(model)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    cls = zoo._model_class(config)
    loaded = cls.from_pretrained(path, dtype=dtype, attn_implementation=attn).to(device).eval()
    return loaded, _weights_label(model, path)


def _weights_label(name: str, path: str) -> str:
    from .. import zoo

    if name in zoo.TRAINED:
        return "trained"
    stamp = Path(path) / "hivtp_build.json"
    if stamp.is_file():
        return json.loads(stamp.read_text()).get("weights", "random")
    return "pretrained"


def _num_crops(config: Any, image_size: tuple[int, int]) -> int:
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    return image_size_to_num_patches(image_size, config.image_grid_pinpoints, config.vision_config.image_size)


def synthesise(
    model: Any,
    adapter: Any,
    batch: int,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    image_size: tuple[int, int] = (672, 672),
    seed: int = 0,
) -> SyntheticBatch:
    """A batch of identical-length prompts, one image each, on the model's device and dtype."""
    if batch < 1 or prompt_tokens < 0:
        raise ConfigError(f"batch must be >= 1 and prompt tokens >= 0, got batch={batch}, prompt_tokens={prompt_tokens}.")
    config = model.config
    device, dtype = model.get_input_embeddings().weight.device, model.get_input_embeddings().weight.dtype
    gen = torch.Generator().manual_seed(seed)
    if config.model_type == "qwen2_5_vl":
        return _synthesise_qwen(config, adapter, batch, prompt_tokens, image_size, gen, device, dtype)
    side = config.vision_config.image_size
    is_next = config.model_type == "llava_next"
    if is_next:
        crops = _num_crops(config, image_size)
        pixel_values = torch.randn(batch, crops, 3, side, side, generator=gen)
        image_sizes = torch.tensor([list(image_size)] * batch)
    else:
        pixel_values = torch.randn(batch, 3, side, side, generator=gen)
        image_sizes = None
    pixel_values = pixel_values.to(device=device, dtype=dtype)
    # The placeholder count per image is the adapter's (LLaVA: 576; NeXT: depends on image_sizes).
    one = adapter.crops(pixel_values[:1], image_sizes[:1] if image_sizes is not None else None)
    image_tokens = one.tokens_per_image[0]
    ids = _prompt_ids(config, batch, prompt_tokens, image_tokens, gen)
    return SyntheticBatch(
        input_ids=ids.to(device),
        attention_mask=torch.ones_like(ids).to(device),
        pixel_values=pixel_values,
        image_sizes=image_sizes.to(device) if image_sizes is not None else None,
        text_tokens=prompt_tokens + 1,  # + BOS
    )


def qwen_grid(vision_config: Any, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """(t, h, w) patch grid of one image of ``image_size`` (height, width) after the processor's resize."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    patch = vision_config.patch_size
    height, width = smart_resize(*image_size, factor=patch * vision_config.spatial_merge_size)
    return 1, height // patch, width // patch


def _synthesise_qwen(config, adapter, batch, prompt_tokens, image_size, gen, device, dtype) -> SyntheticBatch:
    vc = config.vision_config
    grid = qwen_grid(vc, image_size)
    patches = grid[0] * grid[1] * grid[2]
    row = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    pixel_values = torch.randn(batch * patches, row, generator=gen).to(device=device, dtype=dtype)
    grid_thw = torch.tensor([grid] * batch)
    image_tokens = adapter.crops(pixel_values[:patches], None, image_grid_thw=grid_thw[:1]).tokens_per_image[0]
    ids = _prompt_ids(config, batch, prompt_tokens, image_tokens, gen)
    return SyntheticBatch(
        input_ids=ids.to(device),
        attention_mask=torch.ones_like(ids).to(device),
        pixel_values=pixel_values,
        image_sizes=None,
        text_tokens=prompt_tokens + 1,
        layout_inputs={"image_grid_thw": grid_thw.to(device)},
    )


def _prompt_ids(config: Any, batch: int, prompt_tokens: int, image_tokens: int, gen: torch.Generator) -> torch.Tensor:
    vocab = config.text_config.vocab_size
    image_id = config.image_token_id
    # every special id above the shared low block (Qwen's sit at the top of its vocabulary) bounds the draw
    specials = [image_id, getattr(config, "vision_start_token_id", None), config.text_config.bos_token_id]
    specials = [s for s in specials if isinstance(s, int) and s > _FIRST_ORDINARY_ID]
    high = min([vocab] + specials)
    if high <= _FIRST_ORDINARY_ID:
        raise ConfigError(f"vocabulary of {vocab} leaves no ordinary token ids to synthesise a prompt from.")
    text = torch.randint(_FIRST_ORDINARY_ID, high, (batch, prompt_tokens), generator=gen)
    before = min(5, prompt_tokens)  # "USER: <image>\n ... ASSISTANT:" puts a few tokens first
    bos = torch.full((batch, 1), config.text_config.bos_token_id or 1)
    image = torch.full((batch, image_tokens), image_id)
    return torch.cat([bos, text[:, :before], image, text[:, before:]], dim=1)

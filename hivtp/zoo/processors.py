"""Processor builders for offline shapes, by processor kind (the ``processor.kind`` of a shape).

A builder takes the shape's model config and its ``processor`` section and returns a processor with
the shipped tokenizer and a chat template, ready for ``save_pretrained``.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import ConfigError
from .tokenizer import CHAT_TEMPLATES, build_tokenizer

ProcessorBuilder = Callable[[Any, dict], Any]
PROCESSOR_BUILDERS: dict[str, ProcessorBuilder] = {}


def register_processor(kind: str):
    def deco(fn: ProcessorBuilder) -> ProcessorBuilder:
        PROCESSOR_BUILDERS[kind] = fn
        return fn

    return deco


def clip_image_processor(image_size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )


@register_processor("llava")
def llava_processor(config, spec: dict):
    from transformers import LlavaProcessor

    vc = config.vision_config
    return LlavaProcessor(
        image_processor=clip_image_processor(vc.image_size),
        tokenizer=build_tokenizer(spec["tokenizer"], chat_template=None),
        patch_size=vc.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=CHAT_TEMPLATES[spec["chat_template"]],
        num_additional_image_tokens=1,
    )


def build_processor_for(config, spec: dict):
    kind = spec.get("kind")
    if kind not in PROCESSOR_BUILDERS:
        raise ConfigError(f"no processor builder for kind {kind!r}; known: {sorted(PROCESSOR_BUILDERS)}.")
    return PROCESSOR_BUILDERS[kind](config, spec)


@register_processor("llava_next")
def llava_next_processor(config, spec: dict):
    """LLaVA-NeXT (anyres): the image processor tiles with the model's own ``image_grid_pinpoints``."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    vc = config.vision_config
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": vc.image_size},
        crop_size={"height": vc.image_size, "width": vc.image_size},
        image_grid_pinpoints=[list(p) for p in config.image_grid_pinpoints],
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(spec["tokenizer"], chat_template=None),
        patch_size=vc.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=CHAT_TEMPLATES[spec["chat_template"]],
        num_additional_image_tokens=1,
    )


@register_processor("qwen2_5_vl")
def qwen2_5_vl_processor(config, spec: dict):
    """Qwen2.5-VL: the dynamic-resolution image processor (sizes rounded to 28 px, between the shape's
    ``min_pixels`` and ``max_pixels``) and the shipped BPE tokenizer with the Qwen special tokens."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from .tokenizer import QWEN_SPECIAL_TOKENS

    vc = config.vision_config
    image_processor = Qwen2VLImageProcessor(
        min_pixels=spec["min_pixels"],
        max_pixels=spec["max_pixels"],
        patch_size=vc.patch_size,
        temporal_patch_size=vc.temporal_patch_size,
        merge_size=vc.spatial_merge_size,
        image_mean=[0.48145466, 0.4578275, 0.40821073],  # OpenAI CLIP statistics, as Qwen2.5-VL's processor
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    tokenizer = build_tokenizer(
        spec["tokenizer"],
        chat_template=None,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        added_tokens=QWEN_SPECIAL_TOKENS,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    wrong = {k: (v, getattr(config, k)) for k, v in ids.items() if v != getattr(config, k)}
    if wrong:
        raise ConfigError(f"the shape's special token ids disagree with the tokenizer (tokenizer, config): {wrong}.")
    video_processor = Qwen2VLVideoProcessor(  # required by the processor class; videos are not pruned here
        patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size, merge_size=vc.spatial_merge_size
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATES[spec["chat_template"]],
    )

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

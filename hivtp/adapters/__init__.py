"""Model-family adapters. :func:`adapter_for` picks the one that fits a model instance."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import CropLayout, ImageFeatures, ModelAdapter, unsupported
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter

#: every adapter, most specific first; LLaVA-NeXT registers itself here when available
ADAPTERS: list[type[ModelAdapter]] = [LlavaNextAdapter, LlavaAdapter, Qwen2_5_VLAdapter]


def adapter_class_for(model: nn.Module) -> type[ModelAdapter]:
    for cls in ADAPTERS:
        if cls.supports(model):
            return cls
    families = sorted({c.__name__ for a in ADAPTERS for c in a.model_classes})
    raise unsupported(model, families)


def adapter_for(model: nn.Module, **params: Any) -> ModelAdapter:
    return adapter_class_for(model)(model, **params)


__all__ = ["ADAPTERS", "CropLayout", "ImageFeatures", "ModelAdapter", "LlavaAdapter", "LlavaNextAdapter", "Qwen2_5_VLAdapter", "adapter_for", "adapter_class_for"]

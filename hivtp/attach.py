"""``hivtp.attach``: wrap a LLaVA / LLaVA-NeXT / Qwen2.5-VL instance with a named token-reduction method."""

from __future__ import annotations

from typing import Any

from torch import nn

from .adapters import adapter_class_for
from .errors import ConfigError
from .methods import PruningMethod, build_method
from .pruned import PrunedModel

__all__ = ["attach"]


def attach(model: nn.Module, method: str | PruningMethod = "hivtp", **params: Any) -> PrunedModel:
    """Return a :class:`PrunedModel` that prunes ``model``'s image tokens with ``method``.

    ``params`` are the method's parameters (e.g. ``keep_ratio=0.25, layers=(6, 7, 8)``), plus any
    the model family's adapter accepts (LLaVA-NeXT: ``newline``; Qwen2.5-VL: ``keep``, ``positions``).
    Parameters whose default depends on the family (Qwen2.5-VL's score ``layers`` for ``hivtp``) are
    filled in when not given, for a method named and a method object alike (the object itself is not
    changed). Combinations the family cannot serve raise before any model work. The model itself is
    not changed.
    """
    if isinstance(model, PrunedModel):
        raise ConfigError("this model already has a method attached; call attach(pruned.model, ...) instead.")
    adapter_cls = adapter_class_for(model)
    adapter_params = {k: params.pop(k) for k in list(params) if k in adapter_cls.adapter_params}
    # Each method takes the family defaults that mean something to it (hivtp's vision score `layers`,
    # not pdrop's LLM stage `layers`), whether it came by name or as an object.
    built = build_method(method, **params).with_family_defaults(adapter_cls.default_method_params(model))
    adapter = adapter_cls(model, **adapter_params)
    adapter.check_method(built)
    built.check(adapter.grid, adapter.num_layers, adapter.feature_attention_layer)
    return PrunedModel(model, built, adapter)

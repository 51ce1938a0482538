"""``hivtp.attach``: wrap a LLaVA / LLaVA-NeXT instance with a named token-reduction method."""

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
    the model family's adapter accepts (LLaVA-NeXT: ``newline``). The model itself is not changed.
    """
    if isinstance(model, PrunedModel):
        raise ConfigError("this model already has a method attached; call attach(pruned.model, ...) instead.")
    adapter_cls = adapter_class_for(model)
    adapter_params = {k: params.pop(k) for k in list(params) if k in adapter_cls.adapter_params}
    built = build_method(method, **params)
    adapter = adapter_cls(model, **adapter_params)
    built.check(adapter.grid, adapter.num_layers, adapter.feature_attention_layer)
    return PrunedModel(model, built, adapter)

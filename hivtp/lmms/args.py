"""``--model_args`` for ``hivtp_llava``: split lmms-eval / HF loading arguments from method ones.

lmms-eval parses ``key=value`` pairs with ``handle_arg_string`` (ints, floats, true/false, else
strings), so ``layers=6-7-8`` arrives as the string ``"6-7-8"`` (the method parses it) and
``budget=none`` as ``"none"``.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import ConfigError

#: keyword arguments of lmms-eval's LlavaHf.__init__ (the rest belong to the method / adapter)
def loader_arg_names() -> set[str]:
    from lmms_eval.models.simple.llava_hf import LlavaHf

    names = set(inspect.signature(LlavaHf.__init__).parameters) - {"self", "kwargs"}
    return names


#: our own plugin arguments (not the method's)
PLUGIN_ARGS = ("method", "accounting_dir")
NONE_WORDS = ("none", "null", "")


def _coerce(key: str, value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in NONE_WORDS:
        return None
    if key == "budget" and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"model_args budget={value} must be a whole number of tokens (e.g. budget=128).")
        return int(value)
    return value


def split_args(kwargs: dict[str, Any], loader_names: set[str] | frozenset[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``kwargs`` -> (the stock class's loader kwargs (``loader_names``), plugin kwargs, method + adapter
    params). Parameter values are coerced here (``none`` -> None, whole-number budgets); ``build_method``
    validates every parameter."""
    loader, plugin, params = {}, {}, {}
    for key, value in kwargs.items():
        if key in loader_names:
            loader[key] = value
        elif key in PLUGIN_ARGS:
            plugin[key] = value
        else:
            params[key] = _coerce(key, value)
    plugin.setdefault("method", "none")
    return loader, plugin, params


def split_model_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``kwargs`` -> (loader kwargs for LlavaHf, plugin kwargs, method + adapter params)."""
    return split_args(kwargs, loader_arg_names())

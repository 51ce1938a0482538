"""How a method parameter written as text (lmms-eval model_args, ``python -m hivtp.latency --methods``)
becomes a value: the one rule for the word ``none`` (torch + transformers only, as the latency module).

The word ``none`` (or ``null``, or nothing) means "not set" (Python None) only for a parameter whose
declared default is None (:func:`none_means_unset`); LLaVA-NeXT's ``newline=none`` is a policy of its
own and reaches :func:`hivtp.attach` as the string ``"none"``.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["NONE_WORDS", "none_means_unset", "unset_if_none"]

NONE_WORDS = ("none", "null", "")


def _declared_defaults(method: str, key: str) -> list[Any]:
    """The defaults that ``method`` and the model families' adapters declare for parameter ``key``
    (none when no one declares it: build_method then names the unknown parameter)."""
    from .adapters import ADAPTERS
    from .methods import METHODS

    owners = [adapter for adapter in ADAPTERS if key in adapter.adapter_params]
    if method in METHODS:
        owners.append(METHODS[method])
    declared = [inspect.signature(cls.__init__).parameters.get(key) for cls in owners]
    return [p.default for p in declared if p is not None and p.default is not inspect.Parameter.empty]


def none_means_unset(method: str, key: str) -> bool:
    """Whether the word ``none`` for ``method``'s parameter ``key`` means "not set" (Python None):
    only where every declaration of the parameter defaults to None (budgets, geometry, seeds, ...).
    A parameter whose default is a value (LLaVA-NeXT's ``newline="row"``, Qwen2.5-VL's
    ``positions="original"``, hivtp's ``layers``) takes the word as given: ``newline=none`` is a policy
    of its own, and a parameter that has no "not set" gets the method's error naming the word."""
    defaults = _declared_defaults(method, key)
    return bool(defaults) and all(d is None for d in defaults)


def unset_if_none(method: str, key: str, value: Any) -> Any:
    """``value``, or None where it is a word of :data:`NONE_WORDS` and :func:`none_means_unset`."""
    if isinstance(value, str) and value.strip().lower() in NONE_WORDS and none_means_unset(method, key):
        return None
    return value

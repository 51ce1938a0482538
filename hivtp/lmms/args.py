"""``--model_args`` for ``hivtp_llava`` / ``hivtp_qwen2_5_vl``: split lmms-eval / HF loading arguments
from method ones.

lmms-eval parses ``key=value`` pairs with ``handle_arg_string`` (ints, floats, true/false, else
strings), so ``layers=6-7-8`` arrives as the string ``"6-7-8"`` (the method parses it) and
``budget=none`` as ``"none"``. The word ``none`` (or ``null``, or nothing) means "not set" only for a
parameter whose declared default is None (:func:`hivtp.params.none_means_unset`, shared with the latency
CLI); LLaVA-NeXT's ``newline=none`` is a policy of its own and reaches :func:`hivtp.attach` as the string ``"none"``.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from ..errors import ConfigError
from ..params import none_means_unset, unset_if_none

__all__ = ["LLAVA_UNREAD", "QWEN_UNREAD", "loader_arg_names", "none_means_unset", "split_args", "split_model_args"]


#: keyword arguments of lmms-eval's LlavaHf.__init__ (the rest belong to the method / adapter)
def loader_arg_names() -> set[str]:
    from lmms_eval.models.simple.llava_hf import LlavaHf

    names = set(inspect.signature(LlavaHf.__init__).parameters) - {"self", "kwargs"}
    return names


#: our own plugin arguments (not the method's)
PLUGIN_ARGS = ("method", "accounting_dir")

# Loader arguments the stock class accepts but the plugin's chat path never reads: refused, so that a
# run never reports a setting it did not use (the value: what to do instead).
#: hivtp_llava (lmms-eval's chat llava_hf, whose prompts it keeps, never reads them either)
LLAVA_UNREAD: dict[str, str] = {
    "chat_template": "hivtp_llava prompts with the checkpoint's own chat template (its processor's, from "
                     "chat_template.jinja / chat_template.json), as lmms-eval's chat llava_hf does; put a custom "
                     "template there (in a copy of the checkpoint) and drop chat_template=.",
    "max_frames_num": "hivtp_llava serves image tasks only (a video input raises); drop max_frames_num=.",
}
#: hivtp_qwen2_5_vl (only lmms-eval's simple qwen2_5_vl reads the prompt ones; hivtp prunes images only)
QWEN_UNREAD: dict[str, str] = {
    "system_prompt": "hivtp_qwen2_5_vl builds prompts as lmms-eval's chat qwen2_5_vl does, which never reads "
                     "system_prompt= (the processor's chat template adds its default system message); write the "
                     "system message into the task's messages or the checkpoint's chat template instead.",
    "reasoning_prompt": "hivtp_qwen2_5_vl builds prompts as lmms-eval's chat qwen2_5_vl does, which never reads "
                        "reasoning_prompt=; add the text to the task's prompt (its post_prompt) instead.",
    "interleave_visuals": "hivtp_qwen2_5_vl builds prompts as lmms-eval's chat qwen2_5_vl does, which keeps the "
                          "task's own order of images and text and never reads interleave_visuals=; drop it.",
    "max_num_frames": "hivtp_qwen2_5_vl serves image tasks only (videos are not pruned); drop max_num_frames=.",
    "fps": "hivtp_qwen2_5_vl serves image tasks only (videos are not pruned); drop fps=.",
}


def _coerce(method: str, key: str, value: Any) -> Any:
    value = unset_if_none(method, key, value)
    if key == "budget" and isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"model_args budget={value} must be a whole number of tokens (e.g. budget=128).")
        return int(value)
    return value


def split_args(kwargs: dict[str, Any], loader_names: set[str] | frozenset[str],
               unread: Mapping[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``kwargs`` -> (the stock class's loader kwargs (``loader_names``), plugin kwargs, method + adapter
    params). Parameter values are coerced here (``none`` -> None where None means "not set",
    whole-number budgets); ``build_method`` validates every parameter. A key of ``unread`` (loader
    arguments the plugin never reads) raises ConfigError with its message."""
    refused = sorted(set(kwargs) & set(unread or {}))
    if refused:
        raise ConfigError(" ".join(f"model_args {key}= is not supported: {unread[key]}" for key in refused))
    loader, plugin, raw = {}, {}, {}
    for key, value in kwargs.items():
        if key in loader_names:
            loader[key] = value
        elif key in PLUGIN_ARGS:
            plugin[key] = value
        else:
            raw[key] = value
    plugin.setdefault("method", "none")
    method = str(plugin["method"] or "none")  # as the plugins' configure reads it
    params = {key: _coerce(method, key, value) for key, value in raw.items()}
    return loader, plugin, params


def split_model_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``kwargs`` -> (loader kwargs for LlavaHf, plugin kwargs, method + adapter params)."""
    return split_args(kwargs, loader_arg_names(), LLAVA_UNREAD)

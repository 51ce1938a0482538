"""``hivtp_qwen2_5_vl``: lmms-eval's chat ``qwen2_5_vl`` with a token-reduction method attached.

The class subclasses ``lmms_eval.models.chat.qwen2_5_vl.Qwen2_5_VL`` and changes one thing: the model its
``generate_until`` calls is the :func:`hivtp.attach`-wrapped one. Loading, message building,
``qwen_vl_utils.process_vision_info``, the processor call, the generation arguments and the decoding
are lmms-eval's own code, so ``method=none`` answers exactly as ``--model qwen2_5_vl`` (tested).
Tokens kept per sample are in ``last_stats`` of the wrapper (``lm.pruned.last_stats``).

``--model_args``: the stock class's arguments (``pretrained``, ``device``, ``device_map``, ``batch_size``,
``min_pixels``, ``max_pixels``, ``attn_implementation`` ...), ``method`` (default ``none``), and the
method's / adapter's parameters (``budget``, ``keep``, ``keep_ratio``, ``layers=15`` or ``layers=7-15``,
``positions=contiguous`` ...). ``pretrained`` may name an offline shape (``tiny-qwen2.5-vl``, built by
``make models``). On CPU pass ``device=cpu,device_map=cpu``.
"""

from __future__ import annotations

import inspect
from typing import Any

from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as Qwen2_5_VLChat

from ..attach import attach
from ..errors import ConfigError, HivtpError
from ..zoo import resolve_checkpoint
from .args import PLUGIN_ARGS, _coerce

__all__ = ["HivtpQwen2_5_VL", "MODEL_NAME", "manifest", "split_qwen_args"]

MODEL_NAME = "hivtp_qwen2_5_vl"
CHAT_CLASS_PATH = "hivtp.lmms.qwen2_5_vl.HivtpQwen2_5_VL"


def manifest():
    """The ``ModelManifest`` lmms-eval registers for ``--model hivtp_qwen2_5_vl`` (entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, chat_class_path=CHAT_CLASS_PATH)


def split_qwen_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``kwargs`` -> (the stock class's loader kwargs, plugin kwargs, method + adapter params)."""
    names = set(inspect.signature(Qwen2_5_VLChat.__init__).parameters) - {"self", "kwargs"}
    loader, plugin, params = {}, {}, {}
    for key, value in kwargs.items():
        if key in names:
            loader[key] = value
        elif key in PLUGIN_ARGS:
            plugin[key] = value
        else:
            params[key] = _coerce(key, value)
    plugin.setdefault("method", "none")
    return loader, plugin, params


class HivtpQwen2_5_VL(Qwen2_5_VLChat):
    is_simple = False

    def __init__(self, pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct", **kwargs: Any) -> None:
        loader, plugin, params = split_qwen_args(kwargs)
        super().__init__(pretrained=resolve_checkpoint(str(pretrained)), **loader)
        self.method_name = plugin["method"]
        try:
            self.pruned = attach(super().model, method=self.method_name, **params)
        except HivtpError as exc:
            raise ConfigError(f"{MODEL_NAME} model_args: {exc}") from exc
        self.method_params = self.pruned.method.params()

    @property
    def model(self):
        """The wrapped model once attached (the stock ``generate_until`` calls ``self.model.generate``)."""
        pruned = self.__dict__.get("pruned")
        return pruned if pruned is not None else super().model

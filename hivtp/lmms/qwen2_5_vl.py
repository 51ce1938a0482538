"""``hivtp_qwen2_5_vl``: lmms-eval's chat ``qwen2_5_vl`` with a token-reduction method attached.

The class subclasses ``lmms_eval.models.chat.qwen2_5_vl.Qwen2_5_VL`` and changes one thing: the model its
``generate_until`` calls is the :func:`hivtp.attach`-wrapped one. Loading, message building,
``qwen_vl_utils.process_vision_info``, the processor call, the generation arguments and the decoding
are lmms-eval's own code, so ``method=none`` answers exactly as ``--model qwen2_5_vl`` at the same dtype (tested).
Tokens kept per sample (and each question's image) are recorded as by ``hivtp_llava`` (:mod:`hivtp.lmms.accounting`, with
``accounting_dir=``): each ``generate`` call's ``last_stats`` is matched to its documents by replaying
the stock class's ordering (its ``Collator`` over the same requests), and each call is told which documents
it answers (``sample_ids``, as ``hivtp_llava`` passes them), so ``random`` draws per document whatever the
batch. With ``device=cpu`` and no
``device_map``, the model loads with ``device_map=cpu`` (the stock default ``auto`` moves inputs to CUDA).

``--model_args``: the stock class's arguments (``pretrained``, ``device``, ``device_map``, ``batch_size``,
``min_pixels``, ``max_pixels``, ``attn_implementation`` ...; those its chat path never reads for images,
``system_prompt``, ``reasoning_prompt``, ``interleave_visuals``, ``max_num_frames`` and ``fps``, are refused),
``method`` (default ``none``), and the method's / adapter's parameters (``budget``, ``keep``, ``keep_ratio``,
``layers=15`` or ``layers=7-15``, ``positions=contiguous`` ...). ``pretrained`` may name an offline shape
(``tiny-qwen2.5-vl``, built by ``make models``). On CPU pass ``device=cpu,device_map=cpu``. ``dtype``
(``auto``, the checkpoint's own, as ``hivtp_llava``; or bfloat16 / float16 / float32): the stock class
always loads bfloat16 (:func:`loading_dtype`), so ``method=none`` answers as ``--model qwen2_5_vl`` at
``dtype=bfloat16``.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator

from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as Qwen2_5_VLChat
from lmms_eval.protocol import ChatMessages

from ..attach import attach
from ..errors import ConfigError, HivtpError
from ..pruned import PrunedModel
from ..zoo import resolve_checkpoint
from .accounting import AccountingWriter, default_directory, image_key
from .args import QWEN_UNREAD, split_args

__all__ = ["MODEL_NAME", "QWEN_DTYPES", "HivtpQwen2_5_VL", "loading_dtype", "manifest", "split_qwen_args"]

MODEL_NAME = "hivtp_qwen2_5_vl"
QWEN_DTYPES = ("auto", "bfloat16", "float16", "float32")
CHAT_CLASS_PATH = "hivtp.lmms.qwen2_5_vl.HivtpQwen2_5_VL"


def manifest():
    """The ``ModelManifest`` lmms-eval registers for ``--model hivtp_qwen2_5_vl`` (entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, chat_class_path=CHAT_CLASS_PATH)


def split_qwen_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``kwargs`` -> (the stock class's loader kwargs and ``dtype``, plugin kwargs, method + adapter params);
    the stock arguments its chat path never reads (:data:`hivtp.lmms.args.QWEN_UNREAD`) are refused."""
    loader_names = set(inspect.signature(Qwen2_5_VLChat.__init__).parameters) - {"self", "kwargs"}
    return split_args(kwargs, loader_names | {"dtype"}, QWEN_UNREAD)


@contextmanager
def loading_dtype(dtype: str) -> Iterator[None]:
    """While the stock class loads: ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` at ``dtype``. The
    stock loader hard-codes ``torch_dtype="bfloat16"`` whatever the checkpoint, and takes no dtype; here
    ``auto`` means what it means for ``hivtp_llava`` and in the run config: the checkpoint's own dtype (a
    float32 checkpoint answered in bfloat16 while its rows said ``auto``). The 7B is stored in bfloat16."""
    import lmms_eval.models.simple.qwen2_5_vl as stock

    original = stock.Qwen2_5_VLForConditionalGeneration

    class AtDtype:
        @staticmethod
        def from_pretrained(path: str, **kwargs: Any):
            kwargs.pop("torch_dtype", None)
            return original.from_pretrained(path, **{**kwargs, "dtype": dtype})

    stock.Qwen2_5_VLForConditionalGeneration = AtDtype
    try:
        yield
    finally:
        stock.Qwen2_5_VLForConditionalGeneration = original


class _RecordingModel:
    """The pruned model as the stock class sees it: each ``generate`` call is told which documents it
    answers (``sample_ids``, ``"<task>/<doc_id>"`` as ``hivtp_llava`` passes them, so that a per-sample draw
    such as ``random``'s is the document's, whatever the batch) and keeps its ``last_stats``."""

    def __init__(self, pruned: PrunedModel) -> None:
        self.pruned = pruned
        self.calls: list[list[dict[str, Any]]] = []
        self.pending: Iterator[list[str]] = iter(())

    def expect(self, sample_ids: list[list[str]]) -> None:
        """The sample ids of the coming ``generate`` calls, one list per call (the stock class's chunks)."""
        self.calls, self.pending = [], iter(sample_ids)

    def generate(self, **kwargs: Any):
        sample_ids = next(self.pending, None)
        if sample_ids is None:
            raise ConfigError(f"{MODEL_NAME}: the stock generate_until made more generate calls than it has "
                              "chunks of documents; report this.")
        out = self.pruned.generate(**kwargs, sample_ids=sample_ids)
        self.calls.append([dict(s) for s in self.pruned.last_stats])
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pruned, name)


class HivtpQwen2_5_VL(Qwen2_5_VLChat):
    is_simple = False
    split_args = staticmethod(split_qwen_args)
    #: as :attr:`hivtp.lmms.model.HivtpLlava.tower_cache` (Qwen's adapter does not share tower passes:
    #: they depend on image_grid_thw too, so this stays unused)
    tower_cache = None

    def __init__(self, pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct", **kwargs: Any) -> None:
        loader, plugin, params = split_qwen_args(kwargs)
        dtype = str(loader.pop("dtype", "auto"))
        if dtype not in QWEN_DTYPES:
            raise ConfigError(f"{MODEL_NAME} model_args dtype={dtype}: one of {', '.join(QWEN_DTYPES)} (auto: the checkpoint's own).")
        if str(loader.get("device", "cuda")).startswith("cpu") and not loader.get("device_map"):
            loader["device_map"] = "cpu"
        with loading_dtype(dtype):
            super().__init__(pretrained=resolve_checkpoint(str(pretrained)), **loader)
        self.configure(plugin, params)

    def configure(self, plugin: dict[str, Any], params: dict[str, Any]) -> None:
        """Attach ``plugin["method"]`` with ``params``, replacing the method attached before, and send the
        accounting to ``plugin["accounting_dir"]`` (default: :func:`default_directory`); as
        :meth:`hivtp.lmms.model.HivtpLlava.configure`, so one loaded instance serves many configurations."""
        self.method_name = plugin.get("method") or "none"
        self.__dict__.pop("recorder", None)  # attach to the HF model, not to the previous wrapper
        try:
            self.pruned = attach(super().model, method=self.method_name, **params)
        except HivtpError as exc:
            raise ConfigError(f"{MODEL_NAME} model_args: {exc}") from exc
        self.pruned.tower_cache = self.tower_cache if self.pruned.adapter.shares_tower_passes else None
        self.method_params = self.pruned.method.params()
        self.recorder = _RecordingModel(self.pruned)
        self.accounting = AccountingWriter(plugin.get("accounting_dir") or default_directory())

    @property
    def model(self):
        """The wrapped model once attached (the stock ``generate_until`` calls ``self.model.generate``)."""
        recorder = self.__dict__.get("recorder")
        return recorder if recorder is not None else super().model

    def _image_key(self, to_messages, task: str, split: str, doc_id: int) -> str | None:
        """:func:`~hivtp.lmms.accounting.image_key` of a document's images, read as the stock class reads them."""
        visual, _video, _ = ChatMessages(messages=to_messages(self.task_dict[task][split][doc_id])).extract_media()
        return image_key(visual)

    def _chunks(self, requests: list[Instance]) -> list[list[tuple]]:
        """The stock class's chunks of request arguments, in its order: the same Collator over the same
        requests (one ``generate`` call per chunk)."""
        collator = utils.Collator([r.args for r in requests], lambda x: (x[0], x[0]), group_fn=lambda x: x[2], grouping=True)
        return [list(chunk) for chunk in collator.get_batched(n=self.batch_size, batch_fn=None)]

    def generate_until(self, requests: list[Instance]):
        chunks = self._chunks(requests)
        # args = (context, doc_to_messages, gen_kwargs, doc_id, task, split)
        self.recorder.expect([[f"{args[4]}/{args[3]}" for args in chunk] for chunk in chunks])
        results = super().generate_until(requests)
        docs = [args for chunk in chunks for args in chunk]
        stats = [s for call in self.recorder.calls for s in call]
        if len(stats) != len(docs):
            raise ConfigError(f"{MODEL_NAME}: {len(stats)} accounting rows for {len(docs)} documents; report this.")
        for (_ctx, to_messages, _gen, doc_id, task, split), row in zip(docs, stats):
            self.accounting.add(task, doc_id, row, self._image_key(to_messages, task, split, doc_id))
        self.accounting.flush(self.rank, self.world_size)
        return results

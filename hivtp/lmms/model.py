"""``hivtp_llava``: lmms-eval's chat ``llava_hf`` with a token-reduction method attached.

Differences from ``lmms_eval.models.chat.llava_hf.LlavaHf`` (which it subclasses, so loading,
prompts and the chat template are lmms-eval's own):
- the HF model is wrapped with :func:`hivtp.attach` (``method=none`` reproduces llava_hf exactly);
- ``batch_size > 1`` is supported (left padding; the stock class asserts batch size 1);
- errors inside generation propagate (the stock class logs them and scores an empty answer);
- an unreadable dataset image raises an error naming the task and doc_id;
- tokens kept per sample are recorded (:mod:`hivtp.lmms.accounting`; by default beside lmms-eval's
  ``--output_path``);
- requests of different tasks never share a batch (the stock class batches by generation kwargs only);
- ``device=cpu`` loads with device_map=cpu, so it works with transformers 5 and under
  ``accelerate launch --multi_gpu --num_processes N`` on CPU (the stock class assumes CUDA there).
"""

from __future__ import annotations

import functools
import gc
import json
import time
from pathlib import Path
from typing import Any, Iterator, List

import torch
from loguru import logger as eval_logger
from tqdm import tqdm
from transformers import BatchFeature

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.models.chat.llava_hf import LlavaHf
from lmms_eval.protocol import ChatMessages

from ..attach import attach
from ..errors import ConfigError, HivtpError
from ..lru import BudgetedCache
from ..zoo import resolve_checkpoint
from .accounting import AccountingWriter, default_directory, image_key
from .args import split_model_args

__all__ = ["HivtpLlava", "SampleError"]


class SampleError(HivtpError, RuntimeError):
    """A dataset sample that cannot be turned into model inputs (e.g. an unreadable image)."""


class HivtpLlava(LlavaHf):
    is_simple = False
    split_args = staticmethod(split_model_args)
    #: vision-tower passes shared by every configuration this instance evaluates (a
    #: :class:`hivtp.vision.TowerCache`; the in-process runner sets one; None: no sharing)
    tower_cache = None
    #: processor outputs shared by every configuration this instance evaluates (an
    #: :class:`InputCache`; the in-process runner sets one; None: every batch decodes and processes)
    input_cache = None

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", **kwargs: Any) -> None:
        loader, plugin, params = split_model_args(kwargs)
        loader = self._cpu_data_parallel(loader)
        super().__init__(pretrained=resolve_checkpoint(str(pretrained)), **loader)
        self.configure(plugin, params)

    def configure(self, plugin: dict[str, Any], params: dict[str, Any]) -> None:
        """Attach ``plugin["method"]`` with ``params`` (as :func:`split_model_args` returns them),
        replacing the method attached before, and send the accounting to ``plugin["accounting_dir"]``
        (default: :func:`default_directory`). ``attach`` never modifies the HF model, so one loaded
        instance can evaluate many configurations (:mod:`hivtp.lmms.inprocess`)."""
        method = plugin.get("method") or "none"
        try:
            self.pruned = attach(self.model, method=method, **params)
        except HivtpError as exc:
            raise ConfigError(f"hivtp_llava model_args: {exc}") from exc
        self.pruned.tower_cache = self.tower_cache
        self.method_name = method
        self.method_params = self.pruned.method.params()
        accounting_dir = plugin.get("accounting_dir") or default_directory()
        self.accounting = AccountingWriter(accounting_dir)
        eval_logger.info(f"hivtp_llava: method={self.method_name} params={self.method_params}; "
                         f"per-sample token counts go to {Path(accounting_dir).resolve()} (model_args accounting_dir=...)")

    # --- data parallel on CPU -------------------------------------------------------------------
    @staticmethod
    def _cpu_data_parallel(loader: dict[str, Any]) -> dict[str, Any]:
        """The stock class puts every process on ``cuda:<rank>`` when there are several (and passes
        device_map="" to from_pretrained, which transformers 5 rejects); on CPU we load with
        device_map=cpu. lmms-eval's evaluator sets rank / world size from WORLD_SIZE and shards docs."""
        if str(loader.get("device", "cuda")).startswith("cpu") and not loader.get("device_map"):
            loader["device_map"] = "cpu"
        return loader

    # --- lmms-eval API --------------------------------------------------------------------------
    def loglikelihood(self, requests: List[Instance]):
        raise NotImplementedError(
            "hivtp_llava only serves generate_until tasks (all HIVTP benchmarks are); "
            "use --model llava_hf for loglikelihood tasks."
        )

    def clean(self) -> None:
        """lmms-eval calls this after generation to free the model for a local judge; the stock version
        deletes every ``nn.Module`` attribute. ``self.pruned`` holds the model as well, so deleting
        would free nothing, and keeping it lets one instance evaluate many configurations
        (:mod:`hivtp.lmms.inprocess`). Only caches are released."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate_until(self, requests: List[Instance]) -> List[GenerationResult]:
        res: list[GenerationResult | None] = [None] * len(requests)
        batches = list(_batches([r.args for r in requests], self.batch_size))
        pbar = tqdm(total=len(batches), disable=(self.rank != 0), desc="Model Responding")
        for indices in batches:
            for i, result in zip(indices, self._generate_chunk([requests[i].args for i in indices])):
                res[i] = result
            pbar.update(1)
        pbar.close()
        self.accounting.flush(self.rank, self.world_size)
        return res  # type: ignore[return-value]

    # --- one batch --------------------------------------------------------------------------------
    def _messages(self, doc_to_messages, task: str, split: str, doc_id: int) -> ChatMessages:
        try:
            doc = self.task_dict[task][split][doc_id]
            return ChatMessages(messages=doc_to_messages(doc))
        except Exception as exc:  # PIL / datasets errors do not say which sample
            raise SampleError(
                f"task {task!r} split {split!r} doc_id {doc_id}: cannot build the model input "
                f"({type(exc).__name__}: {exc}). Check or rebuild this sample's image (offline data: `make data`)."
            ) from exc

    def _prompts(self, doc_to_messages, task: str, split: str, doc_ids) -> tuple[list[str], Any, list[str | None]]:
        """(prompt texts, processor outputs on the CPU, each document's :func:`image_key`) of one batch:
        documents read (images decoded), chat template applied, images processed."""
        chats = [self._messages(fn, task, split, d) for fn, d in zip(doc_to_messages, doc_ids)]
        texts, visuals, images = [], [], []
        for chat in chats:
            visual, video, _ = chat.extract_media()
            if video:
                raise SampleError(f"task {task!r}: hivtp_llava does not support video inputs.")
            visuals.extend(visual)
            images.append(image_key(visual))
            texts.append(self._image_processor.apply_chat_template(chat.model_dump()["messages"], tokenize=False, add_generation_prompt=True))
        return texts, self._image_processor(images=visuals or None, text=texts, padding=True, return_tensors="pt"), images

    def _generate_chunk(self, chunk) -> list[GenerationResult]:
        """One batch; every request in it has the same task, split and generation kwargs (_batches)."""
        _ctx, doc_to_messages, all_gen_kwargs, doc_ids, tasks, splits = zip(*chunk)
        task, split = tasks[0], splits[0]
        compute = functools.partial(self._prompts, doc_to_messages, task, split, doc_ids)
        if self.input_cache is None:
            texts, inputs, images = compute()
        else:  # doc_to_messages is a bound method of the task: the same documents of the same task object
            owners = tuple(getattr(fn, "__self__", fn) for fn in doc_to_messages)
            texts, inputs, images = self.input_cache.get((task, split, tuple(doc_ids), tuple(map(id, owners))), compute, owners)
            inputs = BatchFeature(dict(inputs))  # .to() below replaces the tensors of the object it is called on
        inputs = inputs.to(self._device, self.model.dtype)
        gen = self._gen_kwargs(dict(all_gen_kwargs[0]))
        start = time.time()
        out = self.pruned.generate(**inputs, sample_ids=[f"{task}/{d}" for d in doc_ids], **gen)
        elapsed = time.time() - start
        new_ids = [o[len(i):] for i, o in zip(inputs["input_ids"], out)]
        answers = self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        for d, stats, image in zip(doc_ids, self.pruned.last_stats or [{} for _ in doc_ids], images):
            self.accounting.add(task, d, stats, image)
        results = []
        for text, ids, answer in zip(texts, new_ids, answers):
            results.append(GenerationResult(text=answer, token_counts=TokenCounts(output_tokens=len(ids))))
            self.cache_hook.add_partial("generate_until", (text, all_gen_kwargs[0]), answer)
        eval_logger.debug(f"hivtp_llava: {len(doc_ids)} docs in {elapsed:.3f}s")
        return results

    def _gen_kwargs(self, gen: dict[str, Any]) -> dict[str, Any]:
        """The exact generate() arguments the stock chat class passes (defaults included)."""
        gen.setdefault("max_new_tokens", 1024)
        gen.setdefault("temperature", 0)
        gen.setdefault("top_p", None)
        gen.setdefault("num_beams", 1)
        do_sample = gen["temperature"] > 0
        return dict(
            do_sample=do_sample,
            temperature=gen["temperature"] if do_sample else None,
            top_p=gen["top_p"],
            num_beams=gen["num_beams"],
            max_new_tokens=gen["max_new_tokens"],
            use_cache=self.use_cache,
            pad_token_id=self.eot_token_id,
            eos_token_id=self.eot_token_id,
        )


def _batches(args: list[tuple], batch_size: int) -> Iterator[list[int]]:
    """Indices into ``args`` (lmms-eval's chat request tuples ``(ctx, doc_to_messages, gen_kwargs,
    doc_id, task, split)``) in batches of at most ``batch_size`` that share task, split and generation
    kwargs, each group in request order (what the stock class's collator gives for one task).

    A batch reads every document from its task's split and generates with one set of kwargs, so
    requests of two tasks must never share a batch, even when their kwargs are equal (the stock
    class groups by kwargs only and answers the second task's documents from the first task's)."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, (_ctx, _to_messages, gen_kwargs, _doc_id, task, split) in enumerate(args):
        key = (task, split, json.dumps(gen_kwargs, sort_keys=True, default=repr))
        groups.setdefault(key, []).append(i)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start:start + batch_size]


class InputCache(BudgetedCache):
    """Processor outputs of whole batches, shared by the configurations one in-process evaluation runs
    (issue 20): every configuration answers the same documents in the same batches, and reading them
    (image decoding) and processing them costs as much as the offline models' language model. A key
    is (task, split, doc ids, the task objects whose ``doc_to_messages`` built them): the same
    documents of the very same task object (the runner loads each task once), hence the same prompts
    and pixels. Entries are the processor's CPU tensors,
    never modified (the caller moves a copy); at most ``max_bytes`` are held, least
    recently used first out."""

    DEFAULT_MAX_BYTES = 4 * 2**30  # entries: key -> ((texts, inputs, image keys), keep_alive)

    def get(self, key: tuple, compute, keep_alive: Any = None):
        """``compute()``'s (texts, inputs, image keys) for ``key``, computed once. ``keep_alive``: objects
        whose ids the key holds, kept referenced so that no other object can take their ids."""
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            return entry[0]
        self.misses += 1
        value = compute()
        size = sum(v.numel() * v.element_size() for v in value[1].values() if torch.is_tensor(v))
        self._entries.put(key, (value, keep_alive), size)
        return value

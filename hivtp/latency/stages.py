"""One repeat of every stage for one attached method.

The stages are timed as separate calls on the same inputs, each from inputs already on the device:

* ``vision``  ``layout`` + ``run_vision`` (the tower up to the feature layer, with the method's captures);
* ``select``  ``select_tokens`` on that tower output (scoring + selection: the method's overhead);
* ``ttft``    ``prepare_inputs`` (vision + select + projector + merge) and one LLM prefill forward
              (logits of the last position, as ``generate`` computes them) up to the argmax of the
              first token;
* ``e2e``     ``PrunedModel.generate`` (the model's own ``generate``) for exactly ``new_tokens``
              tokens: EOS suppressed with ``min_new_tokens``, greedy;
* ``decode``  inside that same ``generate`` call, from the first token's logits (marked by a logits
              processor, which ``generate`` calls once per step right after the forward) to the end:
              the N - 1 tokens after the first, with ``generate``'s own per-step bookkeeping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..errors import HivtpError
from ..pruned import PrunedModel
from .inputs import SyntheticBatch
from .timing import Measurement, stopwatch

__all__ = ["STAGES", "RepeatResult", "run_repeat", "generation_kwargs"]

STAGES = ("vision", "select", "ttft", "decode", "e2e")


@dataclass
class RepeatResult:
    ms: dict[str, float] = field(default_factory=dict)
    peak_mem_mb: dict[str, float | None] = field(default_factory=dict)
    new_tokens: int = 0
    stats: list[dict[str, Any]] = field(default_factory=list)  # last_stats of the generate call
    crops: int = 0
    vision_grids: list[tuple[int, int, int]] = field(default_factory=list)  # Qwen2.5-VL: (t, h, w) per image


class FirstLogitsMark(LogitsProcessor):
    """A logits processor that marks the moment the first token's logits exist (after prefill).

    On CUDA it records an event in the stream (no synchronisation, so it does not perturb the
    timing); on CPU it reads ``perf_counter``. ``decode_ms(end)`` is the time from the mark to ``end``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.calls = 0
        self.cpu_mark: float | None = None
        self.event = torch.cuda.Event(enable_timing=True) if device.type == "cuda" else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.calls == 0:
            if self.event is not None:
                self.event.record()
            else:
                self.cpu_mark = time.perf_counter()
        self.calls += 1
        return scores

    def decode_ms(self, cpu_end: float, cuda_end: "torch.cuda.Event | None" = None) -> float:
        if self.calls == 0:
            raise HivtpError("generate never produced logits; nothing to time.")
        if self.event is not None:
            return self.event.elapsed_time(cuda_end)
        return (cpu_end - self.cpu_mark) * 1e3


def generation_kwargs(model: Any, new_tokens: int) -> dict[str, Any]:
    """Greedy, exactly ``new_tokens`` tokens: EOS is suppressed until the length is reached."""
    pad = model.config.text_config.pad_token_id
    eos = model.config.text_config.eos_token_id
    return {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": pad if pad is not None else eos,
        "eos_token_id": eos,
    }


@torch.no_grad()
def _ttft(pruned: PrunedModel, inputs: SyntheticBatch) -> torch.Tensor:
    prepared = pruned.prepare_inputs(
        inputs.input_ids, inputs.attention_mask, inputs.pixel_values, inputs.image_sizes, **inputs.layout_inputs
    )
    merged = prepared.merged
    mask = merged.attention_mask
    # left padding, as generate does; families with their own positions (Qwen2.5-VL's M-RoPE) give them
    llm_kwargs = merged.llm_kwargs or {"position_ids": (mask.long().cumsum(-1) - 1).clamp_min(0)}
    with pruned.method.llm_context(pruned.model, merged, prepared.stats):
        out = pruned.model(
            inputs_embeds=merged.inputs_embeds,
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1,
            **llm_kwargs,
        )
    return out.logits[:, -1].argmax(-1)  # [B] first new token


def run_repeat(pruned: PrunedModel, inputs: SyntheticBatch, new_tokens: int, device: torch.device) -> RepeatResult:
    result = RepeatResult()
    marks: dict[str, Measurement] = {}
    with torch.no_grad():
        with stopwatch(device) as marks["vision"]:
            layout = pruned.layout(inputs.pixel_values, inputs.image_sizes, **inputs.layout_inputs)
            tower = pruned.run_vision(layout)
        with stopwatch(device) as marks["select"]:
            pruned.select_tokens(tower, layout)
        result.crops = len(layout.image_of_crop)
        grid_thw = layout.extra.get("grid_thw")
        result.vision_grids = [] if grid_thw is None else [tuple(g) for g in grid_thw.tolist()]
        del tower
        with stopwatch(device) as marks["ttft"]:
            _ttft(pruned, inputs)
        mark = FirstLogitsMark(device)
        end_event = torch.cuda.Event(enable_timing=True) if device.type == "cuda" else None
        with stopwatch(device) as marks["e2e"]:
            out = pruned.generate(
                **inputs.model_inputs(), **generation_kwargs(pruned.model, new_tokens), logits_processor=LogitsProcessorList([mark])
            )
            if end_event is not None:
                end_event.record()
            cpu_end = time.perf_counter()
    result.new_tokens = out.shape[1] - inputs.input_ids.shape[1]
    if result.new_tokens != new_tokens:
        raise HivtpError(
            f"generate returned {result.new_tokens} new tokens, {new_tokens} were requested: EOS suppression "
            "failed, so decode throughput would be wrong. Report this with the model and transformers version."
        )
    result.stats = [dict(s) for s in pruned.last_stats]
    result.ms = {k: m.ms for k, m in marks.items()}
    if end_event is not None:
        torch.cuda.synchronize(device)
    result.ms["decode"] = mark.decode_ms(cpu_end, end_event)
    result.peak_mem_mb = {k: m.peak_mem_mb for k, m in marks.items()}
    result.peak_mem_mb["decode"] = result.peak_mem_mb["e2e"]
    return result

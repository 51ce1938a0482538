"""``fastv``: drop image tokens inside the LLM after layer K by the last token's attention (FastV,
"An Image is Worth 1/2 Tokens After Layer 2", arXiv 2403.06764).

Rule. Layers ``0 .. K-1`` of the language model see every image token. At layer K (``k_layer``,
0-based, default 2, at least 1), the attention that the last prompt token pays to every position is computed
*from layer K's input hidden states*: ``input_layernorm`` -> ``q_proj`` (last token) / ``k_proj`` (all
tokens) -> rotary embedding with the model's own (cos, sin) for that call (so left padding's
position ids are respected) -> grouped-query repeat -> ``softmax(q k^T * scaling)`` over the valid
keys, mean over heads, float32. The image tokens of each sample are ranked by it (ties: lower
position) and the top B per image are kept for layers ``K ..`` (DECISION: the release ranks with the
attention map *of* layer K-1, which it gets by running eager attention; here the row is the one
layer K itself would compute, without materialising any attention map; ``k_layer=K`` here vs.
``K`` in the release therefore differ by which layer's attention ranks the tokens).

Pruning is physical: a forward pre-hook on layer K gathers the kept positions out of the hidden
states, the rotary (cos, sin) and the position ids, and pre-hooks on every later layer hand them the
shortened mask / positions. Layers ``K ..`` therefore really run on the shorter sequence, and their
KV cache holds only the kept tokens (layers ``< K`` keep the full prompt in theirs), so prefill *and*
decode of those layers get cheaper. Kept tokens keep their original position ids (as in the
release). When samples of a batch drop different numbers of tokens (e.g. LLaVA-NeXT images of
different sizes), the shorter ones are left-padded with masked slots.

Budget. ``budget`` counts image tokens kept per image (per sample: ``budget x images``); ``None`` keeps
one third of each sample's image tokens (192 of 576). On LLaVA-NeXT every position holding an
image feature counts as an image token, the image-newline tokens included (they are ranked like
the rest). ``last_stats[i]["tokens_kept"]`` is updated, once the prefill ran, to the image tokens
counted in the hidden states that the layers from K on see (never copied from the budget), and
``tokens_llm_dropped`` records how many were dropped there. A budget equal to every sample's image
token count changes nothing (the model runs untouched); a larger one is refused (ConfigError).

``generate`` with ``num_beams`` or ``num_return_sequences`` > 1 is supported: every row of a sample
drops the same tokens (see :func:`staged_dropping`).

Requirements: a decoder whose layers take ``position_embeddings`` / ``attention_mask`` keyword
arguments (Llama / Mistral / Vicuna in transformers 5.x), and the ``sdpa`` or ``eager`` attention
kernel (the hooks build the mask those kernels accept; ``flash_attention_2`` raises a ConfigError).
The model's attention implementation is never changed. Hooks are instance-level and removed when
the ``llm_context`` exits. Before the projector FastV keeps every token.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import ConfigError
from .base import CropBatch, CropSelection, PruningMethod, register_method
from ._common import check_budget

SUPPORTED_ATTENTION = ("sdpa", "eager")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """x [B, heads, T, d]; cos/sin [B, T, d]. Uses the decoder module's own function when it has one."""
    module = sys.modules.get(type(attn).__module__)
    fn = getattr(module, "apply_rotary_pos_emb", None)
    if fn is not None:
        return fn(x, x, cos, sin)[0]
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def language_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(decoder model, its layers) of a LLaVA / LLaVA-NeXT instance."""
    core = getattr(model, "model", model)
    lm = getattr(core, "language_model", None)
    layers = getattr(lm, "layers", None)
    if lm is None or layers is None:
        raise ConfigError(f"{type(model).__name__} has no language_model.layers; fastv needs a LLaVA-style decoder.")
    return lm, layers


@torch.no_grad()
def last_token_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """[B, L] float32: attention of the last position's query to every position at ``layer``, mean
    over heads, computed from the layer's input ``hidden`` [B, L, D]. ``key_mask`` [B, L] bool marks
    valid keys (None: all)."""
    attn = layer.self_attn
    b, length, _ = hidden.shape
    h = layer.input_layernorm(hidden)
    head_dim = attn.head_dim
    q = attn.q_proj(h[:, -1:]).view(b, 1, -1, head_dim).transpose(1, 2)  # [B, Hq, 1, d]
    k = attn.k_proj(h).view(b, length, -1, head_dim).transpose(1, 2)  # [B, Hkv, L, d]
    cos, sin = position_embeddings
    cos, sin = cos.expand(b, -1, -1), sin.expand(b, -1, -1)
    q = _apply_rotary(q, cos[:, -1:], sin[:, -1:], attn)
    k = _apply_rotary(k, cos, sin, attn)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scaling  # [B, H, 1, L]
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :].bool(), float("-inf"))
    return torch.softmax(scores, dim=-1)[:, :, 0].mean(dim=1)


def _mask(key_valid: torch.Tensor, q_len: int, like: torch.Tensor | None, implementation: str, dtype) -> torch.Tensor:
    """[B, 1, q, kv] mask for queries at the last ``q_len`` key positions: causal & key_valid, plus
    each query's own position (keeps padded rows finite). Bool for sdpa, additive float for eager
    (or whatever dtype the model's own mask has)."""
    b, kv = key_valid.shape
    device = key_valid.device
    q_pos = torch.arange(kv - q_len, kv, device=device)[:, None]
    k_pos = torch.arange(kv, device=device)[None, :]
    allowed = ((k_pos <= q_pos)[None] & key_valid[:, None, :]) | (k_pos == q_pos)[None]
    allowed = allowed[:, None]  # [B, 1, q, kv]
    as_bool = like.dtype == torch.bool if like is not None else implementation == "sdpa"
    if as_bool:
        return allowed
    out_dtype = like.dtype if like is not None else dtype
    return torch.zeros(allowed.shape, dtype=out_dtype, device=device).masked_fill(~allowed, torch.finfo(out_dtype).min)

def _replace(args, kwargs, hidden, stage):
    kwargs = dict(kwargs)
    if hidden is not None:
        if args:
            args = (hidden, *args[1:])
        else:
            kwargs["hidden_states"] = hidden
    kwargs["attention_mask"] = stage["mask"]
    kwargs["position_embeddings"] = stage["position_embeddings"]
    if "position_ids" in kwargs:
        kwargs["position_ids"] = stage["position_ids"]
    return args, kwargs


def check_stage_layer(param: str, layer: int, depth: int) -> None:
    """Refuse a stage layer past the language model; checked also when the budget drops nothing (the
    model then runs untouched), so such a parameter is never accepted and silently unused."""
    if layer >= depth:
        raise ConfigError(f"{param}={layer} but the language model has {depth} layers (0-based 0..{depth - 1}).")


def check_llm_budget(name: str, budget: int | None, wanted: int, count: int, images: int, sample: int) -> None:
    """Refuse an in-LLM budget larger than the sample's image tokens (``wanted`` = budget x images)."""
    if wanted > count:
        raise ConfigError(
            f"{name}: budget={budget} image tokens per image is more than sample {sample} has: {count} image "
            f"token(s) for {images} image(s). Pass a budget of at most the image's token count (e.g. 576 for "
            "a LLaVA-1.5 image), or method=none to keep every token."
        )


def choose(row: torch.Tensor, image_positions: torch.Tensor, budgets: list[int]) -> torch.Tensor:
    """[B, L] bool keep mask: every non-image position plus each sample's top-``budget`` image
    positions by ``row`` (ties: lower position)."""
    keep = ~image_positions.bool()
    for b, k in enumerate(budgets):
        cols = image_positions[b].nonzero().flatten()
        order = torch.sort(row[b, cols], descending=True, stable=True).indices[:k]
        keep[b, cols[order]] = True
    return keep


@contextmanager
def staged_dropping(
    model: nn.Module,
    inputs: Any,
    stages: list[tuple[int, Callable[[list[int]], list[int]]]],
    owner: Any,
    name: str,
    param: str,
) -> Iterator[list[list[int] | None]]:
    """Physically drop image tokens inside the LLM at one or more layers (see the module docstring).

    ``stages``: (layer, budgets) pairs in increasing layer order; ``budgets(remaining)`` maps the image
    tokens each sample still has to the number it keeps from that layer on. At each stage layer the last
    token's attention row is computed from the layer's input and stored on ``owner.last_attention``
    (the first stage's) / ``owner.stage_attention`` (all).

    Yields ``counted``: one entry per stage, filled at each prefill with the image tokens of each sample
    that are really left in the hidden states (and so in the KV cache) from that stage on; ``None``
    until the model reached the stage. Stats are written from it, never from the budget.

    ``generate`` with ``num_beams`` / ``num_return_sequences`` > 1 runs the LLM on ``B * n`` rows (each
    sample's rows adjacent, as transformers' ``repeat_interleave`` expands them); the per-sample image
    positions and budgets are repeated to match. Rows of one sample start from the same prompt, so they
    drop the same tokens, and beam reordering (within a sample) leaves the stored layouts valid."""
    lm, layers = language_layers(model)
    first = stages[0][0]
    last_layer = stages[-1][0]
    check_stage_layer(param, last_layer, len(layers))
    if any(b[0] <= a[0] for a, b in zip(stages, stages[1:])):
        raise ConfigError(f"{name}: stage layers must increase strictly, got {[s[0] for s in stages]}.")
    implementation = lm.config._attn_implementation
    if implementation not in SUPPORTED_ATTENTION:
        raise ConfigError(
            f"{name} prunes with its own attention masks for the {SUPPORTED_ATTENTION} kernels; the model uses "
            f"{implementation!r}. Load it with attn_implementation='sdpa'."
        )
    stage_of = {layer: i for i, (layer, _) in enumerate(stages)}
    image_positions = inputs.image_positions
    prompt_len = image_positions.shape[1]
    state: dict[str, Any] = {"stages": []}
    owner.stage_attention = []
    counted: list[list[int] | None] = [None] * len(stages)  # per stage: image tokens left per sample

    def on_model(_module, _args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen = cache.get_seq_length() if cache is not None else 0
        state["prefill"] = seen == 0
        state["processed"] = (0 if state["prefill"] else state["processed"]) + (0 if embeds is None else embeds.shape[1])
        if state["prefill"]:
            # a cache-less call (use_cache=False) re-runs the prompt plus what was generated so far
            length = -1 if embeds is None else embeds.shape[1]
            rows = 0 if embeds is None else embeds.shape[0]
            if length < prompt_len or rows % image_positions.shape[0]:
                raise ConfigError(f"{name}: the language model's prefill does not match the pruned prompt.")
            state["expand"] = rows // image_positions.shape[0]  # rows per sample (beams / returned sequences)
            extra = torch.zeros(rows, length - prompt_len, dtype=torch.bool, device=image_positions.device)
            expanded = image_positions.bool().repeat_interleave(state["expand"], dim=0)  # [B * n, L']
            state["image_positions"] = torch.cat([expanded, extra], dim=1)
            state["prompt_len"] = length
            state["stages"] = []
            owner.stage_attention = []
        mask2d = kwargs.get("attention_mask")
        state["mask2d"] = mask2d if mask2d is None or mask2d.dim() == 2 else None

    def compress(module, args, kwargs, stage_index):
        """Prefill at a stage layer: rank, keep, gather; returns the stage's layout."""
        hidden = args[0] if args else kwargs["hidden_states"]
        b, length, width = hidden.shape
        if stage_index == 0:
            mask2d = state["mask2d"]
            valid = torch.ones(b, length, dtype=torch.bool, device=hidden.device) if mask2d is None else mask2d.bool()
            prev = {
                "key_valid": valid,
                "image_positions": state["image_positions"].to(hidden.device),
                "position_embeddings": kwargs["position_embeddings"],
                "position_ids": kwargs.get("position_ids"),
            }
        else:
            prev = state["stages"][stage_index - 1]
        row = last_token_attention(module, hidden, prev["position_embeddings"], prev["key_valid"])
        owner.stage_attention.append(row.detach())
        if stage_index == 0:
            owner.last_attention = row.detach()  # [B, L]: the first ranking row of the last prefill
        expand = state["expand"]
        remaining = prev["image_positions"].sum(-1).tolist()[::expand]  # per sample: its first row
        budgets = [k for k in stages[stage_index][1](remaining) for _ in range(expand)]  # per row
        keep = choose(row, prev["image_positions"], budgets)
        new_len = int(keep.sum(-1).max())
        idx = torch.full((b, new_len), -1, dtype=torch.long, device=hidden.device)
        for i in range(b):
            kept = keep[i].nonzero().flatten()
            idx[i, new_len - kept.numel() :] = kept
        present = idx >= 0
        gather = idx.clamp(min=0)
        key_valid = present & prev["key_valid"].gather(1, gather)
        cos, sin = prev["position_embeddings"]
        cos = cos.expand(b, -1, -1).gather(1, gather[..., None].expand(-1, -1, cos.shape[-1]))
        sin = sin.expand(b, -1, -1).gather(1, gather[..., None].expand(-1, -1, sin.shape[-1]))
        position_ids = prev["position_ids"]
        if position_ids is not None:
            position_ids = position_ids.expand(b, -1).gather(1, gather)
        original = kwargs.get("attention_mask")
        padded = not bool(key_valid.all())
        mask = _mask(key_valid, new_len, original, implementation, hidden.dtype) if padded or original is not None else None
        stage = {
            "key_valid": key_valid,
            "image_positions": present & prev["image_positions"].gather(1, gather),
            "padded": padded,
            "mask": mask,
            "position_embeddings": (cos, sin),
            "position_ids": position_ids,
        }
        state["stages"].append(stage)
        # what really stays from this stage on, counted on the gathered layout (per sample: its first row)
        counted[stage_index] = stage["image_positions"].sum(-1).tolist()[::expand]
        new_hidden = hidden.gather(1, gather[..., None].expand(-1, -1, width)) * present[..., None].to(hidden.dtype)
        return _replace(args, kwargs, new_hidden, stage)

    def decode(stage, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        q_len = hidden.shape[1]
        original = kwargs.get("attention_mask")
        if not stage["padded"] and original is None:
            return None  # nothing masked: attend to every cached token, as the model would
        prefill_len = state["prompt_len"]
        generated = state["processed"] - prefill_len  # positions after the prefill, this call's included
        mask2d = state["mask2d"]
        if mask2d is not None and mask2d.shape[1] == prefill_len + generated:
            new_cols = mask2d[:, prefill_len:].bool()
        else:
            new_cols = torch.ones(hidden.shape[0], generated, dtype=torch.bool, device=hidden.device)
        key_valid = torch.cat([stage["key_valid"], new_cols], dim=1)
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = _mask(key_valid, q_len, original, implementation, hidden.dtype)
        return args, kwargs

    def make_hook(layer_index: int):
        current = max(i for i, (layer, _) in enumerate(stages) if layer <= layer_index)

        def hook(module, args, kwargs):
            if state.get("prefill"):
                if layer_index in stage_of:
                    return compress(module, args, kwargs, stage_of[layer_index])
                return _replace(args, kwargs, None, state["stages"][current])
            if len(state["stages"]) <= current:
                return None
            return decode(state["stages"][current], args, kwargs)

        return hook

    handles = [lm.register_forward_pre_hook(on_model, with_kwargs=True)]
    for i in range(first, len(layers)):
        handles.append(layers[i].register_forward_pre_hook(make_hook(i), with_kwargs=True))
    try:
        yield counted
    finally:
        for handle in handles:
            handle.remove()


@register_method
class FastV(PruningMethod):
    name = "fastv"
    stage = "llm"

    def __init__(self, budget: int | None = None, k_layer: int | None = None) -> None:
        self.budget = check_budget(budget)
        k_layer = 2 if k_layer is None else k_layer
        if isinstance(k_layer, bool) or not isinstance(k_layer, int) or k_layer < 1:
            raise ConfigError(
                f"k_layer must be an integer >= 1 (0-based LLM layer from which image tokens are dropped; layer 0 "
                f"keeps the full prompt in its cache, which the model's own mask and position bookkeeping read), "
                f"got {k_layer!r}."
            )
        self.k_layer = k_layer
        self.last_attention: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        return {"budget": self.budget, "k_layer": self.k_layer}

    def select(self, crops: CropBatch) -> CropSelection:
        keep = torch.ones(crops.features.shape[:2], dtype=torch.bool, device=crops.features.device)
        return CropSelection.from_masks(crops.features, keep, [{"tokens_kept": crops.num_patches}] * crops.num_crops)

    # --- inside the LLM ------------------------------------------------------------------------
    def sample_budgets(self, image_counts: list[int], images: list[int]) -> list[int]:
        """Image tokens each sample keeps from layer K on; a budget above a sample's image token count
        is refused (clamping it would silently report a budget that was not applied)."""
        out = []
        for i, (n, m) in enumerate(zip(image_counts, images)):
            if n == 0:  # a text-only sample of the batch: nothing to keep or drop
                out.append(0)
                continue
            b = round(n / 3) if self.budget is None else self.budget * max(m, 1)
            check_llm_budget(self.name, self.budget, b, n, m, i)
            out.append(b)
        return out

    def choose(self, row: torch.Tensor, image_positions: torch.Tensor, budgets: list[int]) -> torch.Tensor:
        """[B, L] bool keep mask: non-image positions plus each sample's top-``budget`` image positions."""
        return choose(row, image_positions, budgets)

    @contextmanager
    def llm_context(self, model: Any, inputs: Any, stats: list[dict[str, Any]]) -> Iterator[None]:
        counts = inputs.image_positions.sum(-1).tolist()
        budgets = self.sample_budgets(counts, [int(s.get("images", 1)) for s in stats])
        _, decoder_layers = language_layers(model)
        depth = len(decoder_layers)
        check_stage_layer("k_layer", self.k_layer, depth)
        if all(b == n for b, n in zip(budgets, counts)):
            yield  # nothing to drop: the model runs untouched and every image token stays
            kept = counts
        else:
            stages = [(self.k_layer, lambda _remaining: budgets)]
            with staged_dropping(model, inputs, stages, self, "fastv", "k_layer") as counted:
                yield
            if counted[0] is None:  # the model never reached layer K (no prefill ran): nothing to count
                return
            kept = counted[0]
        # Stats from what really stayed in the hidden states / cache (counted by staged_dropping).
        for s, n, k in zip(stats, counts, kept):
            s["tokens_kept"] = k
            s["tokens_llm_dropped"] = n - k
            # image tokens each LLM layer sees (FLOPs accounting): all of them before layer K
            s["tokens_by_layer"] = [n] * min(self.k_layer, depth) + [k] * max(depth - self.k_layer, 0)

"""Analytic FLOPs per stage, from the model config alone.

Convention: matrix products only, one multiply-add = 2 FLOPs (what ``torch.utils.flop_counter``
counts); norms, softmax, activations, RoPE and embeddings lookups are left out (each is O(T * d),
under 1% of a layer at these widths). Attention is counted dense (T x T, as the sdpa math path and
the flop counter count it), causal masking notwithstanding.

Per stage (B samples, C crops, T = patches + 1 tokens per crop):

* ``vision``     patch conv + the encoder layers up to the feature layer, on every crop;
* ``select``     the scorer's extra work: the fast path recomputes q k^T on each score layer
                 (the eager path reuses the maps the tower already built: 0 extra);
* ``projector``  the two-layer MLP on the kept tokens only;
* ``prefill``    the LLM over each sample's (pruned) sequence, logits for the last position only
                 (as ``generate`` asks for: ``logits_to_keep=1``);
* ``decode``     the LLM over N - 1 further tokens, one at a time, against a growing cache;
* ``ttft`` = vision + select + projector + prefill, ``e2e`` = ttft + decode.

Qwen2.5-VL (``vision_grids`` given): the ViT runs on each image's t x h x w patches; a full-attention
block's attention is dense per image, a window block's per window (the model's 112 px windows:
``window_size / patch / merge`` merged tokens a side, cut short at the edges); its MLP is gated (three
matrices); the "projector" is the 2x2 patch merger (Linear(4d, 4d), GELU, Linear(4d, out)) on the kept
merged tokens; the scorer recomputes q, k (the qkv projection) and q k^T in each score layer's chunks.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = [
    "vision_flops",
    "scorer_flops",
    "projector_flops",
    "llm_layer_linear_flops",
    "prefill_flops",
    "decode_flops",
    "stage_flops",
]


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def _vision_tokens(vc: Any) -> int:
    side = _get(vc, "image_size") // _get(vc, "patch_size")
    return side * side + 1  # patches + CLS


def vision_flops(vc: Any, crops: int, layers_run: int) -> int:
    """CLIP tower on ``crops`` crops, running ``layers_run`` encoder layers."""
    d, m, p = _get(vc, "hidden_size"), _get(vc, "intermediate_size"), _get(vc, "patch_size")
    t = _vision_tokens(vc)
    patch_embed = 2 * (t - 1) * (3 * p * p) * d  # conv = one linear per patch, no bias counted
    per_layer = 8 * t * d * d + 4 * t * t * d + 4 * t * d * m  # q,k,v,o + (qk^T, av) + fc1, fc2
    return crops * (patch_embed + layers_run * per_layer)


def scorer_flops(vc: Any, crops: int, score_layers: int) -> int:
    """Fast scorer: softmax(q k^T) recomputed on each score layer (all heads), per crop."""
    t, d = _vision_tokens(vc), _get(vc, "hidden_size")
    return crops * score_layers * 2 * t * t * d


def projector_flops(vision_dim: int, text_dim: int, tokens: int) -> int:
    """LLaVA's projector: Linear(vision_dim -> text_dim), GELU, Linear(text_dim -> text_dim)."""
    return 2 * tokens * (vision_dim * text_dim + text_dim * text_dim)


def qwen_attention_chunks(vc: Any, grid: Sequence[int], full: bool) -> list[int]:
    """Token counts of the attention chunks of one image (t, h, w patches) in a full or window block."""
    t, h, w = (int(x) for x in grid)
    merge = _get(vc, "spatial_merge_size")
    if full:
        return [h * w] * t
    side = _get(vc, "window_size") // merge // _get(vc, "patch_size")  # merged tokens per window side
    rows, cols = h // merge, w // merge
    sizes = [min(side, rows - r) * min(side, cols - c) * merge * merge for r in range(0, rows, side) for c in range(0, cols, side)]
    return sizes * t


def qwen_vision_flops(vc: Any, grids: Sequence[Sequence[int]]) -> int:
    """Qwen2.5-VL's ViT (every block: the merger reads the last one) on images of ``grids``."""
    d, m, p = _get(vc, "hidden_size"), _get(vc, "intermediate_size"), _get(vc, "patch_size")
    depth, full_blocks = _get(vc, "depth"), set(_get(vc, "fullatt_block_indexes"))
    s = sum(int(t) * int(h) * int(w) for t, h, w in grids)
    patch_embed = 2 * s * (_get(vc, "in_channels", 3) * _get(vc, "temporal_patch_size") * p * p) * d
    total = patch_embed
    for block in range(depth):
        chunks = [n for g in grids for n in qwen_attention_chunks(vc, g, block in full_blocks)]
        total += 8 * s * d * d + 4 * sum(n * n for n in chunks) * d + 6 * s * d * m  # qkv + proj, attn, gated MLP
    return total


def qwen_scorer_flops(vc: Any, grids: Sequence[Sequence[int]], score_layers: Sequence[int]) -> int:
    """The fast scorer: the qkv projection and q k^T of each score layer, chunk by chunk."""
    d = _get(vc, "hidden_size")
    s = sum(int(t) * int(h) * int(w) for t, h, w in grids)
    full_blocks = set(_get(vc, "fullatt_block_indexes"))
    total = 0
    for layer in score_layers:
        chunks = [n for g in grids for n in qwen_attention_chunks(vc, g, layer in full_blocks)]
        total += 6 * s * d * d + 2 * sum(n * n for n in chunks) * d
    return total


def qwen_merger_flops(vc: Any, tokens: int) -> int:
    """The 2x2 patch merger on ``tokens`` merged tokens."""
    width = _get(vc, "hidden_size") * _get(vc, "spatial_merge_size") ** 2
    return 2 * tokens * (width * width + width * _get(vc, "out_hidden_size"))


def _text_dims(tc: Any) -> tuple[int, int, int, int, int]:
    d, i = _get(tc, "hidden_size"), _get(tc, "intermediate_size")
    heads = _get(tc, "num_attention_heads")
    kv_heads = _get(tc, "num_key_value_heads") or heads
    head_dim = _get(tc, "head_dim") or d // heads
    return d, i, heads * head_dim, kv_heads * head_dim, _get(tc, "num_hidden_layers")


def llm_layer_linear_flops(tc: Any, tokens: int) -> int:
    """The projections of one decoder layer over ``tokens`` tokens: q, k, v, o and the gated MLP."""
    d, i, q_dim, kv_dim, _ = _text_dims(tc)
    return 2 * tokens * (d * q_dim + 2 * d * kv_dim + q_dim * d + 3 * d * i)


def _lm_head(tc: Any) -> int:
    return 2 * _get(tc, "hidden_size") * _get(tc, "vocab_size")


def _per_layer(lengths: Sequence[int], layers: int, by_layer: Sequence[Sequence[int]] | None) -> list[list[int]]:
    """Per sample, the sequence length each decoder layer processes (in-LLM pruning shortens the
    later layers; ``by_layer[i]`` gives sample i's lengths layer by layer)."""
    if by_layer is None:
        return [[n] * layers for n in lengths]
    if len(by_layer) != len(lengths) or any(len(x) != layers for x in by_layer):
        raise ValueError(f"need {layers} per-layer lengths for each of {len(lengths)} samples.")
    return [list(x) for x in by_layer]


def prefill_flops(tc: Any, lengths: Sequence[int], by_layer: Sequence[Sequence[int]] | None = None) -> int:
    """The LLM over each sample's prompt (``lengths``: per-sample sequence lengths, no padding;
    ``by_layer``: optional per-sample, per-layer lengths when tokens are dropped inside the LLM)."""
    _, _, q_dim, _, layers = _text_dims(tc)
    total = 0
    for per_layer in _per_layer(lengths, layers, by_layer):
        total += sum(llm_layer_linear_flops(tc, n) + 4 * n * n * q_dim for n in per_layer)  # + q k^T, probs @ v
        total += _lm_head(tc)
    return total


def decode_flops(tc: Any, lengths: Sequence[int], steps: int, by_layer: Sequence[Sequence[int]] | None = None) -> int:
    """``steps`` single-token steps after a prefill of ``lengths``; step s attends to n + s keys
    (n per layer when ``by_layer`` is given: the KV cache of a pruned layer is shorter)."""
    _, _, q_dim, _, layers = _text_dims(tc)
    total = 0
    for per_layer in _per_layer(lengths, layers, by_layer):
        for s in range(1, steps + 1):
            total += sum(llm_layer_linear_flops(tc, 1) + 4 * (n + s) * q_dim for n in per_layer) + _lm_head(tc)
    return total


def stage_flops(
    config: Any,
    crops: int,
    layers_run: int,
    score_layers: int,
    kept_per_sample: Sequence[int],
    text_per_sample: Sequence[int],
    new_tokens: int,
    feature_layers: int = 1,
    image_tokens_by_layer: Sequence[Sequence[int]] | None = None,
    vision_grids: Sequence[Sequence[int]] | None = None,
    score_layer_ids: Sequence[int] = (),
) -> dict[str, int]:
    """FLOPs of every stage for one batch. ``kept_per_sample``: image tokens the LLM sees per sample
    (all images, after pruning); ``text_per_sample``: the other prompt tokens;
    ``image_tokens_by_layer``: for methods that drop tokens inside the LLM, per sample the image
    tokens each decoder layer sees (then the projector counts the first layer's); ``vision_grids``:
    Qwen2.5-VL's (t, h, w) patch grid per image (then ``score_layer_ids`` names the fast scorer's layers)."""
    vc, tc = config.vision_config, config.text_config
    vision_dim = _get(vc, "hidden_size") * feature_layers
    lengths = [k + t for k, t in zip(kept_per_sample, text_per_sample)]
    by_layer = None
    projected = sum(kept_per_sample)
    if image_tokens_by_layer is not None:
        by_layer = [[k + t for k in ks] for ks, t in zip(image_tokens_by_layer, text_per_sample)]
        projected = sum(ks[0] for ks in image_tokens_by_layer)
    if vision_grids:
        vision = qwen_vision_flops(vc, vision_grids)
        select = qwen_scorer_flops(vc, vision_grids, score_layer_ids)
        projector = qwen_merger_flops(vc, projected)
    else:
        vision = vision_flops(vc, crops, layers_run)
        select = scorer_flops(vc, crops, score_layers)
        projector = projector_flops(vision_dim, _get(tc, "hidden_size"), projected)
    out = {
        "vision": vision,
        "select": select,
        "projector": projector,
        "prefill": prefill_flops(tc, lengths, by_layer),
        "decode": decode_flops(tc, lengths, max(new_tokens - 1, 0), by_layer),
    }
    out["ttft"] = out["vision"] + out["select"] + out["projector"] + out["prefill"]
    out["e2e"] = out["ttft"] + out["decode"]
    return out

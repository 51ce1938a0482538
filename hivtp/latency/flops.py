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
) -> dict[str, int]:
    """FLOPs of every stage for one batch. ``kept_per_sample``: image tokens the LLM sees per sample
    (all images, after pruning); ``text_per_sample``: the other prompt tokens;
    ``image_tokens_by_layer``: for methods that drop tokens inside the LLM, per sample the image
    tokens each decoder layer sees (then the projector counts the first layer's)."""
    vc, tc = config.vision_config, config.text_config
    vision_dim = _get(vc, "hidden_size") * feature_layers
    lengths = [k + t for k, t in zip(kept_per_sample, text_per_sample)]
    by_layer = None
    projected = sum(kept_per_sample)
    if image_tokens_by_layer is not None:
        by_layer = [[k + t for k in ks] for ks, t in zip(image_tokens_by_layer, text_per_sample)]
        projected = sum(ks[0] for ks in image_tokens_by_layer)
    out = {
        "vision": vision_flops(vc, crops, layers_run),
        "select": scorer_flops(vc, crops, score_layers),
        "projector": projector_flops(vision_dim, _get(tc, "hidden_size"), projected),
        "prefill": prefill_flops(tc, lengths, by_layer),
        "decode": decode_flops(tc, lengths, max(new_tokens - 1, 0), by_layer),
    }
    out["ttft"] = out["vision"] + out["select"] + out["projector"] + out["prefill"]
    out["e2e"] = out["ttft"] + out["decode"]
    return out

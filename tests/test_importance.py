"""hivtp.importance: fast == eager == an independent re-derivation; the tower stops early."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

import hivtp
from hivtp.importance import received_attention
from hivtp.vision import run_tower, tower_parts
from reference import received_attention_reference

LAYER_SETS = [(6, 7, 8), (0,), (3, 11), (20, 21, 22)]


def small_clip(attn="sdpa", dtype=torch.float32, sharpen=12.0, **overrides):
    cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=24, num_attention_heads=4,
               image_size=336, patch_size=14)
    cfg.update(overrides)
    torch.manual_seed(0)
    config = CLIPVisionConfig(**cfg)
    config._attn_implementation = attn
    model = CLIPVisionModel(config)
    # Random init gives near-uniform attention; sharpen q/k so the maps (and the comparison) are not flat.
    with torch.no_grad():
        for layer in tower_parts(model)[2]:
            layer.self_attn.q_proj.weight.mul_(sharpen)
            layer.self_attn.k_proj.weight.mul_(sharpen)
    return model.to(dtype).eval()


def pixels(batch=2, size=336, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def rel_err(a, b):
    return ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item()


@pytest.mark.parametrize("layers", LAYER_SETS)
def test_fast_equals_eager_small(layers):
    model, px = small_clip(), pixels()
    fast = hivtp.importance(model, px, layers=layers, backend="fast")
    eager = hivtp.importance(model, px, layers=layers, backend="eager")
    assert fast.shape == (2, 24, 24) and fast.dtype == torch.float32
    assert rel_err(fast, eager) < 1e-5
    # not flat: the scores must actually discriminate between patches
    assert (fast.amax((1, 2)) / fast.amin((1, 2))).min() > 1.5


@pytest.mark.parametrize("layers", [(6, 7, 8), (0, 23)])
def test_fast_equals_independent_rederivation(layers):
    model, px = small_clip(), pixels()
    with torch.no_grad():
        hidden = model(px, output_hidden_states=True).hidden_states
    expected = received_attention_reference(hidden, layers, model).float()
    got = hivtp.importance(model, px, layers=layers).flatten(1)
    assert rel_err(got, expected) < 1e-5


def test_received_attention_is_a_mean_over_rows():
    # Every softmax row sums to 1, so column sums over T rows and H heads total H * T; the mean
    # received attention therefore sums to exactly 1 over all tokens (CLS included).
    torch.manual_seed(2)
    q, k = torch.randn(3, 577, 64), torch.randn(3, 577, 64)
    col = received_attention(q, k, num_heads=4) / (4 * 577)
    assert torch.allclose(col.sum(-1), torch.ones(3), atol=1e-5)
    model, px = small_clip(), pixels()
    s = hivtp.importance(model, px)
    assert torch.all(s > 0) and torch.all(s.sum((1, 2)) < 1.0)  # patches get 1 minus CLS's share


def test_chunking_does_not_change_the_result():
    torch.manual_seed(1)
    q, k = torch.randn(2, 577, 64), torch.randn(2, 577, 64)
    whole = received_attention(q, k, num_heads=4, chunk_rows=577)
    for rows in (1, 7, 100):
        assert torch.allclose(received_attention(q, k, num_heads=4, chunk_rows=rows), whole, rtol=1e-5, atol=1e-7)


def test_fast_backend_stops_after_last_score_layer_and_keeps_sdpa():
    model, px = small_clip(), pixels(1)
    layers = tower_parts(model)[2]
    called = []
    handles = [layer.register_forward_hook(lambda m, i, o, n=n: called.append(n)) for n, layer in enumerate(layers)]
    try:
        hivtp.importance(model, px, layers=(6, 7, 8), backend="fast")
    finally:
        for h in handles:
            h.remove()
    assert called == list(range(9))
    assert model.config._attn_implementation == "sdpa"
    assert all(not layer.self_attn.q_proj._forward_hooks for layer in layers)


def test_eager_backend_restores_attention_implementation():
    model, px = small_clip(), pixels(1)
    hivtp.importance(model, px, backend="eager")
    assert model.config._attn_implementation == "sdpa"


def test_tower_hidden_states_are_bit_identical_to_the_model():
    model, px = small_clip(), pixels()
    with torch.no_grad():
        ref = model(px, output_hidden_states=True).hidden_states
    tower = run_tower(model, px, hidden_indices=[0, -2, 24], qk_layers=(5,))
    for idx in (0, 23, 24):
        assert torch.equal(tower.hidden_states[idx], ref[idx])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_float32_scores(dtype):
    model, px = small_clip(dtype=dtype), pixels(1)
    ref = hivtp.importance(small_clip(), px)
    try:
        s = hivtp.importance(model, px.to(dtype))
    except RuntimeError as exc:  # some CPU builds lack half kernels; bf16 is always there
        if dtype is torch.float16:
            pytest.xfail(f"float16 kernels unavailable on this CPU build: {exc}")
        raise
    assert s.dtype == torch.float32
    assert rel_err(s, ref) < 0.05  # half-precision activations, float32 scoring


@pytest.mark.slow
def test_fast_equals_eager_at_real_shape():
    """ViT-L/14-336 (LLaVA's tower, random weights): 24 layers, 1024 wide, 16 heads."""
    model = small_clip(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, projection_dim=768, sharpen=1.0)
    px = pixels(1)
    for layers in [(6, 7, 8), (12,)]:
        fast = hivtp.importance(model, px, layers=layers, backend="fast")
        eager = hivtp.importance(model, px, layers=layers, backend="eager")
        assert fast.shape == (1, 24, 24)
        assert rel_err(fast, eager) < 1e-5

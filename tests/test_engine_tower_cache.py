"""The opt-in vision-tower cache (issue 20, item 1): one tower pass per batch of pixels, shared by the
methods evaluated after it, with not a single answer changed."""

from __future__ import annotations

import pytest
import torch

import hivtp
from hivtp.vision import TowerCache, tower_parts
from helpers import llava_inputs

PROMPTS = ["What is in the picture?", "Is there a red circle in the image? Answer yes or no.", "Count the squares."]
# An in-process sweep's order: methods that capture nothing, others that capture other layers, the
# eager path (never shared with the fast one), budgets of the same method.
CONFIGS = [
    ("hivtp", {}),
    ("random", {"budget": 64}),
    ("fastervlm", {"budget": 64}),
    ("hiprune", {"budget": 64}),
    ("hivtp", {"budget": 64}),
    ("hivtp", {"backend": "eager"}),
    ("fastervlm", {"budget": 128, "backend": "eager"}),
    ("fastv", {"budget": 64, "k_layer": 1}),
    ("none", {}),
]


def _tower_calls(model):
    """A counter of tower passes (the patch embedding runs once per pass)."""
    calls = []
    handle = tower_parts(model.model.vision_tower)[0].register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("family", ["tiny_llava", "tiny_llava_next"])
def test_sharing_the_tower_changes_no_answer(request, family):
    model, processor = request.getfixturevalue(family)
    sizes = None if family == "tiny_llava" else [(672, 336), (300, 500), (500, 500)]
    batches = [llava_inputs(processor, seeds=s, texts=PROMPTS[: len(s)], sizes=sizes and sizes[: len(s)])
               for s in ([1, 2, 3], [4])]
    cache = TowerCache()
    calls, handle = _tower_calls(model)
    try:
        for name, params in CONFIGS:
            for inputs in batches:
                plain = hivtp.attach(model, name, **params)
                shared = hivtp.attach(model, name, **params)
                shared.tower_cache = cache
                want = plain.generate(**inputs, max_new_tokens=4, do_sample=False)
                got = shared.generate(**inputs, max_new_tokens=4, do_sample=False)
                assert torch.equal(got, want), (name, params)
                untimed = [[{k: v for k, v in s.items() if k != "select_ms"} for s in m.last_stats]
                           for m in (plain, shared)]
                assert untimed[0] == untimed[1]
    finally:
        handle.remove()
    # without the cache: one pass per configuration and batch, twice over (plain and shared runs)
    uncached = len(CONFIGS) * len(batches)
    # shared: a batch runs the tower once per capture not yet held (fast path: hivtp's layers 6-8, then
    # fastervlm's 22; eager: hivtp's, then fastervlm's); the other five configurations reuse a held pass
    # (random, fastv, none need no capture; hiprune's 8 and 22 and hivtp at a budget are held by then)
    assert cache.misses == 4 * len(batches) and cache.hits == uncached - cache.misses
    assert len(calls) == uncached + cache.misses


def test_other_pixels_or_another_model_are_not_shared(tiny_llava):
    model, processor = tiny_llava
    inputs = llava_inputs(processor, seeds=[1])
    cache = TowerCache()
    pruned = hivtp.attach(model, "none")
    pruned.tower_cache = cache
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    pixels = inputs["pixel_values"].clone()
    pixels[0, 0, 0, 0] += 1e-3  # one pixel differs: same shape, another batch
    pruned.generate(**{**inputs, "pixel_values": pixels}, max_new_tokens=1, do_sample=False)
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert (cache.misses, cache.hits) == (2, 1)
    cache.clear()
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert cache.misses == 3


def test_the_cache_holds_at_most_its_byte_budget(tiny_llava):
    model, processor = tiny_llava
    cache = TowerCache(max_bytes=1)  # every new entry evicts the one before
    pruned = hivtp.attach(model, "none")
    pruned.tower_cache = cache
    for seeds in ([1], [2], [1]):
        pruned.generate(**llava_inputs(processor, seeds=seeds), max_new_tokens=1, do_sample=False)
    assert (cache.misses, cache.hits) == (3, 0)


def test_an_entry_holds_the_captures_and_no_copy_of_the_pixels(tiny_llava):
    """Keyed by a digest of the pixels, an entry's bytes are its captured tensors alone: for `none`,
    the feature layer's hidden state, [B, 1 + P, D] floats."""
    model, processor = tiny_llava
    inputs = llava_inputs(processor, seeds=[1, 2])
    cache = TowerCache()
    pruned = hivtp.attach(model, "none")
    pruned.tower_cache = cache
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    vision = model.config.vision_config
    tokens = 1 + (vision.image_size // vision.patch_size) ** 2
    assert cache.nbytes == 2 * tokens * vision.hidden_size * inputs["pixel_values"].element_size()
    assert cache.nbytes < inputs["pixel_values"].numel() * inputs["pixel_values"].element_size()


def test_a_shared_pass_is_scored_once_per_layer(tiny_llava, monkeypatch):
    """HIVTP's received attention is memoised with the cached pass: the rule and two budgets score
    layers 6-8 once per batch, not once per configuration; the selections equal unshared ones."""
    import importlib

    importance = importlib.import_module("hivtp.importance")  # the module (hivtp.importance names a function)
    model, processor = tiny_llava
    inputs = llava_inputs(processor, seeds=[1, 2], texts=PROMPTS[:2])
    computed = []
    real = importance.received_attention
    monkeypatch.setattr(importance, "received_attention", lambda q, k, h, *a: computed.append(1) or real(q, k, h, *a))
    cache = TowerCache()
    for params in ({}, {"budget": 64}, {"budget": 128}):
        plain, shared = hivtp.attach(model, "hivtp", **params), hivtp.attach(model, "hivtp", **params)
        shared.tower_cache = cache
        want = plain.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert torch.equal(shared.generate(**inputs, max_new_tokens=2, do_sample=False), want)
    # three unshared configurations score 3 layers each; the shared ones 3 layers once in all
    assert len(computed) == 3 * 3 + 3


def test_the_pixel_digest_reads_values_not_layout():
    """Equal values give equal digests whatever the memory layout; one changed value or another dtype
    gives another (the cache key also holds shape, dtype and device)."""
    from hivtp.vision import pixel_digest

    x = torch.randn(2, 3, 8, 8)
    view = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # the same values, another memory layout
    assert not view.is_contiguous() and pixel_digest(view) == pixel_digest(x)
    y = x.clone()
    y[1, 2, 7, 7] = torch.nextafter(y[1, 2, 7, 7], torch.tensor(2.0))  # one float, one ulp
    assert pixel_digest(y) != pixel_digest(x)
    assert pixel_digest(x.bfloat16()) != pixel_digest(x) and len(pixel_digest(x.bfloat16())) == 32

"""LLaVA-NeXT (anyres): per-crop pruning placed through the model's own packing (issue 4)."""

from __future__ import annotations

import pytest
import torch

import hivtp
from hivtp.adapters.llava_next import LlavaNextAdapter, least_budget, split_budget
from hivtp.errors import ConfigError, InputMismatchError
from hivtp.zoo import build_model, shape_config

from helpers import greedy, llava_inputs

# (width, height): exact 1x2 and 2x1 tile fits (no unpadding), a 2x2 fit, and two that are unpadded.
WIDE, TALL, SQUARE, ODD_TALL, ODD_WIDE = (672, 336), (336, 672), (500, 500), (300, 500), (640, 400)


def _inputs(processor, seeds, sizes):
    return llava_inputs(processor, seeds, sizes=sizes)


def _model_packed(model, inputs) -> list[torch.Tensor]:
    """The unmodified model's packed image features (base, canvas rows + newlines), per image."""
    out = model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    return list(out.pooler_output)


# --- exactness against the unmodified model --------------------------------------------------
@pytest.mark.parametrize("sizes", [[WIDE, ODD_TALL], [TALL, ODD_WIDE, SQUARE]])
def test_keep_all_packs_exactly_like_the_model(tiny_llava_next, sizes):
    model, processor = tiny_llava_next
    inputs = _inputs(processor, range(len(sizes)), sizes)
    expected = _model_packed(model, inputs)
    for method, params in [("none", {}), ("hivtp", {"keep_ratio": 1.0})]:
        pruned = hivtp.attach(model, method, **params)
        images, layout, _ = pruned.encode_images(inputs["pixel_values"], inputs["image_sizes"])
        assert layout.tokens_per_image == [e.shape[0] for e in expected]
        for got, want in zip(images.features, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_pruned_tokens_sit_where_the_model_packs_them(tiny_llava_next):
    """Every kept feature is the model's own packed feature of that token, in packed order."""
    model, processor = tiny_llava_next
    inputs = _inputs(processor, [3, 4], [ODD_TALL, SQUARE])
    expected = _model_packed(model, inputs)
    pruned = hivtp.attach(model, "hivtp")
    images, _, _ = pruned.encode_images(inputs["pixel_values"], inputs["image_sizes"])
    newline = model.model.image_newline
    for got, full in zip(images.features, expected):
        assert got.shape[0] < full.shape[0]
        is_nl = (full == newline).all(-1)
        last = -1
        for row in got:
            if (row == newline).all():
                hits = [j for j in is_nl.nonzero().flatten().tolist() if j > last]
            else:
                hits = [j for j in (full == row).all(-1).nonzero().flatten().tolist() if j > last]
            assert hits, "a kept token is not in the model's packing at a later position"
            last = hits[0]


@pytest.fixture(scope="module")
def three_sizes(tiny_llava_next):
    """A batch of three aspect ratios and the unmodified model's greedy tokens for it."""
    model, processor = tiny_llava_next
    inputs = _inputs(processor, [0, 1, 2], [WIDE, ODD_TALL, SQUARE])
    return inputs, greedy(model, inputs)


@pytest.mark.parametrize("method,params", [("none", {}), ("hivtp", {"keep_ratio": 1.0})])
def test_unpruned_greedy_tokens_match_the_model(tiny_llava_next, three_sizes, method, params):
    inputs, reference = three_sizes
    pruned = hivtp.attach(tiny_llava_next[0], method, **params)
    assert torch.equal(greedy(pruned, inputs), reference)
    assert [s["tokens_kept"] for s in pruned.last_stats] == [s["tokens_total"] for s in pruned.last_stats]


def test_mixed_size_batch_equals_per_image_runs(tiny_llava_next):
    model, processor = tiny_llava_next
    sizes = [WIDE, ODD_TALL, SQUARE]
    pruned = hivtp.attach(model, "hivtp")
    batch = _inputs(processor, [0, 1, 2], sizes)  # same images as three_sizes
    together = greedy(pruned, batch)
    stats = pruned.last_stats
    assert len({s["tokens_kept"] for s in stats}) == 3  # different kept counts => real left padding
    new = together[:, batch["input_ids"].shape[1] :]
    for b, size in enumerate(sizes):
        alone_inputs = _inputs(processor, [b], [size])
        alone = greedy(pruned, alone_inputs)
        assert torch.equal(alone[0, alone_inputs["input_ids"].shape[1] :], new[b])
        assert pruned.last_stats[0]["tokens_kept"] == stats[b]["tokens_kept"]


# --- token accounting ------------------------------------------------------------------------
def test_default_hivtp_keeps_about_half_of_each_image(tiny_llava_next):
    model, processor = tiny_llava_next
    pruned = hivtp.attach(model, "hivtp")
    inputs = _inputs(processor, [0, 1, 2, 3], [WIDE, TALL, SQUARE, ODD_TALL])
    keys = ("input_ids", "attention_mask", "pixel_values", "image_sizes")
    full_stats = hivtp.attach(model, "none").prepare_inputs(**{k: inputs[k] for k in keys}).stats
    kept_stats = pruned.prepare_inputs(**{k: inputs[k] for k in keys}).stats
    for kept, unpruned in zip(kept_stats, full_stats):
        visual = kept["tokens_base"] + kept["tokens_tiles"]
        ratio = visual / (unpruned["tokens_base"] + unpruned["tokens_tiles"])
        assert 0.42 <= ratio <= 0.55, ratio
        assert kept["tokens_kept"] == visual + kept["tokens_newline"]
        assert unpruned["tokens_kept"] == unpruned["tokens_total"]


@pytest.mark.parametrize("budget", [160, 320, 641])
def test_image_budget_is_exact(tiny_llava_next, budget):
    model, processor = tiny_llava_next
    pruned = hivtp.attach(model, "hivtp", budget=budget)
    inputs = _inputs(processor, [5, 6], [WIDE, TALL])  # exact tile fits: no token is unpadded away
    images, _, _ = pruned.encode_images(inputs["pixel_values"], inputs["image_sizes"])
    for s in images.stats:
        assert s["tokens_base"] + s["tokens_tiles"] == budget
        assert s["tokens_kept"] == budget + s["tokens_newline"]


@pytest.mark.parametrize("method", ["hivtp", "random", "fastervlm", "visionzip", "divprune", "hiprune"])
def test_image_budget_is_exact_on_unpadded_images(tiny_llava_next, method):
    """Non-fitting aspect ratios: unpadding removes tile rows / columns, so methods must choose among
    the positions the model's packing keeps (CropBatch.valid) for the budget to survive packing."""
    model, processor = tiny_llava_next
    pruned = hivtp.attach(model, method, budget=160)
    inputs = _inputs(processor, [7, 8], [ODD_TALL, ODD_WIDE])
    images, layout, _ = pruned.encode_images(inputs["pixel_values"], inputs["image_sizes"])
    valid = pruned.adapter.crop_valid_masks(layout)
    assert not valid.all()  # these sizes really are unpadded
    assert [s["tokens_base"] + s["tokens_tiles"] for s in images.stats] == [160, 160]


@pytest.mark.parametrize("params", [{}, {"keep_ratio": 1.0}, {"regions": 3, "window": 4}])
def test_global_and_local_tokens_are_the_visual_tokens_that_enter_the_llm(tiny_llava_next, params):
    """The pure rule (no budget: no correction adds tokens) runs on whole crops and unpadding then drops
    some of its picks: tokens_global and tokens_local count only what the LLM receives (base + tiles,
    newlines apart)."""
    model, processor = tiny_llava_next
    inputs = _inputs(processor, [7, 8], [ODD_TALL, ODD_WIDE])
    prepared = hivtp.attach(model, "hivtp", **params).prepare_inputs(**inputs)
    entered = prepared.merged.image_positions.sum(-1).tolist()  # image features per sample, newlines included
    for s, n in zip(prepared.stats, entered):
        visual = n - s["tokens_newline"]
        assert s["tokens_base"] + s["tokens_tiles"] == visual
        assert s["tokens_global"] + s["tokens_local"] == visual, s


def test_a_budget_below_what_the_crops_need_is_refused_before_the_tower(tiny_llava_next, monkeypatch):
    """Every crop keeps at least one token: a smaller image budget names the least one that works."""
    model, processor = tiny_llava_next
    inputs = _inputs(processor, [2], [ODD_WIDE])
    whole = hivtp.attach(model, "none")
    counts = whole.adapter.valid_counts(whole.layout(inputs["pixel_values"], inputs["image_sizes"]))  # per crop
    least = least_budget(counts)
    assert least >= len(counts) > 2
    monkeypatch.setattr(LlavaNextAdapter, "run_tower", lambda *a: pytest.fail("the tower ran"))
    for budget in (2, least - 1):
        with pytest.raises(ConfigError, match=f"budget={budget} is too small .* needs budget >= {least}"):
            hivtp.attach(model, "random", budget=budget).prepare_inputs(**inputs)
    monkeypatch.undo()
    stats = hivtp.attach(model, "random", budget=least).prepare_inputs(**inputs).stats[0]
    assert stats["tokens_base"] + stats["tokens_tiles"] == least


def test_least_budget_gives_every_crop_a_token():
    for counts in ([576, 576, 576], [576, 480, 480, 96], [576, 100, 24], [576, 12]):
        least = least_budget(counts)
        assert all(min(split_budget(b, counts)) >= 1 for b in range(least, sum(counts) + 1))
        assert min(split_budget(least - 1, counts)) == 0
    assert least_budget([576, 576, 576]) == 3 and least_budget([576, 12]) == 25  # 25 * 12 // 588 = 0, yet 1 by remainder


def test_budget_split_is_proportional_and_exact():
    assert split_budget(320, [576, 576, 576]) == [107, 107, 106]
    assert split_budget(100, [576, 288]) == [67, 33]
    assert split_budget(5000, [576, 100]) == [576, 100]  # never more than a crop has
    for budget in (1, 64, 333, 999):
        counts = [576, 480, 480, 96]
        parts = split_budget(budget, counts)
        assert sum(parts) == budget
        assert all(abs(p - budget * n / sum(counts)) < 1 for p, n in zip(parts, counts))


def test_newline_none_drops_exactly_the_newlines(tiny_llava_next):
    model, processor = tiny_llava_next
    inputs = _inputs(processor, [7], [ODD_WIDE])
    row, _, _ = hivtp.attach(model, "hivtp").encode_images(inputs["pixel_values"], inputs["image_sizes"])
    none, _, _ = hivtp.attach(model, "hivtp", newline="none").encode_images(
        inputs["pixel_values"], inputs["image_sizes"]
    )
    is_newline = (row.features[0] == model.model.image_newline).all(-1)
    assert int(is_newline.sum()) == row.stats[0]["tokens_newline"] > 0
    assert none.stats[0]["tokens_newline"] == 0
    torch.testing.assert_close(none.features[0], row.features[0][~is_newline], rtol=0, atol=0)


# --- errors ----------------------------------------------------------------------------------
def test_missing_image_sizes_is_a_clear_error(tiny_llava_next):
    model, processor = tiny_llava_next
    inputs = _inputs(processor, [0], [WIDE])
    inputs.pop("image_sizes")
    with pytest.raises(InputMismatchError, match="image_sizes"):
        greedy(hivtp.attach(model, "hivtp"), inputs)


def test_unknown_newline_policy_is_a_config_error(tiny_llava_next):
    with pytest.raises(ConfigError, match="newline"):
        hivtp.attach(tiny_llava_next[0], "hivtp", newline="col")


@pytest.mark.parametrize("pinpoints", [[[336, 500]], [[336, 672], [700, 336]], []])
def test_pinpoints_that_do_not_tile_are_a_config_error(pinpoints):
    with pytest.raises(ConfigError, match="image_grid_pinpoints"):
        LlavaNextAdapter._check_pinpoints(pinpoints, 336)


def test_model_with_non_tiling_pinpoints_is_refused_at_attach(tiny_llava_next):
    model = tiny_llava_next[0]
    saved = model.config.image_grid_pinpoints
    model.config.image_grid_pinpoints = [[336, 500]]
    try:
        with pytest.raises(ConfigError, match="multiple"):
            hivtp.attach(model, "hivtp")
    finally:
        model.config.image_grid_pinpoints = saved


# --- real shapes -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,params",
    # llava-hf/llava-v1.6-vicuna-7b-hf and -mistral-7b-hf parameter counts (CLIP ViT-L/14-336,
    # 2-layer MLP projector, image_newline [4096], Vicuna-7B / Mistral-7B with a 32064 vocabulary).
    [("llava-v1.6-vicuna-7b", 7_063_431_168), ("llava-v1.6-mistral-7b", 7_566_747_648)],
)
def test_real_next_shapes_have_the_published_parameter_count(shape, params):
    model = build_model(shape, device="meta")
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) == params
    assert shape_config(shape).image_grid_pinpoints == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@pytest.mark.slow
def test_real_shape_wiring_with_one_text_layer():
    """At the real vicuna-7b NeXT shape (1 text layer): unpruned forward == the model's; a budget
    of 320 per image is kept exactly (a 1x2 tile fit: no unpadding)."""
    # float32: CPUs without native bf16 matmul take minutes at this shape (half precision is tested small)
    model = build_model("llava-v1.6-vicuna-7b", text_layers=1, dtype=torch.float32)
    sizes = torch.tensor([[336, 672]])  # (height, width)
    pixels = torch.randn(1, 3, 3, 336, 336)
    tokens = LlavaNextAdapter(model).crops(pixels, sizes).tokens_per_image[0]
    ids = torch.tensor([[1, 319] + [model.config.image_token_id] * tokens + [13, 29901]])
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=pixels, image_sizes=sizes, logits_to_keep=1).logits
    got = hivtp.attach(model, "none")(input_ids=ids, pixel_values=pixels, image_sizes=sizes, logits_to_keep=1).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    pruned = hivtp.attach(model, "hivtp", budget=320)
    pruned(input_ids=ids, pixel_values=pixels, image_sizes=sizes, logits_to_keep=1)
    stats = pruned.last_stats[0]
    assert stats["tokens_base"] + stats["tokens_tiles"] == 320


def test_hivtps_recorded_params_rebuild_the_same_selection(tiny_llava_next):
    """What a run records (``params()``, nulls dropped) selects what the method selected: under a budget each
    crop takes the preset nearest its own share, so recording the whole budget's preset and giving it back
    would apply that one geometry to every crop (and select other tokens)."""
    model, processor = tiny_llava_next
    inputs = _inputs(processor, [7, 8], [ODD_TALL, WIDE])
    for budget in (160, 320):
        first = hivtp.attach(model, "hivtp", budget=budget)
        recorded = {k: v for k, v in first.method.params().items() if v is not None}
        again = hivtp.attach(model, "hivtp", **recorded)
        a, _, _ = first.encode_images(inputs["pixel_values"], inputs["image_sizes"])
        b, _, _ = again.encode_images(inputs["pixel_values"], inputs["image_sizes"])
        assert a.stats == b.stats, budget
        assert all(torch.equal(x, y) for x, y in zip(a.features, b.features)), budget

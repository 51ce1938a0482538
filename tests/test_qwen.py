"""Qwen2.5-VL as a model family (issue 22): exactness, budgets, scores, M-RoPE positions, refusals."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest
import torch
from helpers import chat_prompt, greedy, make_image

import hivtp
from hivtp.adapters.qwen2_5_vl import Qwen2_5_VLAdapter, default_score_layer, keep_count, run_qwen_tower
from hivtp.errors import ConfigError, InputMismatchError
from hivtp.importance import scores_from_tower
from hivtp.methods.hivtp import HIVTP
from hivtp.selection import _select_masks_uneven, select_masks
from hivtp.vision import attention_implementation
from hivtp.zoo import build_model, shape_config

# (width, height) -> merged grids (rows x cols) 8x8, 6x10 and 5x4: square, wide, and odd sides
SQUARE, WIDE, SMALL = (224, 224), (300, 170), (115, 145)


def qwen_inputs(processor, seeds, sizes, text: str = "What is in the picture?") -> dict:
    images = [make_image(s, size) for s, size in zip(seeds, sizes)]
    prompts = [chat_prompt(processor, text) for _ in images]
    return dict(processor(images=images, text=prompts, return_tensors="pt", padding=True))


def merged_grids(inputs) -> list[tuple[int, int]]:
    return [(h // 2, w // 2) for _, h, w in inputs["image_grid_thw"].tolist()]


@pytest.fixture(scope="module")
def batch(tiny_qwen):
    model, processor = tiny_qwen
    inputs = qwen_inputs(processor, [0, 1, 2], [SQUARE, WIDE, SMALL])
    return inputs, greedy(model, inputs)


def test_tiny_checkpoint_is_a_qwen_with_varied_grids(tiny_qwen, batch):
    model, processor = tiny_qwen
    inputs, _ = batch
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert processor.image_token_id == model.config.image_token_id
    grids = merged_grids(inputs)
    assert len(set(grids)) == 3 and any(h != w for h, w in grids) and any(h % 2 or w % 2 for h, w in grids)


# --- exactness -------------------------------------------------------------------------------
@pytest.mark.parametrize("method,params", [("none", {}), ("hivtp", {"keep_ratio": 1.0})])
def test_keep_all_matches_the_model_for_a_batch_of_sizes(tiny_qwen, batch, method, params):
    inputs, reference = batch
    pruned = hivtp.attach(tiny_qwen[0], method, **params)
    assert torch.equal(greedy(pruned, inputs), reference)
    assert [s["tokens_kept"] for s in pruned.last_stats] == [h * w for h, w in merged_grids(inputs)]


@pytest.mark.parametrize("method,params", [("none", {}), ("hivtp", {"keep_ratio": 1.0})])
def test_keep_all_matches_the_model_for_one_image(tiny_qwen, method, params):
    model, processor = tiny_qwen
    inputs = qwen_inputs(processor, [5], [WIDE])
    pruned = hivtp.attach(model, method, **params)
    assert torch.equal(greedy(pruned, inputs), greedy(model, inputs))


def test_keep_all_forward_logits_match_the_model(tiny_qwen, batch):
    """One forward (no generate): the wrapper's logits, right-aligned, are the model's own."""
    model, _ = tiny_qwen
    inputs, _ = batch
    want = model(**inputs).logits
    got = hivtp.attach(model, "hivtp", keep_ratio=1.0)(**inputs).logits
    torch.testing.assert_close(got[:, -want.shape[1] :], want, rtol=0, atol=0)


def test_eager_backend_scores_equal_fast(tiny_qwen, batch):
    model, _ = tiny_qwen
    inputs, _ = batch
    fast = run_qwen_tower(model.model.visual, inputs["pixel_values"], inputs["image_grid_thw"], (1, 2))
    eager = run_qwen_tower(model.model.visual, inputs["pixel_values"], inputs["image_grid_thw"], (1, 2), eager=True)
    for i in range(3):
        torch.testing.assert_close(scores_from_tower(eager.subset([i]), (1, 2)), scores_from_tower(fast.subset([i]), (1, 2)))
    a = hivtp.attach(model, "hivtp", backend="eager").encode_images(inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])[0]
    b = hivtp.attach(model, "hivtp").encode_images(inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])[0]
    assert all(torch.equal(x, y) for x, y in zip(a.positions, b.positions))


def test_keep_all_features_are_the_models_own(tiny_qwen, batch):
    """Every projected feature, bit for bit, is the model's ``get_image_features`` output."""
    model, _ = tiny_qwen
    inputs, _ = batch
    expected = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    images, _, _ = hivtp.attach(model, "none").encode_images(inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    for got, want in zip(images.features, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_merger_gets_the_kept_tokens_in_the_models_own_window_order(tiny_qwen, batch):
    """Keeping every token, the merger's input is the model's own merger input, row for row (its window
    order): the slots were looked up through argsort(argsort(window_index)), i.e. window_index itself."""
    model, _ = tiny_qwen
    inputs, _ = batch
    seen = []
    hook = model.model.visual.merger.register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    try:
        model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        hivtp.attach(model, "none").encode_images(inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    finally:
        hook.remove()
    own, ours = seen
    assert torch.equal(own, ours)


@pytest.mark.parametrize(
    "method,params",
    [("hivtp", {}), ("hivtp", {"budget": 9}), ("random", {"budget": 7}), ("divprune", {"budget": 7}), ("pool", {}),
     ("fastv", {"budget": 7})],
)
def test_batch_equals_single(tiny_qwen, batch, method, params):
    model, processor = tiny_qwen
    inputs, _ = batch
    pruned = hivtp.attach(model, method, **params)
    together = greedy(pruned, {**inputs, "sample_ids": ["a", "b", "c"]})
    stats = pruned.last_stats
    for i, (seed, size) in enumerate(zip([0, 1, 2], [SQUARE, WIDE, SMALL])):
        alone = greedy(pruned, {**qwen_inputs(processor, [seed], [size]), "sample_ids": ["abc"[i]]})
        assert torch.equal(together[i, -alone.shape[1] :], alone[0])  # left padding: the row ends like the single run
        assert pruned.last_stats[0]["tokens_kept"] == stats[i]["tokens_kept"]


# --- budgets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["hivtp", "random", "divprune", "fastv", "hiprune"])
@pytest.mark.parametrize("budget", [1, 9, 19])
def test_exact_budget_per_image(tiny_qwen, batch, method, budget):
    inputs, _ = batch
    pruned = hivtp.attach(tiny_qwen[0], method, budget=budget)
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert [s["tokens_kept"] for s in pruned.last_stats] == [budget] * 3


def test_a_budget_above_a_small_images_tokens_keeps_that_image_whole_and_says_so(tiny_qwen, batch):
    """Qwen's token counts follow the resolution: an image with fewer tokens than the budget keeps all of
    them (one small image must not stop a benchmark), with a warning, and ``tokens_kept`` records it."""
    inputs, _ = batch
    counts = [h * w for h, w in merged_grids(inputs)]
    budget = sorted(counts)[1]  # above the smallest image's count only
    pruned = hivtp.attach(tiny_qwen[0], "random", budget=budget)
    with pytest.warns(UserWarning, match=f"budget={budget} is more than an image's {min(counts)} merged tokens"):
        pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert [s["tokens_kept"] for s in pruned.last_stats] == [min(budget, n) for n in counts]


@pytest.mark.parametrize("method", ["hivtp", "random", "divprune"])
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
def test_keep_ratio_budget(tiny_qwen, batch, method, keep):
    """keep=r keeps floor(r * n_i) of image i's n_i merged tokens (at least one), exactly."""
    inputs, _ = batch
    pruned = hivtp.attach(tiny_qwen[0], method, keep=keep)
    images, _, _ = pruned.encode_images(inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    counts = [h * w for h, w in merged_grids(inputs)]
    assert [f.shape[0] for f in images.features] == [max(1, int(n * keep + 1e-9)) for n in counts]
    assert keep_count(10, 0.29) == 2 and keep_count(100, 0.29) == 29 and keep_count(3, 0.1) == 1


def test_hivtp_keep_selects_as_the_same_budget_does_with_both_stages(tiny_qwen, batch):
    """keep=r reaches HIVTP as per-image budgets, not as ``budget=``: each image must still get the
    exact-budget preset nearest its budget (global and local tokens), as budget=that count gives it,
    not the paper's geometry trimmed to the budget (which keeps global tokens only: the audit's case,
    64 tokens at keep 0.25 kept 16 global and 0 local)."""
    model, processor = tiny_qwen
    inputs = qwen_inputs(processor, [0], [SQUARE])  # 8 x 8 merged tokens
    keep = 0.25
    by_keep = hivtp.attach(model, "hivtp", keep=keep).prepare_inputs(**inputs)
    budget = keep_count(64, keep)
    by_budget = hivtp.attach(model, "hivtp", budget=budget).prepare_inputs(**inputs)
    stats = by_keep.stats[0]
    assert stats["tokens_kept"] == budget and stats["tokens_global"] > 0 and stats["tokens_local"] > 0
    counts = ("tokens_kept", "tokens_global", "tokens_local", "tokens_corrected")
    assert {k: stats[k] for k in counts} == {k: by_budget.stats[0][k] for k in counts}
    assert torch.equal(by_keep.merged.inputs_embeds, by_budget.merged.inputs_embeds)


# --- HIVTP scores ----------------------------------------------------------------------------
def window_order(grid: tuple[int, int], side: int) -> list[int]:
    """Raster merged-token indices in the order the ViT's window attention visits them: windows of
    side x side tokens row by row (cut short at the bottom / right edge), raster order inside each."""
    h, w = grid
    out = []
    for r0 in range(0, h, side):
        for c0 in range(0, w, side):
            out += [r * w + c for r in range(r0, min(r0 + side, h)) for c in range(c0, min(c0 + side, w))]
    return out


def brute_force_scores(visual, pixel_values, grid_thw, layers, monkeypatch) -> list[torch.Tensor]:
    """From the model's own eager attention maps (every softmax the vision forward computes, recorded):
    per image [H, W] = mean over layers, heads, the image's patch rows and the token's 4 patches."""
    module = sys.modules[type(visual.blocks[0].attn).__module__]
    original = module.eager_attention_forward
    maps: dict[int, list[torch.Tensor]] = {}
    block_of = {id(b.attn): i for i, b in enumerate(visual.blocks)}

    def record(attn, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        out, weights = original(attn, query, key, value, attention_mask, scaling, dropout, **kwargs)
        maps.setdefault(block_of[id(attn)], []).append(weights[0].double())  # [heads, n, n] per chunk
        return out, weights

    monkeypatch.setattr(module, "eager_attention_forward", record)
    with attention_implementation(visual, "eager"):
        visual(pixel_values, grid_thw=grid_thw)
    monkeypatch.setattr(module, "eager_attention_forward", original)
    side = visual.window_size // visual.spatial_merge_size // visual.patch_size
    grids = [(int(h) // 2, int(w) // 2) for _, h, w in grid_thw.tolist()]
    per_layer = []
    for layer in layers:
        received = torch.cat([m.sum(dim=(0, 1)) for m in maps[layer]])  # [S] window order (chunks in order)
        scores, start = [], 0
        for grid in grids:
            n = grid[0] * grid[1]
            units = received[start : start + 4 * n].view(n, 4)  # this image's merged units, window order
            start += 4 * n
            raster = torch.empty(n, dtype=torch.float64)
            raster[torch.tensor(window_order(grid, side))] = units.mean(-1)
            scores.append(raster.view(grid) / (visual.config.num_heads * 4 * n))
        per_layer.append(scores)
    return [torch.stack([p[i] for p in per_layer]).mean(0) for i in range(len(grids))]


@pytest.mark.parametrize("layers", [(1,), (0, 1, 3), (2,)])  # full, window + full, window blocks
def test_scores_equal_brute_force_from_eager_attention(tiny_qwen, batch, layers, monkeypatch):
    model, _ = tiny_qwen
    inputs, _ = batch
    visual = model.model.visual
    tower = run_qwen_tower(visual, inputs["pixel_values"], inputs["image_grid_thw"], layers)
    expected = brute_force_scores(visual, inputs["pixel_values"], inputs["image_grid_thw"], layers, monkeypatch)
    for i, want in enumerate(expected):
        got = scores_from_tower(tower.subset([i]), layers)[0]
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-9)


def test_tower_hidden_states_are_the_models(tiny_qwen, batch):
    model, _ = tiny_qwen
    inputs, _ = batch
    visual = model.model.visual
    tower = run_qwen_tower(visual, inputs["pixel_values"], inputs["image_grid_thw"], (1,))
    own = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state  # window order
    ours = torch.cat(tower.extra["features"])  # raster order
    side = visual.window_size // 28
    offset, order = 0, []
    for grid in tower.grids:
        order += [offset + u for u in window_order(grid, side)]
        offset += grid[0] * grid[1]
    assert torch.equal(ours[torch.tensor(order)].reshape(own.shape), own)


def test_7b_shape_has_the_published_parameter_count():
    """Qwen/Qwen2.5-VL-7B-Instruct: 8.29B parameters (model card), 0.68B of them in the ViT + merger."""
    from hivtp.zoo import _model_class

    config = shape_config("qwen2.5-vl-7b")
    with torch.device("meta"):
        model = _model_class(config)(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e7) == 829
    assert round(sum(p.numel() for p in model.model.visual.parameters()) / 1e7) == 68


def test_default_score_layer_is_the_middle_full_attention_block(tiny_qwen):
    assert default_score_layer([7, 15, 23, 31]) == 15
    assert default_score_layer(shape_config("qwen2.5-vl-7b").vision_config.fullatt_block_indexes) == 15
    assert hivtp.attach(tiny_qwen[0], "hivtp").method.layers == (1,)
    assert hivtp.attach(tiny_qwen[0], "hivtp", layers=(0, 2)).method.layers == (0, 2)


def test_family_defaults_reach_a_method_object_and_only_the_parameters_they_mean(tiny_qwen, tiny_llava):
    """A method object gets the family's score layers as the same method named does (a copy: the
    caller's object is unchanged); pdrop's `layers` are LLM stage layers and keep their own default."""
    model = tiny_qwen[0]
    plain = HIVTP()
    assert hivtp.attach(model, plain).method.layers == hivtp.attach(model, "hivtp").method.layers == (1,)
    assert plain.layers == (6, 7, 8) and hivtp.attach(tiny_llava[0], plain).method.layers == (6, 7, 8)
    assert hivtp.attach(model, HIVTP(layers=(0, 2))).method.layers == (0, 2)
    pdrop = hivtp.attach(model, "pdrop").method
    assert pdrop.layers is None and pdrop.stage_layers(4) == [1, 2, 3]  # a quarter, half, three quarters
    # HiPrune's object layer: the published 8 is a window block on the 7B (past the tiny tower's 4 blocks);
    # the family's middle full-attention block instead, unless given
    assert hivtp.attach(model, "hiprune").method.object_layer == 1 and hivtp.attach(model, "hiprune", object_layer=0).method.object_layer == 0
    assert hivtp.attach(tiny_llava[0], "hiprune").method.object_layer == 8
    seven = build_model("qwen2.5-vl-7b", dtype=torch.float16, device="meta")
    assert hivtp.attach(seven, "hiprune", budget=64).method.object_layer == 15


def test_none_refuses_a_budget_on_every_family(tiny_llava, tiny_llava_next, tiny_qwen):
    """``none`` keeps every token: a budget (LLaVA, NeXT) or keep= (Qwen) is refused, never ignored."""
    for model in (tiny_llava[0], tiny_llava_next[0], tiny_qwen[0]):
        with pytest.raises(ConfigError, match="'none'; it takes no parameters"):
            hivtp.attach(model, "none", budget=64)
    with pytest.raises(ConfigError, match="'none' takes no budget"):
        hivtp.attach(tiny_qwen[0], "none", keep=0.5)


@pytest.mark.slow
def test_scores_equal_brute_force_at_the_7b_vision_shape(monkeypatch):
    """The real Qwen2.5-VL-7B ViT (32 blocks, 1280 wide, random weights) on a 196 x 252 px image."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    config = shape_config("qwen2.5-vl-7b").vision_config
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(config).eval()
    grid_thw = torch.tensor([[1, 14, 18]])  # 7 x 9 merged tokens: two windows by three, cut short
    pixel_values = torch.randn(14 * 18, 3 * 2 * 14 * 14)
    layers = (7, 15)
    tower = run_qwen_tower(visual, pixel_values, grid_thw, layers)
    expected = brute_force_scores(visual, pixel_values, grid_thw, layers, monkeypatch)[0]
    torch.testing.assert_close(scores_from_tower(tower, layers)[0].double(), expected, rtol=1e-4, atol=1e-9)


# --- M-RoPE positions ------------------------------------------------------------------------
def recorded_positions(model, call):
    """Position ids the language model receives on every call (prefill, then each decode step)."""
    seen = []

    def hook(_module, _args, kwargs):
        seen.append(kwargs["position_ids"].clone())

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("method,params", [("hivtp", {}), ("random", {"budget": 5}), ("pool", {})])
def test_kept_tokens_keep_their_unpruned_positions(tiny_qwen, batch, method, params):
    model, _ = tiny_qwen
    inputs, _ = batch
    full = recorded_positions(model, lambda: greedy(model, inputs, max_new_tokens=3))
    full_deltas = model.model.rope_deltas.clone()  # [B, 1], set by the model's own generate
    pruned = hivtp.attach(model, method, **params)
    cut = recorded_positions(model, lambda: greedy(pruned, inputs, max_new_tokens=3))
    # rope_deltas: next position - prompt length; the next position is the unpruned one, the prompt shorter
    shorter = torch.tensor([[s["tokens_total"] - s["tokens_kept"]] for s in pruned.last_stats])
    assert torch.equal(model.model.rope_deltas, full_deltas + shorter)
    images, _, _ = pruned.encode_images(inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    image_id = model.config.image_token_id
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    for b in range(ids.shape[0]):
        unpruned = full[0][1:, b][:, mask[b]]  # [3, n] t/h/w of the valid unpruned prompt
        is_image = ids[b][mask[b]] == image_id
        keep = ~is_image
        keep[is_image.nonzero().flatten()[images.positions[b]]] = True
        got = cut[0][1:, b][:, -int(keep.sum()) :]  # the pruned prompt is left padded
        assert torch.equal(got, unpruned[:, keep])
        for step_full, step_cut in zip(full[1:], cut[1:]):  # every decode step: the unpruned positions
            assert torch.equal(step_cut[1:, b], step_full[1:, b])
    assert len(cut) == len(full) == 3


def test_contiguous_positions_option(tiny_qwen, batch):
    model, _ = tiny_qwen
    inputs, _ = batch
    pruned = hivtp.attach(model, "hivtp", positions="contiguous")
    seen = recorded_positions(model, lambda: greedy(pruned, inputs, max_new_tokens=2))
    mask = inputs["attention_mask"]
    lengths = [s["tokens_kept"] - s["tokens_total"] + int(m.sum()) for s, m in zip(pruned.last_stats, mask)]
    for b, n in enumerate(lengths):
        assert torch.equal(seen[0][1:, b, -n:], torch.arange(n).expand(3, n))
        assert torch.equal(seen[1][1:, b], torch.full((3, 1), n))
    assert torch.equal(pruned.model.model.rope_deltas, torch.zeros(3, 1, dtype=torch.long))


def test_fastv_ranks_with_the_multimodal_rotary_attention(tiny_qwen, batch):
    """FastV's ranking row equals layer K's own eager attention (M-RoPE applied) of the last token."""
    model, _ = tiny_qwen
    inputs, _ = batch
    pruned = hivtp.attach(model, "fastv", budget=5, k_layer=2)
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    with attention_implementation(model, "eager"):
        out = model(**inputs, output_attentions=True)
    want = out.attentions[2][:, :, -1].float().mean(1)  # [B, L]
    torch.testing.assert_close(pruned.method.last_attention, want, rtol=1e-4, atol=1e-6)


# --- refusals before any model work -------------------------------------------------------------
@pytest.mark.parametrize(
    "method,params,match",
    [
        ("fastervlm", {}, "no \\[CLS\\] token"),
        ("visionzip", {"budget": 8}, "no \\[CLS\\] token"),
        ("hivtp", {"keep": 0.25, "budget": 8}, "not both"),
        ("fastv", {"keep": 0.25}, "acts in the LLM"),
        ("hivtp", {"keep": 1.5}, "keep must be a ratio"),
        ("hivtp", {"positions": "shifted"}, "positions="),
        ("hivtp", {"layers": (4,)}, "past the feature layer"),
        # keep= would reach these as budgets they ignore: none keeps everything, a kernel fixes pool's grid
        ("none", {"keep": 0.25}, "'none' takes no budget"),
        ("pool", {"keep": 0.25, "kernel": 2}, "kernel=2 keeps a fixed grid"),
    ],
)
def test_unsupported_combinations_fail_at_attach(tiny_qwen, method, params, match):
    with pytest.raises(ConfigError, match=match):
        hivtp.attach(tiny_qwen[0], method, **params)


def test_bad_inputs_fail_before_the_tower(tiny_qwen, batch, monkeypatch):
    model, _ = tiny_qwen
    inputs, _ = batch
    pruned = hivtp.attach(model, "hivtp")
    monkeypatch.setattr(Qwen2_5_VLAdapter, "run_tower", lambda *a: pytest.fail("the tower ran"))
    no_grid = {k: v for k, v in inputs.items() if k != "image_grid_thw"}
    with pytest.raises(InputMismatchError, match="image_grid_thw"):
        pruned.generate(**no_grid, max_new_tokens=1)
    video = {**inputs, "image_grid_thw": inputs["image_grid_thw"] * torch.tensor([2, 1, 1])}
    with pytest.raises(InputMismatchError, match="t > 1"):
        pruned.generate(**video, max_new_tokens=1)
    with pytest.raises(InputMismatchError, match="videos"):
        pruned.generate(**inputs, pixel_values_videos=inputs["pixel_values"], max_new_tokens=1)
    one_image_short = {**inputs, "pixel_values": inputs["pixel_values"][:-4]}
    with pytest.raises(InputMismatchError, match="pixel_values"):
        pruned.generate(**one_image_short, max_new_tokens=1)


def test_a_video_only_prompt_is_refused_not_run_unpruned(tiny_qwen, monkeypatch):
    """A prompt with a video and no image has no pixel_values: it must not take the text-only path
    (the unpruned model under a pruning method's name), in generate or in a forward."""
    model, processor = tiny_qwen
    frames = np.stack([np.array(make_image(i, (112, 112))) for i in range(4)])
    prompt = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n<|im_start|>assistant\n"
    inputs = dict(processor(videos=[frames], text=[prompt], return_tensors="pt"))
    assert "pixel_values" not in inputs and inputs["video_grid_thw"] is not None
    pruned = hivtp.attach(model, "hivtp", budget=4)
    monkeypatch.setattr(type(model), "generate", lambda *a, **k: pytest.fail("the model ran"))
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(InputMismatchError, match="videos are not pruned"):
        pruned.generate(**inputs, max_new_tokens=1)
    with pytest.raises(InputMismatchError, match="videos are not pruned"):
        pruned(**inputs)


# --- the uneven partition ----------------------------------------------------------------------
def reference_uneven(scores: torch.Tensor, regions: int, keep_ratio: float, window: int) -> torch.Tensor:
    """Loop-by-loop re-derivation of the documented rule on one [H, W] grid: bands at floor(i*H/n)."""
    h, w = scores.shape
    keep = torch.zeros(h, w, dtype=torch.bool)

    def bands(size):
        n = min(regions, size)
        cuts = [i * size // n for i in range(n)] + [size]
        return list(itertools.pairwise(cuts))

    for r0, r1 in bands(h):
        for c0, c1 in bands(w):
            cells = [(r, c) for r in range(r0, r1) for c in range(c0, c1)]
            k = int(len(cells) * keep_ratio + 1e-9)
            ranked = sorted(cells, key=lambda rc: (-float(scores[rc]), rc[0] * w + rc[1]))
            glob = set(ranked[:k])
            for rc in glob:
                keep[rc] = True
            for wr in range(r0, r1, window):
                for wc in range(c0, c1, window):
                    cand = [(r, c) for r in range(wr, min(wr + window, r1)) for c in range(wc, min(wc + window, c1))]
                    cand = [rc for rc in cand if rc not in glob]
                    if cand:
                        keep[min(cand, key=lambda rc: (-float(scores[rc]), rc[0] * w + rc[1]))] = True
    return keep.flatten()


@pytest.mark.parametrize("grid", [(5, 4), (7, 9), (6, 10), (1, 3), (2, 2), (13, 11), (8, 8), (12, 6)])
@pytest.mark.parametrize("regions,keep_ratio,window", [(2, 0.25, 2), (3, 0.4, 2), (2, 0.5, 3)])
def test_uneven_partition_matches_the_documented_rule(grid, regions, keep_ratio, window):
    torch.manual_seed(grid[0] * 31 + grid[1])
    scores = torch.randint(0, 5, (2, *grid)).float()  # many ties
    selection = select_masks(scores, regions, keep_ratio, window, uneven=True)
    for b in range(2):
        assert torch.equal(selection.keep_mask[b], reference_uneven(scores[b], regions, keep_ratio, window))


@pytest.mark.parametrize("grid", [(8, 8), (12, 6), (6, 12)])
def test_uneven_partition_is_the_strict_rule_where_the_geometry_divides(grid):
    scores = torch.randint(0, 4, (3, *grid)).float()
    window = 3 if grid != (8, 8) else 2
    strict = select_masks(scores, 2, 0.25, window)
    uneven = _select_masks_uneven(scores, 2, 0.25, window)  # the general path, on a grid it need not take
    assert torch.equal(strict.global_mask, uneven.global_mask) and torch.equal(strict.local_mask, uneven.local_mask)
    with pytest.raises(ConfigError, match="does not divide"):
        select_masks(torch.rand(1, 5, 4), 2, 0.25, 2)  # LLaVA's strict rule still refuses


# --- lmms-eval ---------------------------------------------------------------------------------
def test_lmms_plugin_builds_the_method_from_model_args(tiny_qwen_dir):
    pytest.importorskip("lmms_eval")
    from hivtp.lmms.qwen2_5_vl import HivtpQwen2_5_VL, split_qwen_args

    assert split_qwen_args({"max_pixels": 50176, "method": "hivtp", "keep": 0.25, "budget": "none"}) == (
        {"max_pixels": 50176}, {"method": "hivtp"}, {"keep": 0.25, "budget": None})
    lm = HivtpQwen2_5_VL(pretrained=str(tiny_qwen_dir), method="hivtp", keep=0.5, layers="0-1", device="cpu", device_map="cpu")
    assert lm.pruned.method.params()["layers"] == [0, 1] and lm.pruned.adapter.keep == 0.5
    assert lm.model.pruned is lm.pruned  # what the stock generate_until calls (it records last_stats)
    from hivtp.lmms.runner import plugin_model

    assert plugin_model("Qwen/Qwen2.5-VL-7B-Instruct") == "hivtp_qwen2_5_vl"
    assert plugin_model("llava-hf/llava-1.5-7b-hf") == "hivtp_llava"
    with pytest.raises(ConfigError, match="no \\[CLS\\] token"):
        HivtpQwen2_5_VL(pretrained=str(tiny_qwen_dir), method="fastervlm", device="cpu", device_map="cpu")


def test_lmms_plugin_loads_the_dtype_it_is_asked_for_and_auto_is_the_checkpoints_own(tiny_qwen_dir):
    """The stock loader hard-codes bfloat16: a float32 checkpoint answered in bfloat16 while the run config
    (and every row) said dtype auto, and any other dtype was refused as an unknown method parameter."""
    pytest.importorskip("lmms_eval")
    import lmms_eval.models.simple.qwen2_5_vl as stock
    import torch

    from hivtp.lmms.qwen2_5_vl import HivtpQwen2_5_VL

    loader = stock.Qwen2_5_VLForConditionalGeneration
    for dtype, expected in (("auto", torch.float32), ("bfloat16", torch.bfloat16)):
        extra = {} if dtype == "auto" else {"dtype": dtype}
        lm = HivtpQwen2_5_VL(pretrained=str(tiny_qwen_dir), device="cpu", device_map="cpu", **extra)
        assert next(lm.pruned.model.parameters()).dtype == expected, dtype
    assert stock.Qwen2_5_VLForConditionalGeneration is loader  # the stock module is left as it was
    with pytest.raises(ConfigError, match="dtype=float8"):
        HivtpQwen2_5_VL(pretrained=str(tiny_qwen_dir), device="cpu", device_map="cpu", dtype="float8")


def test_lmms_plugin_tells_each_generate_call_its_documents(tiny_qwen_dir, monkeypatch, tmp_path):
    """The stock ``generate_until`` calls ``model.generate`` without saying which documents it answers; the
    plugin tells each call (``sample_ids``: ``task/doc_id``), so ``random`` draws per document: four
    images of one grid keep four different sets, and batch 1 and batch 2 keep the same set per document
    (without the ids, every image of a grid kept the same positions, and the draw moved with the batch)."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from hivtp.lmms.qwen2_5_vl import HivtpQwen2_5_VL
    from hivtp.methods.random import RandomTokens

    kept: dict[str, list[int]] = {}
    select = RandomTokens.select

    def spy(self, crops):
        out = select(self, crops)
        assert len(crops.crop_keys) == crops.num_crops  # keys given, not the "#<index in batch>" fallback
        kept.update({key: p.tolist() for key, p in zip(crops.crop_keys, out.positions)})
        return out

    monkeypatch.setattr(RandomTokens, "select", spy)
    images = [make_image(seed, SQUARE) for seed in range(4)]
    to_messages = lambda image: [{"role": "user", "content": [{"type": "image", "url": image},
                                                              {"type": "text", "text": "What is in the picture?"}]}]
    gen = {"max_new_tokens": 2, "do_sample": False, "until": []}
    requests = [Instance("generate_until", ("", to_messages, gen, doc, "toy_task", "test"), idx=0,
                         metadata={"task": "toy_task", "doc_id": doc, "repeats": 1}) for doc in range(4)]
    lm = HivtpQwen2_5_VL(pretrained=str(tiny_qwen_dir), method="random", budget=8, device="cpu", device_map="cpu",
                         min_pixels=3136, max_pixels=50176, accounting_dir=str(tmp_path))
    lm.task_dict = {"toy_task": {"test": images}}
    by_batch = {}
    for batch_size in (1, 2):
        kept.clear()
        lm.batch_size_per_gpu = batch_size
        lm.generate_until(requests)
        by_batch[batch_size] = dict(kept)
    assert sorted(by_batch[1]) == [f"toy_task/{doc}/0/0" for doc in range(4)]
    assert by_batch[1] == by_batch[2]
    assert len({tuple(p) for p in by_batch[1].values()}) == 4 and all(len(p) == 8 for p in by_batch[1].values())


@pytest.mark.slow  # two lmms-eval subprocesses on 3 local GQA docs
def test_lmms_method_none_answers_equal_stock_qwen2_5_vl(tiny_qwen_dir, tmp_path):
    pytest.importorskip("lmms_eval")
    from eval.builders import build_gqa, save
    from hivtp.lmms.runner import read_answers, run_lmms_eval

    questions, images = build_gqa(6, seed=0)
    save(tmp_path / "data", {"gqa_instructions": questions, "gqa_images": images})
    args = f"pretrained={tiny_qwen_dir},device_map=cpu,min_pixels=3136,max_pixels=50176"  # --device cpu is the runner's
    run = lambda model, extra, out: run_lmms_eval(model, args + extra, ["hivtp_gqa"], tmp_path / out, limit=3,
                                                  device="cpu", data_dir=tmp_path / "data")
    run("qwen2_5_vl", "", "ref")
    run("hivtp_qwen2_5_vl", ",method=none,dtype=bfloat16", "none")  # the stock class always loads bfloat16
    expected, got = read_answers(tmp_path / "ref", "hivtp_gqa"), read_answers(tmp_path / "none", "hivtp_gqa")
    assert len(expected) == 3 and any(expected.values())
    assert got == expected
    # the accuracy runner picks this plugin for a Qwen checkpoint and records tokens kept per sample
    from hivtp.lmms.accounting import read_samples
    from hivtp.lmms.runner import plugin_model, run_accuracy

    assert plugin_model(str(tiny_qwen_dir)) == "hivtp_qwen2_5_vl"
    rows = run_accuracy(str(tiny_qwen_dir), "hivtp", {"keep": 0.25, "min_pixels": 3136, "max_pixels": 50176},
                        ["hivtp_gqa"], limit=3, batch_size=2, output_dir=tmp_path / "keep", data_dir=tmp_path / "data")
    samples = read_samples(tmp_path / "keep" / "accounting", "hivtp_gqa")
    assert sorted(int(s["doc_id"]) for s in samples) == [0, 1, 2]
    assert all(s["tokens_kept"] == max(1, s["tokens_total"] // 4) for s in samples)
    assert rows[0]["tokens_kept_mean"] == sum(s["tokens_kept"] for s in samples) / 3
    # each question's image is named (the bootstrap resamples images): the offline GQA asks one per image
    assert all(s["image"] for s in samples) and len({s["image"] for s in samples}) == 3


# --- latency -----------------------------------------------------------------------------------
def test_qwen_flops_match_the_flop_counter(tiny_qwen, batch):
    """Analytic ViT, scorer and merger FLOPs equal torch's flop counter on the tiny tower (mixed sizes)."""
    from torch.utils.flop_counter import FlopCounterMode

    from hivtp.latency.flops import qwen_merger_flops, qwen_scorer_flops, qwen_vision_flops

    model, _ = tiny_qwen
    inputs, _ = batch
    visual, grids = model.model.visual, inputs["image_grid_thw"].tolist()
    counted = {}
    for name, layers in (("vision", ()), ("scored", (0, 1))):
        with FlopCounterMode(display=False) as counter:  # eager: the counter sees every attention matmul
            tower = run_qwen_tower(visual, inputs["pixel_values"], inputs["image_grid_thw"], layers, eager=True)
        counted[name] = counter.get_total_flops()
    vc = model.config.vision_config
    assert counted["vision"] == qwen_vision_flops(vc, grids)
    assert counted["scored"] - counted["vision"] == qwen_scorer_flops(vc, grids, (0, 1))
    features = torch.cat(tower.extra["features"])[:10]
    with FlopCounterMode(display=False) as counter:
        visual.merger(features.reshape(-1, vc.hidden_size))
    assert counter.get_total_flops() == qwen_merger_flops(vc, 10)


def test_latency_cli_on_the_tiny_qwen(tmp_path):
    from hivtp.latency.__main__ import main

    out = tmp_path / "lat"
    assert main(["--model", "tiny-qwen2.5-vl", "--random-weights", "--methods", "none", "hivtp:keep=0.25",
                 "--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--image-size", "224", "300",
                 "--out", str(out), "--quiet"]) == 0
    text = (out / "summary.md").read_text()
    assert "Image: 224x308 px" in text and "tiny-qwen2.5-vl" in text
    import csv

    rows = list(csv.DictReader((out / "latency.csv").open()))
    kept = {r["params"]: float(r["tokens_kept"]) for r in rows if r["stage"] == "ttft"}
    assert kept == {"{}": 88.0, '{"keep": 0.25}': 22.0}  # 8 x 11 merged tokens, floor(88 / 4)


# --- configs -----------------------------------------------------------------------------------
def test_qwen_sweeps_attach_to_a_qwen(tiny_qwen):
    """Every job of the Qwen sweeps composes and its parameters attach to a Qwen2.5-VL (score layers
    beyond the tiny tower's 4 blocks are checked against the 7B's 32 by the sweep's own design)."""
    from test_configs import compose_, plain, sweep_jobs

    from hivtp.run import method_params

    sizes = {"keep_qwen": 4 * 3, "budgets_qwen": 6 * 3, "layers_qwen": 32 + 4}
    for sweep, size in sizes.items():
        jobs = sweep_jobs(sweep)
        assert len(jobs) == size
        for job in jobs:
            cfg = plain(compose_([f"+sweep={sweep}", *job]))
            assert cfg["model"]["family"] == "qwen2_5_vl"
            params = method_params(cfg)
            if "layers" in params:
                depth = shape_config("qwen2.5-vl-7b").vision_config.depth
                assert all(0 <= int(x) < depth for x in str(params.pop("layers")).split("-"))
            hivtp.attach(tiny_qwen[0], cfg["method"]["name"], **params)


@pytest.mark.parametrize("params", [{"kernel": 3}, {"budget": 3}, {"budget": 20}])
def test_pool_on_merged_grids_that_no_cell_tiles(tiny_qwen, batch, params):
    """pool on Qwen: f x f cells with cut-short edges, each the mean of its patches (loop re-derivation)."""
    model, _ = tiny_qwen
    inputs, _ = batch
    budget = params.get("budget")
    pruned = hivtp.attach(model, "pool", **params)
    layout = pruned.layout(inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"])
    tower = pruned.run_vision(layout)
    selection = pruned.select_tokens(tower, layout)
    for i, (h, w) in enumerate(merged_grids(inputs)):
        f = params.get("kernel") or min(range(1, max(h, w) + 1), key=lambda k: (abs(-(-h // k) * -(-w // k) - budget), k))
        grid = tower.extra["features"][i].view(h, w, -1)
        want, where = [], []
        for r0 in range(0, h, f):
            for c0 in range(0, w, f):
                want.append(grid[r0 : r0 + f, c0 : c0 + f].reshape(-1, grid.shape[-1]).mean(0))
                where.append((r0 + min((f - 1) // 2, min(h, r0 + f) - 1 - r0)) * w + c0 + min((f - 1) // 2, min(w, c0 + f) - 1 - c0))
        torch.testing.assert_close(selection.features[i], torch.stack(want))
        assert selection.positions[i].tolist() == where
    assert [s["tokens_kept"] for s in selection.stats] == [len(p) for p in selection.positions]
    assert pruned.generate(**inputs, max_new_tokens=1).shape[0] == 3

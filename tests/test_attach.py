"""hivtp.attach on LLaVA-1.5: exact identity when nothing is pruned, batching, stats, no side effects."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration

import hivtp
from hivtp.pruned import STAT_KEYS
from hivtp.zoo import build_model
from helpers import chat_prompt, greedy, llava_inputs, make_image

PROMPTS = ["What is in the picture?", "Is there a red circle in the image? Answer yes or no.", "Count the squares."]


@pytest.fixture(scope="module")
def batch(tiny_llava):
    _, processor = tiny_llava
    return llava_inputs(processor, seeds=[1, 2, 3], texts=PROMPTS)


@pytest.fixture(scope="module")
def reference(tiny_llava, batch):
    model, _ = tiny_llava
    return greedy(model, batch, max_new_tokens=8)


@pytest.mark.parametrize("method,params", [("none", {}), ("hivtp", {"keep_ratio": 1.0})])
def test_nothing_pruned_reproduces_unmodified_model_exactly(tiny_llava, batch, reference, method, params):
    model, _ = tiny_llava
    pruned = hivtp.attach(model, method, **params)
    out = greedy(pruned, batch, max_new_tokens=8)
    assert torch.equal(out, reference)
    assert [s["tokens_kept"] for s in pruned.last_stats] == [576, 576, 576]


def test_logits_match_unmodified_forward_when_nothing_pruned(tiny_llava, batch):
    model, _ = tiny_llava
    # The pruned forward numbers each sample's tokens from its first real one, as generate does
    # (padding 0); the unmodified model's forward defaults to 0..L-1 for every row, so pass them.
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(**batch, position_ids=positions).logits
    got = hivtp.attach(model, "none")(**batch).logits
    # Same left-padded layout (no pruning), so positions line up one to one.
    assert torch.equal(got, ref)


def test_hivtp_batch_equals_each_sample_alone(tiny_llava, batch):
    model, processor = tiny_llava
    pruned = hivtp.attach(model, "hivtp")
    together = greedy(pruned, batch, max_new_tokens=8)
    counts = [s["tokens_kept"] for s in pruned.last_stats]
    assert len(set(counts)) > 1, "the test needs samples with different kept counts"
    for i, text in enumerate(PROMPTS):
        alone_inputs = llava_inputs(processor, seeds=[i + 1], texts=[text])
        alone = greedy(pruned, alone_inputs, max_new_tokens=8)
        assert pruned.last_stats[0]["tokens_kept"] == counts[i]
        new_together = together[i, batch["input_ids"].shape[1] :]
        new_alone = alone[0, alone_inputs["input_ids"].shape[1] :]
        assert torch.equal(new_together, new_alone), i


def test_pruned_prompt_is_shorter_by_the_pruned_tokens(tiny_llava, batch):
    model, _ = tiny_llava
    pruned = hivtp.attach(model, "hivtp")
    prepared = pruned.prepare_inputs(**batch)
    lengths = prepared.merged.attention_mask.sum(-1).tolist()
    original = batch["attention_mask"].sum(-1).tolist()
    for length, orig, stats in zip(lengths, original, prepared.stats):
        assert length == orig - 576 + stats["tokens_kept"]
    # left padding: every row ends with real tokens
    assert prepared.merged.attention_mask[:, -1].all()


def test_last_stats_rows(tiny_llava, batch):
    model, _ = tiny_llava
    pruned = hivtp.attach(model, "hivtp")
    greedy(pruned, batch, max_new_tokens=2)
    assert len(pruned.last_stats) == 3
    for row in pruned.last_stats:
        assert set(STAT_KEYS) <= set(row)
        assert 252 <= row["tokens_kept"] <= 288
        assert row["tokens_global"] == 144
        assert row["tokens_kept"] == row["tokens_global"] + row["tokens_local"]
        assert row["tokens_corrected"] == 0 and row["select_ms"] > 0 and row["tokens_total"] == 576


def test_budget_mode_keeps_exactly_the_budget(tiny_llava, batch):
    model, _ = tiny_llava
    pruned = hivtp.attach(model, "hivtp", budget=128, keep_ratio=0.25, window=2)
    greedy(pruned, batch, max_new_tokens=2)
    assert [s["tokens_kept"] for s in pruned.last_stats] == [128, 128, 128]
    assert all(s["tokens_corrected"] > 0 for s in pruned.last_stats)


def test_selected_tokens_are_the_select_rule_on_the_importance_scores(tiny_llava, batch):
    """The engine's choice equals hivtp.select(hivtp.importance(...)) on the model's own tower."""
    model, _ = tiny_llava
    pruned = hivtp.attach(model, "hivtp")
    layout = pruned.layout(batch["pixel_values"])
    selection = pruned.select_tokens(pruned.run_vision(layout), layout)
    scores = hivtp.importance(model.model.vision_tower, batch["pixel_values"])
    expected = hivtp.select(scores)
    for got, want in zip(selection.positions, expected):
        assert torch.equal(got, want)


def test_eager_backend_runs_and_agrees_with_fast(tiny_llava, batch):
    model, _ = tiny_llava
    fast = hivtp.attach(model, "hivtp", backend="fast")
    eager = hivtp.attach(model, "hivtp", backend="eager")
    greedy(fast, batch, max_new_tokens=1)
    greedy(eager, batch, max_new_tokens=1)
    assert [s["tokens_kept"] for s in fast.last_stats] == [s["tokens_kept"] for s in eager.last_stats]
    assert model.config._attn_implementation == "sdpa"
    assert model.model.vision_tower.config._attn_implementation == "sdpa"


def test_wrapped_model_is_left_untouched(tiny_llava, batch, reference):
    model, _ = tiny_llava

    def hooks():  # transformers installs its own output-capturing hooks on first use; ours must not stay
        return {(n, k) for n, m in model.named_modules() for k in (*m._forward_hooks, *m._forward_pre_hooks)}

    greedy(model, batch, max_new_tokens=1)
    hooks_before = hooks()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method, params in [("hivtp", {}), ("hivtp", {"backend": "eager"}), ("none", {})]:
        greedy(hivtp.attach(model, method, **params), batch, max_new_tokens=2)
    assert hooks() == hooks_before
    assert type(model) is LlavaForConditionalGeneration
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(greedy(model, batch, max_new_tokens=8), reference)


def test_attribute_access_falls_through(tiny_llava):
    model, _ = tiny_llava
    pruned = hivtp.attach(model, "hivtp")
    assert pruned.config is model.config
    assert pruned.device == model.device
    assert "hivtp" in repr(pruned)


def test_text_only_prompt_passes_through(tiny_llava):
    model, processor = tiny_llava
    enc = processor.tokenizer(["Hello there"], return_tensors="pt")
    ref = model.generate(**enc, max_new_tokens=4, do_sample=False)
    pruned = hivtp.attach(model, "hivtp")
    assert torch.equal(pruned.generate(**enc, max_new_tokens=4, do_sample=False), ref)
    assert pruned.last_stats == []


def test_two_images_in_one_prompt(tiny_llava):
    model, processor = tiny_llava
    prompt = chat_prompt(processor, "Compare the two pictures.", images=2)
    inputs = dict(processor(images=[make_image(5), make_image(6)], text=[prompt], return_tensors="pt"))
    ref = greedy(model, inputs)
    none = hivtp.attach(model, "none")
    assert torch.equal(greedy(none, inputs), ref)
    pruned = hivtp.attach(model, "hivtp")
    greedy(pruned, inputs)
    assert pruned.last_stats[0]["images"] == 2 and pruned.last_stats[0]["tokens_total"] == 1152
    assert 2 * 252 <= pruned.last_stats[0]["tokens_kept"] <= 2 * 288


def test_return_dict_in_generate(tiny_llava, batch, reference):
    model, _ = tiny_llava
    out = hivtp.attach(model, "none").generate(**batch, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences, reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_paths_on_cpu(tiny_llava_dir, dtype):
    from transformers import AutoProcessor

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=dtype).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    inputs = llava_inputs(processor, seeds=[1, 2], texts=PROMPTS[:2])
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    try:
        ref = greedy(model, inputs)
    except RuntimeError as exc:
        pytest.xfail(f"{dtype} generation is not supported by this CPU build: {exc}")
    assert torch.equal(greedy(hivtp.attach(model, "none"), inputs), ref)
    pruned = hivtp.attach(model, "hivtp")
    out = greedy(pruned, inputs)
    assert out.shape == ref.shape
    assert all(252 <= s["tokens_kept"] <= 288 for s in pruned.last_stats)


@pytest.mark.slow
def test_real_shape_llava_1_5_7b_wiring():
    """The real LLaVA-1.5-7B shape (ViT-L/14-336, 4096-wide Vicuna), LLM cut to one layer to fit CPU
    time: nothing-pruned identity and HIVTP's token counts at the real geometry."""
    # float32: CPUs without native bf16 matmul take minutes at this shape (half precision is tested small)
    model = build_model("llava-1.5-7b", text_layers=1, dtype=torch.float32)
    text = torch.randint(5, 32000, (1, 40), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([torch.tensor([[1]]), text[:, :20], torch.full((1, 576), 32000), text[:, 20:]], dim=1)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(1, 3, 336, 336),
    }
    ref = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert torch.equal(hivtp.attach(model, "none").generate(**inputs, max_new_tokens=2, do_sample=False), ref)
    pruned = hivtp.attach(model, "hivtp")
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert 252 <= pruned.last_stats[0]["tokens_kept"] <= 288

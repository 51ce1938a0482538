"""The engine beyond plain greedy decoding (issue 21, items 3-5): beam search and several returned
sequences, forward positions in a left-padded batch, and image features placed on the embeddings'
device. References are the unmodified model or the same engine on each sample alone."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import hivtp
from hivtp.inputs import merge_image_tokens
from helpers import llava_inputs

PROMPTS = ["What is in the picture?", "Is there a red circle in the image? Answer yes or no.", "Count the squares."]
NOTHING_PRUNED = [("none", {}), ("hivtp", {"keep_ratio": 1.0})]
# Decoding modes whose output has several rows per prompt (transformers repeats each prompt n times).
EXPANDING = {
    "beams": {"num_beams": 2},
    "beams-2-returned": {"num_beams": 3, "num_return_sequences": 2},
    "sampling-2-returned": {"do_sample": True, "num_return_sequences": 2},
}


@pytest.fixture(scope="module")
def batch(tiny_llava):
    return llava_inputs(tiny_llava[1], seeds=[1, 2, 3], texts=PROMPTS)


def _generate(model, inputs, **kwargs):
    torch.manual_seed(0)  # sampling modes: the same draws for the model and the wrapper
    kwargs.setdefault("do_sample", False)
    return model.generate(**inputs, max_new_tokens=4, **kwargs)


# --- item 3: beams and num_return_sequences ---------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(EXPANDING))
@pytest.mark.parametrize("method,params", NOTHING_PRUNED)
def test_expanding_generation_matches_the_unmodified_model(tiny_llava, batch, method, params, mode):
    model, _ = tiny_llava
    reference = _generate(model, batch, **EXPANDING[mode])
    pruned = hivtp.attach(model, method, **params)
    got = _generate(pruned, batch, **EXPANDING[mode])
    # rows per prompt in the output (beams alone decode B * n rows but return one per prompt)
    assert reference.shape[0] == 3 * EXPANDING[mode].get("num_return_sequences", 1)
    assert torch.equal(got, reference)
    assert len(pruned.last_stats) == 3  # one row per sample, not per returned sequence


def test_expanding_generation_returns_the_dict_output_too(tiny_llava, batch):
    model, _ = tiny_llava
    kwargs = {"num_beams": 2, "num_return_sequences": 2, "return_dict_in_generate": True, "output_scores": True}
    reference = _generate(model, batch, **kwargs)
    got = _generate(hivtp.attach(model, "none"), batch, **kwargs)
    assert torch.equal(got.sequences, reference.sequences)
    torch.testing.assert_close(got.sequences_scores, reference.sequences_scores, rtol=0, atol=1e-5)


# In-LLM methods (FastV, PyramidDrop) drop tokens per batch row inside the decoder. The tiny LLM has two
# layers: stage layer 1 is the only one that drops anything.
IN_LLM = [("fastv", {"budget": 64, "k_layer": 1}), ("pdrop", {"layers": "1", "ratio": 0.25})]


@pytest.mark.parametrize("method,params", IN_LLM)
def test_in_llm_methods_with_returned_sequences_equal_a_repeated_batch(tiny_llava, batch, method, params):
    """n sampled sequences per prompt = the same sampling on a batch where each prompt is written n
    times: transformers draws one token per row either way, so with the same seed the rows agree only if
    every row of a sample dropped exactly the tokens that sample drops alone."""
    model, _ = tiny_llava
    pruned = hivtp.attach(model, method, **params)
    got = _generate(pruned, batch, do_sample=True, num_return_sequences=2)
    stats = pruned.last_stats
    repeated = {k: v.repeat_interleave(2, dim=0) for k, v in batch.items()}  # one image per prompt
    want = _generate(pruned, repeated, do_sample=True)
    assert got.shape[0] == 6 and torch.equal(got, want)
    assert [s["tokens_kept"] for s in stats] == [s["tokens_kept"] for s in pruned.last_stats[::2]]


@pytest.mark.parametrize("method,params", IN_LLM)
def test_in_llm_methods_beam_search_of_a_batch_equals_each_sample_alone(tiny_llava, batch, method, params):
    model, processor = tiny_llava
    pruned = hivtp.attach(model, method, **params)
    kwargs = {"num_beams": 2, "num_return_sequences": 2}
    together = _generate(pruned, batch, **kwargs)
    kept = [s["tokens_llm_dropped"] for s in pruned.last_stats]
    assert all(k > 0 for k in kept)  # tokens really were dropped
    length = batch["input_ids"].shape[1]
    for i in range(3):
        one = llava_inputs(processor, seeds=[i + 1], texts=[PROMPTS[i]])
        alone = _generate(pruned, one, **kwargs)
        assert torch.equal(alone[:, one["input_ids"].shape[1] :], together[2 * i : 2 * i + 2, length:]), i
        assert pruned.last_stats[0]["tokens_llm_dropped"] == kept[i]


# --- item 4: forward positions --------------------------------------------------------------------
def _decoder_positions(pruned, call) -> list:
    """The position_ids the decoder receives on each call made by ``call()``."""
    seen = []
    decoder = pruned.model.model.language_model
    handle = decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("position_ids")), with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("method,params", [("none", {}), ("hivtp", {}), ("fastv", {"budget": 64, "k_layer": 1})])
def test_forward_positions_are_generates_positions(tiny_llava, batch, method, params):
    """Left padding must not shift a sample's positions: in the forward, as in generate's prefill (and
    the timed prefill), each sample's real tokens are numbered from 0."""
    pruned = hivtp.attach(tiny_llava[0], method, **params)
    (forward,) = _decoder_positions(pruned, lambda: pruned(**batch))
    prefill = _decoder_positions(pruned, lambda: pruned.generate(**batch, max_new_tokens=2, do_sample=False))[0]
    mask = pruned.prepare_inputs(**batch).merged.attention_mask.bool()  # [B, L'] the pruned, re-padded prompt
    assert forward is not None and torch.equal(forward, prefill)
    assert not mask.all(), "the test needs a left-padded batch"
    for row, valid in zip(forward, mask):
        assert torch.equal(row[valid], torch.arange(int(valid.sum())))


@pytest.mark.parametrize("method,params", [("none", {}), ("hivtp", {}), ("fastv", {"budget": 64, "k_layer": 1})])
def test_forward_logits_of_a_padded_batch_equal_each_sample_alone(tiny_llava, batch, method, params):
    """Each sample's logits over its own tokens do not depend on the left padding of its batch (float
    rounding aside: batched and single kernels sum in another order). Note: Llama's rotary attention
    depends only on relative positions, so shifted positions alone move fp32 logits by rounding only;
    the positions themselves are checked in the test above."""
    model, processor = tiny_llava
    pruned = hivtp.attach(model, method, **params)
    together = pruned(**batch).logits
    for i in range(3):
        one = llava_inputs(processor, seeds=[i + 1], texts=[PROMPTS[i]])
        alone = pruned(**one).logits[0]  # [L_i', V]: the pruned prompt of sample i, unpadded
        torch.testing.assert_close(together[i, -alone.shape[0] :], alone, rtol=0, atol=1e-5)


def test_forward_refuses_position_ids_of_the_unpruned_sequence(tiny_llava, batch):
    pruned = hivtp.attach(tiny_llava[0], "hivtp")
    with pytest.raises(hivtp.InputMismatchError, match="position_ids.*positions move"):
        pruned(**batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])


def test_forward_refuses_right_padding_that_would_shift_its_logits_and_generate_takes_it(tiny_llava, batch):
    """The pruned sequence is re-padded on the left: with a right-padded batch the promised
    ``logits[:, -k:]`` would be pads' positions (the audit found a shifted loss and no error). The same
    batch padded on the right generates what the left-padded one does."""
    mask = batch["attention_mask"]
    assert not mask.all(), "the test needs a padded batch"
    shift = (mask == 0).sum(1)  # [B] each row's left pads, moved to its right end
    right = {**batch, **{k: torch.stack([row.roll(-int(n)) for row, n in zip(batch[k], shift)])
                         for k in ("input_ids", "attention_mask")}}
    pruned = hivtp.attach(tiny_llava[0], "hivtp", budget=64)
    with pytest.raises(hivtp.InputMismatchError, match="left-padded.*padding_side = 'left'"):
        pruned(**right)
    pruned(**batch)  # left padding: accepted
    new = batch["input_ids"].shape[1]
    left_out = pruned.generate(**batch, max_new_tokens=3, do_sample=False)[:, new:]
    right_out = pruned.generate(**right, max_new_tokens=3, do_sample=False)[:, new:]
    assert torch.equal(left_out, right_out)


# --- item 5: image features on the embeddings' device -----------------------------------------------
class _Traced(torch.Tensor):
    """A tensor that records the devices it is explicitly moved to (``.to(device, ...)``); the
    subclass survives ``torch.cat``."""

    moves: ClassVar[list[torch.device]] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            for arg in (*args[1:], *kwargs.values()):
                if isinstance(arg, (torch.device, str)):
                    cls.moves.append(torch.device(arg))
                elif isinstance(arg, torch.Tensor):  # .to(other): other's device
                    cls.moves.append(arg.device)
        return super().__torch_function__(func, types, args, kwargs)


def test_merge_moves_image_features_to_the_embeddings_device(tiny_llava, batch):
    """transformers' LLaVA moves image features to ``inputs_embeds.device`` (a device_map can put the
    tower and the embeddings apart). CPU has one device, so the move itself is traced."""
    model, _ = tiny_llava
    pruned = hivtp.attach(model, "none")
    images, layout, _ = pruned.encode_images(batch["pixel_values"])
    embed = model.get_input_embeddings()
    traced = [f.as_subclass(_Traced) for f in images.features]
    _Traced.moves = []
    merged = merge_image_tokens(
        batch["input_ids"], batch["attention_mask"], traced, layout.tokens_per_image, [[0], [1], [2]],
        model.config.image_token_id, pruned.adapter.pad_token_id, embed,
    )
    assert embed.weight.device in _Traced.moves
    reference = pruned.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"]).merged
    assert torch.equal(torch.Tensor(merged.inputs_embeds), reference.inputs_embeds)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to place the tower apart from the embeddings")
def test_tower_on_the_gpu_and_language_model_on_the_cpu(tiny_llava_dir):
    """A device_map-like placement: vision tower and projector on cuda, embeddings and LLM on cpu. The
    features land on the embeddings' device; they equal the all-CPU ones up to kernel rounding."""
    from hivtp.zoo import load_pretrained

    model, processor = load_pretrained(str(tiny_llava_dir))
    inputs = llava_inputs(processor, seeds=[1, 2], texts=PROMPTS[:2])
    reference = hivtp.attach(model, "none").prepare_inputs(**inputs).merged.inputs_embeds
    model.model.vision_tower.to("cuda")
    model.model.multi_modal_projector.to("cuda")
    pruned = hivtp.attach(model, "none")
    merged = pruned.prepare_inputs(**inputs).merged
    assert merged.inputs_embeds.device.type == "cpu"
    torch.testing.assert_close(merged.inputs_embeds, reference, rtol=1e-4, atol=1e-4)
    out = _generate(pruned, inputs)
    assert out.shape[0] == 2 and torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def _family_inputs(family, processor, seeds, sizes):
    if family == "qwen":
        from test_qwen import qwen_inputs

        return qwen_inputs(processor, seeds, sizes)
    return llava_inputs(processor, seeds, texts=[PROMPTS[s % 3] for s in seeds], sizes=sizes)


#: LLaVA-NeXT (tiles of several shapes) and Qwen2.5-VL (dynamic resolution): image sizes per sample
FAMILY_SIZES = {"next": [(336, 336), (500, 280), (200, 420)], "qwen": [(224, 224), (300, 170), (115, 145)]}


@pytest.mark.parametrize("family", sorted(FAMILY_SIZES))
@pytest.mark.parametrize("method,params", IN_LLM)
def test_in_llm_beam_search_equals_each_sample_alone_on_next_and_qwen(request, family, method, params):
    """The same check on the families whose image token counts differ per sample (NeXT's unpadded tiles,
    Qwen's resolutions): each row of a left-padded batch decodes its beams as that sample alone."""
    model, processor = request.getfixturevalue("tiny_llava_next" if family == "next" else "tiny_qwen")
    sizes = FAMILY_SIZES[family]
    batch = _family_inputs(family, processor, [0, 1, 2], sizes)
    if family == "qwen" and "budget" in params:
        params = {**params, "budget": 7}  # the smallest tiny-Qwen image has 20 merged tokens
    pruned = hivtp.attach(model, method, **params)
    kwargs = {"num_beams": 2, "num_return_sequences": 2}
    together = _generate(pruned, batch, **kwargs)
    dropped = [s["tokens_llm_dropped"] for s in pruned.last_stats]
    assert all(d > 0 for d in dropped) and len({s["tokens_total"] for s in pruned.last_stats}) > 1
    length = batch["input_ids"].shape[1]
    for i in range(3):
        one = _family_inputs(family, processor, [i], sizes[i : i + 1])
        alone = _generate(pruned, one, **kwargs)
        assert torch.equal(alone[:, one["input_ids"].shape[1] :], together[2 * i : 2 * i + 2, length:]), i
        assert pruned.last_stats[0]["tokens_llm_dropped"] == dropped[i]

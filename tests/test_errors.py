"""Bad input gets a clear error that says what to do (one test each)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hivtp
from hivtp.errors import ConfigError, InputMismatchError, UnknownMethodError, UnsupportedModelError
from helpers import llava_inputs


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"regions": 5}, "regions=5 does not divide"),
        ({"regions": 2, "window": 5}, "window=5 does not tile"),
        ({"regions": 0}, "positive integer"),
        ({"window": 2.5}, "positive integer"),
    ],
)
def test_invalid_geometry(tiny_llava, params, needle):
    model, _ = tiny_llava
    with pytest.raises(ConfigError, match=needle):
        hivtp.attach(model, "hivtp", **params)


@pytest.mark.parametrize("keep_ratio", [0, 0.0, -0.1, 1.5, "half"])
def test_keep_ratio_outside_unit_interval(keep_ratio):
    with pytest.raises(ConfigError, match=r"keep_ratio must be a number in \(0, 1\]"):
        hivtp.select(torch.rand(1, 24, 24), keep_ratio=keep_ratio)
    with pytest.raises(ConfigError, match="keep_ratio"):
        hivtp.build_method("hivtp", keep_ratio=keep_ratio)


def test_unknown_method(tiny_llava):
    model, _ = tiny_llava
    with pytest.raises(UnknownMethodError, match="unknown method 'tome'.*available methods: .*hivtp"):
        hivtp.attach(model, "tome")


def test_unknown_parameter(tiny_llava):
    model, _ = tiny_llava
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['keep_rate'\] for method 'hivtp'.*keep_ratio"):
        hivtp.attach(model, "hivtp", keep_rate=0.3)


def test_score_layer_past_feature_layer(tiny_llava):
    model, _ = tiny_llava
    with pytest.raises(ConfigError, match=r"score layer\(s\) \[23\] lie past the feature layer.*<= 22"):
        hivtp.attach(model, "hivtp", layers=(6, 23))


def test_score_layer_out_of_range_for_importance():
    from test_importance import pixels, small_clip

    with pytest.raises(ConfigError, match="out of range"):
        hivtp.importance(small_clip(), pixels(1), layers=(30,))


@pytest.mark.parametrize("layers", [(), "", "six-seven"])
def test_empty_or_unreadable_layers(layers):
    with pytest.raises(ConfigError, match="score layers"):
        hivtp.build_method("hivtp", layers=layers)


def test_model_that_is_not_llava():
    tiny_llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM is not supported.*LlavaForConditionalGeneration"):
        hivtp.attach(tiny_llama, "hivtp")


def test_image_token_count_does_not_match_images(tiny_llava):
    model, processor = tiny_llava
    inputs = llava_inputs(processor, seeds=[1])
    ids = inputs["input_ids"]
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[(ids[0] == model.config.image_token_id).nonzero()[:10, 0]] = False  # drop 10 placeholders
    inputs["input_ids"] = ids[:, keep]
    inputs["attention_mask"] = inputs["attention_mask"][:, keep]
    with pytest.raises(InputMismatchError, match="sample 0 has 566 image tokens, but the images given for it need 576"):
        hivtp.attach(model, "hivtp").generate(**inputs, max_new_tokens=1)


def test_more_images_than_placeholders(tiny_llava):
    model, processor = tiny_llava
    inputs = llava_inputs(processor, seeds=[1])
    inputs["pixel_values"] = torch.cat([inputs["pixel_values"]] * 2)
    with pytest.raises(InputMismatchError, match="2 images were given but the prompts have placeholders for only 1"):
        hivtp.attach(model, "hivtp").generate(**inputs, max_new_tokens=1)


def test_non_finite_scores():
    scores = torch.rand(1, 24, 24)
    scores[0, 3, 3] = float("nan")
    with pytest.raises(ConfigError, match="NaN or inf"):
        hivtp.select(scores)


def test_budget_larger_than_the_grid():
    with pytest.raises(ConfigError, match=r"budget must be an integer in \[1, 576\]"):
        hivtp.select(torch.rand(1, 24, 24), budget=600)


def test_unknown_scoring_backend():
    with pytest.raises(ConfigError, match="unknown scoring backend 'flash'"):
        hivtp.build_method("hivtp", backend="flash")


def test_attaching_twice(tiny_llava):
    model, _ = tiny_llava
    with pytest.raises(ConfigError, match="already has a method attached"):
        hivtp.attach(hivtp.attach(model, "hivtp"), "hivtp")


# --- the engine (issue 21, item 11) ---------------------------------------------------------------
def test_empty_batch(tiny_llava):
    model, processor = tiny_llava
    inputs = llava_inputs(processor, seeds=[1])
    empty = {k: v[:0] for k, v in inputs.items()}
    with pytest.raises(InputMismatchError, match="non-empty batch.*at least one prompt"):
        hivtp.attach(model, "hivtp").generate(**empty, max_new_tokens=1)
    with pytest.raises(InputMismatchError, match="pixel_values holds no images"):
        hivtp.attach(model, "hivtp").encode_images(empty["pixel_values"])


@pytest.mark.parametrize("method", ["hivtp", "none"])
def test_non_finite_pixel_values_are_blamed_on_pixel_values(tiny_llava, method):
    model, processor = tiny_llava
    inputs = llava_inputs(processor, seeds=[1])
    inputs["pixel_values"][0, 0, 5, 5] = float("nan")
    with pytest.raises(InputMismatchError, match="pixel_values contain NaN or inf") as raised:
        hivtp.attach(model, method).generate(**inputs, max_new_tokens=1)
    assert "scores" not in str(raised.value)


@pytest.mark.parametrize("method", ["pdrop", "fastv"])
def test_in_llm_budget_larger_than_the_grid(tiny_llava, method):
    model, processor = tiny_llava
    pruned = hivtp.attach(model, method, budget=600, **({"k_layer": 1} if method == "fastv" else {}))
    with pytest.raises(ConfigError, match=f"{method}: budget=600 .* more than sample 0 has: 576 image token"):
        pruned.generate(**llava_inputs(processor, seeds=[1]), max_new_tokens=1)


def test_pdrop_budget_below_what_its_stages_can_reach(tiny_llava):
    """The 2-layer tiny LLM, one stage at layer 1: layer 0 sees all 576 tokens, so the mean per layer
    is at least 288."""
    model, processor = tiny_llava
    pruned = hivtp.attach(model, "pdrop", budget=200, layers="1")
    with pytest.raises(ConfigError, match="cannot be reached by sample 0.*at least 288"):
        pruned.generate(**llava_inputs(processor, seeds=[1]), max_new_tokens=1)


def test_next_budget_larger_than_the_image(tiny_llava_next):
    model, processor = tiny_llava_next
    inputs = llava_inputs(processor, seeds=[1], sizes=[(336, 672)])  # 3 crops of 576: 1728 visual tokens
    with pytest.raises(ConfigError, match="budget=100000 is larger than image 0's 1728 visual tokens"):
        hivtp.attach(model, "hivtp", budget=100000).generate(**inputs, max_new_tokens=1)

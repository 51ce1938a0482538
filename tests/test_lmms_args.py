"""``--model_args`` of the lmms-eval plugins (:mod:`hivtp.lmms.args`).

The word ``none`` means "not set" only for parameters whose default is None: LLaVA-NeXT's
``newline=none`` is a policy and must reach ``hivtp.attach`` as the string, from lmms-eval's model_args
and from a Hydra run alike. Loader arguments the plugins accept from the stock classes but never read
(``chat_template``, video frame counts, Qwen's simple-class prompt options) are refused, not ignored.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from lmms_eval.utils import simple_parse_args_string

import hivtp
from hivtp.errors import ConfigError
from hivtp.lmms.args import split_model_args
from hivtp.lmms.qwen2_5_vl import split_qwen_args
from hivtp.lmms.runner import model_args_string
from hivtp.methods import METHODS
from hivtp.run import method_params

from helpers import llava_inputs

ODD_WIDE = (640, 400)  # (width, height): a LLaVA-NeXT image whose canvas is unpadded, with newline tokens


def _params(model_args: str, split=split_model_args) -> dict:
    """The method + adapter params the plugin gets from a ``--model_args`` string, parsed as lmms-eval does."""
    return split(simple_parse_args_string(model_args))[2]


# --- none: "not set" or a value ---------------------------------------------------------------------
def test_newline_none_stays_a_policy_while_budget_none_means_unset():
    params = _params("method=hivtp,budget=none,regions=null,window=,newline=none")
    assert params == {"budget": None, "regions": None, "window": None, "newline": "none"}
    assert _params("method=hivtp,newline=NONE")["newline"] == "NONE"  # the adapter names the word it refuses


@pytest.mark.parametrize("name", sorted(METHODS))
def test_none_means_unset_for_every_parameter_that_defaults_to_none(name):
    defaults = {k: p.default for k, p in inspect.signature(METHODS[name].__init__).parameters.items() if k != "self"}
    unset = sorted(k for k, d in defaults.items() if d is None)
    params = split_model_args({"method": name, **{k: "none" for k in unset}, "newline": "none"})[2]
    assert params == {**{k: None for k in unset}, "newline": "none"}


def test_qwen_none_is_unset_for_keep_but_a_word_for_positions_and_layers():
    params = _params("method=hivtp,keep=none,positions=none,layers=none", split_qwen_args)
    assert params == {"keep": None, "positions": "none", "layers": "none"}
    with pytest.raises(ConfigError, match="'none'"):  # no "not set" there: the method's error names the word
        hivtp.build_method("hivtp", layers=params["layers"])


def test_newline_none_from_model_args_prunes_without_newline_tokens(tiny_llava_next_dir):
    from hivtp.lmms.model import HivtpLlava

    lm = HivtpLlava(**simple_parse_args_string(f"pretrained={tiny_llava_next_dir},device=cpu,method=hivtp,newline=none"))
    assert lm.pruned.adapter.newline == "none"
    inputs = llava_inputs(lm._image_processor, [7], sizes=[ODD_WIDE])
    none, _, _ = lm.pruned.encode_images(inputs["pixel_values"], inputs["image_sizes"])
    row, _, _ = hivtp.attach(lm.model, "hivtp").encode_images(inputs["pixel_values"], inputs["image_sizes"])
    is_newline = (row.features[0] == lm.model.model.image_newline).all(-1)
    assert int(is_newline.sum()) == row.stats[0]["tokens_newline"] > 0  # the default keeps some
    assert none.stats[0]["tokens_newline"] == 0
    torch.testing.assert_close(none.features[0], row.features[0][~is_newline], rtol=0, atol=0)


def test_hydra_newline_none_reaches_the_plugin_as_the_word(tmp_path):
    # a Hydra run (+method.params.newline=none) -> run.method_params -> runner's model_args -> the plugin
    cfg = {"method": {"name": "hivtp", "params": {"budget": 160, "regions": None, "newline": "none"}}}
    model_args = model_args_string("tiny-llava-next", "hivtp", method_params(cfg), tmp_path / "accounting")
    assert _params(model_args) == {"budget": 160, "newline": "none"}


# --- arguments the plugins would not read ------------------------------------------------------------
@pytest.mark.parametrize("key, value, says", [
    ("chat_template", "{{ messages }}", "checkpoint's own chat template"),
    ("max_frames_num", 8, "image tasks only"),
])
def test_llava_refuses_loader_args_it_never_reads(key, value, says):
    with pytest.raises(ConfigError, match=f"{key}=.*{says}"):
        split_model_args({"method": "hivtp", key: value})


def test_llava_plugin_refuses_chat_template_before_loading_and_keeps_what_it_reads():
    from hivtp.lmms.model import HivtpLlava

    with pytest.raises(ConfigError, match="chat_template="):
        HivtpLlava(pretrained="no-such-checkpoint", chat_template="{{ messages }}", device="cpu")
    read = {"device": "cpu", "dtype": "float32", "use_cache": False, "attn_implementation": "eager"}
    assert split_model_args(read)[0] == read
    read = {"device": "cpu", "device_map": "cpu", "min_pixels": 3136, "max_pixels": 12544}
    assert split_qwen_args(read)[0] == read


@pytest.mark.parametrize("key, value", [
    ("system_prompt", "Answer briefly."), ("reasoning_prompt", "Think."), ("interleave_visuals", True),
    ("max_num_frames", 8), ("fps", 2.0),
])
def test_qwen_refuses_loader_args_its_chat_path_never_reads(key, value):
    with pytest.raises(ConfigError, match=f"model_args {key}= is not supported: hivtp_qwen2_5_vl"):
        split_qwen_args({"method": "hivtp", key: value})


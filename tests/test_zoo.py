"""Shipped shapes, offline checkpoints and the tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from hivtp.errors import ConfigError, MissingArtifactError
from hivtp.zoo import (
    available_shapes,
    build_processor,
    build_tokenizer,
    resolve_checkpoint,
    shape_config,
    shape_spec,
    trained_dir,
)


def meta_model(name, **kw):
    from hivtp.zoo import _model_class

    config = shape_config(name, **kw)
    with torch.device("meta"):
        return _model_class(config)(config)


def test_llava_1_5_7b_shape_has_the_published_parameter_count():
    # llava-hf/llava-1.5-7b-hf: 7,063,427,072 parameters (CLIP ViT-L/14-336 303.5M, projector 21.0M,
    # Vicuna-7B with a 32064-token vocabulary 6.74B).
    model = meta_model("llava-1.5-7b")
    assert sum(p.numel() for p in model.parameters()) == 7_063_427_072
    vc = model.config.vision_config
    assert (vc.image_size // vc.patch_size) ** 2 == 576 and vc.num_hidden_layers == 24
    assert model.config.vision_feature_layer == -2


def test_text_layers_override_cuts_only_the_llm():
    full, cut = shape_config("llava-1.5-7b"), shape_config("llava-1.5-7b", text_layers=1)
    assert cut.text_config.num_hidden_layers == 1 and full.text_config.num_hidden_layers == 32
    assert cut.vision_config.to_dict() == full.vision_config.to_dict()


def test_tiny_shape_keeps_the_real_vision_geometry():
    tiny, real = shape_config("tiny-llava").vision_config, shape_config("llava-1.5-7b").vision_config
    for key in ("image_size", "patch_size", "num_hidden_layers"):
        assert getattr(tiny, key) == getattr(real, key)


def test_checkpoint_round_trip(tiny_llava_dir, tiny_llava):
    from transformers import LlavaForConditionalGeneration

    stamp = json.loads((tiny_llava_dir / "hivtp_build.json").read_text())
    assert stamp == {"shape": "tiny-llava", "seed": 0, "dtype": "float32", "weights": "random"}
    assert (tiny_llava_dir / "model.safetensors").is_file()
    model, processor = tiny_llava
    again = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def test_load_pretrained_picks_the_class_from_the_config(tiny_llava, tiny_llava_next):
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    for (model, processor), cls in ((tiny_llava, LlavaForConditionalGeneration), (tiny_llava_next, LlavaNextForConditionalGeneration)):
        assert type(model) is cls and not model.training
        assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id


def test_processor_expands_image_to_576_tokens(tiny_llava):
    model, processor = tiny_llava
    from helpers import llava_inputs

    inputs = llava_inputs(processor, seeds=[0])
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 576
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)


def test_tokenizer_round_trips_text():
    tok = build_tokenizer()
    text = "Is there a small red circle to the left of the star? Answer yes or no."
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < 25  # BPE merges make the benchmark vocabulary compact


def test_unknown_shape_and_missing_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown model shape 'llava-13b'"):
        shape_spec("llava-13b")
    monkeypatch.setenv("HIVTP_ARTIFACTS", str(tmp_path))
    with pytest.raises(MissingArtifactError, match="Run `make models`"):
        resolve_checkpoint("tiny-llava")
    assert resolve_checkpoint("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"


def test_real_shape_has_no_offline_processor():
    with pytest.raises(ConfigError, match="no shipped tokenizer"):
        build_processor("llava-1.5-7b")


def test_every_shape_builds_on_meta():
    for name in available_shapes():
        model = meta_model(name)
        if model.config.model_type != "qwen2_5_vl":  # Qwen's ViT has no CLS to select away
            assert model.config.vision_feature_select_strategy == "default"


def test_missing_folder_or_misspelt_shape_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "artifacts").mkdir()
    for wrong in ("tiny-lava", str(tmp_path / "no-such-checkpoint"), "./checkpoints/llava", "artifacts/models"):
        with pytest.raises(MissingArtifactError, match="no such folder") as err:
            resolve_checkpoint(wrong)
        assert all(name in str(err.value) for name in available_shapes())  # lists what exists
    with pytest.raises(MissingArtifactError, match="Did you mean 'tiny-llava'"):
        resolve_checkpoint("tiny-lava")
    # real hub ids still pass through, to from_pretrained
    assert resolve_checkpoint("llava-hf/llava-v1.6-mistral-7b-hf") == "llava-hf/llava-v1.6-mistral-7b-hf"


def _copy_checkpoint(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_weights_name_the_file_and_a_fix(tiny_llava_dir, tmp_path):
    from hivtp.latency.inputs import load_model
    from hivtp.zoo import load_pretrained

    folder = _copy_checkpoint(tiny_llava_dir, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # an interrupted copy
    for load in (lambda: load_pretrained(str(folder)),
                 lambda: load_model(str(folder), False, torch.float32, "sdpa", torch.device("cpu"))):
        with pytest.raises(MissingArtifactError, match="model.safetensors is damaged: .*cut short.*copy the checkpoint"):
            load()
    weights.write_bytes(data[:5])  # not even a header
    with pytest.raises(MissingArtifactError, match="too few for a safetensors header"):
        resolve_checkpoint(str(folder))


def test_local_config_gives_the_adapters_vision_geometry_without_loading():
    """What a method's check gets from the adapter of the loaded model, read from the config alone."""
    from hivtp.adapters import adapter_for
    from hivtp.zoo import local_config, vision_geometry

    for name in available_shapes():
        if shape_config(name).model_type == "qwen2_5_vl":
            continue  # Qwen's grids vary per image: its methods are checked when attached (run.check_method)
        adapter = adapter_for(meta_model(name))
        expected = (adapter.grid, adapter.num_layers, adapter.feature_attention_layer)
        assert vision_geometry(local_config(name)) == expected, name
        hub_id = shape_spec(name)["hub_id"]
        if hub_id:  # a hub id that a shipped shape copies is read from that shape
            assert vision_geometry(local_config(hub_id)) == expected
    # the shipped trained toy (its own config.json) has the toy shape's 12-layer encoder
    assert vision_geometry(local_config("toy-llava")) == vision_geometry(local_config(str(trained_dir("toy-llava"))))
    assert vision_geometry(local_config("toy-llava"))[1] == shape_config("toy-llava").vision_config.num_hidden_layers
    assert local_config("someone/other-model") is None


def test_a_checkpoint_of_bin_weights_has_a_weights_digest_that_follows_them(tmp_path):
    """transformers reads ``pytorch_model.bin`` where a checkpoint has no safetensors: its digest is the
    .bin's, so that retrained .bin weights at the same path are a new measurement, not a finished run."""
    import shutil

    from safetensors.torch import load_file

    from hivtp.zoo import local_weights_digest, weights_digest

    folder = tmp_path / "bin"
    shutil.copytree(trained_dir("toy-llava"), folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    first = local_weights_digest(str(folder))
    assert first is not None and first == weights_digest(str(folder))
    name = next(iter(state))
    state[name] = state[name] + 1
    torch.save(state, folder / "pytorch_model.bin")
    assert local_weights_digest(str(folder)) not in (None, first)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(MissingArtifactError, match="no .safetensors or .bin weights"):
        weights_digest(str(folder))


def test_checkpoint_files_digest_follows_what_changes_answers_and_not_the_weights(tmp_path):
    """The non-weight files of a checkpoint (config, processor, tokenizer, chat template) have their own
    digest; the weights' digest (recorded in results rows and calibration files) is untouched by them."""
    import shutil

    from hivtp.zoo import checkpoint_files, local_checkpoint_files_digest, local_weights_digest

    folder = tmp_path / "toy"
    shutil.copytree(trained_dir("toy-llava"), folder)
    assert checkpoint_files(folder) == ["chat_template.jinja", "config.json", "generation_config.json",
                                        "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    files, weights = local_checkpoint_files_digest(str(folder)), local_weights_digest(str(folder))
    assert files == local_checkpoint_files_digest("toy-llava")  # a copy elsewhere: the same files
    assert weights == local_weights_digest("toy-llava")
    (folder / "eval_log.jsonl").write_text("{}\n")  # hivtp's notes and hidden files are not read by any loader
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert local_checkpoint_files_digest(str(folder)) == files
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vision_feature_layer": -3}))
    edited = local_checkpoint_files_digest(str(folder))
    assert edited != files and local_weights_digest(str(folder)) == weights
    (folder / "special_tokens_map.json").write_text("{}\n")  # a file added
    assert local_checkpoint_files_digest(str(folder)) not in (files, edited)
    assert local_checkpoint_files_digest("llava-hf/llava-1.5-7b-hf") is None  # a hub id: nothing here to read

"""The trained toy LLaVA: exact training maths, reproducible logged losses, resumability, and the
shipped weights' accuracy through hivtp.attach."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch

import hivtp
from hivtp.toy.data import chat_prompt, encode_items, patch_labels, sample_items
from hivtp.toy.evaluate import evaluate, family_accuracy, held_out_items
from hivtp.toy.train import TrainConfig, build, loss_of, loss_of_full, train
from hivtp.world import FAMILIES
from hivtp.zoo import resolve_checkpoint, trained_dir


@pytest.fixture(scope="module")
def untrained():
    return build(seed=0)


def test_shared_prefix_loss_equals_the_full_sequence_loss(untrained):
    model, processor = untrained
    images, items = sample_items(5, 0, num_images=2, questions_per_image=3)
    batch = encode_items(processor, images, items, model.config.image_seq_length)
    shared, full = loss_of(model, batch), loss_of_full(model, batch)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-6)
    g_shared = torch.autograd.grad(shared, model.model.vision_tower.parameters().__next__())[0]
    g_full = torch.autograd.grad(full, model.model.vision_tower.parameters().__next__())[0]
    torch.testing.assert_close(g_shared, g_full, rtol=1e-4, atol=1e-7)


def test_training_ids_equal_what_the_processor_gives_at_inference(untrained):
    model, processor = untrained
    images, items = sample_items(5, 1, num_images=1, questions_per_image=2)
    batch = encode_items(processor, images, items, model.config.image_seq_length)
    for row, item in zip(range(len(items)), items):
        ids = processor(images=images[0], text=chat_prompt(processor, item.prompt), return_tensors="pt").input_ids[0]
        assert torch.equal(batch.input_ids[row, : len(ids)], ids)
        answer = batch.labels[row][batch.labels[row] != -100]
        assert processor.tokenizer.decode(answer, skip_special_tokens=True).strip() == item.target


def test_auxiliary_patch_labels_match_the_pixels_the_encoder_sees(untrained):
    """Every labelled patch centre shows its object's colour in the processor's view (resize + crop)."""
    import numpy as np

    from hivtp.world import COLOURS, KINDS

    _, processor = untrained
    images, _, scenes = sample_items(0, 5, 6, 1, with_scenes=True)
    pixels = processor.image_processor(images, return_tensors="pt", do_normalize=False, do_rescale=False).pixel_values
    labelled = 0
    for view, scene in zip(pixels, scenes):
        labels = patch_labels(scene).view(24, 24)
        assert set(labels.unique().tolist()) == {0} | {KINDS.index(o.kind) + 1 for o in scene.objects} or len(scene.objects) == 0
        for r, c in labels.nonzero().tolist():
            colour = view[:, r * 14 + 7, c * 14 + 7].numpy()
            expected = np.array(COLOURS[KINDS[int(labels[r, c]) - 1][0]])
            assert np.abs(colour - expected).max() <= 40
            labelled += 1
    assert labelled > 50


def test_interrupted_training_resumes_to_the_same_losses(tmp_path):
    cfg = TrainConfig(steps=3, images_per_step=1, questions_per_image=2, log_every=100, ckpt_every=1, eval_every=0)
    straight = train(cfg, tmp_path / "a", progress=False)
    train(TrainConfig(**{**cfg.__dict__, "steps": 2}), tmp_path / "b", progress=False)  # "killed" after 2
    resumed = train(cfg, tmp_path / "b", progress=False)
    assert [r["step"] for r in resumed] == [0, 1, 2]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], abs=1e-5)


# --- the shipped weights ---------------------------------------------------------------------
SHIPPED = trained_dir("toy-llava")


def test_retraining_reproduces_the_logged_losses_of_the_first_steps(tmp_path):
    saved = json.loads((SHIPPED / "train_config.json").read_text())
    cfg = TrainConfig(**{f.name: saved[f.name] for f in fields(TrainConfig)})
    cfg.steps, cfg.eval_every, cfg.log_every = 2, 0, 100  # the first two steps of the shipped run
    cfg.warmup = saved["warmup"]
    logged = [json.loads(line) for line in (SHIPPED / "train_log.jsonl").read_text().splitlines()[:2]]
    rows = train(cfg, tmp_path, progress=False)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in logged], abs=1e-4)


@pytest.fixture(scope="module")
def toy():
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = resolve_checkpoint("toy-llava")
    return LlavaForConditionalGeneration.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def test_shipped_checkpoint_is_small_safetensors_with_its_training_log():
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size <= 25 * 2**20
    assert (SHIPPED / "model.safetensors").is_file() and (SHIPPED / "train_log.jsonl").is_file()
    assert json.loads((SHIPPED / "hivtp_build.json").read_text())["weights"] == "trained"


def test_shipped_weights_reproduce_their_logged_held_out_accuracy_through_attach(toy):
    """The shipped checkpoint, loaded like a hub model and run through hivtp.attach, scores exactly
    what training logged for its last step on the same held-out questions (the issue's 90% target is
    not reached yet: see the README's toy-model section)."""
    model, processor = toy
    cfg = json.loads((SHIPPED / "train_config.json").read_text())
    logged = json.loads((SHIPPED / "eval_log.jsonl").read_text().splitlines()[-1])
    assert logged["step"] == cfg["steps"]
    images, items = held_out_items(seed=cfg["seed"], per_family=cfg["eval_per_family"])
    acc = family_accuracy(evaluate(hivtp.attach(model, method="none"), processor, images, items))
    assert set(acc) == set(FAMILIES)
    assert {k: round(v, 4) for k, v in acc.items()} == {k: logged[k] for k in FAMILIES}


def test_attach_none_matches_the_unwrapped_toy_model(toy):
    model, processor = toy
    images, items = held_out_items(seed=1, per_family=2)
    plain = evaluate(model, processor, images, items, batch_size=12)
    wrapped = evaluate(hivtp.attach(model, method="none"), processor, images, items, batch_size=12)
    assert [a for _, a, _ in plain] == [a for _, a, _ in wrapped]

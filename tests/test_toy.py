"""The trained toy LLaVA: exact training maths, reproducible logged losses, resumability, and the
shipped weights' accuracy through hivtp.attach."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

import hivtp
from hivtp.toy.cli import trained_world
from hivtp.toy.data import chat_prompt, encode_items, patch_labels, sample_items
from hivtp.toy.evaluate import evaluate, family_accuracy, held_out_items
from hivtp.toy.forward import build, loss_of, loss_of_full
from hivtp.toy.train import TrainConfig, recipe, train
from hivtp.world import FAMILIES, KINDS, WORLDS
from hivtp.zoo import TRAINED, load_pretrained, trained_dir


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
    cfg = TrainConfig(steps=4, images_per_step=1, questions_per_image=2, log_every=100, ckpt_every=1, eval_every=0,
                      encoder_steps=1, warmup=2, drop_from=2, full_share=0.0)
    # step 0: the encoder stage; step 1: the language model on 576 tokens; steps 2-3: pruned sequences
    straight = train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, stop_at=2)  # "killed" after 2 steps
    resumed = train(cfg, tmp_path / "b", progress=False)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    assert ["answer" in r for r in resumed] == [False, True, True, True]
    assert [r["image_tokens"] for r in resumed][:2] == [None, 576] and all(r["image_tokens"] < 576 for r in resumed[2:])
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], abs=1e-5)


def test_resuming_a_state_written_by_a_different_config_says_so(tmp_path):
    cfg = TrainConfig(steps=2, images_per_step=1, questions_per_image=1, log_every=100, ckpt_every=1, eval_every=0, encoder_steps=2)
    train(cfg, tmp_path, progress=False, stop_at=1)
    with pytest.raises(ValueError, match=r"different training config \(lr: 0\.001 -> 0\.002\).*another --work-dir"):
        train(TrainConfig(**{**cfg.__dict__, "lr": 2e-3}), tmp_path, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    del state["recipe"]
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"no recorded config"):
        train(cfg, tmp_path, progress=False)


@pytest.mark.parametrize("world", WORLDS)
def test_a_finished_run_writes_a_llava_checkpoint_that_names_its_world(tmp_path, world):
    cfg = TrainConfig(steps=1, images_per_step=1, log_every=100, eval_every=0, world=world)
    train(cfg, tmp_path / "work", out_dir=tmp_path / "out", progress=False)
    stamp = json.loads((tmp_path / "out" / "hivtp_build.json").read_text())
    assert (stamp["world"], stamp["seed"], stamp["weights"]) == (world, cfg.seed, "trained")
    assert json.loads((tmp_path / "out" / "train_config.json").read_text())["world"] == world
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_training_draws_and_checks_itself_in_the_recipes_world_not_the_benchmarks(tmp_path, monkeypatch):
    """The recipe trains on TRAINING_WORLD (plain) although the benchmarks ask in another: both the
    training scenes and the held-out check in eval_log.jsonl must come from the training world, or a
    retrain would no longer reproduce the shipped logs."""
    import importlib

    from hivtp.toy.train import TRAINING_WORLD

    train_module = importlib.import_module("hivtp.toy.train")  # the package exports a function of that name
    from hivtp.world import BENCHMARK_WORLD

    seen = {"sample_items": set(), "held_out_items": set()}
    for name in seen:
        real = getattr(train_module, name)
        monkeypatch.setattr(train_module, name, lambda *a, _real=real, _name=name, **kw: (
            seen[_name].add(kw.get("world")), _real(*a, **kw))[1])
    cfg = TrainConfig(steps=1, encoder_steps=0, images_per_step=1, log_every=100, eval_every=1, eval_per_family=1)
    train(cfg, tmp_path / "work", progress=False)
    assert TRAINING_WORLD != BENCHMARK_WORLD and cfg.world == TRAINING_WORLD
    assert seen == {"sample_items": {TRAINING_WORLD}, "held_out_items": {TRAINING_WORLD}}


def test_a_state_saved_before_the_new_fields_resumes_with_their_v9_values(tmp_path):
    from hivtp.toy.train import ADDED_AFTER_V9

    cfg = TrainConfig(steps=2, images_per_step=1, questions_per_image=1, log_every=100, ckpt_every=1, eval_every=0,
                      encoder_steps=2, **ADDED_AFTER_V9)  # a run of v9's time, with the values it had
    train(cfg, tmp_path, progress=False, stop_at=1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["recipe"] = {k: v for k, v in state["recipe"].items() if k not in ADDED_AFTER_V9}  # as written before them
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"count_focus: 0\.0 -> 0\.3"):
        train(TrainConfig(**{**cfg.__dict__, "count_focus": 0.3}), tmp_path, progress=False)
    assert [r["step"] for r in train(cfg, tmp_path, progress=False)] == [0, 1]


def test_bookkeeping_fields_do_not_block_a_resume(tmp_path):
    cfg = TrainConfig(steps=2, images_per_step=1, questions_per_image=1, log_every=100, ckpt_every=1, eval_every=0, encoder_steps=2)
    train(cfg, tmp_path, progress=False, stop_at=1)
    rows = train(TrainConfig(**{**cfg.__dict__, "log_every": 5, "threads": 1}), tmp_path, progress=False)
    assert [r["step"] for r in rows] == [0, 1]


# --- pruned image sequences, objectives --------------------------------------------------------
def _fixed_method(keep: torch.Tensor):
    """A before-projector method that keeps exactly ``keep`` [C, K] (raster indices) of each crop."""
    from hivtp.methods.base import CropSelection, PruningMethod

    class Fixed(PruningMethod):
        name = "fixed-for-test"

        def select(self, crops):
            mask = torch.zeros(crops.features.shape[:2], dtype=torch.bool)
            mask.scatter_(1, keep, True)
            return CropSelection.from_masks(crops.features, mask, [{"tokens_kept": keep.shape[1]}] * crops.num_crops)

    return Fixed()


def test_a_pruned_training_sequence_is_the_one_the_pruning_engine_feeds(untrained):
    """The answer loss the trainer computes on a pruned sequence (``Batch.keep``) equals the one from
    the logits of ``hivtp.attach`` keeping the same tokens of the unpruned prompt: the same kept
    features, in raster order, at the same positions."""
    from hivtp.toy.train import keep_at

    model, processor = untrained
    cfg = TrainConfig(drop_from=0, full_share=0.0)
    images, items, scenes = sample_items(9, 4, num_images=1, questions_per_image=2, with_scenes=True)
    labels = torch.stack([patch_labels(s) for s in scenes])
    keep = keep_at(cfg, 5, labels)  # [1, K]
    assert keep is not None and keep.shape[1] < 576
    pruned = hivtp.attach(model, method=_fixed_method(keep))
    for item in items:
        batch = encode_items(processor, images, [item], keep.shape[1])
        batch.patch_labels, batch.keep = labels, keep
        full = encode_items(processor, images, [item], 576)
        with torch.no_grad():
            trained = loss_of_full(model, batch)
            logits = pruned(input_ids=full.input_ids, attention_mask=full.attention_mask, pixel_values=full.pixel_values).logits
            k = full.labels.shape[1] - full.prefix_len  # the text after the image (right-aligned logits cover it)
            targets = full.labels[0, -k:][1:]  # position t predicts token t + 1
            engine = torch.nn.functional.cross_entropy(logits[0, -k:][:-1][targets != -100].float(), targets[targets != -100])
        torch.testing.assert_close(trained, engine, rtol=1e-5, atol=1e-6)
        assert pruned.last_stats[0]["tokens_kept"] == keep.shape[1]


def test_shared_prefix_loss_equals_the_full_sequence_loss_on_a_pruned_sequence(untrained):
    from hivtp.toy.train import keep_at

    model, processor = untrained
    images, items, scenes = sample_items(5, 3, num_images=2, questions_per_image=3, with_scenes=True)
    labels = torch.stack([patch_labels(s) for s in scenes])
    keep = keep_at(TrainConfig(drop_from=0, full_share=0.0), 11, labels)
    batch = encode_items(processor, images, items, keep.shape[1])
    batch.patch_labels, batch.keep = labels, keep
    torch.testing.assert_close(loss_of(model, batch), loss_of_full(model, batch), rtol=1e-5, atol=1e-6)


def test_drop_schedule_is_deterministic_sorted_and_varied():
    from hivtp.toy.train import drop_pattern, keep_at

    cfg = TrainConfig(drop_from=10, full_share=0.25, min_keep=32)
    _, _, scenes = sample_items(0, 3, num_images=6, questions_per_image=1, with_scenes=True)
    labels = torch.stack([patch_labels(s) for s in scenes])  # [6, 576]
    assert keep_at(cfg, 9, labels) is None  # before drop_from
    draws = [keep_at(cfg, step, labels) for step in range(10, 410)]
    full = sum(d is None for d in draws) / len(draws)
    assert 0.18 < full < 0.32  # ~ full_share
    sizes = set()
    for d in draws:
        if d is not None:
            assert d.shape[0] == 6 and 32 <= d.shape[1] < 576
            assert all(torch.equal(row, row.unique()) for row in d)  # sorted, no repeats
            sizes.add(d.shape[1])
    assert len(sizes) > 100  # K varies from step to step
    assert torch.equal(keep_at(cfg, 123, labels), keep_at(cfg, 123, labels))  # (seed, step) only
    # the patterns: uniform, spatially clustered, object-weighted -- none is the only one drawn
    import numpy as np

    on_object = (labels[0] > 0).numpy()
    rng = np.random.default_rng(0)
    object_share = [on_object[drop_pattern(rng, labels[0].numpy(), 100, 24)].mean() for _ in range(300)]
    base = on_object.mean()
    assert min(object_share) < base + 0.05 and max(object_share) > min(0.9, 3 * base)


def test_keep_scale_log_draws_as_many_short_sequences_as_long_ones():
    import numpy as np

    from hivtp.toy.train import keep_count

    def shares(scale):
        rng = np.random.default_rng(0)
        k = np.array([keep_count(rng, 32, 576, scale) for _ in range(20000)])
        assert k.min() == 32 and k.max() == 575  # the whole range [min_keep, 576), both ends reached
        return ((k >= 64) & (k < 128)).mean(), (k >= 288).mean()

    short, long = shares("log")  # log(128/64) = log(576/288): equal shares, about 24% each
    assert abs(short - long) < 0.02 and 0.21 < short < 0.27
    short, long = shares("linear")  # 64 / 544 against 288 / 544
    assert abs(short - 64 / 544) < 0.01 and abs(long - 288 / 544) < 0.01
    with pytest.raises(ValueError, match="keep_scale must be one of linear, log"):
        TrainConfig(keep_scale="exp")


def test_object_bonus_sets_how_often_the_objects_pattern_keeps_every_object_patch_first():
    import numpy as np

    from hivtp.toy.train import drop_pattern

    _, _, scenes = sample_items(0, 3, num_images=6, questions_per_image=1, with_scenes=True)
    labels = next(lab for lab in (patch_labels(s).numpy() for s in scenes) if 20 <= (lab > 0).sum() <= 80)
    on_object = np.flatnonzero(labels > 0)

    def all_objects_first(bonus, draws=1500):  # keep = the object patches' number: all of them, nothing else
        rng = np.random.default_rng(0)
        return np.mean([np.array_equal(drop_pattern(rng, labels, on_object.size, 24, bonus), on_object) for _ in range(draws)])

    # a third of the draws are the objects pattern; its bonus is >= 1 (objects strictly first) in half of them at 2.0
    assert all_objects_first(1.0) < 0.02 and abs(all_objects_first(2.0) - 1 / 6) < 0.04
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="object_bonus"):
            TrainConfig(object_bonus=bad)


def test_each_objective_is_weighted_once_and_a_zero_weight_switches_it_off(tmp_path):
    from hivtp.toy.objectives import objectives

    cfg = TrainConfig(steps=2, images_per_step=1, questions_per_image=2, eval_every=0, encoder_steps=1, warmup=2,
                      kind_weight=0.0, where_weight=3.0)
    rows = train(cfg, tmp_path, progress=False)
    terms = objectives(cfg)
    assert "kind" not in {t.name for t in terms} and all("kind" not in r for r in rows)
    for row in rows:
        total = sum(t.weight * row[t.name] for t in terms if t.name in row)
        assert row["loss"] == pytest.approx(total, abs=1e-4)
    assert {t.name for t in terms} - set(rows[1]) == set()  # the language step logs every active term


# --- the shipped weights ---------------------------------------------------------------------
SHIPPED = trained_dir("toy-llava")


def test_retraining_reproduces_the_logged_losses_of_the_first_steps(tmp_path):
    from hivtp.toy.train import ADDED_AFTER_V9

    saved = {**ADDED_AFTER_V9, **json.loads((SHIPPED / "train_config.json").read_text())}
    cfg = TrainConfig(**{f.name: saved[f.name] for f in fields(TrainConfig)})
    assert recipe(cfg) == recipe(TrainConfig()), "make toy-model's defaults must be the shipped model's recipe"
    cfg.steps, cfg.eval_every, cfg.log_every = 2, 0, 100  # the first two steps of the shipped run
    cfg.warmup = saved["warmup"]
    logged = [json.loads(line) for line in (SHIPPED / "train_log.jsonl").read_text().splitlines()[:2]]
    rows = train(cfg, tmp_path, progress=False)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in logged], abs=1e-4)


@pytest.fixture(scope="module")
def toy():
    return load_pretrained("toy-llava")


def test_shipped_checkpoint_is_small_safetensors_with_its_training_log():
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size <= 25 * 2**20
    assert (SHIPPED / "model.safetensors").is_file() and (SHIPPED / "train_log.jsonl").is_file()
    assert json.loads((SHIPPED / "hivtp_build.json").read_text())["weights"] == "trained"


@pytest.mark.parametrize("name", TRAINED)
def test_every_shipped_toy_names_the_world_it_was_trained_on(name):
    """``hivtp_build.json`` says which world (``hivtp.world.WORLDS``) the weights learned, the same one
    its training config records (a config from before there were worlds: plain)."""
    from hivtp.toy.cli import trained_world

    stamp = json.loads((trained_dir(name) / "hivtp_build.json").read_text())
    assert stamp["world"] == trained_world(name)


def test_shipped_weights_reproduce_their_logged_held_out_accuracy_through_attach(toy):
    """The shipped checkpoint, loaded like a hub model and run through hivtp.attach, scores exactly
    what training logged for its last step on the same held-out questions, at least 90% on every
    family."""
    model, processor = toy
    cfg = json.loads((SHIPPED / "train_config.json").read_text())
    logged = json.loads((SHIPPED / "eval_log.jsonl").read_text().splitlines()[-1])
    assert logged["step"] == cfg["steps"]
    # training checks itself in its own world (plain), not the benchmarks'
    images, items = held_out_items(seed=cfg["seed"], per_family=cfg["eval_per_family"], world=trained_world("toy-llava"))
    acc = family_accuracy(evaluate(hivtp.attach(model, method="none"), processor, images, items))
    assert set(acc) == set(FAMILIES)
    assert {k: round(v, 4) for k, v in acc.items()} == {k: logged[k] for k in FAMILIES}
    assert {f: a for f, a in acc.items() if a < 0.9} == {}


def test_attach_none_matches_the_unwrapped_toy_model(toy):
    model, processor = toy
    images, items = held_out_items(seed=1, per_family=2)
    plain = evaluate(model, processor, images, items, batch_size=12)
    wrapped = evaluate(hivtp.attach(model, method="none"), processor, images, items, batch_size=12)
    assert [a for _, a, _ in plain] == [a for _, a, _ in wrapped]


def test_evaluate_draws_random_per_question_whatever_the_batch(toy, monkeypatch):
    """``random`` is keyed on each question (sample_ids), so its answers do not depend on the batch
    size; keyed on the batch slot instead, the same few draws would repeat in every batch."""
    from hivtp.pruned import PrunedModel

    model, processor = toy
    images, items = held_out_items(seed=2, per_family=6)
    pruned = hivtp.attach(model, method="random", budget=24)
    answers = lambda bs: [a for _, a, _ in evaluate(pruned, processor, images, items, batch_size=bs)]  # noqa: E731
    assert answers(4) == answers(9)
    plain_generate = PrunedModel.generate
    monkeypatch.setattr(PrunedModel, "generate", lambda self, *a, sample_ids=None, **k: plain_generate(self, *a, **k))
    assert answers(4) != answers(9)  # the slot-keyed draws: the check above can fail


# --- training-only parts: initialisation, auxiliary losses, curriculum ------------------------
def test_conv_like_init_points_every_head_at_its_neighbour(untrained):
    """At initialisation head h of layer l attends most to the patch at OFFSETS[(h + l) % 4]."""
    from hivtp.toy.init import OFFSETS

    model, processor = untrained
    tower = model.model.vision_tower
    images, _ = sample_items(3, 0, num_images=1, questions_per_image=0)
    pixels = processor.image_processor(images, return_tensors="pt").pixel_values
    tower.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            maps = tower(pixels, output_attentions=True).attentions  # per layer [1, H, 577, 577]
    finally:
        tower.config._attn_implementation = "sdpa"
    for li in (0, 1, 5):
        for h in range(maps[li].shape[1]):
            dx, dy = OFFSETS[(h + li) % len(OFFSETS)]
            for row, col in ((5, 5), (12, 17), (20, 3)):
                query = 1 + row * 24 + col
                expected = 1 + (row + dy) * 24 + (col + dx)
                weights = maps[li][0, h, query]
                assert int(weights.argmax()) == expected
                assert float(weights[expected]) > 0.25  # uniform would be 1 / 577


def test_conv_like_init_refuses_a_tower_it_cannot_shape():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from hivtp.toy.init import conv_like_init

    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1,
                                             image_size=56, patch_size=14))  # head_dim 8
    with pytest.raises(ValueError, match="head_dim"):
        conv_like_init(tower, seed=0)


def test_auxiliary_kind_loss_pools_each_objects_tokens():
    """The pooled kind term equals a per-object loop: mean of the tokens under the object -> kind."""
    import torch.nn.functional as F

    from hivtp.toy.objectives import AuxHeads

    torch.manual_seed(0)
    heads = AuxHeads(8, grid=4)
    tokens = torch.randn(2, 16, 8)
    labels = torch.zeros(2, 16, dtype=torch.long)
    labels[0, [0, 1, 4]] = 3  # kind 2
    labels[0, [10, 15]] = 7  # kind 6
    labels[1, [5]] = 12  # kind 11
    logits, targets = [], []
    for i in range(2):
        for k in labels[i].unique().tolist():
            if k:
                logits.append(heads.kind(tokens[i, labels[i] == k].mean(0)))
                targets.append(k - 1)
    expected = F.cross_entropy(torch.stack(logits), torch.tensor(targets))
    terms = heads.losses(tokens, labels)
    torch.testing.assert_close(terms["kind"], expected)


def test_curriculum_sets_the_objects_per_scene():
    for lo, hi in ((1, 1), (1, 2), (8, 8)):
        _, _, scenes = sample_items(0, 7, num_images=12, questions_per_image=1, with_scenes=True, objects=(lo, hi))
        counts = {len(s.objects) for s in scenes}
        assert max(counts) == hi and min(counts) >= (lo if hi < 8 else 6)  # a crowded view may not fit them all
    _, _, scenes = sample_items(0, 7, num_images=12, questions_per_image=1, with_scenes=True)
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4}


def test_grounding_loss_compares_object_tokens_with_their_words(untrained):
    """Brute force: mean over object patches of 1 - cos(projector(token), emb(colour) + emb(shape))."""
    from hivtp.toy.objectives import grounding_loss, kind_word_ids
    from hivtp.world import KINDS

    model, processor = untrained
    words = kind_word_ids(processor.tokenizer)
    assert len(words) == len(KINDS) and all(w.count(-1) == 1 for w in words)
    torch.manual_seed(0)
    tokens = torch.randn(2, 16, model.config.vision_config.hidden_size)
    labels = torch.zeros(2, 16, dtype=torch.long)
    labels[0, [1, 2]] = 5
    labels[1, [7]] = 12
    table = model.get_input_embeddings().weight
    terms = []
    for i, p in labels.nonzero().tolist():
        colour, shape = KINDS[int(labels[i, p]) - 1]
        c = processor.tokenizer(" " + colour, add_special_tokens=False).input_ids
        s = processor.tokenizer(" " + shape, add_special_tokens=False).input_ids
        target = table[c].mean(0) + table[s].mean(0)
        feat = model.model.multi_modal_projector(tokens[i, p])
        terms.append(1 - torch.dot(feat, target) / (feat.norm() * target.norm()))
    with torch.no_grad():
        feats = model.model.multi_modal_projector(tokens)
        torch.testing.assert_close(grounding_loss(model, feats, labels, words), torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
        assert float(grounding_loss(model, feats, torch.zeros_like(labels), words)) == 0.0


def test_mimetic_init_makes_query_and_key_near_identity_and_refuses_grouped_queries(untrained):
    from transformers import LlamaConfig, LlamaModel

    from hivtp.toy.init import mimetic_init

    model, _ = untrained
    for layer in model.model.language_model.layers:
        q, k = layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight
        product = q @ k.T  # the bilinear form of the attention logits
        assert float(torch.diagonal(product).mean()) > 10 * float((product - torch.diag(torch.diagonal(product))).abs().mean())
    gqa = LlamaModel(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=16))
    with pytest.raises(ValueError, match="square"):
        mimetic_init(gqa, seed=0)


@pytest.mark.parametrize(
    "prompt, named",
    [
        ("Is there a red circle in the image?\nAnswer the question using a single word or phrase.", [("red", "circle")]),
        ("What shape is the red object?", [("red", None)]),
        ("Is the circle red?", [("red", "circle")]),
        ("How many squares are there?", [(None, "square")]),
        ("Is the yellow triangle to the left or right of the green circle?", [("yellow", "triangle"), ("green", "circle")]),
        ("Which shape is the blue object?\nA. circle\nB. square", [("blue", None), ("blue", "circle"), ("blue", "square")]),
        ("Are there two circles in this image?", [(None, "circle")]),
    ],
)
def test_mentions_are_the_colour_and_shape_word_runs_of_the_question(prompt, named):
    from hivtp.toy.data import mentions_of

    found = mentions_of(prompt)
    assert [(m.colour, m.shape) for m in found] == named
    for m in found:  # each ends on its last descriptor word; an option's letter starts its line
        assert prompt[: m.at].split()[-1].rstrip("s") in (m.colour, m.shape)
        assert m.letter_at is None or prompt[m.letter_at - 1 : m.letter_at + 2] in ("A. ", "B. ")


@pytest.mark.parametrize(
    "prompt, side",
    [
        ("Is the red circle on the left of the blue square? Please answer yes or no.", "left"),
        ("Is the red circle on the right of the blue square? Please answer yes or no.", "right"),
        ("Is the yellow triangle to the left or right of the green circle?", None),  # states no side
        ("How many squares are there?\nAnswer with the left word.", None),  # the question line only
    ],
)
def test_side_word_is_the_questions_only_left_or_right(prompt, side):
    from hivtp.toy.data import side_word_of

    end = side_word_of(prompt)
    assert (end is None) == (side is None)
    if side is not None:
        assert prompt[end - len(side) : end] == side and not prompt[end].isalpha()


def test_placement_loss_reads_each_object_patch_place_from_its_projected_token(untrained):
    """Brute force: mean over object patches and both coordinates of (read-out(projector(token)) -
    (column, row) / 23)^2, background patches left out."""
    from hivtp.toy.objectives import aux_heads

    model, _ = untrained
    heads = aux_heads(model, 0)
    torch.manual_seed(0)
    tokens = torch.randn(2, 576, model.config.vision_config.hidden_size)
    labels = torch.zeros(2, 576, dtype=torch.long)
    labels[0, [1, 30, 301]] = 3  # off the diagonal: a swapped (column, row) would change the loss
    labels[1, [550]] = 9
    terms = []
    for i, cell in labels.nonzero().tolist():
        place = torch.tensor([cell % 24, cell // 24]) / 23
        terms += list(heads.placement(model.model.multi_modal_projector(tokens[i, cell])) - place)
    with torch.no_grad():
        feats = model.model.multi_modal_projector(tokens)
        torch.testing.assert_close(heads.placement_loss(feats, labels), torch.stack(terms).pow(2).mean(), rtol=1e-5, atol=1e-7)
        assert float(heads.placement_loss(feats, torch.zeros_like(labels))) == 0.0


def test_encoded_mentions_and_answer_position_point_at_the_right_tokens(untrained):
    from hivtp.world import COLOURS, SHAPES

    model, processor = untrained
    tok = processor.tokenizer
    images, items = sample_items(2, 4, num_images=3, questions_per_image=6)
    batch = encode_items(processor, images, items, model.config.image_seq_length)
    assert len(batch.mentions) == len(items) == len(batch.answer_at)
    descriptors = set(COLOURS) | set(SHAPES)
    word = lambda row, at: tok.decode([int(batch.input_ids[row, at])]).strip().removesuffix("s")  # noqa: E731
    for row, item in enumerate(items):
        for m in batch.mentions[row]:  # the last word of the run: a descriptor of it, and none follows
            assert word(row, m.at) in (m.colour, m.shape) and word(row, m.at + 1) not in descriptors
        assert all(m.at >= batch.prefix_len for m in batch.mentions[row])
        # the answer position predicts the answer's first non-blank token
        nxt = int(batch.labels[row, batch.answer_at[row] + 1])
        assert nxt != -100 and tok.decode([nxt]).strip() and item.target.startswith(tok.decode([nxt]).strip())
        assert all(int(x) == -100 or tok.decode([int(x)]).strip() == "" for x in batch.labels[row, : batch.answer_at[row] + 1])


def test_recomputed_attention_rows_equal_the_models_eager_attention():
    """The supervised-attention rows (recomputed from a forward hook through the shared-prefix
    cache) equal the attention probabilities of a plain eager full-sequence forward, and the
    recorded layer outputs its hidden states."""
    from hivtp.toy.forward import image_features

    model, processor = build(seed=1)
    images, items = sample_items(5, 2, num_images=2, questions_per_image=3)
    batch = encode_items(processor, images, items, model.config.image_seq_length)
    layers = tuple(range(model.config.text_config.num_hidden_layers))
    with torch.no_grad():
        _, rows, outputs = loss_of(model, batch, taps=layers)
        model.set_attn_implementation("eager")
        embeds = model.get_input_embeddings()(batch.input_ids)
        mask = (batch.input_ids == model.config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(mask, image_features(model, batch.pixel_values)[batch.image_index])
        full = model.model.language_model(inputs_embeds=embeds, attention_mask=batch.attention_mask,
                                          output_attentions=True, output_hidden_states=True)
        ref = full.attentions
    p, q = batch.prefix_len, torch.arange(len(items))
    at = torch.tensor(batch.answer_at) - p
    for layer in layers:
        torch.testing.assert_close(rows[layer](q, at), ref[layer][q, :, p + at], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(rows[layer](q, at * 0), ref[layer][q, :, p], rtol=1e-4, atol=1e-6)
        if layer < layers[-1]:  # the recorded layer output (the last entry of hidden_states is normed)
            torch.testing.assert_close(outputs[layer], full.hidden_states[layer + 1][:, p:], rtol=1e-4, atol=1e-5)


def test_attention_losses_target_the_named_objects_patches_or_bos(untrained):
    """Brute force from the scenes and answer keys: attention spread evenly over exactly the expected
    keys gives a zero loss; moving half of the mass to a wrong key is penalised."""
    from hivtp.toy.objectives import attention_losses
    from hivtp.world import KINDS

    model, processor = untrained
    images, items, scenes = sample_items(3, 11, num_images=8, questions_per_image=4, with_scenes=True)
    batch = encode_items(processor, images, items, model.config.image_seq_length)
    batch.patch_labels = torch.stack([patch_labels(s) for s in scenes])
    p, keys, start = batch.prefix_len, batch.input_ids.shape[1], batch.prefix_len - 576
    label_of = {k: i + 1 for i, k in enumerate(KINDS)}

    def named_keys(row: int, m) -> torch.Tensor:
        scene = scenes[items[row].image]
        target = torch.zeros(keys)
        for o in scene.objects:
            if m.colour in (None, o.colour) and m.shape in (None, o.shape):
                target[start + (patch_labels(scene) == label_of[o.kind]).nonzero().flatten()] = 1
        if not target.any():
            target[0] = 1  # BOS
        return target / target.sum()

    def expected(layer: int, row: int, position: int) -> torch.Tensor:  # [heads, keys]
        out = torch.zeros(4, keys)
        mentions = batch.mentions[row]
        question = [m for m in mentions if m.letter_at is None]
        if layer == 1:  # retrieve: head 0 at every mention
            out[0] = named_keys(row, next(m for m in mentions if m.at == position))
        elif layer == 2:  # gather: at the answer position
            assert position == batch.answer_at[row]
            out[0, question[0].at] = out[1, question[-1].at] = 1
            letters = {processor.tokenizer.decode([int(batch.input_ids[row, m.letter_at])]).strip(): m for m in mentions if m.letter_at}
            if letters:  # the option the answer key names
                out[2, letters[items[row].target].at] = 1
            sides = [i for i in range(p, keys) if processor.tokenizer.decode([int(batch.input_ids[row, i])]).strip() in ("left", "right")]
            if len(sides) == 1:  # "on the left of": the side the answer compares with
                out[3, sides[0]] = 1
        else:  # bind: at an option's word
            m = next(m for m in mentions if m.at == position)
            out[1, question[-1].at] = out[2, m.letter_at] = 1
        return out

    def rows_of(layer: int, wrong: bool, heads: tuple[int, ...] = (0, 1, 2, 3)):
        def rows(question, position):
            out = torch.stack([expected(layer, qi, p + pos) for qi, pos in zip(question.tolist(), position.tolist())])
            if wrong:
                moved = 0.5 * out + 0.5 * torch.nn.functional.one_hot(torch.tensor(start - 1), keys).float()
                out[:, list(heads)] = moved[:, list(heads)]
            return out
        return rows

    cfg = TrainConfig(retrieve_targets="mention")  # the whole-mass loss (per object: the next test)
    right = attention_losses(batch, {i: rows_of(i, False) for i in range(3)}, cfg)
    bad = attention_losses(batch, {i: rows_of(i, True) for i in range(3)}, cfg)
    assert set(right) == {"retrieve", "gather", "bind"} and all(abs(v.item()) < 1e-5 for v in right.values())
    assert all(v.item() > 0.6 for v in bad.values())  # -log(0.5)
    for head in (2, 3):  # the found option's and the side word's targets are in the gather loss
        one_wrong = attention_losses(batch, {i: rows_of(i, i == 2, (head,)) for i in range(3)}, cfg)
        assert one_wrong["gather"].item() > 0.01, head
    absent = [r for r in range(len(items)) for m in batch.mentions[r] if named_keys(r, m)[0] == 1]
    assert absent, "the sample should hold questions about absent objects (BOS targets)"
    assert any(it.family == "choice" for it in items), "the sample should hold a choice question (options)"
    assert any(s is not None for s in batch.side_at), "the sample should hold a question with one side word"


def test_retrieve_targets_score_each_named_objects_mass_and_bos(untrained):
    """Brute force from the scenes, per ``retrieve_targets``: attention spread evenly over every named
    patch loses nothing on the whole-mention loss; per object it costs the mean over the mention's n
    objects of -log(object patches / named patches), averaged over mentions; equal mass per object
    costs log n, and with BOS as one more target equal mass on BOS and each object costs log(n + 1)."""
    import math

    from hivtp.toy.objectives import attention_losses

    model, processor = untrained
    images, items, scenes = sample_items(3, 12, num_images=8, questions_per_image=3, families=("count",),
                                         with_scenes=True, count_focus=1.0)
    batch = encode_items(processor, images, items, model.config.image_seq_length)
    batch.patch_labels = torch.stack([patch_labels(s) for s in scenes])
    p, keys, start = batch.prefix_len, batch.input_ids.shape[1], batch.prefix_len - 576
    mentions = [(row, m) for row in range(len(items)) for m in batch.mentions[row]]

    def named_patches(row: int, m) -> list[torch.Tensor]:  # per visible named object: its key positions
        labels = patch_labels(scenes[items[row].image])
        return [start + (labels == KINDS.index(o.kind) + 1).nonzero().flatten() for o in scenes[items[row].image].objects
                if m.matches(o.kind) and (labels == KINDS.index(o.kind) + 1).any()]

    def attention(spread: str):  # "patches": even per patch; "objects": even per object; "objects+bos": and BOS
        def rows(question, position):
            out = torch.zeros(len(question), 4, keys)
            for n, (qi, pos) in enumerate(zip(question.tolist(), position.tolist())):
                m = next(m for m in batch.mentions[qi] if m.at == p + pos)
                objects = named_patches(qi, m)
                if not objects or spread == "objects+bos":
                    out[n, 0, 0] = 1.0 if not objects else 1.0 / len(objects)  # BOS
                for at in objects:
                    out[n, 0, at] += 1.0 if spread == "patches" else 1.0 / len(objects) / len(at)
                out[n, 0] /= out[n, 0].sum()
            return out
        return rows

    even, per_object, with_bos = [], [], []
    for row, m in mentions:
        objects = named_patches(row, m)
        total = sum(len(at) for at in objects)
        even.append(sum(-math.log(len(at) / total) for at in objects) / len(objects) if objects else 0.0)
        per_object.append(math.log(len(objects)) if objects else 0.0)
        with_bos.append(math.log(len(objects) + 1) if objects else 0.0)
    assert max(len(named_patches(r, m)) for r, m in mentions) >= 3, "the sample should count three objects"
    mean = lambda values: sum(values) / len(mentions)
    loss = lambda spread, targets: attention_losses(batch, {1: attention(spread)}, TrainConfig(retrieve_targets=targets),
                                                    ("retrieve",))["retrieve"].item()
    assert loss("patches", "mention") == pytest.approx(0.0, abs=1e-5)
    assert loss("patches", "objects") == pytest.approx(mean(even), rel=1e-5)
    assert loss("objects", "objects") == pytest.approx(mean(per_object), rel=1e-5)
    assert loss("objects+bos", "objects+bos") == pytest.approx(mean(with_bos), rel=1e-5)
    assert mean(even) > mean(per_object) > 0
    with pytest.raises(ValueError, match="retrieve_targets must be one of mention, objects, objects"):
        TrainConfig(retrieve_targets="all")
    with pytest.raises(ValueError, match=r"count_focus is a share of scenes, in \[0, 1\]; got 1.5"):
        TrainConfig(count_focus=1.5)


def test_answerable_drops_exactly_the_questions_whose_named_object_lost_every_token():
    from hivtp.toy.data import QAItem
    from hivtp.toy.train import answerable
    from hivtp.world import Obj, Scene

    scene = Scene(336, 336, [Obj("red", "circle", "small", 60.0, 60.0, 32.0), Obj("blue", "circle", "large", 250.0, 250.0, 70.0),
                             Obj("green", "square", "large", 80.0, 250.0, 70.0)])
    labels = patch_labels(scene)  # [576]
    red = KINDS.index(("red", "circle")) + 1
    hidden = labels[labels != red]  # what a selection that dropped every red-circle token keeps
    prompts = {  # prompt -> answerable once the red circle is hidden
        "How many circles are there in the image?": False,  # names both circles
        "How many squares are there in the image?": True,
        "Is there a red circle in the image?": False,
        "Is there a yellow triangle in the image?": True,  # names nothing that is there
        "Is the green square on the left of the blue circle?": True,
        "Is the red circle on the left of the blue circle?": False,
        "What color is the square?\nA. red\nB. green\nC. blue": True,  # options are not what it asks about
    }
    items = [QAItem(0, "any", p, "x") for p in prompts]
    assert answerable(items, [scene], labels.unsqueeze(0)) == items  # nothing hidden: every question stays
    kept = answerable(items, [scene], hidden.unsqueeze(0))
    assert [it.prompt for it in kept] == [p for p, ok in prompts.items() if ok]
    partly = torch.cat([hidden, torch.tensor([red])])  # one red-circle token is enough evidence
    assert answerable(items, [scene], partly.unsqueeze(0)) == items


def test_batches_skip_hidden_answers_only_when_told_and_only_on_pruned_steps(untrained):
    from hivtp.toy.train import batch_at

    _, processor = untrained
    truth, skip = TrainConfig(hidden_answers="truth"), TrainConfig(hidden_answers="skip")
    skipped_any = False
    for step in range(1300, 1306):
        a, b = batch_at(truth, processor, step, 576), batch_at(skip, processor, step, 576)
        assert (a.keep is None) == (b.keep is None) and (a.keep is None or torch.equal(a.keep, b.keep))
        rows_a = [tuple(r[m.bool()].tolist()) for r, m in zip(a.input_ids, a.attention_mask)]
        rows_b = [tuple(r[m.bool()].tolist()) for r, m in zip(b.input_ids, b.attention_mask)]
        assert set(rows_b) <= set(rows_a)
        if a.keep is None:
            assert rows_a == rows_b  # nothing is hidden when every token is kept
        skipped_any |= len(rows_b) < len(rows_a)
    assert skipped_any
    with pytest.raises(ValueError, match="hidden_answers must be one of truth, skip"):
        TrainConfig(hidden_answers="mask")


def test_the_training_world_changes_the_pixels_and_nothing_else(untrained):
    """A run on the textured or the cluttered world trains on the plain world's questions, answers, patch
    labels and drop patterns; only the images differ (and differ in every one)."""
    from hivtp.toy.train import batch_at

    _, processor = untrained
    plain = TrainConfig(world="plain")
    for world in ("textured", "cluttered"):
        other = TrainConfig(world=world)
        for step in (0, 1300, 1301):
            a, b = batch_at(plain, processor, step, 576), batch_at(other, processor, step, 576)
            assert torch.equal(a.patch_labels, b.patch_labels)
            assert (a.keep is None) == (b.keep is None) and (a.keep is None or torch.equal(a.keep, b.keep))
            assert (a.input_ids is None and b.input_ids is None) or torch.equal(a.input_ids, b.input_ids)
            assert all(not torch.equal(x, y) for x, y in zip(a.pixel_values, b.pixel_values))
        images, items = held_out_items(seed=1, per_family=2, world=world)
        assert [(i.prompt, i.target) for i in items] == [(i.prompt, i.target) for i in held_out_items(seed=1, per_family=2, world="plain")[1]]
    with pytest.raises(ValueError, match="world must be one of plain, textured, cluttered"):
        TrainConfig(world="busy")


def test_count_focus_draws_shape_heavy_scenes_and_counts_their_commonest_shape():
    from collections import Counter

    def answers(focus: float) -> tuple[Counter, list]:
        _, items, scenes = sample_items(9, 0, num_images=400, questions_per_image=1, families=("count",),
                                        with_scenes=True, count_focus=focus)
        return Counter(int(it.target) for it in items), list(zip(items, scenes))

    plain, _ = answers(0.0)
    focused, pairs = answers(1.0)
    for item, scene in pairs:  # every count question counts a shape no other shape outnumbers
        assert int(item.target) == max(scene.count(shape=s) for s in ("circle", "square", "triangle"))
    assert focused[3] + focused[4] > 3 * (plain[3] + plain[4]) and focused[0] == 0


def test_mention_probes_read_the_named_objects_count_and_place(untrained):
    """The probe targets, brute force from the scenes: a probe whose read-out is the true answer
    (count one-hot * 50, place) has near-zero loss; a shuffled one does not."""
    from hivtp.toy.objectives import aux_heads

    model, processor = untrained
    images, items, scenes = sample_items(4, 2, num_images=6, questions_per_image=4, with_scenes=True)
    batch = encode_items(processor, images, items, model.config.image_seq_length)
    batch.patch_labels = torch.stack([patch_labels(s) for s in scenes])
    truth = []  # (row, position, count, place or None) per mention
    for row, item in enumerate(items):
        scene = scenes[item.image]
        for m in batch.mentions[row]:
            named = [o for o in scene.objects if m.colour in (None, o.colour) and m.shape in (None, o.shape)]
            place = None
            if len(named) == 1:
                cells = (patch_labels(scene).view(24, 24) == KINDS.index(named[0].kind) + 1).nonzero().float().mean(0) / 23
                place = cells.flip(0)  # (column, row)
            truth.append((row, m.at, len(named), place))
    probes = aux_heads(model, 0).mention
    width = model.config.text_config.hidden_size
    hidden = torch.zeros(len(items), batch.input_ids.shape[1] - batch.prefix_len, width)
    for row, at, count, place in truth:  # write the answer into the hidden state; identity read-outs
        hidden[row, at - batch.prefix_len, count] = 50.0
        if place is not None:
            hidden[row, at - batch.prefix_len, 5:7] = place
    with torch.no_grad():
        probes.count.weight.zero_(), probes.count.bias.zero_(), probes.where.weight.zero_(), probes.where.bias.zero_()
        probes.count.weight[:, :5] = torch.eye(5)
        probes.where.weight[:, 5:7] = torch.eye(2)
        right = probes(batch, hidden)
        wrong = probes(batch, hidden.roll(1, dims=-1))
    assert right["count_probe"].item() < 1e-6 and right["where_probe"].item() < 1e-10
    assert wrong["count_probe"].item() > 1 and wrong["where_probe"].item() > 1e-3
    assert {c for *_, c, _ in truth} >= {0, 1} and any(pl is not None for *_, pl in truth)


def test_breakdown_script_reports_mme_categories_and_relation_answers():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "scripts" / "toy_breakdown.py"), "--scenes", "4"], cwd=root,
                         capture_output=True, text=True, check=True, env={**__import__("os").environ, "PYTHONPATH": str(root)}).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| mme") or line.startswith("| relation")]
    assert rows and all(0 <= float(acc) <= 1 and int(n) > 0 for _, n, acc, _ in rows)
    assert {g.split()[1] for g, *_ in rows if g.startswith(" mme")} <= {"existence", "count", "color", "position"}
    for _, n, acc, misses in rows:  # the wrong answers number exactly the misses
        assert sum(int(m.rsplit("x", 1)[1]) for m in misses.split(", ") if m.strip()) == round(int(n) * (1 - float(acc)))
    counts = [line.split("|")[1].split() for line in out.splitlines() if line.startswith("| count")]
    assert counts and all(int(g[1]) in range(5) and " ".join(g[2:]) in ("", "all large", "with a small one") for g in counts)
    assert all((int(g[1]) == 0) == (len(g) == 2) for g in counts)  # "count 0" has nothing to be small or large


def test_ridge_r2_is_one_for_a_linear_target_and_near_zero_for_noise():
    from hivtp.toy.probe import ridge_r2

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    linear = x @ torch.randn(16, 2, generator=g) + 3.0
    noise = torch.randn(400, 2, generator=g)
    assert ridge_r2(x[:300], linear[:300], x[300:], linear[300:], ridge=1e-8).min() > 0.999
    assert ridge_r2(x[:300], noise[:300], x[300:], noise[300:]).max() < 0.1


def test_position_probe_script_reads_a_training_state_and_a_checkpoint(tmp_path):
    """The script's two inputs: the shipped checkpoint by name, and a training state (``last.pt``)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hivtp.toy.forward import build

    model, _ = build(0)
    torch.save({"model": model.state_dict()}, tmp_path / "last.pt")
    root = Path(__file__).resolve().parents[1]
    for source in ("toy-llava", str(tmp_path / "last.pt")):
        out = subprocess.run([sys.executable, str(root / "scripts" / "toy_position_probe.py"), "--model", source, "--scenes", "8"],
                             cwd=root, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(root)}).stdout
        rows = {line.split("|")[1].strip(): [float(v) for v in line.split("|")[2:4]] for line in out.splitlines()
                if line.startswith("| encoder") or line.startswith("| projected")}
        assert set(rows) == {"encoder", "projected"} and all(v <= 1 for r in rows.values() for v in r)


def test_position_probe_pairs_each_object_patch_with_its_place(untrained, monkeypatch):
    """With feature tokens that hold each patch's own (column, row) and noise, R^2 is ~1 for both
    token kinds (identity projector); with the patches' places shuffled it is far below."""
    import importlib

    from hivtp.toy.probe import position_r2

    forward = importlib.import_module("hivtp.toy.forward")

    model, processor = untrained
    where = forward.cell_positions(24)  # [P, 2]

    def tokens(order):
        def feature_layer(_model, pixels):  # [B, P, 4]: (column, row) of the patch, then noise
            g = torch.Generator().manual_seed(pixels.shape[0])
            return torch.cat([where[order].expand(pixels.shape[0], -1, -1), torch.randn(pixels.shape[0], 576, 2, generator=g)], -1)
        return feature_layer

    monkeypatch.setattr(model.model, "multi_modal_projector", torch.nn.Identity())
    monkeypatch.setattr(forward, "feature_layer", tokens(torch.arange(576)))
    right = position_r2(model, processor, scenes=16)
    monkeypatch.setattr(forward, "feature_layer", tokens(torch.randperm(576, generator=torch.Generator().manual_seed(0))))
    wrong = position_r2(model, processor, scenes=16)
    assert min(min(v) for v in right.values()) > 0.99
    assert max(max(v) for v in wrong.values()) < 0.5


def test_make_toy_model_says_whether_its_weights_equal_the_ones_they_replace(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_toy", Path(__file__).resolve().parents[1] / "scripts" / "train_toy.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "model"
    argv = ["--steps", "2", "--log-every", "100", "--out", str(out)]
    script.main(argv + ["--work-dir", str(tmp_path / "run1")])
    assert "wrote new weights" in capsys.readouterr().out
    machine = json.loads((out / "hivtp_build.json").read_text())["trained_on"]  # which CPU and software trained them
    assert machine["device_name"] and machine["torch"] == torch.__version__ and machine["cpu_capability"]
    script.main(argv + ["--work-dir", str(tmp_path / "run2")])  # a fresh run of the same recipe on this machine
    assert "equal, bit for bit" in capsys.readouterr().out
    cfg = TrainConfig(steps=2, log_every=100)
    recorded = json.loads((out / "train_config.json").read_text())
    told = script.compare_weights(("0" * 64, recorded), out, cfg)  # as if another machine had written them
    assert "which this recipe trained" in told and f"--model {out}" in told
    assert "git restores" not in told  # not the shipped folder: git has nothing to restore there
    from hivtp.toy.train import recorded_recipe

    shipped = recorded_recipe(json.loads((script.SHIPPED / "train_config.json").read_text()))
    told = script.compare_weights(("0" * 64, shipped), script.SHIPPED, TrainConfig(**shipped))  # reads, writes nothing
    assert "which this recipe trained" in told and "git restores the shipped weights" in told
    told = script.compare_weights(("0" * 64, {**recorded, "seed": 5}), out, cfg)
    assert "another recipe trained (seed: 5 -> 0)" in told and "calibrate" not in told

"""The procedural world: determinism, answers checked against the rendered pixels and geometry,
POPE negative strategies, and prompts identical to lmms-eval's own doc_to_text."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

from hivtp.world import CLUTTER_COLOURS, COLOURS, FAMILIES, KINDS, ask, draw_scene, prompt_text, render, target_text
from hivtp.world.questions import MIN_DX
from hivtp.world.scene import BACKGROUND, GAP

SCENES = [draw_scene(np.random.default_rng([7, i]), world="plain") for i in range(60)]


def test_same_seed_same_scene_image_and_questions():
    a, b = draw_scene(np.random.default_rng(3)), draw_scene(np.random.default_rng(3))
    assert a == b
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    qa = [ask(a, f, np.random.default_rng(1)) for f in FAMILIES]
    qb = [ask(b, f, np.random.default_rng(1)) for f in FAMILIES]
    assert qa == qb


def test_square_and_non_square_canvases_and_objects_inside_the_central_square():
    assert {s.width == s.height for s in SCENES} == {True, False}
    for s in SCENES:
        side = min(s.width, s.height)
        left, top = (s.width - side) / 2, (s.height - side) / 2
        assert 1 <= len(s.objects) <= 4 and len({o.kind for o in s.objects}) == len(s.objects)
        for o in s.objects:
            assert left <= o.x - o.side / 2 and o.x + o.side / 2 <= left + side
            assert top <= o.y - o.side / 2 and o.y + o.side / 2 <= top + side
        for i, a in enumerate(s.objects):  # boxes never overlap
            for b in s.objects[i + 1 :]:
                assert abs(a.x - b.x) >= (a.side + b.side) / 2 or abs(a.y - b.y) >= (a.side + b.side) / 2


def test_rendered_pixels_have_each_objects_colour_and_small_objects_exist():
    sizes = set()
    for s in SCENES[:20]:
        img = np.asarray(render(s))
        for o in s.objects:
            y = o.y + (o.side / 4 if o.shape == "triangle" else 0)  # inside the triangle's wide half
            assert tuple(img[int(y), int(o.x)]) == COLOURS[o.colour]
            sizes.add(o.size)
    assert sizes == {"small", "large"}


def _stated_kind(question: str) -> tuple[str, str]:
    words = question.rstrip("?").split()
    i = words.index("in")
    return words[i - 2], words[i - 1]


@pytest.mark.parametrize("strategy", ["random", "popular", "adversarial"])
def test_pope_questions_are_balanced_and_negatives_follow_the_strategy(strategy):
    for i, s in enumerate(SCENES):
        qs = ask(s, "exist", np.random.default_rng(i), strategy=strategy)
        assert [q.answer for q in qs] == ["yes", "no"]
        pos, neg = (_stated_kind(q.question) for q in qs)
        assert pos in s.kinds and neg not in s.kinds and neg in KINDS
        if strategy == "adversarial":
            assert any(neg[0] == c or neg[1] == sh for c, sh in s.kinds)


def test_gqa_like_answers_follow_from_the_scene():
    for i, s in enumerate(SCENES):
        rng = np.random.default_rng(i)
        for q in ask(s, "attribute", rng):
            colour, shape = q.meta["object"].split()
            assert q.answer == (colour if q.meta["asks"] == "color" else shape)
        for q in ask(s, "relation", rng):
            a, b = s.find(*q.meta["object"].split()), s.find(*q.meta["other"].split())
            assert abs(a.x - b.x) >= MIN_DX * min(s.width, s.height) / 336
            assert q.answer == ("left" if a.x < b.x else "right")
        (q,) = ask(s, "count", rng)
        assert q.answer == str(sum(o.shape == q.meta["shape"] for o in s.objects))


def test_count_of_a_named_shape_and_kind_weights_that_favour_a_shape():
    for i, s in enumerate(SCENES[:20]):
        for shape in ("circle", "square", "triangle"):
            (q,) = ask(s, "count", np.random.default_rng(i), shape=shape)
            assert q.question == f"How many {shape}s are there?" and q.answer == str(s.count(shape=shape))
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        ask(SCENES[0], "count", np.random.default_rng(0), shape="star")
    squares_only = np.array([1.0 if shape == "square" else 0.0 for _, shape in KINDS]) / 4
    for i in range(10):
        scene = draw_scene(np.random.default_rng(i), num_objects=4, kind_weights=squares_only)
        assert scene.count(shape="square") == len(scene.objects) == 4


def test_mme_pairs_one_true_one_false_and_choice_indices():
    for i, s in enumerate(SCENES):
        rng = np.random.default_rng(i)
        qs = ask(s, "mme", rng)
        assert [q.answer for q in qs] == ["Yes", "No"]
        assert all(q.question.endswith(" Please answer yes or no.") for q in qs)
        for q in ask(s, "choice", rng):
            colour, shape = q.meta["object"].split()
            assert q.choices[q.answer] == (colour if q.meta["asks"] == "color" else shape)
            assert len(set(q.choices)) == len(q.choices) == 3


# --- the cluttered world (issue 19, item 2) ------------------------------------------------------------------
CLUTTERED = [draw_scene(np.random.default_rng([7, i]), world="cluttered") for i in range(60)]


def test_cluttered_world_has_the_plain_worlds_objects_and_questions():
    """Same seed, same objects, same questions and answers: before/after measurements compare the very
    same questions; only the pixels around the objects change."""
    for i, (plain, cluttered) in enumerate(zip(SCENES, CLUTTERED)):
        assert (plain.width, plain.height, plain.objects, plain.seed_noise) == \
            (cluttered.width, cluttered.height, cluttered.objects, cluttered.seed_noise)
        assert not plain.clutter and not plain.texture and plain.world == "plain"
        assert cluttered.texture and cluttered.world == "cluttered"
        for family in FAMILIES:
            assert ask(plain, family, np.random.default_rng(i)) == ask(cluttered, family, np.random.default_rng(i))
    assert sum(len(s.clutter) for s in CLUTTERED) >= 3 * len(CLUTTERED)
    with pytest.raises(ValueError, match="world must be one of plain, textured, cluttered"):
        draw_scene(np.random.default_rng(0), world="busy")


def test_textured_world_is_the_cluttered_worlds_texture_without_its_distractors():
    for i, cluttered in enumerate(CLUTTERED[:20]):
        textured = draw_scene(np.random.default_rng([7, i]), world="textured")
        assert (textured.objects, textured.texture, textured.clutter, textured.world) == \
            (cluttered.objects, cluttered.texture, [], "textured")
        pixels = np.asarray(render(textured)).astype(int)
        plain = np.asarray(render(SCENES[i])).astype(int)
        assert np.abs(pixels - plain).max() > 10  # the texture shows ...
        # ... and nothing in a palette colour is added: every pixel within 24 levels of a palette colour
        # here is one in the plain world too (the object pixels; the oracle's rule)
        palette = np.array(list(COLOURS.values()))
        near = lambda img: (np.abs(img[:, :, None, :] - palette).max(-1) <= 24).any(-1)  # noqa: E731
        assert not (near(pixels) & ~near(plain)).any()


def test_distractors_stay_clear_of_every_object_and_objects_keep_their_pixels():
    """No distractor box comes within GAP of an object's box (brute force over the rendered pixels: every
    pixel of an object's box that the plain world draws in a palette colour is that colour here too)."""
    for plain, cluttered in zip(SCENES[:20], CLUTTERED[:20]):
        scale = min(cluttered.width, cluttered.height) / 336
        for d in cluttered.clutter:
            hx, hy = d.half_extent
            for o in cluttered.objects:
                assert abs(d.x - o.x) >= hx + o.side / 2 + GAP * scale or abs(d.y - o.y) >= hy + o.side / 2 + GAP * scale
        a, b = np.asarray(render(plain)), np.asarray(render(cluttered))
        palette = np.array(list(COLOURS.values()))
        in_palette = (a[:, :, None, :] == palette[None, None]).all(-1).any(-1)  # [H, W]
        assert in_palette.any() and np.array_equal(a[in_palette], b[in_palette])
        assert not (b[~in_palette][:, None, :] == palette[None]).all(-1).any()  # nothing else is a palette colour
        assert (a != b).any(-1).mean() > 0.5  # the texture changes most of the background


def test_nothing_but_objects_comes_near_a_palette_colour():
    """The oracle's object-pixel rule (within 24 levels of a palette colour) rests on these margins: a
    distractor colour >= 80 levels from every palette colour on some channel, any blend of one with the
    textured background >= 55, the background itself >= 90 (its extremes: texture +-30 per channel,
    noise +-6 on all channels)."""
    palette = np.array(list(COLOURS.values()), dtype=float)

    def distance(low, high) -> float:
        """The least, over every colour in the box [low, high] (per channel), of its distance to the
        palette: per palette colour, the box's nearest point is found channel by channel."""
        gap = np.maximum(np.maximum(low - palette, palette - high), 0)  # [K, 3] per channel
        return float(gap.max(axis=1).min())

    low, high = np.array(BACKGROUND) - 36.0, np.array(BACKGROUND) + 36.0  # every background colour
    assert min(distance(np.array(c, float), np.array(c, float)) for c in CLUTTER_COLOURS.values()) >= 80
    assert distance(low, high) >= 90
    # a blend t * distractor + (1 - t) * background, over every background colour, is again a box
    blends = [distance(t * np.array(c) + (1 - t) * low, t * np.array(c) + (1 - t) * high)
              for c in CLUTTER_COLOURS.values() for t in np.linspace(0, 1, 201)]
    assert min(blends) >= 55


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown question family"):
        ask(SCENES[0], "ocr", np.random.default_rng(0))


def _lmms_utils(task: str):
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None:
        pytest.fail("lmms-eval is part of the test environment (make setup installs it)")
    path = Path(spec.origin).parent / "tasks" / task / "utils.py"
    module_spec = importlib.util.spec_from_file_location(f"_lmms_{task}_utils", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_prompts_equal_lmms_evals_doc_to_text():
    """The toy model is trained on hivtp.world.prompts; the offline tasks use lmms-eval's functions."""
    short = {"pre_prompt": "", "post_prompt": "\nAnswer the question using a single word or phrase."}
    sqa_kw = {"format": "default", "pre_prompt": "", "post_prompt": "\nAnswer with the option's letter from the given choices directly."}
    pope, gqa, mme, sqa = (_lmms_utils(t) for t in ("pope", "gqa", "mme", "scienceqa"))
    checked = set()
    for i, s in enumerate(SCENES):
        for family in FAMILIES:
            for q in ask(s, family, np.random.default_rng(i)):
                doc = {"question": q.question, "hint": "", "choices": list(q.choices)}
                expected = {
                    "exist": lambda: pope.pope_doc_to_text(doc, short),
                    "attribute": lambda: gqa.gqa_doc_to_text(doc, short),
                    "relation": lambda: gqa.gqa_doc_to_text(doc, short),
                    "count": lambda: gqa.gqa_doc_to_text(doc, short),
                    "mme": lambda: mme.mme_doc_to_text(doc, short),
                    "choice": lambda: sqa.sqa_doc_to_text(doc, sqa_kw),
                }[family]()
                assert prompt_text(q) == expected
                checked.add(family)
    assert checked == set(FAMILIES)


def test_targets_score_as_correct_under_lmms_evals_rules():
    pope, mme, sqa = (_lmms_utils(t) for t in ("pope", "mme", "scienceqa"))
    for i, s in enumerate(SCENES[:10]):
        rng = np.random.default_rng(i)
        for q in ask(s, "exist", rng):
            doc = {"answer": q.answer, "question_id": 0}
            assert pope.pope_process_results(doc, [" " + target_text(q)])["pope_accuracy"]["score"] == 1.0
        for q in ask(s, "mme", rng):
            doc = {"answer": q.answer, "question_id": 0, "category": "existence"}
            assert mme.mme_process_results(doc, [target_text(q)])["mme_perception_score"]["score"] == 1.0
        for q in ask(s, "choice", rng):
            doc = {"answer": q.answer, "choices": list(q.choices)}
            assert sqa.sqa_process_results(doc, [target_text(q)])["exact_match"] == 1.0

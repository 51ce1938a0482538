"""The offline-only ``oracle`` (issue 19, item 3): it keeps the patches a procedural scene's objects
cover, most covered first, then their nearest neighbours; it is planned offline at every budget, never
for the paper profile, never timed, refused on Qwen2.5-VL, and shown as the reference in results.

Scenes are hand-built on the 24 x 24 grid of 14 px patches of a 336 px image (which the processor
neither resizes nor crops). PIL fills a box's both end pixels, so a square of side ``14 n - 1`` whose
box starts on a patch boundary covers exactly ``n x n`` patches. Expected positions are worked out in
the comments or come from an independent brute force on the raw RGB image."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from results_fixtures import DIFF_HIVTP, acc_row, latency_frame, with_intervals
from test_configs import _reproduce

import hivtp
from hivtp.methods import CropBatch, build_method
from hivtp.results import ACCURACY_COLUMNS, ledger_markdown
from hivtp.results.tables import accuracy_text_table, to_latex
from hivtp.toy.data import chat_prompt, patch_labels
from hivtp.vision import TowerOutput
from hivtp.world import COLOURS, Scene, draw_scene, render
from hivtp.world.scene import BACKGROUND, Obj
from hivtp.zoo import load_pretrained

PATCH, GRID = 14, 24


@pytest.fixture(scope="module")
def toy():
    return load_pretrained("toy-llava")


def square(colour: str, row: float, col: float, n: int) -> Obj:
    """A square whose pixels are exactly patch rows ``row .. row + n - 1`` and columns ``col ..``
    (fractional ``row`` / ``col``: shifted by that share of a patch)."""
    side = PATCH * n - 1
    return Obj(colour, "square", "large", PATCH * col + side / 2, PATCH * row + side / 2, float(side))


def inputs_for(processor, scenes: list[Scene]) -> dict:
    prompts = [chat_prompt(processor, "Is there a red square in the image?")] * len(scenes)
    return dict(processor(images=[render(s) for s in scenes], text=prompts, return_tensors="pt", padding=True))


def kept(toy, scenes: list[Scene], **params) -> list[list[int]]:
    """The raster positions the oracle keeps in each scene's crop."""
    pruned = hivtp.attach(toy[0], "oracle", **params)
    layout = pruned.layout(inputs_for(toy[1], scenes)["pixel_values"])
    return [p.tolist() for p in pruned.select_tokens(pruned.run_vision(layout), layout).positions]


def block(rows: range, cols: range) -> list[int]:
    return sorted(r * GRID + c for r in rows for c in cols)


def brute_force_covered(scene: Scene) -> list[int]:
    """Patches with any pixel whose colour differs from the world's background by more than the
    noise (independent of the oracle: raw RGB, the known background, no normalisation, no palette).
    Plain world only; ``brute_force_palette`` is the cluttered world's."""
    rgb = np.asarray(render(scene), dtype=np.int64)  # [336, 336, 3]
    objects = (np.abs(rgb - np.array(BACKGROUND)) > 6).any(-1)
    per_patch = objects.reshape(GRID, PATCH, GRID, PATCH).any(axis=(1, 3)).reshape(-1)
    return np.flatnonzero(per_patch).tolist()


def brute_force_palette(scene: Scene) -> list[int]:
    """Patches with any pixel drawn exactly in a palette colour (raw RGB of a 336 px canvas, which the
    processor neither resizes nor crops)."""
    rgb = np.asarray(render(scene), dtype=np.int64)  # [336, 336, 3]
    objects = (rgb[:, :, None, :] == np.array(list(COLOURS.values()))[None, None]).all(-1).any(-1)
    per_patch = objects.reshape(GRID, PATCH, GRID, PATCH).any(axis=(1, 3)).reshape(-1)
    return np.flatnonzero(per_patch).tolist()


# --- which patches ----------------------------------------------------------------------------------------
def test_keeps_exactly_the_object_patches_of_an_aligned_scene(toy):
    # red: patch rows 2-5 x columns 3-6 (16 patches); blue: rows 15-16 x columns 18-19 (4 patches)
    scene = Scene(336, 336, [square("red", 2, 3, 4), square("blue", 15, 18, 2)], seed_noise=3)
    objects = patch_labels(scene).nonzero().flatten().tolist()  # brute force: the object under each patch centre
    assert objects == block(range(2, 6), range(3, 7)) + block(range(15, 17), range(18, 20))
    pruned = hivtp.attach(toy[0], "oracle", budget=len(objects))
    inputs = inputs_for(toy[1], [scene])
    layout = pruned.layout(inputs["pixel_values"])
    assert pruned.select_tokens(pruned.run_vision(layout), layout).positions[0].tolist() == objects
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    stats = pruned.last_stats[0]
    assert (stats["tokens_kept"], stats["tokens_covered"], stats["tokens_total"]) == (20, 20, 576)


def test_most_covered_patches_first(toy):
    # A 56 px square shifted by half a patch: pixels 7..62 on both axes, so patch rows / columns 0 and 4
    # hold 7 of its 14 pixel lines. Coverage: the 3 x 3 interior (rows / columns 1-3) 196 pixels, the
    # 12 edge patches 98, the 4 corners 49.
    scene = Scene(336, 336, [square("green", 0.5, 0.5, 4)], seed_noise=5)
    interior = block(range(1, 4), range(1, 4))
    edges = [1, 2, 3, 24, 28, 48, 52, 72, 76, 97, 98, 99]
    assert kept(toy, [scene], budget=9) == [interior]  # partially covered patches are dropped first
    assert kept(toy, [scene], budget=10) == [sorted(interior + [1])]  # a tie goes to the lower raster index
    assert kept(toy, [scene], budget=21) == [sorted(interior + edges)]  # the corners (49 pixels) are out
    assert kept(toy, [scene], budget=25) == [block(range(5), range(5))]


def test_fill_rule_nearest_uncovered_patches_then_raster_order(toy):
    # a 2 x 2 object at rows / columns 5-6; ring 1 around it is rows / columns 4-7 (12 patches)
    scene = Scene(336, 336, [square("yellow", 5, 5, 2)], seed_noise=7)
    covered = block(range(5, 7), range(5, 7))
    assert kept(toy, [scene], budget=4) == [covered]
    assert kept(toy, [scene], budget=16) == [block(range(4, 8), range(4, 8))]
    # 5 of ring 1, lowest raster index first: (4, 4) (4, 5) (4, 6) (4, 7) (5, 4)
    assert kept(toy, [scene], budget=9) == [sorted(covered + [100, 101, 102, 103, 124])]
    # ring 1 complete, then the first of ring 2 (rows / columns 3-8): (3, 3)
    assert kept(toy, [scene], budget=17) == [sorted(block(range(4, 8), range(4, 8)) + [75])]
    # no object at all: raster order
    assert kept(toy, [Scene(336, 336, [], seed_noise=9)], budget=5) == [[0, 1, 2, 3, 4]]


def test_keeps_the_brute_force_object_patches_of_random_world_scenes(toy):
    """Unaligned circles, triangles and squares: at a budget equal to their patch count, the kept
    patches are exactly those holding any object pixel."""
    rng = np.random.default_rng(11)
    scenes = [draw_scene(rng, size=(336, 336), world="plain") for _ in range(4)]
    for scene in scenes:
        covered = brute_force_covered(scene)
        assert covered and kept(toy, [scene], budget=len(covered)) == [covered]


def test_keeps_the_object_patches_among_texture_and_distractors(toy):
    """The cluttered world (texture, bars and crosses in muted colours): the kept patches are still
    exactly the objects'. A rule that takes whatever differs from the background (the oracle's rule
    before the cluttered world) keeps distractor patches instead, which is what this test catches."""
    rng = np.random.default_rng(14)
    scenes = [draw_scene(rng, size=(336, 336), world="cluttered") for _ in range(4)]
    for scene in scenes:
        covered = brute_force_palette(scene)
        assert len(scene.clutter) >= 3 and covered == brute_force_covered(Scene(336, 336, scene.objects, scene.seed_noise))
        under_clutter = {int(d.y) // PATCH * GRID + int(d.x) // PATCH for d in scene.clutter}  # each distractor's centre patch
        assert under_clutter <= set(brute_force_covered(scene)) - set(covered)  # a contrast rule would keep them
        assert kept(toy, [scene], budget=len(covered)) == [covered]


# --- budgets, batches ---------------------------------------------------------------------------------------
def test_exact_budgets_below_at_and_above_the_covered_count(toy):
    rng = np.random.default_rng(12)
    scenes = [draw_scene(rng, size=(336, 336), num_objects=n) for n in (1, 4)]
    covered = [len(brute_force_palette(s)) for s in scenes]
    inputs = inputs_for(toy[1], scenes)
    for budget in (1, 8, 64, 192, 576):
        pruned = hivtp.attach(toy[0], "oracle", budget=budget)
        pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
        assert [s["tokens_kept"] for s in pruned.last_stats] == [budget] * 2
        assert [s["tokens_covered"] for s in pruned.last_stats] == [min(budget, c) for c in covered]


def test_a_batch_keeps_what_each_scene_keeps_alone(toy):
    rng = np.random.default_rng(13)
    scenes = [draw_scene(rng, size=size) for size in ((336, 336), (448, 336), (672, 672))]
    together = kept(toy, scenes, budget=40)
    assert [kept(toy, [s], budget=40)[0] for s in scenes] == together


# --- where it cannot run -------------------------------------------------------------------------------------
def test_refused_on_qwen_before_any_model_work(tiny_qwen):
    model = tiny_qwen[0]
    calls = []
    handle = model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(hivtp.ConfigError, match="oracle.*pixels.*LLaVA"):
            hivtp.attach(model, "oracle", budget=64)
    finally:
        handle.remove()
    assert calls == []


def test_a_crop_batch_without_pixels_and_bad_thresholds_are_clear_errors():
    crops = CropBatch(features=torch.zeros(1, 16, 2), grid=(4, 4), tower=TowerOutput(hidden_states={}), budgets=[4])
    with pytest.raises(hivtp.ConfigError, match="pixels"):
        build_method("oracle", budget=4).select(crops)
    for bad in (0, 255, -1, "24", True):
        with pytest.raises(hivtp.ConfigError, match="threshold"):
            build_method("oracle", threshold=bad)
    assert build_method("oracle").params() == {"budget": None, "threshold": 24.0}


# --- plans: offline at every budget, never in the paper profile, never timed -----------------------------
def test_offline_plan_runs_the_oracle_at_every_budget_and_never_times_it():
    r = _reproduce()
    plan = r.offline_plan("toy-llava", r.available_baselines(), 4)
    runs = [ov for ov in plan if "method=oracle" in ov]
    assert sorted(int(next(o for o in ov if o.startswith("method.params.budget=")).split("=")[1]) for ov in runs) \
        == sorted(r.BUDGETS)
    (latency,) = [ov for ov in plan if "mode=latency" in ov]
    timed = next(o for o in latency if o.startswith("latency.methods="))
    assert "random:budget=" in timed and "oracle" not in timed
    assert not any("oracle" in o for ov in r.paper_plan() for o in ov)


def test_bench_gpu_never_times_the_oracle():
    """make bench-gpu's plan (hivtp.latency.bench) times registered baselines (random among them), not the oracle."""
    from hivtp.latency.bench import plan

    for job in plan():
        names = {name for name, _ in job.methods}
        assert "random" in names and "oracle" not in names, job.name


# --- results: the reference, not a competitor ------------------------------------------------------------
def _with_oracle() -> pd.DataFrame:
    """with_intervals() plus oracle@64 rows whose paired difference to HIVTP@64 excludes zero (as the
    collector computes it for every row): a competing method would get marks and ledger lines."""
    rows = pd.DataFrame([acc_row("oracle", {"budget": 64}, "pope", 0.85, metric="f1", tokens=64),
                         acc_row("oracle", {"budget": 64}, "gqa", 0.48, tokens=64)], columns=ACCURACY_COLUMNS)
    rows["ci_low"], rows["ci_high"] = rows["value"] - 0.05, rows["value"] + 0.05
    rows[DIFF_HIVTP] = [[0.13, 0.05, 0.20], [0.08, 0.02, 0.15]]
    return pd.concat([with_intervals(), rows], ignore_index=True)


def test_tables_show_the_oracle_as_the_reference_with_its_interval_and_no_mark():
    table = accuracy_text_table(_with_oracle())
    label = "oracle (reference, offline only)"
    assert [m for m in dict.fromkeys(table.index.get_level_values("method"))][:2] == ["none", label]
    assert table.loc[(label, "64"), "pope"] == "0.85 ± 0.05" and table.loc[(label, "64"), "gqa"] == "0.48 ± 0.05"
    tex = to_latex(table)
    assert tex.count("\\midrule") == 3  # under the header, the unpruned row and the reference


def test_ledger_does_not_compare_hivtp_with_the_oracle():
    offline = ledger_markdown(_with_oracle(), latency_frame().iloc[:0]).split("## Offline profile")[1]
    assert "oracle" not in offline
    assert "| toy-llava | 64 | random |" in offline  # prior methods are still compared

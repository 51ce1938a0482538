"""Offline mini-benchmark builders: real datasets' columns and splits, determinism, answers that
lmms-eval's own task functions score as correct."""

from __future__ import annotations

import pytest

from eval.builders import build_all, build_gqa, build_mme, build_pope, build_scienceqa_img

SIZE = 8


@pytest.fixture(scope="module")
def built():
    gqa_q, gqa_i = build_gqa(SIZE, seed=0)
    return {"pope": build_pope(SIZE, seed=0), "gqa": gqa_q, "gqa_images": gqa_i,
            "mme": build_mme(SIZE, seed=0), "sqa": build_scienceqa_img(SIZE, seed=0)}


def test_splits_and_columns_match_lmms_lab(built):
    assert set(built["pope"]) == {"adversarial", "popular", "random"}
    assert set(built["pope"]["adversarial"].column_names) == {"id", "question_id", "question", "answer", "image_source", "image", "category"}
    assert set(built["gqa"]) == {"testdev"} and {"id", "imageId", "question", "answer"} <= set(built["gqa"]["testdev"].column_names)
    assert built["gqa_images"]["testdev"].column_names == ["id", "image"]
    assert set(built["mme"]["test"].column_names) == {"question_id", "image", "question", "answer", "category"}
    assert {"image", "question", "choices", "answer", "hint"} <= set(built["sqa"]["test"].column_names)
    for ds in (built["pope"]["random"], built["gqa"]["testdev"], built["mme"]["test"], built["sqa"]["test"]):
        assert len(ds) == SIZE


def test_deterministic_in_seed():
    a, b, c = build_pope(4, seed=3), build_pope(4, seed=3), build_pope(4, seed=4)
    assert a["adversarial"].to_list() == b["adversarial"].to_list()
    assert a["adversarial"].to_list() != c["adversarial"].to_list()


def test_pope_strategies_and_balance(built):
    for split, ds in built["pope"].items():
        assert set(ds["category"]) == {split}
        assert set(ds["answer"]) == {"yes", "no"}


def test_gqa_images_cover_every_question(built):
    assert set(built["gqa"]["testdev"]["imageId"]) <= set(built["gqa_images"]["testdev"]["id"])


def test_mme_pairs_share_an_image_with_yes_and_no(built):
    ds = built["mme"]["test"]
    by_id = {}
    for qid, ans in zip(ds["question_id"], ds["answer"]):
        by_id.setdefault(qid, []).append(ans)
    assert all(sorted(v) == ["No", "Yes"] for v in by_id.values())


def test_lmms_eval_functions_score_the_ground_truth_correct(built):
    """The task functions the YAMLs import (lmms-eval's) accept our rows and score the known answer as right."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval" / "tasks"))
    import hivtp_utils as u

    from hivtp.world.prompts import SHORT_ANSWER

    pope = built["pope"]["adversarial"][0]
    assert u.pope_doc_to_text(pope, {"pre_prompt": "", "post_prompt": SHORT_ANSWER}).endswith(SHORT_ANSWER)
    assert u.pope_doc_to_visual(pope)[0].mode == "RGB"
    assert u.pope_process_results(pope, [pope["answer"].capitalize()])["pope_accuracy"]["score"] == 1.0
    mme = built["mme"]["test"][0]
    assert u.mme_process_results(mme, [mme["answer"]])["mme_perception_score"]["score"] == 1.0
    sqa = built["sqa"]["test"][0]
    letter = u.sqa_doc_to_target(sqa)
    assert u.sqa_process_results(sqa, [letter])["exact_match"] == 1.0
    assert "A." in u.sqa_doc_to_text(sqa, {"format": "default", "pre_prompt": "", "post_prompt": ""})


def test_gqa_doc_to_visual_reads_local_images(built, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval" / "tasks"))
    import hivtp_utils as u

    built["gqa_images"].save_to_disk(str(tmp_path / "gqa_images"))
    monkeypatch.setenv(u.DATA_DIR_ENV, str(tmp_path))
    doc = built["gqa"]["testdev"][0]
    image = u.gqa_doc_to_visual(doc)[0]
    assert image.mode == "RGB" and image.size[0] >= 336
    with pytest.raises(KeyError, match="make data"):
        u.gqa_doc_to_visual({**doc, "imageId": "missing"})


def test_build_data_cli(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "scripts" / "build_data.py"), "--size", "3", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"pope", "gqa_instructions", "gqa_images", "mme", "scienceqa_img", "world.json"}
    bad = subprocess.run([sys.executable, str(root / "scripts" / "build_data.py"), "--size", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--size" in bad.stderr


def test_bad_size_is_a_clear_error():
    with pytest.raises(ValueError, match="size"):
        build_pope(0)


def test_a_larger_build_starts_with_the_same_questions(built):
    """make reproduce reuses a larger build for a smaller limit: the first questions must be the same."""
    smaller = {"pope": build_pope(SIZE // 2, seed=0)["random"], "gqa": build_gqa(SIZE // 2, seed=0)[0]["testdev"],
               "mme": build_mme(SIZE // 2, seed=0)["test"], "sqa": build_scienceqa_img(SIZE // 2, seed=0)["test"]}
    larger = {"pope": built["pope"]["random"], "gqa": built["gqa"]["testdev"], "mme": built["mme"]["test"],
              "sqa": built["sqa"]["test"]}
    for name, ds in smaller.items():
        assert ds.to_list() == larger[name].select(range(len(ds))).to_list(), name


def test_images_hold_the_rendered_scene_exactly(built):
    """The PNGs are lossless: decoding gives back the renderer's pixels (whatever the compression level)."""
    import numpy as np

    from eval.builders import _scenes
    from hivtp.world import render

    _, scene, _ = next(_scenes(0, "pope-adversarial"))
    stored = built["pope"]["adversarial"][0]["image"].convert("RGB")
    assert np.array_equal(np.asarray(stored), np.asarray(render(scene).convert("RGB")))


def test_a_build_records_its_world_and_a_folder_from_another_world_is_rebuilt_or_refused(tmp_path):
    """A dataset folder drawn in another world than the benchmarks' holds the right answers for other
    images: the reproduce driver must rebuild it and the lmms-eval runner refuse it, never read it. A
    partial build records only the folders it wrote; a folder from before worlds were recorded is plain."""
    import json

    from hivtp.lmms.runner import EvalRunError, _prepare
    from hivtp.world import BENCHMARK_WORLD, WORLDS
    from hivtp.world.builds import WORLD_FILE, built_worlds, stale_worlds
    from test_configs import _reproduce

    reproduce = _reproduce()
    build_all(tmp_path, 2, progress=lambda _: None)
    names = {"pope", "gqa_instructions", "gqa_images", "mme", "scienceqa_img"}
    assert built_worlds(tmp_path) == dict.fromkeys(sorted(names), BENCHMARK_WORLD) and reproduce.built_size(tmp_path) == 2
    _prepare(["hivtp_gqa"], tmp_path / "run", tmp_path, None)  # the benchmarks' own world: accepted
    other = next(w for w in WORLDS if w != BENCHMARK_WORLD)
    (tmp_path / WORLD_FILE).write_text(json.dumps({**dict.fromkeys(names, BENCHMARK_WORLD), "mme": other}))
    assert stale_worlds(tmp_path) == {"mme": other} and reproduce.built_size(tmp_path) == 0
    with pytest.raises(EvalRunError, match=f"another world.*mme.*{other}.*make data"):
        _prepare(["hivtp_gqa"], tmp_path / "run", tmp_path, None)
    build_all(tmp_path, 2, benchmarks=("mme",), progress=lambda _: None)  # rebuilding that one folder mends it
    assert stale_worlds(tmp_path) == {} and reproduce.built_size(tmp_path) == 2
    (tmp_path / WORLD_FILE).unlink()  # a build from before worlds were recorded
    assert set(built_worlds(tmp_path).values()) == {"plain"}
    assert reproduce.built_size(tmp_path) == (2 if BENCHMARK_WORLD == "plain" else 0)

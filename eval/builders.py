"""Offline mini-benchmarks in the public lmms-lab datasets' columns and splits, from :mod:`hivtp.world`.

=================  =====================================  ==========================================
dataset dir        mirrors                                splits / columns
=================  =====================================  ==========================================
pope               lmms-lab/POPE (Full)                   adversarial, popular, random: id, question_id,
                                                          question, answer, image_source, image, category
gqa_instructions   lmms-lab/GQA testdev_balanced_instr.   testdev: id, imageId, question, answer,
                                                          fullAnswer, isBalanced
gqa_images         lmms-lab/GQA testdev_balanced_images   testdev: id, image
mme                lmms-lab/MME                           test: question_id, image, question, answer, category
scienceqa_img      lmms-lab/ScienceQA (ScienceQA-IMG)     test: image, question, choices, answer, hint, task,
                                                          grade, subject, topic, category, skill, lecture, solution
=================  =====================================  ==========================================

Every builder is deterministic in (size, seed): the same arguments give byte-identical images and rows.
``size`` is the number of questions per split (MME: rounded down to whole yes/no pairs). The scenes are
drawn in ``hivtp.world.BENCHMARK_WORLD``; ``build_all`` records it per dataset folder
(:mod:`hivtp.world.builds`), so that a folder from another world is rebuilt rather than read.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value

from hivtp.world import BENCHMARK_WORLD, POPE_STRATEGIES, Question, Scene, ask, draw_scene, render
from hivtp.world.builds import record_worlds

POPE_SPLITS = {"adversarial": "adversarial", "popular": "popular", "random": "random"}
DATASETS = ("pope", "gqa_instructions", "gqa_images", "mme", "scienceqa_img")
GQA_FAMILIES = ("attribute", "relation", "count")


def _png(scene: Scene) -> dict:
    buf = io.BytesIO()
    # compress_level 1: the same pixels as the default level 6, encoded 3-4x faster (PNG encoding was
    # most of the build time; files about 10% larger)
    render(scene).save(buf, format="PNG", compress_level=1)
    return {"bytes": buf.getvalue(), "path": None}


def _scenes(seed: int, stream: str) -> Iterator[tuple[int, Scene, np.random.Generator]]:
    """Endless (index, scene, rng) for one named stream; streams never share random numbers."""
    rng = np.random.default_rng([seed, sum(map(ord, stream)), len(stream)])
    i = 0
    while True:
        yield i, draw_scene(rng, world=BENCHMARK_WORLD), rng
        i += 1


def _collect(size: int, seed: int, stream: str, questions: Callable) -> list[tuple[int, Scene, Question]]:
    if size < 1:
        raise ValueError(f"size must be >= 1 question, got {size}.")
    out: list[tuple[int, Scene, Question]] = []
    for i, scene, rng in _scenes(seed, stream):
        for q in questions(scene, rng):
            out.append((i, scene, q))
        if len(out) >= size:
            return out[:size]
    raise AssertionError("unreachable")


# --- POPE ------------------------------------------------------------------------------------------
POPE_FEATURES = Features({
    "id": Value("string"), "question_id": Value("string"), "question": Value("string"), "answer": Value("string"),
    "image_source": Value("string"), "image": Image(), "category": Value("string"),
})


def build_pope(size: int, seed: int = 0) -> DatasetDict:
    splits = {}
    for strategy in POPE_STRATEGIES:
        items = _collect(size, seed, f"pope-{strategy}", lambda s, r: ask(s, "exist", r, strategy=strategy))
        rows = [{
            "id": str(k), "question_id": str(k + 1), "question": q.question, "answer": q.answer,
            "image_source": f"world_{i:06d}", "image": _png(scene), "category": strategy,
        } for k, (i, scene, q) in enumerate(items)]
        splits[POPE_SPLITS[strategy]] = Dataset.from_list(rows, features=POPE_FEATURES)
    return DatasetDict(splits)


# --- GQA (questions and images are two datasets, joined by imageId) --------------------------------
GQA_FEATURES = Features({
    "id": Value("string"), "imageId": Value("string"), "question": Value("string"), "answer": Value("string"),
    "fullAnswer": Value("string"), "isBalanced": Value("bool"),
})
GQA_IMAGE_FEATURES = Features({"id": Value("string"), "image": Image()})


def _gqa_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    family = GQA_FAMILIES[int(rng.integers(len(GQA_FAMILIES)))]
    return ask(scene, family, rng)


def build_gqa(size: int, seed: int = 0) -> tuple[DatasetDict, DatasetDict]:
    items = _collect(size, seed, "gqa", _gqa_questions)
    rows = [{
        "id": f"{k:08d}", "imageId": f"w{i}", "question": q.question, "answer": str(q.answer),
        "fullAnswer": f"The answer is {q.answer}.", "isBalanced": True,
    } for k, (i, scene, q) in enumerate(items)]
    images = {f"w{i}": _png(scene) for i, scene, _ in items}
    image_rows = [{"id": k, "image": v} for k, v in images.items()]
    return (DatasetDict({"testdev": Dataset.from_list(rows, features=GQA_FEATURES)}),
            DatasetDict({"testdev": Dataset.from_list(image_rows, features=GQA_IMAGE_FEATURES)}))


# --- MME -------------------------------------------------------------------------------------------
MME_FEATURES = Features({
    "question_id": Value("string"), "image": Image(), "question": Value("string"), "answer": Value("string"),
    "category": Value("string"),
})


def build_mme(size: int, seed: int = 0) -> DatasetDict:
    items = _collect(max(2, size - size % 2), seed, "mme", lambda s, r: ask(s, "mme", r))
    rows = [{
        # MME's question_id is the image file; a pair shares it (lmms-eval's acc+ groups by it)
        "question_id": f"{q.meta['category']}/{i:06d}.png", "image": _png(scene), "question": q.question,
        "answer": q.answer, "category": q.meta["category"],
    } for i, scene, q in items]
    return DatasetDict({"test": Dataset.from_list(rows, features=MME_FEATURES)})


# --- ScienceQA-IMG ---------------------------------------------------------------------------------
SQA_FEATURES = Features({
    "image": Image(), "question": Value("string"), "choices": Sequence(Value("string")), "answer": Value("int8"),
    "hint": Value("string"), "task": Value("string"), "grade": Value("string"), "subject": Value("string"),
    "topic": Value("string"), "category": Value("string"), "skill": Value("string"), "lecture": Value("string"),
    "solution": Value("string"),
})


def build_scienceqa_img(size: int, seed: int = 0) -> DatasetDict:
    items = _collect(size, seed, "scienceqa", lambda s, r: ask(s, "choice", r))
    rows = [{
        "image": _png(scene), "question": q.question, "choices": list(q.choices), "answer": int(q.answer),
        "hint": "", "task": "closed choice", "grade": "grade1", "subject": "natural science",
        "topic": "shapes", "category": q.meta.get("asks", ""), "skill": "identify attributes",
        "lecture": "", "solution": f"The answer is {q.choices[int(q.answer)]}.",
    } for i, scene, q in items]
    return DatasetDict({"test": Dataset.from_list(rows, features=SQA_FEATURES)})


#: the mini-benchmarks by name, each a builder (size, seed) -> what it saves (GQA: questions and images)
BENCHMARKS: dict[str, Callable[[int, int], Any]] = {
    "pope": build_pope, "gqa": build_gqa, "mme": build_mme, "scienceqa_img": build_scienceqa_img,
}


def build_all(out_dir: str | Path, size: int, seed: int = 0, progress: Callable[[str], None] = print,
              benchmarks: Iterable[str] = tuple(BENCHMARKS)) -> dict[str, Path]:
    """Build the mini-benchmarks (every one, or those named) under ``out_dir`` (``save_to_disk``
    folders); returns folder name -> path."""
    out = Path(out_dir)
    built: dict[str, DatasetDict] = {}
    for name in benchmarks:
        progress(f"building {name} ({size} questions{' x 3 splits' if name == 'pope' else ''})")
        if name == "gqa":
            built["gqa_instructions"], built["gqa_images"] = build_gqa(size, seed)
        else:
            built[name] = BENCHMARKS[name](size, seed)
    return save(out, built, progress)


def save(out_dir: str | Path, built: dict[str, DatasetDict], progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """``save_to_disk`` each of ``built`` (folder name -> dataset) under ``out_dir`` and record that they
    were drawn in the benchmarks' world (the lmms-eval runner refuses folders without that record:
    ``hivtp.world.builds``); returns folder name -> path. It cannot check the images: pass only what this
    module's builders drew (they draw in ``BENCHMARK_WORLD``)."""
    out = Path(out_dir)
    paths = {}
    for name, ds in built.items():
        paths[name] = out / name
        ds.save_to_disk(str(paths[name]))
        if progress:
            progress(f"wrote {paths[name]} ({', '.join(f'{k}={len(v)}' for k, v in ds.items())})")
    record_worlds(out, list(built))
    return paths

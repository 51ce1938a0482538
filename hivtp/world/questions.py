"""Question families over a scene, with answers known by construction.

Each family mirrors a public benchmark's question style; the mini-benchmark builders under
``eval/`` put them into the real datasets' columns, and :mod:`hivtp.world.prompts` wraps them the
way lmms-eval's task code does.

=========== ==================================================== ===================
family      example                                              answer
=========== ==================================================== ===================
exist       Is there a red circle in the image?                  yes / no (POPE)
attribute   What color is the triangle?                          blue (GQA)
relation    Is the red circle to the left or right of the ...?   left / right (GQA)
count       How many squares are there?                          2 (GQA, digits)
mme         Is there a blue square in this image? Please ...     Yes / No, as a pair
choice      Which color is the circle?  + 3 choices              choice index (SQA)
=========== ==================================================== ===================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .scene import COLOURS, KIND_WEIGHTS, KINDS, SHAPES, Scene

__all__ = ["Question", "FAMILIES", "POPE_STRATEGIES", "ask"]

FAMILIES: tuple[str, ...] = ("exist", "attribute", "relation", "count", "mme", "choice")
POPE_STRATEGIES: tuple[str, ...] = ("random", "popular", "adversarial")
MME_CATEGORIES: tuple[str, ...] = ("existence", "count", "color", "position")
MIN_DX = 24.0  # pixels (336 px view) between two objects compared left / right
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Question:
    family: str
    question: str  # as the dataset stores it (MME keeps its " Please answer yes or no." suffix)
    answer: Any  # as the dataset stores it: "yes"/"no" (POPE), "Yes"/"No" (MME), a word, an index (SQA)
    choices: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. category, strategy, object


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else f"{shape}s"


# --- exist (POPE) ------------------------------------------------------------------------------
def _negative_kind(scene: Scene, rng: np.random.Generator, strategy: str) -> tuple[str, str] | None:
    absent = [k for k in KINDS if k not in scene.kinds]
    if not absent:
        return None
    if strategy == "random":
        return absent[int(rng.integers(len(absent)))]
    if strategy == "popular":  # the most frequent kinds of the world that are absent here
        ranked = sorted(absent, key=lambda k: -KIND_WEIGHTS[KINDS.index(k)])
        return ranked[int(rng.integers(min(3, len(ranked))))]
    if strategy == "adversarial":  # absent kinds that share a colour or a shape with a present object
        close = [k for k in absent if any(k[0] == c or k[1] == s for c, s in scene.kinds)]
        pool = close or absent
        return pool[int(rng.integers(len(pool)))]
    raise ValueError(f"unknown POPE strategy {strategy!r}; choose one of {POPE_STRATEGIES}.")


def _exist(scene: Scene, rng: np.random.Generator, strategy: str = "random") -> list[Question]:
    """One positive and one negative question (POPE is balanced yes / no)."""
    out = []
    if scene.objects:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        out.append(Question("exist", f"Is there {_article(obj.colour)} {obj.name} in the image?", "yes",
                            meta={"object": obj.name, "strategy": strategy}))
    neg = _negative_kind(scene, rng, strategy)
    if neg is not None:
        out.append(Question("exist", f"Is there {_article(neg[0])} {neg[0]} {neg[1]} in the image?", "no",
                            meta={"object": f"{neg[0]} {neg[1]}", "strategy": strategy}))
    return out


# --- attribute / relation / count (GQA) --------------------------------------------------------
def _attribute(scene: Scene, rng: np.random.Generator) -> list[Question]:
    out = []
    for obj in scene.objects:
        if scene.count(shape=obj.shape) == 1:
            out.append(Question("attribute", f"What color is the {obj.shape}?", obj.colour,
                                meta={"object": obj.name, "asks": "color"}))
        if scene.count(colour=obj.colour) == 1:
            out.append(Question("attribute", f"What shape is the {obj.colour} object?", obj.shape,
                                meta={"object": obj.name, "asks": "shape"}))
    if not out:
        return []
    return [out[int(rng.integers(len(out)))]]


def _pairs(scene: Scene) -> list[tuple[Any, Any]]:
    view = min(scene.width, scene.height) / 336.0
    return [(a, b) for a in scene.objects for b in scene.objects if a is not b and abs(a.x - b.x) >= MIN_DX * view]


def _relation(scene: Scene, rng: np.random.Generator) -> list[Question]:
    pairs = _pairs(scene)
    if not pairs:
        return []
    a, b = pairs[int(rng.integers(len(pairs)))]
    answer = "left" if a.x < b.x else "right"
    return [Question("relation", f"Is the {a.name} to the left or right of the {b.name}?", answer,
                     meta={"object": a.name, "other": b.name})]


def _count(scene: Scene, rng: np.random.Generator, shape: str | None = None) -> list[Question]:
    """How many objects of ``shape`` (default: a random shape) the scene holds."""
    if shape is None:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
    elif shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}.")
    n = scene.count(shape=shape)
    return [Question("count", f"How many {shape}s are there?", str(n), meta={"shape": shape})]


# --- mme (yes / no pairs) ------------------------------------------------------------------------
def _mme(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """A pair about one fact: the true statement and a false twin (MME scores both, and "acc+")."""
    suffix = " Please answer yes or no."
    options = []
    if scene.objects:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        neg = _negative_kind(scene, rng, "adversarial")
        if neg is not None:
            options.append(("existence", f"Is there {_article(obj.colour)} {obj.name} in this image?",
                            f"Is there {_article(neg[0])} {neg[0]} {neg[1]} in this image?"))
        shape = obj.shape
        n = scene.count(shape=shape)
        wrong = int(rng.choice([m for m in NUMBER_WORDS if m != n]))
        options.append(("count", f"Are there {NUMBER_WORDS[n]} {_plural(shape, n)} in this image?",
                        f"Are there {NUMBER_WORDS[wrong]} {_plural(shape, wrong)} in this image?"))
        if scene.count(shape=shape) == 1:
            other = [c for c in COLOURS if c != obj.colour][int(rng.integers(len(COLOURS) - 1))]
            options.append(("color", f"Is the {shape} {obj.colour}?", f"Is the {shape} {other}?"))
    pairs = _pairs(scene)
    if pairs:
        a, b = pairs[int(rng.integers(len(pairs)))]
        side, other = ("left", "right") if a.x < b.x else ("right", "left")
        options.append(("position", f"Is the {a.name} on the {side} of the {b.name}?",
                        f"Is the {a.name} on the {other} of the {b.name}?"))
    if not options:
        return []
    category, true, false = options[int(rng.integers(len(options)))]
    return [Question("mme", true + suffix, "Yes", meta={"category": category}),
            Question("mme", false + suffix, "No", meta={"category": category})]


# --- choice (ScienceQA-IMG) ----------------------------------------------------------------------
def _choice(scene: Scene, rng: np.random.Generator, num_choices: int = 3) -> list[Question]:
    attr = _attribute(scene, rng)
    if not attr:
        return []
    q = attr[0]
    pool = list(COLOURS) if q.meta["asks"] == "color" else list(SHAPES)
    wrong = [x for x in pool if x != q.answer]
    picks = [wrong[i] for i in rng.permutation(len(wrong))[: num_choices - 1]] + [q.answer]
    picks = [picks[i] for i in rng.permutation(len(picks))]
    text = q.question.replace("What color", "Which color").replace("What shape", "Which shape")
    return [Question("choice", text, picks.index(q.answer), choices=tuple(picks), meta=dict(q.meta))]


_ASK = {"exist": _exist, "attribute": _attribute, "relation": _relation, "count": _count, "mme": _mme, "choice": _choice}


def ask(scene: Scene, family: str, rng: np.random.Generator, **kw: Any) -> list[Question]:
    """Questions of one family about ``scene`` (possibly none, e.g. no left/right pair exists).
    ``exist`` takes ``strategy`` ("random" | "popular" | "adversarial"); ``choice`` takes ``num_choices``;
    ``count`` takes ``shape``."""
    if family not in _ASK:
        raise ValueError(f"unknown question family {family!r}; families: {', '.join(FAMILIES)}.")
    return _ASK[family](scene, rng, **kw)

"""Scenes of the procedural world: a few coloured shapes on a flat background (``world="plain"``), over a
low-frequency texture (``"textured"``, the benchmarks' world), or over the texture among distractors that
no question names (``"cluttered"``).

Everything is drawn from a ``numpy.random.Generator``, so a seed fixes a scene, its image and its
questions. Objects are unique by (colour, shape) within a scene, so a phrase such as "the red circle"
always names exactly one object, and every answer is known by construction.

Non-square images: LLaVA-1.5's processor resizes the short side to 336 px and centre-crops, so only
the central square is ever seen. Objects are therefore placed inside the central square of every
image (the margins stay background); LLaVA-NeXT sees the whole canvas, margins included.

**Worlds** (``WORLDS``). ``"plain"`` (the toy's training world): objects on a flat background with
light noise. ``"cluttered"`` (issue 19, item 2): the same objects, questions and answers, drawn over a
low-frequency texture (``Blob``) and among distractors (``Distractor``: bars and crosses in muted
colours, ``CLUTTER_COLOURS``, anywhere on the canvas, never within ``GAP`` of an object; two may cross).
No question names a distractor and none has a palette colour, so every answer stays known by construction.
``"textured"`` (the benchmarks under ``eval/``, ``BENCHMARK_WORLD``): the cluttered world's texture (the
very same blobs) without its distractors, so that what the texture does and what the distractors do are
measured apart. The clutter comes from its own random
stream (``(seed_noise, CLUTTER_STREAM)``), drawn after the objects: a seed gives the same objects, and so
the same questions, in every world -- before/after measurements compare the very same questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "COLOURS", "SHAPES", "KINDS", "KIND_WEIGHTS", "SIZES", "IMAGE_SIZES", "WORLDS", "BENCHMARK_WORLD", "CLUTTER_COLOURS",
    "Obj", "Blob", "Distractor", "Scene", "draw_scene",
]

#: colour name -> RGB; far apart so that a small encoder separates them
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: every (colour, shape) kind, in a fixed order
KINDS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
#: how often each kind is drawn (Zipf-like), so that POPE's "popular" negatives mean something
KIND_WEIGHTS: np.ndarray = (1.0 / np.arange(1, len(KINDS) + 1) ** 0.6) / np.sum(1.0 / np.arange(1, len(KINDS) + 1) ** 0.6)
#: object side in pixels of a 336 px square view: small ones cover about 2x2 patches of 14 px
SIZES: dict[str, tuple[int, int]] = {"small": (28, 36), "large": (56, 76)}
#: canvas sizes (W, H) drawn by default: square and non-square
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((336, 336), (448, 336), (336, 448), (672, 672), (672, 336))
BACKGROUND = (60, 60, 64)
MIN_OBJECTS, MAX_OBJECTS = 1, 4
GAP = 10  # minimum pixels between two objects' boxes (in the 336 px view)

WORLDS: tuple[str, ...] = ("plain", "textured", "cluttered")
#: the world of the offline benchmarks (``eval/``), and the default of everything that draws scenes to ask
#: (held-out questions, calibration, token pictures); a run records it (``hivtp.run.offline_world``).
#: Textured, not plain (issue 19, item 2): its texture makes a quarter of the image stand out, mostly
#: background, where in the plain world nearly every patch that stands out is an object, and the shipped
#: toy meets every calibration target in it. The toy's recipe still trains on the plain world
#: (``hivtp.toy.train.TRAINING_WORLD``): a toy trained on texture met fewer targets (README, v22).
BENCHMARK_WORLD = "textured"
#: muted colours of the distractors: each is at least 80 levels (of 0-255) from every palette colour on
#: some channel, every blend of one with the (textured) background at least 55, and the background
#: itself at least 90 (tested): no pixel of the clutter looks like a named colour
CLUTTER_COLOURS: dict[str, tuple[int, int, int]] = {
    "grey": (150, 150, 150),
    "beige": (170, 150, 120),
    "purple": (120, 80, 140),
    "teal": (80, 140, 140),
}
CLUTTER_STREAM = 11  # the clutter's own random stream: (seed_noise, CLUTTER_STREAM)
DISTRACTORS = (3, 8)  # distractors per canvas of a 336 px view (more on a larger canvas, by area)
BLOBS = 6  # texture blobs per canvas
TEXTURE_LEVELS = 28  # a blob's peak colour shift, intensity levels per channel (at most; they add up to +-30)


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str  # "small" | "large"
    x: float  # centre, pixels on the canvas
    y: float
    side: float  # bounding-box side, pixels on the canvas

    @property
    def kind(self) -> tuple[str, str]:
        return (self.colour, self.shape)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Blob:
    """A smooth colour shift of the background (the cluttered world's texture): a Gaussian bump."""

    x: float
    y: float
    sigma: float  # pixels on the canvas
    shift: tuple[int, int, int]  # peak change of each channel, intensity levels


@dataclass(frozen=True)
class Distractor:
    """A bar or a cross in a ``CLUTTER_COLOURS`` colour: something to see that no question is about."""

    form: str  # "bar" | "cross"
    colour: str  # a CLUTTER_COLOURS key
    x: float  # centre, pixels on the canvas
    y: float
    length: float  # pixels on the canvas
    width: float
    vertical: bool = False  # a bar's orientation

    @property
    def half_extent(self) -> tuple[float, float]:
        """(half width, half height) of its bounding box."""
        long, short = self.length / 2, self.width / 2
        if self.form == "cross":
            return long, long
        return (short, long) if self.vertical else (long, short)


@dataclass
class Scene:
    width: int
    height: int
    objects: list[Obj] = field(default_factory=list)
    seed_noise: int = 0  # seeds the background texture
    world: str = "plain"
    texture: list[Blob] = field(default_factory=list)  # cluttered world only
    clutter: list[Distractor] = field(default_factory=list)  # cluttered world only

    @property
    def kinds(self) -> set[tuple[str, str]]:
        return {o.kind for o in self.objects}

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        return sum((shape is None or o.shape == shape) and (colour is None or o.colour == colour) for o in self.objects)

    def find(self, colour: str, shape: str) -> Obj | None:
        return next((o for o in self.objects if o.kind == (colour, shape)), None)


def _view(width: int, height: int) -> tuple[float, float, float]:
    """(left, top, side) of the central square: the part every processor sees."""
    side = min(width, height)
    return (width - side) / 2, (height - side) / 2, side


def _overlaps(box: tuple[float, float, float], others: list[Obj], gap: float) -> bool:
    x, y, s = box
    return any(abs(x - o.x) < (s + o.side) / 2 + gap and abs(y - o.y) < (s + o.side) / 2 + gap for o in others)


def draw_scene(
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
    num_objects: int | None = None,
    kind_weights: np.ndarray | None = None,
    world: str = BENCHMARK_WORLD,
) -> Scene:
    """A random scene: ``num_objects`` (default 1-4) distinct kinds, sizes small or large, placed
    without overlap inside the central square view. ``size`` is (W, H); default: one of IMAGE_SIZES.
    ``kind_weights`` (one per ``KINDS``, summing to 1) replaces ``KIND_WEIGHTS`` (the toy's training
    uses it to see more objects of one shape; the benchmarks never do). ``world``: one of ``WORLDS``
    (see the module docstring; default the benchmarks'); it does not change what ``rng`` draws."""
    if world not in WORLDS:
        raise ValueError(f"world must be one of {', '.join(WORLDS)}, got {world!r}.")
    width, height = size if size is not None else IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    n = int(num_objects) if num_objects is not None else int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    if not 0 <= n <= len(KINDS):
        raise ValueError(f"num_objects must be in [0, {len(KINDS)}], got {n}.")
    left, top, view = _view(width, height)
    scale = view / 336.0
    kinds = rng.choice(len(KINDS), size=n, replace=False, p=KIND_WEIGHTS if kind_weights is None else kind_weights)
    scene = Scene(width, height, seed_noise=int(rng.integers(2**31)), world=world)
    for k in kinds:
        colour, shape = KINDS[int(k)]
        label = "small" if rng.random() < 0.4 else "large"
        lo, hi = SIZES[label]
        side = float(rng.integers(lo, hi + 1)) * scale
        for _ in range(200):  # rejection sampling; a 336 px view fits 4 large objects easily
            x = left + side / 2 + rng.random() * (view - side)
            y = top + side / 2 + rng.random() * (view - side)
            if not _overlaps((x, y, side), scene.objects, GAP * scale):
                scene.objects.append(Obj(colour, shape, label, float(x), float(y), side))
                break
    if world != "plain":
        _add_clutter(scene, np.random.default_rng([scene.seed_noise, CLUTTER_STREAM]), scale, distractors=world == "cluttered")
    return scene


def _add_clutter(scene: Scene, rng: np.random.Generator, scale: float, distractors: bool = True) -> None:
    """Texture blobs over the whole canvas, then (``distractors``) distractors anywhere on it, ``GAP``
    clear of every object's box (rejection sampled; one that does not fit is left out). The blobs come
    first from ``rng``: the textured and the cluttered world draw the same ones."""
    w, h = scene.width, scene.height
    for _ in range(BLOBS):
        shift = tuple(int(v) for v in rng.integers(-TEXTURE_LEVELS, TEXTURE_LEVELS + 1, size=3))
        scene.texture.append(Blob(float(rng.random() * w), float(rng.random() * h), float(rng.uniform(30, 90) * scale), shift))
    if not distractors:
        return
    lo, hi = DISTRACTORS
    area = w * h / (336.0 * scale) ** 2  # canvas area in 336 px views
    names = list(CLUTTER_COLOURS)
    for _ in range(round(rng.integers(lo, hi + 1) * area)):
        form = "bar" if rng.random() < 0.6 else "cross"
        length = float(rng.uniform(18, 60) * scale)
        width = float(rng.uniform(3, 7) * scale)
        colour = names[int(rng.integers(len(names)))]
        vertical = bool(rng.random() < 0.5)
        shape = Distractor(form, colour, 0.0, 0.0, length, width, vertical)  # placed below
        hx, hy = shape.half_extent
        gap = GAP * scale
        for _ in range(50):
            x, y = hx + rng.random() * (w - 2 * hx), hy + rng.random() * (h - 2 * hy)
            if not any(abs(x - o.x) < hx + o.side / 2 + gap and abs(y - o.y) < hy + o.side / 2 + gap for o in scene.objects):
                scene.clutter.append(replace(shape, x=float(x), y=float(y)))
                break

"""Scenes of the procedural world: a few coloured shapes on a plain background.

Everything is drawn from a ``numpy.random.Generator``, so a seed fixes a scene, its image and its
questions. Objects are unique by (colour, shape) within a scene, so a phrase such as "the red circle"
always names exactly one object, and every answer is known by construction.

Non-square images: LLaVA-1.5's processor resizes the short side to 336 px and centre-crops, so only
the central square is ever seen. Objects are therefore placed inside the central square of every
image (the margins stay background); LLaVA-NeXT sees the whole canvas, margins included.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["COLOURS", "SHAPES", "KINDS", "KIND_WEIGHTS", "SIZES", "IMAGE_SIZES", "Obj", "Scene", "draw_scene"]

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


@dataclass
class Scene:
    width: int
    height: int
    objects: list[Obj] = field(default_factory=list)
    seed_noise: int = 0  # seeds the background texture

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
) -> Scene:
    """A random scene: ``num_objects`` (default 1-4) distinct kinds, sizes small or large, placed
    without overlap inside the central square view. ``size`` is (W, H); default: one of IMAGE_SIZES.
    ``kind_weights`` (one per ``KINDS``, summing to 1) replaces ``KIND_WEIGHTS`` (the toy's training
    uses it to see more objects of one shape; the benchmarks never do)."""
    width, height = size if size is not None else IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    n = int(num_objects) if num_objects is not None else int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    if not 0 <= n <= len(KINDS):
        raise ValueError(f"num_objects must be in [0, {len(KINDS)}], got {n}.")
    left, top, view = _view(width, height)
    scale = view / 336.0
    kinds = rng.choice(len(KINDS), size=n, replace=False, p=KIND_WEIGHTS if kind_weights is None else kind_weights)
    scene = Scene(width, height, seed_noise=int(rng.integers(2**31)))
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
    return scene

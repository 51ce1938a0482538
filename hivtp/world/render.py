"""Drawing a :class:`~hivtp.world.scene.Scene` into an RGB image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scene import BACKGROUND, COLOURS, Obj, Scene

__all__ = ["render"]


def _draw(draw: ImageDraw.ImageDraw, obj: Obj) -> None:
    h = obj.side / 2
    box = [obj.x - h, obj.y - h, obj.x + h, obj.y + h]
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(obj.x, obj.y - h), (obj.x - h, obj.y + h), (obj.x + h, obj.y + h)], fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene) -> Image.Image:
    """The scene as a PIL RGB image: a lightly textured background, then the objects."""
    rng = np.random.default_rng(scene.seed_noise)
    noise = rng.integers(-6, 7, size=(scene.height, scene.width, 1))
    pixels = np.clip(np.array(BACKGROUND)[None, None, :] + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj)
    return image

"""Drawing a :class:`~hivtp.world.scene.Scene` into an RGB image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .scene import BACKGROUND, CLUTTER_COLOURS, COLOURS, Distractor, Obj, Scene

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


def _draw_distractor(draw: ImageDraw.ImageDraw, d: Distractor) -> None:
    fill = CLUTTER_COLOURS[d.colour]
    long, short = d.length / 2, d.width / 2
    if d.form == "cross" or not d.vertical:
        draw.rectangle([d.x - long, d.y - short, d.x + long, d.y + short], fill=fill)
    if d.form == "cross" or d.vertical:
        draw.rectangle([d.x - short, d.y - long, d.x + short, d.y + long], fill=fill)


def _texture(scene: Scene) -> np.ndarray:
    """[H, W, 3] float: the sum of the scene's (one or more) texture blobs, clipped to +-30 levels."""
    ys, xs = np.arange(scene.height, dtype=np.float32), np.arange(scene.width, dtype=np.float32)
    centre = np.array([(b.x, b.y) for b in scene.texture], dtype=np.float32)  # [B, 2]
    sigma = np.array([b.sigma for b in scene.texture], dtype=np.float32)[:, None]  # [B, 1]
    shift = np.array([b.shift for b in scene.texture], dtype=np.float32)  # [B, 3]
    # a Gaussian bump is separable (row bump x column bump), so the sum over blobs of bump x shift is,
    # per channel, one [H, B] @ [B, W] product
    rows = np.exp(-((ys[None] - centre[:, 1:2]) ** 2) / (2 * sigma**2))  # [B, H]
    cols = np.exp(-((xs[None] - centre[:, 0:1]) ** 2) / (2 * sigma**2))  # [B, W]
    out = np.stack([(rows * shift[:, c : c + 1]).T @ cols for c in range(3)], axis=-1)  # [H, W, 3]
    return np.clip(out, -30, 30)


def render(scene: Scene) -> Image.Image:
    """The scene as a PIL RGB image: a lightly noisy background (plus, in the textured and cluttered
    worlds, its texture, and in the cluttered world its distractors), then the objects."""
    rng = np.random.default_rng(scene.seed_noise)
    noise = rng.integers(-6, 7, size=(scene.height, scene.width, 1))
    background = np.array(BACKGROUND)[None, None, :] + noise
    if scene.texture:
        background = background + np.rint(_texture(scene))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for d in scene.clutter:
        _draw_distractor(draw, d)
    for obj in scene.objects:
        _draw(draw, obj)
    return image

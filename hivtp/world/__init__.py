"""A procedural image world with questions whose answers are known by construction.

    from hivtp.world import draw_scene, render, ask
    rng = numpy.random.default_rng(0)
    scene = draw_scene(rng)                        # 1-4 coloured shapes, square or non-square canvas
    image = render(scene)                          # PIL RGB
    questions = ask(scene, "exist", rng, strategy="adversarial")

It feeds the offline mini-benchmarks (``eval/``) and the training of the small trained LLaVA
(``hivtp.toy``), so that offline accuracy numbers measure something real.
"""

from .prompts import TASK_OF_FAMILY, prompt_text, target_text
from .questions import FAMILIES, POPE_STRATEGIES, Question, ask
from .render import render
from .scene import (
    BENCHMARK_WORLD,
    CLUTTER_COLOURS,
    COLOURS,
    IMAGE_SIZES,
    KIND_WEIGHTS,
    KINDS,
    SHAPES,
    WORLDS,
    Obj,
    Scene,
    draw_scene,
)

__all__ = [
    "COLOURS", "CLUTTER_COLOURS", "SHAPES", "KINDS", "KIND_WEIGHTS", "IMAGE_SIZES", "WORLDS", "BENCHMARK_WORLD", "FAMILIES", "POPE_STRATEGIES", "TASK_OF_FAMILY",
    "Obj", "Scene", "Question", "draw_scene", "render", "ask", "prompt_text", "target_text",
]

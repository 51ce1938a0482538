"""``pdrop`` (stretch): PyramidDrop's staged in-LLM dropping (arXiv 2410.17247).

The LLM is cut into stages at ``layers`` (0-based; default: a quarter, half and three quarters of its
depth, i.e. 8 / 16 / 24 for the 32-layer 7B models). At each stage layer the image tokens that reached
it are ranked by the attention the last prompt token pays them, computed from that layer's input
exactly as ``fastv`` does (input_layernorm, q/k projections, rotary, GQA repeat, mean over heads; no
eager attention), and a fraction ``ratio`` (lambda, default 0.5 as published) of them is kept for the
following layers. Tokens are dropped physically (shorter hidden states and KV cache from each stage
on), with the machinery of :func:`hivtp.methods.fastv.staged_dropping`.

Budget (DECISION): PyramidDrop keeps a different number of tokens per layer, so equal-budget tables
compare the *mean number of image tokens per LLM layer*. With ``budget=B`` (per image), ``ratio`` is
solved per sample (bisection) so that this mean is B x images, up to the rounding of each stage's
count; ``last_stats`` record ``tokens_kept`` = the achieved mean (rounded), ``tokens_llm_final`` = the
count after the last stage and ``tokens_llm_dropped`` = tokens dropped by then, all counted in the
hidden states once the prefill ran (never copied from the plan). ``budget=None`` uses ``ratio``
(default 0.5); ``ratio`` together with a ``budget`` is a ConfigError (the budget solves it). Stage
counts are ``round(N * ratio^s)`` after stage s (N: the sample's image tokens), never more than the
tokens left. A budget the stages cannot reach is refused (ConfigError): above N, or
below ``N x layers[0] / depth`` (the layers before the first stage always see all N tokens).
Requirements and limits are fastv's (sdpa / eager kernels, stage layers >= 1; beams and
``num_return_sequences`` supported).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from ..errors import ConfigError
from .base import CropBatch, CropSelection, PruningMethod, parse_layers, register_method
from ._common import check_budget
from .fastv import check_llm_budget, check_stage_layer, language_layers, staged_dropping


def tokens_by_layer(n: int, plan: list[int], layers: Sequence[int], depth: int) -> list[int]:
    """Image tokens each of the ``depth`` LLM layers sees: ``n`` until the first stage layer, then
    each stage's count from its layer on."""
    out, current, stages = [], n, dict(zip(layers, plan))
    for layer in range(depth):
        current = stages.get(layer, current)
        out.append(current)
    return out


def stage_counts(n: int, ratio: float, num_stages: int) -> list[int]:
    """Image tokens kept after each stage: round(n * ratio^s), non-increasing."""
    out, prev = [], n
    for s in range(1, num_stages + 1):
        prev = min(prev, int(round(n * ratio**s)))
        out.append(prev)
    return out


def mean_tokens(n: int, counts: list[int], layers: Sequence[int], depth: int) -> float:
    """Mean image tokens per LLM layer when stage s (at layers[s]) keeps counts[s]."""
    bounds = list(layers) + [depth]
    total = n * layers[0] + sum(c * (bounds[s + 1] - bounds[s]) for s, c in enumerate(counts))
    return total / depth


def solve_ratio(n: int, target: float, layers: Sequence[int], depth: int) -> float:
    """The ratio whose mean tokens per layer is closest to ``target`` (bisection on the continuous mean)."""
    if target >= n:
        return 1.0
    lo, hi = 0.0, 1.0
    bounds = list(layers) + [depth]
    for _ in range(60):
        mid = (lo + hi) / 2
        mean = (n * layers[0] + sum(n * mid ** (s + 1) * (bounds[s + 1] - bounds[s]) for s in range(len(layers)))) / depth
        lo, hi = (mid, hi) if mean < target else (lo, mid)
    return (lo + hi) / 2


@register_method
class PyramidDrop(PruningMethod):
    name = "pdrop"
    stage = "llm"

    def __init__(
        self, budget: int | None = None, layers: Sequence[int] | str | None = None, ratio: float | None = None
    ) -> None:
        self.budget = check_budget(budget)
        self.layers = None if layers is None else parse_layers(layers)
        if self.layers is not None and (not self.layers or min(self.layers) < 1 or list(self.layers) != sorted(set(self.layers))):
            raise ConfigError(f"pdrop layers must be increasing 0-based LLM layers >= 1, got {layers!r}.")
        if ratio is not None and budget is not None:  # a budget solves the ratio: a given one would be ignored
            raise ConfigError(f"give either ratio={ratio} or budget={budget} (the ratio is solved from it), not both.")
        ratio = 0.5 if ratio is None else ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ConfigError(f"ratio must be a number in (0, 1], got {ratio!r}.")
        self.ratio = float(ratio)
        self.last_attention: torch.Tensor | None = None
        self.stage_attention: list[torch.Tensor] = []

    def params(self) -> dict[str, Any]:
        # with a budget the ratio is solved per sample: recording the unused default would make the
        # params refuse to rebuild the method (ratio and budget are exclusive)
        return {"budget": self.budget, "layers": None if self.layers is None else list(self.layers),
                "ratio": None if self.budget is not None else self.ratio}

    def select(self, crops: CropBatch) -> CropSelection:
        keep = torch.ones(crops.features.shape[:2], dtype=torch.bool, device=crops.features.device)
        return CropSelection.from_masks(crops.features, keep, [{"tokens_kept": crops.num_patches}] * crops.num_crops)

    def stage_layers(self, depth: int) -> list[int]:
        if self.layers is not None:
            return list(self.layers)
        layers = sorted({max(1, round(depth * q / 4)) for q in (1, 2, 3)} - {depth})
        if not layers:
            raise ConfigError(f"a {depth}-layer LLM is too shallow for pdrop's default stages; pass layers=...")
        return layers

    def plan(self, counts: list[int], images: list[int], depth: int) -> tuple[list[int], list[list[int]], list[float]]:
        layers = self.stage_layers(depth)
        plans, means = [], []
        for i, (n, m) in enumerate(zip(counts, images)):
            if self.budget is None or n == 0:  # n == 0: a text-only sample, nothing to plan
                ratio = self.ratio
            else:
                target = self.budget * max(m, 1)
                self._check_reachable(target, n, m, i, layers, depth)
                ratio = solve_ratio(n, target, layers, depth)
            c = stage_counts(n, ratio, len(layers))
            plans.append(c)
            means.append(mean_tokens(n, c, layers, depth))
        return layers, plans, means

    def _check_reachable(self, target: int, n: int, images: int, sample: int, layers: list[int], depth: int) -> None:
        """The mean tokens per layer lies in [n * layers[0] / depth, n]: refuse a budget outside it
        rather than silently reporting another mean."""
        check_llm_budget(self.name, self.budget, target, n, images, sample)
        lowest = n * layers[0] / depth
        if target < lowest:
            raise ConfigError(
                f"pdrop: budget={self.budget} per image (mean image tokens per LLM layer) cannot be reached by "
                f"sample {sample}: its {n} image tokens are all seen by the {layers[0]} layer(s) before the first "
                f"stage, so the mean over {depth} layers is at least {lowest:g}. Pass a larger budget, or stage "
                f"layers that start earlier (layers=..., 0-based, >= 1)."
            )

    @contextmanager
    def llm_context(self, model: Any, inputs: Any, stats: list[dict[str, Any]]) -> Iterator[None]:
        _, decoder_layers = language_layers(model)
        depth = len(decoder_layers)
        counts = inputs.image_positions.sum(-1).tolist()
        check_stage_layer("layers", self.stage_layers(depth)[-1], depth)  # before planning on them
        layers, plans, _ = self.plan(counts, [int(s.get("images", 1)) for s in stats], depth)
        if all(plan[-1] == n for plan, n in zip(plans, counts)):
            yield  # nothing to drop: the model runs untouched and every image token stays
            kept = [[n] * len(layers) for n in counts]
        else:
            stages = [(layer, (lambda _remaining, i=i: [p[i] for p in plans])) for i, layer in enumerate(layers)]
            with staged_dropping(model, inputs, stages, self, "pdrop", "layers") as counted:
                yield
            if any(c is None for c in counted):  # the model never reached every stage: nothing to count
                return
            kept = [list(per_sample) for per_sample in zip(*counted)]  # per sample: count after each stage
        # Stats from what really stayed in the hidden states / cache (counted by staged_dropping).
        for s, n, actual in zip(stats, counts, kept):
            s["tokens_kept"] = int(round(mean_tokens(n, actual, layers, depth)))
            s["tokens_llm_final"] = actual[-1]
            s["tokens_llm_dropped"] = n - actual[-1]
            s["tokens_by_layer"] = tokens_by_layer(n, actual, layers, depth)

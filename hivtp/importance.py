"""HIVTP's middle-layer importance score (spec section 1) and other attention statistics.

``s_j`` = mean over the score layers, over heads and over ALL query rows (CLS included) of the
post-softmax attention paid to patch ``j``: the attention a patch *receives*, averaged.

Backends, identical up to float rounding:

* ``fast`` (default): from the (q, k) projections of the score layers only, accumulate column sums
  of ``softmax(q k^T / sqrt(d))`` over row chunks. A row softmax needs its whole row, but the
  column sum needs only the sum over rows, so memory is ``chunk x T`` per head, not ``T x T`` per
  layer. The tower keeps its SDPA / flash kernels and stops after the last layer needed.
* ``eager`` (faithful): the model's own forward with eager attention and every map kept.

Scores are computed in float32 whatever the model dtype (DECISION). In half precision the two backends
can still keep a few different tokens: the eager path runs the tower as the release does (eager
attention in the model dtype for every layer, q k^T included, and the probabilities cast to that dtype
after a float32 softmax) and averages those maps, while the fast path keeps the tower's SDPA kernels and
scores the captured q, k in float32. In float32 they agree to float rounding.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError
from .vision import TowerOutput, run_tower, run_tower_eager

__all__ = [
    "BACKENDS",
    "importance",
    "received_attention",
    "cls_attention",
    "scores_from_tower",
    "patch_grid",
]

BACKENDS = ("fast", "eager")
DEFAULT_LAYERS = (6, 7, 8)
_CHUNK_BYTES = 64 * 2**20  # working set of one softmax chunk, float32


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown scoring backend {backend!r}; choose one of {BACKENDS}.")
    return backend


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[C, T, D] -> [C, heads, T, d] in float32."""
    c, t, d = x.shape
    return x.float().view(c, t, num_heads, d // num_heads).transpose(1, 2)


def received_attention(q: torch.Tensor, k: torch.Tensor, num_heads: int, chunk_rows: int | None = None) -> torch.Tensor:
    """Column sums over query rows of softmax(q k^T / sqrt(d)), summed over heads: [C, T] float32.

    q, k: [C, T, D] (projection outputs, unscaled). Rows are processed ``chunk_rows`` at a time.
    """
    qh, kh = _heads(q, num_heads), _heads(k, num_heads)  # [C, H, T, d]
    c, h, t, d = qh.shape
    scale = d**-0.5
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_BYTES // (4 * c * h * t))
    total = torch.zeros(c, t, dtype=torch.float32, device=q.device)
    kt = kh.transpose(-1, -2)  # [C, H, d, T]
    for start in range(0, t, chunk_rows):
        probs = torch.softmax(torch.matmul(qh[:, :, start : start + chunk_rows], kt) * scale, dim=-1)
        total += probs.sum(dim=(1, 2))  # sum over heads and the chunk's rows -> [C, T]
    return total


def cls_attention(q: torch.Tensor, k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Attention of the CLS query (row 0) to every token, per head: [C, heads, T] float32."""
    qh, kh = _heads(q[:, :1], num_heads), _heads(k, num_heads)
    scale = qh.shape[-1] ** -0.5
    return torch.softmax(torch.matmul(qh, kh.transpose(-1, -2)) * scale, dim=-1)[:, :, 0]


def patch_grid(num_patches: int) -> tuple[int, int]:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ConfigError(f"{num_patches} patch tokens do not form a square grid.")
    return side, side


def _received_memo(tower: TowerOutput, layer: int) -> torch.Tensor:
    """``received_attention`` of one captured layer, computed once per tower pass (``TowerOutput.memo``):
    methods and budgets that share a cached pass share its scores, which cost about as much as the
    tower itself on the offline models."""
    key = ("received_attention", layer)
    if key not in tower.memo:
        tower.memo[key] = received_attention(*tower.qk[layer], tower.num_heads)
    return tower.memo[key]


def scores_from_tower(tower: TowerOutput, layers: Sequence[int]) -> torch.Tensor:
    """Mean received attention per patch, [C, H, W] float32, from a tower pass that captured the
    score layers (q/k for the fast path, probabilities for the eager path)."""
    layers = list(layers)
    if tower.received:
        # CLS-free towers (Qwen2.5-VL): per-token received attention, already a mean over heads and rows.
        missing = [i for i in layers if i not in tower.received]
        if missing:
            raise ConfigError(f"the tower pass did not capture score layer(s) {missing}.")
        grids = set(tower.grids)
        if len(grids) != 1:
            raise ConfigError(f"scores_from_tower needs crops of one grid shape, got {sorted(grids)}.")
        col = torch.stack([torch.stack(tower.received[i]) for i in layers]).mean(0)  # [C, P]
        return col.reshape(-1, *tower.grids[0])
    if tower.attentions:
        # eager: [C, heads, T, T] per layer; mean over layers, heads and query rows.
        stacked = torch.stack([tower.attentions[i].float() for i in layers])  # [L, C, heads, T, T]
        col = stacked.mean(dim=(0, 2)).mean(dim=1)  # [C, T]
    else:
        sums = [_received_memo(tower, i) for i in layers]
        t = sums[0].shape[-1]
        col = torch.stack(sums).sum(0) / (len(layers) * tower.num_heads * t)
    patches = col[:, 1:]  # drop the CLS column: patch j is token 1 + j
    h, w = patch_grid(patches.shape[-1])
    return patches.reshape(-1, h, w)


def importance(
    vision_model: nn.Module,
    pixel_values: torch.Tensor,
    layers: Sequence[int] = DEFAULT_LAYERS,
    backend: str = "fast",
) -> torch.Tensor:
    """Public API: HIVTP importance scores of a CLIP vision tower, ``[B, H, W]`` float32.

    ``fast`` runs the tower only up to the last score layer; ``eager`` runs it whole, as the release.
    """
    check_backend(backend)
    if not layers:
        raise ConfigError("score layers must not be empty; the default is (6, 7, 8).")
    if backend == "fast":
        tower = run_tower(vision_model, pixel_values, qk_layers=layers)
    else:
        tower = run_tower_eager(vision_model, pixel_values, attention_layers=layers)
    return scores_from_tower(tower, layers)

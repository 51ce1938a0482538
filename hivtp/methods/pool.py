"""``pool``: spatial average pooling of each crop's patch grid (the plain downsampling control).

The H x W grid (24 x 24) is cut into non-overlapping f x f cells, f a common divisor of H and W, and
each cell's feature vectors are averaged into one token: f=1 -> 576, 2 -> 144, 3 -> 64, 4 -> 36,
6 -> 16, 8 -> 9, 12 -> 4, 24 -> 1 tokens on 24 x 24.

Budget -> pooling mapping (DECISION): the cell size whose token count is nearest to the crop's budget
(ties: the finer grid, i.e. more tokens). On 24 x 24: 192 -> 144 (2x2), 128 -> 144 (2x2),
64 -> 64 (3x3), 160 / 320 / 640 NeXT image budgets are split per crop first and each crop pooled to its
nearest grid. Only budgets that are a pooling grid's size (576, 144, 64, 36, 16, 9, 4, 1) are kept
exactly; any other budget keeps the nearest grid's count, and ``tokens_kept`` in ``last_stats``
reports the tokens actually kept (plus ``tokens_budget`` with what was asked). Non-divisor grids
(e.g. 14 x 14 = 196) would need overlapping or unequal cells and are not offered: the control is
meant to be the plain, equal-cell downsampling. ``kernel`` forces a cell size; together with a
budget (or Qwen2.5-VL's ``keep=``), which it would ignore, it is a ConfigError.

Parameters: ``budget`` (default None -> kernel 2, 144 of 576), ``kernel`` (None: from the budget).
Each pooled token stands for a representative patch of its cell: the patch at offset
``((f-1)//2, (f-1)//2)`` inside the cell (its top-left for f=2); positions are unique and tokens come
in raster order of their cells. On LLaVA-NeXT a cell averages the patches unpadding keeps, a cell with
none is dropped, one whose representative patch is unpadded away stands for its first kept patch
(:func:`pool_valid`), and a budget picks the cell size by the cells that keep a patch (an unpadded
tile has fewer than the full grid's).

Families whose grids vary per image (Qwen2.5-VL, ``CropBatch.uneven_partition``; its merged grids are
often prime-sided): cells of f x f tile the grid from the top-left and the last row / column of cells is
cut short (DECISION, the windows of :func:`hivtp.selection.uneven_labels`), so every f applies, giving
``ceil(H/f) * ceil(W/f)`` tokens; the budget picks the f whose count is nearest (ties: more tokens). A
cut-short cell averages the patches it has and stands for its patch at offset ``(f-1)//2``, clipped to it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from ..selection import uneven_labels
from .base import CropBatch, CropSelection, PruningMethod, register_method
from ._common import check_budget

DEFAULT_KERNEL = 2


def pooling_kernels(height: int, width: int) -> list[int]:
    """Cell sizes that tile the grid exactly, finest first."""
    return [f for f in range(1, min(height, width) + 1) if height % f == 0 and width % f == 0]


def kernel_for_budget(height: int, width: int, budget: int, valid: torch.Tensor | None = None) -> int:
    """The cell size whose token count is nearest to ``budget`` (ties: more tokens). With ``valid`` ([H*W]
    bool, the positions the packing keeps) a cell counts only if it holds a valid patch, as
    :func:`pool_valid` keeps only those: an unpadded NeXT tile's count, not the full grid's."""
    def count(f: int) -> int:
        if valid is None:
            return (height // f) * (width // f)
        return int(valid.reshape(height // f, f, width // f, f).any(dim=3).any(dim=1).sum())

    return min(pooling_kernels(height, width), key=lambda f: (abs(count(f) - budget), f))


def representative_positions(height: int, width: int, f: int) -> torch.Tensor:
    off = (f - 1) // 2
    rows = torch.arange(height // f) * f + off
    cols = torch.arange(width // f) * f + off
    return (rows[:, None] * width + cols[None, :]).flatten()


def pool_valid(features: torch.Tensor, valid: torch.Tensor, h: int, w: int, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooling when the packing drops some positions (LLaVA-NeXT unpadding): each cell averages its
    valid patches only, a cell without any is dropped, and a cell whose representative patch is dropped
    stands for its first valid patch instead."""
    d = features.shape[-1]
    cells = lambda x: x.reshape(h // f, f, w // f, f, -1).permute(0, 2, 1, 3, 4).reshape((h // f) * (w // f), f * f, -1)
    x = cells(features.float())  # [cells, f*f, D]
    m = cells(valid[:, None].float())  # [cells, f*f, 1]
    count = m.sum(dim=1)  # [cells, 1]
    pooled = (x * m).sum(dim=1) / count.clamp_min(1)
    idx = cells(torch.arange(h * w, device=features.device)[:, None].float()).squeeze(-1).long()  # [cells, f*f]
    off = (f - 1) // 2
    preferred = off * f + off
    in_cell = m.squeeze(-1).bool()
    first_valid = in_cell.float().argmax(dim=1)
    choice = torch.where(in_cell[:, preferred], torch.full_like(first_valid, preferred), first_valid)
    pos = idx.gather(1, choice[:, None]).squeeze(1)
    keep = count.squeeze(-1) > 0
    return pooled[keep].to(features.dtype).reshape(-1, d), pos[keep]


def uneven_cell_count(height: int, width: int, f: int) -> int:
    return -(-height // f) * -(-width // f)


def pool_uneven(features: torch.Tensor, h: int, w: int, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooling with cut-short edge cells (module docstring): ([cells, D] means, [cells] positions)."""
    _, cell = uneven_labels(h, w, 1, f)  # [H*W] cell of every patch, cells numbered in raster order
    cell = cell.to(features.device)
    n = int(cell.max()) + 1
    sums = torch.zeros(n, features.shape[-1], dtype=torch.float32, device=features.device)
    sums.index_add_(0, cell, features.float())
    counts = torch.bincount(cell, minlength=n).clamp_min(1)[:, None]
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    first = torch.full((n,), h * w, dtype=torch.long).scatter_reduce(0, cell.cpu(), torch.arange(h * w), "amin")
    last = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, cell.cpu(), torch.arange(h * w), "amax")
    off = (f - 1) // 2
    r = rows[first] + torch.minimum(torch.tensor(off), rows[last] - rows[first])
    c = cols[first] + torch.minimum(torch.tensor(off), cols[last] - cols[first])
    return (sums / counts).to(features.dtype), (r * w + c).to(features.device)


@register_method
class AveragePool(PruningMethod):
    name = "pool"
    merges_tokens = True  # each token averages a cell of patches

    def __init__(self, budget: int | None = None, kernel: int | None = None) -> None:
        self.budget = check_budget(budget)
        if kernel is not None and (isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1):
            raise ConfigError(f"kernel must be a positive integer (pooling cell side) or None, got {kernel!r}.")
        if kernel is not None and budget is not None:  # the kernel fixes the count: the budget would be ignored
            raise ConfigError(
                f"give either kernel={kernel} (a fixed cell size) or budget={budget} (the grid nearest to it), not both."
            )
        self.kernel = kernel

    def budget_refusal(self) -> str | None:
        if self.kernel is not None:
            return f"pool with kernel={self.kernel} keeps a fixed grid"
        return super().budget_refusal()

    def params(self) -> dict[str, Any]:
        return {"budget": self.budget, "kernel": self.kernel}

    def check(self, grid: tuple[int, int], num_layers: int, feature_attention_layer: int) -> None:
        if self.kernel is not None and grid is not None and self.kernel not in pooling_kernels(*grid):
            raise ConfigError(
                f"kernel={self.kernel} does not tile the {grid[0]}x{grid[1]} grid; choose one of {pooling_kernels(*grid)}."
            )

    def kernel_for(self, grid: tuple[int, int], budget: int | None, uneven: bool = False,
                   valid: torch.Tensor | None = None) -> int:
        if self.kernel is not None:
            return self.kernel
        if uneven:  # every cell size applies (cut-short edge cells)
            if budget is None:
                return min(DEFAULT_KERNEL, *grid)
            sizes = range(1, max(grid) + 1)
            return min(sizes, key=lambda f: (abs(uneven_cell_count(*grid, f) - budget), f))
        if budget is None:
            return DEFAULT_KERNEL if DEFAULT_KERNEL in pooling_kernels(*grid) else 1
        return kernel_for_budget(grid[0], grid[1], budget, valid)

    def select(self, crops: CropBatch) -> CropSelection:
        h, w = crops.grid
        c, p, d = crops.features.shape
        budgets = list(crops.budgets) if crops.budgets else [None] * c
        feats, positions, stats = [], [], []
        for i in range(c):
            if budgets[i] is not None and not 1 <= budgets[i] <= p:
                raise ConfigError(f"budget {budgets[i]} is out of range for a crop of {p} tokens (1..{p}).")
            valid = None if crops.valid is None else crops.valid[i].bool().cpu()
            f = self.kernel_for((h, w), budgets[i], crops.uneven_partition, valid)
            if (h % f or w % f) and not crops.uneven_partition:
                raise ConfigError(f"kernel={f} does not tile the {h}x{w} grid; choose one of {pooling_kernels(h, w)}.")
            if crops.uneven_partition and (h % f or w % f):
                pooled, pos = pool_uneven(crops.features[i], h, w, f)
            elif crops.valid is None:
                grid = crops.features[i].reshape(h // f, f, w // f, f, d)
                pooled = grid.float().mean(dim=(1, 3)).reshape(-1, d).to(crops.features.dtype) if f > 1 else crops.features[i]
                pos = representative_positions(h, w, f).to(crops.features.device)
            else:
                pooled, pos = pool_valid(crops.features[i], crops.valid[i].to(crops.features.device).bool(), h, w, f)
            feats.append(pooled)
            positions.append(pos)
            row = {"tokens_kept": pooled.shape[0]}
            if budgets[i] is not None:
                row["tokens_budget"] = budgets[i]
            stats.append(row)
        return CropSelection(features=feats, positions=positions, stats=stats)

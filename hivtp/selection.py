"""HIVTP's two-stage token selection on a grid of importance scores (spec sections 2-5).

Stage 1 (global retaining): split the H x W grid into ``regions x regions`` equal regions and keep
the top ``floor(n_region * keep_ratio)`` tokens of each region by score.
Stage 2 (local retaining): tile the grid with non-overlapping ``window x window`` windows; in each
window keep the single best token that stage 1 did not keep (a window fully kept by stage 1 adds
nothing).
Output: the union, as sorted raster indices (``p = row * W + col``).

Everything is vectorised over the batch: regions and windows are reshapes of the score tensor, so
there is no Python loop on the hot path.

Uneven grids (``uneven=True``; Qwen2.5-VL, whose merged-token grid depends on each image's size and is
rarely square): where ``regions`` or ``window`` does not divide the grid, the rule still applies, on an
uneven partition (DECISION, :func:`uneven_labels`): the rows are cut into ``min(regions, H)`` bands at
``floor(i * H / bands)`` (likewise the columns), so band sizes differ by at most one; each region keeps
``floor(n_region * keep_ratio)`` of its own tokens; windows tile each region from its top-left corner,
and the windows on a region's bottom / right edge are cut short (a 3x3 region with window 2 has windows
of 2x2, 2x1, 1x2 and 1x1); every window, short or not, adds its best non-global token. On a grid that
the geometry divides this is exactly the strict rule (tested), and it never raises for a grid shape. Ties go to the lower raster index (DECISION): stage 1 uses
a stable sort and stage 2 ``argmax`` (which returns the first maximum); within a region or window,
local raster order agrees with global raster order, so "first" means "lowest raster index".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

import torch

from .errors import ConfigError

__all__ = [
    "Selection",
    "select",
    "select_masks",
    "fit_to_budget",
    "validate_geometry",
    "region_keep_count",
    "rule_token_bounds",
    "uneven_labels",
]


@dataclass
class Selection:
    """Result of HIVTP on a batch of grids. Masks are ``[B, H*W]`` bool in raster order."""

    global_mask: torch.Tensor
    local_mask: torch.Tensor
    added_mask: torch.Tensor  # tokens added by the exact-budget correction (none without a budget)
    corrected: torch.Tensor  # [B] long: tokens added or dropped by the correction (0 without budget)

    @property
    def keep_mask(self) -> torch.Tensor:
        return self.global_mask | self.local_mask | self.added_mask

    def indices(self) -> list[torch.Tensor]:
        """One sorted LongTensor of kept raster indices per sample."""
        return [row.nonzero(as_tuple=False).flatten() for row in self.keep_mask]

    def counts(self) -> dict[str, torch.Tensor]:
        return {
            "tokens_kept": self.keep_mask.sum(-1),
            "tokens_global": self.global_mask.sum(-1),
            "tokens_local": self.local_mask.sum(-1),
            "tokens_corrected": self.corrected,
        }


def region_keep_count(n_region: int, keep_ratio: float) -> int:
    """``floor(n_region * keep_ratio)``, where the product is taken exactly on the decimal the ratio is
    written as (``repr`` of the float) and then rounded to 9 decimal places before the floor.

    Why both steps: binary floating point makes ``100 * 0.29`` 28.999999999999996 (floor 28, but 29 is
    meant); and a ratio meant as a fraction k/n is written as a repeating decimal cut at 16-17 digits
    (``7/144`` -> 0.04861111111111111, ``1/144`` -> 0.006944444444444444), whose exact product falls
    just short of k (6.99999999999999984). Rounding to 9 places gives the count meant in both cases
    (29; 7; 1), and it is exact for any ratio written with at most 9 decimals. A count of 0 is valid
    (e.g. 144 x 0.001): that region keeps no global token and stage 2 alone picks its tokens."""
    product = Decimal(repr(float(keep_ratio))) * n_region
    return math.floor(round(product, 9))


def validate_geometry(height: int, width: int, regions: int, keep_ratio: float, window: int) -> None:
    """Raise ConfigError for any geometry the rule cannot apply to; never fall back silently."""
    for name, value in (("regions", regions), ("window", window)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
        raise ConfigError(
            f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}. "
            "Use 1.0 to keep every token, or `budget=` for a token count."
        )
    if height % regions or width % regions:
        raise ConfigError(
            f"regions={regions} does not divide the {height}x{width} token grid into equal regions. "
            f"Choose regions among the divisors of {math.gcd(height, width)}."
        )
    rh, rw = height // regions, width // regions
    if rh % window or rw % window:
        raise ConfigError(
            f"window={window} does not tile a {rh}x{rw} region (grid {height}x{width}, regions={regions}). "
            f"Choose window among the divisors of {math.gcd(rh, rw)}."
        )


def rule_token_bounds(height: int, width: int, regions: int, keep_ratio: float, window: int) -> tuple[int, int]:
    """Smallest and largest token count the pure rule can produce on this geometry.

    Per region: exactly ``k`` global tokens; each of the ``n_win`` windows adds one local token unless
    all its tokens are global. At most ``floor(k / window^2)`` windows can be fully global, and at
    most ``n_region - k`` windows can hold a non-global token.
    """
    validate_geometry(height, width, regions, keep_ratio, window)
    n_region = (height // regions) * (width // regions)
    k = region_keep_count(n_region, keep_ratio)
    n_win = n_region // (window * window)
    least = k + n_win - min(k // (window * window), n_win)
    most = k + min(n_win, n_region - k)
    return regions * regions * least, regions * regions * most


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ConfigError(f"scores must be a [B, H, W] tensor, got {shape}.")
    if not scores.is_floating_point():
        raise ConfigError(f"scores must be floating point, got {scores.dtype}.")
    if not torch.isfinite(scores).all():
        raise ConfigError("scores contain NaN or inf; importance scores must be finite.")


def _to_blocks(x: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """[B, H, W] -> [B, H//bh, W//bw, bh*bw]: each block flattened in its own raster order."""
    b, h, w = x.shape
    return x.reshape(b, h // bh, bh, w // bw, bw).permute(0, 1, 3, 2, 4).reshape(b, h // bh, w // bw, bh * bw)


def _from_blocks(x: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """Inverse of :func:`_to_blocks`."""
    b, nh, nw, _ = x.shape
    return x.reshape(b, nh, nw, bh, bw).permute(0, 1, 3, 2, 4).reshape(b, nh * bh, nw * bw)


def _bands(size: int, parts: int) -> torch.Tensor:
    """[size] long: the band of each row (or column) when ``size`` is cut into ``min(parts, size)``
    bands at ``floor(i * size / bands)``."""
    bands = min(parts, size)
    starts = torch.tensor([i * size // bands for i in range(bands)])
    return torch.bucketize(torch.arange(size), starts, right=True) - 1


def uneven_labels(height: int, width: int, regions: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([H*W] region label, [H*W] window label) of every raster position under the uneven partition
    (module docstring). Labels are dense integers; on a grid the geometry divides, the partition is
    the strict rule's."""
    row_band, col_band = _bands(height, regions), _bands(width, regions)
    region = row_band[:, None] * (int(col_band.max()) + 1) + col_band[None, :]  # [H, W]
    # offset of every row / column inside its band -> window index inside the region
    row_start = torch.tensor([int((row_band == row_band[r]).nonzero()[0]) for r in range(height)])
    col_start = torch.tensor([int((col_band == col_band[c]).nonzero()[0]) for c in range(width)])
    row_win = (torch.arange(height) - row_start) // window
    col_win = (torch.arange(width) - col_start) // window
    per_region = (int(row_win.max()) + 1) * (int(col_win.max()) + 1)
    win = region * per_region + row_win[:, None] * (int(col_win.max()) + 1) + col_win[None, :]
    return region.flatten(), torch.unique(win.flatten(), return_inverse=True)[1]


def _grouped_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, n] long: each position's rank inside its label group, by descending score, ties to the lower
    raster index (two stable sorts: by score, then by label)."""
    b, n = scores.shape
    by_score = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    by_label = torch.sort(labels.to(scores.device)[by_score], dim=-1, stable=True).indices
    order = by_score.gather(-1, by_label)  # [B, n] grouped by label, best first inside a group
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    starts = (torch.cumsum(counts, 0) - counts).to(scores.device)
    rank_sorted = torch.arange(n, device=scores.device).expand(b, n) - starts[labels.to(scores.device)[order]]
    return torch.empty_like(order).scatter_(-1, order, rank_sorted)


def _select_masks_uneven(scores: torch.Tensor, regions: int, keep_ratio: float, window: int) -> Selection:
    b, h, w = scores.shape
    region, win = uneven_labels(h, w, regions, window)
    flat = scores.reshape(b, h * w)
    sizes = torch.bincount(region)
    keep = torch.tensor([region_keep_count(int(n), keep_ratio) for n in sizes], device=scores.device)
    global_mask = _grouped_rank(flat, region) < keep[region.to(scores.device)]  # stage 1
    candidates = flat.masked_fill(global_mask, float("-inf"))
    local_mask = (_grouped_rank(candidates, win) == 0) & ~global_mask  # stage 2: best non-global per window
    return Selection(
        global_mask=global_mask,
        local_mask=local_mask,
        added_mask=torch.zeros_like(global_mask),
        corrected=torch.zeros(b, dtype=torch.long, device=scores.device),
    )


def select_masks(
    scores: torch.Tensor, regions: int = 2, keep_ratio: float = 0.25, window: int = 2, uneven: bool = False
) -> Selection:
    """The pure HIVTP rule; returns global and local masks (see module docstring). ``uneven=True``
    applies the uneven partition where the geometry does not divide the grid, instead of raising."""
    _check_scores(scores)
    b, h, w = scores.shape
    if uneven:
        validate_geometry(regions * window, regions * window, regions, keep_ratio, window)  # the values only
        rh, rw = h // regions, w // regions
        if h % regions or w % regions or rh % window or rw % window:
            return _select_masks_uneven(scores, regions, keep_ratio, window)
    validate_geometry(h, w, regions, keep_ratio, window)
    rh, rw = h // regions, w // regions
    k = region_keep_count(rh * rw, keep_ratio)

    # Stage 1: per-region top-k. Stable descending sort => equal scores keep raster order.
    region_scores = _to_blocks(scores, rh, rw)  # [B, R, R, rh*rw]
    order = torch.sort(region_scores, dim=-1, descending=True, stable=True).indices[..., :k]
    region_global = torch.zeros_like(region_scores, dtype=torch.bool).scatter_(-1, order, True)
    global_grid = _from_blocks(region_global, rh, rw)  # [B, H, W]

    # Stage 2: best non-global token per window. Windows tile regions exactly (validated), so
    # tiling the whole grid from the origin is the same as tiling each region.
    win_scores = _to_blocks(scores, window, window)  # [B, H/w, W/w, w*w]
    win_global = _to_blocks(global_grid, window, window)
    candidates = win_scores.masked_fill(win_global, float("-inf"))
    best = candidates.argmax(dim=-1, keepdim=True)  # first maximum => lowest raster index on ties
    has_candidate = (~win_global).any(dim=-1, keepdim=True)
    win_local = torch.zeros_like(win_global).scatter_(-1, best, True) & has_candidate
    local_grid = _from_blocks(win_local, window, window)

    global_mask = global_grid.reshape(b, h * w)
    return Selection(
        global_mask=global_mask,
        local_mask=local_grid.reshape(b, h * w),
        added_mask=torch.zeros_like(global_mask),
        corrected=torch.zeros(b, dtype=torch.long, device=scores.device),
    )


def fit_to_budget(scores: torch.Tensor, selection: Selection, budget: int | Sequence[int | None]) -> Selection:
    """Make the kept count exactly ``budget`` per sample (spec section 5).

    Too many: drop the lowest-scoring local tokens first, then the lowest global ones.
    Too few: add the highest-scoring unkept tokens.
    Both are one rule: keep the top ``budget`` tokens by (class, score, -raster index) with classes
    global > local > unkept. Two stable sorts give that lexicographic order. ``budget`` is one int
    for the whole batch or one entry per sample (``None`` leaves that sample as the rule made it).
    """
    b, h, w = scores.shape
    n = h * w
    budgets = [budget] * b if not isinstance(budget, (list, tuple)) else list(budget)
    if len(budgets) != b:
        raise ConfigError(f"got {len(budgets)} budgets for a batch of {b} grids.")
    for x in budgets:
        if x is not None and (isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= n):
            raise ConfigError(f"budget must be an integer in [1, {n}] for a {h}x{w} grid, got {x!r}.")
    if selection.added_mask.any():
        raise ConfigError("fit_to_budget expects the pure rule's selection, not an already corrected one.")

    before = selection.keep_mask.sum(-1)
    target = torch.tensor([before[i] if x is None else x for i, x in enumerate(budgets)], device=scores.device)
    flat = scores.reshape(b, n)
    cls = selection.global_mask.long() * 2 + selection.local_mask.long()  # 2 global, 1 local, 0 unkept
    by_score = torch.sort(flat, dim=-1, descending=True, stable=True).indices
    by_class = torch.sort(cls.gather(-1, by_score), dim=-1, descending=True, stable=True).indices
    ranked = by_score.gather(-1, by_class)  # [B, n] token ids, best first
    rank = torch.empty_like(ranked).scatter_(-1, ranked, torch.arange(n, device=scores.device).expand(b, n))
    keep = rank < target[:, None]
    return Selection(
        global_mask=selection.global_mask & keep,
        local_mask=selection.local_mask & keep,
        added_mask=keep & ~selection.keep_mask,
        corrected=(before - target).abs(),
    )


def select(
    scores: torch.Tensor,
    regions: int = 2,
    keep_ratio: float = 0.25,
    window: int = 2,
    budget: int | None = None,
) -> list[torch.Tensor]:
    """Public API: ``scores [B, H, W]`` -> list of B sorted LongTensors of kept raster indices.

    With ``budget=None`` this is the pure rule; with an integer budget the rule's result is corrected
    to exactly ``budget`` tokens (see :func:`fit_to_budget`).
    """
    selection = select_masks(scores, regions=regions, keep_ratio=keep_ratio, window=window)
    if budget is not None:
        selection = fit_to_budget(scores, selection, budget)
    return selection.indices()

"""hivtp.select against the brute-force reference, on many maps and geometries."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import hivtp
from hivtp.selection import fit_to_budget, rule_token_bounds, select_masks
from reference import budget_reference, hivtp_reference

GRIDS = [(24, 24), (12, 24), (6, 12)]
KEEP_RATIOS = [0.005, 0.1, 0.25, 0.29, 0.3, 0.5, 0.75, 1.0]


def valid_geometries():
    for (h, w), regions, window in itertools.product(GRIDS, range(1, 5), range(1, 5)):
        if h % regions or w % regions:
            continue
        if (h // regions) % window or (w // regions) % window:
            continue
        yield h, w, regions, window


def random_maps(h, w, seed, batch=3):
    """Three kinds: i.i.d. uniform, spatially smoothed (clustered importance, like real maps),
    and coarse integer maps full of ties."""
    g = torch.Generator().manual_seed(seed)
    uniform = torch.rand(batch, h, w, generator=g)
    smooth = F.avg_pool2d(torch.rand(batch, 1, h + 4, w + 4, generator=g), 5, stride=1).squeeze(1)
    ties = torch.randint(0, 3, (batch, h, w), generator=g).float()
    return torch.cat([uniform, smooth, ties])


def as_grid(t):
    return t.tolist()


@pytest.mark.parametrize("h,w,regions,window", list(valid_geometries()))
def test_select_matches_reference(h, w, regions, window):
    for seed, keep_ratio in enumerate(KEEP_RATIOS):
        maps = random_maps(h, w, seed)
        selection = select_masks(maps, regions=regions, keep_ratio=keep_ratio, window=window)
        got = hivtp.select(maps, regions=regions, keep_ratio=keep_ratio, window=window)
        for b in range(maps.shape[0]):
            g_ref, l_ref = hivtp_reference(as_grid(maps[b]), regions, keep_ratio, window)
            expected = sorted(g_ref | l_ref)
            assert got[b].tolist() == expected, (h, w, regions, window, keep_ratio, b)
            assert set(selection.global_mask[b].nonzero().flatten().tolist()) == g_ref
            assert set(selection.local_mask[b].nonzero().flatten().tolist()) == l_ref


def test_output_is_sorted_long_and_one_per_sample():
    maps = torch.rand(5, 24, 24)
    out = hivtp.select(maps)
    assert len(out) == 5
    for idx in out:
        assert idx.dtype == torch.long
        assert torch.all(idx[1:] > idx[:-1])


def test_default_count_bounds_on_many_maps():
    counts = []
    for seed in range(40):
        maps = random_maps(24, 24, seed, batch=4)
        counts += [len(i) for i in hivtp.select(maps)]
    assert min(counts) >= 252 and max(counts) <= 288
    assert rule_token_bounds(24, 24, 2, 0.25, 2) == (252, 288)


def test_default_bounds_are_attained():
    # Best tokens packed in whole 2x2 windows: 9 windows per quadrant are fully global -> 288 - 36 = 252.
    packed = torch.zeros(24, 24)
    for qr, qc in itertools.product((0, 12), (0, 12)):
        packed[qr : qr + 6, qc : qc + 6] = 10 + torch.rand(6, 6)
    # Best tokens spread one per window: every window keeps a local token too -> 288.
    spread = torch.rand(24, 24)
    spread[::2, ::2] += 10
    counts = [len(i) for i in hivtp.select(torch.stack([packed, spread]))]
    assert counts == [252, 288]


def test_ties_go_to_lower_raster_index():
    flat = torch.zeros(1, 4, 4)  # all equal: stage 1 keeps the first k of each region in raster order
    g, l = hivtp_reference(as_grid(flat[0]), 1, 0.25, 2)
    assert sorted(g) == [0, 1, 2, 3]
    sel = select_masks(flat, regions=1, keep_ratio=0.25, window=2)
    assert sel.global_mask[0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    # Global = row 0. Window {0,1,4,5} has 4,5 free -> 4; {2,3,6,7} -> 6; {8,9,12,13} -> 8; {10,11,14,15} -> 10.
    assert sel.local_mask[0].nonzero().flatten().tolist() == [4, 6, 8, 10]


def test_keep_ratio_floor_is_exact_for_decimals():
    # 100 * 0.29 is 28.999999999999996 in binary floating point; the rule means floor(29) = 29.
    maps = torch.rand(1, 10, 10)
    sel = select_masks(maps, regions=1, keep_ratio=0.29, window=1)
    assert int(sel.global_mask.sum()) == 29


def test_keep_count_rule_is_one_rule_in_code_and_reference():
    """One rule for floor(n x keep_ratio), in code and reference alike: the exact product on the
    decimal the ratio is written as, rounded to 9 places. 0.006944444444444444 (1/144 as a float) keeps
    1 of 144 (the exact product is 0.99999999999999994: a bare floor says 0), 0.29 keeps 29 of 100
    (the float product says 28), and 0.001 keeps 0 (stage 2 alone)."""
    from reference import keep_count

    from hivtp.selection import region_keep_count

    cases = [(144, 0.006944444444444444, 1), (144, 7 / 144, 7), (100, 0.29, 29), (144, 0.001, 0),
             (144, 0.25, 36), (576, 1 / 3, 192), (36, 0.1, 3), (144, 1.0, 144)]
    for n, ratio, meant in cases:
        assert region_keep_count(n, ratio) == keep_count(n, ratio) == meant, (n, ratio)
    maps = random_maps(24, 24, seed=7)
    for ratio, globals_per_region in ((0.006944444444444444, 1), (0.001, 0)):
        sel = select_masks(maps, regions=2, keep_ratio=ratio, window=2)
        assert int(sel.global_mask[0].sum()) == 4 * globals_per_region
        for b in range(maps.shape[0]):
            g_ref, l_ref = hivtp_reference(as_grid(maps[b]), 2, ratio, 2)
            assert sel.keep_mask[b].nonzero().flatten().tolist() == sorted(g_ref | l_ref)


def test_keep_ratio_one_keeps_everything():
    out = hivtp.select(torch.rand(2, 24, 24), keep_ratio=1.0)
    assert all(len(i) == 576 for i in out)


@pytest.mark.parametrize("budget", [1, 64, 128, 192, 252, 300, 576])
def test_budget_correction_matches_reference(budget):
    for seed in range(6):
        maps = random_maps(24, 24, 100 + seed, batch=2)
        pure = select_masks(maps)
        fitted = fit_to_budget(maps, pure, budget)
        for b in range(maps.shape[0]):
            g_ref, l_ref = hivtp_reference(as_grid(maps[b]), 2, 0.25, 2)
            expected = budget_reference(as_grid(maps[b]), g_ref, l_ref, budget)
            assert set(fitted.keep_mask[b].nonzero().flatten().tolist()) == expected
            assert int(fitted.keep_mask[b].sum()) == budget
            assert int(fitted.corrected[b]) == abs(len(g_ref | l_ref) - budget)


def test_budget_drops_local_before_global_and_counts_added():
    maps = torch.rand(1, 24, 24)
    pure = select_masks(maps)
    n_global = int(pure.global_mask.sum())
    fitted = fit_to_budget(maps, pure, n_global)  # exactly the global tokens survive
    assert torch.equal(fitted.keep_mask, pure.global_mask)
    more = fit_to_budget(maps, pure, 400)
    assert int(more.added_mask.sum()) == 400 - int(pure.keep_mask.sum())
    assert torch.equal(more.global_mask | more.local_mask, pure.keep_mask)


def test_per_sample_budgets():
    maps = torch.rand(3, 24, 24)
    pure = select_masks(maps)
    fitted = fit_to_budget(maps, pure, [64, None, 200])
    assert fitted.keep_mask.sum(-1).tolist() == [64, int(pure.keep_mask[1].sum()), 200]
    assert torch.equal(fitted.keep_mask[1], pure.keep_mask[1])


def test_select_with_budget_argument():
    out = hivtp.select(torch.rand(2, 24, 24), budget=128)
    assert [len(i) for i in out] == [128, 128]

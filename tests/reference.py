"""A deliberately plain re-derivation of the HIVTP rule, written from the spec alone.

No reshapes, no sorting tricks: Python loops over regions, windows and cells, exact rational
arithmetic for ``floor(n_region * keep_ratio)``, ties resolved by an explicit (score, raster) key.
The vectorised implementation in ``hivtp.selection`` is tested against this.
"""

from __future__ import annotations

import math
from fractions import Fraction


def keep_count(n_region: int, keep_ratio: float) -> int:
    # The ratio as the decimal the user wrote (0.29 means 29/100), not its binary approximation:
    # repr gives the shortest decimal that reads back as the float. The product is exact (a Fraction),
    # then rounded to 9 decimal places (a ratio meant as k/n is written as a cut repeating decimal).
    exact = Fraction(repr(float(keep_ratio))) * n_region
    return math.floor(Fraction(round(exact * 10**9), 10**9))


def hivtp_reference(grid, regions: int, keep_ratio: float, window: int):
    """grid: list of H rows of W floats. Returns (global set, local set) of raster indices."""
    h, w = len(grid), len(grid[0])
    rh, rw = h // regions, w // regions
    k = keep_count(rh * rw, keep_ratio)

    def score(p):
        return grid[p // w][p % w]

    chosen_global = set()
    for ri in range(regions):
        for ci in range(regions):
            cells = [r * w + c for r in range(ri * rh, (ri + 1) * rh) for c in range(ci * rw, (ci + 1) * rw)]
            # Highest score first; on equal scores the lower raster index first.
            cells.sort(key=lambda p: (-score(p), p))
            chosen_global.update(cells[:k])

    chosen_local = set()
    for wr in range(0, h, window):
        for wc in range(0, w, window):
            cells = [r * w + c for r in range(wr, wr + window) for c in range(wc, wc + window)]
            candidates = [p for p in cells if p not in chosen_global]
            if candidates:
                best = min(candidates, key=lambda p: (-score(p), p))
                chosen_local.add(best)
    return chosen_global, chosen_local


def budget_reference(grid, chosen_global: set, chosen_local: set, budget: int):
    """Spec section 5: too many -> drop lowest local, then lowest global; too few -> add best unkept.
    Returns the final kept set."""
    w = len(grid[0])
    n = len(grid) * w

    def score(p):
        return grid[p // w][p % w]

    kept = set(chosen_global) | set(chosen_local)
    if len(kept) > budget:
        # Lowest score dropped first; among equal scores the higher raster index goes first
        # (the mirror image of "lower raster index wins").
        locals_worst_first = sorted(chosen_local, key=lambda p: (score(p), -p))
        globals_worst_first = sorted(chosen_global, key=lambda p: (score(p), -p))
        for p in (locals_worst_first + globals_worst_first)[: len(kept) - budget]:
            kept.discard(p)
    elif len(kept) < budget:
        unkept_best_first = sorted((p for p in range(n) if p not in kept), key=lambda p: (-score(p), p))
        kept.update(unkept_best_first[: budget - len(kept)])
    return kept


def received_attention_reference(hidden_states, layers, vision_model):
    """Mean attention each patch receives, from the layers' own weights and HF's hidden states:
    hidden_states[l] is the input of layer l. Plain einsum, no chunking. Returns [B, P] float64."""
    import torch

    from hivtp.vision import tower_parts

    encoder_layers = tower_parts(vision_model)[2]
    maps = []
    for l in layers:
        layer = encoder_layers[l]
        x = layer.layer_norm1(hidden_states[l]).double()
        attn = layer.self_attn
        wq, bq = attn.q_proj.weight.double(), attn.q_proj.bias.double()
        wk, bk = attn.k_proj.weight.double(), attn.k_proj.bias.double()
        q = x @ wq.T + bq
        k = x @ wk.T + bk
        b, t, d = q.shape
        heads = attn.num_heads
        q = q.view(b, t, heads, d // heads)
        k = k.view(b, t, heads, d // heads)
        logits = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d // heads)
        maps.append(torch.softmax(logits, dim=-1))  # [B, heads, T(query), T(key)]
    mean_map = torch.stack(maps).mean(dim=(0, 2))  # over layers and heads -> [B, T, T]
    received = mean_map.mean(dim=1)  # over ALL query rows, CLS included -> [B, T]
    return received[:, 1:]  # patch j is token 1 + j

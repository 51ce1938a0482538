"""Convolution-like initialisation of the toy vision tower (training only).

A ViT trained from scratch starts with position embeddings far smaller than its patch embeddings
(about 0.16 vs 3.3 in norm here) and near-zero query/key weights, so every head attends uniformly and
no token can see its neighbours until position structure has been learned: hundreds of steps in
which the tower cannot tell a square from a circle (the interior patches of both look alike; shape
lives in how neighbouring patches are arranged). This initialisation starts each head as a 3x3
convolution tap instead (Cordonnier, Loukas & Jaggi, "On the relationship between self-attention and
convolutional layers", ICLR 2020), after which training is free to change everything:

* the last ``4 * len(WAVES)`` channels hold 2-D sin/cos position features (x and y at each
  wavelength) and the patch embedding writes only the other channels;
* head ``h`` of layer ``l`` compares positions only: its key is the query rotated by the offset
  ``OFFSETS[(h + l) % 4]``, so ``q_i . k_j`` peaks where patch ``j`` is patch ``i``'s neighbour at
  that offset (right, left, below, above).

It changes initial values only: the architecture stays CLIP's, and the saved checkpoint is a
normal llava-hf one.
"""

from __future__ import annotations

import math

import torch

__all__ = ["WAVES", "OFFSETS", "position_features", "conv_like_init", "mimetic_init"]

WAVES: tuple[float, ...] = (3.0, 6.0, 12.0, 24.0)  # wavelengths in patches
OFFSETS: tuple[tuple[int, int], ...] = ((1, 0), (-1, 0), (0, 1), (0, -1))  # (dx, dy): right, left, below, above


def position_features(grid: int) -> torch.Tensor:
    """[grid * grid, 4 * len(WAVES)] raster-order features: sin x, cos x, sin y, cos y per wavelength."""
    cells = torch.arange(grid * grid)
    xs, ys = (cells % grid).float()[:, None], (cells // grid).float()[:, None]
    w = torch.tensor([2 * math.pi / lam for lam in WAVES])
    return torch.cat([torch.sin(xs * w), torch.cos(xs * w), torch.sin(ys * w), torch.cos(ys * w)], 1)


def _shift(dx: int, dy: int) -> torch.Tensor:
    """[F, F] (F = 4 * len(WAVES)): maps the features of (x, y) to those of (x - dx, y - dy), so that
    ``feat(i) . shift @ feat(j)`` peaks where ``j = i + (dx, dy)``."""
    n = len(WAVES)
    out = torch.zeros(4 * n, 4 * n)
    for axis, d in ((0, dx), (1, dy)):
        for f, lam in enumerate(WAVES):
            a = -2 * math.pi / lam * d
            s, c = axis * 2 * n + f, axis * 2 * n + n + f  # the sin and cos channel of this wavelength
            out[s, s], out[s, c] = math.cos(a), math.sin(a)  # sin(u + a)
            out[c, c], out[c, s] = math.cos(a), -math.sin(a)  # cos(u + a)
    return out


@torch.no_grad()
def conv_like_init(tower, seed: int, strength: float = 2.0, noise: float = 0.02) -> None:
    """Re-initialise ``tower`` (a CLIPVisionModel) in place. ``strength`` scales the q.k logits: 2
    puts most of each head's weight on its neighbour at initialisation (3: nearly all). Needs
    ``head_dim == 4 * len(WAVES)`` (the toy tower: width 64, 4 heads)."""
    cfg = tower.config
    width, heads = cfg.hidden_size, cfg.num_attention_heads
    head_dim, npos = width // heads, 4 * len(WAVES)
    if head_dim != npos:
        raise ValueError(f"conv_like_init needs head_dim == {npos}; this tower has {head_dim} ({width} / {heads} heads).")
    emb = tower.embeddings
    table = emb.position_embedding.weight  # [1 + P, D]: row 0 is the class token's
    grid = math.isqrt(table.shape[0] - 1)
    emb.patch_embedding.weight[width - npos :] = 0  # content in the first D - npos channels
    table.zero_()
    table[1:, width - npos :] = position_features(grid)
    gen = torch.Generator().manual_seed(seed)
    for li, layer in enumerate(tower.encoder.layers):
        q, k = torch.zeros(width, width), torch.zeros(width, width)
        for h in range(heads):
            rows = slice(h * head_dim, (h + 1) * head_dim)
            q[rows, width - npos :] = torch.eye(npos)
            k[rows, width - npos :] = _shift(*OFFSETS[(h + li) % len(OFFSETS)])
        scale = math.sqrt(strength)
        layer.self_attn.q_proj.weight.copy_(scale * q + noise * torch.randn(width, width, generator=gen))
        layer.self_attn.k_proj.weight.copy_(scale * k + noise * torch.randn(width, width, generator=gen))


@torch.no_grad()
def mimetic_init(language_model, seed: int, strength: float = 0.5, noise: float = 0.02) -> None:
    """Start every attention layer of ``language_model`` (a Llama) with ``W_q ~ W_k ~ sqrt(strength) I``
    (Trockman & Kolter, "Mimetic initialization of self-attention layers", ICML 2023): a token then
    attends to tokens that resemble it, e.g. the word "red" to image tokens whose projection
    resembles the word "red" (see ``train.grounding_loss``), instead of uniformly. Needs square
    q/k projections (no grouped-query attention)."""
    gen = torch.Generator().manual_seed(seed + 2)
    for layer in language_model.layers:
        attn = layer.self_attn
        for proj in (attn.q_proj, attn.k_proj):
            out, width = proj.weight.shape
            if out != width:
                raise ValueError(f"mimetic_init needs square q/k projections; got {out}x{width}.")
            proj.weight.copy_(math.sqrt(strength) * torch.eye(width) + noise * torch.randn(out, width, generator=gen))

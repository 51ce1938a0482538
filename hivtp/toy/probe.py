"""Is an object's place readable from the tokens the language model sees? A linear probe.

Left / right questions need each object's column in the *projected* patch tokens (the projector's
output, what the LLM attends to), not only in the encoder's. ``position_r2`` fits a ridge read-out of
(column, row) on the object patches of some scenes and scores it (R^2) on other scenes, for the
feature-layer tokens and for the projected ones. ``scripts/toy_position_probe.py`` prints it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..world import draw_scene, render
from .data import patch_labels

__all__ = ["ridge_r2", "position_r2"]


def ridge_r2(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """[targets] R^2 on (x_test, y_test) of the ridge regression (with bias) fitted on (x_fit, y_fit).
    Features are standardised on the fit set; 1 = exact, 0 = no better than the fit set's mean."""
    mean, std = x_fit.mean(0), x_fit.std(0).clamp(min=1e-6)
    design = lambda x: torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # noqa: E731
    a = design(x_fit).double()
    penalty = ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype)
    penalty[-1, -1] = 0  # the bias is not shrunk
    w = torch.linalg.solve(a.T @ a + penalty, a.T @ y_fit.double())
    residual = ((design(x_test).double() @ w - y_test.double()) ** 2).mean(0)
    return (1 - residual / ((y_test.double() - y_fit.double().mean(0)) ** 2).mean(0)).float()


@torch.no_grad()
def position_r2(model, processor, scenes: int = 48, seed: int = 555, fit_share: float = 0.75) -> dict[str, tuple[float, float]]:
    """{"encoder" | "projected": (R^2 column, R^2 row)} over the object patches of ``scenes`` fresh
    scenes (1-4 objects), fitted on the first ``fit_share`` of the scenes and scored on the rest."""
    from .forward import cell_positions, feature_layer

    if int(scenes * fit_share) < 2 or int(scenes * fit_share) >= scenes:
        raise ValueError(f"scenes={scenes} with fit_share={fit_share} leaves no scenes to fit or to score; use more scenes.")
    rng = np.random.default_rng(seed)
    drawn = [draw_scene(rng) for _ in range(scenes)]
    pixels = processor.image_processor([render(s) for s in drawn], return_tensors="pt").pixel_values
    grid = int(model.config.image_seq_length**0.5)
    where = cell_positions(grid)  # [P, 2]
    feats = {"encoder": [], "projected": []}
    places, scene_of = [], []
    for i in range(0, scenes, 8):  # a few images per tower pass
        tokens = feature_layer(model, pixels[i : i + 8])  # [B, P, D_vision]
        projected = model.model.multi_modal_projector(tokens)  # [B, P, D_text]
        for j, scene in enumerate(drawn[i : i + 8]):
            on = patch_labels(scene, grid) > 0
            feats["encoder"].append(tokens[j][on]), feats["projected"].append(projected[j][on])
            places.append(where[on]), scene_of.append(torch.full((int(on.sum()),), i + j))
    y, scene_of = torch.cat(places), torch.cat(scene_of)
    fit = scene_of < int(scenes * fit_share)
    out = {}
    for name, rows in feats.items():
        x = torch.cat(rows).float()
        r2 = ridge_r2(x[fit], y[fit], x[~fit], y[~fit])
        out[name] = (round(float(r2[0]), 3), round(float(r2[1]), 3))
    return out

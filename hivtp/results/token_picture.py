"""The overview figure's token picture: the importance heat map over the image the tower sees, the
globally kept tokens in one colour and the locally kept ones in another (hivtp.importance +
hivtp.selection.select_masks). Needs a model, so `make reproduce` draws it, not `make figures`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from ..importance import importance  # noqa: E402
from ..selection import select_masks  # noqa: E402
from .figures import save  # noqa: E402

GLOBAL_COLOUR, LOCAL_COLOUR = "#ff3b30", "#00c7ff"


def _tower_image(pixel_values: torch.Tensor, image_processor: Any) -> np.ndarray:
    """[3, S, S] normalised pixels -> [S, S, 3] in [0, 1] (exactly what the tower sees)."""
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    return (pixel_values.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


@torch.no_grad()
def token_picture(model: Any, processor: Any, images: Sequence[Any], out_dir: Path, name: str = "token_picture",
                  regions: int = 2, keep_ratio: float = 0.25, window: int = 2,
                  layers: Sequence[int] = (6, 7, 8)) -> list[Path]:
    """One row per image: the image, its importance heat map, and the kept tokens (global / local)."""
    pixel_values = processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
    tower = model.model.vision_tower if hasattr(model, "model") else model.vision_tower
    pixel_values = pixel_values.to(device=tower.device, dtype=tower.dtype)
    scores = importance(tower, pixel_values, layers=tuple(layers))  # [B, H, W] float32
    sel = select_masks(scores, regions=regions, keep_ratio=keep_ratio, window=window)
    b, h, w = scores.shape
    fig, axes = plt.subplots(b, 3, figsize=(9, 3 * b), squeeze=False)
    for i in range(b):
        img = _tower_image(pixel_values[i], processor.image_processor)
        side = img.shape[0] / h
        axes[i][0].imshow(img)
        axes[i][1].imshow(img)
        axes[i][1].imshow(scores[i].cpu().numpy(), cmap="inferno", alpha=0.6, extent=(0, img.shape[1], img.shape[0], 0))
        axes[i][2].imshow(img * 0.35)
        for mask, colour in ((sel.global_mask[i], GLOBAL_COLOUR), (sel.local_mask[i], LOCAL_COLOUR)):
            for p in torch.nonzero(mask).flatten().tolist():
                r, c = divmod(p, w)
                axes[i][2].add_patch(Rectangle((c * side, r * side), side, side, color=colour, alpha=0.75, lw=0))
        for ax in axes[i]:
            ax.axis("off")
    axes[0][0].set_title("image (as the tower sees it)", fontsize=10)
    axes[0][1].set_title(f"importance\n(layers {'-'.join(map(str, layers))}, bright = high)", fontsize=10)
    axes[0][2].set_title(f"kept tokens\n(regions {regions}, keep_ratio {keep_ratio:g}, window {window})", fontsize=10)
    fig.legend(handles=[Patch(color=GLOBAL_COLOUR, label="global (regions)"), Patch(color=LOCAL_COLOUR, label="local (windows)")],
               loc="lower center", ncol=2)
    return save(fig, Path(out_dir), name)

"""``hivtp``: middle-layer importance + global (regions) and local (windows) retaining.

The scoring and the rule live in :mod:`hivtp.importance` and :mod:`hivtp.selection`; this class
binds them to the method interface and validates parameters as early as it can: value ranges when
the method is built, geometry and layer indices when it is attached to a model.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError
from ..importance import DEFAULT_LAYERS, check_backend, scores_from_tower
from ..selection import fit_to_budget, select_masks, validate_geometry
from .base import CropBatch, CropSelection, PruningMethod, TowerRequest, parse_layers, register_method


@register_method
class HIVTP(PruningMethod):
    name = "hivtp"

    def __init__(
        self,
        regions: int = 2,
        keep_ratio: float = 0.25,
        window: int = 2,
        layers: Sequence[int] | str = DEFAULT_LAYERS,
        backend: str = "fast",
        budget: int | None = None,
    ) -> None:
        self.regions = regions
        self.keep_ratio = keep_ratio
        self.window = window
        self.layers = parse_layers(layers)
        self.backend = check_backend(backend)
        self.budget = budget
        # Grid-independent checks now (a 1x1-region, 1x1-window grid accepts any valid value).
        validate_geometry(regions * window, regions * window, regions, keep_ratio, window)
        if not self.layers:
            raise ConfigError("score layers must not be empty; the default is (6, 7, 8).")
        if min(self.layers) < 0:
            raise ConfigError(f"score layers are 0-based encoder layer indices >= 0, got {list(self.layers)}.")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ConfigError(f"budget must be a positive integer or None, got {budget!r}.")

    def params(self) -> dict[str, Any]:
        return {
            "regions": self.regions,
            "keep_ratio": self.keep_ratio,
            "window": self.window,
            "layers": list(self.layers),
            "backend": self.backend,
            "budget": self.budget,
        }

    def check(self, grid: tuple[int, int], num_layers: int, feature_attention_layer: int) -> None:
        validate_geometry(grid[0], grid[1], self.regions, self.keep_ratio, self.window)
        too_deep = [x for x in self.layers if x > feature_attention_layer]
        if too_deep:
            raise ConfigError(
                f"score layer(s) {too_deep} lie past the feature layer (the output of layer "
                f"{feature_attention_layer}, 0-based, of {num_layers}); layers after it are never run. "
                f"Pick 0-based layers <= {feature_attention_layer}."
            )

    def tower_request(self) -> TowerRequest:
        if self.backend == "eager":
            return TowerRequest(attention_layers=self.layers, eager=True)
        return TowerRequest(qk_layers=self.layers)

    def select(self, crops: CropBatch) -> CropSelection:
        scores = scores_from_tower(crops.tower, self.layers)  # [C, H, W] float32
        selection = select_masks(scores, self.regions, self.keep_ratio, self.window)
        if any(b is not None for b in crops.budgets):
            selection = fit_to_budget(scores, selection, crops.budgets)
        counts = {k: v.tolist() for k, v in selection.counts().items()}
        stats = [{k: counts[k][c] for k in counts} for c in range(crops.num_crops)]
        return CropSelection.from_masks(crops.features, selection.keep_mask, stats)

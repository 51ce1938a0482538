"""``hivtp``: middle-layer importance + global (regions) and local (windows) retaining.

The scoring and the rule live in :mod:`hivtp.importance` and :mod:`hivtp.selection`; this class
binds them to the method interface and validates parameters as early as it can: value ranges when
the method is built, geometry and layer indices when it is attached to a model.

Parameters ``regions`` / ``keep_ratio`` / ``window`` default to None:

* without any budget, None means the paper's defaults (2, 0.25, 2): the pure rule (about 50%);
* with a budget and all three None, the exact-budget presets apply (``presets.json`` beside this
  file, chosen and measured by ``scripts/hivtp_presets.py``, table in docs/presets.md): each crop uses
  the preset whose per-grid budget is nearest to its own budget (LLaVA-1.5: the budget; LLaVA-NeXT:
  the crop's share of the image budget; Qwen2.5-VL's ``keep=r``: each image's budget), the paper's
  geometry counting as the preset of half the grid (its rule keeps at most 144 + 144 of 576), so the
  pure rule lands near the budget, and :func:`hivtp.selection.fit_to_budget` makes it exact;
  ``last_stats[i]["tokens_corrected"]`` counts the tokens that correction added or dropped;
* with a budget and some of the three given, the missing ones take the paper's defaults, and the
  correction trims the rule to the budget (``+sweep=stages`` uses that to drop a stage on purpose).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from dataclasses import replace
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..importance import DEFAULT_LAYERS, check_backend, scores_from_tower
from ..selection import fit_to_budget, select_masks, validate_geometry
from ..selection import Selection
from ._common import attention_request, check_budget
from .base import CropBatch, CropSelection, PruningMethod, TowerRequest, parse_layers, register_method

PAPER_DEFAULTS = {"regions": 2, "keep_ratio": 0.25, "window": 2}
PRESETS_FILE = Path(__file__).with_name("presets.json")


@functools.lru_cache(maxsize=1)
def load_presets() -> dict[str, Any]:
    """The exact-budget presets (package data)."""
    try:
        data = json.loads(PRESETS_FILE.read_text())
    except (OSError, ValueError) as exc:  # pragma: no cover - a broken install
        raise ConfigError(
            f"cannot read HIVTP's budget presets from {PRESETS_FILE} ({exc}); reinstall the package or run "
            "scripts/hivtp_presets.py --write."
        ) from exc
    return data


def preset_candidates() -> list[dict[str, Any]]:
    """The measured presets, and the paper's geometry as the preset of half the presets' grid: its
    rule keeps at most every region's quarter plus one token per window (144 + 144 of 576), so a
    budget near half the grid (Qwen2.5-VL's keep=0.5) is the paper's rule, barely corrected, rather
    than the largest preset (256) topped up by score."""
    data = load_presets()
    half = data["grid"][0] * data["grid"][1] // 2
    return [*data["presets"], {"budget": half, **PAPER_DEFAULTS}]


def preset_for(budget: int, num_patches: int | None = None) -> dict[str, Any]:
    """The candidate (``preset_candidates``) whose per-grid budget is nearest to ``budget`` tokens of
    a grid of ``num_patches`` (scaled to the presets' grid when it differs); ties go to the larger."""
    data = load_presets()
    grid_tokens = data["grid"][0] * data["grid"][1]
    scaled = budget if num_patches is None else budget * grid_tokens / num_patches
    return min(preset_candidates(), key=lambda p: (abs(p["budget"] - scaled), -p["budget"]))


@register_method
class HIVTP(PruningMethod):
    name = "hivtp"
    family_parameters = {"layers": parse_layers}

    def __init__(
        self,
        regions: int | None = None,
        keep_ratio: float | None = None,
        window: int | None = None,
        layers: Sequence[int] | str = DEFAULT_LAYERS,
        backend: str = "fast",
        budget: int | None = None,
    ) -> None:
        check_budget(budget)
        #: geometry left unset: every crop that gets a budget -- from ``budget``, or per image from the
        #: family (Qwen2.5-VL's ``keep=``) -- uses the exact-budget preset nearest it; a crop without one,
        #: the paper's rule. (Paper geometry under a budget of 128 keeps 144 global tokens, so the
        #: correction would drop the whole local stage: not HIVTP.)
        self.auto_preset = regions is None and keep_ratio is None and window is None
        if self.auto_preset and budget is not None:
            preset = preset_for(budget)
            regions, keep_ratio, window = preset["regions"], preset["keep_ratio"], preset["window"]
        regions = PAPER_DEFAULTS["regions"] if regions is None else regions
        keep_ratio = PAPER_DEFAULTS["keep_ratio"] if keep_ratio is None else keep_ratio
        window = PAPER_DEFAULTS["window"] if window is None else window
        self.regions = regions
        self.keep_ratio = keep_ratio
        self.window = window
        # Left at the signature's default (that very object), the score layers are the family's default:
        # (6, 7, 8) on LLaVA, the middle full-attention block on Qwen2.5-VL (with_family_defaults).
        self.unset_by_caller = frozenset(() if layers is not DEFAULT_LAYERS else {"layers"})
        self.layers = parse_layers(layers)
        self.backend = check_backend(backend)
        self.budget = budget
        # Grid-independent checks now (a 1x1-region, 1x1-window grid accepts any valid value).
        validate_geometry(regions * window, regions * window, regions, keep_ratio, window)
        if not self.layers:
            raise ConfigError("score layers must not be empty; the default is (6, 7, 8).")
        if min(self.layers) < 0:
            raise ConfigError(f"score layers are 0-based encoder layer indices >= 0, got {list(self.layers)}.")

    def params(self) -> dict[str, Any]:
        # Under the presets the geometry is chosen per crop from its own budget (a LLaVA-NeXT crop's share,
        # a Qwen2.5-VL image's keep=): recorded as None (what selects the presets), never as the whole
        # budget's preset, which, given back, would apply that one geometry to every crop.
        auto = self.auto_preset
        return {
            "regions": None if auto else self.regions,
            "keep_ratio": None if auto else self.keep_ratio,
            "window": None if auto else self.window,
            "layers": list(self.layers),
            "backend": self.backend,
            "budget": self.budget,
        }

    def check(self, grid: tuple[int, int] | None, num_layers: int, feature_attention_layer: int) -> None:
        if grid is None:
            pass  # grids vary per image (Qwen2.5-VL): the uneven partition applies to any grid
        elif self.auto_preset and self.budget is not None:
            for p in preset_candidates():
                validate_geometry(grid[0], grid[1], p["regions"], p["keep_ratio"], p["window"])
        else:
            validate_geometry(grid[0], grid[1], self.regions, self.keep_ratio, self.window)
        too_deep = [x for x in self.layers if x > feature_attention_layer]
        if too_deep:
            raise ConfigError(
                f"score layer(s) {too_deep} lie past the feature layer (the output of layer "
                f"{feature_attention_layer}, 0-based, of {num_layers}); layers after it are never run. "
                f"Pick 0-based layers <= {feature_attention_layer}."
            )

    def tower_request(self) -> TowerRequest:
        return attention_request(self.layers, self.backend)

    def select(self, crops: CropBatch) -> CropSelection:
        packed = crops.valid  # [C, P] positions the model's packing keeps (None: all)
        if crops.valid is not None and all(b is None for b in crops.budgets):
            # The pure rule runs on the whole crop (spec section 6); the model's unpadding then drops
            # what it drops. Valid positions matter only for keeping an exact budget exact.
            crops = replace(crops, valid=None)
        scores = scores_from_tower(crops.tower, self.layers)  # [C, H, W] float32
        if crops.valid is not None:
            # Positions the model's packing drops (NeXT unpadding) score below every valid one and are
            # taken out of the rule's result, so that the budget correction only ever adds valid ones.
            valid = crops.valid.to(scores.device).view_as(scores).bool()
            scores = torch.where(valid, scores, scores.amin(dim=(1, 2), keepdim=True) - 1.0)
        if self.auto_preset and (self.budget is not None or any(b is not None for b in crops.budgets)):
            selection = self._select_with_presets(scores, crops)
        else:
            rule = select_masks(scores, self.regions, self.keep_ratio, self.window, uneven=crops.uneven_partition)
            selection = self._only_valid(rule, crops)
            if any(b is not None for b in crops.budgets):
                selection = fit_to_budget(scores, selection, crops.budgets)
        return CropSelection.from_masks(crops.features, selection.keep_mask, self._stats(selection, packed))

    @staticmethod
    def _stats(selection: Selection, packed: torch.Tensor | None) -> list[dict[str, int]]:
        """Per crop counters of the tokens that enter the LLM: a position the model's unpadding drops
        (outside ``packed``) is no global or local token there, so tokens_global + tokens_local is what
        the LLM sees (the pure rule on a NeXT crop picks some such positions)."""
        if packed is not None:
            packed = packed.to(selection.global_mask.device).bool()
            selection = Selection(
                selection.global_mask & packed, selection.local_mask & packed, selection.added_mask & packed,
                selection.corrected,
            )
        counts = {k: v.tolist() for k, v in selection.counts().items()}
        return [{k: counts[k][c] for k in counts} for c in range(len(counts["tokens_kept"]))]

    def geometry_for(self, budget: int | None, num_patches: int) -> tuple[int, float, int]:
        """(regions, keep_ratio, window) a crop with this budget uses."""
        if not self.auto_preset or budget is None:
            return self.regions, self.keep_ratio, self.window
        p = preset_for(budget, num_patches)
        return p["regions"], p["keep_ratio"], p["window"]

    def _select_with_presets(self, scores: torch.Tensor, crops: CropBatch) -> Selection:
        """Per crop: the preset nearest its budget, the pure rule, then the exact-budget correction.
        Crops sharing a preset are processed together."""
        c = scores.shape[0]
        budgets = list(crops.budgets) if crops.budgets else [self.budget] * c
        groups: dict[tuple[int, float, int], list[int]] = {}
        for i, b in enumerate(budgets):
            groups.setdefault(self.geometry_for(b, crops.num_patches), []).append(i)
        n = scores.shape[1] * scores.shape[2]
        out = {k: torch.zeros(c, n, dtype=torch.bool, device=scores.device) for k in ("g", "l", "a")}
        corrected = torch.zeros(c, dtype=torch.long, device=scores.device)
        for (regions, keep_ratio, window), members in groups.items():
            idx = torch.tensor(members, device=scores.device)
            sel = select_masks(scores[idx], regions, keep_ratio, window, uneven=crops.uneven_partition)
            if crops.valid is not None:
                valid = crops.valid.to(scores.device).bool()[idx]
                sel = Selection(sel.global_mask & valid, sel.local_mask & valid, sel.added_mask, sel.corrected)
            sel = fit_to_budget(scores[idx], sel, [budgets[i] for i in members])
            out["g"][idx], out["l"][idx], out["a"][idx] = sel.global_mask, sel.local_mask, sel.added_mask
            corrected[idx] = sel.corrected
        return Selection(global_mask=out["g"], local_mask=out["l"], added_mask=out["a"], corrected=corrected)

    @staticmethod
    def _only_valid(selection: Selection, crops: CropBatch) -> Selection:
        if crops.valid is None:
            return selection
        valid = crops.valid.to(selection.global_mask.device).bool()
        return Selection(selection.global_mask & valid, selection.local_mask & valid, selection.added_mask, selection.corrected)

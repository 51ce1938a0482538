"""What each selection keeps on the toy world: object share, object recall and spread (issue 19).

    python scripts/toy_selection_anatomy.py [--per-family 20] [--budgets 64 192] [--model toy-llava] [--out FILE.json]
    python scripts/toy_selection_anatomy.py --model toy-llava-xeon-seed2 --out results/toy_selection_anatomy.toy-llava-xeon-seed2.json

The offline accuracy table ranks methods; this says what their kept tokens are, on the same held-out
images the calibration uses (:func:`hivtp.toy.evaluate.held_out_items`, one image per question). For
every registered method that selects before the projector (from the registry: in-LLM methods choose
inside the language model, ``none`` keeps everything), at each budget, through ``hivtp.attach``:

* ``tokens``: how many tokens the selection hands on (pool's grid may keep fewer than the budget);
* ``object share``: the share of the kept tokens whose patch an object covers;
* ``object recall``: the share of the image's object patches that are kept;
* ``spread``: the share of the 16 cells of a 4 x 4 partition of the patch grid that hold a kept token
  (how much of the scene a selection still sees);
* ``fixed positions``: the share of the kept tokens at positions the same selection keeps in more than
  half of the measured images, i.e. whatever the image shows. Objects are placed at random, so a rule
  whose choice moves with the image keeps few such tokens (random and the oracle: none, at budgets under
  half the grid; above it some position must be kept in most images); a rule that follows positions the
  vision tower's attention favours on every image keeps many (pool, whose cells never move: all). (The
  positions come from the same images, so its interval is only a guide.)

A patch is an object patch when ``hivtp.methods.oracle.object_patches`` finds object pixels in it: known by
construction from the pixels, never from a model. Methods whose tokens merge patches
(``merges_tokens``: pool, VisionZip's contextual tokens) are read at the patch each token stands for,
and marked: for pool, whose tokens stand for fixed grid cells, the measures say nothing about content. Every number is a mean over images with its 95% bootstrap interval
(:func:`hivtp.bootstrap.mean_interval`). LLaVA-1.5 layout (one 24 x 24 crop per image).
"""

from __future__ import annotations

import sys

import torch

CELLS = 4  # spread: a CELLS x CELLS partition of the patch grid
MEASURES = ("tokens", "object share", "object recall", "spread", "fixed positions")
FIXED_SHARE = 0.5  # a position is fixed when the selection keeps it in more than this share of the images


def selection_measures(kept: torch.Tensor, objects: torch.Tensor, grid: int, fixed: torch.Tensor,
                       cells: int = CELLS) -> dict[str, float]:
    """The measures of one image (and its kept tokens): ``kept`` [K] raster positions, ``objects`` [P] bool object patches
    of a ``grid`` x ``grid`` crop, ``fixed`` [P] bool the selection's fixed positions (:func:`fixed_positions`)."""
    if grid % cells:
        raise ValueError(f"a {grid} x {grid} grid does not split into {cells} x {cells} cells.")
    side = grid // cells
    cell = (kept // grid) // side * cells + (kept % grid) // side  # [K] cell index of each kept token
    on = objects[kept]
    return {
        "tokens": len(kept),
        "object share": float(on.float().mean()) if len(kept) else 0.0,
        "object recall": float(on.sum()) / max(1, int(objects.sum())),
        "spread": len(set(cell.tolist())) / cells**2,
        "fixed positions": float(fixed[kept].float().mean()) if len(kept) else 0.0,
    }


def fixed_positions(kept: list[torch.Tensor], patches: int) -> torch.Tensor:
    """[P] bool: the positions kept in more than ``FIXED_SHARE`` of the images (``kept``: each image's [K] positions)."""
    counts = torch.zeros(patches)
    for k in kept:
        counts[k] += 1
    return counts > FIXED_SHARE * len(kept)


def projector_methods() -> list[str]:
    """Every registered method that selects before the projector, except ``none`` (keeps all)."""
    from hivtp.methods import METHODS, is_in_llm

    return [name for name in sorted(METHODS) if name != "none" and not is_in_llm(name)]


@torch.no_grad()
def measure(model, processor, images, methods, budgets) -> dict[str, dict[str, list[float]]]:
    """Per ``method@budget``: each measure's value per image."""
    import hivtp
    from hivtp.methods.oracle import object_patches

    pixels = processor.image_processor(images=list(images), return_tensors="pt").pixel_values  # [N, 3, S, S]
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    objects = object_patches(pixels, (grid, grid))
    out = {}
    for method in methods:
        for budget in budgets:
            pruned = hivtp.attach(model, method=method, budget=budget)
            layout = pruned.layout(pixels)
            selection = pruned.select_tokens(pruned.run_vision(layout), layout)
            kept = [k.cpu() for k in selection.positions]
            fixed = fixed_positions(kept, grid * grid)
            rows = [selection_measures(k, objects[i], grid, fixed) for i, k in enumerate(kept)]
            out[f"{method}@{budget}"] = {m: [r[m] for r in rows] for m in MEASURES}
    return out


def table(values: dict, merges: set[str]) -> tuple[str, dict]:
    """Markdown, one row per selection: mean [95% interval] per measure; and the same as JSON-ready data."""
    from hivtp.bootstrap import mean_interval

    stats = {name: {m: mean_interval(v[m]) for m in MEASURES} for name, v in values.items()}
    lines = ["| selection | " + " | ".join(MEASURES) + " |", "|---" * (len(MEASURES) + 1) + "|"]
    for name, s in stats.items():
        mark = " (merged tokens)" if name.split("@")[0] in merges else ""
        cells = [f"{s['tokens'][0]:.0f}"] + [f"{s[m][0]:.3f} [{s[m][1]:.3f}, {s[m][2]:.3f}]" for m in MEASURES[1:]]
        lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines), stats


def main(argv: list[str] | None = None) -> int:
    from hivtp.methods import METHODS
    from hivtp.toy.cli import load_model, measurement_parser, write_measurement
    from hivtp.toy.evaluate import held_out_items

    ap = measurement_parser(__doc__.splitlines()[0], per_family=20)
    ap.add_argument("--budgets", type=int, nargs="+", default=[64, 192])
    args = ap.parse_args(argv)
    model, processor, digest = load_model(ap, args)
    images, _ = held_out_items(args.seed, args.per_family, world=args.world)
    methods = projector_methods()
    merges = {m for m in methods if METHODS[m].merges_tokens}
    text, stats = table(measure(model, processor, images, methods, args.budgets), merges)
    print(f"{len(images)} held-out images (seed {args.seed}); mean over images [95% bootstrap interval]")
    print(text)
    if args.out:
        write_measurement(args.out, args.model, digest, {
            "seed": args.seed, "world": args.world, "images": len(images), "budgets": args.budgets, "merged_tokens": sorted(merges),
            "selections": {name: {m: dict(zip(("mean", "low", "high"), v)) for m, v in s.items()} for name, s in stats.items()}})
    return 0

if __name__ == "__main__":
    sys.exit(main())

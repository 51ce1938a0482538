"""Does a world change make the offline testbed more like real images? Before / after on the same questions.

    python scripts/toy_world_change.py --model toy-llava --world plain --after-model toy-llava --after-world textured \
        [--per-family 300] [--budget 64] [--out FILE.json]

Issue 19, item 2: change the procedural world only where a measurement shows that it brings the testbed
closer to real images, without losing a calibration target. The two worlds draw the same objects and
questions from a seed (:mod:`hivtp.world.scene`), so *before* (``--model`` in ``--world``) and *after*
(``--after-model`` in ``--after-world``; each world defaults to the benchmarks', ``BENCHMARK_WORLD``)
answer the very same held-out questions (:func:`hivtp.toy.evaluate.held_out_items`); only the pixels
around the objects differ. Two measurements, each in both worlds:

1. **What the pixels give away** (no model). Per image (LLaVA-1.5 crop, 24 x 24 patches): ``object``
   patches, those the scene's objects cover (``hivtp.methods.oracle.object_patches``: palette pixels, known
   by construction); ``salient`` patches, those holding a pixel more than 24 levels from the crop's
   median colour (what any low-level contrast cue sees, the oracle's rule before the cluttered world);
   and ``precision``, the share of salient patches that are object patches. In the plain world nearly
   every salient patch is an object patch (the rest hold an object's fringe, blended with the background
   where the processor resizes the canvas): "keep what stands out" is the oracle, and a method that
   spreads its tokens over distinct-looking patches finds the evidence for free. On a photograph,
   most patches stand out from the median somewhere and few hold the question's evidence.
2. **What the methods keep of unpruned accuracy** (the toy). Every registered method that runs offline
   (``none`` and the calibration's configurations, then each other method at ``--budget`` with the
   offline tables' parameters), through
   ``hivtp.attach`` (:func:`hivtp.toy.calibrate.measure`), as a share of the unpruned accuracy with a
   95% paired bootstrap interval; and the five calibration targets in each world.

Mean over images / questions with 95% bootstrap intervals. Both worlds default to the benchmarks' (give
them). When the before and after models differ (e.g. each trained on its world), the second table
compares two testbeds, not one model under two inputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SALIENT_LEVELS = 24.0  # intensity levels from the crop's median colour: the plain world's old object rule
PIXEL_MEASURES = ("object share", "salient share", "precision")


def salient_patches(pixels: torch.Tensor, grid: int, levels: float = SALIENT_LEVELS) -> torch.Tensor:
    """[N, P] bool: patches with a pixel more than ``levels`` intensity levels (any channel) from their
    crop's median colour. ``pixels`` [N, 3, S, S] CLIP-normalised."""
    from transformers.utils.constants import OPENAI_CLIP_STD

    n, _, s, _ = pixels.shape
    median = pixels.flatten(2).median(dim=2).values  # [N, 3]
    std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32)[None, :, None, None]
    far = ((pixels - median[:, :, None, None]).abs() * 255 * std > levels).any(dim=1)  # [N, S, S]
    return far.view(n, grid, s // grid, grid, s // grid).any(dim=4).any(dim=2).flatten(1)


def pixel_measures(processor, images, grid: int, batch: int = 64) -> dict[str, list[float]]:
    """Per image: the share of patches an object covers, the share that are salient, and the share of
    salient patches that an object covers (precision)."""
    from hivtp.methods.oracle import object_patches

    out: dict[str, list[float]] = {m: [] for m in PIXEL_MEASURES}
    for start in range(0, len(images), batch):
        pixels = processor.image_processor(images=list(images[start:start + batch]), return_tensors="pt").pixel_values.float()
        objects = object_patches(pixels, (grid, grid))
        salient = salient_patches(pixels, grid)
        out["object share"] += objects.float().mean(1).tolist()
        out["salient share"] += salient.float().mean(1).tolist()
        out["precision"] += ((objects & salient).sum(1) / salient.sum(1).clamp(min=1)).tolist()
    return out


def offline_methods() -> list[str]:
    """Every registered method except ``none`` and those the offline plan skips (``reproduce.OFFLINE_SKIP``)."""
    from reproduce import OFFLINE_SKIP

    from hivtp.methods import available_methods

    return [m for m in available_methods() if m != "none" and m not in OFFLINE_SKIP]


def configurations(budget: int):
    """The calibration's configurations, then every other offline method at ``budget`` with the offline
    plan's own parameters (``reproduce.OFFLINE_EXTRA``: FastV at K=1, as the offline tables run it)."""
    from reproduce import OFFLINE_EXTRA

    from hivtp.toy.calibrate import CONFIGURATIONS, label

    out = list(CONFIGURATIONS)
    taken = {label(c) for c in out}
    for m in offline_methods():
        config = (m, {"budget": budget, **OFFLINE_EXTRA.get(m, {})})
        if label(config) not in taken:
            out.append(config)
    return out


def report(worlds: list[tuple[str, str]], pixels: list[dict], summaries: list) -> str:
    from hivtp.bootstrap import mean_interval
    from hivtp.toy.calibrate import ALL, label, ratio_name, target_lines

    cell = lambda v, lo, hi: f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
    head = [f"{world} world, {model}" for model, world in worlds]
    lines = [f"what the pixels give away ({len(pixels[0]['precision'])} held-out images per world; mean [95% CI])",
             "| measure | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(cell(*mean_interval(p[m])) for p in pixels) + " |" for m in PIXEL_MEASURES]
    configs = summaries[0].measurement.configurations
    unpruned = configs[0]
    lines += ["", "share of unpruned accuracy kept, over every family (paired 95% CI); `none`: its accuracy",
              "| configuration | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for c in configs:
        if c is unpruned:
            cells = [s.accuracy[label(c)][ALL].cell() for s in summaries]
        else:
            cells = [s.ratios[ratio_name(c, unpruned)][ALL].cell() for s in summaries]
        lines.append(f"| {label(c)} | " + " | ".join(cells) + " |")
    lines += ["", "calibration targets (issue 19)"]
    for (model, world), s in zip(worlds, summaries):
        lines += [f"- {world} world, {model}:"] + [f"  - {'PASS' if ok else 'FAIL'} {t.name}: {d}" for t, ok, d in target_lines(s)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hivtp.bootstrap import mean_interval
    from hivtp.toy import calibrate
    from hivtp.toy.cli import load_model, measurement_parser, measuring_world, progress, write_measurement
    from hivtp.toy.evaluate import held_out_items
    from hivtp.world import WORLDS
    from hivtp.zoo import load_pretrained, weights_digest

    ap = measurement_parser(__doc__.splitlines()[0], per_family=300, batch_size=True)
    ap.add_argument("--after-model", required=True, help="the toy measured in --after-world (checkpoint name or folder)")
    ap.add_argument("--after-world", default=None, choices=WORLDS, help="default: the benchmarks' (hivtp.world.BENCHMARK_WORLD)")
    ap.add_argument("--budget", type=int, default=64, help="tokens each method keeps (besides the calibration's configurations)")
    args = ap.parse_args(argv)
    before, before_processor, before_digest = load_model(ap, args)
    after_digest = weights_digest(args.after_model)
    args.after_world = measuring_world(args.after_model, args.after_world)
    after, after_processor = load_pretrained(args.after_model)
    sides = [(args.model, args.world, before, before_processor), (args.after_model, args.after_world, after, after_processor)]
    configs = configurations(args.budget)
    ratios = [(c, configs[0]) for c in configs[1:]]
    pixels, summaries = [], []
    for name, world, model, processor in sides:
        grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
        images, _ = held_out_items(args.seed, args.per_family, world=world)
        pixels.append(pixel_measures(processor, images, grid))
        progress(f"[world] {world}: pixel measures of {len(images)} images done; answering with {name}")
        measurement = calibrate.measure(model, processor, configs, per_family=args.per_family, seed=args.seed,
                                        batch_size=args.batch_size, progress=progress, world=world)
        summaries.append(calibrate.summarise(measurement, ratios=ratios))
    print(report([(n, w) for n, w, _, _ in sides], pixels, summaries))
    if args.out:
        sides_json = [{"model": n, "world": w, "weights_sha256": d,
                       "pixels": {m: dict(zip(("mean", "low", "high"), mean_interval(p[m]))) for m in PIXEL_MEASURES},
                       **calibrate.as_json(s, targets=True)}
                      for (n, w, _, _), d, p, s in zip(sides, (before_digest, after_digest), pixels, summaries)]
        write_measurement(args.out, args.model, before_digest, {"budget": args.budget, "before": sides_json[0], "after": sides_json[1]})
    return 0


if __name__ == "__main__":
    sys.exit(main())

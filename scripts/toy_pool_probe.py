"""Why does pool fall below random on the toy? Averaging, or where its tokens sit.

    python scripts/toy_pool_probe.py [--per-family 100] [--seed 123] [--model toy-llava] [--out FILE.json]

``pool`` averages each f x f cell of the patch grid into one token that stands for the cell's centre
patch (3 x 3 cells -> 64 tokens, 2 x 2 -> 144 on 24 x 24). Two things set it apart from ``random``: its
tokens sit on a fixed lattice, and each is an average of patches, a kind of token the toy's language
model never saw in training (it was trained on single patch tokens, some dropped). To tell them apart,
the same held-out questions (:func:`hivtp.toy.evaluate.held_out_items`) are answered by

* ``pool`` at 64 and 144 tokens;
* ``cell-centres``: the very positions pool's tokens stand for, each the patch's own token (no
  averaging; :class:`CellCentres`, a variant of pool that is not registered as a method);
* ``random`` at the same token counts, and ``none``.

Paired ratios on the same questions (95% bootstrap intervals, :mod:`hivtp.toy.calibrate`):
pool / random is the finding to explain; pool / cell-centres is what averaging costs at fixed
positions; cell-centres / random is what the lattice costs (or gains) against a random draw of as
many single patches.
"""

from __future__ import annotations

import sys

TOKEN_COUNTS = (64, 144)  # the 3 x 3 and 2 x 2 pooling grids of 24 x 24 (pool keeps them exactly)


def cell_centres(budget: int):
    """pool's choice of positions at ``budget``, each token the patch's own feature (not averaged)."""
    from hivtp.methods.base import CropSelection
    from hivtp.methods.pool import AveragePool

    class CellCentres(AveragePool):
        name = "cell-centres"
        merges_tokens = False

        def select(self, crops):
            pooled = super().select(crops)
            features = [crops.features[i][pos] for i, pos in enumerate(pooled.positions)]  # [N_c, D] each
            return CropSelection(features=features, positions=pooled.positions, stats=pooled.stats)

    return CellCentres(budget=budget)


def configurations():
    out = [("none", {})]
    for n in TOKEN_COUNTS:
        out += [("pool", {"budget": n}), (cell_centres(n), {}), ("random", {"budget": n})]
    return out


def ratios(configs):
    """(pool, random), (pool, cell-centres) and (cell-centres, random) at each token count, as calibrate's
    ratio pairs."""
    by_count = [configs[1 + 3 * i: 4 + 3 * i] for i in range(len(TOKEN_COUNTS))]
    return [pair for pool, centres, random in by_count for pair in ((pool, random), (pool, centres), (centres, random))]


def main(argv: list[str] | None = None) -> int:
    from hivtp.toy import calibrate
    from hivtp.toy.cli import accuracy_summary, load_model, measurement_parser, write_measurement

    ap = measurement_parser(__doc__.splitlines()[0], per_family=100, batch_size=True)
    args = ap.parse_args(argv)
    model, processor, digest = load_model(ap, args)
    configs = configurations()
    summary = accuracy_summary(model, processor, args, configs, ratios=ratios(configs))
    print(calibrate.table(summary))
    if args.out:
        write_measurement(args.out, args.model, digest, calibrate.as_json(summary, targets=False))
    return 0

if __name__ == "__main__":
    sys.exit(main())

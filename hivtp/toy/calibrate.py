"""Calibration of the offline testbed: does the toy LLaVA measure *which* image tokens a method keeps?

    python -m hivtp.toy.calibrate --per-family 300 [--seed 123] [--out calibration.json]

Every configuration (a method name and its parameters) answers the same held-out questions
(:func:`hivtp.toy.evaluate.held_out_items`) through :func:`hivtp.attach` and
:func:`hivtp.toy.evaluate.evaluate`; the result is, per configuration and question family, the number
of questions, the accuracy and its 95% percentile bootstrap interval, and the ratios the targets
compare (``oracle@64 / none``, ``random@288 / none``) with *paired* intervals: numerator and
denominator are scored on the same resampled questions, so question difficulty cancels out.

Resampling. Questions are resampled within their family (strata of equal size), so a family's interval
is that family's own bootstrap and the overall ("all") accuracy, the mean over every question, keeps
the families' equal shares. Every interval of one summary comes from the same draws
(:func:`hivtp.bootstrap.bootstrap`).

The targets (issue 19, :data:`TARGETS`), each checked by ``tests/test_toy_calibration.py``:

* unpruned accuracy at least 0.95 on every family;
* ``oracle`` at 64 tokens keeps at least 95% of the unpruned accuracy, *on every family* (the
  stricter reading: it implies the overall ratio, and a family that needs more than 64 object tokens
  would otherwise hide behind the others);
* ``random`` at 288 tokens (half) keeps at least 90% of it, on every family (likewise);
* ``random`` accuracy rises with the budget (64 < 128 < 192 < 288), and the 64 and 192 points differ by
  more than their confidence intervals (disjoint intervals), both on the overall accuracy (a single
  family of 300 questions is too coarse to order four close points).

Sharing the work of a batch. The questions are walked batch by batch, every configuration answering a
batch before the next batch starts, with one :class:`hivtp.vision.TowerCache` of a single entry
shared by all of them: the tower runs once per batch instead of once per configuration, and so does
the processor (its last output is reused for the same images and prompts). Each configuration sees
exactly the batches (and so gives the answers) that ``evaluate(attach(...), processor, images, items,
batch_size)`` gives it alone (tested).
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bootstrap import LEVEL, RESAMPLES, SEED, bootstrap, interval
from ..errors import ConfigError
from ..world import BENCHMARK_WORLD, FAMILIES
from .evaluate import HELD_OUT_SEED

__all__ = [
    "CONFIGURATIONS",
    "TARGETS",
    "Estimate",
    "Measurement",
    "Summary",
    "Target",
    "label",
    "main",
    "measure",
    "summarise",
]

#: (method name, its parameters), or (a method object, {}) for a variant that is not registered (a
#: diagnostic's own selection rule, e.g. ``scripts/toy_pool_probe.py``)
Configuration = tuple[Any, dict[str, Any]]

ALL = "all"  # the family key of statistics over every question
UNPRUNED: Configuration = ("none", {})
ORACLE_64: Configuration = ("oracle", {"budget": 64})
RANDOM_BUDGETS = (64, 128, 192, 288)
RANDOM_HALF: Configuration = ("random", {"budget": 288})
CONFIGURATIONS: tuple[Configuration, ...] = (UNPRUNED, ORACLE_64, *(("random", {"budget": b}) for b in RANDOM_BUDGETS))


def described(configuration: Configuration) -> tuple[str, dict[str, Any]]:
    """(method name, parameters); a method object gives its name and the parameters it resolved
    (those set, i.e. not None)."""
    method, params = configuration
    if isinstance(method, str):
        return method, params
    if params:
        raise ConfigError(f"give {method.name!r}'s parameters to the method object, not beside it: {params}.")
    return method.name, {k: v for k, v in method.params().items() if v is not None}


def label(configuration: Configuration) -> str:
    """``none``, ``oracle@64``, ``fastv@64 k_layer=1``: the method, its budget, then its other parameters."""
    method, params = described(configuration)
    rest = " ".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "budget")
    text = method if params.get("budget") is None else f"{method}@{params['budget']}"
    return f"{text} {rest}" if rest else text


# ----------------------------------------------------------------------------- measuring
@dataclass
class Measurement:
    """Which held-out questions each configuration answered correctly."""

    seed: int
    per_family: int
    configurations: list[Configuration]
    families: list[str]  # [U] the family of each question
    correct: dict[str, np.ndarray]  # label -> [U] bool
    seconds: float = 0.0
    tower_passes: int = 0  # vision-tower passes run (shared: one per batch)
    world: str = BENCHMARK_WORLD  # the world the held-out questions' images were drawn in (``hivtp.world.WORLDS``)


class _BatchProcessor:
    """The processor, remembering the batch it encoded last: the configurations answering one batch
    get the very tensors the processor gave the first (it is deterministic) instead of encoding the
    same images and prompts again. Everything else is the processor's own."""

    def __init__(self, processor) -> None:
        self._processor = processor
        self._last: tuple[list, Any, dict, Any] | None = None  # (images, text, kwargs, output)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, images=None, text=None, **kwargs: Any):
        last = self._last
        if (last is not None and len(last[0]) == len(images or []) and all(a is b for a, b in zip(last[0], images or []))
                and last[1] == text and last[2] == kwargs):
            return last[3]
        out = self._processor(images=images, text=text, **kwargs)
        self._last = (list(images or []), text, dict(kwargs), out)
        return out


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def measure(model, processor, configurations: Sequence[Configuration] = CONFIGURATIONS, per_family: int = 300,
            seed: int = HELD_OUT_SEED, batch_size: int = 16,
            progress: Callable[[str], None] | None = None, world: str = BENCHMARK_WORLD) -> Measurement:
    """Answer ``per_family`` held-out questions of every family with every configuration (greedy), their
    images drawn in ``world`` (the questions are the same in every world)."""
    from .. import attach
    from ..vision import TowerCache
    from .evaluate import evaluate, held_out_items

    labels = [label(c) for c in configurations]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"configurations repeat: {labels}; give each (method, params) once.")
    if per_family < 1:
        raise ConfigError(f"per_family must be >= 1 (the targets need 300), got {per_family}.")
    images, items = held_out_items(seed, per_family, world=world)
    # max_bytes=0 keeps one entry: the batch every configuration is answering now (see module docstring)
    cache = TowerCache(max_bytes=0)
    processor = _BatchProcessor(processor)
    attached = []
    for method, params in configurations:
        pruned = attach(model, method=method, **params)
        pruned.tower_cache = cache
        attached.append(pruned)
    correct = {name: np.zeros(len(items), dtype=bool) for name in labels}
    t0, batches = time.perf_counter(), range(0, len(items), batch_size)
    _say(progress, f"[calibrate] {len(items)} questions ({per_family} per family, seed {seed}, {world} world) x "
                   f"{len(labels)} configurations: {', '.join(labels)}")
    for b, start in enumerate(batches, 1):
        chunk = items[start:start + batch_size]
        for name, pruned in zip(labels, attached):
            answers = evaluate(pruned, processor, images, chunk, batch_size=batch_size)
            correct[name][start:start + len(chunk)] = [ok for _, _, ok in answers]
        if b % 10 == 0 or b == len(batches):
            _say(progress, f"[calibrate] {start + len(chunk)}/{len(items)} questions, {time.perf_counter() - t0:.0f} s")
    return Measurement(seed, per_family, list(configurations), [it.family for it in items], correct,
                       time.perf_counter() - t0, cache.misses, world)


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Estimate:
    value: float
    low: float  # percentile bootstrap interval
    high: float
    n: int  # questions

    def cell(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass
class Summary:
    """Per configuration label (or ratio name) and family (or :data:`ALL`): an :class:`Estimate`."""

    measurement: Measurement
    accuracy: dict[str, dict[str, Estimate]]
    ratios: dict[str, dict[str, Estimate]]
    families: list[str] = field(default_factory=list)  # the families in order, then ALL


def ratio_name(numerator: Configuration, denominator: Configuration) -> str:
    return f"{label(numerator)} / {label(denominator)}"


def _accuracy(x: np.ndarray, rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """weights [R, U] -> [R]: the share correct among ``rows``, each counted as often as it was drawn."""
    return lambda w: (w[:, rows] @ x[rows]) / w[:, rows].sum(axis=1)


def _ratio(a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """weights [R, U] -> [R]: accuracy of ``a`` over accuracy of ``b`` on the same draws (NaN where b is 0)."""
    def ratio(w: np.ndarray) -> np.ndarray:
        num, den = w[:, rows] @ a[rows], w[:, rows] @ b[rows]
        out = np.full(len(w), np.nan)
        np.divide(num, den, out=out, where=den > 0)
        return out

    return ratio


def summarise(measurement: Measurement, ratios: Sequence[tuple[Configuration, Configuration]] | None = None,
              resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Summary:
    """Accuracy per configuration and family with intervals, and the ``ratios`` (default: the
    targets' ``oracle@64 / none`` and ``random@288 / none``, those whose configurations were measured)."""
    present = {label(c) for c in measurement.configurations}
    if ratios is None:
        ratios = [(n, d) for n, d in ((ORACLE_64, UNPRUNED), (RANDOM_HALF, UNPRUNED))
                  if {label(n), label(d)} <= present]
    families = [f for f in FAMILIES if f in measurement.families] + [ALL]
    family_of = np.array(measurement.families)
    strata = np.array([families.index(f) for f in measurement.families])  # resample within each family
    rows = {f: np.flatnonzero(family_of == f) if f != ALL else np.arange(len(family_of)) for f in families}
    x = {name: v.astype(float) for name, v in measurement.correct.items()}
    keys, statistics = [], []
    for name in measurement.correct:
        for f in families:
            keys.append(("accuracy", name, f))
            statistics.append(_accuracy(x[name], rows[f]))
    for numerator, denominator in ratios:
        for f in families:
            keys.append(("ratios", ratio_name(numerator, denominator), f))
            statistics.append(_ratio(x[label(numerator)], x[label(denominator)], rows[f]))
    with np.errstate(invalid="ignore"):
        values = bootstrap(statistics, strata, resamples, seed)  # [statistics, resamples], the same draws for all
        full = np.ones((1, len(family_of)))
        out: dict[str, dict[str, dict[str, Estimate]]] = {"accuracy": {}, "ratios": {}}
        for (kind, name, f), statistic, v in zip(keys, statistics, values):
            low, high = interval(v, level)
            out[kind].setdefault(name, {})[f] = Estimate(float(statistic(full)[0]), low, high, len(rows[f]))
    return Summary(measurement, out["accuracy"], out["ratios"], families)


# ----------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """One calibration target: ``check(summary)`` -> (met, what was measured)."""

    key: str  # a short identifier (test ids)
    name: str
    check: Callable[[Summary], tuple[bool, str]]


def _every_family(summary: Summary, estimates: dict[str, Estimate], minimum: float) -> tuple[bool, str]:
    families = [f for f in summary.families if f != ALL]
    short = [f for f in families if not estimates[f].value >= minimum]  # NaN (no denominator) fails
    worst = min(families, key=lambda f: estimates[f].value)
    detail = f"lowest {worst} {estimates[worst].cell()}"
    return not short, detail + (f"; below {minimum}: {', '.join(short)}" if short else "")


def _unpruned_on_every_family(summary: Summary) -> tuple[bool, str]:
    return _every_family(summary, summary.accuracy[label(UNPRUNED)], 0.95)


def _keeps(numerator: Configuration, minimum: float) -> Callable[[Summary], tuple[bool, str]]:
    def check(summary: Summary) -> tuple[bool, str]:
        return _every_family(summary, summary.ratios[ratio_name(numerator, UNPRUNED)], minimum)

    return check


def _random(budget: int) -> str:
    return label(("random", {"budget": budget}))


def _random_rises(summary: Summary) -> tuple[bool, str]:
    points = [summary.accuracy[_random(b)][ALL].value for b in RANDOM_BUDGETS]
    text = " < ".join(f"{b}: {p:.3f}" for b, p in zip(RANDOM_BUDGETS, points))
    return all(a < b for a, b in itertools.pairwise(points)), f"overall {text}"


def _random_64_and_192_apart(summary: Summary) -> tuple[bool, str]:
    low, high = summary.accuracy[_random(64)][ALL], summary.accuracy[_random(192)][ALL]
    return low.high < high.low, f"overall 64: {low.cell()}, 192: {high.cell()}"


TARGETS: tuple[Target, ...] = (
    Target("unpruned", "unpruned accuracy >= 0.95 on every family", _unpruned_on_every_family),
    Target("oracle64_keeps", "oracle@64 keeps >= 95% of unpruned accuracy on every family", _keeps(ORACLE_64, 0.95)),
    Target("random288_keeps", "random@288 keeps >= 90% of unpruned accuracy on every family", _keeps(RANDOM_HALF, 0.90)),
    Target("random_rises", "random accuracy rises with the budget 64 < 128 < 192 < 288", _random_rises),
    Target("random64_192_apart", "random@64 and random@192 intervals are disjoint", _random_64_and_192_apart),
)


# ----------------------------------------------------------------------------- report
def table(summary: Summary) -> str:
    """Accuracy (and ratio) per family and overall, each as value [95% interval], one row per configuration."""
    families = summary.families
    n = {f: next(iter(summary.accuracy.values()))[f].n for f in families}
    head = ["configuration"] + [f"{f} (n={n[f]})" for f in families]
    body = [[name] + [row[f].cell() for f in families] for name, row in summary.accuracy.items()]
    body += [[name] + [row[f].cell() for f in families] for name, row in summary.ratios.items()]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    m = summary.measurement
    title = (f"held-out questions (seed {m.seed}), accuracy [95% percentile bootstrap interval over questions, "
             f"resampled within family; ratios paired]; measured in {m.seconds:.0f} s")
    return "\n".join([title, line(head), rule, *map(line, body)])


def target_lines(summary: Summary) -> list[tuple[Target, bool, str]]:
    return [(t, *t.check(summary)) for t in TARGETS]


def report(summary: Summary) -> str:
    checks = "\n".join(f"{'PASS' if ok else 'FAIL'}  {t.name}: {detail}" for t, ok, detail in target_lines(summary))
    return f"{table(summary)}\n\ncalibration targets (issue 19):\n{checks}"


def as_json(summary: Summary, targets: bool = True) -> dict[str, Any]:
    """The measurement, its estimates and (``targets``: the calibration's configurations were measured)
    the targets, as JSON-ready data."""
    m = summary.measurement
    rows = lambda kind: [{"name": name, "family": f, **vars(e)}
                         for name, per in getattr(summary, kind).items() for f, e in per.items()]
    return {
        "seed": m.seed,
        "per_family": m.per_family,
        "world": m.world,
        "configurations": [{**dict(zip(("label", "method", "params"), (label(c), *described(c)))),
                            "registered": isinstance(c[0], str)} for c in m.configurations],
        "seconds": m.seconds,
        "tower_passes": m.tower_passes,
        "accuracy": rows("accuracy"),
        "ratios": rows("ratios"),
        "targets": [{"name": t.name, "met": ok, "detail": d} for t, ok, d in target_lines(summary)] if targets else [],
    }


def main(argv: list[str] | None = None) -> int:
    from .cli import load_model, measurement_parser, progress, write_measurement

    ap = measurement_parser(__doc__.splitlines()[0], per_family=300, prog="python -m hivtp.toy.calibrate",
                            per_family_note="; the targets need at least 300", batch_size=True)
    ap.add_argument("--resamples", type=int, default=RESAMPLES)
    args = ap.parse_args(argv)
    model, processor, digest = load_model(ap, args)
    summary = summarise(measure(model, processor, per_family=args.per_family, seed=args.seed, batch_size=args.batch_size,
                                progress=progress, world=args.world), resamples=args.resamples)
    print(report(summary))
    if args.out:
        write_measurement(args.out, args.model, digest, as_json(summary))
    return 0 if all(ok for _, ok, _ in target_lines(summary)) else 1

if __name__ == "__main__":
    sys.exit(main())

"""Offline method rows over several toys: is a method's offline result the method's, or the toy's?

The measurement behind ``scripts/toy_trajectories.py`` (``make toy-trajectories``).

Why. Two trainings of one recipe that differ only by floating-point rounding (toy v14, shipped until
2026-12-03 and trained on an AMD EPYC, and a sibling trained on an Intel Xeon) keep 94.7% and 97.4% of
the unpruned accuracy with HIVTP at 64 tokens, and 88.1% and 99.2% with FastV
(``docs/toy-experiments/v14-sibling-xeon_world_change.json``). A question bootstrap on one toy cannot
see that: its interval covers which questions were asked, not which training answered them. So each
configuration is measured on several toys (the *trajectories*: ``hivtp.zoo.TOY_TRAJECTORIES``, the shipped
toy first, its siblings differing by seed, CPU or steps: the report lists how each toy's recorded recipe
differs from the first's), every toy answering the same held-out questions
(:func:`hivtp.toy.calibrate.measure`), and reported three ways (:func:`compare`):

1. **per toy**: the share of the unpruned accuracy a configuration keeps, over every family, with its
   paired question interval (the statistic of :mod:`hivtp.toy.calibrate`);
2. **over toys**: the mean of those shares with a *pigeonhole* bootstrap interval (Owen 2007, "The
   pigeonhole bootstrap", Ann. Appl. Stat.): toys and questions are crossed (every toy answers every
   question), so each replicate resamples the questions (within family, as the calibration does) and,
   independently, the toys. With a handful of toys the toy draw is coarse (T toys give T^T draws) and
   the interval is a guide, not a guarantee; the range over toys is printed beside it;
3. **pairwise**, between the configurations at the compared budget: A is *better* than B only where
   the paired question interval of A's share minus B's lies above zero **on every toy**. That rule
   needs no model of how toys vary, and with few toys it is the honest one: a difference that one
   training of the recipe does not show is not the method's. The pairs the first toy (the shipped one)
   separates on its own but some other toy does not are listed: they are what a one-toy table
   overclaims.

Every interval comes from the same question draws (one :func:`hivtp.bootstrap.bootstrap` call scores
every toy and configuration), so per-toy differences are paired across configurations.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bootstrap import LEVEL, RESAMPLES, SEED, bootstrap, interval
from ..errors import ConfigError
from .calibrate import UNPRUNED, Configuration, Measurement, _accuracy, _ratio, described, label

__all__ = ["Comparison", "Pair", "Toys", "compare", "from_record", "measure_toys", "record", "report"]

BIT = {False: "0", True: "1"}


def refuse_same_weights(models: Sequence[str], digests: Sequence[str]) -> None:
    """One training counted twice would narrow the interval over toys: refuse toys with equal weights."""
    same = [m for m, d in zip(models, digests) if list(digests).count(d) > 1]
    if same:
        raise ConfigError(f"{same} hold the same weights (sha256); give each trained toy once.")


@dataclass
class Toys:
    """Several toys' answers to the same held-out questions with the same configurations."""

    models: list[str]  # checkpoint names or folders, the reference (the shipped toy) first
    digests: list[str]  # each model's weights sha256
    measurements: list[Measurement]
    provenance: list[dict[str, Any]] | None = None  # per toy: where and with what code its answers were measured

    def __post_init__(self) -> None:
        refuse_same_weights(self.models, self.digests)
        if not (len(self.models) == len(self.digests) == len(self.measurements)) or len(self.models) < 2:
            raise ConfigError(f"compare at least two toys, each with its digest and measurement; got {len(self.models)} models.")
        first = self.measurements[0]
        labels = [label(c) for c in first.configurations]
        for model, m in zip(self.models[1:], self.measurements[1:]):
            if ([label(c) for c in m.configurations] != labels or m.families != first.families
                    or (m.seed, m.per_family, m.world) != (first.seed, first.per_family, first.world)):
                raise ConfigError(f"{model} answered other questions or configurations than {self.models[0]}: "
                                  "measure every toy with the same --seed, --per-family, --world and configurations.")
        if labels[0] != label(UNPRUNED):
            raise ConfigError(f"the first configuration must be the unpruned reference {label(UNPRUNED)!r}, got {labels[0]!r}.")


# ----------------------------------------------------------------------------- measuring
#: hivtp's sources that do not change an answer (reports and this module): left out of :func:`code_digest`
NOT_ANSWERING = ("results/", "toy/trajectories.py")


def code_digest(root: Path | None = None) -> str:
    """sha256 of the hivtp sources (under ``root``, default: this package) that answer questions (every
    ``.py`` but :data:`NOT_ANSWERING`): a cached answer is reused only by the code that gave it, so a
    changed method measures again."""
    root = root or Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if not name.startswith(NOT_ANSWERING):
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _cache_path(cache: Path, digest: str, configurations: Sequence[Configuration], per_family: int, seed: int,
                world: str, batch_size: int, code: str) -> Path:
    """The cache entry of one toy's answers: keyed by its weights, the configurations, the questions, the
    batch (prompts are padded to the batch's longest), the code and torch."""
    import torch

    key = json.dumps([digest, [label(c) for c in configurations], per_family, seed, world, batch_size, code,
                      torch.__version__])
    return cache / f"{digest[:12]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def _measurement_json(m: Measurement) -> dict[str, Any]:
    return {"seed": m.seed, "per_family": m.per_family, "world": m.world, "seconds": m.seconds,
            "configurations": [{"label": label(c), "method": described(c)[0], "params": described(c)[1]}
                               for c in m.configurations],
            "families": ",".join(m.families),  # one string: a record stays a few hundred lines
            "correct": {name: "".join(BIT[bool(v)] for v in bits) for name, bits in m.correct.items()}}


def _measurement_from_json(doc: dict[str, Any]) -> Measurement:
    configurations = [(c["method"], c["params"]) for c in doc["configurations"]]
    correct = {name: np.array([ch == "1" for ch in bits], dtype=bool) for name, bits in doc["correct"].items()}
    if [label(c) for c in configurations] != list(correct):
        raise ConfigError("a trajectory record's configurations and answers disagree; measure again (delete the record).")
    return Measurement(doc["seed"], doc["per_family"], configurations, doc["families"].split(","), correct,
                       doc.get("seconds", 0.0), 0, doc["world"])


def measure_toys(models: Sequence[str], configurations: Sequence[Configuration], per_family: int, seed: int,
                 world: str, batch_size: int = 16, cache: Path | None = None,
                 progress: Callable[[str], None] | None = None, provenance: dict[str, Any] | None = None) -> Toys:
    """Every toy answers the same held-out questions with every configuration. With ``cache``, each toy's
    answers are written there as soon as they are measured (atomically, keyed by its weights, the
    questions, the batch, the code and torch; with ``provenance``, the run's own record of where and how),
    so an interrupted run loses at most the toy it was on, and a rerun reuses the rest with the
    provenance of the run that measured them."""
    from ..atomic import write_text
    from ..zoo import load_pretrained, weights_digest
    from .calibrate import measure
    from .cli import trained_recipe

    digests = [weights_digest(m) for m in models]  # every name resolves before any work
    refuse_same_weights(models, digests)
    code = code_digest()
    measurements, stamps = [], []
    for i, (model, digest) in enumerate(zip(models, digests), 1):
        path = _cache_path(cache, digest, configurations, per_family, seed, world, batch_size, code) if cache else None
        if path is not None and path.is_file():
            entry = json.loads(path.read_text())
            measurements.append(_measurement_from_json(entry))
            stamps.append(entry.get("provenance") or {})
            if progress:
                progress(f"[trajectories] toy {i}/{len(models)} {model}: answers reused from {path}")
            continue
        if progress:
            progress(f"[trajectories] toy {i}/{len(models)} {model}: measuring {len(configurations)} configurations")
        recipe = trained_recipe(model)  # read before the work: a bad record fails here, not after it
        net, processor = load_pretrained(model)
        m = measure(net, processor, configurations, per_family=per_family, seed=seed, batch_size=batch_size,
                    progress=progress, world=world)
        stamp = {**(provenance or {}), "code_digest": code, "batch_size": batch_size, "seconds": round(m.seconds, 1),
                 "recipe": recipe}
        if path is not None:
            write_text(path, json.dumps({**_measurement_json(m), "provenance": stamp}) + "\n")
        measurements.append(m)
        stamps.append(stamp)
    return Toys(list(models), digests, measurements, stamps)


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Pair:
    """A against B at the compared budget: per toy, the share A keeps minus the share B keeps."""

    a: str
    b: str
    difference: list[float]  # [T] on all questions
    low: list[float]  # [T] paired question interval
    high: list[float]
    mean: float  # over toys
    mean_low: float  # pigeonhole interval
    mean_high: float

    @property
    def signs(self) -> list[int]:
        """Per toy: +1 where the interval lies above zero (A keeps more), -1 below, 0 where it holds zero."""
        return [1 if lo > 0 else -1 if hi < 0 else 0 for lo, hi in zip(self.low, self.high)]

    @property
    def verdict(self) -> int:
        """+1: A better on every toy; -1: B better on every toy; 0: not separated on every toy."""
        signs = set(self.signs)
        return signs.pop() if len(signs) == 1 else 0


@dataclass
class Comparison:
    toys: Toys
    labels: list[str]  # the configurations after the unpruned reference
    unpruned: np.ndarray  # [T, 3] accuracy, low, high
    unpruned_mean: np.ndarray  # [3] mean over toys, pigeonhole interval
    share: np.ndarray  # [T, C, 3] share of the unpruned accuracy kept: value, low, high (question interval)
    mean: np.ndarray  # [C, 3] mean over toys: value, low, high (pigeonhole interval)
    pairs: list[Pair]
    budget: int
    resamples: int
    seed: int  # the bootstrap's
    level: float

    def targets(self) -> list[list[tuple[str, bool, str]]]:
        """Per toy, the calibration targets (only where the calibration's configurations were measured)."""
        from .calibrate import CONFIGURATIONS, summarise, target_lines

        if not {label(c) for c in CONFIGURATIONS} <= set(self.toys.measurements[0].correct):
            return []
        return [[(t.name, ok, d) for t, ok, d in target_lines(summarise(m, resamples=self.resamples, seed=self.seed))]
                for m in self.toys.measurements]


def _budget(configuration: Configuration) -> int | None:
    return described(configuration)[1].get("budget")


def toy_draws(toys: int, resamples: int, seed: int) -> np.ndarray:
    """[R, T] how often each toy is drawn in each replicate (T draws with replacement), from a stream
    independent of the questions' (``hivtp.bootstrap`` seeds those with ``seed`` itself)."""
    return np.random.default_rng((seed, 1)).multinomial(toys, np.full(toys, 1 / toys), size=resamples)


def compare(toys: Toys, budget: int, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Comparison:
    """Per-toy shares with question intervals, their mean over toys with a pigeonhole interval, and every
    pair of configurations at ``budget`` (see the module docstring)."""
    from ..world import FAMILIES

    ms = toys.measurements
    configurations = ms[0].configurations[1:]
    labels = [label(c) for c in configurations]
    reference = label(UNPRUNED)
    T, C = len(ms), len(labels)
    x = [{name: v.astype(float) for name, v in m.correct.items()} for m in ms]
    unknown = sorted(set(ms[0].families) - set(FAMILIES))
    if unknown:
        raise ConfigError(f"questions of unknown families {unknown}: the families are {FAMILIES}.")
    strata = np.array([FAMILIES.index(f) for f in ms[0].families])  # resample within each family
    every = np.arange(len(strata))
    statistics = [_accuracy(x[t][reference], every) for t in range(T)]
    statistics += [_ratio(x[t][name], x[t][reference], every) for t in range(T) for name in labels]
    with np.errstate(invalid="ignore"):
        values = bootstrap(statistics, strata, resamples, seed)  # [T + T*C, R], the same question draws for all
        full = np.ones((1, len(strata)))
        points = np.array([f(full)[0] for f in statistics])
    draws = values[T:].reshape(T, C, resamples)  # [T, C, R]
    point = points[T:].reshape(T, C)
    counts = toy_draws(T, resamples, seed)  # [R, T]

    def over_toys(per_toy: np.ndarray) -> np.ndarray:
        """[T, R] per-toy replicates -> [R] the mean over each replicate's drawn toys."""
        return np.einsum("rt,tr->r", counts, per_toy) / T

    unpruned = np.array([[points[t], *interval(values[t], level)] for t in range(T)])
    unpruned_mean = np.array([points[:T].mean(), *interval(over_toys(values[:T]), level)])
    share = np.array([[[point[t, c], *interval(draws[t, c], level)] for c in range(C)] for t in range(T)])
    mean = np.array([[point[:, c].mean(), *interval(over_toys(draws[:, c]), level)] for c in range(C)])
    at_budget = [c for c, conf in enumerate(configurations) if _budget(conf) == budget]
    pairs = []
    for i, j in itertools.combinations(at_budget, 2):
        diff = draws[:, i] - draws[:, j]  # [T, R] paired on the same questions
        per_toy = [interval(d, level) for d in diff]
        pairs.append(Pair(labels[i], labels[j], (point[:, i] - point[:, j]).tolist(), [lo for lo, _ in per_toy],
                          [hi for _, hi in per_toy], float((point[:, i] - point[:, j]).mean()),
                          *interval(over_toys(diff), level)))
    return Comparison(toys, labels, unpruned, unpruned_mean, share, mean, pairs, budget, resamples, seed, level)


# ----------------------------------------------------------------------------- report
def _cell(v: Sequence[float], digits: int = 3) -> str:
    return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"


def _ordered(pair: Pair) -> tuple[str, str, float, float, float]:
    """(better, worse, difference, low, high): the better one by the verdict (by the mean where there is
    none), the difference and its interval written as better minus worse."""
    if (pair.verdict or (1 if pair.mean >= 0 else -1)) > 0:
        return pair.a, pair.b, pair.mean, pair.mean_low, pair.mean_high
    return pair.b, pair.a, -pair.mean, -pair.mean_high, -pair.mean_low


def report(comparison: Comparison) -> str:
    """Markdown: the share table (per toy and over toys), each toy's calibration targets, and the pairs."""
    cmp, toys = comparison, comparison.toys
    m0, T = toys.measurements[0], len(toys.models)
    pct = int(round(cmp.level * 100))
    lines = [f"{len(m0.families)} held-out questions (seed {m0.seed}, {m0.per_family} per family, {m0.world} world), "
             f"{T} toys; {pct}% intervals from {cmp.resamples} resamples", *_recipe_lines(toys),
             "", f"share of the unpruned accuracy kept, over every family: per toy [paired {pct}% CI over questions]; "
                 f"over toys: mean [pigeonhole {pct}% CI over toys and questions] and range (max - min)",
             "| configuration | " + " | ".join(toys.models) + f" | mean over {T} toys | range |",
             "|---" * (T + 3) + "|",
             "| none (its accuracy) | " + " | ".join(_cell(u) for u in cmp.unpruned)
             + f" | {_cell(cmp.unpruned_mean)} | {np.ptp(cmp.unpruned[:, 0]):.3f} |"]
    for c, name in enumerate(cmp.labels):
        lines.append(f"| {name} | " + " | ".join(_cell(cmp.share[t, c]) for t in range(T))
                     + f" | {_cell(cmp.mean[c])} | {np.ptp(cmp.share[:, c, 0]):.3f} |")
    targets = cmp.targets()
    if targets:
        lines += ["", "calibration targets (issue 19), per toy"]
        for model, rows in zip(toys.models, targets):
            missed = [name for name, ok, _ in rows if not ok]
            lines.append(f"- {model}: {len(rows) - len(missed)} of {len(rows)}" + (f"; missed: {'; '.join(missed)}" if missed else ""))
    lines += _pair_lines(cmp)
    return "\n".join(lines)


def _recipe_lines(toys: Toys) -> list[str]:
    """How each toy's training recipe (recorded when its answers were measured) differs from the first
    toy's: seed, steps, anything else; "not known" where either recipe was not recorded."""
    recipes = [(stamp or {}).get("recipe") for stamp in (toys.provenance or [{} for _ in toys.models])]
    lines = ["", f"each toy's training recipe against {toys.models[0]}'s (its train_config.json)"]
    first = recipes[0]
    for model, recipe in zip(toys.models[1:], recipes[1:]):
        if first is None or recipe is None:
            unknown = toys.models[0] if first is None else model
            lines.append(f"- {model}: not known ({unknown}'s recipe was not recorded with its answers)")
            continue
        changes = [f"{k} {first.get(k)!r} -> {recipe.get(k)!r}" for k in sorted(set(first) | set(recipe))
                   if first.get(k) != recipe.get(k)]
        lines.append(f"- {model}: " + (", ".join(changes) or "the same (other weights: another CPU or software rounded otherwise)"))
    return lines


def _pair_lines(cmp: Comparison) -> list[str]:
    toys, T = cmp.toys, len(cmp.toys.models)
    pct = int(round(cmp.level * 100))
    sign = {1: "+", 0: "0", -1: "-"}
    separated = [p for p in cmp.pairs if p.verdict]
    first_only = [p for p in cmp.pairs if p.signs[0] and not p.verdict]
    reversed_ = [p for p in first_only if -p.signs[0] in p.signs]
    lines = ["", f"pairs at {cmp.budget} tokens ({len(cmp.pairs)}): A better than B only where the paired {pct}% "
                 f"question interval of A's share minus B's lies above zero on every toy",
             f"- separated on every toy: {len(separated)}; separated on {toys.models[0]}: "
             f"{sum(1 for p in cmp.pairs if p.signs[0])}, of which not on every toy: {len(first_only)} "
             f"(reversed on some toy: {len(reversed_)})",
             "", "| better | worse | mean difference [pigeonhole CI] | per toy (+ / 0 / -) |", "|---|---|---|---|"]
    for p in sorted(separated, key=lambda p: -abs(p.mean)):
        better, worse, d, lo, hi = _ordered(p)
        flip = p.verdict  # the better one is the one every toy says; the mean's sign agrees but is not the rule
        lines.append(f"| {better} | {worse} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] | {' '.join(sign[s * flip] for s in p.signs)} |")
    if first_only:
        lines += ["", f"separated on {toys.models[0]}, not on every toy (what a one-toy table overclaims)",
                  "| pair (A vs B) | per toy A - B | per toy (+ / 0 / -) |", "|---|---|---|"]
        for p in first_only:
            lines.append(f"| {p.a} vs {p.b} | " + ", ".join(f"{d:+.3f}" for d in p.difference)
                         + f" | {' '.join(sign[s] for s in p.signs)} |")
    return lines


# ----------------------------------------------------------------------------- record
def record(comparison: Comparison) -> dict[str, Any]:
    """JSON-ready: every toy's answers (so the comparison can be recomputed, :func:`from_record`) and the
    comparison's numbers."""
    cmp, toys = comparison, comparison.toys
    targets = cmp.targets() or [[] for _ in toys.models]
    return {
        "budget": cmp.budget, "resamples": cmp.resamples, "bootstrap_seed": cmp.seed, "level": cmp.level,
        "toys": [{"model": model, "weights_sha256": digest, "answers": _measurement_json(m),
                  "targets": [{"name": n, "met": ok, "detail": d} for n, ok, d in rows], "measured": stamp}
                 for model, digest, m, rows, stamp in zip(toys.models, toys.digests, toys.measurements, targets,
                                                          toys.provenance or [{} for _ in toys.models])],
        "unpruned": {"per_toy": {model: list(map(float, u)) for model, u in zip(toys.models, cmp.unpruned)},
                     "mean": list(map(float, cmp.unpruned_mean))},
        "share": {name: {"per_toy": {model: list(map(float, cmp.share[t, c])) for t, model in enumerate(toys.models)},
                         "mean": list(map(float, cmp.mean[c]))} for c, name in enumerate(cmp.labels)},
        "pairs": [{"a": p.a, "b": p.b, "difference": p.difference, "low": p.low, "high": p.high, "signs": p.signs,
                   "verdict": p.verdict, "mean": [p.mean, p.mean_low, p.mean_high]} for p in cmp.pairs],
    }


def from_record(doc: dict[str, Any]) -> Comparison:
    """The comparison again from a :func:`record` (no model is loaded)."""
    toys = Toys([t["model"] for t in doc["toys"]], [t["weights_sha256"] for t in doc["toys"]],
                [_measurement_from_json(t["answers"]) for t in doc["toys"]], [t.get("measured", {}) for t in doc["toys"]])
    return compare(toys, doc["budget"], doc["resamples"], doc["bootstrap_seed"], doc["level"])

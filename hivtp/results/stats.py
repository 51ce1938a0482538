"""Confidence intervals for benchmark scores, rebuilt from lmms-eval's logged samples (numpy only).

Every score is recomputed from the per-sample values lmms-eval logs (``*_samples_<task>.jsonl``: the
dict ``process_results`` returned, under each metric's name) with lmms-eval's own aggregation written
as a function of *weights* over resampling units. The full sample has weight 1 on every unit and
gives lmms-eval's aggregated value exactly (tests/test_stats.py compares with lmms-eval's functions);
a bootstrap resample is a vector of draw counts over the units, and its score is the same formula
with those counts as weights. So one matrix product scores B resamples at once.

Units and aggregation, per benchmark (lmms_eval/tasks/*/utils.py, lmms-eval 0.7.3):

- mean metrics (GQA and ScienceQA ``exact_match``, any metric aggregated by ``mean``): score =
  sum(w x) / sum(w n) over units holding n questions each.
- POPE: precision, recall and F1 are recomputed from the resample's counts of true positives, false
  positives and false negatives (F1 is not a mean of per-question values). As in lmms-eval, a false
  negative is an answer of exactly "no" to a "yes" question; yes_ratio is the share of "yes" *ground truths*.
  So an answer that is neither "yes" nor "no" ("No, there is not.") counts in no precision, recall or F1
  cell: it is wrong only in the accuracy. Two metrics lmms-eval does not log are derived from the same
  answers (``POPE_ANSWER_METRICS``): ``pope_unparsed``, the share of answers that are neither (a row
  whose share is above 0 has an F1 that ignored them), and ``pope_answered_yes``, the share of
  questions answered "yes" (the model's yes bias, which lmms-eval's yes_ratio is not).
- The unit of these two is the **image** where the run recorded which image each question asks about
  (the plugin's accounting: ``image``): POPE asks several questions of one image and GQA many, and such
  questions are not independent draws, so resampling them one by one gives intervals too narrow. Each
  unit then holds its image's sums (true positives, questions, ...). Without that record (another
  plugin's run, a run made before it was recorded) the unit is the question (``Scores.unit``).
- MME: one unit per image (its two questions: accuracy + accuracy+ of the pair, 0/50/100 + 0/100);
  a category's score is the mean over its images; the total is the sum over categories. Images are
  resampled within their category, so every resample scores every category (resampling across
  categories would sometimes drop one and shift the sum by a whole category).

``bootstrap_ci`` gives the 95% percentile interval of one run's score; ``paired_ci`` the interval of the
difference between two runs on the same questions (both resampled with the same draws), so question
difficulty cancels out. A run compared with itself has every resampled difference exactly 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# the weighted percentile bootstrap itself lives in the core (numpy only; hivtp.toy.calibrate uses it too)
from ..bootstrap import CHUNK, LEVEL, RESAMPLES, SEED, bootstrap, interval, resample_weights  # noqa: F401
from ..errors import HivtpError

__all__ = [
    "LEVEL",
    "MME_METRICS",
    "POPE_ANSWER_METRICS",
    "POPE_METRICS",
    "RESAMPLES",
    "SEED",
    "Scores",
    "StatsError",
    "UnknownAggregationError",
    "bootstrap",
    "bootstrap_ci",
    "excludes_zero",
    "interval",
    "paired_ci",
    "read_logged_samples",
    "resample_weights",
    "scores_from_samples",
]

POPE_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_yes_ratio")
#: derived by the collector from POPE's logged answers (lmms-eval logs no such metric): module docstring
POPE_ANSWER_METRICS = ("pope_unparsed", "pope_answered_yes")
MME_METRICS = ("mme_perception_score", "mme_cognition_score")


class StatsError(HivtpError, ValueError):
    """Logged samples that cannot give the reported score (wrong shape, missing pair, mismatch)."""


class UnknownAggregationError(StatsError):
    """A metric whose per-sample values are not numbers and whose aggregation this module lacks."""


Statistic = Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]  # (weights [R, U], columns) -> [R]


@dataclass(frozen=True)
class Scores:
    """What the bootstrap resamples for one run and one metric.

    ``keys`` [U] name the units (question or image) so that two runs can be paired; ``strata`` [U]
    are resampled separately (MME categories; all 0 elsewhere); ``columns`` hold per-unit values [U];
    ``statistic`` turns weights [R, U] into R scores; ``n`` is the number of questions scored;
    ``unit`` what one unit is (``question`` or ``image``).
    """

    metric: str
    keys: tuple[str, ...]
    strata: np.ndarray
    columns: dict[str, np.ndarray]
    statistic: Statistic
    n: int
    unit: str = "question"
    #: for image units: the same run's question units (a run paired with one that named no images falls back to them)
    per_question: Scores | None = None

    def value(self, weights: np.ndarray) -> np.ndarray:
        return self.statistic(weights, self.columns)

    def point(self) -> float:
        """The score of the full sample (lmms-eval's aggregated value)."""
        return float(self.value(np.ones((1, len(self.keys))))[0])

    def aligned_to(self, keys: tuple[str, ...]) -> Scores:
        """The same scores with units reordered to ``keys`` (the other run's order)."""
        if keys == self.keys:
            return self
        if set(keys) != set(self.keys):
            only_self, only_other = sorted(set(self.keys) - set(keys)), sorted(set(keys) - set(self.keys))
            raise StatsError(f"the two runs scored different questions for {self.metric}: {len(only_self)} only in one "
                             f"(e.g. {only_self[:3]}), {len(only_other)} only in the other (e.g. {only_other[:3]}); "
                             "pair runs made with the same benchmark and limit.")
        order = _order(self.keys, keys)
        return Scores(self.metric, keys, self.strata[order], {k: v[order] for k, v in self.columns.items()},
                      self.statistic, self.n, self.unit, self.per_question)

    def paired_with(self, other: Scores) -> tuple[Scores, Scores]:
        """(self, other aligned to it) on common units: images where both named their questions' images,
        else questions (a run that did not record them pairs by question). StatsError for other questions."""
        a, b = self, other
        if a.unit != b.unit:
            a, b = a.per_question or a, b.per_question or b
        return a, b.aligned_to(a.keys)

    def by_image(self, images: dict[str, str | None]) -> Scores:
        """These question units gathered into one unit per image (``images``: question key -> image key),
        each holding the sums of its questions' columns; unchanged unless every question names its image."""
        if self.unit != "question" or any(images.get(k) is None for k in self.keys):
            return self
        owners = [images[k] for k in self.keys]
        keys = tuple(dict.fromkeys(owners))  # first-appearance order
        where = {k: i for i, k in enumerate(keys)}
        index = np.array([where[o] for o in owners])
        columns = {}
        for name, values in self.columns.items():
            columns[name] = np.zeros(len(keys))
            np.add.at(columns[name], index, values)
        return Scores(self.metric, keys, np.zeros(len(keys), dtype=int), columns, self.statistic, self.n, "image", self)


def _order(have: tuple[str, ...], want: tuple[str, ...]) -> np.ndarray:
    where = {k: i for i, k in enumerate(have)}
    return np.array([where[k] for k in want])


# ----------------------------------------------------------------------------- statistics
def _mean(w: np.ndarray, c: dict[str, np.ndarray]) -> np.ndarray:
    return (w @ c["x"]) / (w @ c["count"])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (lmms-eval's convention for precision, recall, F1, yes ratio)."""
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _pope_precision(w, c):
    tp, fp = w @ c["tp"], w @ c["fp"]
    return _ratio(tp, tp + fp)


def _pope_recall(w, c):
    tp, fn = w @ c["tp"], w @ c["fn"]
    return _ratio(tp, tp + fn)


def _pope_f1(w, c):
    p, r = _pope_precision(w, c), _pope_recall(w, c)
    return _ratio(2 * (p * r), p + r)


def _pope_yes_ratio(w, c):
    yes, no = w @ c["gt_yes"], w @ c["gt_no"]
    return _ratio(yes, yes + no)


def _pope_accuracy(w, c):
    return (w @ c["score"]) / (w @ c["count"])


_POPE = dict(zip(POPE_METRICS, (_pope_accuracy, _pope_precision, _pope_recall, _pope_f1, _pope_yes_ratio)))


def _mme_statistic(categories: int) -> Statistic:
    def total(w: np.ndarray, c: dict[str, np.ndarray]) -> np.ndarray:
        out = np.zeros(w.shape[0])
        for k in range(categories):  # in lmms-eval's order (first appearance), as its sum adds them
            inside = c["stratum"] == k
            out = out + (w[:, inside] @ c["pair"][inside]) / w[:, inside].sum(axis=1)
        return out

    return total


# ----------------------------------------------------------------------------- samples -> units
def read_logged_samples(path: Path) -> list[dict[str, Any]]:
    """lmms-eval's ``*_samples_<task>.jsonl``, one dict per question, sorted by doc_id."""
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise StatsError(f"{path}: line {i} is not valid JSON ({e.msg}); the file is truncated or corrupt: "
                             "re-run that configuration with force=true.") from None
    return sorted(rows, key=lambda r: r.get("doc_id", 0))


def _per_sample(samples: list[dict[str, Any]], metric: str) -> list[Any]:
    values = [s.get(metric) for s in samples]
    missing = [s.get("doc_id") for s, v in zip(samples, values) if v is None]
    if missing:
        raise StatsError(f"logged samples lack metric {metric!r} for doc_id {missing[:5]}; "
                         "was the run made with another task version?")
    return values


def scores_from_samples(metric: str, samples: list[dict[str, Any]], images: dict[int, str | None] | None = None) -> Scores:
    """Units for ``metric`` from one task's logged samples (:func:`read_logged_samples`): one per image
    where ``images`` (doc_id -> image key) names every question's image, else one per question
    (MME: one per image pair, always)."""
    if not samples:
        raise StatsError(f"no logged samples for metric {metric!r}.")
    if metric in MME_METRICS:
        return _mme_scores(metric, samples)
    scores = _question_scores(metric, samples)
    if images:
        scores = scores.by_image({str(s.get("doc_id", i)): images.get(s.get("doc_id", i)) for i, s in enumerate(samples)})
    return scores


def _question_scores(metric: str, samples: list[dict[str, Any]]) -> Scores:
    values = _per_sample(samples, POPE_METRICS[0] if metric in POPE_ANSWER_METRICS else metric)
    keys = tuple(str(s.get("doc_id", i)) for i, s in enumerate(samples))
    if len(set(keys)) != len(keys):  # units pair two runs by doc_id: each must be one question
        raise StatsError(f"logged samples repeat doc_ids ({len(keys) - len(set(keys))} duplicates); "
                         "one lmms-eval run logs each document once: the file mixes runs.")
    strata = np.zeros(len(samples), dtype=int)
    if metric in POPE_ANSWER_METRICS:  # from the answers lmms-eval logs under its POPE metrics
        pred = [str(v["prediction"]) for v in values]  # the POPE dict lmms-eval logs under its first metric
        hit = [p not in ("yes", "no") for p in pred] if metric == "pope_unparsed" else [p == "yes" for p in pred]
        return Scores(metric, keys, strata, {"x": np.array(hit, dtype=float), "count": np.ones(len(pred))}, _mean, len(samples))
    if metric in POPE_METRICS:
        pred = [str(v["prediction"]) for v in values]
        gt = [str(v["ground_truth"]) for v in values]
        columns = {
            "tp": np.array([g == "yes" and p == "yes" for p, g in zip(pred, gt)], dtype=float),
            "fp": np.array([g == "no" and p == "yes" for p, g in zip(pred, gt)], dtype=float),
            "fn": np.array([g == "yes" and p == "no" for p, g in zip(pred, gt)], dtype=float),
            "gt_yes": np.array([g == "yes" for g in gt], dtype=float),
            "gt_no": np.array([g == "no" for g in gt], dtype=float),
            "score": np.array([float(v["score"]) for v in values]),
            "count": np.ones(len(values)),
        }
        return Scores(metric, keys, strata, columns, _POPE[metric], len(samples))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        kind = type(next(v for v in values if not isinstance(v, (int, float)))).__name__
        raise UnknownAggregationError(f"metric {metric!r} logs {kind} values per sample, and hivtp.results.stats knows no "
                         "aggregation for it; add a metric-from-samples function there.")
    return Scores(metric, keys, strata, {"x": np.array(values, dtype=float), "count": np.ones(len(values))}, _mean, len(samples))


def _mme_scores(metric: str, samples: list[dict[str, Any]]) -> Scores:
    """One unit per (category, image): the pair's accuracy + accuracy+ (lmms-eval's mme_aggregate_results)."""
    pairs: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        v = s.get(metric)
        if v is None:  # the other MME half (cognition vs perception) logs under its own key
            continue
        pairs.setdefault((str(v["category"]), str(v["question_id"])), []).append(float(v["score"]))
    if not pairs:
        raise StatsError(f"no logged sample carries {metric!r}.")
    odd = [k for k, v in pairs.items() if len(v) != 2]
    if odd:
        raise StatsError(f"MME scores image pairs, but {odd[:3]} have {[len(pairs[k]) for k in odd[:3]]} questions; "
                         "use a limit that keeps both questions of every image (an even number).")
    categories = list(dict.fromkeys(c for c, _ in pairs))
    pair = np.array([sum(v) / len(v) * 100.0 + (sum(v) == 2) * 100.0 for v in pairs.values()])
    strata = np.array([categories.index(c) for c, _ in pairs])
    keys = tuple(f"{c}/{q}" for c, q in pairs)
    return Scores(metric, keys, strata, {"pair": pair, "stratum": strata}, _mme_statistic(len(categories)),
                  sum(len(v) for v in pairs.values()), "image")


# ----------------------------------------------------------------------------- bootstrap
def bootstrap_ci(scores: Scores, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of one run's score."""
    (values,) = bootstrap([scores.value], scores.strata, resamples, seed)
    return interval(values, level)


def paired_ci(a: Scores, b: Scores, resamples: int = RESAMPLES, seed: int = SEED,
              level: float = LEVEL) -> tuple[float, float, float]:
    """(a - b on the full sample, interval low, high): both runs resampled with the same draws."""
    if a.metric != b.metric:
        raise StatsError(f"cannot pair {a.metric!r} with {b.metric!r}.")
    a, b = a.paired_with(b)
    diff = a.point() - b.point()
    values = bootstrap([lambda w: a.value(w) - b.value(w)], a.strata, resamples, seed)[0]
    lo, hi = interval(values, level)
    return diff, lo, hi


def excludes_zero(low: float, high: float) -> int:
    """+1 when an interval lies above 0, -1 below, 0 when it holds 0 or is unknown (NaN)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return 0
    return 1 if low > 0 else -1 if high < 0 else 0

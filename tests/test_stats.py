"""hivtp.results.stats: bootstrap intervals, paired differences and lmms-eval's metrics rebuilt from samples."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from results_fixtures import mean_samples, pope_samples

from hivtp.results.stats import (
    StatsError,
    UnknownAggregationError,
    bootstrap_ci,
    paired_ci,
    read_logged_samples,
    resample_weights,
    scores_from_samples,
)


def test_bootstrap_interval_of_a_bernoulli_mean_matches_the_normal_closed_form():
    """n = 2000 answers, 30% right: the percentile interval is p +- 1.96 sqrt(p(1-p)/n) (CLT), up to
    the bootstrap's own noise and the 1/n grid of the mean."""
    correct = [i % 10 < 3 for i in range(2000)]
    random.Random(0).shuffle(correct)
    scores = scores_from_samples("exact_match", mean_samples(correct))
    low, high = bootstrap_ci(scores, resamples=4000, seed=1)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 2000)
    assert scores.point() == 0.3
    assert low == pytest.approx(0.3 - half, abs=0.002) and high == pytest.approx(0.3 + half, abs=0.002)
    assert bootstrap_ci(scores, resamples=4000, seed=1) == (low, high)  # seeded: the same interval again


def test_mean_interval_of_a_bernoulli_mean_matches_the_normal_closed_form():
    """The core's one-sample helper (toy scripts): the same CLT check, and no values is an error."""
    from hivtp.bootstrap import mean_interval
    from hivtp.errors import ConfigError

    values = [float(i % 10 < 3) for i in range(2000)]
    random.Random(0).shuffle(values)
    mean, low, high = mean_interval(values, resamples=4000, seed=1)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 2000)
    assert mean == pytest.approx(0.3) and low == pytest.approx(0.3 - half, abs=0.002) and high == pytest.approx(0.3 + half, abs=0.002)
    with pytest.raises(ConfigError, match="at least one value"):
        mean_interval([])


def _mme_samples(scores: list[float], categories: list[str]) -> list[dict]:
    """MME samples as lmms-eval logs them: two questions per image, in doc order."""
    out = []
    for i, (s, c) in enumerate(zip(scores, categories)):
        value = {"question_id": f"{c}/{i // 2:04d}.png", "category": c, "score": s}
        out.append({"doc_id": i, "target": "Yes", "resps": "Yes", "filtered_resps": "Yes", "mme_perception_score": value})
    return out


def _some_runs(rng: random.Random, n: int = 60):
    truths = [rng.choice(["yes", "no"]) for _ in range(n)]
    answers = [rng.choice(["yes", "no", "no", "maybe"]) for _ in range(n)]
    categories = [c for c in ("existence", "count", "color") for _ in range(n // 3)]
    mme = [float(rng.random() < 0.7) for _ in range(n)]
    return truths, answers, categories, mme


@pytest.mark.parametrize("metric", ["pope_f1_score", "pope_accuracy", "pope_recall", "mme_perception_score", "exact_match"])
def test_a_run_paired_with_itself_differs_by_exactly_zero(metric):
    rng = random.Random(3)
    truths, answers, categories, mme = _some_runs(rng)
    samples = {"mme_perception_score": _mme_samples(mme, categories),
               "exact_match": mean_samples([a == t for a, t in zip(answers, truths)])}.get(metric, pope_samples(answers, truths))
    a = scores_from_samples(metric, samples)
    shuffled = list(samples)
    rng.shuffle(shuffled)  # the same run, listed in another order: paired by question, not by position
    b = scores_from_samples(metric, sorted(shuffled, key=lambda s: -s["doc_id"]))
    assert paired_ci(a, b, resamples=500) == (0.0, 0.0, 0.0)


def test_metrics_rebuilt_from_samples_equal_lmms_eval_aggregation():
    """On the full sample, every metric equals what lmms-eval's own process_results + aggregation give."""
    from lmms_eval.api.metrics import mean
    from lmms_eval.tasks.mme import utils as mme
    from lmms_eval.tasks.pope import utils as pope
    from lmms_eval.tasks.scienceqa.utils import sqa_process_results

    rng = random.Random(7)
    for trial in range(5):
        truths, answers, categories, _ = _some_runs(rng, n=90)
        # POPE: lmms-eval's process_results on raw answers ("maybe": neither yes nor no; " Yes": case)
        raw = [a if rng.random() < 0.8 else f" {a.capitalize()}" for a in answers]
        logged = [{"doc_id": i, **pope.pope_process_results({"question_id": str(i), "answer": t}, [r])}
                  for i, (r, t) in enumerate(zip(raw, truths))]
        for metric, aggregate in (("pope_accuracy", pope.pope_aggregate_accuracy), ("pope_precision", pope.pope_aggregate_precision),
                                  ("pope_recall", pope.pope_aggregate_recall), ("pope_f1_score", pope.pope_aggregate_f1_score),
                                  ("pope_yes_ratio", pope.pope_aggregate_yes_ratio)):
            expected = aggregate([s[metric] for s in logged])
            assert scores_from_samples(metric, logged).point() == expected, (trial, metric)
        # MME: two questions per image, perception and cognition categories, answers parsed by lmms-eval
        docs = [{"question_id": f"{c}/{i // 2}.png", "category": c, "answer": rng.choice(["Yes", "No"])}
                for i, c in enumerate(categories + ["code_reasoning"] * 6)]
        preds = [rng.choice(["Yes", "No", "no.", "yes, it is", "unsure"]) for _ in docs]
        logged = [{"doc_id": i, **mme.mme_process_results(d, [p])} for i, (d, p) in enumerate(zip(docs, preds))]
        for metric in ("mme_perception_score", "mme_cognition_score"):
            expected = mme.mme_aggregate_results([s[metric] for s in logged if metric in s])
            assert scores_from_samples(metric, logged).point() == expected, (trial, metric)
        # ScienceQA (and GQA): per-sample exact_match, aggregated by lmms-eval's mean
        docs = [{"choices": ["a", "b", "c"], "answer": rng.randrange(3)} for _ in range(45)]
        preds = [rng.choice(["A", "B", "C", "B. b", "c"]) for _ in docs]
        logged = [{"doc_id": i, **sqa_process_results(d, [p])} for i, (d, p) in enumerate(zip(docs, preds))]
        expected = mean([s["exact_match"] for s in logged])
        assert scores_from_samples("exact_match", logged).point() == expected


def test_pope_answer_metrics_read_the_answers_lmms_eval_logs():
    """lmms-eval's own process_results lowercases and strips an answer; one that is then neither "yes" nor
    "no" is in no F1 cell (F1 1.0 below, accuracy 0.5), and its yes ratio is the ground truth's. The
    derived metrics count such answers and the model's own yes rate."""
    from lmms_eval.tasks.pope import utils as pope

    truths = ["yes", "yes", "no", "no", "no", "no"]
    raw = [" Yes", "yes", "No, there is not.", "NO", "Yes", "maybe"]
    logged = [{"doc_id": i, **pope.pope_process_results({"question_id": str(i), "answer": t}, [r])}
              for i, (r, t) in enumerate(zip(raw, truths))]
    assert scores_from_samples("pope_unparsed", logged).point() == pytest.approx(2 / 6)  # "no, there is not.", "maybe"
    assert scores_from_samples("pope_answered_yes", logged).point() == pytest.approx(3 / 6)
    assert scores_from_samples("pope_yes_ratio", logged).point() == pytest.approx(2 / 6)  # lmms-eval's: the truths'


def test_a_resample_scores_as_lmms_eval_scores_the_resampled_questions():
    """Weights are draw counts: the weighted POPE F1 equals lmms-eval's F1 of the list with each
    question repeated as often as it was drawn (F1 recomputed, not averaged per question), and the
    weighted MME total equals lmms-eval's total over the drawn images (each copy a new image)."""
    from lmms_eval.tasks.mme.utils import mme_aggregate_results
    from lmms_eval.tasks.pope.utils import pope_aggregate_f1_score

    rng = random.Random(11)
    truths, answers, categories, mme = _some_runs(rng)
    samples = pope_samples(answers, truths)
    scores = scores_from_samples("pope_f1_score", samples)
    weights = resample_weights(scores.strata, 5, np.random.default_rng(0))
    for w in weights:
        drawn = [s["pope_f1_score"] for s, k in zip(samples, w) for _ in range(int(k))]
        assert scores.value(w[None, :])[0] == pytest.approx(pope_aggregate_f1_score(drawn), abs=1e-12)

    samples = _mme_samples(mme, categories)
    scores = scores_from_samples("mme_perception_score", samples)
    assert len(scores.keys) == len(samples) // 2 and scores.n == len(samples)  # units are images; n counts questions
    weights = resample_weights(scores.strata, 5, np.random.default_rng(0))
    by_image = {}
    for s in samples:
        v = s["mme_perception_score"]
        by_image.setdefault(f"{v['category']}/{v['question_id']}", []).append(v)
    for w in weights:
        # within each category, as many images drawn as it holds (every category in every resample)
        for k in np.unique(scores.strata):
            assert w[scores.strata == k].sum() == (scores.strata == k).sum()
        drawn = [dict(v, question_id=f"{v['question_id']}#{copy}")
                 for key, k in zip(scores.keys, w) for copy in range(int(k)) for v in by_image[key]]
        assert scores.value(w[None, :])[0] == pytest.approx(mme_aggregate_results(drawn), abs=1e-9)


def test_paired_interval_excludes_zero_only_for_a_real_difference():
    truths = ["yes", "no"] * 200
    good = list(truths)
    worse = [("no" if t == "yes" else "yes") if i % 4 == 0 else t for i, t in enumerate(truths)]  # 100 wrong
    close = list(truths)
    close[0], close[1] = "no", "yes"  # two wrong: not a difference 400 questions can tell
    a = scores_from_samples("pope_f1_score", pope_samples(good, truths))
    d, lo, hi = paired_ci(scores_from_samples("pope_f1_score", pope_samples(worse, truths)), a)
    assert d < 0 and hi < 0
    d, lo, hi = paired_ci(scores_from_samples("pope_f1_score", pope_samples(close, truths)), a)
    assert d < 0 and lo < 0 <= hi


def test_bad_samples_are_clear_errors(tmp_path):
    categories = ["existence"] * 5
    with pytest.raises(StatsError, match="image pairs"):
        scores_from_samples("mme_perception_score", _mme_samples([1.0] * 5, categories))  # an image with one question
    with pytest.raises(UnknownAggregationError, match="add a metric-from-samples function"):
        scores_from_samples("mmbench", [{"doc_id": 0, "mmbench": {"answer": "A"}}])
    with pytest.raises(StatsError, match="repeat doc_ids"):
        scores_from_samples("exact_match", mean_samples([True, False]) * 2)
    with pytest.raises(StatsError, match="lack metric 'exact_match'"):
        scores_from_samples("exact_match", [{"doc_id": 0, "other": 1.0}])
    a = scores_from_samples("exact_match", mean_samples([True, False, True]))
    b = scores_from_samples("exact_match", mean_samples([True, False]))
    with pytest.raises(StatsError, match="different questions"):
        paired_ci(a, b)
    path = tmp_path / "x_samples_t.jsonl"
    path.write_text('{"doc_id": 0, "exact_match": 1.0}\n{"doc_id": 1, "exa')
    with pytest.raises(StatsError, match=f"{path}: line 2 .*truncated"):
        read_logged_samples(path)


@pytest.mark.parametrize("metric", ["pope_f1_score", "pope_accuracy", "exact_match"])
def test_image_units_resample_an_images_questions_together(metric):
    """With each question's image named, a unit is an image: a resample drawing an image k times scores as
    lmms-eval scores the list holding each of that image's questions k times; the full sample's score is
    unchanged; a run that named no images keeps question units."""
    from lmms_eval.tasks.pope.utils import pope_aggregate_accuracy, pope_aggregate_f1_score

    rng = random.Random(5)
    truths, answers, _, _ = _some_runs(rng, n=90)
    samples = (mean_samples([a == t for a, t in zip(answers, truths)]) if metric == "exact_match"
               else pope_samples(answers, truths))
    image_of = {s["doc_id"]: f"img{s['doc_id'] // 3}" for s in samples}  # three questions per image
    flat = scores_from_samples(metric, samples)
    scores = scores_from_samples(metric, samples, image_of)
    assert (flat.unit, scores.unit) == ("question", "image")
    assert len(scores.keys) == 30 and scores.n == 90 and scores.point() == pytest.approx(flat.point(), abs=1e-12)
    aggregate = {"pope_f1_score": pope_aggregate_f1_score, "pope_accuracy": pope_aggregate_accuracy,
                 "exact_match": lambda v: sum(v) / len(v)}[metric]
    for w in resample_weights(scores.strata, 5, np.random.default_rng(0)):
        count = dict(zip(scores.keys, w))
        drawn = [s[metric] for s in samples for _ in range(int(count[image_of[s["doc_id"]]]))]
        assert scores.value(w[None, :])[0] == pytest.approx(aggregate(drawn), abs=1e-12)
    partly = {**image_of, samples[0]["doc_id"]: None}  # one question without its image: questions
    assert scores_from_samples(metric, samples, partly).unit == "question"


def test_image_units_widen_the_interval_of_questions_that_fail_together():
    """Two questions per image, answered right or wrong together: resampled as questions the interval is
    about 1/sqrt(2) as wide as resampled as images, the honest one."""
    right = [i // 2 % 10 < 7 for i in range(1000)]
    samples = mean_samples(right)
    image_of = {s["doc_id"]: f"img{s['doc_id'] // 2}" for s in samples}
    lo_q, hi_q = bootstrap_ci(scores_from_samples("exact_match", samples), resamples=4000, seed=1)
    lo_i, hi_i = bootstrap_ci(scores_from_samples("exact_match", samples, image_of), resamples=4000, seed=1)
    assert (hi_i - lo_i) / (hi_q - lo_q) == pytest.approx(math.sqrt(2), rel=0.1)


def test_a_run_with_image_units_pairs_with_one_without_by_question():
    truths = ["yes", "no"] * 100
    worse = [("no" if t == "yes" else "yes") if i % 4 == 0 else t for i, t in enumerate(truths)]
    good, bad = pope_samples(truths, truths), pope_samples(worse, truths)
    image_of = {s["doc_id"]: f"img{s['doc_id'] // 2}" for s in good}
    a, b = scores_from_samples("pope_f1_score", bad, image_of), scores_from_samples("pope_f1_score", good)
    d, lo, hi = paired_ci(a, b, resamples=500)
    assert (d, lo, hi) == paired_ci(scores_from_samples("pope_f1_score", bad), b, resamples=500)
    assert d < 0 and hi < 0

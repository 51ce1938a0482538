"""Offline method rows over several toys (:mod:`hivtp.toy.trajectories`,
``scripts/toy_trajectories.py``, ``make toy-trajectories``).

The statistics are checked on answers built by hand, against the calibration's own statistic and a
brute-force re-derivation of the pigeonhole bootstrap; the script on the shipped toy; the recorded
result (``results/toy_trajectories.*``) against its own answers; the shipped siblings against the
shipped toy's recipe.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from hivtp.bootstrap import interval, resample_weights
from hivtp.errors import ConfigError
from hivtp.toy.calibrate import ALL, UNPRUNED, Measurement, label, summarise
from hivtp.toy.cli import trained_recipe
from hivtp.toy.trajectories import Toys, code_digest, compare, from_record, record, report, toy_draws
from hivtp.world import BENCHMARK_WORLD, FAMILIES
from hivtp.zoo import TOY_SIBLINGS, TOY_TRAJECTORIES, trained_dir, weights_digest

ROOT = Path(__file__).resolve().parents[1]
A, B, C = ("a", {"budget": 64}), ("b", {"budget": 64}), ("c", {"budget": 128})
CONFIGS = [UNPRUNED, A, B, C]


def _measurement(correct: dict[str, np.ndarray], per_family: int) -> Measurement:
    families = [f for f in FAMILIES for _ in range(per_family)]
    return Measurement(123, per_family, list(CONFIGS), families, {k: np.asarray(v, dtype=bool) for k, v in correct.items()})


def _random_toy(rng: np.random.Generator, per_family: int, p: dict[str, float]) -> Measurement:
    n = per_family * len(FAMILIES)
    return _measurement({label(c): rng.random(n) < p[label(c)] for c in CONFIGS}, per_family)


def _toys(*measurements: Measurement) -> Toys:
    return Toys([f"toy{i}" for i in range(len(measurements))], [f"{i:064x}" for i in range(len(measurements))],
                list(measurements))


P = {"none": 0.95, "a@64": 0.85, "b@64": 0.75, "c@128": 0.9}


def test_each_toys_share_and_interval_are_the_calibrations_paired_ratio():
    rng = np.random.default_rng(0)
    toys = _toys(_random_toy(rng, 20, P), _random_toy(rng, 20, P))
    cmp = compare(toys, 64, resamples=300)
    for t, m in enumerate(toys.measurements):
        s = summarise(m, ratios=[(c, UNPRUNED) for c in CONFIGS[1:]], resamples=300)
        for i, c in enumerate(CONFIGS[1:]):
            e = s.ratios[f"{label(c)} / none"][ALL]
            assert tuple(cmp.share[t, i]) == (e.value, e.low, e.high)
        e = s.accuracy["none"][ALL]
        assert tuple(cmp.unpruned[t]) == (e.value, e.low, e.high)


def test_identical_toys_give_the_one_toy_interval_over_toys_and_no_range():
    m = _random_toy(np.random.default_rng(1), 15, P)
    cmp = compare(_toys(m, m, m), 64, resamples=300)
    assert np.allclose(cmp.mean, cmp.share[0], atol=1e-12)
    assert np.ptp(cmp.share[:, :, 0], axis=0).tolist() == [0.0] * 3


def test_the_pigeonhole_interval_is_the_brute_force_one_and_widens_with_toy_spread():
    """Re-derived with explicit loops: per replicate, resample the questions within family and the toys
    with replacement (independent streams), average the drawn toys' ratios."""
    rng = np.random.default_rng(2)
    per_family, resamples = 4, 120
    toys = _toys(_random_toy(rng, per_family, P), _random_toy(rng, per_family, {**P, "a@64": 0.3}),
                 _random_toy(rng, per_family, {**P, "a@64": 0.6}))
    cmp = compare(toys, 64, resamples=resamples, seed=7)
    strata = np.repeat(np.arange(len(FAMILIES)), per_family)
    w = resample_weights(strata, resamples, np.random.default_rng(7))  # the question draws (one chunk)
    counts = toy_draws(3, resamples, 7)
    brute = []
    for r in range(resamples):
        ratios = []
        for t, m in enumerate(toys.measurements):
            for _ in range(counts[r, t]):
                ratios.append((w[r] @ m.correct["a@64"]) / (w[r] @ m.correct["none"]))
        brute.append(np.mean(ratios))
    assert cmp.mean[0, 1:] == pytest.approx(interval(np.array(brute)))
    assert cmp.mean[0, 0] == pytest.approx(np.mean(cmp.share[:, 0, 0]))
    widest_toy = max(cmp.share[t, 0, 2] - cmp.share[t, 0, 1] for t in range(3))
    assert cmp.mean[0, 2] - cmp.mean[0, 1] > widest_toy


def _fixed(a: int, b: int, per_family: int = 50) -> Measurement:
    """Unpruned answers all; a answers the first ``a`` of each family, b the first ``b``."""
    first = lambda k: np.tile(np.arange(per_family) < k, len(FAMILIES))
    return _measurement({"none": first(per_family), "a@64": first(a), "b@64": first(b), "c@128": first(per_family)},
                        per_family)


def test_a_pair_is_better_only_where_every_toy_separates_it():
    cmp = compare(_toys(_fixed(45, 20), _fixed(44, 21), _fixed(30, 30)), 64, resamples=300)
    assert [(p.a, p.b) for p in cmp.pairs] == [("a@64", "b@64")]  # c is at another budget
    pair = cmp.pairs[0]
    assert pair.signs == [1, 1, 0] and pair.verdict == 0
    assert pair.difference == pytest.approx([0.5, 0.46, 0.0])
    text = report(cmp)
    assert "separated on every toy: 0; separated on toy0: 1, of which not on every toy: 1 (reversed on some toy: 0)" in text
    assert "| a@64 vs b@64 | +0.500, +0.460, +0.000 | + + 0 |" in text
    reversed_ = compare(_toys(_fixed(45, 20), _fixed(20, 45)), 64, resamples=300)
    assert reversed_.pairs[0].signs == [1, -1] and "(reversed on some toy: 1)" in report(reversed_)
    both = compare(_toys(_fixed(20, 45), _fixed(21, 44)), 64, resamples=300)
    assert both.pairs[0].verdict == -1
    assert "| b@64 | a@64 | +0.480 [" in report(both) and "| - - |" not in report(both)


def test_a_separated_pair_is_written_better_first_by_its_verdict_not_by_its_mean():
    """A percentile interval need not hold its point: where every toy says A but the mean leans to B, A is
    still written as the better one."""
    from hivtp.toy.trajectories import Pair, _ordered

    pair = Pair("a@64", "b@64", [-0.001, 0.002], [0.001, 0.001], [0.01, 0.01], -0.0005, 0.001, 0.01)
    assert pair.verdict == 1 and _ordered(pair)[:2] == ("a@64", "b@64")
    assert _ordered(Pair("a@64", "b@64", [-0.1], [-0.2], [0.1], -0.1, -0.2, 0.1))[:2] == ("b@64", "a@64")  # no verdict: the mean


def test_the_report_says_how_each_toys_recipe_differs_from_the_first():
    """Toys of different recipes (the shipped toy at 4,000 steps, siblings at 3,200) are compared only with
    the difference named; a toy whose recipe was not recorded is said to be unknown, not guessed."""
    rng = np.random.default_rng(0)
    toys = _toys(*(_random_toy(rng, 20, P) for _ in range(3)))
    recipe = {"seed": 0, "steps": 4000, "world": "plain", "threads": 2}
    toys.provenance = [{"recipe": recipe}, {"recipe": {**recipe, "steps": 3200}}, {"recipe": dict(recipe)}]
    text = report(compare(toys, 64, resamples=50))
    assert "- toy1: steps 4000 -> 3200\n" in text and "- toy2: the same (other weights" in text
    assert "toys of one recipe" not in text
    toys.provenance[2] = {}
    assert "- toy2: not known (toy2's recipe was not recorded" in report(compare(toys, 64, resamples=50))


def test_a_record_gives_back_the_same_comparison():
    rng = np.random.default_rng(3)
    cmp = compare(_toys(_random_toy(rng, 10, P), _random_toy(rng, 10, P)), 64, resamples=200, seed=5)
    again = from_record(json.loads(json.dumps(record(cmp))))
    assert report(again) == report(cmp) and again.seed == 5 and again.toys.digests == cmp.toys.digests


def test_toys_that_answered_other_questions_or_lack_the_reference_are_refused():
    m = _fixed(40, 20)
    other = _fixed(40, 20)
    other.seed = 124
    with pytest.raises(ConfigError, match="answered other questions"):
        _toys(m, other)
    with pytest.raises(ConfigError, match="at least two toys"):
        _toys(m)
    no_reference = Measurement(123, 50, [A, B], m.families, {"a@64": m.correct["a@64"], "b@64": m.correct["b@64"]})
    with pytest.raises(ConfigError, match="unpruned reference"):
        _toys(no_reference, no_reference)


# --- the script on real toys ---------------------------------------------------------------------------
def _script():
    spec = importlib.util.spec_from_file_location("toy_trajectories", ROOT / "scripts" / "toy_trajectories.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_measures_every_toy_on_the_same_questions_and_resumes_from_its_cache(tmp_path, capsys, monkeypatch):
    script = _script()
    args = ["--models", "toy-llava", "toy-llava-xeon-seed1", "--per-family", "1", "--resamples", "50",
            "--cache", str(tmp_path / "cache")]
    assert script.main([*args, "--out", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [t["model"] for t in doc["toys"]] == ["toy-llava", "toy-llava-xeon-seed1"]
    first_toy, second_toy = (t["answers"] for t in doc["toys"])
    assert first_toy["families"] == second_toy["families"] and len(first_toy["families"].split(",")) == len(FAMILIES)
    assert [c["label"] for c in first_toy["configurations"]] == [c["label"] for c in second_toy["configurations"]]
    assert {"hivtp@64", "oracle@64", "fastv@64 k_layer=1"} <= set(doc["share"])
    for toy in doc["toys"]:
        assert toy["measured"]["code_digest"] == code_digest() and "--per-family 1" in toy["measured"]["command"]
        assert toy["measured"]["recipe"] == trained_recipe(toy["model"]) and toy["measured"]["recipe"]["steps"] > 0
    assert len(list((tmp_path / "cache").iterdir())) == 2  # one entry per toy
    first = capsys.readouterr().out

    def no_loading(*a, **k):
        raise AssertionError("the cached answers should have been reused")

    monkeypatch.setattr("hivtp.zoo.load_pretrained", no_loading)
    assert script.main([*args, "--out", str(tmp_path / "again.json")]) == 0
    assert capsys.readouterr().out == first
    assert json.loads((tmp_path / "again.json").read_text()) == doc  # the measuring run's provenance, kept
    assert script.main(["--from-record", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().out == first
    monkeypatch.setattr("hivtp.toy.trajectories.code_digest", lambda: "other code")  # a method changed
    with pytest.raises(AssertionError, match="should have been reused"):
        script.main(args)
    with pytest.raises(AssertionError, match="should have been reused"):
        script.main([*args, "--batch-size", "8"])


def test_the_script_refuses_the_same_weights_twice_and_a_missing_record(tmp_path, capsys):
    import shutil

    script = _script()
    copy = tmp_path / "copy"
    shutil.copytree(trained_dir("toy-llava"), copy)
    with pytest.raises(ConfigError, match="hold the same weights"):
        script.main(["--models", "toy-llava", str(copy), "--per-family", "1", "--cache", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()  # refused before any work
    with pytest.raises(SystemExit):
        script.main(["--from-record", str(tmp_path / "none.json")])
    assert "no such file" in capsys.readouterr().err


def test_the_code_digest_changes_with_the_answering_sources_only(tmp_path):
    from hivtp.toy.trajectories import code_digest

    for name in ("selection.py", "methods/fastv.py", "results/ledger.py", "toy/trajectories.py", "toy/evaluate.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    before = code_digest(tmp_path)
    for name in ("results/ledger.py", "toy/trajectories.py", "README.md"):
        (tmp_path / name).write_text("x = 2\n")
    assert code_digest(tmp_path) == before
    for name in ("methods/fastv.py", "toy/evaluate.py"):
        (tmp_path / name).write_text("x = 3\n")
        assert code_digest(tmp_path) != before
        before = code_digest(tmp_path)
    assert code_digest() != before  # the package's own sources


def test_the_script_refuses_one_toy_and_toys_of_different_worlds(tmp_path, capsys):
    import shutil

    script = _script()
    with pytest.raises(SystemExit):
        script.main(["--models", "toy-llava"])
    assert "at least two different toys" in capsys.readouterr().err
    copy = tmp_path / "cluttered"
    shutil.copytree(trained_dir("toy-llava"), copy)
    cfg = json.loads((copy / "train_config.json").read_text())
    (copy / "train_config.json").write_text(json.dumps({**cfg, "world": "cluttered"}))
    with pytest.raises(SystemExit):
        script.main(["--models", "toy-llava", str(copy)])
    assert "different worlds" in capsys.readouterr().err


# --- the shipped siblings and the recorded result ---------------------------------------------------------
@pytest.mark.parametrize("name", TOY_SIBLINGS)
def test_each_shipped_sibling_is_the_shipped_recipe_with_its_recorded_changes(name):
    from hivtp.toy.train import recorded_recipe
    from hivtp.zoo import TOY_SIBLING_RECIPES

    shipped = recorded_recipe(json.loads((trained_dir("toy-llava") / "train_config.json").read_text()))
    sibling = recorded_recipe(json.loads((trained_dir(name) / "train_config.json").read_text()))
    assert sibling == {**shipped, **TOY_SIBLING_RECIPES[name]}
    build = json.loads((trained_dir(name) / "hivtp_build.json").read_text())
    assert {field: build[field] for field in TOY_SIBLING_RECIPES[name]} == TOY_SIBLING_RECIPES[name]
    assert weights_digest(name) != weights_digest("toy-llava")


def test_train_toy_sibling_trains_its_recipe_into_its_shipped_folder(capsys):
    spec = importlib.util.spec_from_file_location("train_toy", ROOT / "scripts" / "train_toy.py")
    train_toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_toy)
    args = train_toy.parse(["--sibling", "toy-llava-xeon-seed1"])
    assert (args.seed, args.steps, Path(args.out), Path(args.work_dir).name) == (
        1, train_toy.TrainConfig.steps, trained_dir("toy-llava-xeon-seed1"), "toy-train-toy-llava-xeon-seed1")
    assert train_toy.parse(["--sibling", "toy-llava-xeon-seed2", "--out", "/tmp/x"]).out == "/tmp/x"
    assert train_toy.parse(["--sibling", "toy-llava-xeon-seed2"]).seed == 2
    assert train_toy.parse(["--sibling", "toy-llava-xeon-seed1", "--seed", "1", "--steps", "4000"]).steps == 4000  # the recipe's own
    assert train_toy.parse(["--sibling", "toy-llava-xeon-seed1", "--threads", "1"]).threads == 1  # bookkeeping: allowed
    for seed in ("5", "0"):  # 0 is the recipe's default seed, given here explicitly
        with pytest.raises(SystemExit):
            train_toy.parse(["--sibling", "toy-llava-xeon-seed1", "--seed", seed])
        assert f"is make toy-model's recipe at seed 1; drop --seed {seed}" in capsys.readouterr().err
    for flag, value in (("--steps", "50"), ("--world", "textured"), ("--lr", "0.01")):  # any recipe field, not only the changed ones
        with pytest.raises(SystemExit):
            train_toy.parse(["--sibling", "toy-llava-xeon-seed1", flag, value])
        assert f"drop {flag} {value}" in capsys.readouterr().err
    assert (train_toy.parse([]).seed, train_toy.parse(["--seed", "3"]).seed) == (0, 3)
    assert train_toy.parse([]).steps == train_toy.TrainConfig.steps


RECORD = ROOT / "results" / "toy_trajectories.json"


def test_the_recorded_trajectories_are_the_shipped_toys_and_their_report_is_their_answers():
    """results/toy_trajectories.json was measured on the shipped weights (digests) and its numbers and
    results/toy_trajectories.md are what its answers give."""
    doc = json.loads(RECORD.read_text())
    assert [t["model"] for t in doc["toys"]] == list(TOY_TRAJECTORIES)
    assert [t["weights_sha256"] for t in doc["toys"]] == [weights_digest(m) for m in TOY_TRAJECTORIES]
    assert {t["answers"]["world"] for t in doc["toys"]} == {BENCHMARK_WORLD}, "measured in another world than the benchmarks'"
    cmp = from_record(doc)
    assert record(cmp) == doc
    for toy in doc["toys"]:
        assert toy["measured"]["code_digest"] == code_digest(), "a method changed since: run make toy-trajectories again"
    assert report(cmp) + "\n" == (ROOT / "results" / "toy_trajectories.md").read_text()

"""Collector, tables, ledger and figures against hand-made rows and run folders (tests/results_fixtures.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from unittest import mock

import pandas as pd
import pytest
from results_fixtures import (
    DIFF_HIVTP,
    GQA_TASK,
    POPE_TASK,
    acc_row,
    accuracy_frame,
    lat_row,
    latency_frame,
    mean_samples,
    pope_samples,
    sweep_frame,
    with_intervals,
    write_run,
)

from hivtp.atomic import write_json
from hivtp.errors import ConfigError
from hivtp.results import ACCURACY_COLUMNS, BrokenRunsError, collect, ledger_markdown
from hivtp.results.collect import LATENCY_COLUMNS
from hivtp.results.report import write_reports
from hivtp.results.stats import bootstrap_ci, paired_ci, scores_from_samples
from hivtp.results.tables import (
    BETTER,
    WORSE,
    accuracy_table,
    accuracy_text_table,
    latency_table,
    split_ablations,
    to_latex,
    to_markdown,
)
from hivtp.run import REPO
from hivtp.runfolder import write_manifest

TRUTHS = ["yes", "no"] * 100  # 200 POPE questions


def _flip(answers: list[str], every: int) -> list[str]:
    """Every ``every``-th answer turned wrong."""
    return [("no" if a == "yes" else "yes") if i % every == 0 else a for i, a in enumerate(answers)]


def _sweep(runs):
    """none, hivtp@64, random@64 (a quarter of POPE wrong: a real difference) and pool@64 (one POPE
    answer differs from hivtp@64: no difference 200 questions can tell); GQA right / wrong alike."""
    hivtp_answers = _flip(TRUTHS, 10)
    gqa = [i % 3 != 0 for i in range(90)]
    plan = {
        "r_none": ("none", {}, TRUTHS, gqa),
        "r_hivtp64": ("hivtp", {"budget": 64}, hivtp_answers, gqa),
        "r_random64": ("random", {"budget": 64}, _flip(TRUTHS, 4), gqa),
        "r_pool64": ("pool", {"budget": 64}, hivtp_answers[:-1] + _flip(hivtp_answers[-1:], 1), gqa),
    }
    for name, (method, params, pope, correct) in plan.items():
        write_run(runs, name, method, params, {POPE_TASK: pope_samples(pope, TRUTHS), GQA_TASK: mean_samples(correct)})


def test_the_collector_counts_pope_answers_that_lmms_evals_f1_leaves_out(tmp_path, capsys):
    """lmms-eval's POPE F1 counts only answers that are exactly yes or no: a run answering every negative
    "no, there is not." has F1 1.0. The collector derives the share of such answers and the model's own
    yes rate (rows with intervals, paired with the unpruned run) and says which runs have any."""
    runs = tmp_path / "runs"
    truths = ["yes", "no"] * 20
    wordy = ["yes" if t == "yes" else "no, there is not." for t in truths]
    write_run(runs, "r_none", "none", {}, {POPE_TASK: pope_samples(truths, truths)})
    write_run(runs, "r_wordy", "random", {"budget": 64}, {POPE_TASK: pope_samples(wordy, truths)})
    back = collect(runs, tmp_path / "results", resamples=200)["accuracy"].set_index(["method", "metric"])
    assert back.loc[("random", "pope_f1_score"), "value"] == 1.0  # lmms-eval's rule, kept as is
    assert back.loc[("random", "pope_accuracy"), "value"] == 0.5
    assert back.loc[("random", "pope_unparsed"), "value"] == 0.5 and back.loc[("none", "pope_unparsed"), "value"] == 0.0
    assert back.loc[("random", "pope_answered_yes"), "value"] == 0.5
    assert back.loc[("random", "pope_unparsed"), "ci_low"] > 0 and back.loc[("random", "pope_unparsed"), "diff_vs_none_low"] > 0
    err = capsys.readouterr().err
    assert "hivtp_pope_adv random" in err and "50.0% of the answers are neither yes nor no" in err and "none {}" not in err


def test_collector_adds_n_intervals_and_paired_differences(tmp_path, capsys):
    runs = tmp_path / "runs"
    _sweep(runs)
    write_json(runs / "r_killed" / "accuracy.json", [acc_row("fastv", {"budget": 64}, POPE_TASK, 0.5)])  # no DONE
    acc = collect(runs, tmp_path / "results", resamples=500)["accuracy"]
    back = pd.read_csv(tmp_path / "results" / "accuracy.csv")
    assert list(back.columns[: len(ACCURACY_COLUMNS)]) == ACCURACY_COLUMNS and "n_samples" not in back
    # per run: POPE accuracy and F1, GQA, and the two POPE answer rows the collector derives
    assert len(back) == 4 * 5 and set(back["method"]) == {"none", "hivtp", "random", "pool"}
    assert "r_killed" in capsys.readouterr().err  # unfinished: no rows, but said
    f1 = back[back["metric"] == "pope_f1_score"].set_index("method")
    assert (f1["n"] == 200).all() and (back[back["benchmark"] == GQA_TASK]["n"] == 90).all()
    assert (f1["ci_low"] <= f1["value"]).all() and (f1["value"] <= f1["ci_high"]).all()
    assert f1.loc["none", "ci_low"] == f1.loc["none", "ci_high"] == 1.0  # every answer right: nothing varies
    # paired differences to hivtp at the same budget: exact on the full sample, interval by the truth
    assert f1.loc["random", "diff_vs_hivtp"] == pytest.approx(f1.loc["random", "value"] - f1.loc["hivtp", "value"])
    assert f1.loc["random", "diff_vs_hivtp_high"] < 0
    assert f1.loc["pool", "diff_vs_hivtp_low"] < 0 <= f1.loc["pool", "diff_vs_hivtp_high"]  # holds 0: not told apart
    assert math.isnan(f1.loc["hivtp", "diff_vs_hivtp"]) and math.isnan(f1.loc["none", "diff_vs_hivtp"])
    # the same GQA answers everywhere: a paired difference of exactly zero
    gqa = back[back["benchmark"] == GQA_TASK].set_index("method")
    assert (gqa.loc["random", ["diff_vs_hivtp", "diff_vs_hivtp_low", "diff_vs_hivtp_high"]] == 0).all()
    assert f1.loc["hivtp", "diff_vs_none_high"] < 0 and math.isnan(f1.loc["none", "diff_vs_none"])
    assert len(acc) == len(back)
    # one set of draws serves every interval of the same questions: each is what stats gives alone
    random_f1 = scores_from_samples("pope_f1_score", pope_samples(_flip(TRUTHS, 4), TRUTHS))
    hivtp_f1 = scores_from_samples("pope_f1_score", pope_samples(_flip(TRUTHS, 10), TRUTHS))
    assert (acc.set_index("method").loc["random"].query("metric == 'pope_f1_score'")[["ci_low", "ci_high"]].iloc[0].tolist()
            == list(bootstrap_ci(random_f1, resamples=500)))
    assert (acc.set_index("method").loc["random"].query("metric == 'pope_f1_score'")[DIFF_HIVTP].iloc[0].tolist()
            == list(paired_ci(random_f1, hivtp_f1, resamples=500)))


def test_runs_evaluated_otherwise_are_neither_mixed_nor_paired(tmp_path, capsys):
    """A later run of a configuration at another question limit supersedes the earlier one in the table
    (said on stderr), and a paired difference only ever pairs runs evaluated the same way (limit,
    device, dtype): hivtp at limit 200 is compared with none at limit 200, not with the later none."""
    runs = tmp_path / "runs"
    hivtp = _flip(TRUTHS, 10)
    write_run(runs, "none200", "none", {}, {POPE_TASK: pope_samples(TRUTHS, TRUTHS)}, limit=200)
    write_run(runs, "hivtp200", "hivtp", {"budget": 64}, {POPE_TASK: pope_samples(hivtp, TRUTHS)}, limit=200)
    write_run(runs, "none100", "none", {}, {POPE_TASK: pope_samples(_flip(TRUTHS[:100], 5), TRUTHS[:100])},
              limit=100, date="2026-01-02")
    write_run(runs, "hivtp_gpu", "hivtp", {"budget": 64}, {POPE_TASK: pope_samples(hivtp, TRUTHS)}, limit=200,
              device="cuda", date="2026-01-03")
    acc = collect(runs, tmp_path / "results", resamples=200)["accuracy"]
    f1 = acc[acc["metric"] == "pope_f1_score"].set_index("method")
    assert "superseded" in capsys.readouterr().err
    assert f1.loc["none", "limit"] == 100 and f1.loc["none", "n"] == 100  # the latest run of none only
    assert f1.loc["hivtp", "device"] == "cuda"  # the latest hivtp (another device) ...
    # ... whose own none (cuda, limit 200) was never run: no difference rather than a mixed one
    assert math.isnan(f1.loc["hivtp", "diff_vs_none"])
    every = pd.DataFrame(_rows_before_superseding(runs))
    assert len(every) == 4 * 4  # per run: POPE accuracy and F1, and the two derived POPE answer rows
    cpu = every[(every["metric"] == "pope_f1_score") & (every["method"] == "hivtp") & (every["device"] == "cpu")].iloc[0]
    assert cpu["diff_vs_none"] == pytest.approx(cpu["value"] - 1.0)  # paired with none at 200 (F1 1.0)


def test_runs_answered_by_other_weights_are_neither_paired_nor_tabled_together(tmp_path):
    """The toy retrained between two runs (same limit, device, dtype; the manifests name other sha256s):
    hivtp on the new weights gets no difference to none on the old ones, and the tables split them."""
    from hivtp.results.report import write_tables

    runs = tmp_path / "runs"
    old, new = "a" * 64, "b" * 64
    write_run(runs, "none_old", "none", {}, {POPE_TASK: pope_samples(TRUTHS, TRUTHS)}, limit=200, weights=old)
    write_run(runs, "hivtp_new", "hivtp", {"budget": 64}, {POPE_TASK: pope_samples(_flip(TRUTHS, 10), TRUTHS)},
              limit=200, weights=new)
    write_run(runs, "hivtp_old", "hivtp", {"budget": 128}, {POPE_TASK: pope_samples(_flip(TRUTHS, 4), TRUTHS)},
              limit=200, weights=old)
    acc = collect(runs, tmp_path / "results", resamples=200)["accuracy"]
    f1 = acc[acc["metric"] == "pope_f1_score"].set_index("run")
    assert f1.loc["none_old", "weights_digest"] == "a" * 12 and f1.loc["hivtp_new", "weights_digest"] == "b" * 12
    assert math.isnan(f1.loc["hivtp_new", "diff_vs_none"])  # other weights: no difference rather than a mixed one
    assert f1.loc["hivtp_old", "diff_vs_none"] == pytest.approx(f1.loc["hivtp_old", "value"] - 1.0)  # same weights: paired
    write_tables(acc, latency_frame().iloc[:0], tmp_path / "out")
    titles = [line for line in (tmp_path / "out" / "tables.md").read_text().splitlines() if line.startswith("## ")]
    assert titles == [f"## accuracy: offline / toy-llava / weights_digest {d * 12}" for d in "ab"]


def test_runs_on_other_benchmark_data_are_neither_paired_nor_tabled_together(tmp_path):
    """The offline data rebuilt between two runs (the manifests name other data digests): no paired
    difference across them, one table each."""
    from hivtp.results.report import write_tables

    runs = tmp_path / "runs"
    write_run(runs, "none_old", "none", {}, {POPE_TASK: pope_samples(TRUTHS, TRUTHS)}, limit=200, data="c" * 64)
    write_run(runs, "hivtp_new", "hivtp", {"budget": 64}, {POPE_TASK: pope_samples(_flip(TRUTHS, 10), TRUTHS)},
              limit=200, data="d" * 64)
    acc = collect(runs, tmp_path / "results", resamples=200)["accuracy"]
    f1 = acc[acc["metric"] == "pope_f1_score"].set_index("run")
    assert (f1.loc["none_old", "data_digest"], f1.loc["hivtp_new", "data_digest"]) == ("c" * 12, "d" * 12)
    assert pd.isna(f1.loc["hivtp_new", "diff_vs_none"])
    write_tables(acc, latency_frame().iloc[:0], tmp_path / "out")
    titles = [line for line in (tmp_path / "out" / "tables.md").read_text().splitlines() if line.startswith("## ")]
    assert titles == [f"## accuracy: offline / toy-llava / data_digest {d * 12}" for d in "cd"]


def test_runs_in_other_worlds_are_neither_paired_nor_tabled_together_and_the_csv_names_the_world(tmp_path):
    """The world a run's offline images were drawn in comes from its recorded identity (``hivtp.run.identity``,
    the one thing that differs here): a textured run is not paired with a plain one, the tables split them,
    an offline identity from before worlds were recorded reads ``plain``, and a run on other benchmarks has none."""
    from hivtp.results.report import write_tables
    from hivtp.run import identity

    runs = tmp_path / "runs"

    def recorded(method, params, tasks, world):
        cfg = {"method": {"name": method, "params": params}, "benchmark": {"limit": 200, "tasks": tasks},
               "accuracy": {"device": "cpu", "dtype": "auto"}, "mode": "accuracy"}
        with mock.patch("hivtp.world.BENCHMARK_WORLD", world):
            return identity(cfg)

    offline, paper = [POPE_TASK], ["pope_adv"]
    write_run(runs, "none_plain", "none", {}, {POPE_TASK: pope_samples(TRUTHS, TRUTHS)}, limit=200,
              identity=recorded("none", {}, offline, "plain"))
    write_run(runs, "hivtp_textured", "hivtp", {"budget": 64}, {POPE_TASK: pope_samples(_flip(TRUTHS, 10), TRUTHS)},
              limit=200, identity=recorded("hivtp", {"budget": 64}, offline, "textured"))
    write_run(runs, "hivtp_plain", "hivtp", {"budget": 128}, {POPE_TASK: pope_samples(_flip(TRUTHS, 4), TRUTHS)},
              limit=200, identity=recorded("hivtp", {"budget": 128}, offline, "plain"))
    write_run(runs, "hub", "none", {}, {"pope_adv": pope_samples(TRUTHS, TRUTHS)}, limit=200,
              identity=recorded("none", {}, paper, "textured"))
    # one run on an offline and a hub task: only the offline task's rows have a world
    write_run(runs, "mixed", "random", {"budget": 64}, {POPE_TASK: pope_samples(TRUTHS, TRUTHS),
                                                        "pope_adv": pope_samples(TRUTHS, TRUTHS)},
              limit=200, identity=recorded("random", {"budget": 64}, [POPE_TASK, "pope_adv"], "textured"))
    assert "world" not in json.loads((runs / "none_plain" / "config.json").read_text())["identity"]["accuracy"]
    acc = collect(runs, tmp_path / "results", resamples=200)["accuracy"]
    mixed = acc[(acc["run"] == "mixed") & (acc["metric"] == "pope_f1_score")].set_index("benchmark")["world"]
    assert mixed[POPE_TASK] == "textured" and pd.isna(mixed["pope_adv"])
    f1 = acc[(acc["metric"] == "pope_f1_score") & (acc["run"] != "mixed")].set_index("run")
    assert (f1.loc["none_plain", "world"], f1.loc["hivtp_textured", "world"]) == ("plain", "textured")
    assert pd.isna(f1.loc["hub", "world"])
    assert pd.isna(f1.loc["hivtp_textured", "diff_vs_none"])  # another world: no difference rather than a mixed one
    assert f1.loc["hivtp_plain", "diff_vs_none"] == pytest.approx(f1.loc["hivtp_plain", "value"] - 1.0)
    written = pd.read_csv(tmp_path / "results" / "accuracy.csv")
    assert written.groupby("run")["world"].first().dropna().to_dict() == {
        "hivtp_plain": "plain", "hivtp_textured": "textured", "none_plain": "plain", "mixed": "textured"}  # hub: empty
    write_tables(acc[~acc["run"].isin(["hub", "mixed"])], latency_frame().iloc[:0], tmp_path / "out")
    titles = [line for line in (tmp_path / "out" / "tables.md").read_text().splitlines() if line.startswith("## ")]
    assert titles == [f"## accuracy: offline / toy-llava / world {w}" for w in ("plain", "textured")]


def test_collect_resamples_the_images_a_run_recorded_and_pairs_a_run_without_them_by_question(tmp_path):
    """Runs whose accounting names each question's image (two per image) get image-unit intervals
    (``ci_unit`` image; the interval is the one bootstrap_ci gives on image units), their paired
    difference is on images too; a run that named no images is paired with them by question."""
    from hivtp.results.collect import image_keys, logged_samples_file
    from hivtp.results.stats import read_logged_samples

    runs = tmp_path / "runs"
    write_run(runs, "none", "none", {}, {POPE_TASK: pope_samples(TRUTHS, TRUTHS)}, limit=200, per_image=2)
    worse = pope_samples(_flip(TRUTHS, 4), TRUTHS)
    write_run(runs, "hivtp", "hivtp", {"budget": 64}, {POPE_TASK: worse}, limit=200, per_image=2)
    write_run(runs, "random", "random", {"budget": 64}, {POPE_TASK: worse}, limit=200)
    acc = collect(runs, tmp_path / "results", resamples=300)["accuracy"]
    f1 = acc[acc["metric"] == "pope_f1_score"].set_index("run")
    assert f1["ci_unit"].to_dict() == {"hivtp": "image", "none": "image", "random": "question"}

    def units(run, images):
        samples = read_logged_samples(logged_samples_file(runs / run, POPE_TASK))
        return scores_from_samples("pope_f1_score", samples, image_keys(runs / run, POPE_TASK) if images else None)

    assert (f1.loc["hivtp", "ci_low"], f1.loc["hivtp", "ci_high"]) == pytest.approx(bootstrap_ci(units("hivtp", True), resamples=300))
    assert [f1.loc["hivtp", f"diff_vs_none{e}"] for e in ("", "_low", "_high")] == pytest.approx(
        list(paired_ci(units("hivtp", True), units("none", True), resamples=300)))
    assert [f1.loc["random", f"diff_vs_none{e}"] for e in ("", "_low", "_high")] == pytest.approx(
        list(paired_ci(units("random", False), units("none", False), resamples=300)))
    assert f1.loc["random", "diff_vs_none_high"] < 0  # paired at all (by question), not left out


def test_runs_on_other_checkpoint_files_are_neither_paired_nor_tabled_together(tmp_path):
    """The same weights with an edited config.json (another checkpoint_files digest): no paired difference."""
    runs = tmp_path / "runs"
    write_run(runs, "none_old", "none", {}, {POPE_TASK: pope_samples(TRUTHS, TRUTHS)}, limit=200, checkpoint_files="e" * 64)
    write_run(runs, "hivtp_new", "hivtp", {"budget": 64}, {POPE_TASK: pope_samples(_flip(TRUTHS, 10), TRUTHS)},
              limit=200, checkpoint_files="f" * 64)
    f1 = collect(runs, tmp_path / "results", resamples=200)["accuracy"].query("metric == 'pope_f1_score'").set_index("run")
    assert f1["checkpoint_files_digest"].to_dict() == {"hivtp_new": "f" * 12, "none_old": "e" * 12}
    assert pd.isna(f1.loc["hivtp_new", "diff_vs_none"])


def _rows_before_superseding(runs):
    from hivtp.results.collect import add_statistics, read_runs

    found = read_runs(runs)
    add_statistics(found.rows["accuracy"], found.scores, resamples=200)
    return found.rows["accuracy"]


def test_keep_ratio_rows_are_paired_with_hivtp_at_the_same_keep(tmp_path):
    """Qwen2.5-VL's budgets are also keep ratios: a random keep=0.25 row differs from hivtp keep=0.25."""
    runs = tmp_path / "runs"
    write_run(runs, "hivtp_keep", "hivtp", {"keep": 0.25}, {POPE_TASK: pope_samples(_flip(TRUTHS, 10), TRUTHS)})
    write_run(runs, "random_keep", "random", {"keep": 0.25}, {POPE_TASK: pope_samples(_flip(TRUTHS, 4), TRUTHS)})
    write_run(runs, "random_half", "random", {"keep": 0.5}, {POPE_TASK: pope_samples(_flip(TRUTHS, 4), TRUTHS)})
    acc = collect(runs, tmp_path / "results", resamples=200)["accuracy"]
    f1 = acc[acc["metric"] == "pope_f1_score"]
    quarter = f1[f1["params"] == '{"keep": 0.25}'].set_index("method")
    random, hivtp = quarter.loc["random"], quarter.loc["hivtp"]
    assert random["diff_vs_hivtp"] == pytest.approx(random["value"] - hivtp["value"]) and random["diff_vs_hivtp_high"] < 0
    assert math.isnan(f1[f1["params"] == '{"keep": 0.5}'].iloc[0]["diff_vs_hivtp"])  # no hivtp at keep 0.5


def test_collector_names_broken_runs_and_never_drops_rows_silently(tmp_path, capsys):
    runs = tmp_path / "runs"
    _sweep(runs)
    (runs / "r_random64" / "accuracy.json").unlink()  # deleted after the run finished
    truncated = runs / "r_pool64" / "accuracy.json"
    truncated.write_text(truncated.read_text()[:100])
    with pytest.raises(BrokenRunsError) as info:
        collect(runs, tmp_path / "results", resamples=50)
    text = str(info.value)
    assert f"{runs / 'r_random64'}: accuracy.json is missing" in text
    assert f"{runs / 'r_pool64'}: accuracy.json changed" in text and "JSONDecodeError" not in text
    assert not (tmp_path / "results" / "accuracy.csv").exists()
    # strict=False: the complete runs' rows, every skipped run listed on stderr
    acc = collect(runs, tmp_path / "results", strict=False, resamples=50)["accuracy"]
    assert set(acc["method"]) == {"none", "hivtp"}
    err = capsys.readouterr().err
    assert "SKIPPED" in err and "r_random64" in err and "r_pool64" in err
    # a rows file sealed truncated (checksum and all) is named too, never a bare JSONDecodeError
    write_manifest(runs / "r_pool64", ["accuracy"])
    with pytest.raises(BrokenRunsError, match=f"{runs / 'r_pool64'}: accuracy.json holds no list of rows"):
        collect(runs, tmp_path / "results", resamples=50)


def test_collect_command_line_exits_non_zero_on_broken_runs(tmp_path, capsys):
    from hivtp.results.collect import main

    runs = tmp_path / "runs"
    write_run(runs, "r_none", "none", {}, {GQA_TASK: mean_samples([True, False])})
    write_run(runs, "r_hivtp", "hivtp", {}, {GQA_TASK: mean_samples([True, True])})
    (runs / "r_hivtp" / "accuracy.json").unlink()
    assert main([str(runs), str(tmp_path / "results"), "--resamples", "20"]) == 1
    assert f"{runs / 'r_hivtp'}: accuracy.json is missing" in capsys.readouterr().err
    assert main([str(runs), str(tmp_path / "results"), "--resamples", "20", "--lenient"]) == 0
    assert "1 accuracy rows" in capsys.readouterr().out
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "results")]) == 1
    assert "run a sweep first" in capsys.readouterr().err


def test_collector_refuses_rows_without_matching_logged_samples(tmp_path):
    runs = tmp_path / "runs"
    folder = write_run(runs, "r_none", "none", {}, {GQA_TASK: mean_samples([True, False])}, seal=False)
    next((folder / "lmms" / "lmms").glob("**/*_samples_*.jsonl")).unlink()  # lost before the run was sealed
    write_manifest(folder, ["accuracy"])
    with pytest.raises(BrokenRunsError, match=f"no lmms-eval logged samples for task '{GQA_TASK}'"):
        collect(runs, tmp_path / "results")
    rows = [acc_row("none", {}, GQA_TASK, 0.9, metric="exact_match")]  # samples give 0.5
    write_run(runs, "r_none", "none", {}, {GQA_TASK: mean_samples([True, False])}, rows=rows)
    with pytest.raises(BrokenRunsError, match="is 0.9 in accuracy.json but its logged samples give 0.5"):
        collect(runs, tmp_path / "results")
    samples = next((runs / "r_none" / "lmms" / "lmms").glob("**/*_samples_*.jsonl"))
    samples.write_text(samples.read_text()[:30])
    write_manifest(runs / "r_none", ["accuracy"])  # sealed truncated: the file itself is named
    with pytest.raises(BrokenRunsError, match=f"{samples}: line 1 is not valid JSON"):
        collect(runs, tmp_path / "results")


def test_a_later_latency_run_supersedes_an_earlier_one_of_the_same_configuration(tmp_path):
    runs = tmp_path / "runs"
    old = [dict(r, date="2026-01-01T00:00:00Z", run="old") for r in latency_frame().to_dict("records")]
    new = [dict(r, date="2026-02-01T00:00:00Z", run="new", median_ms=r["median_ms"] * 2)
           for r in latency_frame().to_dict("records") if r["method"] == "none"]  # re-ran only "none"
    for name, rows in (("old", old), ("new", new)):
        write_json(runs / name / "latency.json", rows)
        write_manifest(runs / name, ["latency"])
    lat = collect(runs, tmp_path / "results")["latency"]
    assert set(lat[lat["method"] == "none"]["run"]) == {"new"}  # superseded
    assert set(lat[lat["method"] == "hivtp"]["run"]) == {"old"}  # nothing newer: kept
    t = latency_table(lat)
    assert t.loc[("none", "all"), "ttft ms"] == pytest.approx(200.0)  # the new run's, not a median of both


def test_latency_rows_of_another_batch_or_backend_get_their_own_table_and_figure(tmp_path):
    from hivtp.results.report import write_tables

    batch8 = latency_frame().assign(batch=8, median_ms=lambda f: f["median_ms"] * 5)
    eager = latency_frame().assign(backend="eager", median_ms=lambda f: f["median_ms"] * 3)
    lat = pd.concat([latency_frame(), batch8, eager], ignore_index=True)
    write_tables(accuracy_frame(), lat, tmp_path)
    md = (tmp_path / "tables.md").read_text()
    blocks = {b.split("\n", 1)[0]: b for b in md.split("## ")[1:]}
    one = blocks["latency: offline / toy-llava / cpu / float32 / 1 / sdpa"]
    assert "| none | all | 50.00 | 100.00 | 20.00 |" in one  # batch 1's own, not a median with batch 8's 500
    assert "latency: offline / toy-llava / cpu / float32 / 8 / sdpa" in blocks
    assert "latency: offline / toy-llava / cpu / float32 / 1 / eager" in blocks
    from hivtp.results.figures import latency_vs_tokens

    names = {p.name for p in latency_vs_tokens(lat, tmp_path / "figures")}
    assert {"latency_vs_tokens_offline_toy-llava_cpu_float32_b1_sdpa.png", "latency_vs_tokens_offline_toy-llava_cpu_float32_b8_sdpa.png",
            "latency_vs_tokens_offline_toy-llava_cpu_float32_b1_eager.png"} <= names


def test_accuracy_cells_of_different_limits_never_share_a_table(tmp_path):
    """A later `none` run at 20 questions supersedes the one at 200 (its cell's latest run); HIVTP's
    cells stay at 200. One table would divide 200-question scores by a 20-question baseline."""
    from hivtp.results.report import write_tables

    acc = accuracy_frame().assign(limit=200, device="cpu", dtype="auto")
    acc.loc[acc["method"] == "none", "limit"] = 20
    write_tables(acc, latency_frame().iloc[:0], tmp_path)
    titles = [line for line in (tmp_path / "tables.md").read_text().splitlines() if line.startswith("## ")]
    assert titles == ["## accuracy: offline / toy-llava / limit 20",  # named by what sets them apart
                      "## accuracy: offline / toy-llava / limit 200"]
    assert (tmp_path / "tables" / "accuracy_offline_toy-llava_limit200.tex").exists()
    weights = accuracy_frame().assign(weights="aaaa")
    weights.loc[weights["method"] == "none", "weights"] = "bbbb"  # answered by other weights: another measurement
    write_tables(weights, latency_frame().iloc[:0], tmp_path / "weights")
    titles = [line for line in (tmp_path / "weights" / "tables.md").read_text().splitlines() if line.startswith("## ")]
    assert titles == ["## accuracy: offline / toy-llava / weights aaaa", "## accuracy: offline / toy-llava / weights bbbb"]
    write_tables(accuracy_frame().assign(limit=200), latency_frame().iloc[:0], tmp_path / "one")
    assert "## accuracy: offline / toy-llava\n" in (tmp_path / "one" / "tables.md").read_text()  # one setup: as before


def test_accuracy_table_layout_and_numbers():
    t = accuracy_table(accuracy_frame())
    assert list(t.index) == [("none", "all"), ("random", "64"), ("hivtp", "64"), ("hivtp", "128")]
    assert list(t.columns) == ["tokens", "gqa", "pope", "Avg", "% unpruned"]
    # POPE's primary metric is f1 (0.80), not accuracy (0.70)
    assert t.loc[("none", "all"), "pope"] == pytest.approx(0.80)
    # hivtp@64: (0.40/0.50 + 0.72/0.80) / 2 * 100 = 85
    assert t.loc[("hivtp", "64"), "% unpruned"] == pytest.approx(85.0)
    assert t.loc[("hivtp", "128"), "Avg"] == pytest.approx((0.50 + 0.88) / 2)
    md = to_markdown(t)
    assert md.splitlines()[0] == "| method | budget | tokens | gqa | pope | Avg | % unpruned |"
    assert "| hivtp | 64 | 64.00 | 0.40 | 0.72 | 0.56 | 85.00 |" in md
    # MME's 0-800 score would swamp a plain average: only % unpruned is kept then
    mme = accuracy_frame().assign(value=lambda f: f["value"].where(f["benchmark"] != "gqa", f["value"] * 800))
    assert "Avg" not in accuracy_table(mme).columns
    tex = to_latex(t, caption="acc")
    assert "\\% unpruned" in tex and tex.count("\\midrule") == 2 and "hivtp & 128 & 128.00" in tex


def test_ablation_runs_on_a_subset_of_benchmarks_get_their_own_table():
    main = accuracy_frame()
    main["run"] = main["method"] + main["params"]
    ablation = pd.DataFrame([acc_row("hivtp", {"budget": 128, "layers": "0-1-2"}, "pope", 0.60, metric="f1", tokens=128)],
                            columns=ACCURACY_COLUMNS).assign(run="layers012")
    full, rest = split_ablations(pd.concat([main, ablation], ignore_index=True))
    assert set(full["run"]) == set(main["run"])
    # the ablation table: the unpruned reference on POPE only, then the ablation run
    t = accuracy_table(rest)
    assert list(t.columns) == ["tokens", "pope", "Avg", "% unpruned"]
    assert t.iloc[-1]["% unpruned"] == pytest.approx(0.60 / 0.80 * 100)


def test_a_run_on_an_extra_benchmark_leaves_the_main_table_to_the_runs_of_the_unpruned_ones():
    """The stages sweep runs on POPE splits the main runs lack: the main table stays the main runs' (it was
    emptied, every row moved to the ablations), and a run on a superset of the main benchmarks is an ablation."""
    main = accuracy_frame()
    main["run"] = main["method"] + main["params"]
    stages = pd.DataFrame([acc_row("hivtp", {"budget": 144, "keep_ratio": r}, bench, 0.7, metric="f1", tokens=144)
                           for r in (0.25, 0.125) for bench in ("pope", "pope_pop")], columns=ACCURACY_COLUMNS)
    stages["run"] = "stages" + stages["params"]
    wider = pd.DataFrame([acc_row("random", {"budget": 32}, bench, 0.3, metric=m, tokens=32)
                          for bench, m in (("gqa", "exact_match"), ("pope", "f1"), ("mme", "score"))], columns=ACCURACY_COLUMNS)
    wider["run"] = "wider"
    full, rest = split_ablations(pd.concat([main, stages, wider], ignore_index=True))
    assert set(full["run"]) == set(main["run"])
    assert set(rest["run"]) == {"stages" + p for p in stages["params"]} | {"wider"} | set(main.loc[main["method"] == "none", "run"])
    assert list(accuracy_table(full).index) == list(accuracy_table(main).index)
    # without an unpruned run: the set most runs cover
    pruned = pd.concat([main[main["method"] != "none"], stages], ignore_index=True)
    full, rest = split_ablations(pruned)
    assert set(full["run"]) == set(main.loc[main["method"] != "none", "run"]) and set(rest["run"]) == set(stages["run"])


def test_latency_table():
    t = latency_table(latency_frame())
    assert t.loc[("hivtp", "64"), "ttft ms"] == pytest.approx(40.0)
    assert t.loc[("none", "all"), "decode tokens/s"] == pytest.approx(20.0)
    # the e2e stage's rate (prefill included) is a different number, never the decode column's
    e2e = pd.concat([latency_frame(), pd.DataFrame([lat_row("none", {}, "e2e", 10.0, 576, tps=99.0),
                                                   lat_row("random", {"budget": 64}, "e2e", 10.0, 64, tps=99.0)])])
    t = latency_table(e2e)
    assert t.loc[("none", "all"), "decode tokens/s"] == pytest.approx(20.0)
    assert math.isnan(t.loc[("random", "64"), "decode tokens/s"])  # no decode row: no decode rate


def test_text_table_shows_half_widths_and_marks_only_intervals_that_exclude_zero():
    t = accuracy_text_table(with_intervals())
    assert t.loc[("random", "64"), "pope"] == f"0.40 ± 0.05 {WORSE}"  # paired CI vs hivtp@64 [-0.40, -0.20]
    assert t.loc[("random", "64"), "gqa"] == "0.25 ± 0.05"  # CI [-0.30, 0.01] holds 0: no mark
    assert t.loc[("hivtp", "64"), "gqa"] == "0.40 ± 0.05" and t.loc[("hivtp", "default"), "pope"] == "0.90 ± 0.04"
    marked = [c for c in t[["gqa", "pope"]].to_numpy().ravel() if BETTER in c or WORSE in c]
    assert marked == [f"0.40 ± 0.05 {WORSE}"]
    flipped = with_intervals()
    sel = flipped["method"] == "random"
    flipped.loc[sel, ["diff_vs_hivtp_low", "diff_vs_hivtp_high"]] = [[0.02, 0.3], [0.01, 0.2], [0.01, 0.2]][: sel.sum()]
    assert accuracy_text_table(flipped).loc[("random", "64"), "gqa"].endswith(BETTER)
    assert accuracy_text_table(accuracy_frame()).loc[("random", "64"), "gqa"] == "0.25"  # no interval: the score alone
    tex = to_latex(t)
    assert "0.40 $\\pm$ 0.05 $\\downarrow$" in tex


def test_ledger_keeps_offline_apart_and_computes_gains_at_the_rule():
    lat = pd.concat([latency_frame(), pd.DataFrame([lat_row("hivtp", {}, "ttft", 55.0, 270),
                                                   lat_row("hivtp", {}, "decode", 45.0, 270, tps=24.0)])])
    text = ledger_markdown(accuracy_frame(), lat)
    paper, offline = text.split("## Offline profile")
    assert "not measured" in paper and "60.0%" not in paper
    # TTFT 100 -> 55 ms at the rule; the best budget (64: 100 -> 40 ms) beside it
    assert "45.0% at its rule (toy-llava, cpu float32 batch 1 sdpa); best 60.0% (budget 64, toy-llava, cpu float32 batch 1 sdpa)" in offline
    assert "20.0% at its rule" in offline and "best 50.0% (budget 64" in offline  # 20 -> 24 / 30 tokens/s
    assert "ratio" not in offline and "50.0%" not in offline.replace("best 50.0% (budget 64", "")
    paper_text = ledger_markdown(accuracy_frame(), lat.assign(profile="paper", model="llava-1.5-7b")).split("## Offline profile")[0]
    assert "| 0.90 |" in paper_text  # the ratio is the rule's: 45.0 / 50.0
    without_rule = ledger_markdown(accuracy_frame(), latency_frame().assign(profile="paper")).split("## Offline")[0]
    assert "its rule not measured at batch 1 sdpa; best 60.0% (budget 64" in without_rule and "| 1.20 |" not in without_rule


def test_ledger_ratio_is_the_paper_operating_point_and_the_best_elsewhere_is_labelled_beside_it():
    """The paper times one request at a time with the default kernel on its 7B: batch 8, eager attention
    and a tiny shape of the family (each a larger gain here) are shown as the best, never used for the ratio."""
    def pair(ours, **kw):
        return [{**lat_row("none", {}, "ttft", 100.0, 576), **kw}, {**lat_row("hivtp", {}, "ttft", ours, 270), **kw}]

    seven = {"model": "llava-1.5-7b", "prompt_tokens": 60, "new_tokens": 32}
    rows = (pair(60.0, **seven) + pair(20.0, **seven, batch=8) + pair(30.0, **{**seven, "backend": "eager"})
            + pair(10.0, model="tiny-llava"))
    lat = pd.DataFrame(rows, columns=latency_frame().columns).assign(profile="paper")
    paper = ledger_markdown(pd.DataFrame(columns=ACCURACY_COLUMNS), lat).split("## Offline profile")[0]
    ttft = next(line for line in paper.splitlines() if "LLaVA-v1.5-7B: TTFT reduced by" in line)
    assert "40.0% at its rule (llava-1.5-7b, cpu float32 batch 1 sdpa, 60+32 tokens)" in ttft
    assert "best 90.0% (tiny-llava, cpu float32 batch 1 sdpa)" in ttft and ttft.endswith("| 0.80 |")
    without_7b = lat[lat["model"] != "llava-1.5-7b"]  # only the family's other model measured: its own point
    text = ledger_markdown(pd.DataFrame(columns=ACCURACY_COLUMNS), without_7b).split("## Offline profile")[0]
    assert "| 90.0% at its rule (tiny-llava, cpu float32 batch 1 sdpa) (not LLaVA-v1.5-7B: no ratio) | - |" in text
    two_gpus = pd.concat([lat[lat["model"] == "llava-1.5-7b"],  # the 7B on a second GPU: two headline points, two ratios
                          pd.DataFrame(pair(25.0, **seven, device_name="NVIDIA H200"), columns=lat.columns).assign(profile="paper")])
    text = ledger_markdown(pd.DataFrame(columns=ACCURACY_COLUMNS), two_gpus).split("## Offline profile")[0]
    ttft = next(line for line in text.splitlines() if "LLaVA-v1.5-7B: TTFT reduced by" in line)
    assert "75.0% at its rule (llava-1.5-7b, NVIDIA H200 float32 batch 1 sdpa, 60+32 tokens)" in ttft
    assert ttft.endswith("| 1.50 / 0.80 |")
    only_batch_8 = lat[(lat["model"] == "llava-1.5-7b") & (lat["batch"] == 8)]
    text = ledger_markdown(pd.DataFrame(columns=ACCURACY_COLUMNS), only_batch_8).split("## Offline profile")[0]
    assert "| its rule not measured at batch 1 sdpa; best 80.0% (llava-1.5-7b, cpu float32 batch 8 sdpa, 60+32 tokens) | - |" in text


def test_percent_of_unpruned_is_over_the_same_benchmarks_or_says_how_many():
    """HIVTP at its rule ran on POPE only, the unpruned model on POPE and GQA: the tables leave its Avg and
    % unpruned blank (an average over POPE alone would read as comparable with rows over both) and the
    ledger names the benchmarks its number is over."""
    frame = pd.concat([accuracy_frame(), pd.DataFrame([acc_row("hivtp", {}, "pope", 0.88, metric="f1", tokens=270)],
                                                      columns=ACCURACY_COLUMNS)], ignore_index=True)
    table = accuracy_table(frame)
    assert math.isnan(table.loc[("hivtp", "default"), "Avg"]) and math.isnan(table.loc[("hivtp", "default"), "% unpruned"])
    assert table.loc[("hivtp", "64"), "% unpruned"] == pytest.approx((0.72 / 0.80 + 0.40 / 0.50) / 2 * 100)
    offline = ledger_markdown(frame, latency_frame().iloc[:0]).split("## Offline profile")[1]
    rule = next(l for l in offline.splitlines() if l.startswith("| toy-llava | rule (no budget) |"))
    assert "| 110.0% (1 of 2 benchmarks) |" in rule  # 0.88 / 0.80 on POPE


def test_ledger_takes_each_models_own_unpruned_latency_as_the_baseline():
    """Two models of one family (LLaVA-NeXT's vicuna and mistral): each gain is over its own `none`,
    never over a median pooled across them (which would give 60% and 0% here, not 40% and 25%)."""
    rows = [lat_row("none", {}, "ttft", 100.0, 2880, model="llava-next-vicuna-7b"), lat_row("hivtp", {}, "ttft", 60.0, 1400, model="llava-next-vicuna-7b"),
            lat_row("none", {}, "ttft", 200.0, 2880, model="llava-next-mistral-7b"), lat_row("hivtp", {}, "ttft", 150.0, 1400, model="llava-next-mistral-7b")]
    lat = pd.DataFrame(rows, columns=latency_frame().columns).assign(profile="paper")
    from hivtp.results.ledger import _gains

    assert sorted(round(g["gain"], 6) for g in _gains(lat, "ttft", "median_ms", False)) == [25.0, 40.0]


def test_ledger_says_better_or_worse_only_where_the_paired_interval_excludes_zero():
    offline = ledger_markdown(with_intervals(), latency_frame().iloc[:0]).split("## Offline profile")[1]
    lines = offline.splitlines()
    rule = next(l for l in lines if l.startswith("| toy-llava | rule (no budget) |"))
    b64 = next(l for l in lines if l.startswith("| toy-llava | budget 64 |"))
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    # | model | HIVTP | tokens | % of unpruned | worse | better | not told apart |
    assert cells(rule)[4:7] == ["-", "pope +0.1 [+0.02, +0.18]", "gqa +0 [-0.05, +0.05]"]
    assert cells(b64)[3:7] == ["85.0%", "gqa -0.1 [-0.18, -0.02]", "-", "pope -0.08 [-0.2, +0.03]"]
    # prior methods: HIVTP better than random@64 on POPE only (the column holds random - hivtp)
    prior = next(l for l in lines if l.startswith("| toy-llava | 64 | random |"))
    assert cells(prior)[3:6] == ["pope +0.32 [+0.2, +0.4]", "-", "gqa +0.15 [-0.01, +0.3]"]
    assert "HIVTP better in 1, worse in 0 of 2 (method, budget, benchmark) comparisons" in offline
    assert "toy-llava rule (no budget): worse on 0, better on 1, not told apart on 1 of 2 benchmarks" in offline
    # one line per configuration, not one long cell
    assert offline.count("| toy-llava | budget ") == 2


def test_ledger_hallucination_from_stages_rows():
    rows = [acc_row("hivtp", {"budget": 144, "keep_ratio": 0.25, "regions": 2, "window": 2}, "hivtp_pope_adv", 0.6, tokens=144,
                    ci_low=0.5, ci_high=0.7),
            acc_row("hivtp", {"budget": 144, "keep_ratio": 0.125, "regions": 2, "window": 2}, "hivtp_pope_adv", 0.7, tokens=144)]
    text = ledger_markdown(pd.DataFrame(rows, columns=ACCURACY_COLUMNS), latency_frame().iloc[:0])
    assert "global + local: hivtp_pope_adv 0.700; global only: hivtp_pope_adv 0.600 [0.500, 0.700]" in text
    quick = pd.DataFrame(rows, columns=ACCURACY_COLUMNS).assign(limit=20, value=[0.1, 0.2])
    text = ledger_markdown(pd.concat([pd.DataFrame(rows, columns=ACCURACY_COLUMNS).assign(limit=200), quick]),
                           latency_frame().iloc[:0])
    assert ("toy-llava (limit 20): global + local: hivtp_pope_adv 0.200; global only: hivtp_pope_adv 0.100 [0.500, 0.700] | "
            "toy-llava (limit 200): global + local: hivtp_pope_adv 0.700;") in text  # each setup its own arms
    # on LLaVA-NeXT the 144 are split over the crops and "global + local" keeps no local token: no arms named
    next_rows = pd.DataFrame(rows, columns=ACCURACY_COLUMNS).assign(model="llava-v1.6-vicuna-7b", profile="paper")
    paper = ledger_markdown(next_rows, latency_frame().iloc[:0]).split("## Offline profile")[0]
    assert "global + local" not in paper and "not measured (run the stages sweep on LLaVA-1.5)" in paper


def test_accuracy_figure_draws_one_curve_per_setting_and_leaves_ablations_out():
    from hivtp.results.figures import accuracy_curves

    main = accuracy_frame()
    main["run"] = main["method"] + main["params"]
    layers = acc_row("hivtp", {"budget": 128, "layers": "0-1-2"}, "pope", 0.99, metric="f1", tokens=128)
    wide = [acc_row("hivtp", {"budget": 128, "regions": 3}, bench, 0.11, metric=metric, tokens=128)
            for bench, metric in (("pope", "f1"), ("gqa", "accuracy"))]  # a sweep over every benchmark
    extra = pd.DataFrame([layers, *wide], columns=ACCURACY_COLUMNS).assign(run=["layers012", "regions3", "regions3"])
    curves = accuracy_curves(pd.concat([main, extra], ignore_index=True))[("offline", "toy-llava")]
    pope = {label: points for _, label, points in curves["pope"]}
    assert sorted(pope) == ["hivtp", "hivtp regions=3", "none", "random"]
    assert list(pope["hivtp"]["value"]) == pytest.approx([0.72, 0.88])  # not (0.88 + 0.99) / 2 at 128 tokens
    assert list(pope["hivtp regions=3"]["value"]) == pytest.approx([0.11])
    assert 0.99 not in [v for points in pope.values() for v in points["value"]]


def test_accuracy_figure_draws_each_setup_apart(tmp_path):
    """The same model at two question limits: one figure per limit, never points averaged across them
    (pooled, HIVTP@64 on pope would be drawn at (0.72 + 0.36) / 2)."""
    from hivtp.results.figures import accuracy_curves, accuracy_vs_tokens

    full, quick = accuracy_frame().assign(limit=200), accuracy_frame().assign(limit=20)
    quick.loc[quick["method"] != "none", "value"] *= 0.5
    acc = pd.concat([full, quick], ignore_index=True)
    curves = accuracy_curves(acc)
    assert sorted(curves) == [("offline", "toy-llava", "limit 20"), ("offline", "toy-llava", "limit 200")]
    for key, hivtp64 in ((("offline", "toy-llava", "limit 200"), 0.72), (("offline", "toy-llava", "limit 20"), 0.36)):
        pope = {label: points for _, label, points in curves[key]["pope"]}
        assert pope["hivtp"]["value"].iloc[0] == pytest.approx(hivtp64)
    names = {p.name for p in accuracy_vs_tokens(acc, tmp_path)}
    assert names == {f"accuracy_vs_tokens_offline_toy-llava_limit{n}.{ext}" for n in (20, 200) for ext in ("png", "pdf")}


def test_digests_that_read_as_numbers_come_back_from_the_csv_as_written_and_stay_apart(tmp_path):
    """pandas guessed a column of 12-hex digests as numbers when every value looked like one: 012345678901 lost
    its zero, and 123e45678901 and 987e65432109 both became inf, one setup for two toys' weights."""
    from hivtp.results.collect import setups
    from hivtp.results.report import read_csv

    one = accuracy_frame().assign(weights_digest="123e45678901", data_digest="012345678901", commit="40123e567890")
    two = accuracy_frame().assign(weights_digest="987e65432109", data_digest="012345678901", commit="40123e567890")
    pd.concat([one, two], ignore_index=True).to_csv(tmp_path / "accuracy.csv", index=False)
    back = read_csv(tmp_path / "accuracy.csv", ACCURACY_COLUMNS)
    assert set(back["weights_digest"]) == {"123e45678901", "987e65432109"}
    assert set(back["data_digest"]) == {"012345678901"} and set(back["commit"]) == {"40123e567890"}
    parts = setups(back)
    assert len(parts) == 2 and all(len(part) == len(one) for _, part in parts)


def test_reports_remove_the_outputs_a_previous_call_wrote_and_this_one_did_not(tmp_path, capsys):
    """A model measured at one limit, then at two: its unsuffixed table and figures go, the two setups'
    suffixed ones come, and files the reports never write (the token picture) stay."""
    from hivtp.results.report import write_reports

    latency_frame().to_csv(tmp_path / "latency.csv", index=False)
    accuracy_frame().assign(limit=200).to_csv(tmp_path / "accuracy.csv", index=False)
    write_reports(tmp_path)
    (tmp_path / "figures" / "token_picture_offline_toy-llava.png").write_bytes(b"not ours")
    assert (tmp_path / "tables" / "accuracy_offline_toy-llava.tex").exists()
    assert (tmp_path / "figures" / "accuracy_vs_tokens_offline_toy-llava.png").exists()
    pd.concat([accuracy_frame().assign(limit=200), accuracy_frame().assign(limit=20)]).to_csv(tmp_path / "accuracy.csv", index=False)
    write_reports(tmp_path)
    tables = {p.name for p in (tmp_path / "tables").iterdir()}
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert "accuracy_offline_toy-llava.tex" not in tables and "accuracy_vs_tokens_offline_toy-llava.png" not in figures
    assert {"accuracy_offline_toy-llava_limit20.tex", "accuracy_offline_toy-llava_limit200.tex"} <= tables
    assert {"accuracy_vs_tokens_offline_toy-llava_limit20.png", "token_picture_offline_toy-llava.png"} <= figures
    assert any(name.startswith("latency_") for name in tables)  # written again both times: kept
    assert "removed" in capsys.readouterr().err


def test_a_hub_model_id_names_its_tables_and_figures_without_opening_a_folder(tmp_path):
    """A paper-profile model is a hub id with a ``/`` and a GPU device name has spaces: every table and
    figure lands directly in tables/ and figures/, the table and the figure of one setup named alike."""
    from hivtp.results.report import write_reports

    hub = "llava-hf/llava-1.5-7b-hf"
    latency_frame().assign(model=hub, device="NVIDIA H200").to_csv(tmp_path / "latency.csv", index=False)
    acc = accuracy_frame().assign(model=hub)
    pd.concat([acc.assign(limit=200), acc.assign(limit=20)]).to_csv(tmp_path / "accuracy.csv", index=False)
    write_reports(tmp_path)
    for folder in ("tables", "figures"):
        assert all(p.is_file() for p in (tmp_path / folder).iterdir()), f"a subfolder under {folder}/"
    tables = {p.stem for p in (tmp_path / "tables").iterdir()}
    figures = {p.stem for p in (tmp_path / "figures").iterdir()}
    assert {"accuracy_offline_llava-hf-llava-1.5-7b-hf_limit20", "accuracy_offline_llava-hf-llava-1.5-7b-hf_limit200"} <= tables
    assert "accuracy_vs_tokens_offline_llava-hf-llava-1.5-7b-hf_limit20" in figures
    assert any(t.startswith("latency_offline_llava-hf-llava-1.5-7b-hf_NVIDIAH200_") for t in tables)


def test_layer_and_geometry_figures_draw_each_setup_apart(tmp_path):
    """Ablations at two question limits: one layer figure and one heat map per limit, each point its own
    limit's score (pooled, the 6-7-8 point would be (0.9 + 0.3) / 2), the [CLS] line its own limit's."""
    from hivtp.results.figures import geometry_heatmap, layer_ablation, layer_curves

    def rows(limit, scale):
        return pd.DataFrame([acc_row("hivtp", {"budget": 128, "layers": "6-7-8"}, "pope", 0.9 * scale, metric="f1", tokens=128),
                             acc_row("hivtp", {"budget": 128, "layers": "0-1-2"}, "pope", 0.8 * scale, metric="f1", tokens=128),
                             acc_row("fastervlm", {"budget": 128}, "pope", 0.7 * scale, metric="f1", tokens=128),
                             acc_row("hivtp", {"regions": 2, "window": 2, "keep_ratio": 0.25}, "pope", 0.6 * scale, metric="f1")],
                            columns=ACCURACY_COLUMNS).assign(limit=limit)

    acc = pd.concat([rows(200, 1.0), rows(20, 1 / 3)], ignore_index=True)
    lines = layer_curves(acc)
    assert sorted(lines) == [("offline", "toy-llava", "limit 20"), ("offline", "toy-llava", "limit 200")]
    assert dict(lines[("offline", "toy-llava", "limit 20")])["3-layer window (middle layer)"].to_dict() == pytest.approx({1.0: 0.8 / 3, 7.0: 0.3})
    names = {p.name for p in layer_ablation(acc, tmp_path) + geometry_heatmap(acc, tmp_path) if p.suffix == ".png"}
    assert names == {f"{stem}_offline_toy-llava_limit{n}.png" for stem in ("layer_ablation", "geometry_heatmap") for n in (20, 200)}


def test_layer_and_geometry_figures_average_percent_of_unpruned_not_raw_scores_of_other_scales(tmp_path):
    """MME (0-800) beside POPE (0-1): layers 2-3-4 beat 6-7-8 on both, so they must score higher; a raw
    mean ranks 6-7-8 first (its MME is 40 points higher, its POPE 0.3 lower). Each point is the mean of
    value / unpruned value; the [CLS] line and the heat map on the same scale; a setup without the
    unpruned rows and with scores of other scales draws nothing."""
    from hivtp.results.figures import comparable_scores, geometry_heatmap, layer_curves

    def run(method, params, pope, mme, tokens=128):
        return [acc_row(method, params, "pope", pope, metric="f1", tokens=tokens),
                acc_row(method, params, "mme", mme, metric="mme_perception_score", tokens=tokens)]

    rows = (run("none", {}, 1.0, 800.0, 576) + run("hivtp", {"budget": 128, "layers": "2-3-4"}, 0.9, 700.0)
            + run("hivtp", {"budget": 128, "layers": "6-7-8"}, 0.6, 680.0) + run("fastervlm", {"budget": 128}, 0.8, 400.0)
            + run("hivtp", {"regions": 2, "window": 2, "keep_ratio": 0.25}, 0.5, 600.0, 270))
    acc = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    line = dict(layer_curves(acc)[("offline", "toy-llava")])["3-layer window (middle layer)"]
    assert line.to_dict() == pytest.approx({3.0: (90 + 87.5) / 2, 7.0: (60 + 85) / 2})
    assert line[3.0] > line[7.0]
    cls = acc[acc["method"] == "fastervlm"]
    values, label = comparable_scores(cls, acc)
    assert label.startswith("% of unpruned") and values.mean() == pytest.approx((80 + 50) / 2)
    assert geometry_heatmap(acc, tmp_path)
    no_reference = acc[acc["method"] != "none"]
    assert comparable_scores(no_reference[no_reference["method"] == "fastervlm"], no_reference) is None
    assert layer_curves(no_reference) == {} and geometry_heatmap(no_reference, tmp_path / "none") == []


def test_layer_figure_keeps_runs_of_different_budgets_on_different_lines():
    from hivtp.results.figures import layer_curves

    rows = [acc_row("hivtp", {"budget": b, "layers": "6-7-8"}, "pope", v, metric="f1", tokens=b) for b, v in ((64, 0.6), (128, 0.9))]
    rows.append(acc_row("hivtp", {"budget": 128, "layers": "0-1-2"}, "pope", 0.8, metric="f1", tokens=128))
    lines = dict(layer_curves(pd.DataFrame(rows, columns=ACCURACY_COLUMNS))[("offline", "toy-llava")])
    assert sorted(lines) == ["3-layer window (middle layer), budget=128", "3-layer window (middle layer), budget=64"]
    assert lines["3-layer window (middle layer), budget=128"].to_dict() == pytest.approx({1.0: 0.8, 7.0: 0.9})  # not (0.6 + 0.9) / 2
    assert lines["3-layer window (middle layer), budget=64"].to_dict() == pytest.approx({7.0: 0.6})
    one = dict(layer_curves(pd.DataFrame(rows[1:], columns=ACCURACY_COLUMNS))[("offline", "toy-llava")])
    assert list(one) == ["3-layer window (middle layer)"]  # one setting: the plain label


def test_reports_render_every_figure_from_csvs(tmp_path):
    acc = pd.concat([accuracy_frame(), sweep_frame()])
    acc.to_csv(tmp_path / "accuracy.csv", index=False)
    latency_frame().to_csv(tmp_path / "latency.csv", index=False)
    out = subprocess.run([sys.executable, "scripts/figures.py", "--results", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    for stem in ("accuracy_vs_tokens", "latency_vs_tokens", "layer_ablation", "geometry_heatmap"):
        for ext in ("png", "pdf"):
            assert f"{stem}_offline_toy-llava.{ext}" in names
    png = (tmp_path / "figures" / "geometry_heatmap_offline_toy-llava.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (tmp_path / "tables" / "accuracy_offline_toy-llava.tex").exists()
    assert "## accuracy: offline / toy-llava" in (tmp_path / "tables.md").read_text()
    assert (tmp_path / "ledger.md").exists()


def test_reports_error_without_csvs(tmp_path):
    with pytest.raises(ConfigError, match="make reproduce"):
        write_reports(tmp_path)
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "accuracy.csv", index=False)
    with pytest.raises(ConfigError, match="lacks the columns"):
        write_reports(tmp_path)


def test_token_picture(tiny_llava, tmp_path):
    from helpers import make_image

    from hivtp.results.token_picture import token_picture

    model, processor = tiny_llava
    paths = token_picture(model, processor, [make_image(0), make_image(1)], tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 5000 for p in paths)


def test_ledger_percent_of_unpruned_ignores_ablation_runs_at_the_same_budget():
    """An ablation run of HIVTP at the same budget (other score layers) must neither relabel nor mix into
    the default-geometry row whose % of unpruned the ledger reports."""
    from hivtp.results.ledger import unpruned_comparisons

    frame = pd.DataFrame([
        acc_row("none", {}, POPE_TASK, 1.0),
        acc_row("hivtp", {"budget": 128}, POPE_TASK, 0.8, tokens=128.0),
        acc_row("hivtp", {"budget": 128, "layers": "2-3-4"}, POPE_TASK, 0.5, tokens=128.0),
    ])
    found = {c["config"]: c for c in unpruned_comparisons(frame)}
    assert list(found) == ["budget 128"] and found["budget 128"]["percent"] == "80.0%"


def test_in_llm_rows_are_labelled_and_offline_tables_say_what_they_measure(tmp_path):
    """FastV (stage "llm") shows as in-LLM wherever a method is named; the offline accuracy table adds
    the note on what an in-LLM row measures on the toy, the paper profile's table does not."""
    from hivtp.results.tables import IN_LLM, OFFLINE_IN_LLM_NOTE, method_label

    assert method_label("fastv") == f"fastv ({IN_LLM})" and method_label("pdrop") == f"pdrop ({IN_LLM})"
    assert method_label("hivtp") == "hivtp" and method_label("divprune") == "divprune"
    offline = pd.DataFrame([acc_row("none", {}, "pope", 0.9), acc_row("fastv", {"budget": 64}, "pope", 0.5, tokens=64),
                            acc_row("hivtp", {"budget": 64}, "pope", 0.8, tokens=64)], columns=ACCURACY_COLUMNS)
    paper = offline.assign(profile="paper", model="llava-1.5-7b")
    pd.concat([offline, paper]).to_csv(tmp_path / "accuracy.csv", index=False)
    latency_frame().iloc[:0].to_csv(tmp_path / "latency.csv", index=False)
    write_reports(tmp_path)
    text = (tmp_path / "tables.md").read_text()
    offline_block, paper_block = text.split("## accuracy: offline")[1], text.split("## accuracy: paper")[1]
    assert f"| fastv ({IN_LLM}) | 64 |" in text
    assert OFFLINE_IN_LLM_NOTE in offline_block.split("## ")[0] and OFFLINE_IN_LLM_NOTE not in paper_block


def test_the_offline_ledger_ends_with_the_across_toys_table_when_results_hold_a_trajectories_record(tmp_path):
    """``write_reports`` reads ``toy_trajectories.json`` beside the CSVs: HIVTP against each selection at the
    record's budget, better or worse only where every toy's paired interval agrees."""
    import json

    import numpy as np

    from hivtp.toy.calibrate import UNPRUNED, Measurement
    from hivtp.toy.trajectories import Toys, compare, record
    from hivtp.world import FAMILIES

    def toy(hivtp_right, random_right, divprune_right, n=50):
        first = lambda k: np.tile(np.arange(n) < k, len(FAMILIES))
        # divprune before hivtp: its pair is (divprune, hivtp), written in the ledger as hivtp - divprune
        configs = [UNPRUNED, ("divprune", {"budget": 64}), ("hivtp", {"budget": 64}), ("random", {"budget": 64})]
        return Measurement(123, n, configs, [f for f in FAMILIES for _ in range(n)],
                           {"none": first(n), "hivtp@64": first(hivtp_right), "random@64": first(random_right),
                            "divprune@64": first(divprune_right)})

    doc = record(compare(Toys(["toy-a", "toy-b"], ["0" * 64, "1" * 64], [toy(45, 20, 45), toy(44, 21, 30)]), 64, resamples=300))
    offline = pd.DataFrame([acc_row("none", {}, "pope", 0.9, weights_digest="feedfacecafe"),
                            acc_row("hivtp", {"budget": 64}, "pope", 0.8, tokens=64, weights_digest="feedfacecafe")],
                           columns=ACCURACY_COLUMNS)
    offline.to_csv(tmp_path / "accuracy.csv", index=False)
    latency_frame().iloc[:0].to_csv(tmp_path / "latency.csv", index=False)
    write_reports(tmp_path)
    assert "Across toys" not in (tmp_path / "ledger.md").read_text()
    (tmp_path / "toy_trajectories.json").write_text(json.dumps(doc))
    write_reports(tmp_path)
    ledger = (tmp_path / "ledger.md").read_text().split("## Offline profile")[1]
    assert "2 toys (toy-a, toy-b), 300 held-out questions" in ledger
    assert "| random@64 | +48.0 [" in ledger and "| + + | better on every toy |" in ledger
    assert "| divprune@64 | +14.0 [" in ledger and "| 0 + | not told apart on every toy (better on 1, worse on 0) |" in ledger
    assert "Measured with other code" not in ledger  # record() of answers given in memory names no code
    assert "Not the weights of the offline rows above** (feedfacecafe)" in ledger  # toy-a's weights are "000…"
    offline.assign(weights_digest="0" * 12).to_csv(tmp_path / "accuracy.csv", index=False)
    write_reports(tmp_path)
    assert "Not the weights" not in (tmp_path / "ledger.md").read_text()
    doc["toys"][1]["measured"] = {"code_digest": "an older checkout"}
    (tmp_path / "toy_trajectories.json").write_text(json.dumps(doc))
    write_reports(tmp_path)
    assert "**Measured with other code than this checkout's** (toy-b)" in (tmp_path / "ledger.md").read_text()
    (tmp_path / "toy_trajectories.json").write_text(json.dumps({"toys": []}))
    with pytest.raises(ConfigError, match="is not a toy-trajectories record"):
        write_reports(tmp_path)


def test_the_in_llm_note_states_what_the_shipped_toys_supervision_measurement_shows():
    """``OFFLINE_IN_LLM_NOTE`` says in words what ``scripts/toy_inllm_supervision.py`` measured; this
    checks each claim against its JSON, and that the JSON was measured on the shipped weights (a new toy
    must re-run the script and, if a claim no longer holds, change the note)."""
    import json
    from pathlib import Path

    from hivtp.zoo import weights_digest

    doc = json.loads((Path(__file__).parents[1] / "results" / "toy_inllm_supervision.json").read_text())
    assert doc["weights_sha256"] == weights_digest(doc["model"]) and doc["model"] == "toy-llava", \
        "results/toy_inllm_supervision.json was measured on other weights: re-run scripts/toy_inllm_supervision.py"
    acc = {(r["name"], r["family"]): r for r in doc["accuracy"]}
    reads = doc["attention"]
    blind, fastv, without = (reads[k]["objects_in_top64"] for k in
                             ("content-blind (uniform / random)", "K=1 FastV (mean of heads)", "K=1 mean without head 0"))
    assert fastv["low"] > blind["high"]  # "the tokens it keeps hold far more object patches than random's"
    assert without["low"] >= fastv["low"] and without["mean"] >= fastv["mean"]  # "without it holds as many or more"
    head0 = reads["K=1 head 0"]["objects_in_top64"]  # the supervised head's own ranking at the last token
    assert head0["high"] < 2 * blind["high"] and head0["high"] < fastv["low"] / 3  # "about as few ... as random's"
    heads = [reads[f"K=1 head {h}"]["objects_in_top64"] for h in (1, 2)]
    assert all(h["low"] > blind["high"] for h in heads)  # "the toy's other layer-1 heads learned to look at objects too"
    import pandas as pd

    table = pd.read_csv(Path(__file__).parents[1] / "results" / "accuracy.csv")
    sqa = table[(table["benchmark"] == "hivtp_scienceqa_img") & (table["budget"] == 64) & (table["metric"] == "exact_match")]
    fastv_sqa, random_sqa = (sqa[sqa["method"] == m].iloc[0] for m in ("fastv", "random"))
    assert fastv_sqa["value"] <= random_sqa["value"]  # "no better than random on SQA-IMG"
    k1, random, oracle = (acc[(name, "all")] for name in ("fastv@64 k_layer=1", "random@64", "oracle@64"))
    assert random["high"] < k1["low"] and k1["high"] < oracle["low"]  # "at K=1 and 64 tokens ... between random and the oracle"
    for budget in (64, 192):
        k2, none = acc[(f"fastv@{budget} k_layer=2", "all")], acc[("none", "all")]
        assert k2["low"] <= none["high"] and none["low"] <= k2["high"]  # "at K=2 as well as the unpruned model"
    k2_image, k1_image = (reads[k]["image"] for k in ("K=2 FastV (mean of heads)", "K=1 FastV (mean of heads)"))
    assert 0.15 < k2_image["low"] and k2_image["high"] < 0.35 and k1_image["low"] > 0.5  # "about a quarter ... (layer 1: most of it)"


def test_the_in_llm_notes_trajectory_sentence_states_the_toy_trajectories_record():
    """The note's per-toy numbers are those of ``results/toy_trajectories.json`` (measured on the shipped toy
    and its siblings, ``tests/test_toy_trajectories.py``), in the record's toy order, and its closing claim
    holds there: FastV's pairs with HIVTP and random are not separated on every toy, DivPrune's is, above it."""
    import json
    from pathlib import Path

    from hivtp.results.tables import OFFLINE_IN_LLM_NOTE

    doc = json.loads((Path(__file__).parents[1] / "results" / "toy_trajectories.json").read_text())
    n = len(doc["toys"][0]["answers"]["families"].split(","))
    assert f"at 64 tokens on {n:,} held-out questions" in OFFLINE_IN_LLM_NOTE and doc["budget"] == 64
    assert f"over {['', '', 'two', 'three', 'four'][len(doc['toys'])]} trainings" in OFFLINE_IN_LLM_NOTE
    for name, words in (("fastv@64 k_layer=1", "FastV at K=1 keeps "), ("random@64", "random: "), ("hivtp@64", "HIVTP: ")):
        shares = [f"{100 * v[0]:.1f}%" for v in doc["share"][name]["per_toy"].values()]
        assert words + ", ".join(shares[:-1]) + " and " + shares[-1] in OFFLINE_IN_LLM_NOTE, (name, shares)
    fastv = {({p["a"], p["b"]} - {"fastv@64 k_layer=1"}).pop(): p for p in doc["pairs"]
             if "fastv@64 k_layer=1" in (p["a"], p["b"]) and {p["a"], p["b"]} & {"hivtp@64", "divprune@64", "random@64"}}
    assert sorted(fastv) == ["divprune@64", "hivtp@64", "random@64"]
    assert fastv["hivtp@64"]["verdict"] == 0 and fastv["random@64"]["verdict"] == 0  # "do not hold on every toy"
    divprune = fastv["divprune@64"]  # "DivPrune is above it on all three"
    assert divprune["verdict"] == (1 if divprune["a"] == "divprune@64" else -1)


def test_ledger_never_counts_or_averages_rows_of_different_setups_together():
    """The same model measured at two question limits (say a quick run at 20 beside the full one at 200):
    each setup gets its own lines, its own % of unpruned and its own comparisons. Pooled, every
    benchmark would be listed twice and the % of unpruned would mix the two setups' scores."""
    from hivtp.results.ledger import prior_comparisons, unpruned_comparisons

    full = with_intervals().assign(limit=200)
    quick = with_intervals().assign(limit=20)
    quick.loc[quick["method"] != "none", "value"] *= 0.5  # the quick run's pruned rows score half, its unpruned the same
    found = unpruned_comparisons(pd.concat([full, quick], ignore_index=True))
    labels = sorted({c["model"] for c in found})
    assert labels == ["toy-llava (limit 20)", "toy-llava (limit 200)"]  # what sets the setups apart
    for label, percent in zip(labels, ("42.5%", "85.0%")):  # (0.72 / 0.80 + 0.40 / 0.50) / 2, halved at limit 20
        rows = {c["config"]: c for c in found if c["model"] == label}
        assert rows["budget 64"]["percent"] == percent
        assert len(rows["budget 64"]["worse"]) == 1 and len(rows["budget 64"]["apart"]) == 1  # not 2 and 2
    prior = prior_comparisons(pd.concat([full, quick], ignore_index=True))
    assert len(prior) == 2 and all(len(c["better"]) == 1 for c in prior)
    alone = unpruned_comparisons(full)  # one setup: the model's own name
    assert {c["model"] for c in alone} == {"toy-llava"}


def test_latency_rows_of_one_method_in_two_settings_are_two_rows_and_two_lines(tmp_path):
    """HIVTP timed on its fast and on the release's eager scoring (``--faithful``) share a protocol: the
    table gives each its own row (pooled, the cell would be the median of 40 and 90) and the figure its
    own line."""
    from hivtp.results.figures import _curves, _stage
    from hivtp.results.tables import latency_table

    rows = [lat_row("none", {}, "ttft", 100.0, 576), lat_row("hivtp", {}, "ttft", 40.0, 270),
            lat_row("hivtp", {"backend": "eager"}, "ttft", 90.0, 270)]
    lat = pd.DataFrame(rows, columns=LATENCY_COLUMNS)
    table = latency_table(lat)
    hivtp = table.xs("hivtp", level="method")["ttft ms"]
    assert sorted(hivtp.tolist()) == [40.0, 90.0]
    assert sorted(label for _, label, _ in _curves(_stage(lat, "ttft"))) == ["hivtp", "hivtp backend=eager", "none"]


def test_latency_of_two_machines_or_decode_lengths_is_never_one_table_or_one_ratio(tmp_path):
    """none and HIVTP timed together on one GPU, HIVTP timed later alone on a faster one: each machine gets
    its own table and the ledger's ratio pairs HIVTP with the none of its own machine (20%, not 60%)."""
    def on(device_name, rows):
        return [dict(r, device_name=device_name, new_tokens=32, prompt_tokens=60, device="cuda", profile="paper",
                     model="llava-1.5-7b", dtype="float16") for r in rows]

    runs = tmp_path / "runs"
    write_json(runs / "a" / "latency.json", on("NVIDIA A100", [lat_row("none", {}, "ttft", 100.0, 576, date="2026-01-01"),
                                                              lat_row("hivtp", {}, "ttft", 80.0, 270, date="2026-01-01")]))
    write_manifest(runs / "a", ["latency"])
    write_json(runs / "b" / "latency.json", on("NVIDIA H100", [lat_row("hivtp", {}, "ttft", 40.0, 270, date="2026-02-01")]))
    write_manifest(runs / "b", ["latency"])
    frames = collect(runs, tmp_path / "results")
    assert len(frames["latency"]) == 3  # the H100 row does not supersede the A100 one
    ttft = next(line for line in ledger_markdown(frames["accuracy"], frames["latency"]).splitlines() if "LLaVA-v1.5-7B: TTFT reduced by" in line)
    assert "20.0% at its rule" in ttft and "60.0" not in ttft
    write_reports(tmp_path / "results")
    tables = sorted(p.stem for p in (tmp_path / "results" / "tables").iterdir())
    assert tables == ["latency_paper_llava-1.5-7b_cuda_float16_1_sdpa_device_nameNVIDIAA100",
                      "latency_paper_llava-1.5-7b_cuda_float16_1_sdpa_device_nameNVIDIAH100"]


def test_latency_at_another_image_size_is_another_measurement_not_a_rerun(tmp_path):
    """LLaVA-NeXT timed at 672x672 (5 crops, 2,880 image tokens), later at 336x336 (fewer tokens): the later
    run does not supersede the earlier one (same method, machine and lengths), and each size is its own table."""
    def at(tokens_total, rows):
        return [dict(r, tokens_total=tokens_total, device_name="NVIDIA H200", new_tokens=32, prompt_tokens=60,
                     device="cuda", profile="paper", model="llava-v1.6-vicuna-7b", dtype="float16") for r in rows]

    runs = tmp_path / "runs"
    write_json(runs / "a" / "latency.json", at(2880, [lat_row("none", {}, "ttft", 100.0, 2880, date="2026-01-01")]))
    write_manifest(runs / "a", ["latency"])
    write_json(runs / "b" / "latency.json", at(1728, [lat_row("none", {}, "ttft", 60.0, 1728, date="2026-02-01")]))
    write_manifest(runs / "b", ["latency"])
    frames = collect(runs, tmp_path / "results")
    assert sorted(frames["latency"]["median_ms"]) == [60.0, 100.0]
    write_reports(tmp_path / "results")
    assert sorted(p.stem for p in (tmp_path / "results" / "tables").iterdir()) == [
        "latency_paper_llava-v1.6-vicuna-7b_cuda_float16_1_sdpa_tokens_total1728",
        "latency_paper_llava-v1.6-vicuna-7b_cuda_float16_1_sdpa_tokens_total2880"]


def test_ledger_gives_each_keep_ratio_its_own_line_and_percent():
    """Qwen2.5-VL runs set a keep ratio, not a budget: the rule and each ratio are separate configurations
    (filed under the rule, keep=0.1's loss would be listed as the rule's and the tokens averaged)."""
    from hivtp.results.ledger import unpruned_comparisons

    qwen = {"model": "qwen2.5-vl-7b", "profile": "paper"}
    rows = [acc_row("none", {}, "gqa", 0.60, tokens=576, **qwen)]
    for params, value, tokens, diff in (({}, 0.60, 288, (0.0, -0.01, 0.01)), ({"keep": 0.1}, 0.30, 57, (-0.30, -0.35, -0.25)),
                                        ({"keep": 0.5}, 0.59, 288, (-0.01, -0.03, 0.01))):
        rows.append(acc_row("hivtp", params, "gqa", value, tokens=tokens, diff_vs_none=diff[0], diff_vs_none_low=diff[1],
                            diff_vs_none_high=diff[2], **qwen))
    found = {c["config"]: c for c in unpruned_comparisons(pd.DataFrame(rows, columns=ACCURACY_COLUMNS))}
    assert sorted(found) == ["keep=0.1", "keep=0.5", "rule (no budget)"]
    assert (found["keep=0.1"]["tokens"], found["keep=0.1"]["percent"]) == (57, "50.0%")
    assert found["rule (no budget)"]["worse"] == [] and found["keep=0.1"]["worse"]


def test_keep_ratio_rows_are_labelled_by_their_ratio_and_prior_budgets_listed_in_order():
    """A Qwen2.5-VL row at keep=0.25 is labelled so in the tables (not "default", which is a method's own
    rule), and the ledger's prior-method lines run 64, 128, 192, not 128, 192, 64."""
    from hivtp.results.ledger import prior_comparisons
    from hivtp.results.tables import accuracy_table

    rows = [acc_row("none", {}, "gqa", 0.6), acc_row("random", {"keep": 0.25}, "gqa", 0.4, tokens=144)]
    for b in (192, 64, 128):
        rows.append(acc_row("random", {"budget": b}, "gqa", 0.5, tokens=b, diff_vs_hivtp=-0.1, diff_vs_hivtp_low=-0.2,
                            diff_vs_hivtp_high=-0.05))
    acc = pd.DataFrame(rows, columns=ACCURACY_COLUMNS)
    labels = list(accuracy_table(acc).index.get_level_values("budget"))
    assert "keep=0.25" in labels and "default" not in labels
    assert [c["budget"] for c in prior_comparisons(acc)] == ["64", "128", "192"]


def test_the_ledger_compares_each_setting_of_a_prior_method_on_its_own_line():
    """FastV at K=1 and at K=2, both at 64 tokens, are two methods: HIVTP better than one and worse than
    the other is two lines, not one line saying both (and the tally counts each once)."""
    from hivtp.results.ledger import accuracy_vs_prior, prior_comparisons

    diff = lambda d: {"diff_vs_hivtp": d, "diff_vs_hivtp_low": d - 0.02, "diff_vs_hivtp_high": d + 0.02}  # noqa: E731
    rows = [acc_row("none", {}, "gqa", 0.6),
            acc_row("fastv", {"budget": 64, "k_layer": 1}, "gqa", 0.5, tokens=64, **diff(-0.1)),
            acc_row("fastv", {"budget": 64, "k_layer": 10}, "gqa", 0.7, tokens=64, **diff(+0.1)),
            acc_row("fastv", {"budget": 64, "k_layer": 2}, "gqa", 0.7, tokens=64, **diff(+0.1)),
            acc_row("random", {"budget": 64}, "gqa", 0.4, tokens=64, **diff(-0.2))]
    found = prior_comparisons(pd.DataFrame(rows, columns=ACCURACY_COLUMNS))
    # settings in numeric order: K=2 before K=10
    assert [(c["method"], c["setting"], len(c["better"]), len(c["worse"])) for c in found] == [
        ("fastv", "k_layer=1", 1, 0), ("fastv", "k_layer=2", 0, 1), ("fastv", "k_layer=10", 0, 1), ("random", "", 1, 0)]
    lines = accuracy_vs_prior(pd.DataFrame(rows, columns=ACCURACY_COLUMNS))
    assert any("fastv (in-LLM), k_layer=1 |" in line for line in lines) and any("fastv (in-LLM), k_layer=2 |" in line for line in lines)


def test_committed_gpu_measurements_join_the_collected_latency_rows_and_the_ledger(tmp_path):
    """``make bench-gpu`` writes results/latency/gpu-<device>-<date>/latency.csv (hivtp.latency's columns,
    not a run folder): the collector reads those folders too, so that the paper profile's speed lines and
    latency tables show the GPU rows once they are committed; other latency folders (cpu-tiny) stay out."""
    from hivtp.latency import write_csv as write_latency_csv

    def on_gpu(rows):
        return [dict(r, device_name="NVIDIA H200", new_tokens=32, prompt_tokens=60, device="cuda", profile="paper",
                     model="llava-1.5-7b", dtype="float16", date="2026-12-02T07:00:00Z") for r in rows]

    runs, results = tmp_path / "runs", tmp_path / "results"
    write_json(runs / "a" / "latency.json", [lat_row("none", {}, "ttft", 9.0, 576, model="toy-llava", profile="offline")])
    write_manifest(runs / "a", ["latency"])
    write_latency_csv(on_gpu([lat_row("none", {}, "ttft", 100.0, 576), lat_row("hivtp", {}, "ttft", 55.0, 270)]),
                      results / "latency" / "gpu-NVIDIA-H200-20261202" / "latency.csv")
    write_latency_csv([lat_row("none", {}, "ttft", 1.0, 576, model="tiny-llava")], results / "latency" / "cpu-tiny" / "latency.csv")
    lat = collect(runs, results)["latency"]
    assert sorted(zip(lat["model"], lat["run"].fillna("a"))) == [("llava-1.5-7b", "gpu-NVIDIA-H200-20261202")] * 2 + [("toy-llava", "a")]
    paper = ledger_markdown(pd.DataFrame(columns=ACCURACY_COLUMNS), lat).split("## Offline profile")[0]
    ttft = next(line for line in paper.splitlines() if "LLaVA-v1.5-7B: TTFT reduced by" in line)
    assert "45.0% at its rule" in ttft and "NVIDIA H200" in ttft


def test_ablation_figure_points_average_over_the_benchmarks_every_configuration_ran(capsys):
    """Layers 2-3-4 ran on POPE and GQA, 6-7-8 on POPE only: averaging each over its own benchmarks would
    set a two-benchmark mean beside a one-benchmark one on one axis; both points are over POPE, and the
    figure says GQA was left out."""
    from hivtp.results.figures import layer_curves

    rows = [acc_row("hivtp", {"budget": 128, "layers": "2-3-4"}, "pope", 0.9, metric="f1", tokens=128),
            acc_row("hivtp", {"budget": 128, "layers": "2-3-4"}, "gqa", 0.1, tokens=128),
            acc_row("hivtp", {"budget": 128, "layers": "6-7-8"}, "pope", 0.6, metric="f1", tokens=128)]
    line = dict(layer_curves(pd.DataFrame(rows, columns=ACCURACY_COLUMNS))[("offline", "toy-llava")])["3-layer window (middle layer)"]
    assert line.to_dict() == pytest.approx({3.0: 0.9, 7.0: 0.6})
    assert "gqa left out of the ablation figures" in capsys.readouterr().err


def test_runs_a_figure_leaves_out_never_narrow_its_benchmarks(tmp_path, capsys):
    """Geometry runs on POPE and GQA; the stages sweep (a budget beside its geometry: not a heat-map cell)
    on POPE only. The heat map keeps both benchmarks; only a drawn configuration could narrow them."""
    from hivtp.results.figures import geometry_heatmap

    rows = [acc_row("hivtp", {"regions": r, "window": 2, "keep_ratio": 0.25}, bench, 0.5, tokens=270)
            for r in (1, 2) for bench in ("pope", "gqa")]
    rows += [acc_row("hivtp", {"budget": 144, "regions": 2, "window": 2, "keep_ratio": k}, "pope", 0.5, tokens=144)
             for k in (0.25, 0.125)]
    assert geometry_heatmap(pd.DataFrame(rows, columns=ACCURACY_COLUMNS), tmp_path)
    assert "left out" not in capsys.readouterr().err
    narrower = rows + [acc_row("hivtp", {"regions": 3, "window": 2, "keep_ratio": 0.25}, "pope", 0.5, tokens=270)]
    assert geometry_heatmap(pd.DataFrame(narrower, columns=ACCURACY_COLUMNS), tmp_path)
    assert "gqa left out of the ablation figures" in capsys.readouterr().err

"""Collector, tables, ledger and figures against hand-made rows (tests/results_fixtures.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from results_fixtures import acc_row, accuracy_frame, latency_frame, sweep_frame

from hivtp.errors import ConfigError
from hivtp.results import ACCURACY_COLUMNS, collect, ledger_markdown
from hivtp.results.report import write_reports
from hivtp.results.tables import accuracy_table, latency_table, split_ablations, to_latex, to_markdown
from hivtp.run import REPO, write_atomic, write_json


def test_collector_reads_only_finished_runs(tmp_path):
    runs = tmp_path / "runs"
    rows = accuracy_frame().to_dict("records")
    write_json(runs / "aaa" / "accuracy.json", rows[:3])
    write_atomic(runs / "aaa" / "DONE", "x\n")
    write_json(runs / "bbb" / "accuracy.json", rows[3:])  # killed before DONE: ignored
    frames = collect(runs, tmp_path / "results")
    back = pd.read_csv(tmp_path / "results" / "accuracy.csv")
    assert list(back.columns[: len(ACCURACY_COLUMNS)]) == ACCURACY_COLUMNS
    assert len(back) == 3 and set(back["method"]) == {"none"}
    assert len(frames["latency"]) == 0 and (tmp_path / "results" / "latency.csv").exists()


def test_a_later_latency_run_supersedes_an_earlier_one_of_the_same_configuration(tmp_path):
    runs = tmp_path / "runs"
    old = [dict(r, date="2026-01-01T00:00:00Z", run="old") for r in latency_frame().to_dict("records")]
    new = [dict(r, date="2026-02-01T00:00:00Z", run="new", median_ms=r["median_ms"] * 2)
           for r in latency_frame().to_dict("records") if r["method"] == "none"]  # re-ran only "none"
    for name, rows in (("old", old), ("new", new)):
        write_json(runs / name / "latency.json", rows)
        write_atomic(runs / name / "DONE", "x\n")
    lat = collect(runs, tmp_path / "results")["latency"]
    assert set(lat[lat["method"] == "none"]["run"]) == {"new"}  # superseded
    assert set(lat[lat["method"] == "hivtp"]["run"]) == {"old"}  # nothing newer: kept
    t = latency_table(lat)
    assert t.loc[("none", "all"), "ttft ms"] == pytest.approx(200.0)  # the new run's, not a median of both


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


def test_latency_table():
    t = latency_table(latency_frame())
    assert t.loc[("hivtp", "64"), "ttft ms"] == pytest.approx(40.0)
    assert t.loc[("none", "all"), "tokens/s"] == pytest.approx(20.0)


def test_ledger_keeps_offline_apart_and_computes_gains():
    text = ledger_markdown(accuracy_frame(), latency_frame())
    paper, offline = text.split("## Offline profile")
    assert "not measured" in paper and "60.0%" not in paper
    assert "60.0% (budget 64" in offline  # TTFT 100 -> 40 ms
    assert "50.0% (budget 64" in offline  # 20 -> 30 tokens/s
    assert "ratio" not in offline
    assert "50.0%" not in offline.replace("50.0% (budget 64", "")  # no paper figure beside offline numbers
    lat = latency_frame().assign(profile="paper")
    paper_text = ledger_markdown(accuracy_frame(), lat).split("## Offline profile")[0]
    assert "| 1.20 |" in paper_text  # 60.0 / 50.0


def test_ledger_names_a_budgetless_best_row_default():
    """A run without a budget (the method's own geometry) is "default" in the ledger, as in the tables."""
    from results_fixtures import lat_row

    frame = latency_frame()
    frame = pd.concat([frame, pd.DataFrame([lat_row("hivtp", {"regions": 2}, "ttft", 10.0, 200)], columns=frame.columns)])
    offline = ledger_markdown(accuracy_frame(), frame).split("## Offline profile")[1]
    assert "90.0% (budget default" in offline and "nan" not in offline


def test_ledger_hallucination_from_stages_rows():
    from results_fixtures import acc_row

    rows = [acc_row("hivtp", {"budget": 144, "keep_ratio": 0.25, "regions": 2, "window": 2}, "hivtp_pope_adv", 0.6, tokens=144),
            acc_row("hivtp", {"budget": 144, "keep_ratio": 0.125, "regions": 2, "window": 2}, "hivtp_pope_adv", 0.7, tokens=144)]
    text = ledger_markdown(pd.DataFrame(rows), latency_frame().iloc[:0])
    assert "global + local: 0.700, global only: 0.600" in text


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
    from hivtp.results.token_picture import token_picture
    from helpers import make_image

    model, processor = tiny_llava
    paths = token_picture(model, processor, [make_image(0), make_image(1)], tmp_path)
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 5000 for p in paths)

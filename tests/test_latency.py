"""hivtp.latency on CPU at the tiny shape: stages, token counts, FLOPs formulas, errors, CLI."""

from __future__ import annotations

import json

import pytest
import torch

import hivtp
from hivtp.errors import ConfigError, DeviceError
from hivtp.latency import STAGES, measure, read_csv, stage_flops, summarize, write_csv
from hivtp.latency.__main__ import main, parse_method
from hivtp.latency.flops import decode_flops, prefill_flops, projector_flops, scorer_flops, vision_flops
from hivtp.latency.inputs import synthesise
from hivtp.latency.stages import run_repeat
from hivtp.latency.timing import check_device, quantile, spread
from hivtp.zoo import build_model, shape_config

NEW_TOKENS = 3


@pytest.fixture(scope="module")
def rows():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield measure(
            model="tiny-llava", methods=[("none", {}), ("hivtp", {}), ("hivtp", {"budget": 64})],
            random_weights=True, batch=2, warmup=0, repeats=2, new_tokens=NEW_TOKENS, prompt_tokens=12,
            faithful=True, progress=False,
        )
    finally:
        torch.set_num_threads(threads)  # the files that run after this one in the same process keep theirs


@pytest.fixture(scope="module")
def tiny_model():
    return build_model("tiny-llava")


def test_every_stage_of_every_method_present(rows):
    seen = {(r["method"], r["params"]): set() for r in rows}
    for r in rows:
        seen[(r["method"], r["params"])].add(r["stage"])
    # faithful adds the eager twin of each fast hivtp entry
    assert set(seen) == {
        ("none", "{}"), ("hivtp", "{}"), ("hivtp", '{"backend": "eager"}'),
        ("hivtp", '{"budget": 64}'), ("hivtp", '{"backend": "eager", "budget": 64}'),
    }
    assert all(stages == set(STAGES) for stages in seen.values())
    for r in rows:
        assert r["repeats"] == 2 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"], r
        assert r["median_ms"] > 0 and r["flops"] > 0 or (r["stage"] == "select" and r["flops"] >= 0)
        assert r["commit"] and r["torch"] == torch.__version__ and r["weights"] == "random"
        assert r["peak_mem_mb"] is None  # CPU: blank, documented


def test_throughput_definitions(rows):
    by = {(r["method"], r["params"], r["stage"]): r for r in rows}
    for method, params, stage in by:
        if stage != "e2e":
            continue
        e2e, dec = by[(method, params, "e2e")], by[(method, params, "decode")]
        assert e2e["tokens_per_s"] == pytest.approx(2 * NEW_TOKENS / (e2e["median_ms"] / 1e3))
        assert dec["tokens_per_s"] == pytest.approx(2 * (NEW_TOKENS - 1) / (dec["median_ms"] / 1e3))
        assert dec["median_ms"] < e2e["median_ms"]  # decode is part of the generate call


def test_decode_counts_requested_tokens(tiny_model):
    pruned = hivtp.attach(tiny_model, method="hivtp")
    inputs = synthesise(tiny_model, pruned.adapter, batch=1, prompt_tokens=8)
    result = run_repeat(pruned, inputs, new_tokens=7, device=torch.device("cpu"))
    assert result.new_tokens == 7
    assert set(result.ms) == set(STAGES) and result.ms["decode"] > 0


def test_tokens_kept_agrees_with_attach(rows, tiny_model):
    by = {(r["method"], r["params"], r["stage"]): r for r in rows}
    for params in ({}, {"budget": 64}):
        pruned = hivtp.attach(tiny_model, method="hivtp", **params)
        inputs = synthesise(tiny_model, pruned.adapter, batch=2, prompt_tokens=12)
        pruned.generate(**inputs.model_inputs(), max_new_tokens=1)
        kept = [s["tokens_kept"] for s in pruned.last_stats]
        row = by[("hivtp", json.dumps(params, sort_keys=True), "ttft")]
        assert row["tokens_kept"] == sum(kept) / len(kept)
    assert by[("hivtp", '{"budget": 64}', "ttft")]["tokens_kept"] == 64
    assert by[("none", "{}", "ttft")]["tokens_kept"] == 576


def test_synthesised_prompt_has_one_placeholder_run(tiny_model):
    pruned = hivtp.attach(tiny_model, method="none")
    inputs = synthesise(tiny_model, pruned.adapter, batch=3, prompt_tokens=20)
    image = inputs.input_ids == tiny_model.config.image_token_id
    assert image.sum(-1).tolist() == [576] * 3
    assert inputs.input_ids.shape == (3, 576 + 20 + 1)
    assert (inputs.input_ids[~image] >= 5).sum() == 3 * 20  # text ids are never special ids


# --- FLOPs: formulas against hand counts -----------------------------------------------------------
VC = {"hidden_size": 2, "intermediate_size": 4, "image_size": 2, "patch_size": 1}  # 4 patches, T = 5
TC = {"hidden_size": 4, "intermediate_size": 6, "num_attention_heads": 2, "num_key_value_heads": 1,
      "num_hidden_layers": 3, "vocab_size": 10}


def test_vision_and_scorer_flops_by_hand():
    # conv: 4 patches * 3 inputs * 2 outputs * 2 = 48; layer: qkvo 4*(5*2*2)*2 = 160,
    # attention 2 matmuls 5*5*2 * 2 each = 200, mlp 2*(5*2*4)*2 = 160 -> 520 per layer
    assert vision_flops(VC, crops=1, layers_run=1) == 48 + 520
    assert vision_flops(VC, crops=3, layers_run=2) == 3 * (48 + 2 * 520)
    assert scorer_flops(VC, crops=2, score_layers=3) == 2 * 3 * (5 * 5 * 2 * 2)
    assert projector_flops(2, 4, tokens=7) == 7 * (2 * 4 + 4 * 4) * 2


def test_llm_flops_by_hand():
    # one layer, n tokens: q (4x4) + k, v (4x2 each, GQA) + o (4x4) + gate/up/down (4x6 each)
    linear = lambda n: 2 * n * (16 + 8 + 8 + 16 + 72)  # noqa: E731
    attn = lambda n, keys: 2 * 2 * n * keys * 4  # noqa: E731  qk^T and pv over all 4 query dims
    head = 2 * 4 * 10
    assert prefill_flops(TC, [5]) == 3 * (linear(5) + attn(5, 5)) + head
    assert prefill_flops(TC, [5, 2]) == prefill_flops(TC, [5]) + prefill_flops(TC, [2])
    assert decode_flops(TC, [5], steps=2) == sum(3 * (linear(1) + attn(1, k)) + head for k in (6, 7))
    # in-LLM pruning (fastv-like): layer 0 sees 5 tokens, layers 1-2 see 3 (a shorter KV cache too)
    assert prefill_flops(TC, [3], by_layer=[[5, 3, 3]]) == linear(5) + attn(5, 5) + 2 * (linear(3) + attn(3, 3)) + head
    assert decode_flops(TC, [3], steps=1, by_layer=[[5, 3, 3]]) == (
        linear(1) + attn(1, 6) + 2 * (linear(1) + attn(1, 4)) + head)


def test_in_llm_methods_report_the_tokens_each_layer_sees():
    """fastv drops image tokens from LLM layer K on: its FLOPs count layers before K (and the
    projector) at all 576 tokens, the rest at the budget."""
    rows = measure(model="tiny-llava", methods=[("none", {}), ("fastv", {"budget": 64, "k_layer": 1})],
                   repeats=1, warmup=0, new_tokens=3, progress=False)
    row = {(r["method"], r["stage"]): r for r in rows}
    assert row["fastv", "ttft"]["tokens_kept"] == 64
    config = shape_config("tiny-llava")
    text = [row["none", "ttft"]["prompt_tokens"] + 1]  # + BOS
    layers_run = config.vision_config.num_hidden_layers + config.vision_feature_layer + 1  # up to the feature layer
    want = stage_flops(config, 1, layers_run, 0, [64], text, new_tokens=3, image_tokens_by_layer=[[576, 64]])
    assert want["ttft"] == row["fastv", "ttft"]["flops"] and want["e2e"] == row["fastv", "e2e"]["flops"]
    assert stage_flops(config, 1, layers_run, 0, [576], text, new_tokens=3)["ttft"] == row["none", "ttft"]["flops"]


def test_stage_flops_sum_and_scale():
    config = shape_config("tiny-llava")
    full = stage_flops(config, 1, 23, 0, [576], [61], new_tokens=4)
    pruned = stage_flops(config, 1, 23, 3, [128], [61], new_tokens=4)
    for f in (full, pruned):
        assert f["ttft"] == f["vision"] + f["select"] + f["projector"] + f["prefill"]
        assert f["e2e"] == f["ttft"] + f["decode"]
    assert pruned["vision"] == full["vision"] and pruned["prefill"] < full["prefill"]


def test_paper_shape_ttft_ideal_matches_issue():
    # issue 6: ~60 text tokens, ~270 of 576 kept -> FLOPs ideal about -47%; 128 kept -> about -68%
    config = shape_config("llava-1.5-7b")

    def ttft(kept, score_layers):
        return stage_flops(config, 1, 23, score_layers, [kept], [61], new_tokens=16)["ttft"]

    assert 1 - ttft(270, 3) / ttft(576, 0) == pytest.approx(0.47, abs=0.01)
    assert 1 - ttft(128, 3) / ttft(576, 0) == pytest.approx(0.68, abs=0.01)


@pytest.fixture(scope="module")
def eager_model():
    # eager attention: plain matmuls the flop counter sees (CPU sdpa kernels are not registered with it)
    return build_model("tiny-llava", attn_implementation="eager")


def test_prefill_flops_match_torch_flop_counter(eager_model):
    from torch.utils.flop_counter import FlopCounterMode

    tiny_model = eager_model
    lm = tiny_model.model.language_model
    n = 37
    embeds = torch.randn(1, n, tiny_model.config.text_config.hidden_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        hidden = lm(inputs_embeds=embeds).last_hidden_state
        tiny_model.lm_head(hidden[:, -1:])
    assert counter.get_total_flops() == prefill_flops(tiny_model.config.text_config, [n])


def test_vision_flops_match_torch_flop_counter(eager_model):
    from torch.utils.flop_counter import FlopCounterMode

    tiny_model = eager_model
    from hivtp.vision import run_tower

    pixels = torch.randn(2, 3, 336, 336)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run_tower(tiny_model.model.vision_tower, pixels, [23])
    assert counter.get_total_flops() == vision_flops(tiny_model.config.vision_config, crops=2, layers_run=23)


# --- protocol pieces -------------------------------------------------------------------------------
def test_quantiles_interpolate_like_numpy():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.1) == pytest.approx(1.4)
    assert spread([2.0]) == {"median_ms": 2.0, "p10_ms": 2.0, "p90_ms": 2.0}


def test_cuda_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU.*--device cpu"):
        check_device("cuda")
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        measure(model="tiny-llava", device="cuda", progress=False)


def test_bad_requests_are_clear_errors():
    with pytest.raises(ConfigError, match="key=value"):
        parse_method("hivtp:budget")
    with pytest.raises(ConfigError, match="shipped shape"):
        measure(model="no-such-shape", random_weights=True, progress=False)
    with pytest.raises(ConfigError, match="listed twice"):
        measure(model="tiny-llava", methods=[("none", {}), ("none", {})], repeats=1, progress=False)
    assert parse_method("hivtp:budget=128,backend=eager,keep_ratio=0.5") == (
        "hivtp", {"budget": 128, "backend": "eager", "keep_ratio": 0.5})


def test_method_specs_read_none_as_unset_only_where_the_parameter_defaults_to_none():
    """``budget=none`` is no budget; ``newline=none`` is LLaVA-NeXT's policy of that name, as in model_args
    (read as None, attach would refuse it: newline has no "not set")."""
    assert parse_method("hivtp:budget=none,newline=none") == ("hivtp", {"budget": None, "newline": "none"})
    assert parse_method("random:budget=null,seed=none") == ("random", {"budget": None, "seed": None})


def test_summary_names_where_claims_are_reached(rows):
    def fake(method, params, budget, ttft, tps):
        base = {"model": "llava-1.5-7b", "batch": 1, "dtype": "float16", "attn": "sdpa", "device": "cuda",
                "method": method, "params": params, "budget": budget, "tokens_kept": 1.0, "flops": 100,
                "p10_ms": 1.0, "p90_ms": 1.0}
        return [{**base, "stage": s, "median_ms": ttft if s == "ttft" else 1.0,
                 "tokens_per_s": tps if s in ("decode", "e2e") else None} for s in STAGES]

    fake_rows = (fake("none", "{}", None, 100.0, 10.0) + fake("hivtp", '{"budget": 64}', 64, 40.0, 17.0)
                 + fake("hivtp", '{"budget": 192}', 192, 60.0, 13.0))
    text = summarize(fake_rows)
    assert "| TTFT reduction | -50.0% | -60.0% | budget 64 |" in text
    assert "| decode throughput gain | +60.9% | +70.0% | budget 64 |" in text
    text = summarize(fake_rows[:5] + fake_rows[10:])  # budget 192 alone reaches neither claim
    assert "| TTFT reduction | -50.0% | -40.0% | none |" in text
    text = summarize(rows)
    assert "## tiny-llava, batch 2" in text
    assert ("Paper claims" in text) == (rows[0]["profile"] != "offline")  # offline rows: no claims beside them
    assert "Faithful (release" in text and '| hivtp | `{"budget": 64}` |' in text.split("Faithful (release")[1]


def test_csv_round_trip_is_atomic(rows, tmp_path):
    path = write_csv(rows, tmp_path / "sub" / "latency.csv")
    back = read_csv(path)
    assert len(back) == len(rows) and [p.name for p in path.parent.iterdir()] == ["latency.csv"]
    assert back[0]["median_ms"] == pytest.approx(rows[0]["median_ms"]) and back[0]["peak_mem_mb"] is None


def test_cli_writes_csv_and_summary(tmp_path, capsys, monkeypatch):
    code = main(["--model", "tiny-llava", "--random-weights", "--methods", "none", "hivtp:budget=64",
                 "--repeats", "1", "--warmup", "0", "--new-tokens", "2", "--prompt-tokens", "4",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 0
    rows = read_csv(tmp_path / "latency.csv")
    assert {(r["method"], r["stage"]) for r in rows} == {(m, s) for m in ("none", "hivtp") for s in STAGES}
    assert "TTFT ratio" in (tmp_path / "summary.md").read_text()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--model", "tiny-llava", "--random-weights", "--device", "cuda:0", "--out", str(tmp_path / "x")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_imports_only_torch_transformers_stdlib():
    # GPU machines often lack the rest: importing and running the CLI's parser must not pull them in.
    import subprocess
    import sys

    code = (
        "import sys, hivtp.latency, hivtp.latency.__main__, hivtp.latency.bench\n"
        "hivtp.latency.bench.plan()\n"  # make bench-gpu's plan reads the registry and the budgets
        "bad = [m for m in ('hydra', 'pandas', 'lmms_eval', 'matplotlib', 'omegaconf') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_git_commit_marks_rows_measured_on_a_changed_tree(tmp_path, monkeypatch):
    """Rows carry HEAD's short hash, with -dirty once a tracked file differs from it (so results
    measured before their code and weights were committed say so); HIVTP_COMMIT overrides."""
    import subprocess

    from hivtp.latency import fingerprint

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "weights.bin").write_text("v1")
    git("add", "weights.bin")
    git("commit", "-qm", "first")
    head = git("rev-parse", "--short=12", "HEAD")
    monkeypatch.delenv("HIVTP_COMMIT", raising=False)
    monkeypatch.setattr(fingerprint, "_REPO", tmp_path)
    assert fingerprint.git_commit() == head
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "accuracy.csv").write_text("rows")
    git("add", "results")
    git("commit", "-qm", "results")
    head = git("rev-parse", "--short=12", "HEAD")
    (tmp_path / "untracked.txt").write_text("not part of the measurement")
    (tmp_path / "results" / "accuracy.csv").write_text("rows the runs rewrote")
    assert fingerprint.git_commit() == head
    (tmp_path / "weights.bin").write_text("v2")
    assert fingerprint.git_commit() == head + "-dirty"
    monkeypatch.setenv("HIVTP_COMMIT", "abc")
    assert fingerprint.git_commit() == "abc"


def test_cli_bad_device_and_unwritable_out_are_clear_errors(tmp_path, capsys):
    assert main(["--model", "tiny-llava", "--random-weights", "--device", "tpu", "--out", str(tmp_path / "x")]) == 2
    assert "device 'tpu' is not a device torch knows" in capsys.readouterr().err and not (tmp_path / "x").exists()
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder\n")
    assert main(["--model", "tiny-llava", "--random-weights", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert f"cannot create the --out folder {blocker / 'out'}" in err and "Traceback" not in err


def test_method_refusing_the_attention_backend_is_skipped_and_others_kept(monkeypatch, caplog):
    """fastv / pdrop refuse flash_attention_2 (GPU only); make them refuse eager here instead: the one
    call that times them with others still returns every other method's rows and says why they are
    missing. A bad parameter (refused under every backend) is still an error."""
    import logging

    from hivtp.methods import fastv

    monkeypatch.setattr(fastv, "SUPPORTED_ATTENTION", ("sdpa",))
    kw = dict(model="tiny-llava", random_weights=True, attn="eager", warmup=1, repeats=1, new_tokens=2, prompt_tokens=4,
              progress=False)
    with caplog.at_level(logging.WARNING, logger="hivtp.latency"):
        rows = measure(methods=[("none", {}), ("fastv", {"budget": 64, "k_layer": 1}),
                                ("pdrop", {"budget": 400, "layers": "1"}), ("random", {"budget": 64})], **kw)
    assert {(r["method"], r["stage"]) for r in rows} == {(m, s) for m in ("none", "random") for s in STAGES}
    assert {r["attn"] for r in rows} == {"eager"}
    skipped = [r.getMessage() for r in caplog.records]
    for name in ("fastv", "pdrop"):
        assert any(f"skipping {name}:" in m and "under attn=eager" in m and "attn_implementation='sdpa'" in m for m in skipped), skipped
    with pytest.raises(ConfigError, match="no method could run under attn=eager"):
        measure(methods=[("fastv", {"budget": 64, "k_layer": 1})], **kw)
    with pytest.raises(ConfigError, match="k_layer=2 but the language model has 2 layers"):
        measure(methods=[("none", {}), ("fastv", {"budget": 64, "k_layer": 2})], **kw)


def test_a_small_model_timed_on_a_gpu_is_offline_and_a_real_shape_is_paper(tiny_llava_dir, tmp_path):
    """The paper profile's latency rows are set beside the paper's claims (summary.md, the ledger, which takes
    a family's best model): a toy or tiny model timed on a GPU was marked paper and could stand for the 7B."""
    from hivtp.latency.measure import latency_profile

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for small in ("tiny-llava", "tiny-qwen2.5-vl", "toy-llava", "toy-llava-xeon-seed2", str(tiny_llava_dir)):
        assert latency_profile(small, cuda) == "offline", small
    odd = tmp_path / "downloaded"
    odd.mkdir()
    (odd / "hivtp_build.json").write_text("[1]")  # not ours: no shape named, so a real checkpoint
    for real in ("llava-1.5-7b", "qwen2.5-vl-7b", "llava-hf/llava-1.5-7b-hf", str(odd)):
        assert latency_profile(real, cuda) == "paper", real
        assert latency_profile(real, cpu) == "offline", real


def test_summary_credits_each_row_to_its_own_run_and_keeps_protocols_apart():
    """Rows of two commits (a resumed bench) and two prompt lengths: the header names both commits, not
    the first row's; each prompt length gets its own table against its own `none`; a measurement given
    twice in one setting is an error, not a ratio picked by row order."""
    def fake(method, ttft, commit, prompt_tokens):
        base = {"model": "llava-1.5-7b", "batch": 1, "dtype": "float16", "attn": "sdpa", "device": "cuda",
                "device_name": "NVIDIA H200", "new_tokens": 32, "tokens_total": 576, "prompt_tokens": prompt_tokens,
                "method": method, "params": "{}", "budget": None, "tokens_kept": 1.0, "flops": 100, "p10_ms": 1.0,
                "p90_ms": 1.0, "commit": commit, "date": "2026-12-04", "torch": "2.14.1", "weights": "random"}
        return [{**base, "stage": s, "median_ms": ttft if s == "ttft" else 1.0,
                 "tokens_per_s": 10.0 if s in ("decode", "e2e") else None} for s in STAGES]

    rows = fake("none", 100.0, "aaaa", 60) + fake("hivtp", 50.0, "bbbb", 60) + fake("none", 400.0, "bbbb", 600)
    text = summarize(rows)
    assert "commit aaaa; bbbb (rows differ" in text and "torch 2.14.1," in text and "Image:" not in text
    qwen = [dict(r, image_size="224x224 px") for r in fake("none", 100.0, "aaaa", 60)]  # only Qwen rows record it
    assert "Image: 224x224 px." in summarize(rows[:len(rows) // 3] + [dict(r, model="qwen2.5-vl-7b") for r in qwen])
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == ["## llava-1.5-7b, batch 1, float16, sdpa, NVIDIA H200; 60 text tokens, 32 new, 576 image tokens unpruned",
                        "## llava-1.5-7b, batch 1, float16, sdpa, NVIDIA H200; 600 text tokens, 32 new, 576 image tokens unpruned"]
    assert "| hivtp | `{}` | 1.0 | 50.00 (1.00-1.00) | 0.500 |" in text  # against the none of its own prompt length
    with pytest.raises(ValueError, match="two vision rows of none"):
        summarize(rows + fake("none", 90.0, "cccc", 60))


def test_faithful_adds_hivtps_eager_twin_once():
    """``--faithful`` beside an eager entry listed already would time that entry twice (two rows of one
    measurement, which the summary refuses after the whole run)."""
    from hivtp.latency.measure import with_faithful

    listed = [("none", {}), ("hivtp", {}), ("hivtp", {"backend": "eager"}), ("hivtp", {"budget": 64})]
    assert with_faithful(listed) == [("none", {}), ("hivtp", {}), ("hivtp", {"backend": "eager"}),
                                     ("hivtp", {"budget": 64}), ("hivtp", {"backend": "eager", "budget": 64})]
    assert with_faithful([("none", {})]) == [("none", {}), ("hivtp", {"backend": "eager"})]

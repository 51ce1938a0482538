"""hivtp.claims: the paper's claims and the standard budgets, in one place that everything reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hivtp import claims
from hivtp.claims import CLAIMED_FAMILIES, CLAIMS, FAMILIES, STANDARD_BUDGETS, budgets_for, claim, family_of

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "configs" / "sweep"


def test_the_module_imports_with_the_standard_library_only():
    """Loaded from its file with torch, numpy, pandas, yaml, omegaconf and the hivtp package blocked."""
    code = (
        "import sys, importlib.util\n"
        "for m in ('torch', 'numpy', 'pandas', 'yaml', 'omegaconf', 'transformers', 'hivtp'): sys.modules[m] = None\n"
        f"spec = importlib.util.spec_from_file_location('claims', {str(REPO / 'hivtp' / 'claims.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['claims'] = mod; spec.loader.exec_module(mod)\n"
        "print(mod.budgets_for('llava-1.5-7b'), mod.claim('llava_next', 'ttft_reduction').value)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(64,", "128,", "192)", "55.1"]


def test_command_line_and_bench_gpu_read_the_budgets_from_the_module():
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=REPO, check=False)

    out = run(sys.executable, "hivtp/claims.py", "budgets", "llava-v1.6-vicuna-7b")
    assert out.returncode == 0 and out.stdout.split() == [str(b) for b in STANDARD_BUDGETS["llava_next"]]
    assert run(sys.executable, "hivtp/claims.py", "nonsense").returncode == 2
    # make bench-gpu's plan (hivtp.latency.bench) times each model at exactly the module's budgets
    from hivtp.latency.bench import methods_for

    for model, family in (("llava-1.5-7b", "llava15"), ("llava-v1.6-vicuna-7b", "llava_next"), ("qwen2.5-vl-7b", "qwen2_5_vl")):
        timed = {p["budget"] for name, p in methods_for(model) if "budget" in p}
        assert tuple(sorted(timed)) == STANDARD_BUDGETS[family]

def _sweep(name: str) -> tuple[str, tuple[int, ...]]:
    """(model family the sweep runs, its budgets) from configs/sweep/<name>.yaml."""
    cfg = OmegaConf.load(SWEEPS / f"{name}.yaml")
    budgets = tuple(int(b) for b in str(cfg.hydra.sweeper.params["method.params.budget"]).split(","))
    model = next((d["override /model"] for d in cfg.get("defaults", []) if "override /model" in d), None)
    family = OmegaConf.load(REPO / "configs" / "model" / f"{model}.yaml").family if model else "llava15"
    return family, budgets


@pytest.mark.parametrize("name", ["budgets", "budgets_next", "budgets_qwen"])
def test_budget_sweeps_list_the_modules_budgets(name):
    """Hydra's sweeper reads plain override strings, so the YAML keeps its list and this test keeps it
    equal to hivtp.claims (a resolver would have to be registered by every entry point before Hydra
    composes, and sweeper params are parsed before interpolation)."""
    family, budgets = _sweep(name)
    assert budgets == STANDARD_BUDGETS[family]


def test_model_configs_declare_the_family_their_name_gives():
    for path in sorted((REPO / "configs" / "model").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert cfg.family in FAMILIES, path
        assert family_of(cfg.name) == cfg.family == family_of(cfg.pretrained), path


def test_ledger_and_latency_summary_read_the_module():
    from hivtp.latency import report
    from hivtp.results import ledger

    assert ledger.CLAIMS is claims.CLAIMS and ledger.family_of is claims.family_of
    assert report.family_of is claims.family_of
    assert set(report.PAPER_CLAIMS) == set(CLAIMED_FAMILIES) < set(FAMILIES)  # no paper number for Qwen
    for family in CLAIMED_FAMILIES:
        for what in ("ttft_reduction", "throughput_gain"):
            assert report.PAPER_CLAIMS[family][what] == claim(family, what).value / 100


def test_claims_and_budgets_lookups():
    assert claim("llava15", "ttft_reduction").text == "LLaVA-v1.5-7B: TTFT reduced by up to 50.0%"
    assert claim("llava15", "ttft_reduction").phrase(number=False) == "LLaVA-v1.5-7B: TTFT reduced"
    assert claim("llava_next", "hallucination").family == "any"  # claims about any family count for each
    assert budgets_for("llava_next") == budgets_for("tiny-llava-next") == (160, 320, 640)
    assert family_of("Qwen/Qwen2.5-VL-7B-Instruct") == family_of("tiny-qwen2.5-vl") == "qwen2_5_vl"
    assert {c.family for c in CLAIMS} <= set(FAMILIES) | {"any"}
    with pytest.raises(ValueError, match="unknown model family"):
        claim("llava2", "accuracy")
    with pytest.raises(KeyError, match="no 'speed' claim"):
        claim("llava15", "speed")


def test_the_claimed_model_is_the_7b_the_paper_names_by_any_of_its_names():
    from hivtp.claims import is_claimed_model

    for name in ("llava-1.5-7b", "llava-hf/llava-1.5-7b-hf", "liuhaotian/llava-v1.5-7b", "/models/llava-1.5-7b"):
        assert is_claimed_model(name, "llava15"), name
    for name in ("tiny-llava", "toy-llava", "llava-1.5-13b", "llava-hf/llava-1.5-13b-hf"):
        assert not is_claimed_model(name, "llava15"), name
    assert is_claimed_model("llava-hf/llava-v1.6-vicuna-7b-hf", "llava_next")
    assert not is_claimed_model("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next")
    assert not is_claimed_model("qwen2.5-vl-7b", "qwen2_5_vl")  # the paper makes no Qwen claim

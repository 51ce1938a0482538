"""Every experiment and sweep config composes (Hydra compose API), every sweep job composes to a
config the runner accepts, and the SLURM launcher (hydra-submitit-launcher) composes."""

from __future__ import annotations

import pytest

from hydra import compose, initialize_config_dir

from hivtp.methods import available_methods
from hivtp.run import CONFIG_DIR, check_method, identity, method_params, plain, run_hash, sweep_jobs

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONFIG_DIR / "sweep").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


def compose_(overrides: list[str], hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


def test_expected_groups_exist():
    assert {"offline", "paper_llava15", "paper_llava_next"} <= set(EXPERIMENTS)
    assert {"layers", "geometry", "budgets", "stages"} <= set(SWEEPS)
    assert {"tiny-llava", "tiny-llava-next", "toy-llava", "llava-1.5-7b", "llava-v1.6-vicuna-7b", "llava-v1.6-mistral-7b"} <= set(MODELS)
    methods = {p.stem for p in (CONFIG_DIR / "method").glob("*.yaml")}
    # every registered method has its config, and every config names a registered method
    assert methods == set(available_methods())
    assert {"none", "hivtp", "random", "pool", "fastervlm", "visionzip", "divprune", "fastv", "hiprune"} <= methods


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    cfg = compose_([f"+experiment={name}"])
    assert cfg.profile in ("offline", "paper")
    assert cfg.mode in ("accuracy", "latency", "both")
    if name.startswith("paper"):
        assert cfg.profile == "paper" and cfg.model.weights == "pretrained" and "/" in cfg.model.pretrained


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_jobs_compose(name):
    jobs = sweep_jobs(name)
    assert jobs, name
    hashes = set()
    registered = set(available_methods())
    for job in jobs:
        cfg = plain(compose_([f"+sweep={name}", *job]))
        hashes.add(run_hash(cfg))
        # methods that are registered must accept the params (invalid geometry only where skip_invalid)
        if cfg["method"]["name"] in registered and not cfg.get("skip_invalid"):
            check_method(cfg)
    assert len(hashes) == len(jobs), "two jobs of one sweep would share a run folder"


def test_sweep_sizes_match_the_design():
    assert len(sweep_jobs("layers")) == 21 + 23  # windows 0-2..20-22 and single layers 0..22 (24-layer CLIP)
    assert len(sweep_jobs("geometry")) == 4 * 4 * 3
    assert len(sweep_jobs("budgets")) == 8 * 3  # hivtp + 7 baselines (not pdrop: its budget means tokens per LLM layer)
    assert {j[1] for j in sweep_jobs("budgets_next")} == {"method.params.budget=160", "method.params.budget=320", "method.params.budget=640"}


def test_stages_arms_reach_matched_token_counts():
    """global only / both / local only all end at exactly 144 tokens on a 24x24 grid."""
    import torch

    from hivtp.selection import fit_to_budget, select_masks

    scores = torch.rand(1, 24, 24, generator=torch.Generator().manual_seed(0))
    counts = {}
    for job in sweep_jobs("stages"):
        p = method_params(plain(compose_(["+sweep=stages", *job])))
        sel = fit_to_budget(scores, select_masks(scores, p["regions"], p["keep_ratio"], p["window"]), p["budget"])
        c = sel.counts()
        counts[p["keep_ratio"]] = (int(c["tokens_global"]), int(c["tokens_local"]))
    assert counts[0.25] == (144, 0)
    assert counts[0.125] == (72, 72)
    assert counts[0.001] == (0, 144)  # floor(144 x 0.001) = 0 global: stage 2 alone


@pytest.mark.parametrize("model", MODELS)
def test_a_model_configs_family_is_the_one_its_results_are_read_as(model):
    """Result rows name a model by ``pretrained``, and the ledger takes the family's claims and standard
    budgets from that name (``claims.family_of``); ``model.family`` (in the run identity) must say the same,
    and so must the checkpoint's own config where the harness ships it."""
    from hivtp.claims import family_of
    from hivtp.claims import FAMILY_OF_MODEL_TYPE
    from hivtp.zoo import local_config

    cfg = plain(compose_([f"model={model}"]))["model"]
    assert cfg["family"] == family_of(cfg["pretrained"]) == family_of(cfg["name"])
    config = local_config(cfg["pretrained"])
    if config is not None:
        assert FAMILY_OF_MODEL_TYPE[config.model_type] == cfg["family"]


@pytest.mark.parametrize("name", [s for s in SWEEPS if s != "stages"])  # stages drops a stage on purpose
def test_hivtp_under_a_budget_keeps_both_stages_in_every_sweep(name):
    """A sweep job that gives HIVTP a budget (``budget`` or Qwen2.5-VL's ``keep``) must run HIVTP: global
    and local tokens on a 24x24 grid. Giving the paper's geometry with budget 128 (the layers sweeps did)
    keeps 144 global tokens, so the correction drops every local one: a global-only top-k labelled HIVTP."""
    import torch

    from hivtp.adapters.qwen2_5_vl import keep_count
    from hivtp.methods.hivtp import HIVTP
    from hivtp.selection import fit_to_budget, select_masks

    scores = torch.rand(1, 24, 24, generator=torch.Generator().manual_seed(0))
    checked = 0
    for job in sweep_jobs(name):
        cfg = plain(compose_([f"+sweep={name}", *job]))
        p = method_params(cfg)
        if cfg["method"]["name"] != "hivtp" or (p.get("budget") is None and p.get("keep") is None):
            continue
        keep = p.pop("keep", None)
        budget = p["budget"] if keep is None else keep_count(24 * 24, keep)
        if cfg["model"]["family"] == "llava_next":
            budget //= 5  # a full-resolution NeXT image: its budget split over 5 crops of 24x24
        method = HIVTP(**p)
        regions, keep_ratio, window = method.geometry_for(budget, 24 * 24)
        counts = fit_to_budget(scores, select_masks(scores, regions, keep_ratio, window), [budget]).counts()
        assert int(counts["tokens_kept"]) == budget
        assert int(counts["tokens_global"]) > 0 and int(counts["tokens_local"]) > 0, (name, job)
        checked += 1
    if name in ("layers", "layers_offline", "layers_qwen", "budgets"):
        assert checked > 0


@pytest.mark.parametrize("model", ["tiny-llava", "toy-llava"])
def test_layers_sweep_is_invalid_exactly_past_the_models_feature_layer(model):
    """sweep/layers is written for a 24-layer CLIP; on toy-llava's 12-layer encoder the points past its
    feature layer are refused from the model's config (so skip_invalid marks them INVALID before any
    model loads) and every other point is accepted."""
    from hivtp.errors import ConfigError
    from hivtp.zoo import local_config, vision_geometry

    last = vision_geometry(local_config(plain(compose_([f"model={model}"]))["model"]["pretrained"]))[2]
    jobs = sweep_jobs("layers", [f"model={model}"])
    for job in jobs:
        cfg = plain(compose_(["+sweep=layers", f"model={model}", *job]))
        assert cfg["skip_invalid"]
        layers = [int(x) for x in str(method_params(cfg)["layers"]).split("-")]
        if max(layers) <= last:
            check_method(cfg)
        else:
            with pytest.raises(ConfigError, match="past the feature layer"):
                check_method(cfg)
    assert any(max(int(x) for x in j[0].split("=")[1].split("-")) > last for j in jobs) == (model == "toy-llava")


def test_geometry_invalid_pairs_are_exactly_the_non_dividing_ones():
    from hivtp.errors import ConfigError

    invalid = set()
    for job in sweep_jobs("geometry"):
        cfg = plain(compose_(["+sweep=geometry", *job]))
        try:
            check_method(cfg)
        except ConfigError:
            p = method_params(cfg)
            invalid.add((p["regions"], p["window"]))
    assert invalid == {(3, 3), (4, 4)}


def test_slurm_launcher_composes():
    cfg = compose_(["launcher=slurm", "+sweep=budgets", "+experiment=paper_llava15"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.gpus_per_node == 1
    from hydra.utils import get_class

    assert get_class(cfg.hydra.launcher._target_).__name__ == "SlurmLauncher"


def test_identity_drops_nulls_and_bookkeeping():
    ident = identity(plain(compose_(["force=true"])))
    assert ident["method"] == {"name": "hivtp", "params": {}}
    assert "force" not in ident and "runs_root" not in ident and "backend" not in ident


def _reproduce():
    import importlib.util

    from hivtp.run import REPO

    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flag", [["--full"], ["--limit", "10"], ["--ablation-limit", "10"]])
def test_reproduce_refuses_offline_flags_on_the_paper_profile(tmp_path, capsys, flag):
    """The paper plan answers every question: a question limit or --full given to it was ignored without a word."""
    with pytest.raises(SystemExit) as exited:
        _reproduce().main(["--profile", "paper", "--dry-run", "--runs-root", str(tmp_path), *flag])
    assert exited.value.code == 2 and "apply to the offline profile" in capsys.readouterr().err


def test_reproduce_paper_dry_run_composes(tmp_path, capsys):
    assert _reproduce().main(["--profile", "paper", "--dry-run", "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # 2 x (none + hivtp at its own rule + 8 methods x 3 budgets) + Qwen (none + rule + 6 CLS-free methods x 3)
    # ... + the stages sweep's three arms on the real POPE (LLaVA-1.5)
    assert "75 runs composed" in out and "llava-1.5-7b hivtp {'budget': 64}" in out
    assert "qwen2.5-vl-7b divprune {'budget': 192}" in out and "qwen2.5-vl-7b fastervlm" not in out
    assert "llava-1.5-7b hivtp {} " in out
    assert "llava-v1.6-vicuna-7b hivtp {'budget': 640}" in out
    assert not any(tmp_path.iterdir())  # nothing ran


def test_the_paper_plan_measures_the_stages_claim_on_the_real_pope_and_every_run_passes_the_profile_check(tmp_path):
    from hivtp.run import check_profile

    r = _reproduce()
    configs = [plain(c) for c in r.compose_all(r.paper_plan(), tmp_path)]
    for c in configs:
        check_profile(c, c["mode"])  # a paper run of a small model or on the offline tasks raises
    stages = [c for c in configs if method_params(c).get("budget") == 144 and c["model"]["name"] == "llava-1.5-7b"]
    assert sorted(method_params(c)["keep_ratio"] for c in stages) == [0.001, 0.125, 0.25]
    assert all(c["benchmark"]["tasks"] == ["pope_adv", "pope_pop", "pope_random"] and c["mode"] == "accuracy" for c in stages)


def test_reproduce_offline_plan_has_unique_runs(tmp_path):
    r = _reproduce()
    for full, windows, geometries in ((False, 3, 3), (True, 5, 6)):
        configs = r.compose_all(r.offline_plan("tiny-llava", ["random"], 4, full=full), tmp_path)
        hashes = {run_hash(plain(c)) for c in configs}
        # none, hivtp at its own rule, hivtp x 3 budgets, random x 3, score-layer windows, geometries, one latency run
        assert len(hashes) == len(configs) == 1 + 1 + 3 + 3 + windows + geometries + 1
    assert all(plain(c)["profile"] == "offline" for c in configs)
    modes = [plain(c)["mode"] for c in configs]
    assert modes.count("latency") == 1 and modes.count("accuracy") == len(configs) - 1
    timed = plain(configs[modes.index("latency")])["latency"]["methods"]
    # every method is timed in the one process, interleaved, so that ratios are like for like
    assert {t.split(":")[0] for t in timed} == {"none", "hivtp", "random"} and "random:budget=64" in timed


def test_reproduce_counts_only_runs_sealed_now_in_its_questions_per_second(tmp_path):
    """A run skipped as finished is not a run that answered questions now, however long the skip took
    (hashing its inputs takes seconds): told apart by when its manifest was written, not by the time taken."""
    import time

    from hivtp.runfolder import write_manifest

    (tmp_path / "accuracy.json").write_text("[]")
    write_manifest(tmp_path, ["accuracy"])
    sealed = (tmp_path / "DONE").stat().st_mtime
    assert _reproduce()._sealed_since(tmp_path, sealed - 5)
    assert not _reproduce()._sealed_since(tmp_path, sealed + 5)
    assert not _reproduce()._sealed_since(tmp_path / "missing", time.time())

"""The offline experiment end to end (`make reproduce`): data, runs, CSVs, tables, figures, ledger.

    python scripts/reproduce.py                      # offline profile, CPU, <= 15 min on 2 cores
    python scripts/reproduce.py --full               # 1000 questions per benchmark and configuration
    python scripts/reproduce.py --profile paper --dry-run   # compose (and list) the paper runs only

Every run goes through the same runner as `python -m hivtp.run` (hash-named folders under
artifacts/runs/<profile>, finished runs skipped, atomic writes), so a second call only redoes what
did not finish. All accuracy runs are evaluated in this one process (hivtp.lmms.inprocess: the model
and lmms-eval's tasks load once; each configuration re-attaches its method). Offline rows are marked
profile=offline and are never compared with the paper.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from hivtp.claims import PAPER_BASELINES, STANDARD_BUDGETS  # noqa: E402
from hivtp.run import CONFIG_DIR, execute, method_params, plain, run_hash  # noqa: E402

# The offline plan. Default: >= 200 questions per benchmark and configuration, sized to finish
# `make reproduce` within 15 minutes on 2 cores (set-up included); --full: 1000, every ablation point.
BUDGETS = STANDARD_BUDGETS["llava15"]  # toy-llava is LLaVA-1.5-shaped (576 tokens)
LATENCY_BUDGETS = (BUDGETS[0], BUDGETS[-1])
DEFAULT_LIMIT, FULL_LIMIT = 200, 1000
FULL_CACHE_GIB = 6  # per shared cache (hivtp.lmms.inprocess.CACHE_VARIABLES): 4,000 images' inputs and tower passes
# toy-llava's encoder has 12 layers and its feature layer is the output of layer 10 (0-based)
LAYER_WINDOWS = ("0-1-2", "2-3-4", "4-5-6", "6-7-8", "8-9-10")
GEOMETRIES = tuple((r, w) for r in (1, 2, 3) for w in (2, 4))  # all valid on 24x24; window 1 keeps every token
# the default run's ablation points (the time budget); --full runs all of the above
QUICK_LAYER_WINDOWS = ("2-3-4", "6-7-8", "8-9-10")
QUICK_GEOMETRIES = ((1, 2), (2, 2), (3, 2))
ABLATION_TASKS = "[hivtp_pope_adv]"
# The offline models' language models have 2 (tiny-llava) or 3 (toy-llava) layers: FastV's default K=2
# would leave one layer or none to prune, so offline runs rank at layer 1 (after one full layer). The
# paper profile keeps K=2.
OFFLINE_EXTRA = {"fastv": {"k_layer": 1}}


def _extra(method: str) -> list[str]:
    """The method's offline-only parameters as ``key=value`` items."""
    return [f"{k}={v}" for k, v in OFFLINE_EXTRA.get(method, {}).items()]


def offline_plan(model: str, methods: list[str], limit: int, ablation_limit: int | None = None,
                 full: bool = False) -> list[list[str]]:
    """Accuracy runs on the four offline benchmarks -- none, every method at every budget, and HIVTP at
    its own rule (no budget: regions 2, keep_ratio 0.25, window 2) -- then score-layer and geometry
    ablations of HIVTP on POPE-adversarial (a few points by default, all with ``full``), and one
    latency run that times every method interleaved in one process, so that its ratios are like for
    like. Offline-only methods (``oracle``, the reference) run at every budget but are not timed:
    they are references, not methods anyone would deploy. The full ablations are also sweeps on the same
    model and benchmark: ``make sweep SWEEP=layers_offline ARGS="+experiment=offline model=toy-llava
    benchmark.tasks=[hivtp_pope_adv] benchmark.limit=1000"`` (``geometry``, ``stages`` alike); without
    ``model=`` a sweep runs on the default model, the random-weight ``tiny-llava``."""
    from hivtp.methods import is_offline_only

    base = ["+experiment=offline", f"model={model}", "mode=accuracy", "benchmark.batch_size=16"]
    main = base + [f"benchmark.limit={limit}"]
    plan = [main + ["method=none"], main + ["method=hivtp"]]
    plan += [main + [f"method={m}", f"method.params.budget={b}", *(f"method.params.{e}" for e in _extra(m))]
             for m in ["hivtp", *methods] for b in BUDGETS]
    pope = base + [f"benchmark.limit={ablation_limit or limit}", f"benchmark.tasks={ABLATION_TASKS}", "method=hivtp"]
    windows, geometries = (LAYER_WINDOWS, GEOMETRIES) if full else (QUICK_LAYER_WINDOWS, QUICK_GEOMETRIES)
    plan += [pope + ["method.params.budget=128", f"method.params.layers={w}"] for w in windows]
    plan += [pope + ["method.params.keep_ratio=0.25", f"method.params.regions={r}", f"method.params.window={w}"]
             for r, w in geometries]
    timed = ["none", "hivtp"] + [",".join([f"{m}:budget={b}", *_extra(m)])
                                 for m in ["hivtp", *methods] if not is_offline_only(m) for b in LATENCY_BUDGETS]
    plan.append(["+experiment=offline", f"model={model}", "mode=latency", "method=none",
                 "latency.methods=[" + ",".join(f"'{t}'" for t in timed) + "]"])
    return plan


#: the paper profile's experiments and the family whose standard budgets each runs (hivtp.claims)
PAPER_EXPERIMENTS = (("paper_llava15", "llava15"), ("paper_llava_next", "llava_next"), ("paper_qwen2_5_vl", "qwen2_5_vl"))


#: the hallucination claim's stages sweep (configs/sweep/stages.yaml, 144 tokens on a 24 x 24 grid) on the real
#: POPE splits, in the paper's LLaVA-1.5 experiment
PAPER_STAGES = ("paper_llava15", "paper_pope")


def paper_plan() -> list[list[str]]:
    """none, HIVTP at its own rule and every method at the family's standard budgets, per experiment, and
    the stages sweep on POPE for LLaVA-1.5 (``PAPER_STAGES``; the paper profile refuses the sweep's
    default, the offline POPE). Qwen2.5-VL's tower has no [CLS]: the methods that need one are refused
    there, so not planned. Offline-only methods (``oracle``) are not in PAPER_BASELINES: they never enter
    the paper profile."""
    from hivtp.methods import METHODS
    from hivtp.run import sweep_jobs

    plan = []
    for exp, family in PAPER_EXPERIMENTS:
        plan.append([f"+experiment={exp}", "method=none"])
        plan.append([f"+experiment={exp}", "method=hivtp"])  # its own rule: regions 2, keep_ratio 0.25, window 2
        methods = [m for m in ("hivtp", *PAPER_BASELINES) if not (family == "qwen2_5_vl" and METHODS[m].needs_cls)]
        for m in methods:
            plan += [[f"+experiment={exp}", f"method={m}", f"method.params.budget={b}"] for b in STANDARD_BUDGETS[family]]
    exp, pope = PAPER_STAGES
    plan += [[f"+experiment={exp}", "+sweep=stages", f"benchmark={pope}", *job] for job in sweep_jobs("stages")]
    return plan


def compose_all(plan: list[list[str]], runs_root: Path) -> list:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return [compose("config", overrides=ov + [f"runs_root={runs_root}"]) for ov in plan]


def offline_model() -> str:
    """The trained toy model once it is built; the random-weight tiny LLaVA otherwise (said aloud)."""
    from hivtp.zoo import resolve_checkpoint

    try:
        resolve_checkpoint("toy-llava")
        return "toy-llava"
    except Exception as e:  # noqa: BLE001 - any failure means: not available here
        print(f"[reproduce] toy-llava is not available ({e}); using tiny-llava (random weights). "
              "Run `make toy-model` for meaningful offline accuracy.", flush=True)
        return "tiny-llava"


# Methods the offline models cannot run at the standard budgets, and why (said aloud when skipped).
OFFLINE_SKIP = {
    "pdrop": "its budget is the mean image tokens per LLM layer; the offline LLMs have 2-3 layers, so "
             "the first keeps all 576 and no budget below 192-288 is reachable",
}


def available_baselines() -> list[str]:
    """Every registered method other than the reference (`none`) and HIVTP itself; offline-only ones
    (``oracle``, the reference) included, since this is the offline plan's list."""
    from hivtp.methods import available_methods

    methods = [m for m in available_methods() if m not in ("none", "hivtp")]
    for m in methods:
        if m in OFFLINE_SKIP:
            print(f"[reproduce] offline: skipping {m}: {OFFLINE_SKIP[m]}", flush=True)
    return [m for m in methods if m not in OFFLINE_SKIP]


OFFLINE_DATASETS = {"pope": "adversarial", "gqa_instructions": "testdev", "mme": "test", "scienceqa_img": "test"}


def built_size(data: Path) -> int:
    """Questions per benchmark in an offline data build (0 when missing, incomplete, or drawn in another
    world than ``hivtp.world.BENCHMARK_WORLD``: its answers would hold, but not for today's images)."""
    from datasets import load_from_disk

    from hivtp.world.builds import stale_worlds
    from hivtp.world import BENCHMARK_WORLD

    if stale_worlds(data):
        print(f"[reproduce] {data} holds benchmarks drawn in another world than the benchmarks' ({BENCHMARK_WORLD}): "
              f"{stale_worlds(data)}; rebuilding it", flush=True)
        return 0

    try:
        return min(len(load_from_disk(str(data / name))[split]) for name, split in OFFLINE_DATASETS.items())
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def ensure_offline_artifacts(model: str, size: int) -> None:
    """Offline data with at least ``size`` questions per benchmark. The builders are deterministic and
    a larger build starts with the same questions, so scores at a given limit do not depend on it."""
    data = ROOT / "artifacts" / "data"
    have = built_size(data)
    if have < size:
        print(f"[reproduce] building the offline mini-benchmarks: {size} questions per benchmark "
              f"(found {have}) -> {data}", flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_data.py"), "--size", str(size),
                        "--out", str(data)], check=True)
    if model == "tiny-llava" and not (ROOT / "artifacts" / "models" / "tiny-llava").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_models.py")], check=True)


def token_pictures(model_name: str, out: Path) -> None:
    import numpy as np

    from hivtp.results.token_picture import token_picture
    from hivtp.world import draw_scene, render
    from hivtp.zoo import load_pretrained

    model, processor = load_pretrained(model_name)
    rng = np.random.default_rng(0)
    images = [render(draw_scene(rng)) for _ in range(3)]
    token_picture(model, processor, images, out, name=f"token_picture_offline_{model_name}")


def questions(folder: Path) -> int:
    """Questions one finished accuracy run answered (its rows' n_samples, one per benchmark)."""
    rows = json.loads((folder / "accuracy.json").read_text())
    per_task = {r["benchmark"]: r.get("n_samples") or r.get("n") or 0 for r in rows}
    return int(sum(per_task.values()))


def _sealed_since(folder: Path, began: float) -> bool:
    """Whether the run in ``folder`` was sealed (its manifest written) at or after ``began`` (time.time()):
    it ran now, rather than being skipped as finished (which can take seconds: its inputs are hashed)."""
    from hivtp.runfolder import MANIFEST

    manifest = folder / MANIFEST
    return manifest.is_file() and manifest.stat().st_mtime >= began - 1e-3


def run_all(configs: list, start: float) -> None:
    """Every accuracy run in this process, one after another (the model and tasks load once), then
    the latency runs, alone, so that nothing else competes with the clock. Prints questions per
    second per run and overall (runs skipped as finished are not counted)."""
    from hivtp.lmms.inprocess import cache_counts, clear_caches

    accuracy = [c for c in configs if c.mode == "accuracy"]
    timed = [c for c in configs if c.mode != "accuracy"]
    answered, busy = 0, 0.0
    for i, cfg in enumerate(accuracy + timed):
        if timed and cfg is timed[0]:
            clear_caches()  # free the accuracy model and its shared caches (GiB) before anything is timed
        t0, began = time.perf_counter(), time.time()
        folder = execute(cfg)
        took = time.perf_counter() - t0
        line = f"[reproduce] {i + 1}/{len(configs)} runs finished ({time.perf_counter() - start:.0f} s)"
        if cfg.mode == "accuracy" and _sealed_since(folder, began):  # not a run skipped as finished
            n = questions(folder)
            answered, busy = answered + n, busy + took
            line += f"; {n} questions in {took:.1f} s = {n / took:.1f} q/s (so far {answered / busy:.1f} q/s)"
            line += "".join(f"; {name} cache so far {hits} hits / {misses} misses"
                            for name, (hits, misses) in cache_counts().items())
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("offline", "paper"), default="offline")
    parser.add_argument("--dry-run", action="store_true", help="compose and list the runs; run nothing")
    parser.add_argument("--full", action="store_true",
                        help=f"{FULL_LIMIT} questions per benchmark and configuration and every ablation point "
                             "(the committed results); default: the 15-minute plan")
    parser.add_argument("--limit", type=int, default=None,
                        help=f"offline questions per benchmark and configuration (even: MME scores pairs; default "
                             f"{DEFAULT_LIMIT}, {FULL_LIMIT} with --full)")
    parser.add_argument("--ablation-limit", type=int, default=None, help="questions per ablation point (default: --limit)")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--runs-root", type=Path, default=None, help="default: artifacts/runs/<profile>")
    args = parser.parse_args(argv)
    if args.profile == "paper":  # its plan is the paper's: every question, every point
        given = [flag for flag, value in (("--full", args.full), ("--limit", args.limit), ("--ablation-limit", args.ablation_limit)) if value]
        if given:
            parser.error(f"{', '.join(given)} apply to the offline profile; the paper profile answers every question "
                         "of the real benchmarks (hivtp.run -m +experiment=paper_... benchmark.limit=N for a partial run)")
    limit = args.limit or (FULL_LIMIT if args.full else DEFAULT_LIMIT)
    ablation_limit = args.ablation_limit or limit
    for name, value in (("--limit", limit), ("--ablation-limit", ablation_limit)):
        if value < 2 or value % 2:
            parser.error(f"{name} must be an even number >= 2 (MME scores question pairs)")
    # a full run keeps its own folders, so that collecting one never mixes in the other's question sets
    runs_root = args.runs_root or ROOT / "artifacts" / "runs" / (args.profile + ("-full" if args.full else ""))

    if args.profile == "paper":
        plan = paper_plan()
    else:
        model = offline_model()
        plan = offline_plan(model, available_baselines(), limit, ablation_limit, args.full)
    configs = compose_all(plan, runs_root)
    for i, cfg in enumerate(configs):
        c = plain(cfg)
        print(f"[{i + 1}/{len(configs)}] {run_hash(c)} {c['profile']} {c['mode']} {c['model']['name']} "
              f"{c['method']['name']} {method_params(c)} {list(c['benchmark']['tasks'])} limit={c['benchmark']['limit']}",
              flush=True)
    if args.dry_run:
        print(f"[reproduce] dry run: {len(configs)} runs composed, none run.")
        return 0

    if args.profile == "offline":
        ensure_offline_artifacts(model, max(limit, ablation_limit))
    if args.full and args.profile == "offline":  # every configuration reads 4,000 images in turn: the
        # shared caches must hold them all (the paper profile's tower passes live in GPU memory: not here)
        from hivtp.lmms.inprocess import CACHE_VARIABLES

        for variable in CACHE_VARIABLES.values():
            os.environ.setdefault(variable, str(FULL_CACHE_GIB))
    start = time.perf_counter()
    run_all(configs, start)

    from hivtp.results import collect
    from hivtp.results.report import write_reports

    collect(runs_root, args.results)
    written = write_reports(args.results)
    if args.profile == "offline":
        token_pictures(model, args.results / "figures")
    print(f"[reproduce] done in {time.perf_counter() - start:.0f} s; {len(written)} report files under {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

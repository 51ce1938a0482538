"""The offline experiment end to end (`make reproduce`): data, runs, CSVs, tables, figures, ledger.

    python scripts/reproduce.py                      # offline profile, CPU, <= 15 min on 2 cores
    python scripts/reproduce.py --profile paper --dry-run   # compose (and list) the paper runs only

Every run goes through the same runner as `python -m hivtp.run` (hash-named folders under
artifacts/runs/<profile>, finished runs skipped, atomic writes), so a second call only redoes what
did not finish. Offline rows are marked profile=offline and are never compared with the paper.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from hivtp.run import CONFIG_DIR, execute, method_params, plain, run_hash  # noqa: E402

# The offline plan, budgeted for <= 15 min on 2 cores.
BUDGETS = (64, 128, 192)
LATENCY_BUDGETS = (64, 192)
# toy-llava's encoder has 12 layers and its feature layer is the output of layer 10 (0-based)
LAYER_WINDOWS = ("0-1-2", "2-3-4", "4-5-6", "6-7-8", "8-9-10")
GEOMETRIES = tuple((r, w) for r in (1, 2, 3) for w in (2, 4))  # all valid on 24x24; window 1 keeps every token
# The offline models' language models have 2 (tiny-llava) or 3 (toy-llava) layers: FastV's default K=2
# would leave one layer or none to prune, so offline runs rank at layer 1 (after one full layer). The
# paper profile keeps K=2.
OFFLINE_EXTRA = {"fastv": {"k_layer": 1}}


def _extra(method: str) -> list[str]:
    """The method's offline-only parameters as ``key=value`` items."""
    return [f"{k}={v}" for k, v in OFFLINE_EXTRA.get(method, {}).items()]


def offline_plan(model: str, methods: list[str], limit: int) -> list[list[str]]:
    """Accuracy runs (none, then every method at every budget), small score-layer and geometry
    ablations on POPE-adversarial, and one latency run that times every method interleaved in one
    process, so that its ratios are like for like. The full ablations are sweeps
    (`make sweep SWEEP=layers_offline`, `geometry`, `stages`)."""
    base = ["+experiment=offline", f"model={model}", f"benchmark.limit={limit}", "mode=accuracy"]
    plan = [base + ["method=none"]]
    plan += [base + [f"method={m}", f"method.params.budget={b}", *(f"method.params.{e}" for e in _extra(m))]
             for m in ["hivtp", *methods] for b in BUDGETS]
    pope = base + ["benchmark.tasks=[hivtp_pope_adv]", "method=hivtp"]
    plan += [pope + ["method.params.budget=128", f"method.params.layers={w}"] for w in LAYER_WINDOWS]
    plan += [pope + ["method.params.keep_ratio=0.25", f"method.params.regions={r}", f"method.params.window={w}"]
             for r, w in GEOMETRIES]
    timed = ["none", "hivtp"] + [",".join([f"{m}:budget={b}", *_extra(m)])
                                 for m in ["hivtp", *methods] for b in LATENCY_BUDGETS]
    plan.append(["+experiment=offline", f"model={model}", "mode=latency", "method=none",
                 "latency.methods=[" + ",".join(f"'{t}'" for t in timed) + "]"])
    return plan


def paper_plan() -> list[list[str]]:
    plan = []
    for exp, budgets in (("paper_llava15", (64, 128, 192)), ("paper_llava_next", (160, 320, 640))):
        plan.append([f"+experiment={exp}", "method=none"])
        for m in ("hivtp", "random", "pool", "fastervlm", "visionzip", "divprune", "hiprune", "fastv"):
            plan += [[f"+experiment={exp}", f"method={m}", f"method.params.budget={b}"] for b in budgets]
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
    """Every registered method other than the reference (`none`) and HIVTP itself."""
    from hivtp.methods import available_methods

    methods = [m for m in available_methods() if m not in ("none", "hivtp")]
    for m in methods:
        if m in OFFLINE_SKIP:
            print(f"[reproduce] offline: skipping {m}: {OFFLINE_SKIP[m]}", flush=True)
    return [m for m in methods if m not in OFFLINE_SKIP]


def ensure_offline_artifacts(model: str) -> None:
    if not (ROOT / "artifacts" / "data").exists():
        print("[reproduce] building the offline mini-benchmarks (make data)", flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "build_data.py"), "--size", "100"], check=True)
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


def run_all(configs: list, jobs: int, start: float) -> None:
    """Accuracy runs ``jobs`` at a time (each lmms-eval subprocess on its own core: most of a run is
    single-threaded start-up and task indexing), then latency runs one at a time, alone, so that
    nothing else competes with the clock."""
    accuracy = [c for c in configs if c.mode == "accuracy"]
    timed = [c for c in configs if c.mode != "accuracy"]
    done, lock = [0], threading.Lock()

    def one(cfg) -> None:
        execute(cfg)
        with lock:
            done[0] += 1
            print(f"[reproduce] {done[0]}/{len(configs)} runs finished ({time.perf_counter() - start:.0f} s)", flush=True)

    if jobs > 1 and len(accuracy) > 1:
        threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"  # read by the lmms-eval subprocesses, not by this process
        for c in accuracy:
            c.progress = False  # interleaved lmms-eval logs would be unreadable; each run's log is in its folder
        try:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                for future in [pool.submit(one, c) for c in accuracy]:
                    future.result()  # re-raises the first failure; finished runs stay finished
        finally:
            if threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = threads
    else:
        for cfg in accuracy:
            one(cfg)
    for cfg in timed:
        one(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("offline", "paper"), default="offline")
    parser.add_argument("--dry-run", action="store_true", help="compose and list the runs; run nothing")
    parser.add_argument("--limit", type=int, default=20, help="offline samples per task (even: MME scores pairs; default 20)")
    parser.add_argument("--jobs", type=int, default=2, help="accuracy runs at a time (default 2: one per core)")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--runs-root", type=Path, default=None, help="default: artifacts/runs/<profile>")
    args = parser.parse_args(argv)
    if args.limit < 2 or args.limit % 2:
        parser.error("--limit must be an even number >= 2 (MME scores question pairs)")
    runs_root = args.runs_root or ROOT / "artifacts" / "runs" / args.profile

    if args.profile == "paper":
        plan = paper_plan()
    else:
        model = offline_model()
        plan = offline_plan(model, available_baselines(), args.limit)
    configs = compose_all(plan, runs_root)
    for i, cfg in enumerate(configs):
        c = plain(cfg)
        print(f"[{i + 1}/{len(configs)}] {run_hash(c)} {c['profile']} {c['mode']} {c['model']['name']} "
              f"{c['method']['name']} {method_params(c)} {list(c['benchmark']['tasks'])}", flush=True)
    if args.dry_run:
        print(f"[reproduce] dry run: {len(configs)} runs composed, none run.")
        return 0

    if args.profile == "offline":
        ensure_offline_artifacts(model)
    start = time.perf_counter()
    run_all(configs, args.jobs, start)

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

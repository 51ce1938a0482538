"""``python -m hivtp.latency.bench``: every GPU latency measurement the project has (``make bench-gpu``),
most important first, within a wall-clock budget, into one flat folder.

A lent GPU comes for about ten minutes a call and hands back at most eight files, no more than two
folders below ``$OUT`` (``../.library/device/README.md``). So, unlike one process per setting:

* **Jobs in priority order.** A job is one (model, batch, attention kernel) with every method: tier 1
  is batch 1 under sdpa for each model (the paper's operating point: TTFT and decode throughput of one
  request), then batch 8, then the eager kernel. Methods: ``none``; ``hivtp`` at its own rule (the
  paper's operating point); Qwen2.5-VL also at keep ratios; at each standard budget
  (:mod:`hivtp.claims`) ``hivtp`` and every baseline the paper profile compares for accuracy
  (``PAPER_BASELINES``; Qwen2.5-VL's tower has no [CLS]: the methods that need one are left out
  there); and the release's eager HIVTP beside every
  fast one (``--no-faithful`` drops it).
* **A budget.** ``--budget-s`` seconds from the start: a job starts only while its least run
  (``--warmup`` + ``--min-repeats`` rounds, by the last measured round of that model) fits, and
  stops early, after at least ``--min-repeats`` rounds, rather than run past it. Rows record their
  ``repeats``. What did not fit is listed at the end; the same command again resumes.
* **Resumable, nothing lost.** After every job ``latency.csv`` (all rows so far), ``summary.md`` and
  ``fingerprint.txt`` (device, versions, the plan and what became of each job) are rewritten
  atomically in ``--out`` and ``--mirror`` (three files, no sub-folder); a job whose rows are in
  ``--out`` is skipped, so a second call with the same ``--out`` measures the rest. A job that fails
  (out of memory, say) is listed with its error and the others still run.
* **One build per model**: models are built once (random weights of the real shape, on the GPU, in
  seconds) and kept for every batch and kernel.

Imports torch, transformers and the standard library only (the lent machine has no hydra / pandas).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_text
from ..claims import PAPER_BASELINES, budgets_for, family_of
from ..errors import ConfigError, HivtpError
from .fingerprint import fingerprint
from .inputs import DEFAULT_PROMPT_TOKENS, load_model, parse_dtype
from .measure import MethodSpec, measure
from .report import read_csv, summarize, write_csv
from .timing import check_device

__all__ = ["Job", "plan", "methods_for", "run_plan", "MODELS", "QWEN_KEEPS", "main"]

#: the shapes timed by default: the paper's two models, then the family most of the field also runs
MODELS = ("llava-1.5-7b", "llava-v1.6-vicuna-7b", "qwen2.5-vl-7b")
#: Qwen2.5-VL's keep ratios timed besides its budgets (its rule is a share of its merged tokens)
QWEN_KEEPS = (0.25, 0.5)
FILES = ("latency.csv", "summary.md", "fingerprint.txt")


@dataclass(frozen=True)
class Job:
    model: str
    batch: int
    attn: str
    methods: tuple[MethodSpec, ...] = field(compare=False)

    @property
    def name(self) -> str:
        return f"{self.model} batch {self.batch} {self.attn}"


def methods_for(model: str) -> list[MethodSpec]:
    """Every method timed on ``model``: none, hivtp's rule (and Qwen's keep ratios), and at each
    standard budget hivtp and the paper profile's baselines (``hivtp.claims.PAPER_BASELINES``, the
    ones its accuracy runs compare, so that speed and accuracy rows pair up), less those the family
    refuses (Qwen2.5-VL's tower has no [CLS])."""
    from ..methods import METHODS

    qwen = family_of(model) == "qwen2_5_vl"
    baselines = [m for m in PAPER_BASELINES if not (qwen and METHODS[m].needs_cls)]
    methods: list[MethodSpec] = [("none", {}), ("hivtp", {})]
    if qwen:
        methods += [("hivtp", {"keep": k}) for k in QWEN_KEEPS]
    for budget in budgets_for(model):
        methods += [("hivtp", {"budget": budget})] + [(m, {"budget": budget}) for m in baselines]
    return methods


def plan(models: Sequence[str] = MODELS, batches: Sequence[int] = (1, 8), attns: Sequence[str] = ("sdpa", "eager")) -> list[Job]:
    """Jobs in priority order: by kernel (the first named first), then batch, then model."""
    return [Job(m, b, a, tuple(methods_for(m))) for a in attns for b in batches for m in models]


def _done(rows: list[dict[str, Any]], job: Job, protocol: dict[str, Any]) -> bool:
    return any(r.get("model") == job.model and r.get("batch") == job.batch and r.get("attn") == job.attn
               and all(r.get(k) == v for k, v in protocol.items()) for r in rows)


class Budget:
    """Seconds left until the deadline, and what a round of each model took (for the next job's estimate)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.round_s: dict[tuple[str, int], float] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def estimate(self, job: Job, rounds: int) -> float | None:
        """Seconds for ``rounds`` rounds of ``job``: from the same model at the same batch, else at any
        batch scaled by the batch ratio (an upper figure: decode does not grow that fast), else from
        the slowest other model at this batch (the planned shapes are all 7B); None before anything
        was measured."""
        same = self.round_s.get((job.model, job.batch))
        if same is not None:
            return rounds * same
        other = [(b, s) for (m, b), s in self.round_s.items() if m == job.model]
        if other:
            b, s = min(other)
            return rounds * s * max(1.0, job.batch / b)
        peers = [s for (_, b), s in self.round_s.items() if b == job.batch]
        return rounds * max(peers) if peers else None


def run_plan(jobs: Sequence[Job], out: Path, budget_s: float, device: str = "cuda", dtype: str = "float16",
             warmup: int = 1, repeats: int = 3, min_repeats: int = 2, new_tokens: int = 32,
             prompt_tokens: int = DEFAULT_PROMPT_TOKENS, image_size: tuple[int, int] = (672, 672),
             faithful: bool = True, progress: bool = True, mirror: Path | None = None) -> dict[str, list[str]]:
    """Run ``jobs`` in order within ``budget_s`` seconds, writing ``out`` (and ``mirror``) after each.
    Returns the job names by outcome: "measured", "skipped" (rows already in ``out``), "not run" (no
    time left), "failed" (with the error; the other jobs still run)."""
    dev = check_device(device)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "latency.csv"
    rows = read_csv(csv_path) if csv_path.is_file() else []
    protocol = {"dtype": dtype, "new_tokens": new_tokens, "prompt_tokens": prompt_tokens, "device": dev.type}
    budget, built = Budget(budget_s), {}
    outcome: dict[str, list[str]] = {"measured": [], "skipped": [], "not run": [], "failed": [], "refused": []}
    _write(out, rows, dev, jobs, outcome, mirror)
    for job in jobs:
        if _done(rows, job, protocol):
            outcome["skipped"].append(job.name)
            continue
        least = budget.estimate(job, warmup + min_repeats)
        if budget.left() <= 0 or (least is not None and least > budget.left()):
            outcome["not run"].append(job.name)
            _say(progress, f"{job.name}: not started ({budget.left():.0f} s left, it needs about {least or 0:.0f} s)")
            continue
        _say(progress, f"{job.name}: {len(job.methods)} methods, {budget.left():.0f} s left")
        try:
            if job.model not in built:
                started = time.monotonic()
                built[job.model] = load_model(job.model, True, parse_dtype(dtype), job.attn, dev)
                _say(progress, f"built {job.model} in {time.monotonic() - started:.1f} s")
            started, refusals = time.monotonic(), {}
            new = measure(model=job.model, methods=job.methods, batch=job.batch, dtype=dtype, attn=job.attn,
                          device=device, warmup=warmup, repeats=repeats, new_tokens=new_tokens,
                          prompt_tokens=prompt_tokens, faithful=faithful, progress=progress,
                          image_size=image_size, loaded=built[job.model], deadline=budget.deadline,
                          min_repeats=min_repeats, refusals=refusals)
        except Exception as err:  # noqa: BLE001 -- one setting's failure (out of memory at batch 8, a bug) keeps the rest
            outcome["failed"].append(f"{job.name}: {type(err).__name__}: {err}")
            _say(True, f"{job.name} failed:\n{traceback.format_exc()}")
            _free(dev)
            _write(out, rows, dev, jobs, outcome, mirror)
            continue
        rounds = warmup + max(r["repeats"] for r in new)
        budget.round_s[(job.model, job.batch)] = (time.monotonic() - started) / rounds
        rows += new
        outcome["measured"].append(job.name)
        outcome["refused"] += [f"{job.name}: {label}: {why}" for label, why in refusals.items()]
        _write(out, rows, dev, jobs, outcome, mirror)
    _write(out, rows, dev, jobs, outcome, mirror)
    return outcome


def _free(dev) -> None:
    if dev.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _write(out: Path, rows: list[dict[str, Any]], dev, jobs: Sequence[Job], outcome: dict[str, list[str]],
           mirror: Path | None = None) -> None:
    """The three files, atomically, in ``out`` and (a lent GPU's ``$OUT``) ``mirror``."""
    for folder in (out, mirror) if mirror is not None else (out,):
        folder.mkdir(parents=True, exist_ok=True)
        if rows:
            write_csv(rows, folder / "latency.csv")
            write_text(folder / "summary.md", summarize(rows))
        _write_fingerprint(folder, dev, jobs, outcome)


def _write_fingerprint(out: Path, dev, jobs: Sequence[Job], outcome: dict[str, list[str]]) -> None:
    import torch

    lines = [f"{k}: {v}" for k, v in fingerprint(dev).items()]
    lines.append(f"torch cuda: {torch.version.cuda}")
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        lines.append(f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    lines.append("plan: " + "; ".join(j.name for j in jobs))
    lines += [f"{k}: {'; '.join(v) if v else '-'}" for k, v in outcome.items()]
    write_text(out / "fingerprint.txt", "\n".join(lines) + "\n")


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[bench] {text}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hivtp.latency.bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="flat folder for latency.csv, summary.md, fingerprint.txt (resumed)")
    p.add_argument("--mirror", type=Path, default=None, help="a second folder written with the same files after every job (a lent GPU's $OUT)")
    p.add_argument("--budget-s", type=float, default=480, help="seconds for the whole run (default 480: a 10-minute call with margin)")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--attns", nargs="+", default=["sdpa", "eager"], choices=["sdpa", "eager", "flash_attention_2"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-repeats", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS)
    p.add_argument("--image-size", type=int, nargs=2, default=[672, 672], metavar=("H", "W"))
    p.add_argument("--no-faithful", action="store_true", help="do not time HIVTP's eager (release) path")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not 1 <= args.min_repeats <= args.repeats:
            raise ConfigError(f"need 1 <= --min-repeats <= --repeats; got {args.min_repeats} and {args.repeats}.")
        jobs = plan(args.models, args.batches, args.attns)
        if args.dry_run:
            for job in jobs:
                print(f"{job.name}: " + " ".join(n + "".join(f":{k}={v}" for k, v in p.items()) for n, p in job.methods))
            return 0
        outcome = run_plan(jobs, args.out, args.budget_s, device=args.device, dtype=args.dtype, warmup=args.warmup,
                           repeats=args.repeats, min_repeats=args.min_repeats, new_tokens=args.new_tokens,
                           prompt_tokens=args.prompt_tokens, image_size=tuple(args.image_size),
                           faithful=not args.no_faithful, progress=not args.quiet, mirror=args.mirror)
    except HivtpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for k, v in outcome.items():
        print(f"{k}: {len(v)}" + "".join(f"\n  {n}" for n in v))
    print(f"wrote {', '.join(str(args.out / f) for f in FILES)}")
    return 1 if outcome["failed"] or outcome["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m hivtp.latency.bench``: every GPU latency measurement the project has (``make bench-gpu``),
most important first, within a wall-clock budget, into one flat folder.

A lent GPU comes for about ten minutes a call and hands back at most eight files, no more than two
folders below ``$OUT`` (``../.library/device/README.md``). So, unlike one process per setting:

* **Jobs in priority order.** A job is one (model, batch, attention kernel) with every method: tier 1
  is batch 1 under sdpa for each model (the paper's operating point: TTFT and decode throughput of one
  request), then batch 8, then the eager kernel. A job that does not fit in the time left is passed
  over, and a later, cheaper one may still run. Methods: ``none``; ``hivtp`` at its own rule (the
  paper's operating point); Qwen2.5-VL also at keep ratios; at each standard budget
  (:mod:`hivtp.claims`) ``hivtp`` and every baseline the paper profile compares for accuracy
  (``PAPER_BASELINES``; Qwen2.5-VL's tower has no [CLS]: the methods that need one are left out
  there); and the release's eager HIVTP beside every fast one (``--no-faithful`` drops it).
* **A budget.** ``--budget-s`` seconds from the start: a job starts only while its least run
  (``--warmup`` + ``--min-repeats`` rounds and, if needed, building its model, estimated from the
  closest job measured so far) fits; once running it stops after at least ``--min-repeats`` rounds
  rather than run past the deadline, and is abandoned as soon as a round shows that its least run
  cannot end by it. Rows record their ``repeats``. What did not fit is listed at the end.
* **Resumable, nothing lost.** After every job ``latency.csv`` (all rows so far), ``summary.md``,
  ``jobs.json`` (the protocol, and per job the methods measured and refused) and ``fingerprint.txt``
  (device, versions, the plan and what became of each job) are rewritten atomically in ``--out`` and
  ``--mirror`` (four files, no sub-folder). A job whose methods are all in ``jobs.json`` is skipped,
  so the same command on the same folder measures the rest; a folder of another protocol (device,
  dtype, tokens, image size, warm-up rounds, torch, transformers) is refused. A method that fails (a parameter the model refuses, out of
  memory) is dropped and listed, and the job's other methods keep their rows; a job that fails is
  listed and the others still run.
* **One model on the device at a time**, built with random weights of the real shape in seconds: a
  stage's peak memory counts every resident tensor, so a second model would be counted in its rows.

Imports torch, transformers and the standard library only (a GPU machine need not have the extras).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_text
from ..claims import PAPER_BASELINES, budgets_for, family_of
from ..errors import ConfigError, HivtpError
from .fingerprint import device_name, fingerprint
from .inputs import DEFAULT_PROMPT_TOKENS, load_model, parse_dtype
from .measure import MethodSpec, OutOfTime, free_device_memory, measure, method_label, with_faithful
from .report import read_csv, summarize, write_csv
from .timing import check_device

__all__ = ["Job", "plan", "methods_for", "planned_labels", "run_plan", "Budget", "Record", "MODELS", "QWEN_KEEPS", "main"]

#: the shapes timed by default: the paper's two models, then the family most of the field also runs
MODELS = ("llava-1.5-7b", "llava-v1.6-vicuna-7b", "qwen2.5-vl-7b")
#: Qwen2.5-VL's keep ratios timed besides its budgets (its rule is a share of its merged tokens)
QWEN_KEEPS = (0.25, 0.5)
FILES = ("latency.csv", "summary.md", "fingerprint.txt", "jobs.json")


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


def planned_labels(job: Job, faithful: bool) -> list[str]:
    """The method labels a job measures (with HIVTP's eager twins when ``faithful``)."""
    methods = with_faithful(job.methods) if faithful else list(job.methods)
    return [method_label(n, p) for n, p in methods]


class Budget:
    """Seconds left until the deadline, and what a round of each job and a build of each model took
    (for the next job's estimate)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.round_s: dict[tuple[str, int, str], float] = {}
        self.build_s: dict[str, float] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def estimate(self, job: Job, rounds: int, build: bool = False) -> float | None:
        """Seconds for ``rounds`` rounds of ``job`` (and a build of its model when ``build``), from the
        closest measured job: the same model, batch and kernel; the same model and batch under the other
        kernel; the same model at another batch, scaled by the square root of the batch ratio (decode,
        most of a round, grows far slower than the batch on a GPU; prefill grows with it); the slowest
        other model at this batch (the planned shapes are all 7B). None before anything was measured."""
        per_round = self._per_round(job)
        if per_round is None:
            return None
        building = self.build_s.get(job.model, max(self.build_s.values(), default=0.0)) if build else 0.0
        return rounds * per_round + building

    def _per_round(self, job: Job) -> float | None:
        if (job.model, job.batch, job.attn) in self.round_s:
            return self.round_s[(job.model, job.batch, job.attn)]
        same = [s for (m, b, _), s in self.round_s.items() if (m, b) == (job.model, job.batch)]
        if same:
            return max(same)
        other = [(b, s) for (m, b, _), s in self.round_s.items() if m == job.model]
        if other:  # the nearest batch measured, its slowest kernel
            b = min({b for b, _ in other}, key=lambda b: abs(math.log(job.batch / b)))
            return max(s for bb, s in other if bb == b) * math.sqrt(max(1.0, job.batch / b))
        peers = [s for (_, b, _), s in self.round_s.items() if b == job.batch]
        return max(peers) if peers else None


class Record:
    """``jobs.json`` in the output folder: the protocol its rows were measured under, and per job the
    methods measured and those refused (with why), so that a later call measures only what is missing
    and never appends rows of another protocol to the folder."""

    NAME = "jobs.json"

    def __init__(self, folder: Path, protocol: dict[str, Any]):
        self.path, self.protocol = folder / self.NAME, protocol
        state = json.loads(self.path.read_text()) if self.path.is_file() else {"protocol": protocol, "jobs": {}}
        if state["protocol"] != protocol:
            changed = ", ".join(f"{k} {state['protocol'].get(k)!r} -> {v!r}" for k, v in protocol.items() if state["protocol"].get(k) != v)
            raise ConfigError(f"{folder} holds rows measured under another protocol ({changed}); pass another --out "
                              "(a folder per protocol), or move that one away.")
        self.jobs: dict[str, dict[str, Any]] = state["jobs"]

    def done(self, job: Job, labels: list[str]) -> bool:
        entry = self.jobs.get(job.name)
        return entry is not None and set(labels) <= set(entry["measured"]) | set(entry["refused"])

    def measured(self, job: Job, labels: list[str], refusals: dict[str, str]) -> None:
        self.jobs[job.name] = {"measured": [lab for lab in labels if lab not in refusals], "refused": refusals}

    def write(self, folder: Path) -> None:
        write_text(folder / self.NAME, json.dumps({"protocol": self.protocol, "jobs": self.jobs}, indent=1) + "\n")


def _of_job(row: dict[str, Any], job: Job) -> bool:
    return (row.get("model"), row.get("batch"), row.get("attn")) == (job.model, job.batch, job.attn)


def run_plan(jobs: Sequence[Job], out: Path, budget_s: float, device: str = "cuda", dtype: str = "float16",
             warmup: int = 1, repeats: int = 3, min_repeats: int = 2, new_tokens: int = 32,
             prompt_tokens: int = DEFAULT_PROMPT_TOKENS, image_size: tuple[int, int] = (672, 672),
             faithful: bool = True, progress: bool = True, mirror: Path | None = None) -> dict[str, list[str]]:
    """Run ``jobs`` in order within ``budget_s`` seconds, writing ``out`` (and ``mirror``) after each.
    Returns the job names by outcome: "measured", "skipped" (measured in ``out`` already), "not run"
    (no time left, or abandoned when its least run would end past the deadline), "failed" (with the
    error; the other jobs still run), and "refused": the methods a measured job dropped because they
    failed on this model (``measure(refusals=...)``). A job that ``out`` holds with methods missing
    (another plan, ``faithful`` turned on) is measured again and its old rows replaced."""
    dev = check_device(device)
    out.mkdir(parents=True, exist_ok=True)
    # everything that makes the rows of one folder one protocol: a resume under other warm-up rounds (no
    # row records them) or other software (rows do, but a table mixes them) would mix protocols
    software = fingerprint(dev)
    protocol = {"device": device_name(dev), "dtype": dtype, "new_tokens": new_tokens,
                "prompt_tokens": prompt_tokens, "image_size": list(image_size), "warmup": warmup,
                "torch": software["torch"], "transformers": software["transformers"]}
    record = Record(out, protocol)
    csv_path = out / "latency.csv"
    rows = read_csv(csv_path) if csv_path.is_file() else []
    budget = Budget(budget_s)
    current: dict[str, Any] = {}  # the one model on the device: {name: (model, weights label)}
    outcome: dict[str, list[str]] = {"measured": [], "skipped": [], "not run": [], "failed": [], "refused": []}
    _write(out, rows, dev, jobs, outcome, record, mirror)
    for job in jobs:
        labels = planned_labels(job, faithful)
        if record.done(job, labels):
            outcome["skipped"].append(job.name)
            continue
        least = budget.estimate(job, warmup + min_repeats, build=job.model not in current)
        if budget.left() <= 0 or (least is not None and least > budget.left()):
            outcome["not run"].append(job.name)
            _say(progress, f"{job.name}: not started ({budget.left():.0f} s left, it needs about {least or 0:.0f} s)")
            continue
        _say(progress, f"{job.name}: {len(labels)} methods, {budget.left():.0f} s left")
        try:
            _load(current, job, dtype, dev, budget, progress)
            started, refusals = time.monotonic(), {}
            new = measure(model=job.model, methods=job.methods, batch=job.batch, dtype=dtype, attn=job.attn,
                          device=device, warmup=warmup, repeats=repeats, new_tokens=new_tokens,
                          prompt_tokens=prompt_tokens, faithful=faithful, progress=progress,
                          image_size=image_size, loaded=current[job.model], deadline=budget.deadline,
                          min_repeats=min_repeats, refusals=refusals)
        except OutOfTime as err:
            outcome["not run"].append(f"{job.name} (abandoned: {err})")
            _say(True, f"{job.name}: abandoned, {err}")
            continue
        except Exception as err:  # noqa: BLE001 -- one setting's failure (out of memory at batch 8, a bug) keeps the rest
            outcome["failed"].append(f"{job.name}: {type(err).__name__}: {err}")
            _say(True, f"{job.name} failed:\n{traceback.format_exc()}")
            current.clear()
            free_device_memory(dev)
            _write(out, rows, dev, jobs, outcome, record, mirror)
            continue
        budget.round_s[(job.model, job.batch, job.attn)] = (time.monotonic() - started) / (warmup + max(r["repeats"] for r in new))
        rows = [r for r in rows if not _of_job(r, job)] + new  # a job measured again replaces its old rows
        record.measured(job, labels, refusals)
        outcome["measured"].append(job.name)
        outcome["refused"] += [f"{job.name}: {label}: {why}" for label, why in refusals.items()]
        _write(out, rows, dev, jobs, outcome, record, mirror)
    _write(out, rows, dev, jobs, outcome, record, mirror)
    return outcome


def _load(current: dict[str, Any], job: Job, dtype: str, dev, budget: Budget, progress: bool) -> None:
    """Make ``job.model`` the one model on the device. One at a time: a stage's peak memory
    (``max_memory_allocated``) counts every tensor resident, so another model held beside it would be
    counted in its rows (rebuilding a random-weight model takes seconds)."""
    if job.model in current:
        return
    current.clear()
    free_device_memory(dev)
    started = time.monotonic()
    current[job.model] = load_model(job.model, True, parse_dtype(dtype), job.attn, dev)
    budget.build_s[job.model] = time.monotonic() - started
    _say(progress, f"built {job.model} in {budget.build_s[job.model]:.1f} s")


def _write(out: Path, rows: list[dict[str, Any]], dev, jobs: Sequence[Job], outcome: dict[str, list[str]],
           record: Record, mirror: Path | None = None) -> None:
    """The four files, atomically, in ``out`` and (a lent GPU's ``$OUT``) ``mirror``."""
    machine = _fingerprint_text(dev, jobs, outcome, record.protocol)
    for folder in (out, mirror) if mirror is not None else (out,):
        folder.mkdir(parents=True, exist_ok=True)
        if rows:
            write_csv(rows, folder / "latency.csv")
            write_text(folder / "summary.md", summarize(rows))
        record.write(folder)
        write_text(folder / "fingerprint.txt", machine)


def _fingerprint_text(dev, jobs: Sequence[Job], outcome: dict[str, list[str]], protocol: dict[str, Any]) -> str:
    """fingerprint.txt: the machine and software, the protocol (jobs.json's), the plan and what became of each job."""
    import torch

    lines = [f"{k}: {v}" for k, v in fingerprint(dev).items()]
    lines.append(f"torch cuda: {torch.version.cuda}")
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        lines.append(f"gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    lines.append("protocol: " + ", ".join(f"{k} {v}" for k, v in protocol.items()))
    lines.append("plan: " + "; ".join(j.name for j in jobs))
    lines += [f"{k}: {'; '.join(v) if v else '-'}" for k, v in outcome.items()]
    return "\n".join(lines) + "\n"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[bench] {text}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hivtp.latency.bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="flat folder for latency.csv, summary.md, jobs.json, fingerprint.txt (resumed)")
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
                print(f"{job.name}: " + " ".join(planned_labels(job, not args.no_faithful)))
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

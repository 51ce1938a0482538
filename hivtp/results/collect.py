"""Run folders (``<runs_root>/<hash>/``, :mod:`hivtp.runfolder`) -> tidy CSVs, with confidence intervals.

Only complete runs give rows: a run's ``DONE`` manifest must verify (every file it names present and
unchanged, :func:`hivtp.runfolder.verify_run`), its rows file must parse, and every accuracy row must
be backed by lmms-eval's logged samples for its task, from which the row's score is recomputed
(:mod:`hivtp.results.stats`) and must equal the reported one. Each accuracy row then gets:

- ``n`` (questions scored), ``ci_low`` / ``ci_high``: the 95% bootstrap interval of its score;
  ``ci_unit``: what the bootstrap resampled (``image`` where the run recorded each question's image,
  MME always; else ``question``): several questions of one image are not independent draws;
- ``diff_vs_hivtp`` (+ ``_low`` / ``_high``): this row minus HIVTP (default geometry) at the same
  budget on the same questions, with a paired-bootstrap interval; empty where there is no such run;
- ``diff_vs_none`` (+ ``_low`` / ``_high``): this row minus the unpruned model, paired likewise.

A run whose ``DONE`` exists but that is broken (a file deleted, truncated or changed, samples missing,
a score the samples do not give) is never dropped silently: ``collect`` raises
:class:`~hivtp.runfolder.IncompleteRunError` naming each broken file, or, with ``strict=False``,
skips it and prints every skipped run on stderr. A folder without ``DONE`` is a run still going or
killed (an interrupted sweep keeps what finished): it gives no rows and is listed on stderr.

    python -m hivtp.results RUNS_ROOT RESULTS_DIR [--lenient]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import write_text
from ..errors import MissingArtifactError
from ..latency.report import TEXT_COLUMNS as LATENCY_TEXT_COLUMNS
from ..runfolder import CHECKPOINT_FILES, DATA, MANIFEST, WEIGHTS, IncompleteRunError, read_manifest, read_part, recorded_inputs, verify_run
from ..world.builds import is_offline_task
from .stats import (
    LEVEL,
    MME_METRICS,
    POPE_ANSWER_METRICS,
    POPE_METRICS,
    RESAMPLES,
    SEED,
    Scores,
    StatsError,
    UnknownAggregationError,
    bootstrap,
    interval,
    read_logged_samples,
    scores_from_samples,
)

IDENTITY = ["model", "method", "params", "budget"]
TAIL = ["profile", "weights", "commit", "date"]
#: paired differences to a reference run on the same questions (reference name -> columns)
DIFF_COLUMNS = [f"diff_vs_{ref}{end}" for ref in ("hivtp", "none") for end in ("", "_low", "_high")]
#: what a run was evaluated on besides its identity columns: the question limit per task and the accuracy
#: device and dtype (from its config.json), and the first 12 hex digits of the sha256 of the checkpoint
#: it answered with (from its manifest; empty for a hub id or a run sealed before manifests named it),
#: and likewise of the checkpoint's other files and of the benchmark's local data (``runfolder.recorded_inputs``;
#: empty for hub checkpoints and datasets), and the procedural world the offline mini-benchmarks' images
#: were drawn in (``world``, from the run's identity; empty for other benchmarks). Rows differing in these
#: are different measurements: a retrained toy's rows, or rows on an edited config, rebuilt data or
#: another world, are never compared with, or averaged into, those before them
SETUP = ["limit", "device", "dtype", "weights_digest", "checkpoint_files_digest", "data_digest", "world"]
ACCURACY_COLUMNS = (IDENTITY + ["benchmark", "metric", "value", "n", "ci_low", "ci_high", "ci_unit", "tokens_kept_mean",
                                "tokens_kept_std"] + SETUP + TAIL + DIFF_COLUMNS)
#: the columns that make two accuracy rows of one model comparable: the kind of weights (``trained``,
#: ``random``, ``pretrained``) and the setup (questions, device, dtype, weights digest), as the paired
#: differences pair them (``_reference_key``). Tables, figures and the ledger never pool rows across
#: these (``setups``).
COMPARABLE = ["weights", *SETUP]
#: latency columns besides device/dtype/batch/backend that make rows other measurements (``LATENCY_PROTOCOL``):
#: the machine, the decode and prompt lengths, and ``tokens_total`` (the unpruned image tokens per sample:
#: a LLaVA-NeXT or Qwen2.5-VL bench at another ``--image-size`` is another measurement, not a re-run)
LATENCY_MACHINE = ["device_name", "new_tokens", "prompt_tokens", "tokens_total"]
#: columns of results/accuracy.csv and latency.csv that hold text even when it reads as a number: a digest
#: such as ``012345678901`` (a leading zero lost) or ``123e45678901`` (read as inf, so two digests become one)
RESULT_TEXT_COLUMNS = LATENCY_TEXT_COLUMNS | {"benchmark", "metric", "ci_unit", "weights_digest", "checkpoint_files_digest",
                                              "data_digest", "world"}
LATENCY_COLUMNS = IDENTITY + TAIL + [
    "stage", "batch", "dtype", "backend", "device", "median_ms", "p10_ms", "p90_ms", "repeats",
    "peak_mem_mb", "flops", "tokens_kept", "tokens_per_s", *LATENCY_MACHINE,
]

def _setup_value(column: str, value: object) -> str:
    """``limit 200`` (CSV round trips make integers floats), ``weights_digest 179005f1e765``,
    ``weights_digest unrecorded`` (NaN or None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{column} unrecorded"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{column} {value}"


def setups(rows: pd.DataFrame) -> list[tuple[list[str], pd.DataFrame]]:
    """One model's accuracy rows split by setup (``COMPARABLE``): [(what sets the part apart, its rows)]
    ([] for no rows). What sets a part apart is ``[]`` where every row shares one setup (the usual case:
    the part is named by its model alone) and names only the columns that differ otherwise
    (``["limit 20"]``), so that rows of other question limits, devices, dtypes or weights are never
    counted, averaged or drawn together."""
    if rows.empty:
        return []
    parts = list(rows.groupby(COMPARABLE, dropna=False, sort=True))
    differ = [i for i, column in enumerate(COMPARABLE) if len({str(key[i]) for key, _ in parts}) > 1]
    return [([_setup_value(COMPARABLE[i], key[i]) for i in differ], part) for key, part in parts]


def file_stem(*parts) -> str:
    """A file name from what names a table or figure (``accuracy``, ``offline``, ``toy-llava``, ``limit 20``):
    parts joined by ``_``, spaces dropped and ``/`` made ``-`` so that no part opens a folder
    (``accuracy_offline_toy-llava_limit20``). The one spelling every table and figure file uses."""
    return "_".join(str(part).replace(" ", "").replace("/", "-") for part in parts)


class BrokenRunsError(IncompleteRunError):
    """Finished runs (``DONE`` written) whose files no longer make a complete run; ``broken`` maps each
    run folder to its problems, each naming the broken file."""

    def __init__(self, broken: dict[Path, list[str]]):
        first = next(iter(broken))
        super().__init__(first, broken[first])
        self.broken = broken
        self.args = (self.describe(broken) + "\nOr collect with strict=False (--lenient) to skip them, listed.",)

    @staticmethod
    def describe(broken: dict[Path, list[str]]) -> str:
        lines = [f"  {folder}: {problem}" for folder, problems in broken.items() for problem in problems]
        return (f"{len(broken)} finished run(s) are broken and give no rows:\n" + "\n".join(lines) + "\n"
                "Run each config again with `python -m hivtp.run` (a broken run is redone), or delete its folder.")


@dataclass
class Collected:
    """What one pass over the runs found: rows per kind, the accuracy rows' resampling units, and the
    folders that gave no rows (with why)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"accuracy": [], "latency": []})
    scores: list[Scores | None] = field(default_factory=list)  # one per accuracy row, same order
    broken: dict[Path, list[str]] = field(default_factory=dict)
    unfinished: list[Path] = field(default_factory=list)
    invalid: list[Path] = field(default_factory=list)
    no_interval: list[str] = field(default_factory=list)


def run_folders(runs_root: Path) -> list[Path]:
    """Every run folder under ``runs_root`` (Hydra's ``_hydra`` logs and the ``_incoming`` folders of
    forced re-runs are not runs)."""
    root = Path(runs_root)
    if not root.is_dir():
        raise MissingArtifactError(f"the runs folder {root} does not exist; run a sweep first (`python -m hivtp.run -m ...` "
                                   "or `make reproduce`), or name the folder it wrote (runs_root).")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def logged_samples_file(folder: Path, task: str) -> Path:
    """lmms-eval's ``*_samples_<task>.jsonl`` under a run folder. The plugin's accounting files share
    the suffix; lmms-eval's own are told apart by their content (answers under ``filtered_resps``)."""
    found = [p for p in sorted(folder.glob(f"**/*_samples_{task}.jsonl")) if _is_lmms_log(p)]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(str(p) for p in found)})"
        raise StatsError(f"{what} lmms-eval logged samples for task {task!r} (looked for "
                         f"**/*_samples_{task}.jsonl); every accuracy run logs exactly one per task.")
    return found[0]


def _is_lmms_log(path: Path) -> bool:
    with path.open() as f:
        first = f.readline()
    try:
        return "filtered_resps" in json.loads(first)
    except json.JSONDecodeError:
        return True  # lmms-eval's, but broken: read_logged_samples names the line


def image_keys(folder: Path, task: str) -> dict[int, str | None]:
    """doc_id -> the image its question asks about (``image`` in the plugin's accounting files under the
    run folder; :func:`hivtp.lmms.accounting.image_key`); {} where no accounting file names them."""
    from ..lmms.accounting import read_samples

    folders = {p.parent for p in folder.glob(f"**/hivtp_samples_{task}*.jsonl") if not _is_lmms_log(p)}
    return {row["doc_id"]: row.get("image") for d in sorted(folders) for row in read_samples(d, task)}


def _accuracy_units(folder: Path, rows: list[dict[str, Any]], found: Collected) -> list[Scores | None]:
    """Each row's resampling units, its score checked against the samples; StatsError when broken. ``rows``
    gains the POPE answer rows (``pope_answer_rows``) with theirs."""
    samples: dict[str, list[dict[str, Any]]] = {}
    images: dict[str, dict[int, str | None]] = {}
    out: list[Scores | None] = []
    for row in rows:
        task, metric = str(row["benchmark"]), str(row["metric"])
        if task not in samples:
            samples[task] = read_logged_samples(logged_samples_file(folder, task))
            images[task] = image_keys(folder, task)
        try:
            scores = scores_from_samples(metric, samples[task], images[task])
        except UnknownAggregationError as e:  # a paper task scored by a judge etc.: a row without interval
            found.no_interval.append(f"{task} {metric} ({folder.name}): {e}")
            out.append(None)
            continue
        except StatsError as e:
            raise StatsError(f"{task} {metric}: {e}") from None
        point, reported = scores.point(), float(row["value"])
        if not math.isclose(point, reported, rel_tol=1e-9, abs_tol=1e-12):
            raise StatsError(f"{task} {metric} is {reported} in accuracy.json but its logged samples give "
                             f"{point}; the samples are not this run's (re-run it with force=true) or the task "
                             "aggregates in a way hivtp.results.stats does not know.")
        reported_n = row.get("n_samples", row.get("n"))
        if reported_n not in (None, "") and metric not in MME_METRICS and int(reported_n) != scores.n:
            raise StatsError(f"{task} scored {reported_n} questions but logged {scores.n} samples.")
        out.append(scores)
    for row, scores in pope_answer_rows(rows, samples, images):
        rows.append(row)
        out.append(scores)
    return out


def pope_answer_rows(rows: list[dict[str, Any]], samples: dict[str, list[dict[str, Any]]],
                     images: dict[str, dict[int, str | None]]) -> list[tuple[dict[str, Any], Scores]]:
    """Per POPE task of a run, a row (and its units) for each of ``POPE_ANSWER_METRICS``, derived from the
    answers its samples log: lmms-eval's F1 silently leaves out an answer that is neither "yes" nor "no",
    and its yes ratio is the ground truth's (``hivtp.results.stats``)."""
    out = []
    for task in dict.fromkeys(str(r["benchmark"]) for r in rows if r["metric"] in POPE_METRICS):
        base = next(r for r in rows if str(r["benchmark"]) == task and r["metric"] in POPE_METRICS)
        for metric in POPE_ANSWER_METRICS:
            scores = scores_from_samples(metric, samples[task], images[task])
            out.append(({**base, "metric": metric, "value": scores.point()}, scores))
    return out


def _accuracy_setup(folder: Path) -> dict[str, Any]:
    """The run's :data:`SETUP` from its resolved config (runs from before the ``accuracy`` config
    section ran on the latency device in the checkpoint's dtype), its identity (the world) and its
    manifest (the weights' digest)."""
    written = json.loads((folder / "config.json").read_text())
    cfg = written["config"]
    accuracy = cfg.get("accuracy") or {}
    device = accuracy.get("device") or (cfg.get("latency") or {}).get("device", "cpu")
    inputs = recorded_inputs(folder) or {}
    digests = {"weights_digest": read_manifest(folder).get(WEIGHTS), "checkpoint_files_digest": inputs.get(CHECKPOINT_FILES),
               "data_digest": inputs.get(DATA)}
    return {"limit": (cfg.get("benchmark") or {}).get("limit"), "device": device, "dtype": accuracy.get("dtype", "auto"),
            **{column: d[:12] if d else None for column, d in digests.items()},
            "world": _recorded_world(written.get("identity") or {})}


def _recorded_world(ident: dict[str, Any]) -> str:
    """The world a run's offline benchmarks were drawn in, as its identity records it
    (``hivtp.run.identity``): ``plain`` where it names none (the one world before worlds were recorded,
    left out of identities so that those runs kept their hash). Rows on other benchmarks get none
    (``read_runs``)."""
    return (ident.get("accuracy") or {}).get("world") or "plain"


def read_runs(runs_root: Path) -> Collected:
    """One pass over every run folder: rows of complete runs, and every other folder with its reason."""
    found = Collected()
    for folder in run_folders(runs_root):
        if not (folder / MANIFEST).exists():
            found.unfinished.append(folder)
            continue
        problems = verify_run(folder)  # each names its file, relative to the folder
        if problems:
            found.broken[folder] = problems
            continue
        if read_manifest(folder)["status"] == "invalid":
            found.invalid.append(folder)
            continue
        try:
            parts = {kind: read_part(folder, kind) or [] for kind in found.rows}
            units = _accuracy_units(folder, parts["accuracy"], found)
        except IncompleteRunError as e:
            found.broken[folder] = e.problems
            continue
        except StatsError as e:
            found.broken[folder] = [str(e)]
            continue
        setup = _accuracy_setup(folder) if parts["accuracy"] else {}
        for row in parts["accuracy"]:
            # a run may mix offline and hub tasks: only the offline benchmarks' images have a world
            row.update(setup, world=setup["world"] if is_offline_task(row.get("benchmark")) else None)
        for kind, rows in parts.items():
            found.rows[kind].extend(rows)
        found.scores.extend(units)
    return found


# ----------------------------------------------------------------------------- statistics per row
def _reference_key(row: dict[str, Any]) -> tuple:
    """Rows compared with a reference share it: the same model, benchmark and metric, evaluated the same
    way (question limit, device, dtype), so that a difference is the method's alone."""
    return tuple(str(row.get(k)) for k in ("profile", "model", "weights", "benchmark", "metric", *SETUP))


#: the parameters that set how many tokens a method keeps: a token count, or (Qwen2.5-VL) a keep ratio
BUDGET_KEYS = ("budget", "keep")


def _is_default_hivtp(row: dict[str, Any]) -> bool:
    """HIVTP with its default geometry: no parameter but (maybe) the budget or keep ratio."""
    return row["method"] == "hivtp" and set(_params(row)) <= set(BUDGET_KEYS)


def _params(row: dict[str, Any]) -> dict[str, Any]:
    p = row.get("params")
    return json.loads(p) if isinstance(p, str) and p else dict(p) if isinstance(p, dict) else {}  # NaN: none


def budget_axis(row: dict[str, Any]) -> Any:
    """The row's budget axis: ``budget``, or ``keep=r`` for a keep ratio (Qwen2.5-VL); None at a
    method's default (HIVTP's rule). Tables, differences and the ledger all read it from here."""
    p = _params(row)
    if p.get("budget") is not None:
        b = p["budget"]
        return int(b) if isinstance(b, float) and b.is_integer() else b
    return None if p.get("keep") is None else f"keep={p['keep']}"


def _references(rows: list[dict[str, Any]], scores: list[Scores | None]) -> dict[str, dict[tuple, int]]:
    """Row index of each reference run per (profile, model, weights, benchmark, metric[, budget]);
    of several candidates (the same configuration run twice), the latest."""
    refs: dict[str, dict[tuple, int]] = {"hivtp": {}, "none": {}}
    for i, row in enumerate(rows):
        if scores[i] is None:
            continue
        if row["method"] == "none" and not _params(row):
            name, key = "none", _reference_key(row)
        elif _is_default_hivtp(row) and budget_axis(row) is not None:
            name, key = "hivtp", _reference_key(row) + (str(budget_axis(row)),)
        else:
            continue
        j = refs[name].get(key)
        if j is None or str(rows[j].get("date")) < str(row.get("date")):
            refs[name][key] = i
    return refs


@dataclass
class _Group:
    """Rows scored on the same units: one set of resamples serves all their intervals (the draws
    depend only on the units and the seed, so each interval is the one bootstrap_ci / paired_ci give;
    drawing once per group instead of once per interval is what keeps a full collect fast)."""

    strata: Any
    statistics: list = field(default_factory=list)  # weights [R, U] -> [R]
    targets: list = field(default_factory=list)  # (row index, column prefix, full-sample value or None)


def add_statistics(rows: list[dict[str, Any]], scores: list[Scores | None], resamples: int = RESAMPLES,
                   seed: int = SEED, level: float = LEVEL) -> list[str]:
    """Fill ``n``, ``ci_low``/``ci_high`` and the paired differences into ``rows`` (in place); return
    the pairs that could not be made (different questions), to be reported."""
    refs = _references(rows, scores)
    unpaired, groups = [], {}
    for i, (row, sc) in enumerate(zip(rows, scores)):
        row["n"] = sc.n if sc is not None else row.get("n_samples", row.get("n"))
        row.pop("n_samples", None)
        if sc is None:
            continue
        row["ci_unit"] = sc.unit
        group = groups.setdefault(sc.keys, _Group(sc.strata))
        group.statistics.append(sc.value)
        group.targets.append((i, "ci", None))
        for name in ("hivtp", "none"):
            j = refs[name].get(_reference_key(row) + ((str(budget_axis(row)),) if name == "hivtp" else ()))
            if j is None or j == i:
                continue
            try:
                a, ref = sc.paired_with(scores[j])
            except StatsError as e:
                unpaired.append(f"{row['method']} {row['params']} {row['benchmark']} vs {name}: {e}")
                continue
            pair = groups.setdefault(a.keys, _Group(a.strata))
            pair.statistics.append(lambda w, a=a, b=ref: a.value(w) - b.value(w))
            pair.targets.append((i, f"diff_vs_{name}", a.point() - ref.point()))
    for group in groups.values():
        values = bootstrap(group.statistics, group.strata, resamples, seed)  # [statistics, resamples]
        for (i, prefix, point), v in zip(group.targets, values):
            low, high = interval(v, level)
            if prefix == "ci":
                rows[i]["ci_low"], rows[i]["ci_high"] = low, high
            else:
                rows[i][prefix], rows[i][f"{prefix}_low"], rows[i][f"{prefix}_high"] = point, low, high
    return unpaired


# ----------------------------------------------------------------------------- frames and files
def tidy(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Harness columns first (missing ones empty), any extra backend columns after, stable order."""
    frame = pd.DataFrame(rows)
    for c in columns:
        if c not in frame.columns:
            frame[c] = None
    extra = sorted(c for c in frame.columns if c not in columns)
    frame = frame[columns + extra]
    if len(frame):
        frame = frame.sort_values([c for c in IDENTITY if c in frame.columns], key=lambda s: s.astype(str), kind="stable")
    return frame.reset_index(drop=True)


#: a latency measurement is one configuration on one device; a later run of it supersedes an earlier one
#: one latency table (and figure): rows that differ in any of these are different measurements (the
#: machine by name: ``device`` says only cpu or cuda; the tokens generated and the prompt's text tokens)
LATENCY_PROTOCOL = ["profile", "model", "device", "dtype", "batch", "backend", *LATENCY_MACHINE]
LATENCY_KEY = IDENTITY + ["profile", "device", "dtype", "batch", "backend", *LATENCY_MACHINE, "stage"]
#: one accuracy table cell: a later run of it (another limit, device or dtype) supersedes an earlier one
ACCURACY_KEY = IDENTITY + ["profile", "weights", "benchmark", "metric"]


def latency_protocols(lat: pd.DataFrame) -> list[tuple[tuple[str, ...], pd.DataFrame]]:
    """Latency rows split by ``LATENCY_PROTOCOL``: [(its name, its rows)]. A name is (profile, model,
    device, dtype, batch, backend), plus ``device_name ...`` / ``new_tokens ...`` / ``prompt_tokens ...``
    where the model's protocols differ in it (two GPUs, two decode lengths), as ``setups`` names accuracy's."""
    if lat.empty:
        return []
    parts = [(tuple(str(v) for v in key), rows) for key, rows in lat.groupby(LATENCY_PROTOCOL, dropna=False, sort=True)]
    base = len(LATENCY_PROTOCOL) - len(LATENCY_MACHINE)
    out = []
    for key, rows in parts:
        same_model = [k for k, _ in parts if k[:2] == key[:2]]
        differ = [i for i in range(base, len(key)) if len({k[i] for k in same_model}) > 1]
        out.append((key[:base] + tuple(_setup_value(LATENCY_PROTOCOL[i], rows[LATENCY_PROTOCOL[i]].iloc[0]) for i in differ), rows))
    return out


def latest_measurements(frame: pd.DataFrame, key: list[str] = LATENCY_KEY) -> pd.DataFrame:
    """Keep, per configuration (``key``), the rows of its latest run (by ``date``; ISO strings sort in
    time). Without this, a re-run (e.g. after adding a method to an interleaved latency run, or an
    accuracy run at another question limit) would leave two runs' numbers under one table row, mixed.
    ``frame`` is a :func:`tidy` frame (every column present). The rows dropped are said on stderr."""
    if frame.empty:
        return frame
    when = frame["date"].astype(str)
    latest = when.groupby([frame[c].astype(str) for c in key], dropna=False).transform("max")
    dropped = int((when != latest).sum())
    if dropped:
        say(f"{dropped} row(s) superseded by a later run of the same configuration (kept: the latest; "
            "collect another runs root to keep them apart)")
    return frame[when == latest].reset_index(drop=True)


def write_table_csv(frame: pd.DataFrame, path: Path) -> None:
    write_text(Path(path), frame.to_csv(index=False))


def say(text: str) -> None:
    print(f"[hivtp.results.collect] {text}", file=sys.stderr, flush=True)


def _report(found: Collected, strict: bool) -> None:
    """Say what gave no rows; raise for broken runs unless ``strict`` is off (then say it loudly)."""
    if found.unfinished:
        say(f"{len(found.unfinished)} run folder(s) without {MANIFEST} (still running or killed; no rows): "
            + ", ".join(p.name for p in found.unfinished))
    if found.invalid:
        say(f"{len(found.invalid)} run(s) marked INVALID (skip_invalid): " + ", ".join(p.name for p in found.invalid))
    for text in found.no_interval:
        say(f"no confidence interval: {text}")
    unparsed = [r for r in found.rows["accuracy"] if r["metric"] == "pope_unparsed" and float(r["value"]) > 0]
    for r in unparsed:
        say(f"{r['benchmark']} {r['method']} {r['params']} ({r['model']}): {float(r['value']):.1%} of the answers are "
            "neither yes nor no; lmms-eval's POPE precision, recall and F1 leave them out (pope_accuracy counts them wrong)")
    if not found.broken:
        return
    if strict:
        raise BrokenRunsError(found.broken)
    say("SKIPPED (strict=False): " + BrokenRunsError.describe(found.broken))


#: committed GPU measurements (``make bench-gpu``: one flat folder per device and day), relative to the
#: results folder; their rows join the runs' latency rows, so tables, figures and the ledger show them
BENCH_MEASUREMENTS = "latency/gpu-*/latency.csv"


def bench_measurements(results_dir: Path) -> list[dict[str, Any]]:
    """The latency rows of every committed ``make bench-gpu`` folder under ``results_dir``, each with its
    folder's name in ``run`` (they were measured by ``hivtp.latency``, as the runs' latency parts are)."""
    from ..latency import read_csv

    rows = []
    for path in sorted(Path(results_dir).glob(BENCH_MEASUREMENTS)):
        for row in read_csv(path):
            rows.append({**row, "run": path.parent.name})
    return rows


def collect(runs_root: Path, results_dir: Path, strict: bool = True, resamples: int = RESAMPLES,
            seed: int = SEED) -> dict[str, pd.DataFrame]:
    """Write results/accuracy.csv and results/latency.csv from every complete run and every committed
    GPU measurement (``BENCH_MEASUREMENTS``); return the frames. Raises IncompleteRunError naming every
    broken run's files unless ``strict=False``."""
    found = read_runs(runs_root)
    _report(found, strict)
    found.rows["latency"].extend(bench_measurements(results_dir))
    unpaired = add_statistics(found.rows["accuracy"], found.scores, resamples, seed)
    for text in unpaired:
        say(f"no paired difference: {text}")
    out = {}
    for kind, columns in (("accuracy", ACCURACY_COLUMNS), ("latency", LATENCY_COLUMNS)):
        frame = tidy(found.rows[kind], columns)
        frame = latest_measurements(frame, LATENCY_KEY if kind == "latency" else ACCURACY_KEY)
        write_table_csv(frame, Path(results_dir) / f"{kind}.csv")
        out[kind] = frame
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hivtp.results",
                                     description="Collect run folders into results/accuracy.csv and latency.csv.")
    parser.add_argument("runs_root", type=Path)
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--lenient", action="store_true", help="skip broken runs (listed on stderr) instead of failing")
    parser.add_argument("--resamples", type=int, default=RESAMPLES)
    args = parser.parse_args(argv)
    try:
        frames = collect(args.runs_root, args.results_dir, strict=not args.lenient, resamples=args.resamples)
    except (IncompleteRunError, MissingArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(frames['accuracy'])} accuracy rows, {len(frames['latency'])} latency rows -> {args.results_dir}")
    return 0

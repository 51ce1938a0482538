"""Tables in the paper's layout: one block per (profile, model); rows = methods x budgets (the
unpruned model first, then the offline reference ``oracle`` where it ran), columns = benchmarks, then
the plain average and the mean % of the unpruned model (per benchmark value / unpruned value,
averaged, so MME's scale does not swamp the others)."""

from __future__ import annotations

import math

import pandas as pd

from ..methods import is_in_llm, is_offline_only
from .collect import budget_axis
from .stats import excludes_zero

# Which metric stands for a benchmark when a task reports several (first present wins).
PRIMARY_METRICS = ("f1", "pope_f1_score", "accuracy", "acc", "exact_match", "mme_perception_score", "mme_total_score", "score")
METHOD_ORDER = ("none", "random", "pool", "fastv", "fastervlm", "visionzip", "divprune", "hivtp")


def primary_metric(metrics: list[str]) -> str:
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name
    return sorted(metrics)[0]


def _budget_label(row: pd.Series) -> str:
    """The row's budget axis (``collect.budget_axis``: ``64``, ``keep=0.25``); ``all`` for the unpruned
    model, ``default`` for a method at its own rule."""
    axis = budget_axis(row)
    if axis is None:
        return "all" if row["method"] == "none" else "default"
    return axis if isinstance(axis, str) else str(int(float(axis)))


#: how an offline-only method (``oracle``) is labelled in tables and figures: a reference, not a competitor.
#: Not "upper bound": on the toy a selection that spreads its tokens can score above it (README, Offline results)
OFFLINE_REFERENCE = "reference, offline only"


#: how a method that drops tokens inside the language model (FastV, PDrop) is labelled
IN_LLM = "in-LLM"


def method_label(name: str) -> str:
    """The name a table row or figure legend shows: offline-only methods are marked as the reference,
    methods acting inside the language model as in-LLM (offline, their rows read differently: below)."""
    if is_offline_only(name):
        return f"{name} ({OFFLINE_REFERENCE})"
    return f"{name} ({IN_LLM})" if is_in_llm(name) else name


def _method_rank(name: str) -> tuple[int, int]:
    """The unpruned model first, then the reference (offline-only methods), then METHOD_ORDER."""
    if name == "none":
        return (0, 0)
    if is_offline_only(name):
        return (1, 0)
    return (2, METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER))


def split_ablations(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(main, ablations): runs on the main benchmark set (:func:`main_benchmarks`) make the main table;
    runs on other benchmarks (e.g. score-layer or geometry ablations on one POPE split, the stages sweep on
    three) go to a second table, with the main unpruned rows of those benchmarks as its reference (a
    benchmark no main run answered has none). Runs are told apart by the ``run`` column."""
    if "run" not in frame.columns or frame.empty:
        return frame, frame.iloc[:0]
    benches = main_benchmarks(frame)
    full = frame.groupby("run")["benchmark"].agg(lambda b: set(map(str, b)) == benches)
    main = frame[frame["run"].map(full)]
    rest = frame[~frame["run"].map(full)]
    if rest.empty:
        return main, rest
    reference = main[(main["method"] == "none") & main["benchmark"].isin(set(rest["benchmark"]))]
    return main, pd.concat([reference, rest])


def main_benchmarks(frame: pd.DataFrame) -> set:
    """The benchmark set of the main table: the one most unpruned runs cover (every run's, where none is
    unpruned); on a tie, the one most runs of any method cover, then the larger. Not the union of every
    run's: one run on an extra benchmark (the stages sweep's other POPE splits) would leave no run
    covering it and the main table empty."""
    sets = {run: frozenset(map(str, b)) for run, b in frame.groupby("run")["benchmark"]}
    unpruned = set(frame.loc[frame["method"] == "none", "run"])
    candidates = [b for run, b in sets.items() if run in unpruned] or list(sets.values())
    every = list(sets.values())
    return set(max(set(candidates), key=lambda b: (candidates.count(b), every.count(b), len(b), sorted(b))))


def _primary_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each benchmark's primary-metric rows, labelled (``budget_label``) as the table's rows."""
    frame = frame.copy()
    frame["budget_label"] = frame.apply(_budget_label, axis=1)
    keep = []
    for bench, group in frame.groupby("benchmark", sort=True):
        keep.append(group[group["metric"] == primary_metric(list(group["metric"].unique()))])
    return _told_apart(pd.concat(keep))


def _told_apart(frame: pd.DataFrame) -> pd.DataFrame:
    """Several runs with the same method and budget (a layers sweep, HIVTP's eager scoring beside its fast
    one) get their params in ``budget_label``: one table row each, never one cell pooling them."""
    dup = frame.groupby(["method", "budget_label"])["params"].transform("nunique") > 1
    frame.loc[dup, "budget_label"] = frame.loc[dup, "budget_label"] + " " + frame.loc[dup, "params"]
    return frame


def _by_benchmark(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """(method, budget_label) x benchmark table of one column of :func:`_primary_rows`."""
    values = pd.to_numeric(frame[column], errors="coerce") if column in frame else pd.Series(float("nan"), frame.index)
    return frame.assign(_v=values).pivot_table(index=["method", "budget_label"], columns="benchmark", values="_v",
                                               aggfunc="mean")


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    order = sorted(table.index, key=lambda k: (_method_rank(k[0]), k[0], _sort_budget(k[1])))
    table = table.loc[order]
    table.index.names = ["method", "budget"]
    table.columns.name = None
    return table


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One model/profile's accuracy rows -> the table of scores (index: method, budget, tokens)."""
    if frame.empty:
        return pd.DataFrame()
    frame = _primary_rows(frame)
    table = _by_benchmark(frame, "value")
    tokens = frame.groupby(["method", "budget_label"])["tokens_kept_mean"].mean()
    benches = list(table.columns)
    # Both averages are over the same benchmarks for every row, or left blank (NaN): a row that ran on
    # one of two benchmarks would otherwise be averaged over that one only and read as comparable.
    if table[benches].abs().max().max() <= 1:  # a plain average only when every column is a 0-1 score
        table["Avg"] = table[benches].mean(axis=1, skipna=False)  # (MME's 0-800 scale would swamp it)
    if "none" in table.index.get_level_values("method"):
        base = table.xs("none", level="method")[benches].iloc[0].dropna()  # the unpruned model's benchmarks
        table["% unpruned"] = (table[base.index] / base * 100).mean(axis=1, skipna=False)
    table.insert(0, "tokens", tokens.reindex(table.index))
    return _ordered(table)


#: marks after a score whose paired 95% CI against HIVTP at the same budget excludes zero
BETTER, WORSE = "↑", "↓"
ACCURACY_LEGEND = (
    "Scores are the value ± half the width of its 95% bootstrap interval over images (the questions of one image "
    "resampled together; over questions for a run that did not record its images: the ci_unit column). "
    f"{BETTER} / {WORSE}: the paired 95% interval of (row − HIVTP with default geometry at the same "
    "budget, same questions) lies above / below zero; without a mark the two are not told apart. "
    "Avg and % unpruned carry no interval and average over every benchmark of the table (% unpruned: every one "
    "the unpruned model ran), blank for a row that misses one. A row marked \"" + OFFLINE_REFERENCE + "\" (oracle: keeps the patches "
    "the scene's objects cover, known by construction) is the offline testbed's reference, not a competing "
    "method and not a bound (a selection that spreads its tokens can score above it): it carries its interval "
    "but no mark."
)
#: added under offline accuracy tables: what an in-LLM row measures on the toy (issue 19, item 7)
OFFLINE_IN_LLM_NOTE = (
    "An \"" + IN_LLM + "\" row (FastV) drops image tokens inside the toy's 3-layer language model after layer K "
    "(K=1 offline). On the toy the tokens it keeps hold far more object patches than random's; on the shipped toy "
    "that is not owed to the attention head it was trained with to look at the objects a question names (at the "
    "last token, whose attention FastV ranks by, that head's own ranking holds about as few object patches as "
    "random's, and FastV's ranking without it holds as many or more): the toy's other layer-1 heads learned to "
    "look at objects. At K=1 and 64 tokens it scores between random and the oracle overall, yet no better than "
    "random on SQA-IMG (multiple choice); at K=2 as well as the unpruned model: dropping there reaches only the "
    "last layer, which puts about a quarter of its attention on the image (layer 1: most of it). Such a row "
    "measures how the toy's language model attends and takes tokens dropped mid-model, not FastV on a pretrained "
    "LLM (`scripts/toy_inllm_supervision.py`, results/toy_inllm_supervision.json; README, Offline results). It "
    "also depends on the toy's training: over three trainings of one recipe (the shipped toy, seed 0, and two "
    "siblings at seeds 1 and 2; results/toy_trajectories.json, `make toy-trajectories`), at 64 tokens on 1,800 "
    "held-out questions, FastV at K=1 keeps 92.1%, 93.7% and 80.4% of the unpruned accuracy (random: 78.0%, "
    "77.6% and 78.2%; HIVTP: 95.5%, 97.8% and 82.7%), so its orders with HIVTP and with random do not hold on "
    "every toy; DivPrune is above it on all three."
)


def significance(low: float, high: float) -> str:
    """The mark of a paired difference's interval: BETTER above zero, WORSE below, '' otherwise."""
    side = excludes_zero(low, high)
    return BETTER if side > 0 else WORSE if side < 0 else ""


def accuracy_text_table(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`accuracy_table` with every benchmark cell written ``score ± half-width`` and marked by
    :func:`significance` against HIVTP at the same budget (strings, ready for :func:`to_markdown`).
    Offline-only rows (the reference) get no mark and their :func:`method_label`."""
    table = accuracy_table(frame)
    if table.empty:
        return table
    rows = _primary_rows(frame)
    benches = [c for c in table.columns if c not in ("tokens", "Avg", "% unpruned")]
    # rows or benchmarks without an interval are absent from these pivots: reindexed to NaN
    half = ((_by_benchmark(rows, "ci_high") - _by_benchmark(rows, "ci_low")) / 2).reindex(index=table.index, columns=benches)
    low, high = (_by_benchmark(rows, f"diff_vs_hivtp{e}").reindex(index=table.index, columns=benches) for e in ("_low", "_high"))
    text = table.astype(object)
    for bench in benches:
        for key in table.index:
            cell = _cell(table.at[key, bench])
            if cell and not math.isnan(half.at[key, bench]):
                cell += f" ± {_cell(half.at[key, bench])}"
            mark = "" if is_offline_only(key[0]) else significance(low.at[key, bench], high.at[key, bench])
            text.at[key, bench] = f"{cell} {mark}" if mark else cell
    return text.rename(index=method_label, level="method")


def _sort_budget(label: str) -> tuple[int, str]:
    head = label.split(" ")[0]
    return (int(head), label) if head.isdigit() else (10**9, label)


def latency_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One model/profile/device's latency rows -> median ms per stage and the decode stage's tokens/s
    (index: method, budget)."""
    if frame.empty:
        return pd.DataFrame()
    frame = frame.copy()
    frame["budget_label"] = frame.apply(_budget_label, axis=1)
    frame = _told_apart(frame)
    table = frame.pivot_table(index=["method", "budget_label"], columns="stage", values="median_ms", aggfunc="median")
    table = table.rename(columns=lambda s: f"{s} ms")
    # the decode stage's rate only (the throughput claim's): the e2e stage's, which counts the prefill, is not it
    decode = frame[frame["stage"] == "decode"]
    if "tokens_per_s" in frame and decode["tokens_per_s"].notna().any():
        table["decode tokens/s"] = decode.groupby(["method", "budget_label"])["tokens_per_s"].median()
    return _ordered(table)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.2f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no rows_\n"
    head = list(table.index.names) + list(table.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in table.iterrows():
        lines.append("| " + " | ".join([str(k) for k in key] + [_cell(v) for v in row]) + " |")
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    """Escape the LaTeX specials that occur in method names, params and benchmark names."""
    for a, b in (("\\", "\\textbackslash "), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#"),
                 ("{", "\\{"), ("}", "\\}"), ("$", "\\$"),
                 ("±", "$\\pm$"), (BETTER, "$\\uparrow$"), (WORSE, "$\\downarrow$"), ("−", "$-$")):
        s = s.replace(a, b)
    return s


def _is_reference(method: str) -> bool:
    """Rows a rule sets apart from the methods: the unpruned model and the reference (its name or
    its :func:`method_label`)."""
    return method == "none" or is_offline_only(method) or method.endswith(f"({OFFLINE_REFERENCE})")


def to_latex(table: pd.DataFrame, caption: str = "") -> str:
    """A booktabs tabular, the unpruned row (and the offline reference's) set apart by a rule (as in the
    paper's tables)."""
    if table.empty:
        return "% no rows\n"
    head = list(table.index.names) + list(table.columns)
    lines = [
        "\\begin{table}[t]", "\\centering", f"\\caption{{{_tex(caption)}}}",
        "\\begin{tabular}{ll" + "r" * len(table.columns) + "}", "\\toprule",
        " & ".join(_tex(str(h)) for h in head) + " \\\\", "\\midrule",
    ]
    previous = None
    for key, row in table.iterrows():
        if previous is not None and key[0] != previous and _is_reference(previous):
            lines.append("\\midrule")
        previous = key[0]
        lines.append(" & ".join([_tex(str(k)) for k in key] + [_tex(_cell(v)) for v in row]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"

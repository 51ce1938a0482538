"""results/ledger.md: every confirmed paper claim (hivtp.claims) beside the measured number.

Paper-profile numbers get the ratio measured / claimed. Offline numbers (small models on CPU) sit
in their own section without a ratio: they show the wiring and are never compared with the paper.

The speed and accuracy claims are about HIVTP at its own rule (no budget: about 270 of 576 tokens),
timed one request at a time with the default attention kernel on the 7B model the paper names
(``PAPER_POINT``, ``claims.CLAIMED_MODELS``), so that point is what the ratio uses; the best over
every budget, batch and kernel is shown beside it with its protocol, never in its place. A method
is called better or worse than another only where the paired 95% bootstrap interval of their
difference on the same questions (hivtp.results.collect's ``diff_vs_*`` columns) excludes zero.
"""

from __future__ import annotations

import json
import math
import re

import pandas as pd

from ..claims import CLAIMS, FAMILY_NAMES, Claim, family_of, is_claimed_model
from ..methods import is_in_llm, is_offline_only
from .collect import BUDGET_KEYS, LATENCY_PROTOCOL, budget_axis, setups
from .stats import excludes_zero
from .tables import OFFLINE_IN_LLM_NOTE, accuracy_table, method_label, primary_metric

RULE = "rule (no budget)"


def _params(p: object) -> dict:
    return json.loads(p) if isinstance(p, str) and p else {}


def _axis(row: pd.Series) -> object:
    """The row's budget axis (``collect.budget_axis``: 64, ``keep=0.25``), "default" at HIVTP's rule."""
    axis = budget_axis(row.to_dict())
    return "default" if axis is None else axis


def _default_hivtp(frame: pd.DataFrame) -> pd.DataFrame:
    """HIVTP rows with the default geometry (no parameter but the budget): the method as published."""
    if frame.empty:
        return frame
    default = frame["params"].map(lambda p: set(_params(p)) <= set(BUDGET_KEYS))  # keep: Qwen2.5-VL ratios
    return frame[(frame["method"] == "hivtp") & default]


def _axis_order(text: str) -> tuple[int, float, str]:
    """Budgets in numeric order (64 before 128), then keep ratios, then the rule."""
    if text.isdigit():
        return (0, float(text), text)
    return (1, 0.0, text) if text != "default" else (2, 0.0, text)


def _configuration(row: pd.Series) -> str:
    b = _axis(row)
    return RULE if b == "default" else f"budget {b}" if isinstance(b, int) else str(b)


# ----------------------------------------------------------------------------- speed
def _stage_rows(frame: pd.DataFrame, word: str) -> pd.DataFrame:
    return frame[frame["stage"].astype(str).str.lower().str.contains(word)]


def _gains(frame: pd.DataFrame, word: str, column: str, higher_better: bool) -> list[dict]:
    """Every default-HIVTP row's gain % over `none` in one stage, per matched protocol
    (``LATENCY_PROTOCOL``, the tables' own, plus the weights): the same model (a family holds several:
    vicuna and mistral NeXT, or toy and tiny offline, whose `none` must not be pooled), device, dtype,
    batch, attention kernel, prompt and decode lengths. Each: {gain, where (its label), rule (at HIVTP's
    own rule?), paper_point (at the paper's operating point?), model}."""
    rows = _stage_rows(frame, word)
    out = []
    protocol_columns = LATENCY_PROTOCOL + ["weights"]
    for key, group in rows.groupby(protocol_columns, dropna=False):
        where = dict(zip(protocol_columns, key))
        base = group[group["method"] == "none"][column].dropna()
        ours = _default_hivtp(group)
        if base.empty or ours.empty:
            continue
        ref = float(base.median())
        for _, r in ours.iterrows():
            v = float(r[column])
            gain = (v / ref - 1) * 100 if higher_better else (1 - v / ref) * 100
            rule = _axis(r) == "default"
            protocol = _protocol_label(where)
            out.append({"gain": gain, "where": protocol if rule else f"{_configuration(r)}, {protocol}", "rule": rule,
                        "paper_point": _at_paper_point(where), "model": str(where["model"])})
    return out


#: the operating point the paper's speed claims are measured at (the release times one request at a time
#: with the model's default attention): the ledger's ratio uses it; a larger batch or another kernel
#: (``make bench-gpu`` times batch 8 and eager too) is shown beside it, never in its place
PAPER_POINT = {"batch": 1, "backend": "sdpa"}


def _at_paper_point(where: dict) -> bool:
    try:
        batch = int(float(where["batch"]))
    except (TypeError, ValueError):
        return False
    return batch == PAPER_POINT["batch"] and str(where["backend"]) == PAPER_POINT["backend"]


def _protocol_label(where: dict) -> str:
    """'llava-1.5-7b, NVIDIA H200 float16 batch 1 sdpa, 60+32 tokens': everything that makes it one
    measurement (the prompt's text tokens + the new tokens decoded, where recorded)."""
    device = where["device_name"] if isinstance(where.get("device_name"), str) else where["device"]
    label = f"{where['model']}, {device} {where['dtype']} batch {where['batch']} {where['backend']}"
    prompt, new = (_num(where.get(k)) for k in ("prompt_tokens", "new_tokens"))
    if not (math.isnan(prompt) or math.isnan(new)):
        label += f", {prompt:.0f}+{new:.0f} tokens"
    return label


def _headline(gains: list[dict], family: str) -> tuple[list[dict], bool]:
    """(the gains the claim is compared with, whether they are of the claimed model): HIVTP at its rule at
    the paper's operating point on the family's claimed model (the 7B the paper names, not a mistral
    sibling or a tiny shape), one per remaining protocol (two GPUs: two); where that model was not measured
    there, every model of the family measured there, shown but given no ratio."""
    at_point = sorted((g for g in gains if g["rule"] and g["paper_point"]), key=lambda g: g["where"])
    claimed = [g for g in at_point if is_claimed_model(g["model"], family)]
    return (claimed, True) if claimed else (at_point, False)


def _speed(claim: Claim, lat: pd.DataFrame, with_ratio: bool = True) -> tuple[str, list[float]]:
    rows = lat[lat["model"].map(family_of) == claim.family] if len(lat) else lat
    if rows.empty:
        return "not measured", []
    gains = (_gains(rows, "ttft", "median_ms", False) if claim.what == "ttft_reduction"
             else _gains(rows, "decode", "tokens_per_s", True))
    if not gains:
        return "not measured", []
    headline, of_claimed = _headline(gains, claim.family)
    point = f"batch {PAPER_POINT['batch']} {PAPER_POINT['backend']}"
    text = ("; ".join(f"{g['gain']:.1f}% at its rule ({g['where']})" for g in headline) if headline
            else f"its rule not measured at {point}")
    if headline and not of_claimed and with_ratio:  # (offline: never the claimed model, never a ratio)
        text += f" (not {FAMILY_NAMES.get(claim.family, claim.family)}: no ratio)"
    best = max(gains, key=lambda g: g["gain"])
    if best not in headline:
        text += f"; best {best['gain']:.1f}% ({best['where']})"
    return text, [g["gain"] for g in headline] if of_claimed else []


# ----------------------------------------------------------------------------- accuracy
def _primary(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [g[g["metric"] == primary_metric(list(g["metric"].unique()))] for _, g in frame.groupby("benchmark")]
    return pd.concat(keep) if keep else frame


def _num(x: object) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _split(rows: pd.DataFrame, ref: str, sign: int = 1) -> tuple[list[str], list[str], list[str]]:
    """Benchmarks where (row - ref) x sign is above zero, below zero, or not told apart (paired 95%
    CI); a benchmark without a paired interval is left out (nothing can be said)."""
    above, below, apart = [], [], []
    for _, r in rows.sort_values("benchmark").iterrows():
        d, lo, hi = (_num(r.get(f"diff_vs_{ref}{e}")) * sign + 0.0 for e in ("", "_low", "_high"))  # + 0.0: no -0
        if math.isnan(d):
            continue
        lo, hi = min(lo, hi), max(lo, hi)
        text = f"{r['benchmark']} {d:+.3g} [{lo:+.3g}, {hi:+.3g}]"
        {1: above, -1: below, 0: apart}[excludes_zero(lo, hi)].append(text)
    return above, below, apart


def _cell(items: list[str]) -> str:
    return "; ".join(items) or "-"


def _config_rank(config: str) -> tuple[int, int]:
    last = config.split()[-1]
    return (0, 0) if config == RULE else (1, int(last) if last.isdigit() else 0)


def _percent_of_unpruned(unpruned: pd.DataFrame, rows: pd.DataFrame) -> str:
    """The tables' "% unpruned" of one HIVTP configuration's ``rows`` against the ``unpruned`` rows, over
    the benchmarks both ran; "(1 of 2 benchmarks)" after it where the configuration ran fewer than the
    unpruned model (an average over another benchmark set is not the tables' number)."""
    shared = set(rows["benchmark"]) & set(unpruned["benchmark"])
    if not shared:
        return "-"
    table = accuracy_table(pd.concat([unpruned[unpruned["benchmark"].isin(shared)], rows[rows["benchmark"].isin(shared)]]))
    if table.empty or "% unpruned" not in table:
        return "-"
    value = table.xs("hivtp", level="method")["% unpruned"].iloc[0]
    if math.isnan(value):
        return "-"
    total = unpruned["benchmark"].nunique()
    return f"{value:.1f}%" + (f" ({len(shared)} of {total} benchmarks)" if len(shared) < total else "")


def _setups(acc: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per model and setup (``collect.setups``): a model measured in one setup is labelled
    by its name, one measured in several by its name and what sets each apart ("toy-llava (limit 20)")."""
    out = []
    for model, own in acc.groupby("model", sort=True) if len(acc) else []:
        for apart, rows in setups(own):
            out.append((f"{model} ({', '.join(apart)})" if apart else model, rows))
    return out


def unpruned_comparisons(acc: pd.DataFrame) -> list[dict]:
    """Per (model and setup, HIVTP configuration): tokens, % of unpruned, and the benchmarks where HIVTP
    is better / worse than the unpruned model / not told apart."""
    out = []
    for model, own in _setups(acc):
        group = _primary(_default_hivtp(own))
        if group.empty:
            continue
        # the unpruned rows and this configuration's default-geometry rows only: the ablation runs at the
        # same budget (other layers / geometry) neither relabel nor mix into it
        unpruned, hivtp = own[own["method"] == "none"], _default_hivtp(own)
        hivtp_configs = hivtp.apply(_configuration, axis=1)
        configs = group.apply(_configuration, axis=1)
        for config, g in sorted(group.groupby(configs), key=lambda kv: _config_rank(kv[0])):
            better, worse, apart = _split(g, "none")
            out.append({"model": model, "config": config, "tokens": g["tokens_kept_mean"].map(_num).mean(),
                        "percent": _percent_of_unpruned(unpruned, hivtp[hivtp_configs == config]),
                        "better": better, "worse": worse, "apart": apart})
    return out


def accuracy_vs_unpruned(acc: pd.DataFrame) -> list[str]:
    """The table: one line per (model, HIVTP configuration)."""
    found = unpruned_comparisons(acc)
    if not found:
        return []
    lines = ["| model | HIVTP | tokens | % of unpruned | worse than unpruned | better than unpruned | not told apart |",
             "|---|---|---|---|---|---|---|"]
    for c in found:
        lines.append(f"| {c['model']} | {c['config']} | {c['tokens']:.0f} | {c['percent']} | {_cell(c['worse'])} | "
                     f"{_cell(c['better'])} | {_cell(c['apart'])} |")
    return lines


def prior_comparisons(acc: pd.DataFrame) -> list[dict]:
    """Per (model and setup, budget, prior method and its setting): the benchmarks where HIVTP (default geometry, same
    budget) is better / worse than the method / not told apart. Offline-only methods (``oracle``, the
    reference, which knows the objects by construction) are references, not prior methods: left out."""
    out = []
    for model, own in _setups(acc):
        rows = _primary(own[~own["method"].isin(["none", "hivtp"]) & ~own["method"].map(is_offline_only)])
        axes = rows.apply(_axis, axis=1) if len(rows) else rows
        # one line per setting: FastV at K=1 and at K=2 (same budget) are two methods, never one line
        settings = rows.apply(_setting, axis=1) if len(rows) else rows
        groups = rows.groupby([axes.astype(str), "method", settings]) if len(rows) else []
        for (budget, method, setting), g in sorted(groups, key=lambda kv: (_axis_order(kv[0][0]), kv[0][1], _natural(kv[0][2]))):
            better, worse, apart = _split(g, "hivtp", sign=-1)  # the column holds method - hivtp
            if better or worse or apart:
                out.append({"model": model, "budget": budget, "method": method, "setting": setting, "better": better,
                            "worse": worse, "apart": apart})
    return out


def _natural(text: str) -> tuple:
    """A sort key that reads the numbers in ``text`` as numbers: ``k_layer=2`` before ``k_layer=10``,
    ``ratio=0.25`` before ``ratio=0.5``."""
    return tuple(float(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", text)))


def _setting(row: pd.Series) -> str:
    """A row's parameters other than its budget (``k_layer=2``), "" for none: what makes two runs of one
    method at one budget different methods."""
    p = {k: v for k, v in _params(row.get("params")).items() if k not in BUDGET_KEYS}
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items()))


def accuracy_vs_prior(acc: pd.DataFrame) -> list[str]:
    """The table: one line per (model, budget, prior method and its setting)."""
    found = prior_comparisons(acc)
    if not found:
        return []
    lines = ["| model | budget | method | HIVTP better | HIVTP worse | not told apart |", "|---|---|---|---|---|---|"]
    for c in found:
        method = method_label(c["method"]) + (f", {c['setting']}" if c["setting"] else "")
        lines.append(f"| {c['model']} | {c['budget']} | {method} | {_cell(c['better'])} | {_cell(c['worse'])} | "
                     f"{_cell(c['apart'])} |")
    return lines


def _accuracy(claim: Claim, acc: pd.DataFrame) -> str:
    rows = acc[acc["model"].map(family_of) == claim.family] if len(acc) else acc
    parts = []
    for c in unpruned_comparisons(rows):
        told = len(c["better"]) + len(c["worse"]) + len(c["apart"])
        if told:
            parts.append(f"{c['model']} {c['config']}: worse on {len(c['worse'])}, better on {len(c['better'])}, "
                         f"not told apart on {len(c['apart'])} of {told} benchmarks")
    if parts:
        return "; ".join(parts) + " (table below)"
    return "not measured" if rows.empty else "no paired intervals (run the unpruned model and collect again)"


def _vs_prior(acc: pd.DataFrame) -> str:
    found = prior_comparisons(acc)
    if not found:
        return "not measured"
    wins, losses = sum(len(c["better"]) for c in found), sum(len(c["worse"]) for c in found)
    total = sum(len(c["better"]) + len(c["worse"]) + len(c["apart"]) for c in found)
    return f"HIVTP better in {wins}, worse in {losses} of {total} (method, budget, benchmark) comparisons (table below)"


def _stage_arms(acc: pd.DataFrame) -> dict[str, list[str]]:
    """The arms of configs/sweep/stages.yaml in ``acc`` (keep_ratio 0.001 keeps no global token), at
    144 tokens: arm -> ["benchmark value [interval]"]. LLaVA-1.5 rows only: the arms are what they are named
    on one 24x24 grid; LLaVA-NeXT splits the 144 over its crops (about 29 each on five), where the budget
    correction drops every local token of "global + local", and a Qwen2.5-VL grid varies per image."""
    llava15 = acc["model"].map(family_of) == "llava15"
    pope = acc[llava15 & (acc["method"] == "hivtp") & acc["benchmark"].astype(str).str.contains("pope")]
    pope = _primary(pope) if len(pope) else pope
    arms: dict[str, list[str]] = {}
    for _, r in pope.iterrows():
        p = _params(r["params"])
        name = {0.25: "global only", 0.125: "global + local", 0.001: "local only"}.get(p.get("keep_ratio"))
        if name and p.get("budget") == 144:
            lo, hi = _num(r.get("ci_low")), _num(r.get("ci_high"))
            ci = "" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]"
            arms.setdefault(name, []).append(f"{r['benchmark']} {float(r['value']):.3f}{ci}")
    return arms


def _hallucination(acc: pd.DataFrame) -> str | None:
    """The stages ablation on POPE at 144 tokens: global only vs global + local, each with its interval,
    per model and setup (labelled where there are several)."""
    found = [(label, arms) for label, own in _setups(acc) if len(arms := _stage_arms(own)) >= 2]
    if not found:
        return None
    text = " | ".join((f"{label}: " if len(found) > 1 else "") + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(arms.items()))
                      for label, arms in found)
    return text + " (144 tokens, 95% intervals; overlapping intervals do not tell the arms apart)"


def measured(claim: Claim, acc: pd.DataFrame, lat: pd.DataFrame, with_ratio: bool = True) -> tuple[str, list[float]]:
    """(measured text, the measured percents the claim's value is compared with: one per protocol at the
    paper's operating point, none for a qualitative claim) for one claim over one profile's rows."""
    if claim.what in ("ttft_reduction", "throughput_gain"):
        return _speed(claim, lat, with_ratio)
    if claim.what == "accuracy":
        return _accuracy(claim, acc), []
    if claim.what == "vs_prior":
        return _vs_prior(acc), []
    text = _hallucination(acc) if len(acc) else None
    return text or "not measured (run the stages sweep on LLaVA-1.5)", []


def _section(title: str, acc: pd.DataFrame, lat: pd.DataFrame, with_ratio: bool) -> list[str]:
    # Offline rows never stand beside the paper's numbers: that section names the claim it is the
    # small-model analogue of, and shows only what was measured.
    head = "| claim | paper | measured | ratio |" if with_ratio else "| analogue of the claim | measured offline |"
    lines = [f"## {title}", "", head, "|---|---|---|---|" if with_ratio else "|---|---|"]
    for claim in CLAIMS:
        text, values = measured(claim, acc, lat, with_ratio)
        paper = f"{claim.value}%" if claim.value is not None else "qualitative"
        if with_ratio:
            ratio = " / ".join(f"{v / claim.value:.2f}" for v in values) if values and claim.value else "-"
            lines.append(f"| {claim.text} | {paper} | {text} | {ratio} |")
        else:
            lines.append(f"| {claim.phrase(number=False)} | {text} |")
    lines.append("")
    for caption, table in (
        (("Accuracy: HIVTP (default geometry) vs the unpruned model, paired 95% CI of the difference on the "
          "same questions"), accuracy_vs_unpruned(acc)),
        ("Accuracy: HIVTP vs prior methods at the same budget, paired 95% CI of (HIVTP − method)", accuracy_vs_prior(acc)),
    ):
        if table:
            lines += [f"### {caption}", "", *table, ""]
    if not with_ratio and len(acc) and acc["method"].map(is_in_llm).any():
        lines += [OFFLINE_IN_LLM_NOTE, ""]
    return lines


TRAJECTORIES = "results/toy_trajectories.json"  # make toy-trajectories (scripts/toy_trajectories.py)


def trajectory_lines(record: dict, method: str = "hivtp", offline: pd.DataFrame | None = None) -> list[str]:
    """The offline section's "across toys" table from a ``make toy-trajectories`` record
    (:func:`hivtp.toy.trajectories.record`): ``method`` against every other configuration at the
    record's budget, with the mean difference over toys, each toy's sign and the verdict (better or
    worse only where every toy's paired interval says so)."""
    toys = [t["model"] for t in record["toys"]]
    name = f"{method}@{record['budget']}"
    sign = {1: "+", 0: "0", -1: "-"}
    rows = []
    for pair in record["pairs"]:
        if name not in (pair["a"], pair["b"]):
            continue
        flip = 1 if pair["a"] == name else -1  # differences as (method - other)
        other = pair["b"] if flip == 1 else pair["a"]
        mean, low, high = (flip * v for v in pair["mean"])
        low, high = min(low, high), max(low, high)
        signs = [flip * s for s in pair["signs"]]
        verdict = {1: "better on every toy", -1: "worse on every toy"}.get(flip * pair["verdict"],
                  f"not told apart on every toy (better on {signs.count(1)}, worse on {signs.count(-1)})")
        rows.append(f"| {other} | {100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {' '.join(map(sign.get, signs))} | {verdict} |")
    heading = f"### Across toys: {method} vs each selection at {record['budget']} tokens"
    if not rows:
        return [heading, "", f"The record ({TRAJECTORIES}) holds no {name}: nothing to compare.", ""]
    n = len(record["toys"][0]["answers"]["families"].split(","))
    return [f"{heading}, {len(toys)} toys ({', '.join(toys)}), {n:,} held-out questions ({TRAJECTORIES}, "
            "`make toy-trajectories`)", "",
            "The tables' marks compare methods on the shipped toy only. Here each toy's paired 95% interval of the "
            "difference in share of unpruned accuracy kept (points) decides its sign; better or worse only where every "
            f"toy agrees (how the toys' recipes differ: {TRAJECTORIES.replace('.json', '.md')}). Mean over toys with its "
            "pigeonhole 95% interval (toys and questions resampled).", "",
            *_stale(record, offline), f"| other | {method} − other, points [CI] | per toy | verdict |", "|---|---|---|---|",
            *rows, ""]


def _stale(record: dict, offline: pd.DataFrame | None) -> list[str]:
    """Warnings where the record does not describe this ledger: its first toy is not the weights of the
    offline rows, or a toy's answers came from other answering code than this checkout's."""
    from ..toy.trajectories import code_digest

    first, warnings = record["toys"][0], []
    measured = set() if offline is None or "weights_digest" not in offline else set(offline["weights_digest"].dropna().astype(str))
    if measured and not any(first["weights_sha256"].startswith(d) for d in measured):
        warnings.append(f"**Not the weights of the offline rows above** ({', '.join(sorted(measured))}): the first toy "
                        f"here is {first['model']} with weights {first['weights_sha256'][:12]}. Measure again with "
                        "`make toy-trajectories`.")
    code = code_digest()
    older = [t["model"] for t in record["toys"] if t.get("measured", {}).get("code_digest", code) != code]
    if older:
        warnings.append(f"**Measured with other code than this checkout's** ({', '.join(older)}): a method may have "
                        "changed since. Measure again with `make toy-trajectories`.")
    return [line for text in warnings for line in (text, "")]


def ledger_markdown(acc: pd.DataFrame, lat: pd.DataFrame, trajectories: dict | None = None) -> str:
    """The whole ledger. Rows are split by their `profile` column; offline never gets a ratio.
    ``trajectories``: a ``make toy-trajectories`` record, whose table ends the offline section."""
    def part(frame: pd.DataFrame, profile: str) -> pd.DataFrame:
        return frame[frame["profile"] == profile] if len(frame) else frame

    lines = [
        "# Claims ledger", "",
        ("Confirmed claims of HIVTP (arXiv 2509.23663, abstract and README; hivtp/claims.py) beside what this "
         "harness measured. The speed and accuracy claims are about HIVTP at its own rule (no budget, about 270 of "
         "576 tokens), timed at batch 1 with sdpa attention on the 7B model the paper names: the ratio uses that point "
         "and the best over every budget, batch and kernel stands beside it, labelled. Better / worse is said only where the paired 95% bootstrap "
         "interval of the difference on the same questions excludes zero (the numbers after each benchmark: "
         "difference [interval])."),
        "Regenerate with `make figures`. No other paper number is confirmed; none is invented here.", "",
    ]
    lines += _section("Paper profile (real checkpoints / real-shape latency on GPU)", part(acc, "paper"), part(lat, "paper"), True)
    lines += _section("Offline profile (small models on CPU: wiring only, NOT comparable with the paper)",
                      part(acc, "offline"), part(lat, "offline"), False)
    if trajectories:
        lines += trajectory_lines(trajectories, offline=part(acc, "offline"))
    return "\n".join(lines)

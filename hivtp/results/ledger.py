"""results/ledger.md: every confirmed paper claim (hivtp-method.md) beside the measured number.

Paper-profile numbers get the ratio measured / claimed. Offline numbers (small models on CPU) sit
in their own section without a ratio: they show the wiring and are never compared with the paper.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pandas as pd

from .tables import accuracy_table


@dataclass(frozen=True)
class Claim:
    family: str  # llava15 | llava_next
    what: str  # ttft_reduction | throughput_gain | accuracy | hallucination
    text: str
    value: float | None  # percent; None for qualitative claims


CLAIMS = (
    Claim("llava15", "ttft_reduction", "LLaVA-v1.5-7B: TTFT reduced by up to 50.0%", 50.0),
    Claim("llava15", "throughput_gain", "LLaVA-v1.5-7B: decode throughput up by up to 60.9%", 60.9),
    Claim("llava_next", "ttft_reduction", "LLaVA-Next-7B: TTFT reduced by up to 55.1%", 55.1),
    Claim("llava_next", "throughput_gain", "LLaVA-Next-7B: decode throughput up by up to 47.3%", 47.3),
    Claim("llava15", "accuracy", "LLaVA-v1.5-7B: no accuracy loss (gains on some benchmarks)", None),
    Claim("llava_next", "accuracy", "LLaVA-Next-7B: no accuracy loss (gains on some benchmarks)", None),
    Claim("any", "hallucination", "the local stage reduces hallucination (POPE)", None),
)


def family_of(model: str) -> str:
    m = str(model).lower()
    return "llava_next" if ("next" in m or "v1.6" in m) else "llava15"


def _stage_rows(frame: pd.DataFrame, word: str) -> pd.DataFrame:
    return frame[frame["stage"].astype(str).str.lower().str.contains(word)]


def _best_gain(frame: pd.DataFrame, word: str, column: str, higher_better: bool) -> tuple[float, str] | None:
    """Best hivtp improvement over `none` in one stage, per matched protocol (device/dtype/batch)."""
    rows = _stage_rows(frame, word)
    best: tuple[float, str] | None = None
    for key, group in rows.groupby(["device", "dtype", "batch", "backend"], dropna=False):
        base = group[group["method"] == "none"][column].dropna()
        ours = group[group["method"] == "hivtp"]
        if base.empty or ours.empty:
            continue
        ref = float(base.median())
        for _, r in ours.iterrows():
            v = float(r[column])
            gain = (v / ref - 1) * 100 if higher_better else (1 - v / ref) * 100
            if best is None or gain > best[0]:
                best = (gain, f"budget {_budget(r['budget'])}, {key[0]} {key[1]} batch {key[2]}")
    return best


def _accuracy_measure(frame: pd.DataFrame) -> str | None:
    table = accuracy_table(frame)
    if table.empty or "% unpruned" not in table or "hivtp" not in table.index.get_level_values("method"):
        return None
    rel = table.xs("hivtp", level="method")["% unpruned"].dropna()
    return ", ".join(f"budget {b}: {v:.1f}% of unpruned" for b, v in rel.items()) or None


def _hallucination_measure(frame: pd.DataFrame) -> str | None:
    pope = frame[(frame["method"] == "hivtp") & frame["benchmark"].astype(str).str.contains("pope")]
    pope = pope[pope["metric"].isin(["f1", "pope_f1_score", "accuracy"])] if len(pope) else pope
    arms = {}
    for params, group in pope.groupby("params"):
        p = json.loads(params) if isinstance(params, str) and params else {}
        name = {0.25: "global only", 0.125: "global + local"}.get(p.get("keep_ratio"))
        if name and p.get("budget") == 144:
            arms[name] = float(group["value"].mean())
    if len(arms) < 2:
        return None
    return ", ".join(f"{k}: {v:.3f}" for k, v in sorted(arms.items())) + " (POPE mean, 144 tokens)"


def measured(claim: Claim, acc: pd.DataFrame, lat: pd.DataFrame) -> tuple[str, float | None]:
    """(measured text, measured percent or None) for one claim over one profile's rows."""
    if claim.what in ("ttft_reduction", "throughput_gain"):
        rows = lat[lat["model"].map(family_of) == claim.family] if len(lat) else lat
        if rows.empty:
            return "not measured", None
        best = (_best_gain(rows, "ttft", "median_ms", False) if claim.what == "ttft_reduction"
                else _best_gain(rows, "decode", "tokens_per_s", True))
        return ("not measured", None) if best is None else (f"{best[0]:.1f}% ({best[1]})", best[0])
    if claim.what == "accuracy":
        rows = acc[acc["model"].map(family_of) == claim.family] if len(acc) else acc
        texts = [f"{m}: {t}" for m, g in rows.groupby("model") if (t := _accuracy_measure(g))] if len(rows) else []
        return ("; ".join(texts) or "not measured"), None
    text = _hallucination_measure(acc) if len(acc) else None
    return text or "not measured (run the stages sweep)", None


def _section(title: str, acc: pd.DataFrame, lat: pd.DataFrame, with_ratio: bool) -> list[str]:
    # Offline rows never stand beside the paper's numbers: that section names the claim it is the
    # small-model analogue of, and shows only what was measured.
    head = "| claim | paper | measured | ratio |" if with_ratio else "| analogue of the claim | measured offline |"
    lines = [f"## {title}", "", head, "|---|---|---|---|" if with_ratio else "|---|---|"]
    for claim in CLAIMS:
        text, value = measured(claim, acc, lat)
        paper = f"{claim.value}%" if claim.value is not None else "qualitative"
        if with_ratio:
            ratio = f"{value / claim.value:.2f}" if value is not None and claim.value else "-"
            lines.append(f"| {claim.text} | {paper} | {text} | {ratio} |")
        else:
            lines.append(f"| {_without_number(claim.text)} | {text} |")
    return lines + [""]


def _without_number(text: str) -> str:
    """'TTFT reduced by up to 50.0%' -> 'TTFT reduced' (the paper's figure stays in its own section)."""
    return re.sub(r"\s+by up to [0-9.]+%", "", text)


def ledger_markdown(acc: pd.DataFrame, lat: pd.DataFrame) -> str:
    """The whole ledger. Rows are split by their `profile` column; offline never gets a ratio."""
    def part(frame: pd.DataFrame, profile: str) -> pd.DataFrame:
        return frame[frame["profile"] == profile] if len(frame) else frame

    lines = [
        "# Claims ledger", "",
        "Confirmed claims of HIVTP (arXiv 2509.23663, abstract and README) beside what this harness measured.",
        "Regenerate with `make figures`. No other paper number is confirmed; none is invented here.", "",
    ]
    lines += _section("Paper profile (real checkpoints / real-shape latency on GPU)", part(acc, "paper"), part(lat, "paper"), True)
    lines += _section("Offline profile (small models on CPU: wiring only, NOT comparable with the paper)",
                      part(acc, "offline"), part(lat, "offline"), False)
    return "\n".join(lines)


def _budget(x: object) -> object:
    """64.0 -> 64 (CSV round trips turn integer budgets into floats); no budget (NaN, None: the
    method's own default geometry) -> "default", as the tables write it."""
    if x is None or (isinstance(x, float) and x != x):
        return "default"
    return int(x) if isinstance(x, float) and x.is_integer() else x

"""CSV (atomic) and a markdown summary with the paper's claims beside the measured ratios."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..atomic import atomic_open
from ..claims import CLAIMED_FAMILIES, FAMILY_NAMES, claim, family_of
from .measure import COLUMNS

__all__ = ["write_csv", "read_csv", "summarize", "PAPER_CLAIMS", "family_of"]

#: The paper's headline speed claims (HIVTP vs. the unpruned model) as fractions, per model family
#: (hivtp.claims holds them; this is a view of it).
PAPER_CLAIMS = {f: {w: claim(f, w).fraction for w in ("ttft_reduction", "throughput_gain")} for f in CLAIMED_FAMILIES}


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows to ``path`` atomically (:mod:`hivtp.atomic`: temp file, rename, the user's umask)."""
    path = Path(path)
    columns = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return path


#: columns that hold text even when it reads as a number: a commit such as ``40123e567890`` is not 4e+567895
TEXT_COLUMNS = frozenset({"model", "weights", "profile", "method", "params", "stage", "dtype", "attn", "backend", "device",
                          "device_name", "torch", "transformers", "commit", "date", "image_size", "run"})


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows back from :func:`write_csv`: numbers as numbers (``TEXT_COLUMNS`` stay text) and blanks as None."""
    def value(key: str, v: str) -> Any:
        if v == "":
            return None
        if key in TEXT_COLUMNS:
            return v
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


#: what makes rows one measurement setting (a table of ratios against its own ``none``): the model, batch,
#: kernel and device, and the machine, prompt and decode lengths and image size (``collect.LATENCY_MACHINE``'s)
SETTING = ("model", "batch", "dtype", "attn", "device", "device_name", "prompt_tokens", "new_tokens", "tokens_total")


def _key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in SETTING)


def _heading(key: tuple) -> str:
    s = dict(zip(SETTING, key))
    where = s["device_name"] or s["device"]
    total = s["tokens_total"]
    total = format(total, "g") if isinstance(total, (int, float)) else total  # a mean over samples: 576.0 -> 576
    return (f"{s['model']}, batch {s['batch']}, {s['dtype']}, {s['attn']}, {where}; {s['prompt_tokens']} text tokens, "
            f"{s['new_tokens']} new, {total} image tokens unpruned")


def _values(rows: Sequence[dict[str, Any]], key: str) -> str:
    """Every value of ``key`` among the ``rows`` that have one, in order of appearance ("a; b" where rows
    differ), so that the header never credits every row to the first one's commit; "" for none."""
    seen = list(dict.fromkeys(str(r[key]) for r in rows if r.get(key) is not None))
    if len(seen) <= 1:
        return "".join(seen)
    return f"{'; '.join(seen)} (rows differ: see the CSV's {key} column)"


def _dates(rows: Sequence[dict[str, Any]]) -> str:
    """The rows' dates as one date or a range (each job of a bench is stamped when it ran)."""
    dates = sorted({str(r["date"]) for r in rows if r.get("date")})
    return "" if not dates else dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a is not None and b not in (None, 0) else math.nan


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _by_method(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        stages = out.setdefault((r["method"], r["params"]), {})
        if r["stage"] in stages:  # two timings of one thing in one setting: which one a ratio used would be chance
            raise ValueError(f"two {r['stage']} rows of {r['method']} {r['params']} in one setting ({_heading(_key(r))}); "
                             "a CSV holds each measurement once (a re-run replaces its rows).")
        stages[r["stage"]] = r
    return out


def _setting_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    methods = _by_method(rows)
    base = methods.get(("none", "{}")) or next((m for (n, _), m in methods.items() if n == "none"), None)
    header = [
        "| method | params | tokens kept | TTFT ms (p10-p90) | TTFT ratio | FLOPs-ideal ratio | select ms | "
        "select % of unpruned TTFT | decode tok/s | decode ratio | generation tok/s | generation ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines, ratios = [], []
    for (name, params), st in methods.items():
        ttft, sel, dec, e2e = st["ttft"], st["select"], st["decode"], st["e2e"]
        r = {
            "method": name, "params": params, "budget": ttft.get("budget"),
            "ttft_ratio": _ratio(ttft["median_ms"], base["ttft"]["median_ms"]) if base else math.nan,
            "flops_ratio": _ratio(ttft["flops"], base["ttft"]["flops"]) if base else math.nan,
            "select_pct": 100 * _ratio(sel["median_ms"], base["ttft"]["median_ms"]) if base else math.nan,
            "decode_ratio": _ratio(dec["tokens_per_s"], base["decode"]["tokens_per_s"]) if base else math.nan,
            "gen_ratio": _ratio(e2e["tokens_per_s"], base["e2e"]["tokens_per_s"]) if base else math.nan,
        }
        ratios.append(r)
        lines.append(
            f"| {name} | `{params}` | {_fmt(ttft['tokens_kept'], '.1f')} | {_fmt(ttft['median_ms'], '.2f')} "
            f"({_fmt(ttft['p10_ms'], '.2f')}-{_fmt(ttft['p90_ms'], '.2f')}) | {_fmt(r['ttft_ratio'], '.3f')} | "
            f"{_fmt(r['flops_ratio'], '.3f')} | {_fmt(sel['median_ms'], '.2f')} | {_fmt(r['select_pct'], '.2f')} | "
            f"{_fmt(dec['tokens_per_s'], '.1f')} | {_fmt(r['decode_ratio'], '.3f')} | "
            f"{_fmt(e2e['tokens_per_s'], '.1f')} | {_fmt(r['gen_ratio'], '.3f')} |"
        )
    return header + lines, ratios


def _claims(model: str, ratios: list[dict[str, Any]]) -> list[str]:
    family = family_of(model)
    if family not in PAPER_CLAIMS:
        return [f"The paper makes no claim about {FAMILY_NAMES[family]}: the ratios above are this harness's own measurement."]
    paper = PAPER_CLAIMS[family]
    hivtp = [r for r in ratios if r["method"] == "hivtp" and '"eager"' not in r["params"]]

    def reached(metric: str, test) -> str:
        hits = [r for r in hivtp if not math.isnan(r[metric]) and test(r[metric])]
        if not hits:
            return "none"
        # The claim is easiest at the smallest budget; name the largest (least pruning) that reaches it.
        best = max(hits, key=lambda r: (r["budget"] is None, r["budget"] or 0))
        return "rule (no budget)" if best["budget"] is None else f"budget {best['budget']}"

    ttft_red = paper["ttft_reduction"]
    gain = paper["throughput_gain"]
    return [
        f"Paper claims for {FAMILY_NAMES[family]} (HIVTP vs. unpruned): TTFT -{100 * ttft_red:.1f}%, throughput +{100 * gain:.1f}%.",
        "",
        "| claim | paper | measured (hivtp rows, best) | reached at |",
        "|---|---|---|---|",
        _claim_line("TTFT reduction", ttft_red, hivtp, "ttft_ratio", lambda x: 1 - x,
                    reached("ttft_ratio", lambda x: 1 - x >= ttft_red)),
        _claim_line("decode throughput gain", gain, hivtp, "decode_ratio", lambda x: x - 1,
                    reached("decode_ratio", lambda x: x - 1 >= gain)),
        _claim_line("generation throughput gain", gain, hivtp, "gen_ratio", lambda x: x - 1,
                    reached("gen_ratio", lambda x: x - 1 >= gain)),
    ]


def _claim_line(what, paper, hivtp, metric, to_gain, where) -> str:
    """One claim row; TTFT is shown as a change (e.g. -50.0%), throughput as a gain (e.g. +60.9%)."""
    values = [to_gain(r[metric]) for r in hivtp if not math.isnan(r[metric])]
    sign = -1 if what.startswith("TTFT") else 1
    best = f"{sign * 100 * max(values):+.1f}%" if values else "-"
    return f"| {what} | {sign * 100 * paper:+.1f}% | {best} | {where} |"


def _faithful_lines(rows: list[dict[str, Any]]) -> list[str]:
    """What the fast scorer saves against the release's eager path (rows made with ``faithful``)."""
    methods = _by_method(rows)
    lines = []
    for (name, params), stages in methods.items():
        p = json.loads(params)
        if p.get("backend") != "eager":
            continue
        fast = {k: v for k, v in p.items() if k != "backend"}
        twin = methods.get((name, json.dumps(fast, sort_keys=True)))
        if not twin:
            continue
        slow_ms, fast_ms = stages["ttft"]["median_ms"], twin["ttft"]["median_ms"]
        vis = stages["vision"]["median_ms"] + stages["select"]["median_ms"]
        vis_fast = twin["vision"]["median_ms"] + twin["select"]["median_ms"]
        lines.append(
            f"| {name} | `{json.dumps(fast, sort_keys=True)}` | {vis:.2f} | {vis_fast:.2f} | {slow_ms:.2f} | "
            f"{fast_ms:.2f} | {100 * (1 - fast_ms / slow_ms):.1f}% |"
        )
    if not lines:
        return []
    return [
        "",
        "Faithful (release: eager CLIP, whole tower, all attention maps) vs. the fast scorer:",
        "",
        "| method | params | eager vision+select ms | fast vision+select ms | eager TTFT ms | fast TTFT ms | TTFT saved |",
        "|---|---|---|---|---|---|---|",
        *lines,
    ]


def summarize(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per setting (``SETTING``: model, batch, dtype, kernel, machine, lengths) a table of ratios
    against ``none`` and the paper's claims beside them."""
    if not rows:
        return "# Latency summary\n\n(no rows)\n"
    images = _values(rows, "image_size")  # recorded by the families whose token count follows it
    out = [
        "# Latency summary",
        "",
        f"Device: {_values(rows, 'device_name')}; torch {_values(rows, 'torch')}, transformers "
        f"{_values(rows, 'transformers')}, commit {_values(rows, 'commit')}, {_dates(rows)}. "
        f"Weights: {_values(rows, 'weights')}; EOS off." + (f" Image: {images}." if images else ""),
        "",
        "Ratios are method / none (lower TTFT ratio is faster; higher throughput ratio is faster). "
        "FLOPs-ideal ratio: analytic TTFT FLOPs (vision + select + projector + prefill) method / none. "
        "Decode tok/s: tokens after the first over (e2e - TTFT); generation tok/s: new tokens / (TTFT + decode).",
    ]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    for key, group in groups.items():
        table, ratios = _setting_table(group)
        # Offline (tiny-shape, CPU) ratios measure the wiring, not the paper's setting: no claims beside them.
        claims = [] if group[0].get("profile") == "offline" else _claims(key[0], ratios)
        out += ["", f"## {_heading(key)}", "", *table, "", *claims]
        out += _faithful_lines(group)
    if any(r.get("profile") == "offline" for r in rows):
        out += ["", "Offline profile (small models on any device, any model on a CPU): wiring and protocol only, never "
                "compared with the paper."]
    return "\n".join(out) + "\n"


def params_of(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["params"])

"""Figures from the tidy CSVs alone (PNG + PDF): accuracy vs tokens, TTFT / throughput vs tokens,
the layer-ablation curve and the regions x window heat map. Each returns the paths it wrote, or []
when the CSVs hold no rows for it (the caller reports that rather than drawing an empty plot)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..methods import is_offline_only  # noqa: E402
from .collect import BUDGET_KEYS, file_stem, latency_protocols, setups  # noqa: E402
from .tables import method_label, primary_metric, split_ablations  # noqa: E402


def save(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return paths


def _params(frame: pd.DataFrame) -> pd.DataFrame:
    parsed = frame["params"].fillna("{}").map(lambda s: json.loads(s) if isinstance(s, str) and s else {})
    return pd.DataFrame(list(parsed), index=frame.index)


def _primary(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [g[g["metric"] == primary_metric(list(g["metric"].unique()))] for _, g in frame.groupby("benchmark")]
    return pd.concat(keep) if keep else frame


def _setting(params: object, drop: tuple[str, ...] = tuple(BUDGET_KEYS)) -> str:
    """A row's parameters without ``drop`` (the budget or keep ratio: points of one curve), as "k=v ...";
    "" for none."""
    p = json.loads(params) if isinstance(params, str) and params else {}
    return " ".join(f"{k}={v}" for k, v in sorted(p.items()) if k not in drop)


def _curves(rows: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(method, legend label, rows) per curve: one per method, or, where a method's runs have several
    settings besides the budget (a sweep over every benchmark), one per setting, labelled with it.
    Points of different settings are never averaged into one."""
    rows = rows.assign(_setting=rows["params"].map(_setting))
    out = []
    for method, m in rows.groupby("method"):
        settings = sorted(m["_setting"].unique())
        for setting in settings:
            label = method_label(method) + (f" {setting}" if len(settings) > 1 and setting else "")
            out.append((method, label, m[m["_setting"] == setting]))
    return out


def _interval(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(lower, upper) error-bar lengths from ci_low / ci_high (0 where a row has no interval)."""
    lo, hi = rows["ci_low"], rows["ci_high"]
    return (rows["value"] - lo).clip(lower=0).fillna(0), (hi - rows["value"]).clip(lower=0).fillna(0)


def _per_setup(acc: pd.DataFrame) -> list[tuple[tuple[str, ...], pd.DataFrame]]:
    """((profile, model, *what sets the setup apart), rows) per model and setup (``collect.setups``): a
    figure never averages or draws together rows of other question limits, devices, dtypes or weights."""
    out: list = []
    for (profile, model), own in acc.groupby(["profile", "model"]) if len(acc) else []:
        out += [((profile, model, *apart), rows) for apart, rows in setups(own)]
    return out


def _figure_title(key: tuple[str, ...]) -> str:
    profile, model, *apart = key
    return f"{model} [{profile}]" + (f" ({', '.join(apart)})" if apart else "")


def accuracy_curves(acc: pd.DataFrame) -> dict[tuple[str, ...], dict[str, list[tuple[str, str, pd.DataFrame]]]]:
    """What ``accuracy_vs_tokens`` draws: (profile, model[, what sets the setup apart]) -> benchmark ->
    [(method, label, points)], ``points`` one row per tokens-kept value (value, ci_low, ci_high). A
    model measured in several setups (``collect.setups``: question limits, devices, dtypes, weights)
    gets one figure per setup, never points averaged across them. Only the main table's runs
    (``split_ablations``): the score-layer and geometry ablations, run on one benchmark, are not
    points of HIVTP's curve (they have their own figures)."""
    acc = acc.assign(**{c: pd.to_numeric(acc[c], errors="coerce") for c in ("value", "ci_low", "ci_high")})
    out: dict = {}
    for key, rows in _per_setup(_primary(acc)):
        for bench, sub in split_ablations(rows)[0].groupby("benchmark"):
            out.setdefault(key, {})[bench] = [
                (method, label, m.groupby("tokens_kept_mean", as_index=False)[["value", "ci_low", "ci_high"]].mean()
                 .sort_values("tokens_kept_mean")) for method, label, m in _curves(sub)]
    return out


def accuracy_vs_tokens(acc: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Score vs visual tokens kept, one panel per benchmark: error bars (and the unpruned model's
    band) are the 95% bootstrap intervals of the scores. The offline reference (``oracle``) is drawn
    as a black dashed line labelled as such."""
    written: list[Path] = []
    for key, panels in accuracy_curves(acc).items():
        profile, model = key[:2]
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
        for ax, (bench, curves) in zip(axes[0], sorted(panels.items())):
            for method, label, m in curves:
                below, above = _interval(m)
                if method == "none":
                    ax.axhline(m["value"].mean(), ls="--", color="grey", label="none (all tokens)")
                    ax.axhspan((m["value"] - below).mean(), (m["value"] + above).mean(), color="grey", alpha=0.15, lw=0)
                else:
                    style = {"fmt": "--s", "color": "k"} if is_offline_only(method) else {"fmt": "-o"}
                    ax.errorbar(m["tokens_kept_mean"], m["value"], yerr=[below, above], label=label,
                                ms=4, capsize=2, **style)
            metric = _primary(acc[(acc["profile"] == profile) & (acc["model"] == model) & (acc["benchmark"] == bench)])["metric"].iloc[0]
            ax.set(title=f"{bench} ({metric})", xlabel="visual tokens kept")
        axes[0][0].set_ylabel("score (95% CI)")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(_figure_title(key))
        written += save(fig, out_dir, file_stem("accuracy_vs_tokens", *key))
    return written


def _stage(lat: pd.DataFrame, word: str) -> pd.DataFrame:
    return lat[lat["stage"].astype(str).str.lower().str.contains(word)]


def latency_vs_tokens(lat: pd.DataFrame, out_dir: Path) -> list[Path]:
    """TTFT and decode throughput vs tokens kept, one figure per protocol (``collect.latency_protocols``:
    rows of another device, dtype, batch, backend, machine or decode length are never drawn on one line),
    one line per method and setting (HIVTP's eager scoring is not its fast one). The file is named by
    profile and model, plus the rest of the protocol where a model has several."""
    written: list[Path] = []
    ttft, decode = _stage(lat, "ttft"), _stage(lat, "decode")
    if ttft.empty and decode.empty:
        return written
    protocols = latency_protocols(lat)
    for name, part in protocols:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, word, col, label in ((axes[0], "ttft", "median_ms", "TTFT (ms)"), (axes[1], "decode", "tokens_per_s", "decode tokens/s")):
            for _method, curve_label, m in _curves(_stage(part, word)):  # one line per method and setting (eager HIVTP apart)
                pts = m.groupby("tokens_kept")[col].median().sort_index()
                ax.plot(pts.index, pts.values, "o-" if len(pts) > 1 else "o", label=curve_label, ms=4)
            ax.set(xlabel="visual tokens kept", ylabel=label)
        axes[1].legend(fontsize=7)
        profile, model, device, dtype, batch, backend, *machine = name
        fig.suptitle(f"{model} on {device}, {dtype}, batch {batch}, {backend} [{profile}]" + (f" ({', '.join(machine)})" if machine else ""))
        several = sum(k[:2] == name[:2] for k, _ in protocols) > 1
        apart = (device, dtype, f"b{batch}", backend, *machine) if several else ()
        written += save(fig, out_dir, file_stem("latency_vs_tokens", profile, model, *apart))
    return written


def comparable_scores(rows: pd.DataFrame, setup: pd.DataFrame) -> tuple[pd.Series, str] | None:
    """Primary-metric ``rows`` of one setup as numbers that may be averaged across benchmarks, with the
    axis label: each value as % of the unpruned model's on its benchmark (``setup``'s ``none`` rows)
    where every benchmark has one, else the plain score where every value is a 0-1 score, else None
    (MME's 0-800 scale would swamp a mean of raw scores, as ``accuracy_table``'s Avg avoids too)."""
    base = _primary(setup[setup["method"] == "none"]) if len(setup) else setup
    base = base.groupby("benchmark")["value"].mean() if len(base) else pd.Series(dtype=float)
    if len(rows) and rows["benchmark"].isin(base.index).all():
        return rows["value"] / rows["benchmark"].map(base) * 100, "% of unpruned (mean over benchmarks)"
    if (rows["value"].abs() <= 1).all():
        return rows["value"], "mean score"
    missing = sorted(set(rows["benchmark"]) - set(base.index))
    print(f"[hivtp.results.figures] {', '.join(sorted(set(rows['model'])))}: an ablation over scores of other scales "
          f"without the unpruned rows of {', '.join(missing)} is not drawn (run method=none there).", file=sys.stderr)
    return None


def _hivtp_rows_with(acc: pd.DataFrame, keys: list[str], only_keys: bool = False, say: bool = True) -> pd.DataFrame:
    """HIVTP's primary-metric rows whose params set every one of ``keys`` (as columns) and, with
    ``only_keys``, nothing else; on the benchmarks every one of those runs answered
    (:func:`_on_shared_benchmarks`: the runs a figure leaves out never narrow its benchmarks)."""
    rows = _primary(acc[acc["method"] == "hivtp"]) if len(acc) else acc
    if rows.empty:
        return rows
    p = _params(rows)
    if not set(keys) <= set(p.columns):
        return rows.iloc[:0]
    rows = rows.join(p[keys]).dropna(subset=keys)
    if only_keys:
        rows = rows[rows["params"].map(lambda q: _setting(q, drop=tuple(keys)) == "")]
    return _on_shared_benchmarks(rows, say)


def _on_shared_benchmarks(rows: pd.DataFrame, say: bool = True) -> pd.DataFrame:
    """``rows`` on the benchmarks every configuration (params) among them has: a point is a mean over
    benchmarks, and means over different benchmark sets are not one axis. What is left out is said."""
    if rows.empty:
        return rows
    sets = rows.groupby("params")["benchmark"].agg(lambda b: frozenset(map(str, b)))
    shared = frozenset.intersection(*sets)
    dropped = sorted(frozenset.union(*sets) - shared)
    if dropped and say:
        print(f"[hivtp.results.figures] {', '.join(sorted(set(map(str, rows['model']))))}: {', '.join(dropped)} left out "
              f"of the ablation figures (not every configuration ran on it; the points average over "
              f"{', '.join(sorted(shared)) or 'nothing'}).", file=sys.stderr)
    return rows[rows["benchmark"].astype(str).isin(shared)]


def layer_curves(acc: pd.DataFrame) -> dict[tuple[str, ...], list[tuple[str, pd.Series]]]:
    """What ``layer_ablation`` draws: (profile, model[, what sets the setup apart]) -> [(label, mean
    score by middle layer)], one line per window length (3-layer window, single layer) and per other
    setting (budget, geometry): runs at different budgets or setups are never averaged into one point.
    The mean is over benchmarks of :func:`comparable_scores` (% of unpruned where the setup has the
    unpruned rows); a setup whose scores cannot be averaged is left out."""
    out: dict = {}
    for key, part in _per_setup(acc):
        g = _hivtp_rows_with(part, ["layers"])
        scores = comparable_scores(g, part) if len(g) else None
        if scores is None:
            continue
        g = g.assign(value=scores[0], layers=g["layers"].map(lambda x: [int(v) for v in str(x).replace(",", "-").strip("[]").replace(" ", "").split("-") if v]))
        g = g.assign(n=g["layers"].map(len), mid=g["layers"].map(lambda v: sum(v) / len(v)),
                     _setting=g["params"].map(lambda p: _setting(p, drop=("layers",))))
        settings = sorted(g["_setting"].unique())
        for n, label in ((3, "3-layer window (middle layer)"), (1, "single layer")):
            for setting in settings:
                pts = g[(g["n"] == n) & (g["_setting"] == setting)].groupby("mid")["value"].mean().sort_index()
                if len(pts):
                    out.setdefault(key, []).append((f"{label}, {setting}" if len(settings) > 1 else label, pts))
    return out


def layer_ablation(acc: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Score-layer window (its middle layer) -> mean score (:func:`layer_curves`); single layers as a second line;
    [CLS] attention (fastervlm) on the same benchmarks and budgets as a reference line."""
    written: list[Path] = []
    parts = dict(_per_setup(acc))
    for key, lines in layer_curves(acc).items():
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for label, pts in lines:
            ax.plot(pts.index, pts.values, "o-", label=label, ms=4)
        part = parts[key]  # the reference line comes from the same setup as the curves
        g = _hivtp_rows_with(part, ["layers"], say=False)  # layer_curves said what it left out
        ylabel = comparable_scores(g, part)[1]
        cls = part[(part["method"] == "fastervlm") & part["benchmark"].isin(g["benchmark"].unique())
                   & part["budget"].isin(g["budget"].unique())]
        cls_scores = comparable_scores(_primary(cls), part) if len(cls) else None
        if cls_scores is not None and cls_scores[1] == ylabel:
            ax.axhline(cls_scores[0].mean(), ls=":", color="k", label="[CLS] attention (fastervlm)")
        ax.set(xlabel="0-based encoder layer", ylabel=ylabel, title=f"score layers: {_figure_title(key)}")
        ax.legend(fontsize=7)
        written += save(fig, out_dir, file_stem("layer_ablation", *key))
    return written


def geometry_heatmap(acc: pd.DataFrame, out_dir: Path) -> list[Path]:
    """regions x window -> mean score (:func:`comparable_scores`), one panel per keep_ratio: the runs that set the geometry
    and nothing else (a run with a budget, or other score layers, measures something else)."""
    written: list[Path] = []
    for key, part in _per_setup(acc):
        g = _hivtp_rows_with(part, ["regions", "window", "keep_ratio"], only_keys=True)
        scores = comparable_scores(g, part) if len(g) else None
        if scores is None:
            continue
        g = g.assign(value=scores[0])
        ratios = sorted(g["keep_ratio"].unique())
        fig, axes = plt.subplots(1, len(ratios), figsize=(3.6 * len(ratios), 3.2), squeeze=False)
        for ax, r in zip(axes[0], ratios):
            grid = g[g["keep_ratio"] == r].pivot_table(index="regions", columns="window", values="value", aggfunc="mean")
            im = ax.imshow(grid.values, cmap="viridis", origin="upper")
            ax.set(xticks=range(len(grid.columns)), xticklabels=[int(c) for c in grid.columns],
                   yticks=range(len(grid.index)), yticklabels=[int(i) for i in grid.index],
                   xlabel="window", ylabel="regions", title=f"keep_ratio {r:g}")
            for (i, j), v in pd.DataFrame(grid.values).stack().items():
                ax.text(j, i, f"{v:.1f}" if abs(v) > 1 else f"{v:.2f}", ha="center", va="center", color="w", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(f"geometry: {_figure_title(key)}; {scores[1]}")
        written += save(fig, out_dir, file_stem("geometry_heatmap", *key))
    return written


def all_figures(acc: pd.DataFrame, lat: pd.DataFrame, out_dir: Path) -> dict[str, list[Path]]:
    return {
        "accuracy_vs_tokens": accuracy_vs_tokens(acc, out_dir) if len(acc) else [],
        "latency_vs_tokens": latency_vs_tokens(lat, out_dir) if len(lat) else [],
        "layer_ablation": layer_ablation(acc, out_dir),
        "geometry_heatmap": geometry_heatmap(acc, out_dir),
    }

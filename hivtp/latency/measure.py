"""``measure``: time every stage of every method on one model, interleaved, and return tidy rows."""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from typing import Any, Iterable, Sequence

import torch

from ..attach import attach
from ..errors import ConfigError, HivtpError
from ..pruned import PrunedModel
from .fingerprint import fingerprint
from .flops import stage_flops
from .inputs import DEFAULT_PROMPT_TOKENS, load_model, parse_dtype, synthesise
from .stages import STAGES, RepeatResult, run_repeat
from .timing import check_device, spread

__all__ = ["measure", "MethodSpec", "with_faithful", "method_label", "OutOfTime", "COLUMNS", "free_device_memory"]

log = logging.getLogger("hivtp.latency")

MethodSpec = tuple[str, dict[str, Any]]

#: CSV columns, in order (harness.md latency rows + the issue's list)
COLUMNS = (
    "model", "weights", "profile", "method", "params", "budget", "tokens_kept", "tokens_total", "stage",
    "batch", "dtype", "attn", "backend", "device", "device_name", "median_ms", "p10_ms", "p90_ms", "repeats",
    "tokens_per_s", "peak_mem_mb", "flops", "new_tokens", "prompt_tokens", "crops",
    "torch", "transformers", "commit", "date",
)


def with_faithful(methods: Sequence[MethodSpec]) -> list[MethodSpec]:
    """Add, after each fast ``hivtp`` entry, the same entry on the release's eager path (unless listed
    already: it would be timed twice)."""
    out: list[MethodSpec] = []
    listed = [(name, dict(params)) for name, params in methods]
    for name, params in methods:
        out.append((name, dict(params)))
        twin = (name, {**params, "backend": "eager"})
        if name == "hivtp" and params.get("backend", "fast") != "eager" and twin not in listed:
            out.append(twin)
    if not any(name == "hivtp" for name, _ in methods):
        out.append(("hivtp", {"backend": "eager"}))
    return out


class OutOfTime(HivtpError):
    """A measurement stopped because its least run (warm-up + ``min_repeats`` rounds) would end past the deadline."""


def method_label(name: str, params: dict[str, Any]) -> str:
    """``hivtp:budget=64`` -- how progress, refusals and the benchmark's record name one method."""
    return name + "".join(f":{k}={v}" for k, v in sorted(params.items()))



def _attach_all(model: Any, methods: Sequence[MethodSpec], refusals: dict[str, str] | None = None) -> list[tuple[str, dict[str, Any], PrunedModel]]:
    """Every method attached to ``model``; one that refuses is reported in ``refusals`` and left out
    when that dict is given, else its error stops the measurement."""
    labels = [method_label(n, p) for n, p in methods]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"methods listed twice: {sorted(l for l in labels if labels.count(l) > 1)}; list each once.")
    attached = []
    for name, params in methods:
        try:
            attached.append((name, dict(params), attach(model, method=name, **params)))
        except ConfigError as err:
            if refusals is None:
                raise
            refusals[method_label(name, params)] = str(err)
    if not attached:
        raise ConfigError(f"every method refused this model: {refusals}")
    return attached


def latency_profile(model: str, dev: torch.device) -> str:
    """The profile a latency row belongs to: "paper" only for a real-shape model timed on a GPU (what the
    paper measured); a small offline model is "offline" on any device, so that its GPU rows never stand
    beside the paper's claims (``hivtp.zoo.is_offline_model``)."""
    from ..zoo import is_offline_model

    return "paper" if dev.type == "cuda" and not is_offline_model(model) else "offline"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"[latency] {text}", file=sys.stderr, flush=True)


def measure(
    model: str = "tiny-llava",
    methods: Iterable[MethodSpec] = (("none", {}), ("hivtp", {})),
    random_weights: bool = True,
    batch: int = 1,
    dtype: str = "float32",
    attn: str = "sdpa",
    device: str = "cpu",
    warmup: int = 1,
    repeats: int = 5,
    new_tokens: int = 16,
    prompt_tokens: int | None = None,
    faithful: bool = False,
    progress: bool = True,
    image_size: tuple[int, int] = (672, 672),
    loaded: tuple[Any, str] | None = None,
    deadline: float | None = None,
    min_repeats: int = 1,
    refusals: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Time ``vision``, ``select``, ``ttft``, ``decode``, ``e2e`` of each method; rows per stage.

    Methods are interleaved within each repeat (none, m1, m2, none, m1, ...) so that drift in clock
    speed or temperature hits them alike. ``warmup`` rounds are run and dropped. A method that refuses
    the set-up on its first call (a ConfigError, e.g. fastv / pdrop under ``flash_attention_2``) is
    skipped with a logged reason and has no rows; the others' rows are returned as usual.

    ``loaded``: (model, weights label) already built (``load_model``), switched to ``attn`` here, so
    that one build serves several batch sizes and attention kernels (``hivtp.latency.bench``).
    ``deadline`` (a ``time.monotonic()`` value): stop after the round that would leave too little
    time for another, once ``min_repeats`` timed rounds are in (the rows' ``repeats`` say how many);
    raise ``OutOfTime`` as soon as a round shows that warm-up + ``min_repeats`` rounds cannot end by it.
    ``refusals``: a dict to fill with ``{method label: reason}`` for every method that fails, on any
    call and for any reason (a parameter this model refuses, out of memory), which is then dropped
    (its rows too) instead of stopping the measurement: the batch benchmark's choice, so that one
    method must not cost a lent GPU the other methods' rows. Methods refused when attached likewise.
    """
    dev = check_device(device)
    if repeats < 1 or warmup < 0 or new_tokens < 1:
        raise ConfigError(f"need repeats >= 1, warmup >= 0, new_tokens >= 1; got {repeats}, {warmup}, {new_tokens}.")
    methods = list(methods)
    if not methods:
        raise ConfigError("no methods to measure; pass e.g. none hivtp hivtp:budget=128.")
    if faithful:
        methods = with_faithful(methods)
    prompt_tokens = DEFAULT_PROMPT_TOKENS if prompt_tokens is None else prompt_tokens
    if loaded is None:
        _say(progress, f"loading {model} ({'random weights' if random_weights else 'checkpoint'}, {dtype}, {attn}, {dev})")
        net, weights = load_model(model, random_weights, parse_dtype(dtype), attn, dev)
    else:
        net, weights = loaded
        net.set_attn_implementation(attn)
    attached = _attach_all(net, methods, refusals)
    inputs = synthesise(net, attached[0][2].adapter, batch, prompt_tokens, image_size)
    results: list[list[RepeatResult]] = [[] for _ in attached]
    refused: dict[int, str] = {}
    total = warmup + repeats
    for r in range(total):
        started = time.monotonic()
        for i, (name, params, pruned) in enumerate(attached):
            if i in refused:
                continue
            try:
                res = run_repeat(pruned, inputs, new_tokens, dev)
            except Exception as err:  # noqa: BLE001 -- with ``refusals``, any failure drops this method alone
                if refusals is not None:
                    label = method_label(name, params)
                    refusals[label] = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"
                    refused[i], results[i] = str(err), []
                    free_device_memory(dev)
                    _say(True, f"dropped {label}: {refusals[label]}")
                    continue
                if not isinstance(err, ConfigError) or r > 0 or not _runs_under(net, DEFAULT_ATTENTION, pruned, inputs, dev):
                    raise  # not a refusal of the attention backend: a bad parameter or a failure
                # fastv / pdrop refuse flash_attention_2 on their first call; the others are still
                # timed and their rows kept.
                refused[i] = str(err)
                log.warning("latency: skipping %s under attn=%s, %s: %s", method_label(name, params), attn, dtype, err)
                _say(True, f"skip {method_label(name, params)} (attn={attn}): {err}")
                continue
            if r >= warmup:
                results[i].append(res)
            _say(progress, f"{'warmup' if r < warmup else 'repeat'} {r + 1}/{total} {method_label(name, params)}: "
                           f"ttft {res.ms['ttft']:.1f} ms, e2e {res.ms['e2e']:.1f} ms")
        timed, now = r + 1 - warmup, time.monotonic()
        if deadline is not None and r + 1 < total:
            rounds_left = warmup + min_repeats - (r + 1)  # still needed for the least run
            if rounds_left > 0 and now + rounds_left * (now - started) > deadline:
                raise OutOfTime(f"its least run ({warmup} warm-up + {min_repeats} rounds of {now - started:.0f} s) "
                                f"would end {now + rounds_left * (now - started) - deadline:.0f} s past the deadline")
            if timed >= min_repeats and now + (now - started) > deadline:
                _say(True, f"deadline: stopping after {timed} of {repeats} repeats (another round would end past it)")
                break
    if len(refused) == len(attached):
        reasons = "; ".join(f"{method_label(n, p)}: {refused[i]}" for i, (n, p, _) in enumerate(attached))
        raise ConfigError(f"no method could run under attn={attn}, dtype={dtype}: {reasons}")
    ident = {
        "model": model, "weights": weights, "profile": latency_profile(model, dev),
        "batch": batch, "dtype": dtype, "attn": attn, "backend": attn, "device": dev.type,
        "new_tokens": new_tokens, "prompt_tokens": prompt_tokens, **fingerprint(dev),
    }
    grid_thw = inputs.layout_inputs.get("image_grid_thw")
    if grid_thw is not None:  # dynamic resolution: state the image the rows were measured at
        _, h, w = grid_thw[0].tolist()
        patch = net.config.vision_config.patch_size
        ident["image_size"] = f"{h * patch}x{w * patch} px, HxW (asked {image_size[0]}x{image_size[1]})"
    rows = []
    for (name, params, pruned), reps in zip(attached, results):
        if not reps:  # refused above
            continue
        rows.extend(_method_rows(ident, name, params, pruned, reps, inputs.text_tokens, new_tokens, batch))
    return rows


#: the attention kernel every method runs under (fastv / pdrop build masks for sdpa and eager only)
DEFAULT_ATTENTION = "sdpa"


def free_device_memory(dev: torch.device) -> None:
    """Return what a dropped model or a failed call left to the device: unreachable tensors
    collected, then (CUDA) the caching allocator's free blocks released, so that the next
    measurement's peak memory and headroom do not carry them."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _runs_under(net: Any, attn: str, pruned: PrunedModel, inputs: Any, dev: torch.device) -> bool:
    """Whether one untimed call of ``pruned`` succeeds with the model switched to ``attn``: tells a
    method that refuses the requested attention backend from one with a bad parameter (refused
    under every backend). The model is switched back afterwards."""
    current = net.config._attn_implementation
    if current == attn:
        return False  # the call that failed already ran under ``attn``
    net.set_attn_implementation(attn)
    try:
        run_repeat(pruned, inputs, 1, dev)
        return True
    except ConfigError:
        return False
    finally:
        net.set_attn_implementation(current)


def _method_rows(ident, name, params, pruned, reps, text_tokens, new_tokens, batch) -> list[dict[str, Any]]:
    last = reps[-1]
    kept = [s["tokens_kept"] for s in last.stats]  # per sample, all images
    flops = stage_flops(
        pruned.model.config,
        crops=last.crops,
        layers_run=_layers_run(pruned),
        score_layers=_score_layers(pruned),
        kept_per_sample=kept,
        image_tokens_by_layer=_by_layer(last.stats),
        text_per_sample=[text_tokens] * len(kept),
        new_tokens=new_tokens,
        feature_layers=len(pruned.adapter.feature_indices),
        vision_grids=last.vision_grids or None,
        score_layer_ids=pruned.method.tower_request().qk_layers,
    )
    method_params = pruned.method.params()
    base = {
        **ident,
        "method": name,
        "params": json.dumps(params, sort_keys=True),
        "budget": method_params.get("budget", params.get("budget")),
        "tokens_kept": sum(kept) / len(kept),
        "tokens_total": sum(s["tokens_total"] for s in last.stats) / len(kept),
        "repeats": len(reps),
        "crops": last.crops,
    }
    rows = []
    for stage in STAGES:
        times = [r.ms[stage] for r in reps]
        mems = [r.peak_mem_mb[stage] for r in reps if r.peak_mem_mb[stage] is not None]
        row = {**base, "stage": stage, **spread(times), "flops": flops[stage],
               "peak_mem_mb": max(mems) if mems else None, "tokens_per_s": None}
        if stage == "decode" and new_tokens > 1:  # tokens after the first, over decode time
            row["tokens_per_s"] = batch * (new_tokens - 1) / (row["median_ms"] / 1e3)
        if stage == "e2e":  # generation throughput: new tokens / (ttft + decode)
            row["tokens_per_s"] = batch * new_tokens / (row["median_ms"] / 1e3)
        rows.append(row)
    return rows


def _by_layer(stats: list[dict[str, Any]]) -> list[list[int]] | None:
    """In-LLM methods record the image tokens each decoder layer sees; others see ``tokens_kept`` throughout."""
    if all("tokens_by_layer" in s for s in stats):
        return [list(s["tokens_by_layer"]) for s in stats]
    return None


def _layers_run(pruned: PrunedModel) -> int:
    request = pruned.method.tower_request()
    if request.eager:  # the release runs the model's own full tower
        return pruned.adapter.num_layers
    return max([pruned.adapter.feature_attention_layer] + list(request.qk_layers)) + 1


def _score_layers(pruned: PrunedModel) -> int:
    """q k^T recomputations the scorer does: the fast path's captured layers (0 on the eager path,
    which reads maps the tower built anyway)."""
    return len(pruned.method.tower_request().qk_layers)

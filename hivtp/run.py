"""``python -m hivtp.run``: run accuracy, latency or both for one resolved Hydra config.

    python -m hivtp.run model=toy-llava method=hivtp method.params.budget=128
    python -m hivtp.run -m +sweep=geometry           # Hydra multirun; finished runs are skipped

Each run lives in ``<runs_root>/<hash>/`` where the hash covers everything that changes its numbers
(model, method and its non-null params, benchmark, the device and dtype it runs with, latency protocol,
mode, profile; see :func:`identity`): starting a sweep again finds the finished folders and skips them.
The code version is not identity: a finished run made at another commit is skipped with a line that
says so, and its rows keep their commit. Every file is written atomically (:mod:`hivtp.atomic`) and
the manifest ``DONE`` is written last (:mod:`hivtp.runfolder`): a run counts as finished only while
every file it names is there with its checksum; anything else is redone. A killed sweep loses nothing
that finished and redoes only what did not; a forced re-run (``force=true``), or the redo of a
damaged finished run, is made in a fresh folder and swapped in at the end, so killing it leaves the
old run as it was.
What a run answered on is recorded too, beside the identity (which holds names, not contents): the
digests of the checkpoint's weights, of its other files (config, processor, tokenizer, chat template)
and of the benchmark's local data (:data:`hivtp.runfolder.INPUTS`). A finished run whose digests differ
from the current ones (retrained weights, an edited config.json, data rebuilt with other questions), or
that recorded none, is redone like a damaged one, so its rows never mix with rows on other inputs.
The backends are the contract APIs (``hivtp.lmms.runner.run_accuracy``, ``hivtp.latency.measure``),
named in ``cfg.backend`` as ``module:attr`` so that tests can swap them.

This module imports hydra/omegaconf; the hivtp core never does.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from . import runfolder
from .atomic import write_json, write_text
from .errors import ConfigError
from .latency.fingerprint import git_commit

log = logging.getLogger("hivtp.run")
REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
# Keys that do not change what a run computes: excluded from the hash.
NON_IDENTITY = ("runs_root", "results_dir", "force", "progress", "backend", "skip_invalid", "hydra")
# Kept under its old name for callers of ``hivtp.run`` (tests, user scripts).
write_atomic = write_text


# ---------------------------------------------------------------------------- config -> identity
def plain(cfg: Any) -> dict[str, Any]:
    """A resolved plain dict from a DictConfig (or a dict)."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return json.loads(json.dumps(cfg))


def sweep_jobs(name: str, extra: list[str] | tuple[str, ...] = ()) -> list[list[str]]:
    """The runs of ``configs/sweep/<name>.yaml`` (after ``extra`` overrides) as override lists: its
    ``hydra.sweeper.params`` expanded as Hydra's basic sweeper does (cartesian product, in order), each
    run's list holding that run's values only (compose with ``+sweep=<name>`` before them)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+sweep={name}", *extra], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs: list[list[str]] = [[]]
    for ov in parsed:
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        jobs = [j + [f"{ov.get_key_element()}={v}"] for j in jobs for v in values]
    return jobs


def method_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """The method's params with nulls dropped (null = the method's default / preset). The word ``none``
    (an override ``+method.params.budget=none`` arrives as text) is a null where the parameter's default
    is None, as in lmms-eval model_args (:mod:`hivtp.params`; ``newline=none`` stays NeXT's policy)."""
    from .params import unset_if_none

    name = cfg["method"]["name"]
    params = {k: unset_if_none(name, k, v) for k, v in (cfg["method"].get("params") or {}).items()}
    return {k: _canonical(k, v) for k, v in sorted(params.items()) if v is not None}


def _canonical(key: str, value: Any) -> Any:
    """One spelling per computation, so that one run folder holds it: layer lists (``layers=[6,7,8]``,
    ``"6,7,8"``, ``"6-7-8"``, as Hydra, lmms-eval and the configs write them) become ``"6-7-8"``."""
    if key != "layers" or isinstance(value, bool):
        return value
    from .methods import parse_layers

    if not isinstance(value, (str, int, list, tuple)):  # a Hydra ListConfig arrives as a list (``plain``)
        raise ConfigError(f"method.params.layers must be layer numbers like 6-7-8 or [6, 7, 8], got {value!r}.")
    return "-".join(str(layer) for layer in parse_layers(value))


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the run's numbers depend on. Each part brings its own settings: accuracy its device and
    dtype (not the latency protocol), latency its protocol (not the benchmark)."""
    ident = {k: v for k, v in cfg.items() if k not in NON_IDENTITY and k not in ("accuracy", "latency")}
    ident["method"] = {"name": cfg["method"]["name"], "params": method_params(cfg)}
    mode = cfg.get("mode", "both")  # execute's default
    if mode in ("accuracy", "both"):
        ident["accuracy"] = accuracy_settings(cfg)
        world = offline_world(cfg)
        if world not in (None, "plain"):  # plain left out: runs from before worlds keep their identity
            ident["accuracy"]["world"] = world
    if mode != "accuracy" and "latency" in cfg:
        ident["latency"] = cfg["latency"]
    if mode == "latency":
        ident.pop("benchmark", None)
    return ident


def offline_world(cfg: dict[str, Any]) -> str | None:
    """The world whose images an accuracy part's offline mini-benchmarks (``hivtp_*`` tasks) hold:
    ``hivtp.world.BENCHMARK_WORLD`` (the runner refuses data from another); None for other tasks. A run
    is part of the world it answered in, so changing the benchmarks' world redoes every offline run."""
    from .world import BENCHMARK_WORLD
    from .world.builds import is_offline_task

    tasks = (cfg.get("benchmark") or {}).get("tasks") or []
    return BENCHMARK_WORLD if any(map(is_offline_task, tasks)) else None


def accuracy_settings(cfg: dict[str, Any]) -> dict[str, str]:
    """Device and dtype of the accuracy run, resolved. ``dtype: auto`` is the checkpoint's own dtype
    (lmms-eval's default; the checkpoint is in the identity through the model). A config without an
    ``accuracy`` section (written before it existed) runs accuracy on the latency device."""
    acc = cfg.get("accuracy") or {}
    device = acc.get("device") or (cfg.get("latency") or {}).get("device") or "cpu"
    return {"device": str(device), "dtype": str(acc.get("dtype") or "auto")}


def run_hash(cfg: dict[str, Any]) -> str:
    text = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- backends
def load_callable(spec: str) -> Callable[..., Any]:
    module, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError(f"backend {spec!r} must be written 'module:function'.")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load backend {spec!r} ({e}); is that part of hivtp installed?") from e


def run_accuracy_part(cfg: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    bench = cfg["benchmark"]
    fn = load_callable(cfg["backend"]["accuracy"])
    settings = accuracy_settings(cfg)
    dtype = _if_accepted(fn, dtype=settings["dtype"])
    if settings["dtype"] != "auto" and not dtype:  # the dtype is in the run's identity: never ignore it
        raise ConfigError(
            f"accuracy.dtype={settings['dtype']} but the accuracy backend {cfg['backend']['accuracy']} takes no "
            "dtype (it runs the checkpoint's own); use accuracy.dtype=auto."
        )
    return fn(
        pretrained=cfg["model"]["pretrained"],
        method=cfg["method"]["name"],
        params=method_params(cfg),
        tasks=list(bench["tasks"]),
        limit=bench.get("limit"),
        batch_size=bench.get("batch_size", 1),
        output_dir=folder / "lmms",
        device=settings["device"],
        include_path=bench.get("include_path"),
        **_if_accepted(fn, progress=bool(cfg.get("progress", True)), data_dir=bench.get("data_dir")),
        **dtype,
    )


def _if_accepted(fn: Callable[..., Any], **kw: Any) -> dict[str, Any]:
    """Optional keyword arguments beyond the contract, passed only when the backend takes them."""
    import inspect

    names = inspect.signature(fn).parameters
    return {k: v for k, v in kw.items() if k in names}


def release_accuracy_model(device: str) -> None:
    """Before a CUDA latency part: the in-process accuracy runner keeps the last model it loaded (and its
    tower cache) on the device for the next configuration, and ``torch.cuda.max_memory_allocated`` would
    count that second model in every latency row's peak memory (a 7B at fp16: about 14 GB more on every
    method, pulling their ratios towards 1). Forget it; the next accuracy part loads it again. Looked up in
    ``sys.modules`` so that a latency-only machine (no lmms-eval) imports nothing."""
    inprocess = sys.modules.get("hivtp.lmms.inprocess")
    if inprocess is None or not str(device).startswith("cuda"):
        return
    import torch

    from .latency.measure import free_device_memory

    inprocess.clear_caches()
    free_device_memory(torch.device(device))


def run_latency_part(cfg: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    lat = cfg["latency"]
    release_accuracy_model(lat["device"])
    fn = load_callable(cfg["backend"]["latency"])
    return fn(
        model=cfg["model"]["latency_model"],
        methods=latency_methods(cfg),
        random_weights=bool(cfg["model"]["latency_random_weights"]),
        batch=lat["batch"], dtype=lat["dtype"], attn=lat["attn"], device=lat["device"],
        warmup=lat["warmup"], repeats=lat["repeats"], new_tokens=lat["new_tokens"],
        prompt_tokens=lat.get("prompt_tokens"), faithful=lat.get("faithful", False),
        progress=bool(cfg.get("progress", True)),
    )


def latency_methods(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The methods one latency run times, interleaved in one process (harness.md protocol).

    ``latency.methods`` (a list of ``name`` / ``name:key=value,...`` specs) times them all side by
    side, so their ratios come from one process and one machine state; without it the run times
    its own method alone (a sweep over methods then compares numbers from different processes)."""
    from .latency.__main__ import parse_method

    specs = cfg["latency"].get("methods")
    if not specs:
        return [(cfg["method"]["name"], method_params(cfg))]
    return [parse_method(str(s)) for s in specs]


def stamp(rows: list[dict[str, Any]], cfg: dict[str, Any], key: str, commit: str) -> list[dict[str, Any]]:
    """Fill the identity columns the backend left out (harness.md rows) and tag rows with the run."""
    params = json.dumps(method_params(cfg), sort_keys=True)
    defaults = {
        "model": cfg["model"]["name"], "method": cfg["method"]["name"], "params": params,
        "budget": method_params(cfg).get("budget"), "profile": cfg["profile"],
        "weights": cfg["model"]["weights"] if key == "accuracy" else
        ("random" if cfg["model"]["latency_random_weights"] else cfg["model"]["weights"]),
        "commit": commit, "date": time.strftime("%Y-%m-%d"),
    }
    out = []
    for row in rows:
        row = dict(row)
        own_method = row.get("method") not in (None, "")  # a multi-method latency row names its own
        for k, v in defaults.items():
            if own_method and k in ("method", "params", "budget"):
                continue
            if row.get(k) in (None, ""):
                row[k] = v
        # The config's model name and profile always win: tables group by the short name (a backend
        # may report a hub id or a path), and an offline run never passes as a paper one.
        row["model"] = cfg["model"]["name"]
        row["profile"] = cfg["profile"]
        row["run"] = run_hash(cfg)
        out.append(row)
    return out


# ---------------------------------------------------------------------------- one run
def parts_loading(model: dict[str, Any], mode: str) -> list[str]:
    """The ``model`` keys naming what a run of ``mode`` loads: ``pretrained`` (the accuracy part) and
    ``latency_model`` (the latency part, where the config names one)."""
    keys = ["pretrained"] if mode != "latency" else []
    return keys + (["latency_model"] if mode != "accuracy" and "latency_model" in model else [])


def check_model_family(model: dict[str, Any], mode: str = "both") -> None:
    """Result rows name a model by ``model.name``, and the ledger and the standard budgets read its family
    from that name (``hivtp.claims.family_of``: ``qwen``, ``next`` / ``v1.6``, else LLaVA-1.5). A config
    whose name reads as another family than its ``family`` field, or than the local checkpoint a part of
    the run loads (``pretrained`` for accuracy, ``latency_model`` for latency), would have its rows held
    against the wrong paper claims without an error: refused."""
    from .claims import FAMILY_OF_MODEL_TYPE, family_of
    from .zoo import local_config

    read_as = family_of(model["name"])
    said = {"model.family": model.get("family")}
    for key in parts_loading(model, mode):
        config = local_config(model[key])
        if config is not None:
            said[f"the model_type of model.{key}"] = FAMILY_OF_MODEL_TYPE.get(config.model_type)
    wrong = {where: family for where, family in said.items() if family is not None and family != read_as}
    if wrong:
        raise ConfigError(
            f"model.name {model['name']!r} reads as family {read_as} (hivtp.claims.family_of), but "
            + ", ".join(f"{where} says {family}" for where, family in wrong.items())
            + ". Results, budgets and the ledger's claims follow the name: name a LLaVA-NeXT model with 'next' "
            "or 'v1.6', a Qwen2.5-VL one with 'qwen', a LLaVA-1.5 one with neither, and set model.family to match.")


def check_profile(cfg: dict[str, Any], mode: str = "both") -> None:
    """Rows are marked with ``profile`` and the paper profile's are set beside the paper's claims: a paper
    run of a small offline model (``hivtp.zoo.is_offline_model``), on the offline mini-benchmarks
    (``hivtp_*`` tasks, the procedural world) or timing latency off the GPU would put numbers there that the
    paper's are not comparable with, without an error: refused.
    (``+sweep=stages`` chooses the offline POPE; after a paper experiment add ``benchmark=paper_pope``.)"""
    if cfg.get("profile") != "paper":
        return
    from .world.builds import is_offline_task
    from .zoo import is_offline_model

    model = cfg["model"]
    small = [f"model.{key} = {model[key]!r}" for key in parts_loading(model, mode) if is_offline_model(model[key])]
    if small:
        raise ConfigError(f"profile=paper, but {', '.join(small)} is a small offline model (a shipped small shape or "
                          "the toy): its rows would stand beside the paper's claims. Run it with +experiment=offline "
                          "(profile=offline), or choose a real-shape model (model=llava-1.5-7b, ...).")
    device = str((cfg.get("latency") or {}).get("device", "cpu"))
    if mode != "accuracy" and not device.startswith("cuda"):
        raise ConfigError(f"profile=paper times latency on latency.device={device!r}: the paper's speed claims are GPU "
                          "measurements. Use latency=gpu (the paper experiments' default), mode=accuracy, or profile=offline.")
    tasks = (cfg.get("benchmark") or {}).get("tasks") or []
    offline = [t for t in tasks if is_offline_task(t)] if mode != "latency" else []
    if offline:
        raise ConfigError(f"profile=paper, but the benchmark's tasks {', '.join(map(str, offline))} are the offline "
                          "mini-benchmarks (procedural images): their scores would stand beside the paper's claims. Use "
                          "benchmark=paper (or benchmark=paper_pope, e.g. after +sweep=stages), or run with "
                          "+experiment=offline.")


def check_method(cfg: dict[str, Any]) -> None:
    """Build the method and check it against the model's vision geometry (patch grid, encoder depth,
    feature layer), read from the model's config without loading it, so that a bad name, param,
    geometry or score layer fails (or, with skip_invalid, is marked INVALID) before any model loads.
    A hub id that no shipped shape copies has no config here: it is checked at LLaVA-1.5's geometry
    (every llava-hf LLaVA-1.5 / NeXT uses the same CLIP ViT-L/14-336), and again when it loads.
    Qwen2.5-VL (grids vary per image; family defaults such as its score layer; CLS-free) is checked by
    attaching the method to the model built on the meta device from its config: every check ``attach``
    makes, with no weights."""
    from .adapters import ADAPTERS
    from .methods import build_method, is_offline_only
    from .zoo import local_config, shape_config, vision_geometry

    name = cfg["method"]["name"]
    if cfg.get("profile") == "paper" and is_offline_only(name):
        raise ConfigError(f"method {name!r} is an offline-only reference (it reads the procedural world's objects "
                          "from the pixels); it has no meaning on real images. Run it with +experiment=offline.")
    config = local_config(cfg["model"]["pretrained"]) or shape_config("llava-1.5-7b")
    if config.model_type == "qwen2_5_vl":
        _attach_on_meta(config, cfg["method"]["name"], method_params(cfg))
        return
    # parameters a model family's adapter takes (LLaVA-NeXT's newline) are not the method's
    adapter_keys = {k for adapter in ADAPTERS for k in adapter.adapter_params}
    method = build_method(cfg["method"]["name"], **{k: v for k, v in method_params(cfg).items() if k not in adapter_keys})
    grid, num_layers, feature_attention_layer = vision_geometry(config)
    method.check(grid, num_layers, feature_attention_layer)


def _attach_on_meta(config: Any, method: str, params: dict[str, Any]) -> None:
    """``hivtp.attach`` on the model of ``config`` built on the meta device (no memory, no weights):
    raises the ConfigError attach would raise after loading."""
    import torch

    from .attach import attach
    from .zoo import _model_class

    with torch.device("meta"):
        model = _model_class(config)(config)
    attach(model, method=method, **params)


def _say(text: str) -> None:
    log.info(text)
    print(f"[hivtp.run] {text}", flush=True)


def _skip(folder: Path, commit: str) -> None:
    made_at = runfolder.read_manifest(folder).get("commit")
    if made_at and made_at != commit:
        _say(f"skip {folder.name}: finished at commit {made_at}, not this tree's {commit}; its rows keep "
             f"{made_at}. Numbers may differ at this commit: force=true redoes it.")
    else:
        _say(f"skip {folder.name}: finished")


def loaded_checkpoints(cfg: dict[str, Any]) -> list[str]:
    """The checkpoints whose files a run reads (:func:`parts_loading`), but the latency part's when it times
    random weights (built from a shipped shape: code, covered by the commit)."""
    model = cfg["model"]
    random = model.get("latency_random_weights", True)
    return [model[key] for key in parts_loading(model, cfg.get("mode", "both")) if not (key == "latency_model" and random)]


def _one_digest(digests: Iterable[str | None]) -> str | None:
    """One checkpoint's digest as it is; two different ones, the digest of both; None when none is local
    (a hub id: its name is the run's identity and its files are not here to read)."""
    digests = list(dict.fromkeys(d for d in digests if d))
    if len(digests) > 1:
        return hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return digests[0] if digests else None


def run_weights(cfg: dict[str, Any]) -> str | None:
    """The sha256 of the weights the run answers and times with (:func:`loaded_checkpoints`,
    :func:`hivtp.zoo.local_weights_digest`; both checkpoints' when a run times another trained one than it
    answers with). The model's name is the run's identity, not its weights: a retrained ``toy-llava``
    keeps its name, so a finished run records the weights it used and is redone when they changed. A
    latency part on trained weights depends on them too: HIVTP's own rule keeps as many tokens as the
    scores' layout gives (its local stage adds nothing to a window the global stage covered)."""
    from .zoo import local_weights_digest

    return _one_digest(map(local_weights_digest, loaded_checkpoints(cfg)))


def run_inputs(cfg: dict[str, Any]) -> dict[str, str | None]:
    """What a run answers on besides the weights and its identity, as digests (:data:`runfolder.INPUTS`):
    the checkpoint's other files (:func:`checkpoint_files_digest`) and the benchmark's data
    (:func:`data_digest`). Names are in the identity; these say whether the contents behind them changed."""
    return {runfolder.CHECKPOINT_FILES: checkpoint_files_digest(cfg), runfolder.DATA: data_digest(cfg)}


def checkpoint_files_digest(cfg: dict[str, Any]) -> str | None:
    """The digest of the non-weight files (:func:`hivtp.zoo.checkpoint_files`: config.json, processor, ...)
    of the local checkpoints the run loads (:func:`loaded_checkpoints`), combined as :func:`run_weights`."""
    from .zoo import local_checkpoint_files_digest

    return _one_digest(map(local_checkpoint_files_digest, loaded_checkpoints(cfg)))


def data_folder(cfg: dict[str, Any]) -> Path | None:
    """The local folder the accuracy part's benchmark reads: ``benchmark.data_dir``, or (null) the
    runner's default ``artifacts/data`` when an offline (``hivtp_*``) task runs. None for a latency-only
    run (synthetic prompts and images) and for hub datasets (lmms-eval's own tasks)."""
    bench = cfg.get("benchmark") or {}
    if cfg.get("mode", "both") == "latency":
        return None
    if bench.get("data_dir"):
        return Path(bench["data_dir"]).expanduser()
    from .world.builds import is_offline_task

    if not any(map(is_offline_task, bench.get("tasks") or [])):
        return None
    from .lmms.runner import DATA_DIR

    return DATA_DIR


def data_digest(cfg: dict[str, Any]) -> str | None:
    """The digest of every file under :func:`data_folder` (relative names and contents; hidden files,
    byte-code and ``datasets``' derived ``cache-*.arrow`` / ``*.lock`` files left out: a run may write
    those, and they hold nothing the data does not); None when there is no such folder (the runner then
    says how to build it)."""
    folder = data_folder(cfg)
    if folder is None or not folder.is_dir():
        return None
    return runfolder.files_digest(folder, _data_files(folder))


def _data_files(folder: Path) -> list[str]:
    """The relative names :func:`data_digest` covers (see there for what is left out and why)."""
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.name.endswith(".lock") or (path.name.startswith("cache-") and path.suffix == ".arrow"):
            continue
        if path.is_file():
            out.append(rel.as_posix())
    return out


def _stale(folder: Path, cfg: dict[str, Any], weights: str | None, inputs: dict[str, str | None]) -> str | None:
    """Why a finished run no longer holds (what it ran on changed), or None."""
    manifest = runfolder.read_manifest(folder)
    why = [_weights_changed(manifest, weights), _inputs_changed(manifest, inputs, cfg)]
    return "; ".join(w for w in why if w) or None


def _weights_changed(manifest: dict[str, Any], weights: str | None) -> str | None:
    """Why a finished run no longer holds (the checkpoint's weights changed), or None."""
    recorded = manifest.get(runfolder.WEIGHTS)
    if weights is None or recorded == weights:
        return None
    was = f"weights {recorded[:12]}" if recorded else "weights it did not record (made before runs recorded them)"
    return f"it was measured on {was}; the checkpoint now holds {weights[:12]}"


def _inputs_changed(manifest: dict[str, Any], inputs: dict[str, str | None], cfg: dict[str, Any]) -> str | None:
    """Why a finished run's numbers no longer hold (the checkpoint's other files or the data changed), or
    None. An input that is not here now (None) is not compared, as weights are not."""
    current = {k: v for k, v in inputs.items() if v is not None}
    if not current:
        return None
    recorded = runfolder.inputs_of(manifest)
    if recorded is None:
        return "it was made before runs recorded their inputs (checkpoint files, benchmark data)"
    what = {runfolder.CHECKPOINT_FILES: "its checkpoint's files besides the weights (config.json, processor, "
                                        "tokenizer, chat template)",
            runfolder.DATA: f"its benchmark data in {data_folder(cfg)}"}
    why = [f"{what[key]} changed: {_short(recorded[key])} -> {_short(now)}"
           for key, now in current.items() if recorded[key] != now]
    return "; ".join(why) or None


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "none"


def execute(cfg_in: Any) -> Path:
    """Run one resolved config; return its run folder. Skips finished runs, keeps finished parts of
    a killed one, redoes a damaged one or one whose inputs changed (weights, other checkpoint files, data)."""
    cfg = plain(cfg_in)
    mode = cfg.get("mode", "both")
    if mode not in ("accuracy", "latency", "both"):
        raise ConfigError(f"mode must be accuracy, latency or both, got {mode!r}.")
    check_model_family(cfg["model"], mode)
    check_profile(cfg, mode)
    final = Path(cfg["runs_root"]) / run_hash(cfg)
    commit = git_commit()
    force = bool(cfg.get("force", False))
    weights, inputs = run_weights(cfg), run_inputs(cfg)
    stale = None
    if not force and runfolder.is_complete(final):
        stale = _stale(final, cfg, weights, inputs)
        if stale is None:
            _skip(final, commit)
            return final
        _say(f"redo {final.name}: {stale}")
    invalid = _invalid_reason(cfg)  # before any folder is made: a bad config raises here
    # A finished run that is no longer complete (or stale) is redone whole, in a fresh folder, as a forced one.
    damaged = runfolder.verify_run(final) if (final / runfolder.MANIFEST).exists() else []
    if damaged:
        _say(f"redo {final.name}: {'; '.join(damaged)}")
    if not (force or damaged or stale):
        _run_into(cfg, final, mode, commit, invalid, keep_parts=True, weights=weights, inputs=inputs)
        return final
    fresh = runfolder.fresh_folder(final)
    try:
        _run_into(cfg, fresh, mode, commit, invalid, keep_parts=False, weights=weights, inputs=inputs)
    except BaseException:
        _say(f"{final.name}: the re-run did not finish; its files are in {fresh}, {final} is unchanged")
        raise
    runfolder.swap_in(fresh, final)
    return final


def _invalid_reason(cfg: dict[str, Any]) -> str | None:
    """None for a config the method accepts; hivtp's message for one it rejects under skip_invalid
    (the run is then marked INVALID); the ConfigError itself otherwise."""
    try:
        check_method(cfg)
    except ConfigError as e:
        if not cfg.get("skip_invalid", False):
            raise
        return str(e)
    return None


def _run_into(cfg: dict[str, Any], folder: Path, mode: str, commit: str, invalid: str | None, keep_parts: bool,
              weights: str | None = None, inputs: dict[str, str | None] | None = None) -> None:
    """Run ``cfg`` in ``folder`` and seal it with the manifest (which records ``weights`` and ``inputs``).
    ``keep_parts``: a part whose rows file is there and readable finished before a kill, on the same
    weights and inputs; keep it."""
    name = run_hash(cfg)
    inputs = {key: (inputs or {}).get(key) for key in runfolder.INPUTS}
    folder.mkdir(parents=True, exist_ok=True)
    if keep_parts and _started_on(folder) != (weights, inputs):
        keep_parts = False  # a killed run's finished parts answered on other weights or inputs: gone, so that
        for part in ("accuracy", "latency"):  # a second kill cannot leave them to be sealed as this run's
            (folder / f"{part}.json").unlink(missing_ok=True)
    write_json(folder / "config.json", {"identity": identity(cfg), "config": cfg, runfolder.WEIGHTS: weights, **inputs})
    if invalid is not None:
        write_text(folder / "INVALID", f"{invalid}\n")
        runfolder.write_manifest(folder, parts=[], status="invalid", commit=commit, weights=weights, inputs=inputs)
        _say(f"invalid {name}: {invalid}")
        return
    parts = [p for p in ("accuracy", "latency") if mode in (p, "both")]
    for part in parts:
        target = folder / f"{part}.json"
        if keep_parts and runfolder.readable_rows(target) is not None:
            continue  # this part finished before a kill; keep it
        _say(f"{name}: {part} {cfg['model']['name']} {cfg['method']['name']} {method_params(cfg)}")
        start = time.perf_counter()
        fn = run_accuracy_part if part == "accuracy" else run_latency_part
        rows = stamp(fn(cfg, folder), cfg, part, commit)
        write_json(target, rows)
        _say(f"{name}: {part} done, {len(rows)} rows, {time.perf_counter() - start:.1f} s")
    runfolder.write_manifest(folder, parts=parts, status="done", commit=commit, weights=weights, inputs=inputs)


def _started_on(folder: Path) -> tuple[str | None, dict[str, str | None]] | None:
    """(weights, inputs) a (killed) run in ``folder`` started with, from its config.json (a key it lacks
    reads as None); None if there is none to read."""
    try:
        started = json.loads((folder / "config.json").read_text())
        return started.get(runfolder.WEIGHTS), {key: started.get(key) for key in runfolder.INPUTS}
    except (OSError, ValueError, AttributeError):
        return None


def main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
    def _main(cfg: Any) -> None:
        execute(cfg)

    _main()


if __name__ == "__main__":
    main()

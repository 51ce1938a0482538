"""``python -m hivtp.run``: run accuracy, latency or both for one resolved Hydra config.

    python -m hivtp.run model=toy-llava method=hivtp method.params.budget=128
    python -m hivtp.run -m +sweep=geometry           # Hydra multirun; finished runs are skipped

Each run lives in ``<runs_root>/<hash>/`` where the hash covers the config's identity keys (model,
method and its non-null params, benchmark, latency protocol, mode, profile): starting a sweep again
finds the finished folders and skips them. Every file is written atomically (temp file + rename) and
``DONE`` is written last, so a killed sweep loses nothing that finished and redoes only what did not.
The backends are the contract APIs (``hivtp.lmms.runner.run_accuracy``, ``hivtp.latency.measure``),
named in ``cfg.backend`` as ``module:attr`` so that tests can swap them.

This module imports hydra/omegaconf; the hivtp core never does.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .latency.fingerprint import git_commit

log = logging.getLogger("hivtp.run")
REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
# Keys that do not change what a run computes: excluded from the hash.
NON_IDENTITY = ("runs_root", "results_dir", "force", "progress", "backend", "skip_invalid", "hydra")


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


def method_params(cfg: dict[str, Any]) -> dict[str, Any]:
    """The method's params with nulls dropped (null = the method's default / preset)."""
    return {k: v for k, v in sorted((cfg["method"].get("params") or {}).items()) if v is not None}


def identity(cfg: dict[str, Any]) -> dict[str, Any]:
    ident = {k: v for k, v in cfg.items() if k not in NON_IDENTITY}
    ident["method"] = {"name": cfg["method"]["name"], "params": method_params(cfg)}
    if cfg.get("mode") == "accuracy":
        ident.pop("latency", None)  # the latency protocol does not change accuracy runs
    if cfg.get("mode") == "latency":
        ident.pop("benchmark", None)
    return ident


def run_hash(cfg: dict[str, Any]) -> str:
    text = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- atomic files
def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


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
    return fn(
        pretrained=cfg["model"]["pretrained"],
        method=cfg["method"]["name"],
        params=method_params(cfg),
        tasks=list(bench["tasks"]),
        limit=bench.get("limit"),
        batch_size=bench.get("batch_size", 1),
        output_dir=folder / "lmms",
        device=cfg["latency"]["device"] if "latency" in cfg else "cpu",
        include_path=bench.get("include_path"),
        **_if_accepted(fn, progress=bool(cfg.get("progress", True)), data_dir=bench.get("data_dir")),
    )


def _if_accepted(fn: Callable[..., Any], **kw: Any) -> dict[str, Any]:
    """Optional keyword arguments beyond the contract, passed only when the backend takes them."""
    import inspect

    names = inspect.signature(fn).parameters
    return {k: v for k, v in kw.items() if k in names}


def run_latency_part(cfg: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    lat = cfg["latency"]
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
def check_method(cfg: dict[str, Any]) -> None:
    """Build the method now so that a bad name, param or geometry fails before any model loads."""
    from .adapters import ADAPTERS
    from .methods import build_method

    # parameters a model family's adapter takes (Qwen2.5-VL's keep / positions) are not the method's
    adapter_keys = {k for adapter in ADAPTERS for k in adapter.adapter_params}
    method = build_method(cfg["method"]["name"], **{k: v for k, v in method_params(cfg).items() if k not in adapter_keys})
    # Qwen2.5-VL's grids vary per image and its regions / windows never fail (the uneven partition)
    if cfg["method"]["name"] == "hivtp" and cfg.get("model", {}).get("family") != "qwen2_5_vl":
        from .selection import validate_geometry

        p = method.params()
        validate_geometry(24, 24, p["regions"], p["keep_ratio"], p["window"])


def execute(cfg_in: Any) -> Path:
    """Run one resolved config; return its run folder. Skips finished parts and finished runs."""
    cfg = plain(cfg_in)
    mode = cfg.get("mode", "both")
    if mode not in ("accuracy", "latency", "both"):
        raise ConfigError(f"mode must be accuracy, latency or both, got {mode!r}.")
    folder = Path(cfg["runs_root"]) / run_hash(cfg)
    done = folder / "DONE"
    if done.exists() and not cfg.get("force", False):
        log.info("skip %s (finished)", folder)
        print(f"[hivtp.run] skip {folder.name}: finished", flush=True)
        return folder
    write_json(folder / "config.json", {"identity": identity(cfg), "config": cfg})
    try:
        check_method(cfg)
    except ConfigError as e:
        if not cfg.get("skip_invalid", False):
            raise
        write_atomic(folder / "INVALID", f"{e}\n")
        write_atomic(done, "invalid\n")
        print(f"[hivtp.run] invalid {folder.name}: {e}", flush=True)
        return folder
    commit = git_commit()
    parts = [p for p in ("accuracy", "latency") if mode in (p, "both")]
    for part in parts:
        target = folder / f"{part}.json"
        if target.exists() and not cfg.get("force", False):
            continue  # this part finished before a kill; keep it
        print(f"[hivtp.run] {folder.name}: {part} {cfg['model']['name']} {cfg['method']['name']} "
              f"{method_params(cfg)}", flush=True)
        start = time.perf_counter()
        fn = run_accuracy_part if part == "accuracy" else run_latency_part
        rows = stamp(fn(cfg, folder), cfg, part, commit)
        write_json(target, rows)
        print(f"[hivtp.run] {folder.name}: {part} done, {len(rows)} rows, {time.perf_counter() - start:.1f} s", flush=True)
    write_atomic(done, time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    return folder


def main() -> None:
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
    def _main(cfg: Any) -> None:
        execute(cfg)

    _main()


if __name__ == "__main__":
    main()

"""Models without a download: shipped shapes, random-weight builds, and local checkpoints.

A *shape* is a JSON file in ``hivtp/zoo/shapes/``: the model config (for real shapes, the hub's
config.json) plus how to build its processor. From a shape this module builds

* a random-weight model of exactly that shape (``build_model``): the same compute as the real
  checkpoint, for latency and wiring tests; rows made with it say ``weights=random``;
* a processor (``build_processor``) with the shipped BPE tokenizer and a LLaVA chat template, for
  shapes that have one (the real 7B shapes have no tokenizer here: it would need a download);
* a complete local checkpoint (``build_checkpoint``) written with ``save_pretrained``, which every
  downstream path loads with ``from_pretrained`` exactly as it would load ``llava-hf/...``.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, MissingArtifactError
from .processors import build_processor_for
from .tokenizer import CHAT_TEMPLATES, build_tokenizer

__all__ = [
    "SHAPES_DIR",
    "available_shapes",
    "shape_spec",
    "shape_config",
    "build_model",
    "build_tokenizer",
    "build_processor",
    "build_checkpoint",
    "artifacts_dir",
    "checkpoint_dir",
    "resolve_checkpoint",
    "load_pretrained",
    "trained_dir",
    "TRAINED",
    "CHAT_TEMPLATES",
]

SHAPES_DIR = Path(__file__).parent / "shapes"
def available_shapes() -> list[str]:
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def _read_shape(name: str) -> str:
    path = SHAPES_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"unknown model shape {name!r}; shipped shapes: {', '.join(available_shapes())}.")
    return path.read_text()


def shape_spec(name: str) -> dict[str, Any]:
    """The parsed shape file (a fresh copy each call)."""
    return json.loads(_read_shape(name))


def shape_config(name: str, text_layers: int | None = None, attn_implementation: str | None = None):
    """The model config of a shape. ``text_layers`` cuts the LLM (cheap wiring tests at real shape)."""
    from transformers import AutoConfig

    cfg = dict(shape_spec(name)["config"])
    if text_layers is not None:
        cfg["text_config"] = {**cfg["text_config"], "num_hidden_layers": int(text_layers)}
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def _model_class(config):
    from transformers import (
        LlavaForConditionalGeneration,
        LlavaNextForConditionalGeneration,
        Qwen2_5_VLForConditionalGeneration,
    )

    classes = {
        "llava": LlavaForConditionalGeneration,
        "llava_next": LlavaNextForConditionalGeneration,
        "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    }
    if config.model_type not in classes:
        raise ConfigError(f"shape has model_type {config.model_type!r}; supported: {sorted(classes)}.")
    return classes[config.model_type]


def build_model(
    name: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    text_layers: int | None = None,
    attn_implementation: str = "sdpa",
):
    """A random-weight model of a shipped shape, in eval mode. Weights are initialised with the
    model's own ``_init_weights`` on the target device (fast on a GPU, even at 7B)."""
    config = shape_config(name, text_layers=text_layers, attn_implementation=attn_implementation)
    cls = _model_class(config)
    torch.manual_seed(seed)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = cls(config)
        finally:
            torch.set_default_dtype(previous)
    return model.eval()


def build_processor(name: str):
    """The processor of a shape that ships a tokenizer (offline shapes)."""
    spec = shape_spec(name)
    if not spec["processor"].get("tokenizer"):
        raise ConfigError(
            f"shape {name!r} has no shipped tokenizer (the real one needs a download from {spec.get('hub_id')}); "
            "synthesise input_ids for it (hivtp.latency does) or use an offline shape."
        )
    return build_processor_for(shape_config(name), spec["processor"])


def build_checkpoint(name: str, out_dir: str | os.PathLike, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """Write a random-weight checkpoint of an offline shape (safetensors weights + processor)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(name, seed=seed, dtype=dtype)
    model.save_pretrained(out, safe_serialization=True)
    build_processor(name).save_pretrained(out)
    stamp = {"shape": name, "seed": seed, "dtype": str(dtype).replace("torch.", ""), "weights": "random"}
    (out / "hivtp_build.json").write_text(json.dumps(stamp, indent=2) + "\n")
    return out


def artifacts_dir() -> Path:
    """Where offline artefacts live: ``$HIVTP_ARTIFACTS`` or ``<repo>/artifacts``."""
    env = os.environ.get("HIVTP_ARTIFACTS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "artifacts"


def checkpoint_dir(name: str) -> Path:
    return artifacts_dir() / "models" / name


#: shipped trained checkpoints (``make toy-model`` writes them): name -> directory
TRAINED_DIR = Path(__file__).parent / "trained"
TRAINED = ("toy-llava",)


def trained_dir(name: str) -> Path:
    return TRAINED_DIR / name


def resolve_checkpoint(name_or_path: str) -> str:
    """A local directory, a shipped trained model (``toy-llava``), an offline shape name (random
    weights, built by ``make models``), or a hub id (returned unchanged for ``from_pretrained``)."""
    if Path(name_or_path).is_dir():
        return str(name_or_path)
    if name_or_path in TRAINED:
        path = trained_dir(name_or_path)
        if not (path / "model.safetensors").is_file():
            raise MissingArtifactError(
                f"the trained checkpoint {name_or_path!r} is missing from {path}; it ships with the repository "
                "(restore it with `git checkout -- hivtp/zoo/trained`) or retrain it with `make toy-model`."
            )
        return str(path)
    if name_or_path in available_shapes():
        path = checkpoint_dir(name_or_path)
        if not (path / "config.json").is_file():
            raise MissingArtifactError(
                f"offline checkpoint {name_or_path!r} is not built yet (looked in {path}). Run `make models` "
                f"(or `python scripts/build_models.py {name_or_path}`)."
            )
        return str(path)
    return name_or_path


def load_pretrained(name_or_path: str):
    """(model in eval mode, processor) of a checkpoint name or directory (see ``resolve_checkpoint``),
    loaded with ``from_pretrained`` as a hub checkpoint is: LLaVA-1.5, LLaVA-NeXT or Qwen2.5-VL by its config."""
    from transformers import AutoConfig, AutoProcessor

    path = resolve_checkpoint(name_or_path)
    model = _model_class(AutoConfig.from_pretrained(path)).from_pretrained(path).eval()
    return model, AutoProcessor.from_pretrained(path)

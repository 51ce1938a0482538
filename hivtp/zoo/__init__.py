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

import difflib
import hashlib
import json
import os
import re
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
    "check_weights",
    "local_weights_digest",
    "weights_digest",
    "checkpoint_files",
    "local_checkpoint_files_digest",
    "local_config",
    "vision_geometry",
    "load_pretrained",
    "trained_dir",
    "TRAINED",
    "TOY_SIBLINGS",
    "TOY_SIBLING_RECIPES",
    "TOY_TRAJECTORIES",
    "is_offline_model",
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
#: siblings of the shipped toy: ``make toy-model``'s recipe exactly (4,000 steps), at seeds 1 and 2 where the
#: shipped toy is seed 0, trained on the Intel Xeon (2 cores, AVX-512, two threads) that also trained the
#: shipped toy. They exist so that an offline method row can be measured on three trainings of one recipe
#: (``make toy-trajectories``): a method difference that holds on all three is not one training's (``make
#: toy-siblings`` retrains them; bit-identical only on the same CPU and thread count). Name -> the recipe
#: fields ``--sibling`` sets (``scripts/train_toy.py``): the rest are ``TrainConfig``'s.
TOY_SIBLING_RECIPES = {"toy-llava-xeon-seed1": {"seed": 1},
                       "toy-llava-xeon-seed2": {"seed": 2}}
TOY_SIBLINGS = tuple(TOY_SIBLING_RECIPES)
#: the toys whose method rows ``make toy-trajectories`` compares: the shipped one (the reference) first
TOY_TRAJECTORIES = ("toy-llava", *TOY_SIBLINGS)
TRAINED = TOY_TRAJECTORIES


def trained_dir(name: str) -> Path:
    return TRAINED_DIR / name


#: a hub repository id as ``from_pretrained`` takes it: ``namespace/name`` (one slash)
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_offline_model(name_or_path: str) -> bool:
    """Whether a model belongs to the offline profile: a trained toy, a shipped shape that copies no hub
    checkpoint (the small ones), or a folder built or trained here from one (its ``hivtp_build.json``
    names the shape). A real-shape model (a hub id, a shape that copies one, a downloaded checkpoint) is
    not, on whatever device it runs: its rows may stand beside the paper's, a small model's never. A folder
    whose ``hivtp_build.json`` names no shipped shape (or does not parse) is taken for a real checkpoint."""
    name = str(name_or_path)
    if name in TRAINED:
        return True
    shape = name
    if shape not in available_shapes():
        build = Path(name).expanduser() / "hivtp_build.json"
        try:
            shape = json.loads(build.read_text()).get("shape") if build.is_file() else None
        except (ValueError, AttributeError):  # not JSON, or not an object
            shape = None
    return shape in available_shapes() and shape_spec(shape).get("hub_id") is None


def resolve_checkpoint(name_or_path: str) -> str:
    """A local directory, a shipped trained model (``toy-llava``), an offline shape name (random
    weights, built by ``make models``), or a hub id ``namespace/name`` (returned unchanged for
    ``from_pretrained``). A local checkpoint's safetensors files are checked for truncation here, so
    that every loader (lmms-eval, latency, :func:`load_pretrained`) names a damaged file and a fix.
    Anything else (a folder that does not exist, a misspelt shape name) is an error listing what exists."""
    name_or_path = str(name_or_path)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        check_weights(folder, fix="copy the checkpoint folder again")
        return str(folder) if name_or_path.startswith("~") else name_or_path  # from_pretrained does not expand ~
    if name_or_path in TRAINED:
        path = trained_dir(name_or_path)
        retrain = f"python scripts/train_toy.py --sibling {name_or_path}" if name_or_path in TOY_SIBLINGS else "make toy-model"
        if not (path / "model.safetensors").is_file():
            raise MissingArtifactError(
                f"the trained checkpoint {name_or_path!r} is missing from {path}; it ships with the repository "
                f"(restore it with `git checkout -- hivtp/zoo/trained`) or retrain it with `{retrain}`."
            )
        check_weights(path, fix=f"restore it with `git checkout -- hivtp/zoo/trained` (or retrain: `{retrain}`)")
        return str(path)
    if name_or_path in available_shapes():
        path = checkpoint_dir(name_or_path)
        if not (path / "config.json").is_file():
            raise MissingArtifactError(
                f"offline checkpoint {name_or_path!r} is not built yet (looked in {path}). Run `make models` "
                f"(or `python scripts/build_models.py {name_or_path}`)."
            )
        check_weights(path, fix=f"rebuild it with `python scripts/build_models.py --force {name_or_path}`")
        return str(path)
    if _is_hub_id(name_or_path):
        return name_or_path
    raise _not_found(name_or_path)


def _is_hub_id(text: str) -> bool:
    """``namespace/name`` whose first part is not a local folder (``artifacts/x`` is a path typo)."""
    return bool(HUB_ID.match(text)) and not Path(text.split("/")[0]).is_dir()


def _not_found(name_or_path: str) -> MissingArtifactError:
    known = list(TRAINED) + [s for s in available_shapes() if s not in TRAINED]
    close = difflib.get_close_matches(name_or_path, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return MissingArtifactError(
        f"{name_or_path!r} is neither an existing checkpoint folder nor a shipped model: no such folder "
        f"(looked in {Path(name_or_path).expanduser().resolve()}), and the shipped names are {', '.join(known)}.{hint} "
        "A hub checkpoint is named namespace/name, e.g. llava-hf/llava-1.5-7b-hf."
    )


def check_weights(folder: Path, fix: str = "copy the checkpoint folder again") -> None:
    """Raise MissingArtifactError naming the first safetensors file of ``folder`` that is cut short
    or unreadable (an interrupted copy or save), with ``fix``; safetensors itself names neither."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
    else:
        names = sorted(p.name for p in folder.glob("*.safetensors"))
    for name in names:
        problem = _safetensors_problem(folder / name)
        if problem:
            raise MissingArtifactError(f"weights file {folder / name} is damaged: {problem}. To fix it, {fix}.")


def weight_files(folder: Path) -> list[Path]:
    """The files ``from_pretrained`` takes a checkpoint's weights from, sorted by name: its safetensors
    files, or where it has none its PyTorch ``.bin`` files (which transformers then reads)."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def weights_digest(name_or_path: str) -> str:
    """The sha256 of a local checkpoint's weight files (:func:`weight_files`, concatenated): which
    weights a measurement was made on, so that a result file can be checked against the shipped model."""
    folder = Path(resolve_checkpoint(name_or_path))
    if not folder.is_dir():
        raise ConfigError(f"{name_or_path!r} is not a local checkpoint; a digest needs its files.")
    files = weight_files(folder)
    if not files:
        raise MissingArtifactError(f"{folder} holds no .safetensors or .bin weights to digest.")
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def local_weights_digest(name_or_path: str) -> str | None:
    """:func:`weights_digest` of a checkpoint whose files are here (a folder, a shipped or a built model);
    None when they are not (a hub id, or a shape not built yet: its loader says what to do). The digest
    is remembered per file state (name, size, inode, mtime, ctime: a copy that keeps the modification time
    still gets a new inode or ctime), so a sweep reads each checkpoint once."""
    folder = _local_folder(name_or_path)
    if folder is None:
        return None
    files = weight_files(folder)
    state = tuple((p.name, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) for p in files for st in [p.stat()])
    return _digest_of(str(folder.resolve()), state) if files else None


@lru_cache(maxsize=64)
def _digest_of(folder: str, state: tuple) -> str:  # ``state`` keys the cache: new files, new digest
    return weights_digest(folder)


#: weight files (digested on their own by :func:`weights_digest`) and the notes hivtp's builders and the
#: toy's trainer write beside them (build stamp, training record and logs), which no loader reads
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
NOTES = ("hivtp_build.json", "train_config.json", "train_log.jsonl", "eval_log.jsonl")


def checkpoint_files(folder: str | os.PathLike) -> list[str]:
    """The files of a checkpoint folder that change its answers besides the weights: every file at its
    top level (``from_pretrained`` reads no subfolder) except weight files, hivtp's :data:`NOTES` and
    hidden files. A rule by exclusion, so that config.json, generation_config.json, the processor's,
    tokenizer's and chat template's files, and any a new transformers reads, are all in."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix not in WEIGHT_SUFFIXES
                  and p.name not in NOTES)


def local_checkpoint_files_digest(name_or_path: str) -> str | None:
    """The sha256 of a local checkpoint's :func:`checkpoint_files` (names and contents,
    :func:`hivtp.runfolder.files_digest`); None when its files are not here (a hub id, or a shape not
    built yet), as :func:`local_weights_digest`. Editing config.json (e.g. ``vision_feature_layer``), the
    processor, tokenizer or chat template changes it; the weights do not (they have their own digest)."""
    from ..runfolder import files_digest

    folder = _local_folder(name_or_path)
    return None if folder is None else files_digest(folder, checkpoint_files(folder))


def _local_folder(name_or_path: str) -> Path | None:
    """The checkpoint folder of ``name_or_path`` when its files are here; None for a hub id or a shape
    not built yet (its loader says what to do)."""
    try:
        folder = Path(resolve_checkpoint(name_or_path))
    except MissingArtifactError:
        return None
    return folder if folder.is_dir() else None


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, from its header alone: layout
    ``[u64 little-endian header size][JSON header][data]``, each tensor's ``data_offsets`` relative to
    the data, so the file must be exactly 8 + header size + the largest end offset bytes long."""
    if not path.is_file():
        return "the file is missing"
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"it holds {size} bytes, too few for a safetensors header"
        header_len = int.from_bytes(head, "little")
        if 8 + header_len > size:
            return f"its header says {header_len} bytes but the file holds {size} in all (cut short)"
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"its header is not readable JSON ({exc})"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t]
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        return f"it holds {size} bytes where its header says {expected} ({'cut short' if size < expected else 'extra bytes'})"
    return None


def local_config(name_or_path: str):
    """A checkpoint's model config without loading weights or asking the hub: from a local folder, a
    shipped trained model, a shipped shape, or a hub id that a shipped shape copies (``hub_id``);
    None for any other hub id."""
    from transformers import AutoConfig

    name_or_path = str(name_or_path)
    folder = Path(name_or_path).expanduser()
    if name_or_path in TRAINED:
        folder = trained_dir(name_or_path)
    if (folder / "config.json").is_file():
        return AutoConfig.from_pretrained(folder)
    if name_or_path in available_shapes():
        return shape_config(name_or_path)
    for shape in available_shapes():
        if shape_spec(shape).get("hub_id") == name_or_path:
            return shape_config(shape)
    return None


def vision_geometry(config) -> tuple[tuple[int, int], int, int]:
    """(patch grid, encoder layers, 0-based layer whose output is the feature layer) of a LLaVA config:
    what a method's ``check`` receives from the adapter once the model is loaded
    (:class:`hivtp.adapters.base.ModelAdapter`), read from the config instead."""
    from ..vision import hidden_state_index

    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    layer = config.vision_feature_layer
    layers = [layer] if isinstance(layer, int) else list(layer)
    num_layers = vc.num_hidden_layers
    return (side, side), num_layers, max(hidden_state_index(x, num_layers) for x in layers) - 1


def load_pretrained(name_or_path: str):
    """(model in eval mode, processor) of a checkpoint name or directory (see ``resolve_checkpoint``),
    loaded with ``from_pretrained`` as a hub checkpoint is: LLaVA-1.5, LLaVA-NeXT or Qwen2.5-VL by its config."""
    from transformers import AutoConfig, AutoProcessor

    path = resolve_checkpoint(name_or_path)
    model = _model_class(AutoConfig.from_pretrained(path)).from_pretrained(path).eval()
    return model, AutoProcessor.from_pretrained(path)

"""The deterministic, resumable training loop of the toy LLaVA.

    python scripts/train_toy.py                     # = make toy-model
    python scripts/train_toy.py --steps 3 --work-dir /tmp/t --no-save   # the first 3 steps only

Everything is trained from scratch (vision tower, projector, language model). Each image is encoded
once for all its questions. A checkpoint (model, optimiser, step) is written every
``ckpt_every`` steps and on Ctrl-C, and the run resumes from it; the per-step loss log is a JSONL
file whose lines a re-run reproduces.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..vision import hidden_state_index, tower_parts
from ..world import FAMILIES, KINDS
from .data import Batch, encode_items, patch_labels, sample_items
from .evaluate import evaluate, family_accuracy, held_out_items

__all__ = ["TrainConfig", "build", "loss_of", "loss_of_full", "train"]

SHAPE = "toy-llava"


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 3500
    images_per_step: int = 8
    questions_per_image: int = 6
    lr: float = 4e-4
    warmup: int = 300
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    clip: float = 1.0
    aux_weight: float = 0.5  # weight of the encoder's auxiliary dense loss (0 = answers only)
    threads: int = 2
    log_every: int = 10
    ckpt_every: int = 100
    eval_every: int = 250
    eval_per_family: int = 32

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def build(seed: int):
    """The untrained model (seeded init) and its processor."""
    from ..zoo import build_model, build_processor

    return build_model(SHAPE, seed=seed).train(), build_processor(SHAPE)


def _feature_layer(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Feature-layer patch tokens [I, P, D_vision] (CLS dropped, the "default" strategy), running
    the tower only to the feature layer (the model's own get_image_features also runs the unused
    last layer). Gradients flow."""
    embeddings, pre_layrnorm, layers = tower_parts(model.model.vision_tower)
    last = hidden_state_index(model.config.vision_feature_layer, len(layers))  # hidden-state index
    h = pre_layrnorm(embeddings(pixel_values))
    for layer in layers[:last]:
        h = layer(h, None)
    return h[:, 1:]


def _image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected patch features [I, P, D_text]."""
    return model.model.multi_modal_projector(_feature_layer(model, pixel_values))


def aux_head(model, seed: int) -> torch.nn.Linear:
    """The auxiliary dense head (feature-layer token -> kind under it, or background). Training
    only: it gives the from-scratch encoder a signal on every patch, so that it learns object
    features in hundreds of steps instead of waiting for the sparse answer loss; it is not part
    of the saved llava-hf checkpoint."""
    torch.manual_seed(seed + 1)
    return torch.nn.Linear(model.config.vision_config.hidden_size, 1 + len(KINDS))


def _answer_loss(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``hidden`` [Q, S, D] and ``targets`` [Q, S - 1]: position t predicts token t + 1."""
    where = targets != -100  # the answer positions only: the head over 600+ positions is wasted work
    logits = model.lm_head(hidden[:, :-1][where])  # [A, vocab]
    return F.cross_entropy(logits.float(), targets[where])


def loss_of_full(model, batch: Batch) -> torch.Tensor:
    """The plain loss: every question's full sequence through the LLM (the reference for tests)."""
    feats = _image_features(model, batch.pixel_values)[batch.image_index]  # [Q, P, D]
    embeds = model.get_input_embeddings()(batch.input_ids)  # [Q, L, D]
    mask = (batch.input_ids == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
    return _answer_loss(model, hidden, batch.labels[:, 1:])


def aux_loss_of(head: torch.nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Patch classification; background patches (most of them) weigh 0.1."""
    weight = torch.ones(head.out_features)
    weight[0] = 0.1
    return F.cross_entropy(head(feats).flatten(0, 1), labels.flatten(), weight=weight)


def loss_of(model, batch: Batch, head: torch.nn.Linear | None = None, aux_weight: float = 0.0):
    """The same loss with the shared prefix (BOS, "USER: ", 576 image tokens) run once per image:
    its key/value cache is gathered per question and the question suffixes attend to it. Causal
    attention makes this exactly the full-sequence computation at a fraction of the cost."""
    p = batch.prefix_len
    tokens = _feature_layer(model, batch.pixel_values)  # [I, P, D_vision]
    feats = model.model.multi_modal_projector(tokens)  # [I, P, D]
    prefix_ids = batch.input_ids[:1, :p].expand(feats.shape[0], p)  # [I, p] identical rows
    embeds = model.get_input_embeddings()(prefix_ids)
    mask = (prefix_ids == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
    lm = model.model.language_model
    cache = lm(inputs_embeds=embeds, use_cache=True).cache  # a DynamicCache
    for layer in cache.layers:  # [I, ...] -> [Q, ...]: one copy of its image's prefix per question
        layer.keys, layer.values = layer.keys[batch.image_index], layer.values[batch.image_index]
    suffix = batch.input_ids[:, p:]  # [Q, S]
    positions = torch.arange(p, batch.input_ids.shape[1]).expand_as(suffix)
    hidden = lm(
        inputs_embeds=model.get_input_embeddings()(suffix),
        attention_mask=batch.attention_mask,  # [Q, p + S]: the prefix is never padding
        position_ids=positions,
        cache=cache,
        use_cache=True,
    ).last_hidden_state  # [Q, S, D]
    loss = _answer_loss(model, hidden, batch.labels[:, p + 1 :])
    if head is None or aux_weight == 0:
        return loss
    return loss, aux_loss_of(head, tokens, batch.patch_labels)


def _save_state(path: Path, model, head, opt, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "aux_head": head.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never corrupts the last checkpoint


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("step", -1) < upto]


def train(cfg: TrainConfig, work_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, progress: bool = True):
    """Train (or resume) and, if ``out_dir`` is given, write the final llava-hf checkpoint there.
    Returns the per-step log rows of this run's work dir."""
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model, processor = build(cfg.seed)
    head = aux_head(model, cfg.seed)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    state_path, log_path = work / "last.pt", work / "train_log.jsonl"
    start = 0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["aux_head"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        print(f"resuming from step {start} ({state_path})", flush=True)
    log = _read_log(log_path, start)
    log_path.write_text("".join(json.dumps(r) + "\n" for r in log))
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    tokens = model.config.image_seq_length
    t0, step = time.perf_counter(), start
    try:
        with log_path.open("a") as fh:
            for step in range(start, cfg.steps):
                images, items, scenes = sample_items(
                    cfg.seed, step, cfg.images_per_step, cfg.questions_per_image, with_scenes=True
                )
                batch = encode_items(processor, images, items, tokens)
                batch.patch_labels = torch.stack([patch_labels(s) for s in scenes])
                for group in opt.param_groups:
                    group["lr"] = cfg.lr_at(step)
                answer, aux = loss_of(model, batch, head, cfg.aux_weight) if cfg.aux_weight else (loss_of(model, batch), None)
                loss = answer if aux is None else answer + cfg.aux_weight * aux
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                opt.step()
                row = {"step": step, "loss": round(loss.item(), 6), "answer_loss": round(answer.item(), 6), "lr": cfg.lr_at(step)}
                if aux is not None:
                    row["aux_loss"] = round(aux.item(), 6)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                log.append(row)
                if progress and (step + 1) % cfg.log_every == 0:
                    rate = (step + 1 - start) / (time.perf_counter() - t0)
                    recent = sum(r.get("answer_loss", r["loss"]) for r in log[-cfg.log_every :]) / min(len(log), cfg.log_every)
                    eta = (cfg.steps - step - 1) / max(rate, 1e-9) / 60
                    print(f"step {step + 1}/{cfg.steps}  answer loss {recent:.4f}  {rate:.2f} steps/s  eta {eta:.1f} min", flush=True)
                if (step + 1) % cfg.ckpt_every == 0:
                    _save_state(state_path, model, head, opt, step + 1)
                if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                    _report_eval(model, processor, cfg, step + 1, work)
        step = cfg.steps
    except KeyboardInterrupt:
        print(f"interrupted: saving step {step} to {state_path}; run again to resume", flush=True)
        _save_state(state_path, model, head, opt, step)
        raise
    _save_state(state_path, model, head, opt, step)
    if out_dir is not None:
        save_checkpoint(model, processor, cfg, work, Path(out_dir))
    return log


def _report_eval(model, processor, cfg: TrainConfig, step: int, work: Path) -> dict[str, float]:
    model.eval()
    images, items = held_out_items(cfg.seed, cfg.eval_per_family)
    acc = family_accuracy(evaluate(model, processor, images, items))
    model.train()
    line = {"step": step, **{k: round(v, 4) for k, v in acc.items()}}
    with (work / "eval_log.jsonl").open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    print("held-out accuracy " + "  ".join(f"{k} {v:.2f}" for k, v in acc.items()), flush=True)
    return acc


def save_checkpoint(model, processor, cfg: TrainConfig, work: Path, out: Path) -> Path:
    """Write the llava-hf checkpoint (safetensors + processor) with the training log beside it."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    for name in ("train_log.jsonl", "eval_log.jsonl", "config.json"):
        if (work / name).is_file():
            target = "train_config.json" if name == "config.json" else name
            (out / target).write_text((work / name).read_text())
    stamp = {"shape": SHAPE, "seed": cfg.seed, "weights": "trained", "steps": cfg.steps, "families": list(FAMILIES)}
    (out / "hivtp_build.json").write_text(json.dumps(stamp, indent=2) + "\n")
    return out

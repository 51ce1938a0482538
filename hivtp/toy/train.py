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

from ..atomic import atomic_open
from ..vision import hidden_state_index, tower_parts
from ..world import COLOURS, FAMILIES, KINDS
from .data import Batch, encode_items, patch_labels, sample_items
from .evaluate import evaluate, family_accuracy, held_out_items
from .init import conv_like_init, mimetic_init

__all__ = ["TrainConfig", "AuxHeads", "build", "loss_of", "loss_of_full", "train"]

SHAPE = "toy-llava"


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 2800
    images_per_step: int = 6
    questions_per_image: int = 10
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    clip: float = 1.0
    aux_weight: float = 0.5  # weight of the encoder's auxiliary losses (0 = answers only)
    encoder_steps: int = 600  # stage 1: the first steps train the vision tower on the auxiliary losses alone ...
    encoder_objects: int = 10  # ... on scenes this crowded (at most one object per kind; fewer if they do not fit)
    one_object_until: int = 900  # curriculum: scenes hold a single object before this step ...
    two_objects_until: int = 1300  # ... at most two before this one, then the world's 1-4
    retrieve_layer: int = 1  # supervised attention (see ``attention_losses``): this layer's head 0 finds what a mention names ...
    gather_layer: int = 2  # ... this layer's heads 0 / 1 / 2 / 3 bring the first / last mention / right option / side word to the answer position (-1: off) ...
    bind_layer: int = 0  # ... and this layer's heads 1 / 2 bring an option's question noun / letter to its word (-1: off)
    where_weight: float = 20.0  # the mention probe's (column, row) MSE in [0, 1] units is small: scale it to count
    placement_weight: float = 20.0  # the same scale for the (column, row) read-out of the projected object tokens (0: off)
    threads: int = 2
    log_every: int = 10
    ckpt_every: int = 100
    eval_every: int = 400
    eval_per_family: int = 32

    def lr_at(self, step: int, language: bool = False) -> float:
        """Linear warm-up, then cosine decay to ``min_lr_ratio``. The language side (projector and
        LLM) starts at ``encoder_steps`` and warms up again from there."""
        if language:
            if step < self.encoder_steps:
                return 0.0
            return self.lr_at(step) * min(1.0, (step - self.encoder_steps + 1) / self.warmup)
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def build(seed: int):
    """The untrained model (seeded init; the tower's attention starts convolution-like, see
    :mod:`hivtp.toy.init`) and its processor."""
    from ..zoo import build_model, build_processor

    model = build_model(SHAPE, seed=seed).train()
    conv_like_init(model.model.vision_tower, seed)
    mimetic_init(model.model.language_model, seed)
    return model, build_processor(SHAPE)


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


def cell_positions(grid: int) -> torch.Tensor:
    """[grid * grid, 2]: each raster cell's (column, row), scaled to [0, 1]."""
    cells = torch.arange(grid * grid)
    return torch.stack([cells % grid, cells // grid], -1).float() / (grid - 1)


class AuxHeads(torch.nn.Module):
    """Linear read-outs, training only (not part of the saved llava-hf checkpoint). Those of the
    feature-layer tokens give the from-scratch encoder a dense signal, so that it learns object
    features in hundreds of steps instead of waiting for the sparse answer loss:

    * ``colour``: the colour under each patch centre, or background (a local property);
    * ``position``: each token's (column, row), so that "left of" can be read from any token;
    * ``kind``: each object's (colour, shape) from the *mean* of the tokens on it. Shape is a
      property of the whole object (the interior patches of a square and a circle look alike), and
      the language model reads objects by pooling their tokens with attention, so the pooled
      tokens, not each one, must carry it.

    With the language model's width (``text_width``) it also holds ``placement``, the (column, row)
    read-out of the *projected* object tokens (``placement_loss``), and the mention probes
    (``MentionProbes``)."""

    def __init__(self, width: int, grid: int = 24, text_width: int | None = None):
        super().__init__()
        self.grid = grid
        self.colour = torch.nn.Linear(width, 1 + len(COLOURS))
        self.position = torch.nn.Linear(width, 2)
        self.kind = torch.nn.Linear(width, len(KINDS))
        # kind index + 1 -> colour index + 1 (0 = background)
        self.register_buffer("colour_of", torch.tensor([0] + [list(COLOURS).index(c) + 1 for c, _ in KINDS]), persistent=False)
        self.mention = None if text_width is None else MentionProbes(text_width, grid)  # the language side's read-outs
        self.placement = None if text_width is None else torch.nn.Linear(text_width, 2)  # (column, row) of a projected token

    def probes(self, batch: Batch, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """The language side's probe losses (see ``MentionProbes``); none without ``text_width``."""
        return {} if self.mention is None else self.mention(batch, hidden)

    def placement_loss(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """MSE of each object patch's (column, row) read linearly from its *projected* token ``feats``
        [I, P, D_text], the one the language model sees. The grounding loss pulls an object's projected tokens towards one
        word embedding, which erases where each patch is (the encoder's tokens carry it, the
        projected ones hardly did: R^2 0.33 / -0.37 for column / row in the model trained without
        this loss, ``scripts/toy_position_probe.py``); "left of" needs it kept."""
        on_object = labels > 0  # [I, P]
        if not on_object.any():
            return feats.sum() * 0
        where = cell_positions(self.grid).expand(*labels.shape, 2)[on_object]  # [N, 2]
        return F.mse_loss(self.placement(feats[on_object]), where)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The summed auxiliary loss."""
        return sum(self.losses(tokens, labels).values())

    def losses(self, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``tokens`` [I, P, D] feature-layer patch tokens, ``labels`` [I, P] kind index + 1 under
        each patch centre (0 = background). Returns each term."""
        weight = torch.ones(self.colour.out_features)
        weight[0] = 0.1  # background patches are most of them
        colour = F.cross_entropy(self.colour(tokens).flatten(0, 1), self.colour_of[labels].flatten(), weight=weight)
        place = self.position(tokens)  # [I, P, 2]
        position = F.mse_loss(place, cell_positions(self.grid).expand_as(place))
        # objects are unique by kind within a scene: kind k's patches are its object's patches
        masks = (labels.unsqueeze(1) == torch.arange(1, len(KINDS) + 1).view(1, -1, 1)).float()  # [I, K, P]
        sizes = masks.sum(-1)  # [I, K]
        pooled = (masks @ tokens) / sizes.clamp(min=1).unsqueeze(-1)  # [I, K, D]
        present = sizes > 0
        target = torch.arange(len(KINDS)).expand_as(sizes)[present]
        kind = F.cross_entropy(self.kind(pooled[present]), target) if present.any() else tokens.sum() * 0
        return {"colour": colour, "position": position, "kind": kind}


def aux_heads(model, seed: int) -> AuxHeads:
    torch.manual_seed(seed + 1)
    return AuxHeads(model.config.vision_config.hidden_size, text_width=model.config.text_config.hidden_size)


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


def loss_of(model, batch: Batch, feats: torch.Tensor | None = None, taps=None):
    """The same loss with the shared prefix (BOS, "USER: ", 576 image tokens) run once per image:
    its key/value cache is gathered per question and the question suffixes attend to it. Causal
    attention makes this exactly the full-sequence computation at a fraction of the cost.
    ``feats``: the projected patch tokens [I, P, D], if already computed. ``taps`` (layer indices): (answer loss,
    {layer: its attention rows}, {layer: its suffix output [Q, S, D]}) for ``attention_losses`` and
    ``MentionProbes``."""
    p = batch.prefix_len
    feats = _image_features(model, batch.pixel_values) if feats is None else feats  # [I, P, D]
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
    with _QueryTap(lm, taps or ()) as tap:
        hidden = lm(
            inputs_embeds=model.get_input_embeddings()(suffix),
            attention_mask=batch.attention_mask,  # [Q, p + S]: the prefix is never padding
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state  # [Q, S, D]
    loss = _answer_loss(model, hidden, batch.labels[:, p + 1 :])
    if taps:
        rows = {i: _AttentionRows(lm.layers[i].self_attn, *tap.inputs[i], cache.layers[i].keys, batch.attention_mask, p) for i in taps}
        return loss, rows, tap.outputs
    return loss


class _QueryTap:
    """Records what chosen attention layers receive during one forward (their normed input and
    rotary cos / sin), so that a few rows of their attention can be recomputed exactly afterwards
    without asking the whole model for eager attention weights."""

    def __init__(self, lm, layers):
        self.lm, self.layers, self.inputs, self.outputs, self.handles = lm, tuple(layers), {}, {}, []

    def __enter__(self):
        for i in self.layers:
            self.handles.append(self.lm.layers[i].self_attn.register_forward_hook(self._record(i), with_kwargs=True))
            self.handles.append(self.lm.layers[i].register_forward_hook(self._record_output(i)))
        return self

    def _record_output(self, i):
        def hook(module, args, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output
        return hook

    def _record(self, i):
        def hook(module, args, kwargs, output):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            self.inputs[i] = (hidden, kwargs["position_embeddings"])
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


class _AttentionRows:
    """The attention probabilities [N, H, p + S] of chosen suffix rows of one layer, recomputed from
    its recorded input: the same q_proj, rotary embedding, scaling and (causal, padding) mask as the
    layer's own forward, against the keys it cached (prefix + suffix)."""

    def __init__(self, attn, hidden, cos_sin, keys, attention_mask, prefix_len):
        self.attn, self.hidden, (self.cos, self.sin) = attn, hidden, cos_sin  # hidden [Q, S, D], cos [Q, S, d]
        self.keys, self.mask, self.p = keys, attention_mask.bool(), prefix_len  # keys [Q, H, p + S, d]

    def __call__(self, question: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``question`` / ``position`` [N] long: rows by question index and suffix position."""
        from transformers.models.llama.modeling_llama import rotate_half

        heads, dim = self.keys.shape[1], self.keys.shape[-1]
        q = self.attn.q_proj(self.hidden[question, position]).view(-1, heads, dim)  # [N, H, d]
        cos, sin = self.cos[question, position].unsqueeze(1), self.sin[question, position].unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        logits = torch.einsum("nhd,nhkd->nhk", q, self.keys[question]) * self.attn.scaling  # [N, H, p + S]
        seen = torch.arange(self.keys.shape[2]).unsqueeze(0) <= (self.p + position).unsqueeze(1)  # causal
        allowed = seen & self.mask[question]
        return logits.float().masked_fill(~allowed.unsqueeze(1), float("-inf")).softmax(-1)


def _target_keys(batch: Batch, qi: int, m, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys [L] bool, kinds [K] bool): the prefix keys of the patches of the objects ``m`` names in
    question ``qi``'s image, or BOS when it has none; and which kinds those objects are."""
    labels = batch.patch_labels[int(batch.image_index[qi])]  # [P]
    named = torch.tensor([m.matches(k) for k in KINDS])  # [K]
    hit = named[labels.clamp(min=1) - 1] & (labels > 0)  # [P]
    keys = torch.zeros(batch.input_ids.shape[1], dtype=torch.bool)
    if hit.any():
        keys[start : start + hit.numel()] = hit
    else:
        keys[0] = True  # BOS: "nothing named is here"
    present = torch.zeros(len(KINDS), dtype=torch.bool)
    present[labels[labels > 0].unique() - 1] = True
    return keys, named & present


def _mass_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log(attention mass on the target keys), averaged: ``probs`` and ``targets`` [N, L]."""
    return -(probs * targets).sum(-1).clamp(min=1e-6).log().mean()


def attention_losses(model, batch: Batch, rows: dict, cfg: "TrainConfig") -> dict[str, torch.Tensor]:
    """Supervised attention, a training-only signal that turns the language model's hardest step into
    a first-order one. Matching ("is there a red circle?") needs attention keyed on *what* a phrase
    names; from the answer loss alone its gradient is tiny (the named object is a few of 600 keys),
    and the run sits at always-yes. So:

    * ``retrieve``: at each mention's last word, head 0 of ``retrieve_layer`` puts its mass on the
      patches of the objects the mention names, or on BOS when the image has none ("the red circle"
      absent; an option that is not the answer). What that head returns then says "found" or "not
      found" in one direction;
    * ``gather``: at the position that predicts the answer word, heads 0 and 1 of ``gather_layer`` look
      at the first and the last mention of the question, head 2 at the option that was found, head 3
      at the side word of "Is the A on the left of the B?" (the answer compares it with where A and B are);
    * ``bind``: at an option's word, heads 1 and 2 of ``bind_layer`` look at the question's noun and
      at the option's letter (so that retrieval knows "red *circle*" and the answer knows "B").

    Each is -log(attention mass on the target), averaged over rows."""
    p = batch.prefix_len
    start = p - batch.patch_labels.shape[1]  # prefix position of patch 0
    width = batch.input_ids.shape[1]
    one_hot = lambda at: torch.nn.functional.one_hot(torch.tensor(at), width).bool()  # noqa: E731
    retrieve, gather, bind = ([], [], []), ([], [], []), ([], [], [])  # (question, suffix position, targets [heads, L])
    for qi, mentions in enumerate(batch.mentions):
        question = [m for m in mentions if not m.option]
        found = []
        for m in mentions:
            keys, _ = _target_keys(batch, qi, m, start)
            retrieve[0].append(qi), retrieve[1].append(m.at - p), retrieve[2].append(keys.unsqueeze(0))
            if m.option:
                if not keys[0]:  # this option names an object that is there: the answer
                    found.append(m.at)
                bind[0].append(qi), bind[1].append(m.at - p)
                bind[2].append(torch.stack([one_hot(question[-1].at), one_hot(m.letter_at)]))
        if question:
            targets = {0: question[0].at, 1: question[-1].at}  # head: the position it should look at
            if len(found) == 1:
                targets[2] = found[0]
            if batch.side_at and batch.side_at[qi] is not None:
                targets[3] = batch.side_at[qi]
            gather[0].append(qi), gather[1].append(batch.answer_at[qi] - p)
            gather[2].append({h: one_hot(at) for h, at in targets.items()})
    out = {}
    if retrieve[0]:
        probs = rows[cfg.retrieve_layer](torch.tensor(retrieve[0]), torch.tensor(retrieve[1]))[:, :1]  # [N, 1, L]
        out["retrieve"] = _mass_loss(probs.flatten(0, 1), torch.cat(retrieve[2]))
    if cfg.gather_layer >= 0 and gather[0]:
        probs = rows[cfg.gather_layer](torch.tensor(gather[0]), torch.tensor(gather[1]))  # [N, H, L]
        pairs = [(n, h, t) for n, ts in enumerate(gather[2]) for h, t in ts.items()]
        out["gather"] = _mass_loss(torch.stack([probs[n, h] for n, h, _ in pairs]), torch.stack([t for *_, t in pairs]))
    if cfg.bind_layer >= 0 and bind[0]:
        probs = rows[cfg.bind_layer](torch.tensor(bind[0]), torch.tensor(bind[1]))[:, 1:3]  # [N, 2, L]
        out["bind"] = _mass_loss(probs.flatten(0, 1), torch.cat(bind[2]))
    return out


class MentionProbes(torch.nn.Module):
    """Linear read-outs of the language model's state at a mention's last word, after the retrieval
    layer, training only: how many objects it names (0-4) and, when it names one, where that object
    is ((column, row) of its patches' mean). They make the retrieved state carry what counting and
    left / right questions compare, a first-order signal the answer loss alone gives slowly."""

    def __init__(self, width: int, grid: int = 24, max_count: int = 4):
        super().__init__()
        self.grid = grid
        self.count = torch.nn.Linear(width, max_count + 1)
        self.where = torch.nn.Linear(width, 2)

    def forward(self, batch: Batch, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """``hidden`` [Q, S, D]: the retrieval layer's suffix output."""
        p, states, counts, single, places = batch.prefix_len, [], [], [], []
        where = cell_positions(self.grid)  # [P, 2]
        for qi, mentions in enumerate(batch.mentions):
            labels = batch.patch_labels[int(batch.image_index[qi])]
            for m in mentions:
                _, named = _target_keys(batch, qi, m, p - labels.numel())
                states.append(hidden[qi, m.at - p])
                counts.append(int(named.sum()))
                if counts[-1] == 1:
                    on = labels == int(named.nonzero()[0]) + 1
                    single.append(len(states) - 1), places.append(where[on].mean(0))
        if not states:
            return {}
        states = torch.stack(states)
        out = {"count_probe": F.cross_entropy(self.count(states), torch.tensor(counts).clamp(max=self.count.out_features - 1))}
        if single:
            out["where_probe"] = F.mse_loss(self.where(states[single]), torch.stack(places))
        return out


def _save_state(path: Path, model, heads, opt, step: int) -> None:
    # atomic: an interrupted save never corrupts the last checkpoint
    with atomic_open(path, "wb") as f:
        torch.save({"model": model.state_dict(), "aux_heads": heads.state_dict(), "opt": opt.state_dict(), "step": step}, f)


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("step", -1) < upto]


def objects_at(cfg: TrainConfig, step: int) -> tuple[int, int] | None:
    """The curriculum: crowded scenes for the encoder stage (many objects to learn shapes from per
    image encoded), then one object per scene, up to two, and the world's own 1-4 (None)."""
    if step < cfg.encoder_steps:
        return (cfg.encoder_objects, cfg.encoder_objects)
    if step < cfg.one_object_until:
        return (1, 1)
    if step < cfg.two_objects_until:
        return (1, 2)
    return None


def batch_at(cfg: TrainConfig, processor, step: int, image_tokens: int) -> Batch:
    """Step ``step``'s batch: images and patch labels, plus the questions after the encoder stage."""
    questions = 0 if step < cfg.encoder_steps else cfg.questions_per_image
    images, items, scenes = sample_items(
        cfg.seed, step, cfg.images_per_step, questions, with_scenes=True, objects=objects_at(cfg, step)
    )
    labels = torch.stack([patch_labels(s) for s in scenes])
    if not items:  # the encoder stage: no language model
        pixels = processor.image_processor(images, return_tensors="pt").pixel_values
        return Batch(pixels, torch.zeros(0, dtype=torch.long), None, None, None, 0, labels)
    batch = encode_items(processor, images, items, image_tokens)
    batch.patch_labels = labels
    return batch


def kind_word_ids(tokenizer) -> list[list[int]]:
    """Per kind, the token ids of its colour word and of its shape word as a question spells them
    (" red", " circle")."""
    return [tokenizer(" " + c, add_special_tokens=False).input_ids + [-1] + tokenizer(" " + s, add_special_tokens=False).input_ids
            for c, s in KINDS]


def grounding_loss(model, feats: torch.Tensor, labels: torch.Tensor, words: list[list[int]]) -> torch.Tensor:
    """1 - cos(projected image token ``feats`` [I, P, D_text], colour word + shape word embedding)
    over the object patches:
    the projector learns to put an object's tokens where the words that name it are, so that the
    language model's attention (see ``init.mimetic_init``) can find "the red circle" from its first
    steps. The word embeddings are targets only (detached); the answer loss trains them."""
    table = model.get_input_embeddings().weight.detach()
    targets = []
    for ids in words:  # colour ids, -1, shape ids
        cut = ids.index(-1)
        targets.append(table[ids[:cut]].mean(0) + table[ids[cut + 1 :]].mean(0))
    targets = torch.stack(targets)  # [K, D_text]
    on_object = labels > 0
    if not on_object.any():
        return feats.sum() * 0
    return (1 - F.cosine_similarity(feats[on_object], targets[labels[on_object] - 1], dim=-1)).mean()


def step_losses(model, heads: AuxHeads, batch: Batch, words: list[list[int]] | None = None, cfg: TrainConfig | None = None) -> dict[str, torch.Tensor]:
    """The losses of one step: ``answer`` once there are questions, then each auxiliary term
    (``grounding`` with the language model, given the kinds' ``words``; given ``cfg``: ``placement``,
    ``retrieve`` / ``gather`` / ``bind`` (see ``attention_losses``) and the mention probes). The
    ``placement`` and ``where_probe`` terms are returned (and logged) already multiplied by their
    weights."""
    if batch.input_ids is None:
        return heads.losses(_feature_layer(model, batch.pixel_values), batch.patch_labels)
    tokens = _feature_layer(model, batch.pixel_values)  # [I, P, D_vision]
    feats = model.model.multi_modal_projector(tokens)  # [I, P, D_text]: run once for every loss that reads it
    taps = () if cfg is None or cfg.retrieve_layer < 0 else tuple(sorted({cfg.retrieve_layer, cfg.gather_layer, cfg.bind_layer} - {-1}))
    answer = loss_of(model, batch, feats=feats, taps=taps)
    if taps:
        answer, rows, outputs = answer
    parts = {"answer": answer, **heads.losses(tokens, batch.patch_labels)}
    if words is not None:
        parts["grounding"] = grounding_loss(model, feats, batch.patch_labels, words)
    if cfg is not None and cfg.placement_weight and heads.placement is not None:
        parts["placement"] = cfg.placement_weight * heads.placement_loss(feats, batch.patch_labels)
    if taps:
        parts.update(attention_losses(model, batch, rows, cfg))
        probes = heads.probes(batch, outputs[cfg.retrieve_layer])
        if "where_probe" in probes:
            probes["where_probe"] = cfg.where_weight * probes["where_probe"]
        parts.update(probes)
    return parts


def train(cfg: TrainConfig, work_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, progress: bool = True):
    """Train (or resume) and, if ``out_dir`` is given, write the final llava-hf checkpoint there.
    Returns the per-step log rows of this run's work dir."""
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model, processor = build(cfg.seed)
    heads = aux_heads(model, cfg.seed)
    vision = list(model.model.vision_tower.parameters()) + list(heads.parameters())
    language = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower.")]
    params = vision + language
    groups = [{"params": vision, "language": False}, {"params": language, "language": True}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    state_path, log_path = work / "last.pt", work / "train_log.jsonl"
    start = 0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        missing = sorted(set(heads.state_dict()) - set(state["aux_heads"]))
        if missing:
            raise ValueError(f"{state_path} was written by an older recipe (its training heads lack {missing}); "
                             "resume it with the code that wrote it, or start afresh with another --work-dir.")
        heads.load_state_dict(state["aux_heads"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        print(f"resuming from step {start} ({state_path})", flush=True)
    log = _read_log(log_path, start)
    log_path.write_text("".join(json.dumps(r) + "\n" for r in log))
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    tokens = model.config.image_seq_length
    words = kind_word_ids(processor.tokenizer)
    t0, step = time.perf_counter(), start
    try:
        with log_path.open("a") as fh:
            for step in range(start, cfg.steps):
                batch = batch_at(cfg, processor, step, tokens)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr_at(step, group["language"])
                parts = step_losses(model, heads, batch, words, cfg)
                aux = sum(v for k, v in parts.items() if k != "answer")
                loss = parts.get("answer", 0) + cfg.aux_weight * aux
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                opt.step()
                row = {"step": step, "loss": round(loss.item(), 6), "lr": cfg.lr_at(step), "aux_loss": round(aux.item(), 6)}
                row.update({f"{k}_loss": round(v.item(), 6) for k, v in parts.items()})
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                log.append(row)
                if progress and (step + 1) % cfg.log_every == 0:
                    _report_progress(cfg, log, step, start, t0)
                if (step + 1) % cfg.ckpt_every == 0:
                    _save_state(state_path, model, heads, opt, step + 1)
                if _eval_due(cfg, step + 1):
                    _report_eval(model, processor, cfg, step + 1, work)
        step = cfg.steps
    except KeyboardInterrupt:
        print(f"interrupted: saving step {step} to {state_path}; run again to resume", flush=True)
        _save_state(state_path, model, heads, opt, step)
        raise
    _save_state(state_path, model, heads, opt, step)
    if out_dir is not None:
        save_checkpoint(model, processor, cfg, work, Path(out_dir))
    return log


def _eval_due(cfg: TrainConfig, done: int) -> bool:
    """Held-out accuracy every ``eval_every`` steps once the language model trains, and at the end."""
    return bool(cfg.eval_every) and done > cfg.encoder_steps and (done % cfg.eval_every == 0 or done == cfg.steps)


def _report_progress(cfg: TrainConfig, log: list[dict], step: int, start: int, t0: float) -> None:
    rate = (step + 1 - start) / (time.perf_counter() - t0)
    recent = log[-cfg.log_every :]
    shown = ("answer_loss", "aux_loss", "kind_loss", "placement_loss", "retrieve_loss", "gather_loss", "bind_loss", "count_probe_loss", "where_probe_loss")
    means = {k: sum(r[k] for r in recent if k in r) / max(1, sum(k in r for r in recent)) for k in shown}
    losses = "  ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in means.items() if any(k in r for r in recent))
    eta = (cfg.steps - step - 1) / max(rate, 1e-9) / 60
    print(f"step {step + 1}/{cfg.steps}  {losses}  {rate:.2f} steps/s  eta {eta:.1f} min", flush=True)


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

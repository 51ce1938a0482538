"""The toy LLaVA's training objectives: each a named, weighted term (``objectives``).

The saved model stays a plain llava-hf LLaVA; every term below except ``answer`` is a training-time
signal only (linear read-outs in ``AuxHeads`` that are not saved, or supervision of attention the
model computes anyway). They exist because a model trained from scratch on the answer loss alone
learns too slowly on two CPU cores (see each term's docstring for the failure it fixes):

========== ========= ===============================================================================
term       side      what it trains
========== ========= ===============================================================================
answer     language  next-token cross-entropy on the answer words (the only term at inference)
colour     encoder   the colour under each patch, read linearly from its feature-layer token
position   encoder   each token's (column, row)
kind       encoder   each object's (colour, shape) from the mean of its tokens
grounding  language  an object's projected tokens point at its colour + shape words' embeddings
placement  language  each object patch's (column, row) read from its *projected* token
retrieve   language  attention at a mention onto the named objects' visible patches (or BOS)
gather     language  attention at the answer position onto the mentions / found option / side word
bind       language  attention at an option's word onto the question's noun and the option's letter
count      language  how many named objects are visible, read at the mention
where      language  where the one named object is, read at the mention
========== ========= ===============================================================================

Weights come from ``TrainConfig`` (``<term>_weight``; 0 switches a term off: it is not computed) and
are applied once, in ``weighted_total``; the log holds each term's unweighted value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..world import COLOURS, KINDS
from .data import Batch
from .forward import cell_positions, feature_layer, loss_of

__all__ = ["Objective", "objectives", "step_losses", "weighted_total", "AuxHeads", "MentionProbes", "aux_heads",
           "attention_losses", "retrieve_rows", "grounding_loss", "kind_word_ids", "ATTENTION_TERMS",
           "RETRIEVE_TARGETS"]

ATTENTION_TERMS = ("retrieve", "gather", "bind")
RETRIEVE_TARGETS = ("mention", "objects", "objects+bos")  # how ``retrieve`` scores a mention (``attention_losses``)
ENCODER_TERMS = ("colour", "position", "kind")
PROBE_TERMS = {"count": "count_probe", "where": "where_probe"}  # term -> MentionProbes output


@dataclass(frozen=True)
class Objective:
    """One training term: ``name`` (the log's key), its ``weight`` and its ``side``: "encoder" terms
    are computed at every step, "language" terms only once steps have questions."""

    name: str
    weight: float
    side: str


def objectives(cfg) -> list[Objective]:
    """The active terms of a run (weight != 0), in the order the log prints them."""
    terms = [Objective("answer", 1.0, "language")]
    terms += [Objective(n, getattr(cfg, f"{n}_weight"), "encoder") for n in ENCODER_TERMS]
    terms += [Objective(n, getattr(cfg, f"{n}_weight"), "language")
              for n in ("grounding", "placement", *ATTENTION_TERMS, *PROBE_TERMS)]
    return [t for t in terms if t.weight]


def weighted_total(parts: dict[str, torch.Tensor], terms: list[Objective]) -> torch.Tensor:
    """The loss to minimise: each computed term times its weight, summed (the one place weights apply)."""
    return sum(t.weight * parts[t.name] for t in terms if t.name in parts)


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


def _target_keys(batch: Batch, qi: int, m, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys [L] bool, kinds [len(KINDS)] bool): the prefix keys of the image tokens the language
    model sees on the objects ``m`` names in question ``qi``'s image, or BOS when it sees none; and
    which kinds those visible objects are."""
    labels = batch.seen_labels[int(batch.image_index[qi])]  # [K]
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


def retrieve_rows(keys: torch.Tensor, batch: Batch, qi: int, start: int, targets: str) -> torch.Tensor:
    """The retrieve loss's target rows [n, L] for one mention whose keys are ``keys`` [L]
    (``_target_keys``), by ``targets`` (``RETRIEVE_TARGETS``): the whole mention in one row, one row
    per visible named object, or those plus BOS. A mention that finds nothing is its BOS row alone."""
    if keys[0] or targets == "mention":
        return keys.unsqueeze(0)
    labels = torch.zeros_like(keys, dtype=torch.long)
    seen = batch.seen_labels[int(batch.image_index[qi])]  # [K]
    labels[start : start + seen.numel()] = seen
    kinds = labels[keys].unique()
    rows = (labels.unsqueeze(0) == kinds.unsqueeze(1)) & keys  # [n, L]: one per object
    if targets == "objects+bos":
        rows = torch.cat([rows, torch.nn.functional.one_hot(torch.tensor(0), keys.numel()).bool().unsqueeze(0)])
    return rows


def _mass_loss(probs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """-log(attention mass on the target keys), averaged (``weights`` [N]: a weighted mean):
    ``probs`` and ``targets`` [N, L]."""
    losses = -(probs * targets).sum(-1).clamp(min=1e-6).log()
    return losses.mean() if weights is None else (losses * weights).sum() / weights.sum()


def attention_losses(batch: Batch, rows: dict, cfg, wanted=ATTENTION_TERMS) -> dict[str, torch.Tensor]:
    """Supervised attention, a training-only signal that turns the language model's hardest step into
    a first-order one. Matching ("is there a red circle?") needs attention keyed on *what* a phrase
    names; from the answer loss alone its gradient is tiny (the named object is a few of 600 keys),
    and the run sits at always-yes. So:

    * ``retrieve``: at each mention's last word, head 0 of ``retrieve_layer`` puts its mass on the
      patches of the objects the mention names, or on BOS when the image has none ("the red circle"
      absent; an option that is not the answer). What that head returns then says "found" or "not
      found" in one direction. ``cfg.retrieve_targets`` says how a mention that names several
      objects ("squares") is scored: ``mention`` (v9), the mass on all of them at once, which any
      one of them can meet; ``objects``, each object's mass apart (the mean of their -log masses,
      so a mention counts once), so that the head finds every object; ``objects+bos``, the same
      with BOS as one more target, so that BOS's share, 1 / (objects + 1), says how many were found
      (a counting read-out that does not saturate). v9 answered no "how many" question about three
      objects right (``scripts/toy_breakdown.py --scenes 400``);
    * ``gather``: at the position that predicts the answer word, heads 0 and 1 of ``gather_layer`` look
      at the first and the last mention of the question, head 2 at the option that was found, head 3
      at the side word of "Is the A on the left of the B?" (the answer compares it with where A and B are);
    * ``bind``: at an option's word, heads 1 and 2 of ``bind_layer`` look at the question's noun and
      at the option's letter (so that retrieval knows "red *circle*" and the answer knows "B").

    Each is -log(attention mass on the target), averaged over rows (``retrieve`` with several target
    rows per mention: weighted so that each mention counts once). ``rows``: layer -> ``AttentionRows``;
    ``cfg`` names the layers; ``wanted``: the terms to compute."""
    p = batch.prefix_len
    start = p - batch.seen_labels.shape[1]  # prefix position of the first image token
    width = batch.input_ids.shape[1]
    one_hot = lambda at: torch.nn.functional.one_hot(torch.tensor(at), width).bool()  # noqa: E731
    retrieve, gather, bind = ([], [], []), ([], [], []), ([], [], [])  # (question, suffix position, targets [heads, L])
    retrieve_weights = []
    for qi, mentions in enumerate(batch.mentions):
        question = [m for m in mentions if not m.option]
        found = []
        for m in mentions:
            keys, _ = _target_keys(batch, qi, m, start)
            rows_of_m = retrieve_rows(keys, batch, qi, start, cfg.retrieve_targets)
            for row in rows_of_m:  # each row weighted 1 / rows: a mention counts once
                retrieve[0].append(qi), retrieve[1].append(m.at - p), retrieve[2].append(row.unsqueeze(0))
                retrieve_weights.append(1.0 / len(rows_of_m))
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
    if "retrieve" in wanted and retrieve[0]:
        probs = rows[cfg.retrieve_layer](torch.tensor(retrieve[0]), torch.tensor(retrieve[1]))[:, :1]  # [N, 1, L]
        weights = None if cfg.retrieve_targets == "mention" else torch.tensor(retrieve_weights)  # v9's maths exactly
        out["retrieve"] = _mass_loss(probs.flatten(0, 1), torch.cat(retrieve[2]), weights)
    if "gather" in wanted and gather[0]:
        probs = rows[cfg.gather_layer](torch.tensor(gather[0]), torch.tensor(gather[1]))  # [N, H, L]
        pairs = [(n, h, t) for n, ts in enumerate(gather[2]) for h, t in ts.items()]
        out["gather"] = _mass_loss(torch.stack([probs[n, h] for n, h, _ in pairs]), torch.stack([t for *_, t in pairs]))
    if "bind" in wanted and bind[0]:
        probs = rows[cfg.bind_layer](torch.tensor(bind[0]), torch.tensor(bind[1]))[:, 1:3]  # [N, 2, L]
        out["bind"] = _mass_loss(probs.flatten(0, 1), torch.cat(bind[2]))
    return out


class MentionProbes(torch.nn.Module):
    """Linear read-outs of the language model's state at a mention's last word, after the retrieval
    layer, training only: how many of the objects it names are visible (0-4; an object is visible when
    the language model sees at least one of its patches) and, when it is one, where that object is
    ((column, row) of its visible patches' mean). They make the retrieved state carry what counting and
    left / right questions compare, a first-order signal the answer loss alone gives slowly."""

    def __init__(self, width: int, grid: int = 24, max_count: int = 4):
        super().__init__()
        self.grid = grid
        self.count = torch.nn.Linear(width, max_count + 1)
        self.where = torch.nn.Linear(width, 2)

    def forward(self, batch: Batch, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """``hidden`` [Q, S, D]: the retrieval layer's suffix output."""
        p, states, counts, single, places = batch.prefix_len, [], [], [], []
        cells = cell_positions(self.grid)  # [P, 2]
        for qi, mentions in enumerate(batch.mentions):
            image = int(batch.image_index[qi])
            labels, where = batch.seen_labels[image], cells[batch.seen[image]]  # [K], [K, 2]: what the LLM sees
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


def step_losses(model, heads: "AuxHeads", batch: Batch, terms: list[Objective], cfg, words: list[list[int]]) -> dict[str, torch.Tensor]:
    """The unweighted value of every active term ``terms`` that this step's ``batch`` has data for:
    encoder terms always, language terms when the batch holds questions. ``words``: the kinds' word
    ids (``kind_word_ids``) for ``grounding``; ``cfg`` names the supervised layers."""
    names = {t.name for t in terms}
    tokens = feature_layer(model, batch.pixel_values)  # [I, P, D_vision]
    parts = {k: v for k, v in heads.losses(tokens, batch.patch_labels).items() if k in names}
    if batch.input_ids is None:  # the encoder stage: no language model
        return parts
    feats = model.model.multi_modal_projector(tokens)  # [I, P, D_text]: run once for every loss that reads it
    attention = [n for n in ATTENTION_TERMS if n in names]
    probes = [n for n in PROBE_TERMS if n in names]
    taps = sorted({getattr(cfg, f"{n}_layer") for n in attention} | ({cfg.retrieve_layer} if probes else set()))
    answer = loss_of(model, batch, feats=feats, taps=tuple(taps))
    if taps:
        answer, rows, outputs = answer
    parts["answer"] = answer
    if "grounding" in names:
        parts["grounding"] = grounding_loss(model, feats, batch.patch_labels, words)
    if "placement" in names:
        parts["placement"] = heads.placement_loss(feats, batch.patch_labels)
    if attention:
        parts.update(attention_losses(batch, rows, cfg, attention))
    if probes:
        read = heads.mention(batch, outputs[cfg.retrieve_layer])
        parts.update({n: read[PROBE_TERMS[n]] for n in probes if PROBE_TERMS[n] in read})
    return parts

"""The toy LLaVA's forward passes used in training: the tower to its feature layer, and the language
model's loss with the shared prefix (BOS, "USER: ", the image tokens) run once per image.

The image tokens the language model sees may be a subset of the P patches (``Batch.keep``): kept
tokens stay in raster order and take ordinary contiguous positions, exactly as the pruning engine feeds
a pruned LLaVA-1.5 sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..vision import hidden_state_index, tower_parts
from .data import Batch
from .init import conv_like_init, mimetic_init

__all__ = ["SHAPE", "build", "feature_layer", "image_features", "seen_features", "cell_positions", "loss_of", "loss_of_full"]

SHAPE = "toy-llava"


def build(seed: int):
    """The untrained model (seeded init; the tower's attention starts convolution-like, see
    :mod:`hivtp.toy.init`) and its processor."""
    from ..zoo import build_model, build_processor

    model = build_model(SHAPE, seed=seed).train()
    conv_like_init(model.model.vision_tower, seed)
    mimetic_init(model.model.language_model, seed)
    return model, build_processor(SHAPE)


def feature_layer(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Feature-layer patch tokens [I, P, D_vision] (CLS dropped, the "default" strategy), running
    the tower only to the feature layer (the model's own get_image_features also runs the unused
    last layer). Gradients flow."""
    embeddings, pre_layrnorm, layers = tower_parts(model.model.vision_tower)
    last = hidden_state_index(model.config.vision_feature_layer, len(layers))  # hidden-state index
    h = pre_layrnorm(embeddings(pixel_values))
    for layer in layers[:last]:
        h = layer(h, None)
    return h[:, 1:]


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected patch features [I, P, D_text]."""
    return model.model.multi_modal_projector(feature_layer(model, pixel_values))


def cell_positions(grid: int) -> torch.Tensor:
    """[grid * grid, 2]: each raster cell's (column, row), scaled to [0, 1]."""
    cells = torch.arange(grid * grid)
    return torch.stack([cells % grid, cells // grid], -1).float() / (grid - 1)

def seen_features(feats: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The projected tokens the language model sees: ``feats`` [I, P, D] gathered at ``batch.keep``
    [I, K] (raster order), or ``feats`` itself when nothing is dropped."""
    if batch.keep is None:
        return feats
    return feats.gather(1, batch.keep.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))  # [I, K, D]


def _answer_loss(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``hidden`` [Q, S, D] and ``targets`` [Q, S - 1]: position t predicts token t + 1."""
    where = targets != -100  # the answer positions only: the head over 600+ positions is wasted work
    logits = model.lm_head(hidden[:, :-1][where])  # [A, vocab]
    return F.cross_entropy(logits.float(), targets[where])


def loss_of_full(model, batch: Batch) -> torch.Tensor:
    """The plain loss: every question's full sequence through the LLM (the reference for tests)."""
    feats = seen_features(image_features(model, batch.pixel_values), batch)[batch.image_index]  # [Q, K, D]
    embeds = model.get_input_embeddings()(batch.input_ids)  # [Q, L, D]
    mask = (batch.input_ids == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
    return _answer_loss(model, hidden, batch.labels[:, 1:])


def loss_of(model, batch: Batch, feats: torch.Tensor | None = None, taps=None):
    """The same loss with the shared prefix (BOS, "USER: ", the K image tokens) run once per image:
    its key/value cache is gathered per question and the question suffixes attend to it. Causal
    attention makes this exactly the full-sequence computation at a fraction of the cost.
    ``feats``: the projected patch tokens [I, P, D], if already computed. ``taps`` (layer indices): (answer loss,
    {layer: its attention rows}, {layer: its suffix output [Q, S, D]}) for ``attention_losses`` and
    ``MentionProbes``."""
    p = batch.prefix_len
    feats = image_features(model, batch.pixel_values) if feats is None else feats  # [I, P, D]
    feats = seen_features(feats, batch)  # [I, K, D]
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
    with QueryTap(lm, taps or ()) as tap:
        hidden = lm(
            inputs_embeds=model.get_input_embeddings()(suffix),
            attention_mask=batch.attention_mask,  # [Q, p + S]: the prefix is never padding
            position_ids=positions,
            cache=cache,
            use_cache=True,
        ).last_hidden_state  # [Q, S, D]
    loss = _answer_loss(model, hidden, batch.labels[:, p + 1 :])
    if taps:
        rows = {i: AttentionRows(lm.layers[i].self_attn, *tap.inputs[i], cache.layers[i].keys, batch.attention_mask, p) for i in taps}
        return loss, rows, tap.outputs
    return loss


class QueryTap:
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


class AttentionRows:
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

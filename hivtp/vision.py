"""Run a CLIP vision tower up to the layer a method needs, capturing what its scoring needs.

Two ways to run the tower:

* :func:`run_tower` (the ``fast`` path): our own three-line loop over the encoder layers, which
  stops after the last layer anyone needs (the LLaVA feature layer, or the last score layer) and
  keeps whatever attention kernel the model was loaded with (SDPA / flash). Forward hooks on the
  ``q_proj`` / ``k_proj`` linears of the requested layers keep their outputs, so scoring can
  recompute attention *probabilities* for just those layers without touching the others.
* :func:`run_tower_eager` (the ``eager`` / faithful path): the model's own forward with eager
  attention and ``output_attentions=True``, i.e. all attention maps materialised, as the HIVTP
  release does.

Indexing. ``hidden_states[0]`` is the embedding output (after ``pre_layrnorm``) and
``hidden_states[i]`` the output of encoder layer ``i - 1``; LLaVA's ``vision_feature_layer = -2``
is therefore the output of layer 22 of 24. Score layers are 0-based encoder layer indices.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .lru import BudgetedCache

__all__ = [
    "TowerOutput",
    "tower_parts",
    "num_encoder_layers",
    "hidden_state_index",
    "run_tower",
    "run_tower_eager",
    "attention_implementation",
    "TowerCache",
]


@dataclass
class TowerOutput:
    """What one pass of the tower produced, for a batch of C crops of T = 1 + P tokens.

    Towers without a [CLS] token whose attention is not one dense [C, T, T] map per layer (Qwen2.5-VL:
    packed images of different sizes, window attention, a 2x2 merger) fill ``received`` instead of
    ``qk`` / ``attentions``: per layer, per crop, the attention each *token the method selects among*
    receives, already averaged over heads and query rows (see ``hivtp.adapters.qwen2_5_vl``)."""

    hidden_states: dict[int, torch.Tensor]  # hidden-state index -> [C, T, D]
    qk: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # layer -> (q, k) [C, T, D]
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> probs [C, heads, T, T]
    num_heads: int = 0
    head_dim: int = 0
    received: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # layer -> per crop [P_c] float32
    grids: list[tuple[int, int]] = field(default_factory=list)  # per crop (H, W) of ``received`` (when set)
    extra: dict = field(default_factory=dict)  # family-specific (e.g. Qwen's packed hidden states)
    #: values derived from this pass, memoised with it (``importance`` keys the per-layer received
    #: attention here): a pass that ``TowerCache`` shares between configurations is scored once. A
    #: ``subset`` starts empty (other crops, other values).
    memo: dict = field(default_factory=dict)

    def subset(self, crops: list[int]) -> "TowerOutput":
        """The same output restricted to some crops (the engine hands a method one grid shape at a time)."""
        index = torch.tensor(crops, dtype=torch.long)

        def rows(x: torch.Tensor) -> torch.Tensor:
            return x[index.to(x.device)]

        return TowerOutput(
            hidden_states={i: rows(h) for i, h in self.hidden_states.items()},
            qk={i: (rows(q), rows(k)) for i, (q, k) in self.qk.items()},
            attentions={i: rows(a) for i, a in self.attentions.items()},
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            received={i: [r[c] for c in crops] for i, r in self.received.items()},
            grids=[self.grids[c] for c in crops] if self.grids else [],
            extra=self.extra,
        )


def tower_parts(vision_model: nn.Module) -> tuple[nn.Module, nn.Module, nn.ModuleList]:
    """(embeddings, pre_layrnorm, encoder layers) of a CLIPVisionModel, across transformers layouts
    (5.x puts them on the model; older versions nest them under ``.vision_model``)."""
    inner = getattr(vision_model, "vision_model", vision_model)
    try:
        return inner.embeddings, inner.pre_layrnorm, inner.encoder.layers
    except AttributeError as exc:
        raise ConfigError(
            f"{type(vision_model).__name__} is not a CLIP vision tower (no embeddings / pre_layrnorm / "
            "encoder.layers). HIVTP scoring needs the CLIP ViT used by LLaVA and LLaVA-NeXT."
        ) from exc


def num_encoder_layers(vision_model: nn.Module) -> int:
    return len(tower_parts(vision_model)[2])


def hidden_state_index(layer: int, num_layers: int) -> int:
    """Normalise a hidden-state index (possibly negative, as in ``vision_feature_layer``)."""
    idx = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= idx <= num_layers:
        raise ConfigError(f"hidden-state index {layer} is out of range for a {num_layers}-layer tower.")
    return idx


def _check_layers(layers: Iterable[int], num_layers: int, last_run: int | None = None) -> list[int]:
    layers = sorted(set(int(x) for x in layers))
    if not layers:
        raise ConfigError("score layers must not be empty; the default is (6, 7, 8).")
    limit = num_layers if last_run is None else last_run + 1
    bad = [x for x in layers if not 0 <= x < limit]
    if bad:
        where = (
            f"the tower has {num_layers} layers (0-based indices 0..{num_layers - 1})"
            if last_run is None
            else f"the feature layer is the output of layer {last_run}, and layers after it are never run"
        )
        raise ConfigError(f"score layer(s) {bad} out of range: {where}. Pick 0-based layers below {limit}.")
    return layers


@contextmanager
def attention_implementation(model: nn.Module, implementation: str) -> Iterator[None]:
    """Temporarily switch a model's attention kernel (e.g. to ``eager`` to get probabilities)."""
    previous = model.config._attn_implementation
    if previous == implementation:
        yield
        return
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _attention_geometry(layer: nn.Module) -> tuple[int, int]:
    attn = layer.self_attn
    return attn.num_heads, attn.head_dim


@torch.no_grad()
def run_tower(
    vision_model: nn.Module,
    pixel_values: torch.Tensor,
    hidden_indices: Sequence[int] = (),
    qk_layers: Sequence[int] = (),
) -> TowerOutput:
    """Run embeddings + encoder layers up to the last layer needed, keeping the hidden states at
    ``hidden_indices`` and the (q, k) projections of ``qk_layers``.

    The loop mirrors ``CLIPEncoder.forward`` (layer(h, attention_mask=None)); tests check that the
    hidden states are bit-identical to the model's own forward.
    """
    embeddings, pre_layrnorm, layers = tower_parts(vision_model)
    n = len(layers)
    hidden_indices = sorted(set(hidden_state_index(i, n) for i in hidden_indices))
    qk_layers = _check_layers(qk_layers, n) if qk_layers else []
    last_layer = max([i - 1 for i in hidden_indices] + qk_layers + [-1])

    captured: dict[int, dict[str, torch.Tensor]] = {i: {} for i in qk_layers}
    handles = []

    def keep(store: dict[str, torch.Tensor], key: str):
        def hook(_module, _inputs, output):
            store[key] = output

        return hook

    for i in qk_layers:
        attn = layers[i].self_attn
        handles.append(attn.q_proj.register_forward_hook(keep(captured[i], "q")))
        handles.append(attn.k_proj.register_forward_hook(keep(captured[i], "k")))
    try:
        kept: dict[int, torch.Tensor] = {}
        h = pre_layrnorm(embeddings(pixel_values))  # [C, T, D]; embeddings cast to the weight dtype
        if 0 in hidden_indices:
            kept[0] = h
        for i in range(last_layer + 1):
            h = layers[i](h, None)
            if i + 1 in hidden_indices:
                kept[i + 1] = h
    finally:
        for handle in handles:
            handle.remove()
    heads, head_dim = _attention_geometry(layers[0])
    return TowerOutput(
        hidden_states=kept,
        qk={i: (c["q"], c["k"]) for i, c in captured.items()},
        num_heads=heads,
        head_dim=head_dim,
    )


@torch.no_grad()
def run_tower_eager(
    vision_model: nn.Module,
    pixel_values: torch.Tensor,
    hidden_indices: Sequence[int] = (),
    attention_layers: Sequence[int] = (),
) -> TowerOutput:
    """The faithful path: the model's own full forward with eager attention, every attention map
    materialised (``output_attentions=True``), as in the HIVTP release."""
    n = num_encoder_layers(vision_model)
    hidden_indices = sorted(set(hidden_state_index(i, n) for i in hidden_indices))
    attention_layers = _check_layers(attention_layers, n) if attention_layers else []
    with attention_implementation(vision_model, "eager"):
        out = vision_model(pixel_values, output_hidden_states=True, output_attentions=True, return_dict=True)
    heads, head_dim = _attention_geometry(tower_parts(vision_model)[2][0])
    return TowerOutput(
        hidden_states={i: out.hidden_states[i] for i in hidden_indices},
        attentions={i: out.attentions[i] for i in attention_layers},
        num_heads=heads,
        head_dim=head_dim,
    )


class TowerCache(BudgetedCache):
    """Share vision-tower passes between configurations evaluated in one process (issue 20).

    An in-process evaluation answers the same questions, in the same batches, once per method and
    budget, and a batch's tower pass depends only on its pixels and on what is captured. Turn it on
    with ``pruned.tower_cache = TowerCache()`` (one object shared by every attached method). An entry
    is reused only when the pixels are byte for byte the same (keyed by a 256-bit BLAKE2b digest of
    their bytes with their shape, dtype and device: two different batches share a key with
    probability about 2**-128, and the cache holds no copy of the pixels), the pass took the same
    path (fast / eager: their kernels round differently) and it holds every hidden state and capture
    the request needs; otherwise the tower runs and its captures are added to the entry. A reused
    pass is the very tensors a fresh pass computes, so no answer changes. Frozen weights only: call
    :meth:`clear` after changing the model. At most ``max_bytes`` of captured tensors are held, besides
    the newest entry, which always stays (least recently used entries go first; :class:`hivtp.lru.ByteBudgetLRU`;
    the small per-pass ``memo`` is not counted).
    """

    DEFAULT_MAX_BYTES = 2 * 2**30

    def run(
        self,
        vision_model: nn.Module,
        pixel_values: torch.Tensor,
        hidden_indices: Sequence[int],
        request: Any,
        compute: Callable[[], TowerOutput],
    ) -> TowerOutput:
        """The pass ``compute()`` would return for this request (``request``: a methods TowerRequest)."""
        n = num_encoder_layers(vision_model)
        hidden = sorted({hidden_state_index(i, n) for i in hidden_indices})
        pixels = pixel_values.detach()
        key = (id(vision_model), bool(request.eager), tuple(pixels.shape), pixels.dtype, str(pixels.device),
               pixel_digest(pixels))
        cached = self._entries.get(key)
        if cached is not None and _covers(cached, hidden, request):
            self.hits += 1
            return _subset(cached, hidden, request)
        fresh = compute()
        self.misses += 1
        if cached is not None:  # the same pixels, fewer captures: add the ones it lacks (those it holds stay,
            # so its memo still describes them)
            for held, new in ((cached.hidden_states, fresh.hidden_states), (cached.qk, fresh.qk),
                              (cached.attentions, fresh.attentions)):
                for layer, tensor in new.items():
                    held.setdefault(layer, tensor)
            self._entries.put(key, cached, _nbytes(cached))
            return fresh
        self._entries.put(key, fresh, _nbytes(fresh))
        # the entry holds the fresh pass's dicts: give the caller its own view of them
        return _subset(fresh, hidden, request)


def pixel_digest(pixels: torch.Tensor) -> bytes:
    """A 256-bit BLAKE2b digest of a tensor's bytes (in memory order of a contiguous copy)."""
    raw = pixels.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
    return hashlib.blake2b(memoryview(raw), digest_size=32).digest()


def _covers(out: TowerOutput, hidden: Sequence[int], request: Any) -> bool:
    return (
        set(hidden) <= set(out.hidden_states)
        and set(request.qk_layers) <= set(out.qk)
        and set(request.attention_layers) <= set(out.attentions)
    )


def _subset(out: TowerOutput, hidden: Sequence[int], request: Any) -> TowerOutput:
    """Exactly what a fresh pass for this request holds (same tensors, no extra layers)."""
    return TowerOutput(
        hidden_states={i: out.hidden_states[i] for i in hidden},
        qk={i: out.qk[i] for i in request.qk_layers},
        attentions={i: out.attentions[i] for i in request.attention_layers},
        num_heads=out.num_heads,
        head_dim=out.head_dim,
        memo=out.memo,  # the entry's: what one configuration derived from this pass, the next reuses
    )


def _nbytes(out: TowerOutput) -> int:
    tensors = [*out.hidden_states.values(), *out.attentions.values()]
    tensors += [t for pair in out.qk.values() for t in pair]
    return sum(t.numel() * t.element_size() for t in tensors)

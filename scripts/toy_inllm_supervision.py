"""How much of FastV's offline result does the toy's attention supervision explain? (issue 19, item 7)

    python scripts/toy_inllm_supervision.py [--per-family 100] [--seed 123] [--model toy-llava] [--out FILE.json]

The toy's language model is trained with supervised attention (``attention_losses`` in
hivtp/toy/train.py): head 0 of layer 1 puts its mass on the patches of the objects a question names.
FastV ranks image tokens by the last prompt token's attention at layer K (mean over heads), so on the
toy it may read a signal that a pretrained LLM's early layers do not give it. Two measurements on the
same held-out questions (:func:`hivtp.toy.evaluate.held_out_items`):

1. **Accuracy** (95% bootstrap intervals, :mod:`hivtp.toy.calibrate`): none, oracle, random and FastV at
   every layer K the 3-layer toy allows (1 and 2; K=0 is refused by FastV), at budgets 64 and 192.
2. **What FastV's ranking reads.** At layer K, the row FastV ranks by
   (:func:`hivtp.methods.fastv.last_token_attention`), per head, as FastV's head mean, and as the mean
   without head 0 (the supervised head at K=1). FastV cannot be told which heads to use, so instead of
   its accuracy without that head this reports what the rows select:

   * ``image``: the share of the row's mass on image tokens at all (the rest is on text);
   * ``named``: the share of its image-token mass on the patches of the objects the question names
     (questions naming an object that is there); ``objects``: on the patches of every object;
   * ``objects_in_top{B}``: the share of the B image tokens the row ranks first (FastV's choice at that
     budget) that are object patches; ``named_recall_top{B}``: the share of the named objects'
     patches among those B.

   Two reference rows: a content-blind ranking (uniform attention / a random selection, expected
   values) and, for ``objects_in_top{B}``, the most any selection of B can reach (object patches
   first, as the oracle): min(object patches, B) / B.
   Every number is a mean over questions with a 95% bootstrap interval.

Object patches are known by construction (:func:`hivtp.toy.data.patch_labels`), the objects a
question names by its colour / shape words (:func:`hivtp.toy.data.mentions_of`, the same words the
supervision targets), so nothing here depends on a method under test.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch

BUDGETS = (64, 192)
K_LAYERS = (1, 2)  # every layer FastV accepts on the 3-layer toy LLM (k_layer >= 1, < 3)
SUPERVISED = (1, 0)  # (layer, head) of the supervised retrieval attention (TrainConfig.retrieve_layer, head 0)


def configurations():
    out = [("none", {})]
    for b in BUDGETS:
        out += [("oracle", {"budget": b}), ("random", {"budget": b})]
        out += [("fastv", {"budget": b, "k_layer": k}) for k in K_LAYERS]
    return out


def patch_masks(scene, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(named [P], objects [P]) bool: patches of the objects the question names / of any object."""
    from hivtp.toy.data import mentions_of, patch_labels
    from hivtp.world import KINDS

    labels = patch_labels(scene)  # [P] kind index + 1, 0 = background
    mentions = mentions_of(prompt)
    named_kinds = torch.tensor([any(m.matches(k) for m in mentions) for k in KINDS])  # [K]
    objects = labels > 0
    named = objects & named_kinds[(labels - 1).clamp(min=0)]
    return named, objects


def head_view(layer, head: int):
    """A stand-in for ``layer`` whose attention has only ``head`` (its q and k columns), so that
    ``last_token_attention`` -- a mean over heads -- returns that head's row. Its rotary embedding is
    the generic formula, the same as the Llama decoder's ``apply_rotary_pos_emb``."""
    attn = layer.self_attn
    d = attn.head_dim
    if attn.k_proj.out_features != attn.q_proj.out_features:
        raise ValueError("head_view needs as many key heads as query heads (no grouped queries).")
    cols = slice(head * d, (head + 1) * d)
    view = SimpleNamespace(head_dim=d, scaling=attn.scaling,
                           q_proj=lambda x: attn.q_proj(x)[..., cols], k_proj=lambda x: attn.k_proj(x)[..., cols])
    return SimpleNamespace(input_layernorm=layer.input_layernorm, self_attn=view)


@torch.no_grad()
def layer_rows(model, inputs, layers: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Per layer K: [B, H, L] the last prompt token's attention at K, per head, from the unpruned
    prefill (layers before K see every token under FastV too, so K's input is the same)."""
    from hivtp.methods.fastv import language_layers, last_token_attention

    _, decoder = language_layers(model)
    seen: dict[int, tuple] = {}

    def keep(k):
        def hook(_module, args, kwargs):
            seen[k] = (args[0] if args else kwargs["hidden_states"], kwargs["position_embeddings"])

        return hook

    handles = [decoder[k].register_forward_pre_hook(keep(k), with_kwargs=True) for k in layers]
    try:
        model(**inputs)
    finally:
        for h in handles:
            h.remove()
    heads = model.config.text_config.num_attention_heads
    key_mask = inputs["attention_mask"].bool()
    return {k: torch.stack([last_token_attention(head_view(decoder[k], h), *seen[k], key_mask) for h in range(heads)], 1)
            for k in layers}


def selection_rows(row: torch.Tensor, image: torch.Tensor, named: torch.Tensor, objects: torch.Tensor) -> dict[str, list[float]]:
    """Per question of a batch: what one ranking row [B, L] puts on / picks among the image tokens
    (``image`` [B, L] bool; ``named`` / ``objects`` [B, P] bool over the P image tokens)."""
    from hivtp.methods.fastv import choose

    img = row[image].view(len(row), -1)  # [B, P] the image tokens in order
    mass = img / img.sum(-1, keepdim=True)
    has_named = named.any(-1)
    out = {"image": (img.sum(-1) / row.sum(-1)).tolist(),
           "named": _where((mass * named).sum(-1), has_named),
           "objects": (mass * objects).sum(-1).tolist()}
    for b in BUDGETS:
        kept = choose(row, image, [b] * len(row))[image].view(len(row), -1)  # [B, P] FastV's top b
        out[f"objects_in_top{b}"] = ((kept & objects).sum(-1) / b).tolist()
        out[f"named_recall_top{b}"] = _where((kept & named).sum(-1) / named.sum(-1).clamp(min=1), has_named)
    return out


def reference_rows(named: torch.Tensor, objects: torch.Tensor) -> dict[str, dict[str, list[float]]]:
    """The same measures for a content-blind ranking (uniform attention, a random selection: its
    expected values) and, for the top-B object share, the most any selection can reach (object
    patches first, as the oracle)."""
    patches = named.shape[1]
    has_named = named.any(-1)
    blind = {"named": _where(named.float().mean(-1), has_named), "objects": objects.float().mean(-1).tolist()}
    best: dict[str, list[float]] = {}
    for b in BUDGETS:
        blind[f"objects_in_top{b}"] = objects.float().mean(-1).tolist()
        blind[f"named_recall_top{b}"] = _where(torch.full((len(named),), b / patches), has_named)
        best[f"objects_in_top{b}"] = (objects.sum(-1).clamp(max=b) / b).tolist()
    return {"content-blind (uniform / random)": blind, "best possible (objects first)": best}


def _where(values: torch.Tensor, keep: torch.Tensor) -> list[float]:
    return [float(v) for v, ok in zip(values, keep) if ok]


def attention_measurement(model, processor, images, items, scenes, batch_size: int = 16, progress=print):
    """{ranking name: {metric: per-question values}} over all questions, and a check that the head
    mean is FastV's own row."""
    import hivtp
    from hivtp.toy.data import chat_prompt

    heads = model.config.text_config.num_attention_heads
    image_id = model.config.image_token_index
    values: dict[str, dict[str, list[float]]] = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        inputs = processor(images=[images[it.image] for it in chunk], text=[chat_prompt(processor, it.prompt) for it in chunk],
                           return_tensors="pt", padding=True)
        masks = [patch_masks(scenes[start + i], it.prompt) for i, it in enumerate(chunk)]
        named, objects = torch.stack([m[0] for m in masks]), torch.stack([m[1] for m in masks])  # [B, P]
        image = inputs["input_ids"] == image_id  # [B, L]
        rows = layer_rows(model, inputs, K_LAYERS)
        if start == 0:  # the head mean is exactly the row FastV ranks by
            for k in K_LAYERS:
                fastv = hivtp.attach(model, method="fastv", budget=BUDGETS[0], k_layer=k)
                fastv.generate(**inputs, max_new_tokens=1, do_sample=False)
                torch.testing.assert_close(rows[k].mean(1), fastv.method.last_attention, rtol=1e-5, atol=1e-6)
        for name, refs in reference_rows(named, objects).items():
            for metric, v in refs.items():
                values.setdefault(name, {}).setdefault(metric, []).extend(v)
        for k, per_head in rows.items():
            rankings = {f"K={k} head {h}": per_head[:, h] for h in range(heads)}
            rankings[f"K={k} FastV (mean of heads)"] = per_head.mean(1)
            others = [h for h in range(heads) if h != SUPERVISED[1]]
            rankings[f"K={k} mean without head {SUPERVISED[1]}"] = per_head[:, others].mean(1)
            for name, row in rankings.items():
                for metric, v in selection_rows(row, image, named, objects).items():
                    values.setdefault(name, {}).setdefault(metric, []).extend(v)
        progress(f"[attention] {start + len(chunk)}/{len(items)} questions")
    return values


def attention_table(values) -> tuple[str, dict]:
    """One row per ranking, one column per measure: mean [95% interval] ("-" where it does not apply)."""
    from hivtp.bootstrap import mean_interval

    metrics = ["image", "named", "objects"] + [f"{m}{b}" for b in BUDGETS for m in ("objects_in_top", "named_recall_top")]
    stats = {name: {m: mean_interval(v[m]) for m in metrics if m in v} for name, v in values.items()}
    cell = lambda s, m: f"{s[m][0]:.3f} [{s[m][1]:.3f}, {s[m][2]:.3f}]" if m in s else "-"
    head = ["ranking row"] + metrics
    body = [[name] + [cell(s, m) for m in metrics] for name, s in stats.items()]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    some = next(v for v in values.values() if "image" in v)
    note = f"questions: {len(some['image'])}; naming an object that is there: {len(some['named'])}"
    return "\n".join(lines + [note]), stats


def main(argv: list[str] | None = None) -> int:
    from hivtp.toy import calibrate
    from hivtp.toy.cli import accuracy_summary, load_model, measurement_parser, progress, write_measurement
    from hivtp.toy.evaluate import held_out_items

    ap = measurement_parser(__doc__.splitlines()[0], per_family=100, batch_size=True)
    args = ap.parse_args(argv)
    model, processor, digest = load_model(ap, args)
    images, items, scenes = held_out_items(args.seed, args.per_family, with_scenes=True, world=args.world)
    summary = accuracy_summary(model, processor, args, configurations(), ratios=[])
    values = attention_measurement(model, processor, images, items, scenes, args.batch_size, progress)
    text, stats = attention_table(values)
    print(calibrate.table(summary))
    print(f"\nwhat FastV's ranking row reads (supervised: layer {SUPERVISED[0]} head {SUPERVISED[1]}); "
          "mean over questions [95% bootstrap interval]")
    print(text)
    if args.out:
        write_measurement(args.out, args.model, digest, {
            **calibrate.as_json(summary, targets=False),
            "attention": {name: {m: dict(zip(("mean", "low", "high"), v)) for m, v in s.items()} for name, s in stats.items()}})
    return 0

if __name__ == "__main__":
    sys.exit(main())

"""The question stream the toy model learns from, tokenised exactly as lmms-eval will prompt it.

Step ``i`` of a run with seed ``s`` draws its scenes from ``default_rng([s, i])``: a batch depends
on nothing but (seed, step), so a resumed run sees the same data as an uninterrupted one, and a
re-run reproduces the logged losses. Held-out scenes use a disjoint stream (``HELD_OUT``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ..world import BENCHMARK_WORLD, COLOURS, FAMILIES, KIND_WEIGHTS, KINDS, POPE_STRATEGIES, SHAPES, Scene, ask, draw_scene, prompt_text, render, target_text

__all__ = ["QAItem", "Batch", "Mention", "HELD_OUT", "sample_items", "mentions_of", "side_word_of", "chat_prompt", "encode_items", "patch_labels"]

HELD_OUT = 10**9  # stream offset of held-out scenes (training streams use step indices < 1e9)


@dataclass
class QAItem:
    image: int  # index into the batch's images
    family: str
    prompt: str  # the user text after the image (lmms-eval's doc_to_text)
    target: str  # what a correct model answers


@dataclass
class Batch:
    """Each question's sequence is ``prefix + suffix``: the prefix (BOS, "USER: ", the image
    placeholder run) is the same for every question, so training runs it once per image."""

    pixel_values: torch.Tensor  # [I, 3, 336, 336]
    image_index: torch.Tensor  # [Q] long: which image each question is about
    input_ids: torch.Tensor  # [Q, L] right-padded full sequences (prefix + suffix)
    attention_mask: torch.Tensor  # [Q, L]
    labels: torch.Tensor  # [Q, L] -100 except the answer tokens (and </s>)
    prefix_len: int  # tokens shared by every row (up to and including the image run)
    patch_labels: torch.Tensor | None = None  # [I, P] long: kind index + 1 under each patch centre, 0 = background
    mentions: list[list["Mention"]] = field(default_factory=list)  # per question: the objects its text names
    answer_at: list[int] = field(default_factory=list)  # per question: the position that predicts the answer's first word
    side_at: list[int | None] = field(default_factory=list)  # per question: its one "left" / "right" word, if it has exactly one
    #: [I, K] long: the sorted raster indices of the patches whose tokens the language model sees (a
    #: pruned sequence, as the pruning engine feeds it); None = all P. ``input_ids`` hold K image tokens.
    keep: torch.Tensor | None = None

    @property
    def seen(self) -> torch.Tensor:
        """[I, K] raster index of each image token the language model sees."""
        if self.keep is not None:
            return self.keep
        images, patches = self.patch_labels.shape
        return torch.arange(patches).expand(images, patches)

    @property
    def seen_labels(self) -> torch.Tensor:
        """[I, K] the ``patch_labels`` of the image tokens the language model sees."""
        return self.patch_labels if self.keep is None else self.patch_labels.gather(1, self.keep)


@dataclass(frozen=True)
class Mention:
    """A run of adjacent colour / shape words in a question ("red circle", "squares", "circle red",
    "red" in "the red object"): the set of objects it names. ``at`` is the sequence position of its
    last word once tokenised (in ``mentions_of``: the character offset where it ends).

    An answer option ("B. red" under "Which color is the circle?") is a mention too: the option's
    word joined with what the question names ("red circle"), with ``letter_at`` where its letter is."""

    at: int
    colour: str | None
    shape: str | None
    letter_at: int | None = None

    @property
    def option(self) -> bool:
        return self.letter_at is not None

    def matches(self, kind: tuple[str, str]) -> bool:
        return (self.colour is None or kind[0] == self.colour) and (self.shape is None or kind[1] == self.shape)


def _one_question(scene, rng: np.random.Generator, families: tuple[str, ...], count_shape: str | None = None):
    """One question of a family drawn at random; ``count_shape``: what a count question counts (None:
    a random shape)."""
    order = rng.permutation(len(families))
    for i in order:  # a family may have nothing to ask about this scene (e.g. no left/right pair)
        family = families[int(i)]
        kw = {"strategy": POPE_STRATEGIES[int(rng.integers(3))]} if family == "exist" else {}
        if family == "count" and count_shape is not None:
            kw = {"shape": count_shape}
        qs = ask(scene, family, rng, **kw)
        if qs:
            return qs[int(rng.integers(len(qs)))]
    return None


def sample_items(
    seed: int,
    index: int,
    num_images: int,
    questions_per_image: int,
    families: tuple[str, ...] = FAMILIES,
    with_scenes: bool = False,
    objects: tuple[int, int] | None = None,
    count_focus: float = 0.0,
    world: str = BENCHMARK_WORLD,
):
    """``num_images`` fresh scenes and ``questions_per_image`` questions about each:
    (images, items), plus the scenes when ``with_scenes``. ``objects`` = (lo, hi) draws the objects
    per scene uniformly in [lo, hi] (the training curriculum; at most one per kind, and fewer when
    they do not fit); None keeps the world's own 1-4.

    ``count_focus`` (training only; 0 draws the world's own scenes and questions): this share of the
    scenes is drawn *shape-heavy* (``shape_heavy_weights``) and its count questions count its most
    common shape. In the world's own stream three objects of one shape are rare (1.9% of training count
    questions in the 1-4-object stage; 4.9% with ``count_focus=0.3``), and v9, trained on it, got no
    three-object count right.

    ``world`` (``hivtp.world.WORLDS``): draws the scenes' clutter from its own stream, so the objects
    and questions of a (seed, index) are the same in every world."""
    rng = np.random.default_rng([seed, index])
    images, items, scenes = [], [], []
    for _ in range(num_images):
        count = None if objects is None else int(rng.integers(objects[0], objects[1] + 1))
        focus = bool(count_focus) and rng.random() < count_focus
        scene = draw_scene(rng, num_objects=count, kind_weights=shape_heavy_weights(rng) if focus else None, world=world)
        count_shape = most_common_shape(scene, rng) if focus else None
        for _ in range(questions_per_image):
            q = _one_question(scene, rng, families, count_shape)
            if q is not None:
                items.append(QAItem(len(images), q.family, prompt_text(q), target_text(q)))
        images.append(render(scene))
        scenes.append(scene)
    return (images, items, scenes) if with_scenes else (images, items)


SHAPE_HEAVY = 4.0  # a shape-heavy scene draws one shape's kinds this many times as often


def shape_heavy_weights(rng: np.random.Generator) -> np.ndarray:
    """``KIND_WEIGHTS`` with the kinds of one random shape weighted ``SHAPE_HEAVY`` times (renormalised):
    over the world's 1-4 objects, scenes with three or more objects of one shape become 16% of scenes
    instead of 6%."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    weights = KIND_WEIGHTS * np.array([SHAPE_HEAVY if s == shape else 1.0 for _, s in KINDS])
    return weights / weights.sum()


def most_common_shape(scene: Scene, rng: np.random.Generator) -> str:
    """The shape with the most objects in ``scene`` (ties broken at random)."""
    counts = np.array([scene.count(shape=s) for s in SHAPES])
    best = np.flatnonzero(counts == counts.max())
    return SHAPES[int(best[int(rng.integers(len(best)))])]


_WORD = re.compile(r"[A-Za-z]+")
_OPTION = re.compile(r"^([A-Z])\. ([A-Za-z]+)$", re.M)
_SIDE = re.compile(r"\b(left|right)\b")


def _descriptor(word: str) -> tuple[str, str] | None:
    """("colour" | "shape", value) for a colour word or a (plural) shape word, else None."""
    if word in COLOURS:
        return "colour", word
    singular = word[:-1] if word.endswith("s") and word[:-1] in SHAPES else word
    return ("shape", singular) if singular in SHAPES else None


def mentions_of(prompt: str) -> list[Mention]:
    """The objects named by a prompt's question (its first line), in order, then its answer options
    (lines "A. word" below it), each ending at a character offset of ``prompt``."""
    question = prompt.split("\n", 1)[0]
    out: list[Mention] = []
    run: dict[str, str] = {}
    end, last_end = -1, -1
    for m in _WORD.finditer(question):
        d = _descriptor(m.group().lower())
        adjacent = m.start() == last_end + 1 and question[last_end] == " " if last_end >= 0 else False
        if d is not None and (not run or (adjacent and d[0] not in run)):
            run[d[0]], end = d[1], m.end()
        else:
            if run:
                out.append(Mention(end, run.get("colour"), run.get("shape")))
            run = {d[0]: d[1]} if d is not None else {}
            end = m.end() if d is not None else -1
        last_end = m.end()
    if run:
        out.append(Mention(end, run.get("colour"), run.get("shape")))
    if out:
        asked = {"colour": out[-1].colour, "shape": out[-1].shape}
        for m in _OPTION.finditer(prompt, len(question)):
            d = _descriptor(m.group(2).lower())
            if d is not None:
                joined = {**asked, d[0]: d[1]}
                out.append(Mention(m.end(2), joined["colour"], joined["shape"], letter_at=m.end(1)))
    return out


def side_word_of(prompt: str) -> int | None:
    """The character offset where the question's side word ends, when it has exactly one ("Is the
    red circle on the left of ...?"; "to the left or right of" has two and states no side)."""
    found = list(_SIDE.finditer(prompt.split("\n", 1)[0]))
    return found[0].end() if len(found) == 1 else None


def _inside(obj, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h = obj.side / 2
    dx, dy = x - obj.x, y - obj.y
    if obj.shape == "circle":
        return dx**2 + dy**2 <= h**2
    box = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if obj.shape == "square":
        return box
    return box & (np.abs(dx) <= (dy + h) / 2)  # triangle: apex at the top, base at the bottom


def patch_labels(scene: Scene, grid: int = 24, crop: int = 336) -> torch.Tensor:
    """[grid * grid] raster labels: the kind (index + 1) of the object under each patch centre of the
    processor's view (short side resized to ``crop``, centre-cropped), 0 for background. The dense
    target of the encoder's auxiliary loss during training."""
    side = min(scene.width, scene.height)
    centres = (np.arange(grid) + 0.5) * crop / grid * side / crop  # canvas pixels from the view's corner
    ys, xs = np.meshgrid(centres + (scene.height - side) / 2, centres + (scene.width - side) / 2, indexing="ij")
    labels = np.zeros((grid, grid), dtype=np.int64)
    for obj in scene.objects:
        labels[_inside(obj, xs, ys)] = KINDS.index(obj.kind) + 1
    return torch.from_numpy(labels.reshape(-1))


def chat_prompt(processor, prompt: str) -> str:
    """The full prompt string: the processor's chat template over [image, text], as lmms-eval's chat
    ``llava_hf`` model builds it."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def encode_items(processor, images: list[Image.Image], items: list[QAItem], image_tokens: int) -> Batch:
    """Tokenise prompt + " answer</s>" per item; the single <image> id expands to ``image_tokens``
    placeholder ids (as the processor's text expansion does). Labels cover the answer only."""
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    rows, labels, mentions, answer_at, side_at = [], [], [], [], []
    for item in items:
        chat = chat_prompt(processor, item.prompt)
        enc = tok(chat, return_offsets_mapping=True)
        ids = enc.input_ids
        at = ids.index(image_id)
        ids = ids[:at] + [image_id] * image_tokens + ids[at + 1 :]
        answer = tok(" " + item.target, add_special_tokens=False).input_ids + [tok.eos_token_id]
        rows.append(ids + answer)
        labels.append([-100] * len(ids) + answer)
        mentions.append(_token_mentions(chat, item.prompt, enc.offset_mapping, image_tokens - 1))
        side = side_word_of(item.prompt)
        side_at.append(None if side is None else _token_at(chat, item.prompt, enc.offset_mapping, image_tokens - 1, side))
        blank = next(k for k, t in enumerate(answer) if tok.decode([t]).strip())  # " No" may start with a lone space token
        answer_at.append(len(ids) - 1 + blank)
    prefix_len = rows[0].index(image_id) + image_tokens
    if any(r[:prefix_len] != rows[0][:prefix_len] for r in rows):  # the chat template puts the image first
        raise ValueError("prompts do not share the image prefix; check the chat template.")
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    label_t = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        label_t[i, : len(l)] = torch.tensor(l)
        mask[i, : len(r)] = 1
    pixel_values = processor.image_processor(images, return_tensors="pt").pixel_values
    return Batch(pixel_values, torch.tensor([it.image for it in items]), input_ids, mask, label_t, prefix_len,
                 mentions=mentions, answer_at=answer_at, side_at=side_at)


def _token_at(chat: str, prompt: str, offsets, shift: int, end: int) -> int:
    """The sequence position of the token holding ``prompt``'s character ``end - 1``, moved by
    ``shift`` (the image run's expansion) since the prompt comes after the image."""
    base = chat.rindex(prompt)
    return next(i for i, (a, b) in enumerate(offsets) if a < base + end <= b) + shift


def _token_mentions(chat: str, prompt: str, offsets, shift: int) -> list[Mention]:
    """``mentions_of(prompt)`` with ``at`` (and ``letter_at``) as sequence positions."""
    out = []
    token = lambda end: _token_at(chat, prompt, offsets, shift, end)  # noqa: E731
    for m in mentions_of(prompt):
        out.append(Mention(token(m.at), m.colour, m.shape, None if m.letter_at is None else token(m.letter_at)))
    return out

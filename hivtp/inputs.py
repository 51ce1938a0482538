"""Rebuild the language model's inputs once each image keeps its own number of tokens.

The processor expands every ``<image>`` into as many placeholder tokens as the unpruned model has
image features (576 for LLaVA-1.5). After pruning, image ``i`` keeps ``N_i`` tokens, so each
placeholder run is shortened to ``N_i``, the samples are re-padded on the LEFT to the batch's
longest (decoder-only generation appends on the right), and the projected image features are
written into the placeholder positions, exactly as the model's own ``masked_scatter`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import InputMismatchError

__all__ = ["MergedInputs", "left_padded", "merge_image_tokens", "split_images_by_sample"]


@dataclass
class MergedInputs:
    input_ids: torch.Tensor  # [B, L'] with N_i placeholders per image, left padded
    attention_mask: torch.Tensor  # [B, L']
    inputs_embeds: torch.Tensor  # [B, L', D]
    image_positions: torch.Tensor  # [B, L'] bool: where image features were written
    #: extra keyword arguments of the LLM call (e.g. Qwen2.5-VL's M-RoPE ``position_ids``), set by the
    #: engine from the model family's adapter; empty for the LLaVA family
    llm_kwargs: dict = field(default_factory=dict)

    @property
    def position_ids(self) -> torch.Tensor:
        """[B, L'] the position ids ``generate`` gives this left-padded prompt (transformers'
        ``_prepare_position_ids_for_generation``): each sample counts from 0 at its first real token,
        padding gets 0. A forward must pass them too, or padded samples are shifted."""
        mask = self.attention_mask.long()
        return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _runs(is_image: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous runs of True in a 1-D bool tensor, as (start, end) pairs."""
    idx = is_image.nonzero(as_tuple=False).flatten().tolist()
    runs: list[tuple[int, int]] = []
    for i in idx:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def split_images_by_sample(placeholders_per_sample: list[int], tokens_per_image: list[int]) -> list[list[int]]:
    """Assign images (in order) to samples so that each sample's placeholder count is matched
    exactly by the unpruned token counts of its images. Returns image indices per sample."""
    out: list[list[int]] = []
    img = 0
    for b, need in enumerate(placeholders_per_sample):
        mine: list[int] = []
        have = 0
        while have < need and img < len(tokens_per_image):
            mine.append(img)
            have += tokens_per_image[img]
            img += 1
        if have != need:
            raise InputMismatchError(
                f"sample {b} has {need} image tokens, but the images given for it need "
                f"{have} ({' + '.join(str(tokens_per_image[i]) for i in mine) or 'no images'}). Build inputs "
                "with the model's processor (it expands each <image> to the right number of tokens) and "
                "pass exactly one image per <image> in the prompt."
            )
        out.append(mine)
    if img != len(tokens_per_image):
        raise InputMismatchError(
            f"{len(tokens_per_image)} images were given but the prompts have placeholders for only {img}. "
            "Put one <image> in the prompt per image."
        )
    return out


def left_padded(attention_mask: torch.Tensor) -> bool:
    """Whether every row of ``attention_mask`` [B, L] is pads then real tokens (no 0 after a 1)."""
    mask = attention_mask.bool()
    return not (~mask[:, 1:] & mask[:, :-1]).any().item()


def merge_image_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_features: list[torch.Tensor],
    tokens_per_image: list[int],
    per_sample: list[list[int]],
    image_token_id: int,
    pad_token_id: int,
    embed: torch.nn.Module,
) -> MergedInputs:
    """Shorten each image's placeholder run to its kept count and scatter the features in.

    input_ids: [B, L] (any padding side); image_features: per image [N_i, D] (projected);
    tokens_per_image: the unpruned placeholder count of each image; per_sample: image indices of
    each sample, from :func:`split_images_by_sample`.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    is_image = input_ids == image_token_id

    sequences: list[torch.Tensor] = []
    for b, images in enumerate(per_sample):
        valid = attention_mask[b].bool()
        ids, img_mask = input_ids[b][valid], is_image[b][valid]
        pieces, cursor = [], 0
        runs = _runs(img_mask)
        # Runs may merge two adjacent images ("<image><image>"): walk images through the runs.
        run_iter = iter(runs)
        start, end = next(run_iter, (0, 0))
        for i in images:
            need = tokens_per_image[i]
            if end - start < need:
                raise InputMismatchError(
                    f"sample {b}: image {i} needs {need} consecutive image tokens but a run of "
                    f"{end - start} was found. Image placeholders must not be split by text."
                )
            pieces.append(ids[cursor:start])
            pieces.append(torch.full((image_features[i].shape[0],), image_token_id, dtype=ids.dtype, device=ids.device))
            start += need
            cursor = start
            if start == end:
                start, end = next(run_iter, (end, end))
        pieces.append(ids[cursor:])
        sequences.append(torch.cat(pieces))

    length = max(s.shape[0] for s in sequences)
    bsz = len(sequences)
    new_ids = torch.full((bsz, length), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    new_mask = torch.zeros((bsz, length), dtype=attention_mask.dtype, device=input_ids.device)
    for b, seq in enumerate(sequences):
        new_ids[b, length - seq.shape[0] :] = seq
        new_mask[b, length - seq.shape[0] :] = 1

    positions = (new_ids == image_token_id) & new_mask.bool()
    lookup_ids = new_ids
    if image_token_id >= embed.num_embeddings:  # some checkpoints put <image> past the vocabulary
        lookup_ids = new_ids.masked_fill(positions, 0)
    embeds = embed(lookup_ids)  # [B, L', D]
    if image_features:
        # Device and dtype of the embeddings, as transformers' LLaVA does (image_features.to(
        # inputs_embeds.device, inputs_embeds.dtype)): with a device_map the tower / projector and the
        # embeddings may sit on different devices.
        flat = torch.cat([image_features[i] for images in per_sample for i in images])
        flat = flat.to(embeds.device, embeds.dtype)
        embeds = embeds.masked_scatter(positions.unsqueeze(-1).to(embeds.device), flat)
    return MergedInputs(new_ids, new_mask, embeds, positions)

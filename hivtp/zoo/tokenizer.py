"""The shipped byte-level BPE tokenizer and the chat templates of the offline checkpoints."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

TOKENIZER_FILE = Path(__file__).parent / "tokenizer.json"

#: LLaVA-1.5 conversation format ("USER: <image>\n{text} ASSISTANT:"), rendered from structured
#: messages ({"type": "image"} / {"type": "text"} parts) as the llava-hf processors do.
CHAT_TEMPLATES = {
    "llava-1.5": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string "
        "else message['content'][0]['text'] }}{{ ' ' }}"
        "{% else %}{{ message['role'].upper() + ': ' }}"
        "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
        "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
        "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endfor %}"
        "{% endif %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
    ),
    # Qwen2-VL / Qwen2.5-VL conversation format (the hub template without tools or videos): a default
    # system turn, each image as <|vision_start|><|image_pad|><|vision_end|>, and "<|im_start|>assistant\n".
    "qwen2-vl": (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}

#: the Qwen2-VL special tokens besides <|image_pad|> / <|video_pad|> (which the tokenizer adds first, as
#: its image / video tokens: ids 780, 781), appended to the shipped BPE vocabulary in this order (ids
#: 782-788); the offline Qwen shapes name them by these ids
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|im_start|>",
)


def build_tokenizer(
    kind: str = "tiny-bpe",
    chat_template: str | None = "llava-1.5",
    extra_special_tokens: dict[str, str] | None = None,
    added_tokens: tuple[str, ...] = (),
):
    """The shipped byte-level BPE tokenizer (``scripts/make_tokenizer.py``) as a fast HF tokenizer.

    ``extra_special_tokens`` names the model's special tokens (default: LLaVA's ``image_token``);
    ``added_tokens`` are appended to the vocabulary as special tokens, in order."""
    from transformers import PreTrainedTokenizerFast

    if kind != "tiny-bpe":
        raise ConfigError(f"no shipped tokenizer {kind!r}; the offline shapes use 'tiny-bpe'.")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=extra_special_tokens or {"image_token": "<image>"},
        padding_side="left",
        model_max_length=2048,
    )
    if added_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(added_tokens)})
    if chat_template:
        tok.chat_template = CHAT_TEMPLATES[chat_template]
    return tok

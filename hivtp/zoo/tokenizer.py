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
}


def build_tokenizer(kind: str = "tiny-bpe", chat_template: str | None = "llava-1.5"):
    """The shipped byte-level BPE tokenizer (``scripts/make_tokenizer.py``) as a fast HF tokenizer."""
    from transformers import PreTrainedTokenizerFast

    if kind != "tiny-bpe":
        raise ConfigError(f"no shipped tokenizer {kind!r}; the offline shapes use 'tiny-bpe'.")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=2048,
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATES[chat_template]
    return tok

"""Build the small byte-level BPE tokenizer shipped in ``hivtp/zoo/tokenizer.json``.

Run once by a developer (``python scripts/make_tokenizer.py``); the JSON is committed so that every
offline checkpoint gets exactly the same tokenizer without a download. Byte-level BPE tokenizes any
text (lmms-eval prompts included); the merges are learned from a corpus of the words the offline
benchmarks and the real benchmarks' prompt suffixes use, so those come out as few tokens.

Special tokens come first: <unk>=0, <s>=1, </s>=2, <pad>=3, <image>=4.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

WORDS = """
a an the is are was were be there here this that these those it its of in on at to from by with and or not no yes
what which who whose where when how why many much more most less fewer than color colour shape size count number
object objects thing things item items picture image photo scene left right top bottom above below under over
behind front middle center centre near far next beside between inside outside corner edge side upper lower
red green blue yellow orange purple pink brown black white gray grey cyan magenta
circle circles square squares triangle triangles star stars cross crosses diamond diamonds ring rings hexagon
rectangle rectangles ellipse heart hearts bar bars dot dots
small large big tiny huge medium little
zero one two three four five six seven eight nine ten eleven twelve
0 1 2 3 4 5 6 7 8 9 10 11 12
first second third last both all any some each every other same different only also
answer question questions using single word phrase please directly option options letter given choices choice
choose select correct following context hint lecture solution describe description briefly
A B C D E
USER ASSISTANT SYSTEM user assistant system
do does did can could would should will have has had
there's it's isn't aren't doesn't
""".split()

TEMPLATES = [
    "Is there a {c} {s} in the image?",
    "Is there a {s} in the image? Answer the question using a single word or phrase.",
    "What color is the {s}?",
    "What shape is the {c} object?",
    "How many {s}s are there?",
    "Is the {c} {s} to the left of the {s2}?",
    "Is the {s} above the {s2}? Please answer yes or no.",
    "Which object is larger, the {s} or the {s2}?",
    "Answer with the option's letter from the given choices directly.",
    "USER: <image>\nWhat is in the picture? ASSISTANT: a {c} {s}",
]


def corpus() -> list[str]:
    colours = "red green blue yellow orange purple pink brown black white gray cyan".split()
    shapes = "circle square triangle star cross diamond ring hexagon".split()
    lines = [" ".join(WORDS)] * 20
    for t, c, s, s2 in itertools.product(TEMPLATES, colours, shapes, shapes[::-1]):
        lines.append(t.format(c=c, s=s, s2=s2))
    return lines


def build(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "hivtp/zoo/tokenizer.json")
    args = parser.parse_args()
    tok = build(args.vocab_size)
    for i, name in enumerate(SPECIALS):
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    tok.save(str(args.out))
    print(f"wrote {args.out} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()

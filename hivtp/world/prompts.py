"""The text a model is shown for a question, exactly as lmms-eval's task code builds it.

The offline tasks reuse lmms-eval's own ``doc_to_text`` functions (pope, gqa, mme, scienceqa) with
their default ``lmms_eval_specific_kwargs``; the toy model is trained on the same strings. The copy
below exists only so that training does not need lmms-eval installed; ``tests/test_world.py`` checks
it against lmms-eval's functions, so the two cannot drift apart.
"""

from __future__ import annotations

from .questions import Question

__all__ = ["SHORT_ANSWER", "SQA_SUFFIX", "MME_SUFFIX", "TASK_OF_FAMILY", "prompt_text", "target_text"]

#: lmms-eval's default post_prompt for pope, gqa and mme
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
#: lmms-eval's default post_prompt for scienceqa_img
SQA_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
#: MME stores this suffix in its questions; lmms-eval replaces it with the post_prompt
MME_SUFFIX = " Please answer yes or no."
#: which lmms-eval task family formats each question family
TASK_OF_FAMILY = {"exist": "pope", "attribute": "gqa", "relation": "gqa", "count": "gqa", "mme": "mme", "choice": "scienceqa"}


def _choices_block(choices: tuple[str, ...]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))


def prompt_text(q: Question, hint: str = "") -> str:
    """The user text (after the image) for ``q``, as lmms-eval's doc_to_text returns it."""
    task = TASK_OF_FAMILY[q.family]
    if task == "pope":
        return f"{q.question.strip()}{SHORT_ANSWER}"
    if task == "gqa":
        return f"{q.question}{SHORT_ANSWER}"
    if task == "mme":
        return f"{q.question.strip().replace(MME_SUFFIX, '')}{SHORT_ANSWER}"
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{q.question}\n{_choices_block(q.choices)}{SQA_SUFFIX}"


def target_text(q: Question) -> str:
    """What a correct model answers (scored correct by the task's process_results)."""
    if q.family in ("exist", "mme"):
        return str(q.answer).capitalize()  # "Yes" / "No", as LLaVA answers
    if q.family == "choice":
        return chr(ord("A") + int(q.answer))
    return str(q.answer)

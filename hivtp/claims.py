"""The paper's confirmed claims and each model family's standard token budgets: the one place for both.

Read by the claims ledger (hivtp.results.ledger), the latency summary (hivtp.latency.report), the
GPU benchmark (hivtp.latency.bench), the paper profile's plan (scripts/reproduce.py) and checked
against the budget sweeps (configs/sweep/budgets*.yaml, tests/test_claims.py). Standard library only: it imports in an
environment without torch, pandas or the hivtp package (``python hivtp/claims.py ...``).

Sources (shared/spec/hivtp-method.md): the claims are arXiv 2509.23663's abstract and the release
README, the only confirmed numbers; the budgets are the ones papers in this field compare at
(192/128/64 of 576 tokens for LLaVA-1.5, 640/320/160 per image for LLaVA-NeXT). The speed and
accuracy claims are about HIVTP at its own rule (no budget: regions 2, keep_ratio 0.25, window 2,
about 270 of 576 tokens), the release's one operating point.

    python hivtp/claims.py budgets MODEL     # e.g. "64 128 192"
    python hivtp/claims.py family MODEL      # llava15 | llava_next | qwen2_5_vl
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = [
    "CLAIMS",
    "CLAIMED_FAMILIES",
    "CLAIMED_MODELS",
    "FAMILIES",
    "FAMILY_NAMES",
    "FAMILY_OF_MODEL_TYPE",
    "STANDARD_BUDGETS",
    "PAPER_BASELINES",
    "Claim",
    "budgets_for",
    "claim",
    "claims_for",
    "family_of",
    "is_claimed_model",
]

#: model families the harness serves, as configs/model/*.yaml name them (``family:``)
FAMILIES = ("llava15", "llava_next", "qwen2_5_vl")
#: a checkpoint's ``model_type`` (its config.json) -> its family (``hivtp.run.check_model_family``)
FAMILY_OF_MODEL_TYPE = {"llava": "llava15", "llava_next": "llava_next", "qwen2_5_vl": "qwen2_5_vl"}
#: the families the paper reports (and so makes claims about); it has no Qwen2.5-VL numbers
CLAIMED_FAMILIES = ("llava15", "llava_next")
#: how the paper (or, for Qwen, its model card) names each family's 7B model
FAMILY_NAMES = {"llava15": "LLaVA-v1.5-7B", "llava_next": "LLaVA-Next-7B", "qwen2_5_vl": "Qwen2.5-VL-7B"}
#: the harness's name (configs/model/*.yaml, hivtp.latency.bench.MODELS) of each claimed family's model:
#: the one the ledger compares a claim with where a family has several (LLaVA-NeXT's mistral sibling, tiny shapes)
#: (and the names its release and the hub give it: liuhaotian/llava-v1.5-7b, llava-hf/llava-v1.6-vicuna-7b-hf)
CLAIMED_MODELS = {"llava15": ("llava-1.5-7b", "llava-v1.5-7b"), "llava_next": ("llava-v1.6-vicuna-7b",)}
#: visual tokens kept at the standard budgets: per 24x24 crop grid (LLaVA-1.5), per image (LLaVA-NeXT),
#: merged tokens per image (Qwen2.5-VL, whose count varies with resolution: keep ratios are the other
#: axis, configs/sweep/keep_qwen.yaml)
STANDARD_BUDGETS = {"llava15": (64, 128, 192), "llava_next": (160, 320, 640), "qwen2_5_vl": (64, 128, 192)}
#: the baselines the paper profile compares HIVTP with at the standard budgets, for accuracy
#: (scripts/reproduce.py) and speed (``make bench-gpu``), so that the two pair up. Not ``pdrop``: its
#: budget is the mean image tokens per LLM layer, and with its published stages (1/4, 1/2, 3/4 of 32
#: layers) the first quarter sees all 576 tokens, so no budget below 144 (LLaVA-1.5) or 732 (a 672 px
#: LLaVA-NeXT image) is reachable; ``oracle`` is an offline reference, not a method to deploy.
PAPER_BASELINES = ("random", "pool", "fastervlm", "visionzip", "divprune", "hiprune", "fastv")


@dataclass(frozen=True)
class Claim:
    """One confirmed claim. ``value`` is a percent (None for a qualitative claim); ``family`` is one
    of :data:`FAMILIES`, or ``any``."""

    family: str
    what: str  # ttft_reduction | throughput_gain | accuracy | hallucination | vs_prior
    value: float | None
    statement: str  # what is claimed, without model or number

    def phrase(self, number: bool = True) -> str:
        """'LLaVA-v1.5-7B: TTFT reduced by up to 50.0%' (the statement alone for any family; without
        the figure when ``number`` is off, as the offline ledger names the claim it is an analogue of)."""
        figure = f" by up to {self.value:.1f}%" if number and self.value is not None else ""
        head = f"{FAMILY_NAMES[self.family]}: " if self.family in FAMILY_NAMES else ""
        return f"{head}{self.statement}{figure}"

    @property
    def text(self) -> str:
        return self.phrase(number=True)

    @property
    def fraction(self) -> float | None:
        return None if self.value is None else self.value / 100


CLAIMS = (
    Claim("llava15", "ttft_reduction", 50.0, "TTFT reduced"),
    Claim("llava15", "throughput_gain", 60.9, "decode throughput up"),
    Claim("llava_next", "ttft_reduction", 55.1, "TTFT reduced"),
    Claim("llava_next", "throughput_gain", 47.3, "decode throughput up"),
    Claim("llava15", "accuracy", None, "no accuracy loss (gains on some benchmarks)"),
    Claim("llava_next", "accuracy", None, "no accuracy loss (gains on some benchmarks)"),
    Claim("any", "vs_prior", None, "better accuracy than prior works at higher efficiency"),
    Claim("any", "hallucination", None, "the local stage reduces hallucination (POPE)"),
)


def family_of(model: str) -> str:
    """A model's family from its name (shape name, hub id or folder): Qwen2.5-VL names say ``qwen``;
    LLaVA-NeXT names say ``next`` or ``v1.6``; every other LLaVA is LLaVA-1.5's family."""
    name = str(model).lower()
    if "qwen" in name:
        return "qwen2_5_vl"
    return "llava_next" if ("next" in name or "v1.6" in name) else "llava15"


def is_claimed_model(model: str, family: str) -> bool:
    """Whether ``model`` (a shape name, hub id or folder) is the model the paper's claims about ``family``
    are about: ``llava-hf/llava-1.5-7b-hf``, ``liuhaotian/llava-v1.5-7b`` and ``llava-1.5-7b`` are;
    ``tiny-llava``, ``llava-1.5-13b`` and ``llava-v1.6-mistral-7b`` are not."""
    return any(name in str(model).lower() for name in CLAIMED_MODELS.get(family, ()))


def budgets_for(model_or_family: str) -> tuple[int, ...]:
    """The standard budgets of a family, or of the family of a model name."""
    family = model_or_family if model_or_family in FAMILIES else family_of(model_or_family)
    return STANDARD_BUDGETS[family]


def claims_for(family: str) -> tuple[Claim, ...]:
    """The claims about one family (those about any family included)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; families: {', '.join(FAMILIES)}.")
    return tuple(c for c in CLAIMS if c.family in (family, "any"))


def claim(family: str, what: str) -> Claim:
    """The one claim of ``family`` about ``what`` (e.g. ``claim("llava15", "ttft_reduction").value``)."""
    for c in claims_for(family):
        if c.what == what:
            return c
    raise KeyError(f"no {what!r} claim for {family!r}; claims: {sorted({c.what for c in CLAIMS})}.")


def main(argv: list[str]) -> int:
    commands = {"budgets": lambda m: " ".join(map(str, budgets_for(m))), "family": family_of}
    if len(argv) != 2 or argv[0] not in commands:
        print(f"usage: python hivtp/claims.py {{{'|'.join(commands)}}} MODEL", file=sys.stderr)
        return 2
    print(commands[argv[0]](argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

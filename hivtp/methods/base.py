"""The interface every token-reduction method implements, and the registry that names them.

A method sees a :class:`CropBatch`: the feature-layer patch features of C crops (for LLaVA-1.5 a
crop is an image; for LLaVA-NeXT each 336 px tile and the base image are crops) together with
whatever it asked the vision tower to capture. It returns a :class:`CropSelection`: per crop, the
feature vectors to project and, for each of them, the raster position on the crop's grid that the
token stands for (its own patch for kept tokens; for merged tokens, e.g. pooling cells or
VisionZip's contextual tokens, the patch of the cell / target they were merged into). Positions
are unique within a crop. LLaVA-1.5 feeds the tokens in the order returned; LLaVA-NeXT places them
by position in its packed (stitched, unpadded) layout.

Methods are resolved by name through :data:`METHODS`; :func:`build_method` checks parameter names
so that a typo is an error, not a silently ignored keyword.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, ContextManager, Sequence

import torch

from ..errors import ConfigError, UnknownMethodError
from ..vision import TowerOutput

__all__ = [
    "CropBatch",
    "CropSelection",
    "TowerRequest",
    "PruningMethod",
    "METHODS",
    "register_method",
    "build_method",
    "available_methods",
    "is_offline_only",
    "parse_layers",
]


@dataclass(frozen=True)
class TowerRequest:
    """What a method needs captured during the vision pass."""

    qk_layers: tuple[int, ...] = ()  # 0-based encoder layers whose (q, k) projections are kept
    attention_layers: tuple[int, ...] = ()  # eager path only: layers whose probabilities are kept
    eager: bool = False  # run the faithful eager tower (all attention maps materialised)


@dataclass
class CropBatch:
    """The input of a before-projector method: C crops of a batch."""

    features: torch.Tensor  # [C, P, D] feature-layer patch tokens (CLS dropped), raster order
    grid: tuple[int, int]  # (H, W), H * W == P
    tower: TowerOutput  # what the tower captured for this method
    budgets: list[int | None]  # per crop: tokens to keep, or None for the method's own rule
    crop_keys: list[str] = field(default_factory=list)  # per crop: a stable id (seeds random methods)
    feature_attention_layer: int = -1  # 0-based encoder layer whose output is the feature layer
    #: [C, P] bool: positions the model's packing keeps (LLaVA-NeXT unpadding removes some tile rows /
    #: columns); None = every position. Methods choose among valid positions only, so that an exact
    #: budget stays exact after packing.
    valid: torch.Tensor | None = None
    #: True for families whose grids vary per image (Qwen2.5-VL): a region / window geometry that does
    #: not divide the grid follows the documented uneven partition (``hivtp.selection``) instead of raising.
    uneven_partition: bool = False
    #: [C, 3, S, S] the crops' pixel values as the processor gives them (normalised), for methods with
    #: ``needs_crop_pixels``; None where the family's layout is no crop images (Qwen2.5-VL's packed patches)
    pixels: torch.Tensor | None = None

    @property
    def num_crops(self) -> int:
        return self.features.shape[0]

    @property
    def num_patches(self) -> int:
        return self.features.shape[1]


@dataclass
class CropSelection:
    """The output of a method, one entry per crop."""

    features: list[torch.Tensor]  # [N_c, D] tokens to project, in the order they enter the LLM
    positions: list[torch.Tensor]  # [N_c] long: unique raster index each token stands for
    stats: list[dict[str, int]]  # per crop counters: tokens_kept (+ method-specific ones)

    @classmethod
    def from_masks(cls, features: torch.Tensor, keep: torch.Tensor, stats: list[dict[str, int]]) -> "CropSelection":
        """Subset methods: ``keep`` [C, P] bool; kept tokens stay in raster order."""
        positions = [row.nonzero(as_tuple=False).flatten() for row in keep]
        return cls(
            features=[f[p] for f, p in zip(features, positions)],
            positions=positions,
            stats=stats,
        )


class PruningMethod:
    """Base class. Subclasses set ``name``, define ``__init__`` with keyword parameters (validated
    there), and implement :meth:`tower_request` and :meth:`select`."""

    name: ClassVar[str] = ""
    #: "projector": reduces crops before the projector. "llm": acts inside the language model.
    stage: ClassVar[str] = "projector"
    #: tokens to keep per crop grid (LLaVA-1.5) or per image (LLaVA-NeXT, Qwen2.5-VL); None = the method's rule
    budget: int | None = None
    #: the method reads the vision tower's [CLS] token (its attention row or its key); ``hivtp.attach``
    #: refuses it, before any model work, on a family whose tower has no [CLS] (Qwen2.5-VL)
    needs_cls: ClassVar[bool] = False
    #: the method reads the crops' pixels (``CropBatch.pixels``); ``hivtp.attach`` refuses it, before any
    #: model work, on a family whose layout holds no crop images (Qwen2.5-VL)
    needs_crop_pixels: ClassVar[bool] = False
    #: a reference for the offline testbed only (``oracle`` reads what the procedural world knows by
    #: construction): never planned for the paper profile, never timed, and shown in tables as an upper
    #: bound rather than compared with HIVTP as a competing method
    offline_only: ClassVar[bool] = False
    #: some tokens it hands on merge several patches (pool's averages, VisionZip's contextual tokens);
    #: their ``positions`` name the one patch each stands for, so a per-patch measure of what was kept
    #: (``scripts/toy_selection_anatomy.py``) reads them at that patch only
    merges_tokens: ClassVar[bool] = False
    #: parameters whose default the model family may set (``ModelAdapter.default_method_params``), each
    #: with how the family's value is read; applied only where the caller left the parameter unset
    #: (listed in ``self.unset_by_caller``): HIVTP's score ``layers``, HiPrune's ``object_layer``
    family_parameters: ClassVar[dict[str, Any]] = {}
    unset_by_caller: frozenset[str] = frozenset()

    def params(self) -> dict[str, Any]:
        """The resolved parameters, for records and run names."""
        return {}

    def check(self, grid: tuple[int, int] | None, num_layers: int, feature_attention_layer: int) -> None:
        """Validate the parameters against the model they are attached to (grid of patch tokens, or
        None when it varies per image as in Qwen2.5-VL; encoder depth; the 0-based layer whose output
        is the feature layer). Raise ConfigError."""

    def budget_refusal(self) -> str | None:
        """Why this method, as configured, cannot take a budget per image that the model family sets
        for it (Qwen2.5-VL's ``keep=``), or None when it can. The family refuses the combination at
        ``attach``, so the budget is never silently ignored."""
        if "budget" not in method_parameters(type(self)):
            return f"method {self.name!r} takes no budget"
        return None

    def with_family_defaults(self, defaults: dict[str, Any]) -> PruningMethod:
        """This method with the model family's defaults (:meth:`ModelAdapter.default_method_params`,
        keyed by parameter name) for the parameters its caller left out, so that a method built by name
        and one passed as an object to ``hivtp.attach`` behave the same. Returns ``self`` when none
        applies (the default: no parameter of this method has a family default), else a copy: the
        caller's object is never changed."""
        given = {k: read(defaults[k]) for k, read in self.family_parameters.items() if k in defaults and k in self.unset_by_caller}
        if not given:
            return self
        out = copy.copy(self)
        for name, value in given.items():
            setattr(out, name, value)
        return out

    def tower_request(self) -> TowerRequest:
        return TowerRequest()

    def select(self, crops: CropBatch) -> CropSelection:  # pragma: no cover - interface
        raise NotImplementedError

    def llm_context(self, model: Any, inputs: Any, stats: list[dict[str, Any]]) -> ContextManager[None]:
        """For methods that act inside the language model (``stage == "llm"``): a context manager
        entered around the LLM call (``generate`` or a forward) that installs temporary, instance-level
        hooks and removes them on exit. ``inputs`` is the :class:`hivtp.inputs.MergedInputs` of the call
        (image positions per sample); ``stats`` are the per-sample ``last_stats`` rows, which the
        method may update (e.g. ``tokens_kept``) with what it counted once the model ran, never from
        its budget alone. The LLM may run on ``B * n`` rows (``num_beams`` / ``num_return_sequences``,
        each sample's rows adjacent); a method that cannot serve that must refuse on entry, before
        the model runs. Before-projector methods keep the default no-op."""
        return nullcontext()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{self.name}({args})"


METHODS: dict[str, type[PruningMethod]] = {}


def register_method(cls: type[PruningMethod]) -> type[PruningMethod]:
    """Class decorator: add a method to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered.")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered by {METHODS[cls.name].__name__}.")
    METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(METHODS)


def is_offline_only(name: str) -> bool:
    """Whether ``name`` is a registered offline-only method (results may name unregistered ones: False)."""
    cls = METHODS.get(name)
    return cls is not None and cls.offline_only


def is_in_llm(name: str) -> bool:
    """Whether ``name`` is a registered method that drops tokens inside the language model (``stage == "llm"``)."""
    cls = METHODS.get(name)
    return cls is not None and cls.stage == "llm"


def method_parameters(cls: type[PruningMethod]) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def build_method(name: str | PruningMethod, **params: Any) -> PruningMethod:
    """Instantiate a registered method by name, with a clear error for unknown names / params."""
    if isinstance(name, PruningMethod):
        if params:
            raise ConfigError("pass parameters either to the method object or to attach(), not both.")
        return name
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; available methods: {', '.join(available_methods())}.")
    cls = METHODS[name]
    allowed = method_parameters(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        accepts = f"it accepts: {', '.join(allowed)}" if allowed else "it takes no parameters"
        raise ConfigError(f"unknown parameter(s) {unknown} for method {name!r}; {accepts}.")
    return cls(**params)


def parse_layers(layers: Sequence[int] | str | int) -> tuple[int, ...]:
    """Score layers from a sequence, an int, or a dash/comma string (``"6-7-8"`` as in lmms-eval
    ``--model_args``, where commas separate arguments)."""
    if isinstance(layers, bool):
        raise ConfigError(f"score layers must be integers, got {layers!r}.")
    if isinstance(layers, int):
        return (layers,)
    if isinstance(layers, str):
        parts = [p for p in layers.replace(",", "-").replace(" ", "-").split("-") if p]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"cannot read score layers from {layers!r}; write them like '6-7-8'.") from None
    try:
        out = tuple(int(x) for x in layers)
    except (TypeError, ValueError):
        raise ConfigError(f"score layers must be integers, got {layers!r}.") from None
    return out

"""The method registry: one MethodSpec per fine-tuning method, keyed by RunConfig.method.name.

A new method joins by one module that builds a MethodSpec and calls `register`; the Method
tab's dropdown, the validation and the tests are derived from METHODS, never kept by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # torch is heavy; the registry itself must import without it
    import torch
    from backend.core.config import RunConfig

MergeCheck = Callable[["RunConfig"], "tuple[bool, str]"]


@dataclass
class MethodSpec:
    name: str
    title: str
    help: str                      # one or two sentences: when to choose it and what it costs
    family: str                    # full | reparameterization | additive | selective | prompt | hybrid
    params: list[str]              # MethodConfig fields this method shows
    uses_peft: bool
    quantized: bool
    can_merge: MergeCheck
    # Freeze/wrap a loaded (or meta-device) model so exactly the intended parameters train.
    apply: Optional[Callable[[Any, "RunConfig"], Any]] = None
    # A custom optimizer (LoRA+); None lets the Trainer build the configured one.
    optimizer: Optional[Callable[[Any, "RunConfig"], "torch.optim.Optimizer"]] = None
    # Extra method-specific checks against the model: field path -> sentence.
    validate: Optional[Callable[["RunConfig", Any], dict[str, str]]] = None
    extra: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method; a second registration under the same name is a programming error."""
    if spec.name in METHODS:
        raise ValueError(f"A method named '{spec.name}' is already registered.")
    from backend.core.config import MethodConfig

    unknown = [p for p in spec.params if p not in MethodConfig.model_fields]
    if unknown:
        raise ValueError(f"Method '{spec.name}' shows unknown MethodConfig fields: {unknown}")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(METHODS)
        raise ValueError(f"The method '{name}' is not available yet; choose one of: {known}.") from None


def always_mergeable(_cfg: "RunConfig") -> tuple[bool, str]:
    return True, ""


def complete_model(_cfg: "RunConfig") -> tuple[bool, str]:
    return False, ("this method saves a complete model, not an adapter, so there is nothing to merge; "
                   "use the saved model directly or export it")

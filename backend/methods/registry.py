"""The method registry: what each fine-tuning method does, attached to its name in the catalog.

The names, titles, help sentences and families are data in backend.core.catalog; a method module
adds the behaviour (how it wraps a model, whether its result merges, its own optimizer or checks)
by calling `register(METHOD.<name>, ...)`. The Method tab's dropdown, the validation and the tests
read METHODS, never a list kept by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from backend.core.catalog import MethodInfo, METHODS as CATALOG
from backend.core.config import MethodConfig

if TYPE_CHECKING:  # torch is heavy; the registry itself must import without it
    import torch
    from backend.core.config import RunConfig

MergeCheck = Callable[["RunConfig"], "tuple[bool, str]"]


@dataclass
class MethodSpec:
    info: MethodInfo
    can_merge: MergeCheck
    # Freeze/wrap a loaded (or meta-device) model so exactly the intended parameters train.
    apply: Optional[Callable[[Any, "RunConfig"], Any]] = None
    # A custom optimizer (LoRA+); None lets the Trainer build the configured one.
    optimizer: Optional[Callable[[Any, "RunConfig"], "torch.optim.Optimizer"]] = None
    # Extra method-specific checks against the model: field path -> sentence.
    validate: Optional[Callable[["RunConfig", Any], dict[str, str]]] = None
    extra: dict[str, Any] = field(default_factory=dict)

    # The catalog's facts, read through the spec so callers need one object.
    name = property(lambda self: self.info.name)
    title = property(lambda self: self.info.title)
    help = property(lambda self: self.info.help)
    family = property(lambda self: self.info.family)
    params = property(lambda self: self.info.params)
    uses_peft = property(lambda self: self.info.uses_peft)
    quantized = property(lambda self: self.info.quantized)


METHODS: dict[str, MethodSpec] = {}


def register(name: str, *, can_merge: MergeCheck, apply: Optional[Callable[[Any, "RunConfig"], Any]] = None,
             optimizer: Optional[Callable[[Any, "RunConfig"], "torch.optim.Optimizer"]] = None,
             validate: Optional[Callable[["RunConfig", Any], dict[str, str]]] = None,
             extra: Optional[dict[str, Any]] = None) -> MethodSpec:
    """Attach a catalog method's behaviour; a second registration, a name the catalog does not
    have, or catalog params that are not MethodConfig fields are programming errors."""
    if name in METHODS:
        raise ValueError(f"A method named '{name}' is already registered.")
    info = CATALOG.get(name)
    if info is None:
        raise ValueError(f"The method '{name}' is not in backend.core.catalog.METHODS; add it there first.")
    unknown = [p for p in info.params if p not in MethodConfig.model_fields]
    if unknown:
        raise ValueError(f"Method '{name}' shows unknown MethodConfig fields: {unknown}")
    spec = MethodSpec(info, can_merge, apply, optimizer, validate, dict(extra or {}))
    METHODS[name] = spec
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

"""LoRA and the variants PEFT expresses as flags or wrappers: QLoRA, DoRA, rsLoRA, LoRA+.

rsLoRA and DoRA are LoraConfig options, QLoRA is LoRA on a bitsandbytes 4-bit base (the loading
side lives in loading.py), LoRA+ is LoRA with an optimizer that gives B a larger learning rate.
PiSSA and OLoRA are starting points of the same adapter (`method.lora_init`); they move part of each
base weight into the adapter, so the saved adapter is converted to apply to the untouched base.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from backend.core.catalog import LORA_INITS, METHOD, METHODS, OBJECTIVES
from backend.methods.hooks import is_meta
from backend.methods.loading import optimizer_class
from backend.methods.registry import always_mergeable, register
from backend.methods.tokens import finish_peft, trainable_token_indices

# The initial adapter's folder name inside the temporary directory PEFT reads it from at save time.
_INITIAL = "initial_adapter"


def lora_init(cfg: Any):
    """The adapter's start; a method that does not show the field (QLoRA, LoRA+, LongLoRA...) starts as LoRA."""
    shown = "lora_init" in METHODS[cfg.method.name].params
    return LORA_INITS[cfg.method.lora_init if shown else "default"]


def lora_config(cfg: Any, model: Any = None):
    """The LoraConfig of cfg's method; on a model grown for added tokens, those rows train too."""
    from peft import LoraConfig

    m = cfg.method
    return LoraConfig(
        trainable_token_indices=trainable_token_indices(model) if model is not None else None,
        r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
        target_modules=m.target_modules if isinstance(m.target_modules, str) else list(m.target_modules),
        use_dora=m.name == METHOD.dora, use_rslora=m.name == METHOD.rslora,
        init_lora_weights=lora_init(cfg).peft_value,
        bias="none", task_type="CAUSAL_LM",
    )


def apply_lora(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import get_peft_model

    config = lora_config(cfg, model)
    init = lora_init(cfg)
    if is_meta(model):
        # The skeleton counts parameters; a decomposition of meta tensors has nothing to decompose and the
        # shapes are the same for every start.
        config.init_lora_weights = True
    # get_peft_model freezes the base and keeps adapters in fp32 (autocast_adapter_dtype), which the
    # estimator assumes too.
    model = get_peft_model(model, config)
    if config.trainable_token_indices:
        finish_peft(model)
    if init.changes_base and not is_meta(model):
        _save_converted(model)
    return model


def _save_converted(model: Any) -> None:
    """Keep the adapter as it started and save the final one as the difference, in LoRA form.

    PiSSA/OLoRA leave the base as W - A0 B0. PEFT's conversion writes the trained adapter as a standard LoRA
    of twice the rank whose update is A B - A0 B0, which applied to the original W gives the trained model;
    merging, chat and export then need no modified base."""
    from peft import get_peft_model_state_dict

    initial = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}

    def save(out_dir: str) -> None:
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / _INITIAL
            folder.mkdir()
            save_file(initial, str(folder / "adapter_model.safetensors"))
            model.save_pretrained(out_dir, path_initial_model_for_weight_conversion=str(folder))

    model.ftstudio_save = save


def validate_lora_init(cfg: Any, _model_config: Any = None) -> dict[str, str]:
    """PiSSA/OLoRA change the base weights: a reference made by switching the adapter off would be the
    residual model, not the starting model, and a finished adapter cannot be the start of a decomposition."""
    init = lora_init(cfg)
    if not init.changes_base:
        return {}
    if OBJECTIVES[cfg.objective].uses_reference:
        return {"method.lora_init": (f"{init.title} moves part of the base weights into the adapter, so "
                                     f"{cfg.objective.upper()}'s reference (the model with the adapter off) would not be "
                                     "the starting model; use the default start for this objective.")}
    if getattr(cfg, "init_adapter", None):
        return {"method.lora_init": (f"Training more starts from a finished adapter, not from {init.title}'s "
                                     "decomposition; use the default start.")}
    return {}


def loraplus_optimizer(model: nn.Module, cfg: Any):
    from peft.optimizers import create_loraplus_optimizer

    cls, extra = optimizer_class(cfg.train.optimizer)
    return create_loraplus_optimizer(
        model, cls, lr=cfg.train.learning_rate, loraplus_lr_ratio=cfg.method.loraplus_lr_ratio,
        loraplus_weight_decay=cfg.train.weight_decay, **extra)


def _qlora_merge(_cfg: Any) -> tuple[bool, str]:
    return True, ("the adapter is merged into a 16-bit copy of the base model (reloaded unquantized), "
                  "not into the 4-bit weights it trained against, so outputs can differ slightly")


register(METHOD.lora, can_merge=always_mergeable, apply=apply_lora, validate=validate_lora_init)

register(METHOD.qlora, can_merge=_qlora_merge, apply=apply_lora)

register(METHOD.dora, can_merge=always_mergeable, apply=apply_lora, validate=validate_lora_init)

register(METHOD.rslora, can_merge=always_mergeable, apply=apply_lora, validate=validate_lora_init)

register(METHOD.loraplus, can_merge=always_mergeable, apply=apply_lora, optimizer=loraplus_optimizer)

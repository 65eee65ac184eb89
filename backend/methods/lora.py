"""LoRA and the variants PEFT expresses as flags or wrappers: QLoRA, DoRA, rsLoRA, LoRA+.

rsLoRA and DoRA are LoraConfig options, QLoRA is LoRA on a bitsandbytes 4-bit base (the loading
side lives in loading.py), LoRA+ is LoRA with an optimizer that gives B a larger learning rate.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from backend.core.catalog import METHOD
from backend.methods.loading import optimizer_class
from backend.methods.registry import always_mergeable, register


def lora_config(cfg: Any):
    from peft import LoraConfig

    m = cfg.method
    return LoraConfig(
        r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
        target_modules=m.target_modules if isinstance(m.target_modules, str) else list(m.target_modules),
        use_dora=m.name == METHOD.dora, use_rslora=m.name == METHOD.rslora,
        bias="none", task_type="CAUSAL_LM",
    )


def apply_lora(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import get_peft_model

    # get_peft_model freezes the base and keeps adapters in fp32 (autocast_adapter_dtype), which the
    # estimator assumes too.
    return get_peft_model(model, lora_config(cfg))


def loraplus_optimizer(model: nn.Module, cfg: Any):
    from peft.optimizers import create_loraplus_optimizer

    cls, extra = optimizer_class(cfg.train.optimizer)
    return create_loraplus_optimizer(
        model, cls, lr=cfg.train.learning_rate, loraplus_lr_ratio=cfg.method.loraplus_lr_ratio,
        loraplus_weight_decay=cfg.train.weight_decay, **extra)


def _qlora_merge(_cfg: Any) -> tuple[bool, str]:
    return True, ("the adapter is merged into a 16-bit copy of the base model (reloaded unquantized), "
                  "not into the 4-bit weights it trained against, so outputs can differ slightly")


register(METHOD.lora, can_merge=always_mergeable, apply=apply_lora)

register(METHOD.qlora, can_merge=_qlora_merge, apply=apply_lora)

register(METHOD.dora, can_merge=always_mergeable, apply=apply_lora)

register(METHOD.rslora, can_merge=always_mergeable, apply=apply_lora)

register(METHOD.loraplus, can_merge=always_mergeable, apply=apply_lora, optimizer=loraplus_optimizer)

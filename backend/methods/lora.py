"""LoRA and the variants PEFT expresses as flags or wrappers: QLoRA, DoRA, rsLoRA, LoRA+.

rsLoRA and DoRA are LoraConfig options, QLoRA is LoRA on a bitsandbytes 4-bit base (the loading
side lives in loading.py), LoRA+ is LoRA with an optimizer that gives B a larger learning rate.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from backend.methods.registry import MethodSpec, always_mergeable, register

LORA_PARAMS = ["r", "alpha", "dropout", "target_modules"]


def lora_config(cfg: Any):
    from peft import LoraConfig

    m = cfg.method
    return LoraConfig(
        r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout,
        target_modules=m.target_modules if isinstance(m.target_modules, str) else list(m.target_modules),
        use_dora=m.name == "dora", use_rslora=m.name == "rslora",
        bias="none", task_type="CAUSAL_LM",
    )


def apply_lora(model: nn.Module, cfg: Any) -> nn.Module:
    from peft import get_peft_model

    # get_peft_model freezes the base and keeps adapters in fp32 (autocast_adapter_dtype), which the
    # estimator assumes too.
    return get_peft_model(model, lora_config(cfg))


def loraplus_optimizer(model: nn.Module, cfg: Any):
    from peft.optimizers import create_loraplus_optimizer

    from backend.methods.loading import optimizer_class

    cls, extra = optimizer_class(cfg.train.optimizer)
    return create_loraplus_optimizer(
        model, cls, lr=cfg.train.learning_rate, loraplus_lr_ratio=cfg.method.loraplus_lr_ratio,
        loraplus_weight_decay=cfg.train.weight_decay, **extra)


def _qlora_merge(_cfg: Any) -> tuple[bool, str]:
    return True, ("the adapter is merged into a 16-bit copy of the base model (reloaded unquantized), "
                  "not into the 4-bit weights it trained against, so outputs can differ slightly")


register(MethodSpec(
    name="lora", title="LoRA", family="reparameterization",
    help=("Trains small low-rank matrices beside the chosen layers while the base stays frozen: the usual "
          "first choice, a few MB of adapter and a fraction of full fine-tuning's memory."),
    params=list(LORA_PARAMS), uses_peft=True, quantized=False, can_merge=always_mergeable, apply=apply_lora,
))

register(MethodSpec(
    name="qlora", title="QLoRA (4-bit base)", family="hybrid",
    help=("LoRA on a base loaded in 4-bit NF4: choose it when the model does not fit in 16-bit (a 7B model "
          "on a 24 GB card); about 4x less weight memory, somewhat slower steps. Needs bitsandbytes."),
    params=LORA_PARAMS + ["quant_type", "double_quant", "compute_dtype"], uses_peft=True, quantized=True,
    can_merge=_qlora_merge, apply=apply_lora,
))

register(MethodSpec(
    name="dora", title="DoRA", family="reparameterization",
    help=("LoRA that learns each weight's magnitude and direction separately: often more stable and closer "
          "to full fine-tuning at low ranks, at roughly 1.2-2x LoRA's step time and a little more memory."),
    params=list(LORA_PARAMS), uses_peft=True, quantized=False, can_merge=always_mergeable, apply=apply_lora,
))

register(MethodSpec(
    name="rslora", title="rsLoRA (rank-stabilized)", family="reparameterization",
    help=("LoRA scaled by alpha/sqrt(r) instead of alpha/r, so high ranks (64+) keep learning; same cost as "
          "LoRA. Choose it when you want a large rank."),
    params=list(LORA_PARAMS), uses_peft=True, quantized=False, can_merge=always_mergeable, apply=apply_lora,
))

register(MethodSpec(
    name="loraplus", title="LoRA+", family="reparameterization",
    help=("LoRA whose B matrices learn faster than A (the ratio below): often converges faster at the same "
          "cost as LoRA; lower the base learning rate a little."),
    params=LORA_PARAMS + ["loraplus_lr_ratio"], uses_peft=True, quantized=False, can_merge=always_mergeable,
    apply=apply_lora, optimizer=loraplus_optimizer,
))
